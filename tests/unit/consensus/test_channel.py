"""The signed Raft handshake of :mod:`replicad.consensus.channel`: its pure parts, then real
:class:`~replicad.consensus.raft.RaftNode` members over 127.0.0.1 and a raw client holding
the shared password and a member's own key (``tests.security.raft_attacker.Wire``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from replicad.consensus import channel
from replicad.consensus.raft import RaftNode
from replicad.core import errors, identity
from replicad.lab.localcluster import free_port as lab_free_port
from tests.security.raft_attacker import Wire

pytestmark = pytest.mark.timeout(90)

PASSWORD = "unit-secret"
CLUSTER = "unit-cluster"


def free_port() -> int:
    """A free loopback port (from this test process's own range: localcluster.LAB_PORTS_ENV)."""
    return lab_free_port()


# --------------------------------------------------------------------------- pure parts


def _fields() -> tuple:
    return (CLUSTER, "127.0.0.1:2", "127.0.0.1:1", b"d" * 32, b"a" * 32,
            channel.x25519_public_raw(X25519PrivateKey.generate()), channel.x25519_public_raw(X25519PrivateKey.generate()))


def test_a_proof_verifies_only_for_its_role_its_transcript_and_a_pinned_unrevoked_key():
    key, other = identity.generate_private_key(), identity.generate_private_key()
    raw, other_raw = identity.public_key_raw(key), identity.public_key_raw(other)
    t = channel.transcript(*_fields())
    sig = key.sign(channel.proof_bytes(channel.ACCEPTOR, t))
    assert channel.proof_problem(sig, (raw,), frozenset(), channel.proof_bytes(channel.ACCEPTOR, t)) == (None, raw)
    # a rotation pins two keys: either verifies
    assert channel.proof_problem(sig, (other_raw, raw), frozenset(), channel.proof_bytes(channel.ACCEPTOR, t))[0] is None
    # the other role, another transcript, another key, a revoked key, garbage
    assert channel.proof_problem(sig, (raw,), frozenset(), channel.proof_bytes(channel.DIALER, t))[0] == "bad_identity"
    t2 = channel.transcript(*_fields())
    assert channel.proof_problem(sig, (raw,), frozenset(), channel.proof_bytes(channel.ACCEPTOR, t2))[0] == \
        "bad_identity"
    assert channel.proof_problem(sig, (other_raw,), frozenset(), channel.proof_bytes(channel.ACCEPTOR, t))[0] == \
        "bad_identity"
    assert channel.proof_problem(sig, (raw,), frozenset({raw}), channel.proof_bytes(channel.ACCEPTOR, t))[0] == \
        "revoked_site"
    for junk in (None, b"", b"x" * 63, "s" * 64, 7):
        assert channel.proof_problem(junk, (raw,), frozenset(), channel.proof_bytes(channel.ACCEPTOR, t))[0] == \
            "bad_identity"
    # a command signature is never a handshake proof (domains differ)
    assert channel.proof_problem(key.sign(identity.canonical_bytes({"op": "x"})), (raw,), frozenset(),
                                 channel.proof_bytes(channel.ACCEPTOR, t))[0] == "bad_identity"


def test_both_ends_derive_the_same_keys_one_per_direction():
    d, a = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    t = channel.transcript(CLUSTER, "x:2", "x:1", b"d" * 32, b"a" * 32, channel.x25519_public_raw(d),
                           channel.x25519_public_raw(a))
    at_dialer = channel.session_keys(d, channel.x25519_public_raw(a), t)
    at_acceptor = channel.session_keys(a, channel.x25519_public_raw(d), t)
    assert at_dialer == at_acceptor and at_dialer[0] != at_dialer[1] and all(len(k) == 32 for k in at_dialer)
    dialer = channel.SessionCipher(send_key=at_dialer[0], recv_key=at_dialer[1])
    acceptor = channel.SessionCipher(send_key=at_acceptor[1], recv_key=at_acceptor[0])
    frame = dialer.encrypt_at_time(b"hello", 7)
    assert acceptor.extract_timestamp(frame) == 7 and acceptor.decrypt(frame) == b"hello"
    with pytest.raises(InvalidToken):  # reflected back to its sender
        dialer.decrypt(frame)
    with pytest.raises(InvalidToken):  # the shared password's key reads nothing
        Fernet(Fernet.generate_key()).decrypt(frame)
    with pytest.raises(channel.HandshakeError):  # a low-order ephemeral key
        channel.session_keys(d, bytes(32), t)
    with pytest.raises(channel.HandshakeError):
        channel.transcript(CLUSTER, "x:2", "x:1", b"short", b"a" * 32, bytes(32), bytes(32))


def test_revocations_of_a_state():
    k = bytes(range(32))
    assert channel.revocations_of({}) == channel.Revocations()
    r = channel.revocations_of({"revoked": {"site-a": {"keys": [k], "at_ns": 1, "by": "site-b"}}})
    assert r.keys == frozenset({k}) and r.sites == frozenset({"site-a"})


# --------------------------------------------------------------------------- real members on 127.0.0.1


class Members:
    """``n`` RaftNode members (site ids s0, s1, ...) with their own keys, on loopback."""

    def __init__(self, root: Path, n: int = 3, *, signed: bool = True, start: tuple[str, ...] | None = None) -> None:
        self.ids = [f"s{i}" for i in range(n)]
        self.addrs = {i: f"127.0.0.1:{free_port()}" for i in self.ids}
        self.keys = {i: identity.generate_private_key() for i in self.ids}
        pinned = {i: (identity.public_key_raw(k),) for i, k in self.keys.items()}
        self.trust = identity.Trust(CLUSTER, keys=pinned if signed else None)
        self.nodes: dict[str, RaftNode] = {}
        for i in self.ids:
            self.nodes[i] = RaftNode(self.addrs[i], [self.addrs[j] for j in self.ids if j != i], root / i, PASSWORD,
                                     trust=self.trust, members=self.ids,
                                     signer=identity.Signer(i, self.keys[i], CLUSTER) if signed else None,
                                     sites={a: s for s, a in self.addrs.items()})
        for i in (self.ids if start is None else start):
            self.nodes[i].start()

    def transport(self, site: str) -> channel.MemberOnlyTransport:
        return self.nodes[site]._syncobj._SyncObj__transport

    def wait(self, what: str, predicate, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def connected(self, site: str, peer: str) -> bool:
        return self.nodes[site].status()["partners"][self.addrs[peer]]

    def refused(self, site: str, reason: str) -> int:
        return self.nodes[site].status()["refused"].get(reason, 0)

    def leader(self, *among: str) -> str | None:
        leaders = {self.nodes[s].status()["leader"] for s in among or self.ids}
        return leaders.pop() if len(leaders) == 1 else None

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()


@pytest.fixture
def members(tmp_path):
    m = Members(tmp_path)
    try:
        yield m
    finally:
        m.close()


def _register(node: RaftNode, site: str) -> dict:
    return asyncio.run(node.propose({"op": "register_site", "by": site, "site_id": site,
                                     "peer_url": "http://127.0.0.1:1", "kind": "data", "now_ns": time.time_ns()},
                                    timeout_s=10))


def test_signed_members_connect_commit_and_encrypt_each_connection_with_its_own_key(members):
    m = members
    m.wait("all connected", lambda: all(m.connected(s, p) for s in m.ids for p in m.ids if p != s))
    assert _register(m.nodes["s0"], "s0")["ok"]
    ciphers = []
    for s in m.ids:
        for node, conn in m.transport(s)._connections.items():
            assert isinstance(conn.encryptor, channel.SessionCipher), (s, node.address)
            assert conn.replicad_peer[0] == m.transport(s).identity.sites_by_addr[node.address]
            ciphers.append(conn.encryptor)
    assert len({id(c) for c in ciphers}) == 6  # one per end of each of the three connections
    for s in m.ids:
        assert all(m.refused(s, r) == 0 for r in ("bad_identity", "revoked_site", "bad_handshake")), s


def _impostor_pair(m: Members, attacker: str) -> tuple[str, str]:
    """(target, named): two honest members where ``named`` dials ``target`` (its address sorts above)."""
    honest = sorted((s for s in m.ids if s != attacker), key=lambda s: m.addrs[s])
    return honest[0], honest[1]


@pytest.mark.parametrize("proof", ["own", "none"])
def test_a_member_naming_another_member_is_refused_bad_identity(members, proof, caplog):
    m = members
    m.wait("a leader", lambda: m.leader() is not None)
    leader = m.leader()
    target, named = _impostor_pair(m, "s2")
    wire = Wire(m.addrs[target], PASSWORD, cluster_id=CLUSTER, key=m.keys["s2"], signed=True)
    try:
        assert wire.handshake(m.addrs[named], proof=proof)  # the acceptor answers: it proved itself first
        wire.send({"type": "append_entries", "term": 10**6, "commit_index": 0, "prevLogIdx": 0, "prevLogTerm": 0,
                   "entries": []})
        assert wire.closed_within(5)
    finally:
        wire.close()
    m.wait("bad_identity counted", lambda: m.refused(target, "bad_identity") >= 1, 5)
    assert "raft refused [bad_identity]" in caplog.text
    assert m.leader() == leader and m.nodes[target].status()["term"] < 10**6
    assert m.connected(target, named)  # the real member's connection was never replaced


def test_an_acceptor_that_cannot_prove_its_site_is_refused_by_the_dialer(tmp_path):
    m = Members(tmp_path, 2, start=())
    high, low = sorted(m.ids, key=lambda s: m.addrs[s], reverse=True)  # high dials low
    try:
        m.nodes[high].start()
        stranger = identity.generate_private_key()  # the password, but not low's key
        wire = Wire.accept(m.addrs[low], PASSWORD, cluster_id=CLUSTER, key=stranger, signed=True, timeout_s=10)
        assert wire is None  # the dialer never sent its proof
        m.wait("bad_identity counted at the dialer", lambda: m.refused(high, "bad_identity") >= 1, 5)
        assert not m.connected(high, low)
    finally:
        m.close()


def test_utility_readonly_unknown_and_malformed_openings_are_refused(members):
    m = members
    target = m.ids[0]
    for identity_claim, reason in ((["status"], "utility_message"), ("readonly", "readonly_node"),
                                   ("127.0.0.1:1", "unknown_node"), (m.addrs[target], "unknown_node")):
        wire = Wire(m.addrs[target], PASSWORD, cluster_id=CLUSTER, key=m.keys["s1"], signed=True)
        try:
            assert wire.hello(identity_claim) is None
        finally:
            wire.close()
        m.wait(reason, lambda r=reason: m.refused(target, r) >= 1, 5)
    wire = Wire(m.addrs[target], PASSWORD, cluster_id=CLUSTER, signed=True)
    try:
        wire.send(b"k" * 32)  # pysyncobj's own opening: not accepted in a signed cluster
        assert wire.closed_within(5)
    finally:
        wire.close()
    m.wait("bad_handshake", lambda: m.refused(target, "bad_handshake") >= 1, 5)


def test_revoked_keys_drop_connections_stop_dialing_and_refuse_handshakes(members):
    m = members
    m.wait("all connected", lambda: all(m.connected(s, p) for s in m.ids for p in m.ids if p != s))
    revoked = channel.Revocations(keys=frozenset({identity.public_key_raw(m.keys["s2"])}), sites=frozenset({"s2"}))
    for s in ("s0", "s1"):  # what the transport reads once the Raft state records the revocation
        t = m.transport(s)
        t.identity = dataclasses.replace(t.identity, revoked=lambda: revoked)
    m.wait("s2 cut off", lambda: not m.connected("s0", "s2") and not m.connected("s1", "s2"), 10)
    assert m.refused("s0", "revoked_site") + m.refused("s1", "revoked_site") >= 2
    # s2's own key opens no new connection; the honest pair keeps committing. Only a member
    # whose address sorts below s2's expects s2 to dial it (pysyncobj: the greater address
    # dials); the others refuse a connection naming s2 before any signature (wrong_direction)
    dialed_by_s2 = [s for s in ("s0", "s1") if m.addrs["s2"] > m.addrs[s]]
    target = dialed_by_s2[0] if dialed_by_s2 else "s0"
    reason = "revoked_site" if m.addrs["s2"] > m.addrs[target] else "wrong_direction"
    before = m.refused(target, reason)
    wire = Wire(m.addrs[target], PASSWORD, cluster_id=CLUSTER, key=m.keys["s2"], signed=True)
    try:
        wire.handshake(m.addrs["s2"])
        assert wire.closed_within(5)
    finally:
        wire.close()
    m.wait(f"a refused handshake ({reason})", lambda: m.refused(target, reason) > before, 5)
    m.wait("an honest leader", lambda: m.leader("s0", "s1") in (m.addrs["s0"], m.addrs["s1"]), 20)
    assert _register(m.nodes["s0"], "s0")["ok"]
    assert not m.connected("s0", "s2") and not m.connected("s1", "s2")


def test_unsigned_lab_mode_keeps_the_password_only_handshake(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    m = Members(tmp_path, 2, signed=False)
    try:
        m.wait("connected", lambda: m.connected("s0", "s1") and m.connected("s1", "s0"))
        assert _register(m.nodes["s0"], "s0")["ok"]
        assert "authenticated by the shared password only" in caplog.text
        assert not any(isinstance(c.encryptor, channel.SessionCipher) for c in m.transport("s0")._connections.values())
    finally:
        m.close()


def test_a_signed_cluster_needs_the_site_key_and_every_members_site(tmp_path):
    key = identity.generate_private_key()
    trust = identity.Trust(CLUSTER, keys={"s0": (identity.public_key_raw(key),)})
    with pytest.raises(errors.ConfigError):
        RaftNode("127.0.0.1:1", ["127.0.0.1:2"], tmp_path, PASSWORD, trust=trust,
                 sites={"127.0.0.1:1": "s0", "127.0.0.1:2": "s1"})
    with pytest.raises(errors.ConfigError):
        RaftNode("127.0.0.1:1", ["127.0.0.1:2"], tmp_path, PASSWORD, trust=trust,
                 signer=identity.Signer("s0", key, CLUSTER), sites={"127.0.0.1:1": "s0"})
