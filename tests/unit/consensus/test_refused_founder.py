"""Before it stops on a founding it did not apply, a site tells the founding-replay gap from a
leader withholding the founding (attacker review r15, F1): :meth:`RaftNode.refused_founder_of`
replays the ``found`` commands its node applied before its state was founded as if those refused
for their key had counted, and names a refused proposer only when such a proposal is among those
whose random ids make the incarnation the members report (``state._op_found``'s BLAKE2b-128).
Real RaftNodes (not started), real signed commands through the real state machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

from replicad.consensus.raft import _StateConsumer
from replicad.core import state as st
from tests.unit.consensus.test_depose import MEMBERS, SITES, TRUST, apply, signed
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
