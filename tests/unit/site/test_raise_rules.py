"""Raising the cluster state's rules version (``replicad.site.rules_raise``, ``SiteDaemon._raise_rules``):
each site serves its signed release report on a real peer HTTP server (127.0.0.1); a site raises
only once every unrevoked member reported a release applying the new rules, a member still on an
older release (no report: 404, as b976d0a answers) or unreachable keeps it waiting, and a state
above this code's rules stops the site. The cluster here is a stand-in over the real state
machine: ``propose`` applies the command with ``state.apply`` under the sites' real keys and
answers its result as the real cluster does (a refusal raised as its typed error)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from replicad.core import errors, identity
from replicad.core import state as st
from replicad.core.identity import Signer, Trust
from replicad.site.daemon import SiteDaemon
from replicad.site.rules_raise import RulesRaise

_ids = itertools.count()
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
TRUST = Trust(cluster_id="c", keys={s: (identity.public_key_raw(k),) for s, k in KEYS.items()})


class StateCluster:
    """``propose`` applies each command of ``by`` (signed with its key) to :attr:`state` and
    records it; ``view`` is the Raft view; ``sites`` the configured peers (``urls``)."""

    def __init__(self, state: dict, urls: dict[str, str] | None = None) -> None:
        self.state, self.urls = state, urls or {}
        self.calls: list[dict] = []

    def view(self) -> dict:
        return self.state

    def sites(self) -> list:
        return [SimpleNamespace(site_id=s, peer_url=u) for s, u in self.urls.items()]

    def apply(self, op: str, by: str, **fields) -> dict:
        command = identity.sign_command(KEYS[by], {"v": 1, "op": op, "op_id": f"{op}-{next(_ids)}", "by": by,
                                                   "now_ns": time.time_ns(), "cluster": "c", **fields})
        self.calls.append(command)
        self.state, result = st.apply(self.state, command, TRUST)
        return result


def founded() -> StateCluster:
    cluster = StateCluster(st.initial_state(members=list(SITES)))
    members = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
                "keys": [identity.format_public_key(identity.public_key_raw(KEYS[s]))]} for i, s in enumerate(SITES)]
    for s in SITES:
        assert cluster.apply("register_site", s, site_id=s, peer_url=f"http://{s}", kind="data")["ok"]
    for s in SITES:
        res = cluster.apply("found", s, incarnation=b"i" * 16, members=members)
    assert res["ok"] and cluster.state.get("incarnation"), res
    return cluster


class SiteCluster:
    """One site's handle on the shared :class:`StateCluster`: proposes as ``by``."""

    def __init__(self, shared: StateCluster, by: str) -> None:
        self.shared, self.by = shared, by

    def view(self) -> dict:
        return self.shared.view()

    def sites(self) -> list:
        return self.shared.sites()

    async def propose(self, op: str, **fields) -> dict:
        result = self.shared.apply(op, self.by, **fields)
        if not result["ok"]:
            raise errors.from_dict(result)
        return result


async def serve(raise_: RulesRaise) -> tuple[web.AppRunner, str]:
    """``raise_``'s peer route on a real HTTP server on 127.0.0.1; ``(runner, base url)``."""
    app = web.Application()
    app.add_routes([raise_.route()])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def three_sites(shared: StateCluster, reported: dict[str, int | None], session: aiohttp.ClientSession):
    raises = {s: RulesRaise(s, SiteCluster(shared, s), Signer(s, KEYS[s], "c"), lambda: TRUST, session,
                            reported[s]) for s in SITES}
    runners = []
    for s, r in raises.items():
        runner, url = await serve(r)
        runners.append(runner)
        shared.urls[s] = url
    return raises, runners


def test_a_site_raises_only_once_every_member_reports_the_new_release(caplog) -> None:
    async def main() -> None:
        shared = founded()
        async with aiohttp.ClientSession() as session:
            raises, runners = await three_sites(shared, {"a": 2, "b": 2, "c": None}, session)
            try:
                # c serves no report (an older release): a asks, waits, says so, proposes nothing
                reports, members = await raises["a"].collect(2)
                assert set(reports) == {"a", "b"} and members["c"] == {
                    "rules_max": None, "problem": "no release report (an older release)"}
                assert members["a"]["problem"] is None and members["b"]["problem"] is None
                stopping = asyncio.Event()
                task = asyncio.create_task(raises["a"].run(stopping))
                await asyncio.sleep(0.5)
                assert raises["a"].status()["waiting"] and st.rules(shared.state) == 1
                assert not any(c["op"] == "rules" for c in shared.calls)
                # c reports rules 1..1: still waiting
                raises["c"].reported_max = 1
                _, members = await raises["a"].collect(2)
                assert members["c"] == {"rules_max": 1, "problem": "runs rules 1..1"}
                # c upgraded: a raises at its next round, with every member's signed report
                raises["c"].reported_max = 2
                stopping.set()
                await task
                await raises["a"].run(asyncio.Event())
                assert st.rules(shared.state) == 2 and raises["a"].raised_here is True
                raised = [c for c in shared.calls if c["op"] == "rules"]
                assert len(raised) == 1 and set(raised[0]["reports"]) == set(SITES)
                # b finds the state raised: no command, not waiting
                await raises["b"].run(asyncio.Event())
                assert len([c for c in shared.calls if c["op"] == "rules"]) == 1
                assert raises["b"].raised_here is False and raises["b"].status()["waiting"] is False
            finally:
                for runner in runners:
                    await runner.cleanup()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    text = caplog.text
    assert "rules stay at 1 until every member runs a release applying rules 2" in text
    assert "c: no release report (an older release)" in text
    assert "AUDIT site a: the cluster's rules raised 1 -> 2" in text


def test_an_unreachable_member_and_a_forged_report_keep_the_rules() -> None:
    """A member whose peer API does not answer is ``not reachable``; a member answering a report
    signed by another key (a site speaking for another) is refused by the state machine's own
    check before any proposal (the daemon raises by itself only with every member's report); a
    raise proposed anyway without a majority of good reports is refused, rules 1 kept; with one
    (an operator's raise) it is applied and names the member left behind."""
    async def main() -> None:
        shared = founded()
        async with aiohttp.ClientSession() as session:
            raises, runners = await three_sites(shared, {"a": 2, "b": 2, "c": 2}, session)
            try:
                await runners[2].cleanup()  # c's peer server gone
                _, members = await raises["a"].collect(2)
                assert members["c"]["problem"].startswith("not reachable"), members
                raises["c"].signer = Signer("c", KEYS["a"], "c")  # c's report signed with a's key
                runner, shared.urls["c"] = await serve(raises["c"])
                runners[2] = runner
                reports, members = await raises["a"].collect(2)
                assert members["c"] == {"rules_max": 2, "problem": "bad release report"}, members
                stopping = asyncio.Event()
                task = asyncio.create_task(raises["a"].run(stopping))
                await asyncio.sleep(0.3)
                stopping.set()
                await task
                assert not any(c["op"] == "rules" for c in shared.calls)
                try:  # a's own and c's forged report: not a majority of good ones
                    await SiteCluster(shared, "a").propose("rules", to=2, reports={
                        k: v for k, v in reports.items() if k != "b"})
                except errors.ReplicadError:
                    pass
                else:
                    raise AssertionError("a raise with a forged report and no majority was applied")
                assert st.rules(shared.state) == 1
                # with b's report the good ones are a majority: applied, c named behind
                res = await SiteCluster(shared, "a").propose("rules", to=2, reports=reports)
                assert res["changed"] and list(res["behind"]) == ["c"], res
                assert st.rules(shared.state) == 2
            finally:
                for runner in runners:
                    await runner.cleanup()

    asyncio.run(main())


def test_a_state_above_this_code_s_rules_stops_the_site() -> None:
    d = object.__new__(SiteDaemon)
    state = {**founded().state, st.RULES: st.RULES_MAX + 1}
    d.site_id, d.raft, d.fatal, d._stopping, d._tasks = "a", SimpleNamespace(view=lambda: state), None, \
        asyncio.Event(), []
    d._raise_rules()
    assert d._tasks == []
    assert isinstance(d.fatal, errors.RulesVersionError) and d.fatal.evidence == {"rules": st.RULES_MAX + 1,
                                                                                  "max_rules": st.RULES_MAX}
    assert d._stopping.is_set()
