"""The daemon raises the cluster state's rules version at start (``SiteDaemon._raise_rules``): once,
to its code's ``RULES_MAX``, a no-op when the state is there already (another site raised it), and
a state above it stops the site (``RulesVersionError``). The cluster and Raft node here are
stand-ins over a real state machine: ``propose`` applies the command with ``state.apply`` and
answers its result as the real cluster does (a refusal raised as its typed error)."""

from __future__ import annotations

import asyncio
import itertools
import logging

from replicad.core import errors
from replicad.core import state as st
from replicad.site.daemon import SiteDaemon

NOW = 1_700_000_000 * 10**9
_ids = itertools.count()


class StateCluster:
    """``propose`` applies each command to :attr:`state` (unsigned) and records it; ``view`` is the
    Raft view (the state)."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.calls: list[dict] = []

    def view(self) -> dict:
        return self.state

    async def propose(self, op: str, **fields) -> dict:
        command = {"v": 1, "op": op, "op_id": f"{op}-{next(_ids)}", "by": "a", "now_ns": NOW, **fields}
        self.calls.append(command)
        self.state, result = st.apply(self.state, command)
        if not result["ok"]:
            raise errors.from_dict(result)
        return result


def daemon(state: dict) -> tuple[SiteDaemon, StateCluster]:
    """A daemon with only what ``_raise_rules`` reads: its site id, Raft view, cluster and stop flag."""
    cluster = StateCluster(state)
    d = object.__new__(SiteDaemon)
    d.site_id, d.raft, d.cluster, d.fatal, d._stopping = "a", cluster, cluster, None, asyncio.Event()
    return d, cluster


def registered(rules: int | None = None) -> dict:
    s = st.initial_state(rules=rules)
    s, res = st.apply(s, {"v": 1, "op": "register_site", "op_id": "reg-a", "by": "a", "now_ns": NOW,
                          "site_id": "a", "peer_url": "http://a", "kind": "data"})
    assert res["ok"], res
    return s


def test_a_site_raises_the_rules_once_and_a_second_start_proposes_nothing(caplog) -> None:
    d, cluster = daemon(registered())
    with caplog.at_level(logging.WARNING):
        asyncio.run(d._raise_rules())
    assert [c["op"] for c in cluster.calls] == ["rules"] and cluster.calls[0]["to"] == st.RULES_MAX
    assert st.rules(cluster.state) == st.RULES_MAX and d.fatal is None
    assert any("rules raised 1 -> 2" in r.getMessage() for r in caplog.records)
    asyncio.run(d._raise_rules())
    assert len(cluster.calls) == 1


def test_a_state_above_this_code_s_rules_stops_the_site() -> None:
    d, cluster = daemon({**registered(), st.RULES: st.RULES_MAX + 1})
    asyncio.run(d._raise_rules())
    assert cluster.calls == []
    assert isinstance(d.fatal, errors.RulesVersionError) and d.fatal.evidence == {"rules": st.RULES_MAX + 1,
                                                                                  "max_rules": st.RULES_MAX}
    assert d._stopping.is_set()


def test_a_refused_raise_is_logged_and_the_site_goes_on(caplog) -> None:
    d, cluster = daemon(st.initial_state())  # "a" is not registered: not_found is no conflict, it propagates
    try:
        asyncio.run(d._raise_rules())
    except errors.NotFoundError:
        pass
    else:
        raise AssertionError("a refusal other than a conflict goes to the bootstrap's retry")
    d, cluster = daemon(registered())

    async def refuse(op: str, **fields) -> dict:
        raise errors.OutOfRangeError("rules 2: this code applies rules 1..1", to=2, max_rules=1)
    cluster.propose = refuse
    with caplog.at_level(logging.ERROR):
        asyncio.run(d._raise_rules())
    assert d.fatal is None and any("was refused" in r.getMessage() for r in caplog.records)
