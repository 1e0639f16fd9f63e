"""Before it stops on a founding it did not apply, a site tells the founding-replay gap from a
leader withholding the founding (attacker review r15, F1): :meth:`RaftNode.refused_founder_of`
replays the ``found`` commands its node applied before its state was founded as if those refused
for their key had counted, and names a refused proposer only when such a proposal is among those
whose random ids make the incarnation the members report (``state._op_found``'s BLAKE2b-128).
Real RaftNodes (not started), real signed commands through the real state machine."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from replicad.consensus.raft import _StateConsumer
from replicad.core import state as st
from tests.unit.consensus.test_depose import ADDR, MEMBERS, SITES, TRUST, apply, signed
from tests.unit.consensus.test_founding_keys import ROTATED, node


def founds(*sites: str) -> list[dict]:
    """Each site's honest found of the three-site list (carrying this release's rules, as a daemon's)."""
    return [signed(s, "found", incarnation=os.urandom(16), members=MEMBERS, rules=st.RULES_MAX) for s in sites]


def founders_incarnation(log: list[dict]) -> bytes:
    """The incarnation a founder's node (its log started before any rotation) adopts from ``log``."""
    founder = _StateConsumer(None, st.limits(list(SITES), 3, keys=TRUST.keys), TRUST)
    for command in log:
        apply(founder, command)
    return founder.cluster["incarnation"]["id"]


def test_a_site_whose_log_started_after_a_founders_key_was_retired_names_that_founder(tmp_path: Path) -> None:
    log = founds("a", "c", "b")  # a and c found it; b's comes after the adoption
    theirs = founders_incarnation(log)
    rebuilt = node(tmp_path, ROTATED)  # its config pins a's new key only
    for command in log[:2]:
        apply(rebuilt._consumer, command)
    assert rebuilt._consumer.cluster.get("incarnation") is None and rebuilt.founds_unpinned() == 1
    assert rebuilt.refused_founder_of(theirs) == "a"
    assert rebuilt.refused_founder_of(os.urandom(16)) is None
    apply(rebuilt._consumer, log[2])  # b's and c's found another incarnation here
    assert rebuilt._consumer.cluster["incarnation"]["id"] != theirs
    assert rebuilt.refused_founder_of(theirs) == "a"


def test_a_site_the_founding_was_withheld_from_names_nobody_even_with_a_forged_found(tmp_path: Path) -> None:
    theirs = founders_incarnation(founds("a", "c"))
    victim = node(tmp_path)
    assert victim.refused_founder_of(theirs) is None  # nothing applied: the founding withheld
    # the withholding leader appends a found in a's name signed with c's key (refused), and c's own
    apply(victim._consumer, signed("a", "found", key="c", incarnation=os.urandom(16), members=MEMBERS,
                                   rules=st.RULES_MAX))
    apply(victim._consumer, founds("c")[0])
    assert victim.founds_unpinned() == 1 and victim._consumer.cluster.get("incarnation") is None
    assert victim.refused_founder_of(theirs) is None


def test_a_log_an_older_release_started_is_said_to_pin_no_founding_keys(tmp_path: Path) -> None:
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    fresh.mkdir()
    old.mkdir()
    assert not node(fresh).founding_unpinned_log()
    (old / "raft.journal").write_bytes(b"")
    (old / "raft.limits").write_text(json.dumps({"members": list(SITES), "max_sites": 3}))
    assert node(old).founding_unpinned_log()


class _Reporting:
    """This node as the daemon's judge reads it, with the members' membership reports (which the
    Raft channel carries between running daemons) given."""

    def __init__(self, node, reports: dict) -> None:
        self.node, self.reports = node, reports

    def membership_reports(self) -> dict:
        return self.reports

    def __getattr__(self, name: str):
        return getattr(self.node, name)


def test_a_found_forged_with_a_founders_public_id_never_stops_a_site(tmp_path: Path, monkeypatch, caplog) -> None:
    """Attacker review r2, F2: incarnation random ids are public, so a leader withholding the
    founding appends a found in founder b's name with b's random id and its own signature; the
    replay then names b as a refused founder. Before, the site stopped (exit 2) blaming b's
    retired key; now it never stops while it holds no incarnation: ERROR lines naming both causes."""
    from types import SimpleNamespace

    from replicad.site import daemon as site_daemon

    b_inc = os.urandom(16)
    b_found = signed("b", "found", incarnation=b_inc, members=MEMBERS, rules=st.RULES_MAX)
    c_found = founds("c")[0]
    theirs = founders_incarnation([b_found, c_found])
    victim = node(tmp_path)  # site a, honest config: no key was ever retired
    apply(victim._consumer, signed("b", "found", key="c", incarnation=b_inc, members=MEMBERS, rules=st.RULES_MAX))
    apply(victim._consumer, c_found)
    assert victim._consumer.cluster.get("incarnation") is None
    assert victim.refused_founder_of(theirs) == "b"  # the forgery is not told from the gap here
    report = {"incarnation": theirs}
    judge = SimpleNamespace(
        site_id="a", cfg=SimpleNamespace(sites=[SimpleNamespace(site_id=s, raft=ADDR[s]) for s in SITES]),
        raft=_Reporting(victim, {ADDR["b"]: report, ADDR["c"]: report}), failed=[],
        _held_since=None, _unfounded_since=None, _withheld_said=None)
    judge._fail = judge.failed.append
    now = [5000.0]
    monkeypatch.setattr(site_daemon.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.ERROR)
    for _ in range(200):  # 2,000 s: far past any former stop
        assert site_daemon.SiteDaemon._judge_founding_replay(judge, None) is False
        now[0] += 10.0
    assert judge.failed == []
    said = [r.getMessage() for r in caplog.records if "founding not applied here" in r.getMessage()]
    assert len(said) == 100, len(said)  # every FOUNDING_REPLAY_S (20 s), never per check
    assert "in the name of site b" in said[0] and "forged in site b's name" in said[0], said[0]
    assert "Rotate a site's key" in said[0] and "keeps proposing its found and waits" in said[0]
    # a site that founded another incarnation still stops: it would act on it
    mine = os.urandom(16)
    site_daemon.SiteDaemon._judge_founding_replay(judge, mine)
    assert len(judge.failed) == 1 and "forged that proposal" in str(judge.failed[0])
