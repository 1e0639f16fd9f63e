"""Vouched checkpoints and full dumps (:mod:`replicad.consensus.checkpoint`, issue 11 part 4;
the local dump at start, issue 13 item 8).

A simulated log: three sites (a, b, c) with their own keys propose signed commands; every
site applies the same payloads through :func:`checkpoint.advance`; at each checkpoint the
vouches of the sites named are appended to the log like any other command. Dumps are built
by :func:`checkpoint.dump_document` from one site's :class:`CheckpointLog` and loaded by
:func:`checkpoint.verify_dump`, as a follower does.
"""

from __future__ import annotations

import itertools

import msgpack
import pytest

from replicad.consensus import checkpoint
from replicad.consensus.checkpoint import CheckpointLog, dump_document, verify_dump
from replicad.core import errors, identity
from replicad.core import state as cluster_state
from replicad.core.identity import Signer, Trust

S = 1_000_000_000
NOW = 1_700_000_000 * S
CLUSTER = "test-cluster"
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
SIGNERS = {s: Signer(s, KEYS[s], CLUSTER) for s in SITES}
TRUST = Trust(cluster_id=CLUSTER, keys={s: (identity.public_key_raw(KEYS[s]),) for s in SITES})
EVERY = 4
RETENTION = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}
_ids = itertools.count()
POSITION = {"last": [b"\x00", 100, 2], "prev": [b"\x00", 99, 2], "cluster": ["127.0.0.1:1", "127.0.0.1:2"]}


def initial() -> dict:
    state = cluster_state.initial_state()
    state["limits"] = cluster_state.limits(SITES, 3)
    return state


def payload(op: str, by: str = "a", **args) -> bytes:
    command = SIGNERS[by].sign({"v": 1, "op": op, "op_id": f"op-{next(_ids)}", "now_ns": NOW + next(_ids), **args})
    return msgpack.packb(command, use_bin_type=True)


class Site:
    """One site's applied state and checkpoint log."""

    def __init__(self) -> None:
        self.state = initial()
        self.log = CheckpointLog.fresh(self.state, EVERY)
        self.points: list[tuple[int, bytes]] = []

    def apply(self, data: bytes) -> dict:
        self.state, result, _ = checkpoint.advance(self.state, data, TRUST)
        point = self.log.record(self.state, data)
        if point is not None:
            self.points.append(point)
        return result


class Cluster:
    """A log applied by one site; ``vouchers`` vouch for every checkpoint right after it."""

    def __init__(self, vouchers: tuple[str, ...] = ("a", "b", "c")) -> None:
        self.site = Site()
        self.payloads: list[bytes] = []
        self.vouchers = vouchers

    def add(self, data: bytes) -> dict:
        self.payloads.append(data)
        before = len(self.site.points)
        result = self.site.apply(data)
        if len(self.site.points) > before:
            n, digest = self.site.points[-1]
            for by in self.vouchers:
                self.add(payload("vouch", by, n=n, hash=digest))
        return result

    def dump(self) -> dict:
        doc = dump_document(self.site.log, self.site.state, TRUST, **POSITION)
        return msgpack.unpackb(msgpack.packb(doc, use_bin_type=True), raw=False, strict_map_key=False)


def grown(commands: int = 14, vouchers: tuple[str, ...] = ("a", "b", "c")) -> Cluster:
    c = Cluster(vouchers)
    for s in SITES:
        assert c.add(payload("register_site", s, site_id=s, peer_url=f"https://{s}", kind="data"))["ok"]
    assert c.add(payload("add_volume", "a", volume="ehr", primary="a", block_size=4096, size_bytes=1 << 20,
                         min_copies=1, retention=RETENTION))["ok"]
    for i in range(commands):
        c.add(payload("clock", SITES[i % 3]))
    return c


def refused_as(reason: str, document: dict) -> errors.DumpRefusedError:
    with pytest.raises(errors.DumpRefusedError) as caught:
        verify_dump(document, TRUST, initial(), EVERY)
    assert caught.value.evidence["reason"] == reason, caught.value.message
    return caught.value


# --------------------------------------------------------------------------- honest dumps


def test_an_honest_dump_yields_the_state_reached_by_applying_the_log():
    c = grown()
    doc = c.dump()
    assert doc["base_n"] > 0 and doc["base_n"] % EVERY == 0
    state, log = verify_dump(doc, TRUST, initial(), EVERY)
    assert state == c.site.state
    replay = Site()  # a follower applying the whole log reaches the same state
    for data in c.payloads:
        replay.apply(data)
    assert replay.state == state
    assert log.end_n == state["applied"] == len(c.payloads)
    # the follower goes on from there: the next command gives the same state at both
    nxt = payload("clock", "b")
    c.site.apply(nxt)
    after, _, _ = checkpoint.advance(state, nxt, TRUST)
    assert after == c.site.state


def test_a_young_cluster_ships_the_initial_state_and_every_command():
    c = Cluster()
    c.add(payload("register_site", "a", site_id="a", peer_url="https://a", kind="data"))
    c.add(payload("clock", "a"))
    doc = c.dump()
    assert doc["base_n"] == 0 and len(doc["suffix"]) == 2
    state, _ = verify_dump(doc, TRUST, initial(), EVERY)
    assert state == c.site.state


# --------------------------------------------------------------------------- forged dumps


def test_a_forged_base_is_not_vouched():
    c = grown()
    doc = c.dump()
    forged_base = {**doc["base"], "revoked": {}, "sites": {**doc["base"]["sites"], "z": {"peer_url": "x", "kind": "data"}}}
    refused_as("dump_not_vouched", {**doc, "base": forged_base})
    # a base claiming to be the initial state must be it
    assert refused_as("dump_not_vouched", {**doc, "base_n": 0, "base": {**forged_base, "applied": 0}})


def test_a_base_vouched_by_one_site_only_is_not_enough():
    c = grown(vouchers=("a",))
    with pytest.raises(checkpoint.NotCompacting):  # the writer itself sees no majority
        for _ in range(6 * EVERY):
            c.add(payload("clock", "b"))
        c.dump()
    # a dump built anyway (the attacker's) from a checkpoint only "a" vouched
    n, _, base = c.site.log.points[-1]
    doc = {"v": 2, "base_n": n, "base": base, "suffix": c.site.log.payloads[n - c.site.log.points[0][0]:], **POSITION}
    err = refused_as("dump_not_vouched", msgpack.unpackb(msgpack.packb(doc), raw=False, strict_map_key=False))
    assert err.evidence["vouched_by"] in ([], ["a"])


def test_a_forged_or_replayed_command_in_the_suffix_is_refused_again_and_changes_nothing():
    """Refused on replay as every site refused it in the log; the dump stays acceptable (a
    forged command per checkpoint interval would otherwise keep lagging sites from catching up)."""
    c = grown()
    doc = c.dump()
    honest, _ = verify_dump(doc, TRUST, initial(), EVERY)
    forged = msgpack.unpackb(payload("promote", "a", volume="ehr", to="a", expected_epoch=1, force=True),
                             raw=False, strict_map_key=False)
    forged["by"] = "b"  # signed by a, claims b
    older = [p for p in c.payloads[:c.payloads.index(doc["suffix"][0])]
             if msgpack.unpackb(p, raw=False)["op"] == "clock"][-1]  # applied before the base: in its replay memory
    for extra, error in ((msgpack.packb(forged, use_bin_type=True), "bad_signature"), (older, "replayed")):
        state, _ = verify_dump({**doc, "suffix": list(doc["suffix"]) + [extra]}, TRUST, initial(), EVERY)
        assert state["volumes"] == honest["volumes"] and state.get("revoked") == honest.get("revoked")
        assert state["applied"] == honest["applied"] + 1
        assert state["audit"][-1]["error"] == error and not state["audit"][-1]["ok"]


def test_a_replayed_vouch_does_not_make_a_majority():
    c = grown(commands=2)  # checkpoint at 4 and 8 vouched by everyone
    doc = c.dump()
    base_n = doc["base_n"]
    forged_base = {**doc["base"], "volumes": {"ehr": {**doc["base"]["volumes"]["ehr"], "primary": "c"}}}
    forged_digest = checkpoint.state_digest(forged_base)
    b_vouch = next(p for p in doc["suffix"] if msgpack.unpackb(p, raw=False)["op"] == "vouch"
                   and msgpack.unpackb(p, raw=False)["by"] == "b")
    own = payload("vouch", "a", n=base_n, hash=forged_digest)  # the attacker vouches its own forgery
    rest = [p for p in doc["suffix"] if msgpack.unpackb(p, raw=False)["op"] != "vouch"]
    refused_as("dump_not_vouched", {**doc, "base": forged_base, "suffix": [own, b_vouch, b_vouch] + rest})


def test_an_omitted_or_reordered_command_before_a_vouched_checkpoint_is_refused():
    c = grown()
    # a dump from an older base: the suffix then holds a later checkpoint a majority vouched
    n0, _, base0 = c.site.log.points[-3]
    suffix = c.site.log.payloads[n0 - c.site.log.points[0][0]:]
    doc = {"v": 2, "base_n": n0, "base": base0, "suffix": suffix, **POSITION}
    state, _ = verify_dump(doc, TRUST, initial(), EVERY)
    assert state == c.site.state  # honest: accepted
    first_clock = next(i for i, p in enumerate(suffix) if msgpack.unpackb(p, raw=False)["op"] == "clock")
    omitted = suffix[:first_clock] + suffix[first_clock + 1:]
    err = refused_as("dump_bad_command", {**doc, "suffix": omitted})
    assert err.evidence["n"] > n0
    swapped = [suffix[1], suffix[0], *suffix[2:]]  # two vouches for the base: the audit order differs
    refused_as("dump_bad_command", {**doc, "suffix": swapped})


@pytest.mark.parametrize("change", [
    {"v": 1}, {"base": "x"}, {"base_n": -1}, {"base_n": 3}, {"suffix": "x"}, {"suffix": [1]},
    {"suffix": [b"x"] * (checkpoint.suffix_max(EVERY) + 1)}, {"suffix": [b"x" * (40 * 1024 + 1)]},
])
def test_malformed_dumps_are_refused(change):
    doc = grown(commands=2).dump()
    refused_as("dump_malformed", {**doc, **change})


# --------------------------------------------------------------------------- the writer and divergence


def test_the_writer_refuses_to_compact_when_vouches_lag_and_keeps_payloads_bounded():
    c = grown(vouchers=())
    for _ in range((checkpoint.CHECKPOINTS_KEPT + 2) * EVERY):
        c.add(payload("clock", "a"))
    with pytest.raises(checkpoint.NotCompacting) as raised:
        c.dump()
    assert "sites that vouched none of them: ['a', 'b', 'c']" in str(raised.value)  # R16 F3: named
    n, digest = c.site.points[-1]
    c.add(payload("vouch", "a", n=n, hash=digest))
    with pytest.raises(checkpoint.NotCompacting) as raised:
        c.dump()
    assert "sites that vouched none of them: ['b', 'c']" in str(raised.value)
    assert len(c.site.log.payloads) <= checkpoint.suffix_max(EVERY)
    assert len(c.site.log.points) == checkpoint.CHECKPOINTS_KEPT + 1
    # the vouches arrive: the newest checkpoint is the base again
    n, digest = c.site.points[-1]
    for by in ("b", "c"):
        c.add(payload("vouch", by, n=n, hash=digest))
    assert c.dump()["base_n"] == n


def test_a_majority_vouch_for_another_digest_is_reported_once():
    c = grown(vouchers=())
    c.add(payload("clock", "a"))
    n, digest = c.site.points[-1]
    other = bytes(32)
    c.add(payload("vouch", "b", n=n, hash=other))
    assert c.site.log.divergent(c.site.state, TRUST) == []  # one site: could be the liar
    c.add(payload("vouch", "c", n=n, hash=other))
    assert c.site.log.divergent(c.site.state, TRUST) == [(n, digest, other, ["b", "c"])]
    assert c.site.log.divergent(c.site.state, TRUST) == []


def test_unsigned_nodes_write_the_state_itself_and_accept_it():
    state = {**initial(), "applied": 7}
    log = CheckpointLog(EVERY, 7, state, checkpoint.state_digest(state), initial=False)
    doc = dump_document(log, state, None, **POSITION)
    assert doc["base_n"] == 7 and doc["suffix"] == []
    assert verify_dump(doc, None, initial(), EVERY)[0] == state
    with pytest.raises(errors.DumpRefusedError):  # a signed node wants it vouched
        verify_dump(doc, TRUST, initial(), EVERY)


# --------------------------------------------------------------------------- this site's own dump at start


def _node(tmp_path):
    from replicad.consensus.raft import RaftNode
    from tests.unit.consensus.test_raft import free_port

    return RaftNode(f"127.0.0.1:{free_port()}", [f"127.0.0.1:{free_port()}"], tmp_path, "unit-secret")


def _good_dump(tmp_path) -> bytes:
    state = {**cluster_state.initial_state(), "applied": 3}
    log = CheckpointLog(EVERY, 3, state, checkpoint.state_digest(state), initial=False)
    return msgpack.packb(dump_document(log, state, None, **POSITION), use_bin_type=True)


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "empty", "garbage"])
def test_a_damaged_local_dump_refuses_to_start_and_is_left_as_it_was(tmp_path, damage):
    good = _good_dump(tmp_path)
    bad = {"zeroed": bytes(len(good)), "truncated": good[:len(good) // 2], "empty": b"",
           "garbage": b"\xc1" + good}[damage]
    (tmp_path / "raft.dump").write_bytes(bad)
    node = _node(tmp_path)
    with pytest.raises(errors.DumpDamagedError) as caught:
        node.start()
    err = caught.value
    assert err.exit_code == 5 and err.code == "dump_damaged"
    assert err.evidence["path"].endswith("raft.dump") and "README" in err.evidence["action"]
    assert (tmp_path / "raft.dump").read_bytes() == bad
    assert not (tmp_path / "raft.journal").exists()  # refused before pysyncobj opened anything


def test_a_compacted_journal_without_its_dump_refuses_to_start(tmp_path):
    from replicad.consensus.journal import DurableJournal

    journal = DurableJournal(str(tmp_path / "raft.journal"))
    journal.add(b"\x01", 41, 2)
    journal.add(b"\x01", 42, 2)
    journal._destroy()
    node = _node(tmp_path)
    with pytest.raises(errors.DumpDamagedError) as caught:
        node.start()
    assert caught.value.evidence["reason"] == "dump_missing"


def test_a_good_local_dump_is_loaded(tmp_path):
    (tmp_path / "raft.dump").write_bytes(_good_dump(tmp_path))
    node = _node(tmp_path)
    node.start()
    try:
        import time as _time

        deadline = _time.monotonic() + 10
        while node.state().get("applied") != 3 and _time.monotonic() < deadline:
            _time.sleep(0.05)
        assert node.state()["applied"] == 3
        assert node.status()["dump_error"] is None
    finally:
        node.close()
