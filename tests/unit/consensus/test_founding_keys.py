"""The Raft node pins the founding's key reference with its log (attacker review r14, A1): a ``found``
before the founding counts only signed with the key the ``[[sites]]`` config pinned for its
proposer when the log started (``state.FOUNDING_KEYS`` in the initial state's ``limits``, kept in
``raft.limits``), so a key rotated since does not change how the node replays its founding; a log
started by an older release (a file without them) replays its founding as that release decided it.
Real RaftNodes on a real data dir (not started: ``_pin_initial_limits`` runs before anything else)."""

from __future__ import annotations

import json
from pathlib import Path

from replicad.consensus.raft import RaftNode
from replicad.core import identity
from replicad.core import state as st
from replicad.core.identity import Signer, Trust
from tests.unit.consensus.test_depose import ADDR, CLUSTER, KEYS, SITES, TRUST

NEW_A = identity.generate_private_key()
ROTATED = Trust(cluster_id=CLUSTER, keys={**TRUST.keys, "a": (identity.public_key_raw(NEW_A),)})


def node(data_dir: Path, trust: Trust = TRUST, joining: bool = False) -> RaftNode:
    n = RaftNode(ADDR["a"], [ADDR["b"], ADDR["c"]], data_dir, "secret", trust=trust, members=list(SITES),
                 signer=Signer("a", NEW_A if trust is ROTATED else KEYS["a"], CLUSTER),
                 sites={ADDR[s]: s for s in SITES}, joining=joining)
    n._pin_initial_limits()
    return n


def keys_of(n: RaftNode) -> object:
    return n._consumer.initial["limits"].get(st.FOUNDING_KEYS, "absent")


def test_a_fresh_log_pins_the_configs_keys_and_a_replay_after_a_rotation_keeps_them(tmp_path: Path) -> None:
    first = node(tmp_path)
    pinned = {s: [identity.format_public_key(k) for k in TRUST.keys[s]] for s in SITES}
    assert keys_of(first) == pinned
    assert json.loads((tmp_path / "raft.limits").read_text())[st.FOUNDING_KEYS] == pinned
    (tmp_path / "raft.journal").write_bytes(b"")  # the log has started
    again = node(tmp_path, ROTATED)  # a's key rotated in the config since
    assert keys_of(again) == pinned and again._consumer.initial == first._consumer.initial


def test_a_log_an_older_release_started_replays_its_founding_without_a_reference(tmp_path: Path) -> None:
    (tmp_path / "raft.journal").write_bytes(b"")
    (tmp_path / "raft.limits").write_text(json.dumps({"members": list(SITES), "max_sites": 3}))
    assert keys_of(node(tmp_path)) is None
    other = tmp_path / "no-file"
    other.mkdir()
    (other / "raft.journal").write_bytes(b"")  # a log older than the file itself
    assert keys_of(node(other)) is None
    assert json.loads((other / "raft.limits").read_text())[st.FOUNDING_KEYS] is None


def test_a_joining_site_pins_its_configs_keys_and_no_site_list(tmp_path: Path) -> None:
    n = node(tmp_path, joining=True)
    limits = n._consumer.initial["limits"]
    assert limits["joining"] and limits["members"] is None and set(limits[st.FOUNDING_KEYS]) == set(SITES)


def test_a_damaged_key_reference_is_not_taken(tmp_path: Path) -> None:
    (tmp_path / "raft.journal").write_bytes(b"")
    (tmp_path / "raft.limits").write_text(json.dumps({"members": list(SITES), "max_sites": 3,
                                                      st.FOUNDING_KEYS: {"a": "ed25519:x"}}))
    n = node(tmp_path)  # logged at WARNING, as any unreadable raft.limits: the config's limits
    assert keys_of(n) == {s: [identity.format_public_key(k) for k in TRUST.keys[s]] for s in SITES}
