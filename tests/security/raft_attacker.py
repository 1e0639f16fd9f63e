"""The attacker of the security tests on the Raft channel: a real process holding everything
of ONE site (its config, hence the cluster's shared Raft password, and its data dir) that
speaks pysyncobj's wire format with code of its own.

Run as ``python3 -m tests.security.raft_attacker MODE --config SITE.toml --target HOST:PORT
[options]``. It prints one JSON line per attempt with what it saw (``closed``: the target
dropped the connection; ``reply``: a decoded answer) and exits 0 whatever the target did:
the tests judge the honest sites, not the attacker's view.

Wire format (pysyncobj 0.3.17, ``tcp_connection.py`` / ``transport.py``): a frame is
``<i length`` + ``Fernet(zlib(pickle(message)))``. In a signed cluster the handshake is
replicad's (``replicad.consensus.channel``): the connecting side sends ``(HELLO, nonce,
X25519 key, identity)`` (a member's ``"host:port"``, ``"readonly"``, or a utility command such
as ``["status"]``), the server answers its nonce, key and signed proof, the connecting side
sends its own proof, and later frames use the per-connection session key. Unsigned:
pysyncobj's 32 random bytes each way, then the identity. Every message after the first
travels as ``(peer_random, message)``.

Modes:

* ``install-snapshot``: an ``append_entries`` carrying ``serialized`` (pysyncobj's
  install-snapshot) whose dump is an empty state (no sites, no volumes, empty audit),
  ``--term-add`` above the term in this site's own Raft meta file, sent as ``--as``
  (``readonly``, or a member address: this site's own by default).
* ``term``: ``--count`` heartbeats (``append_entries``) and ``request_vote`` messages at
  ``--term-add`` above this site's term, sent as this site.
* ``bomb``: right after the key exchange (signed: after the target's answer to a hello naming
  a member whose address sorts above the target's), one frame whose zlib stream expands to
  ``--mib`` MiB.
* ``flood``: ``--count`` TCP connections that send nothing; held up to ``--hold-s``; reports
  how many the target closed and after how long.
* ``utility``: pysyncobj's utility messages ``status`` and ``transfer`` (leadership transfer).
* ``impersonate``: a connection naming ``--as`` (another member) proved with this site's
  own key (``--proof own``) or with no valid signature (``--proof none``).
* ``hello``: a connection as this site itself, proved with its own key (after a revocation).
* ``bloat``: runs this site's Raft member itself (the site's daemon must be down) and
  proposes ``--count`` ``register_site`` commands for sites no config names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import socket
import struct
import sys
import time
import zlib
from pathlib import Path

import msgpack

from replicad.config import load_config, load_signer


def out(**fields) -> None:
    print(json.dumps(fields, default=str), flush=True)


class Wire:
    """One raw Raft connection with the shared password (blocking socket).

    In a signed cluster it speaks replicad's signed handshake (``replicad.consensus.channel``)
    with whatever key the attacker chooses (its own site's, or none), and switches to the
    per-connection session key once the target accepted the proof; in an unsigned cluster,
    pysyncobj's password-only handshake.
    """

    def __init__(self, target: str, password: str, timeout_s: float = 5.0, *, cluster_id: str = "",
                 key=None, signed: bool = False) -> None:
        from pysyncobj.encryptor import getEncryptor

        host, port = target.rsplit(":", 1)
        self.target = target
        self.fernet = getEncryptor(password)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.server_key: bytes | None = None  # every frame we send is wrapped with it (pysyncobj's randKey)
        self.recv_key: bytes | None = None    # every frame we receive must carry it
        self.cipher = None                    # the session cipher once the signed handshake ended
        self.cluster_id, self.key, self.signed = cluster_id, key, signed

    @classmethod
    def for_site(cls, cfg, target: str) -> "Wire":
        """A connection to ``target`` with this site's password, cluster id and own key."""
        from replicad.config import load_signer

        signer = load_signer(cfg)
        return cls(target, cfg.raft_password.get_secret_value(), cluster_id=cfg.cluster_id,
                   key=signer.private_key if signer else None, signed=signer is not None)

    @classmethod
    def accept_as(cls, cfg, timeout_s: float = 15.0) -> "Wire | None":
        """Listen on this site's own Raft address and take the connection a partner dials to it.

        pysyncobj's greater address dials: to speak to a partner whose address sorts above its
        own, the attacker (whose daemon is down) serves its own port, as a replaced daemon would,
        and answers the handshake with its own site key.
        """
        from replicad.config import load_signer

        signer = load_signer(cfg)
        return cls.accept(cfg.self_ref().raft, cfg.raft_password.get_secret_value(), cluster_id=cfg.cluster_id,
                          key=signer.private_key if signer else None, signed=signer is not None, timeout_s=timeout_s)

    @classmethod
    def accept(cls, own: str, password: str, *, cluster_id: str = "", key=None, signed: bool = False,
               timeout_s: float = 15.0) -> "Wire | None":
        """Serve ``own`` (``"host:port"``) and answer the first connection's handshake, proving
        it with ``key`` (signed cluster); None if nobody dialed or the dialer gave up."""
        from pysyncobj.encryptor import getEncryptor
        from replicad.consensus import channel

        host, port = own.rsplit(":", 1)
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, int(port)))
        server.listen(4)
        server.settimeout(timeout_s)
        try:
            sock, _ = server.accept()
        except OSError:
            return None
        finally:
            server.close()
        wire = cls.__new__(cls)
        wire.fernet = getEncryptor(password)
        wire.sock, wire.target, wire.cipher = sock, "", None
        wire.server_key = wire.recv_key = None
        wire.cluster_id, wire.key, wire.signed = cluster_id, key, signed
        sock.settimeout(5.0)
        hello = wire.recv()
        if not signed:
            if not isinstance(hello, bytes):
                return None
            wire.server_key = hello  # we wrap what we send with the dialer's key
            wire.send(os.urandom(32))
            wire.recv()  # the dialer names itself
            return wire
        if not (isinstance(hello, tuple) and len(hello) == 4):
            return None
        _, nonce_d, eph_d, dialer = hello
        eph = channel.X25519PrivateKey.generate()
        nonce_a = os.urandom(32)
        t = channel.transcript(cluster_id, dialer, own, nonce_d, nonce_a, eph_d, channel.x25519_public_raw(eph))
        wire.server_key = nonce_d
        wire.send((nonce_a, channel.x25519_public_raw(eph), key.sign(channel.proof_bytes(channel.ACCEPTOR, t))))
        wire.recv_key = nonce_a
        if wire.recv() is None:  # the dialer's proof, or it closed
            return None
        to_acceptor, from_acceptor = channel.session_keys(eph, eph_d, t)
        wire.cipher = channel.SessionCipher(send_key=from_acceptor, recv_key=to_acceptor)
        return wire

    def send_raw(self, payload: bytes) -> None:
        data = (self.cipher or self.fernet).encrypt_at_time(payload, 0)
        try:
            self.sock.sendall(struct.pack("i", len(data)) + data)
        except OSError:
            pass  # closed by the target: closed_within() reports it

    def send(self, message) -> None:
        if self.server_key is not None:
            message = (self.server_key, message)
        self.send_raw(zlib.compress(pickle.dumps(message, 2), 3))

    def recv(self):
        """One decoded message (unwrapped from its session key), or None when the target closed."""
        try:
            header = self._read(4)
            if header is None:
                return None
            (length,) = struct.unpack("i", header)
            data = self._read(length)
            if data is None:
                return None
        except (ConnectionResetError, socket.timeout, OSError):
            return None
        message = pickle.loads(zlib.decompress((self.cipher or self.fernet).decrypt(data)))
        if self.recv_key is not None:
            if not (isinstance(message, tuple) and len(message) == 2 and message[0] == self.recv_key):
                return None
            message = message[1]
        return message

    def _read(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def handshake(self, identity, proof: str = "own") -> bool:
        """Open the connection naming ``identity`` (a member's ``"host:port"``, ``"readonly"``
        or a utility command such as ``["status"]``); False if the target closed before
        answering. Signed cluster: the proof is signed with this site's own key (``"own"``),
        or is 64 random bytes (``"none"``); the session key is used from then on."""
        if not self.signed:
            self.server_key = self.exchange_keys()
            if self.server_key is None:
                return False
            self.send(identity)
            return True
        answer = self.hello(identity)
        if answer is None:
            return False
        self.prove(identity, answer, proof)
        return True

    def hello(self, identity):
        """Signed handshake, frame 1; the acceptor's ``(nonce, key, proof)`` or None."""
        from replicad.consensus import channel

        self._eph = channel.X25519PrivateKey.generate()
        self._nonce = os.urandom(32)
        self.send((channel.HELLO, self._nonce, channel.x25519_public_raw(self._eph), identity))
        self.recv_key = self._nonce
        answer = self.recv()
        if not (isinstance(answer, tuple) and len(answer) == 3):
            return None
        self.server_key = answer[0]
        return answer

    def prove(self, identity, answer, proof: str = "own") -> None:
        """Signed handshake, frame 3 (our proof), then switch to the session key."""
        from replicad.consensus import channel

        nonce_a, eph_a, _ = answer
        t = channel.transcript(self.cluster_id, str(identity), self.target, self._nonce, nonce_a,
                               channel.x25519_public_raw(self._eph), eph_a)
        sig = self.key.sign(channel.proof_bytes(channel.DIALER, t)) if proof == "own" and self.key else os.urandom(64)
        self.send(sig)
        to_acceptor, from_acceptor = channel.session_keys(self._eph, eph_a, t)
        self.cipher = channel.SessionCipher(send_key=to_acceptor, recv_key=from_acceptor)

    def exchange_keys(self) -> bytes | None:
        """Unsigned cluster: send our random key; the server's (it answers ``(our_key, its_key)``), or None."""
        mine = os.urandom(32)
        self.send(mine)
        self.recv_key = mine
        reply = self.recv()
        return reply if isinstance(reply, bytes) else None

    def closed_within(self, wait_s: float) -> bool:
        """True if the target closes the connection within ``wait_s`` (messages are drained)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not chunk:
                return True
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def own_term(cfg) -> int:
    """The current term in this site's own Raft meta file (the attacker holds the data dir)."""
    try:
        return int(json.loads((cfg.data_dir / "raft" / "raft.journal.meta").read_text()).get("currentTerm", 0))
    except (OSError, ValueError):
        return 0


def member_wire(cfg, target: str) -> tuple["Wire | None", bool]:
    """A connection to ``target`` speaking as this site: dialed when this site's address sorts
    above the target's (pysyncobj's rule), else accepted on this site's own port."""
    me = cfg.self_ref().raft
    if me > target:
        wire = Wire.for_site(cfg, target)
        return wire, wire.handshake(me)
    wire = Wire.accept_as(cfg)
    return wire, wire is not None


def forged_dump(term: int) -> bytes:
    """The msgpack dump replicad writes, of an empty cluster: no sites, no volumes, no audit."""
    state = {"v": 1, "sites": {}, "volumes": {}, "audit": [], "applied_ops": {}, "clocks": {}}
    last = [b"\x01", 10**6, term]
    return msgpack.packb({"v": 1, "state": state, "last": last, "prev": [b"\x01", 10**6 - 1, term],
                          "cluster": []}, use_bin_type=True)


def mode_install_snapshot(cfg, args) -> None:
    me = cfg.self_ref().raft
    term = own_term(cfg) + args.term_add
    if args.as_:
        wire = Wire.for_site(cfg, args.target)
        ok = wire.handshake(args.as_)
    else:
        wire, ok = member_wire(cfg, args.target)
    if ok:
        wire.send({"type": "append_entries", "term": term, "commit_index": 10**6,
                   "serialized": (forged_dump(term), True, True)})
    out(mode="install-snapshot", target=args.target, identity=args.as_ or me, term=term,
        handshake=ok, closed=wire.closed_within(args.wait_s) if wire else True)
    if wire:
        wire.close()


def mode_term(cfg, args) -> None:
    term = own_term(cfg) + args.term_add
    wire, ok = member_wire(cfg, args.target)
    if ok:
        for i in range(args.count):
            wire.send({"type": "request_vote", "term": term + i, "last_log_index": 10**9, "last_log_term": term})
            wire.send({"type": "append_entries", "term": term + i, "commit_index": 0,
                       "prevLogIdx": 10**9, "prevLogTerm": term, "entries": []})
            time.sleep(args.interval_s)
    out(mode="term", target=args.target, term=term, handshake=ok,
        closed=wire.closed_within(args.wait_s) if wire else True)
    if wire:
        wire.close()


def mode_bomb(cfg, args) -> None:
    comp = zlib.compressobj(9)
    zero = bytes(1 << 20)
    payload = b"".join(comp.compress(zero) for _ in range(args.mib)) + comp.flush()
    wire = Wire.for_site(cfg, args.target)
    if wire.signed:  # the very next frame (our proof) is the bomb; name a member that dials the target
        above = sorted((s.raft for s in cfg.sites if s.raft > args.target), key=lambda a: a != cfg.self_ref().raft)
        ok = bool(above) and wire.hello(above[0]) is not None
    else:  # the very next frame (the identity) is the bomb
        wire.server_key = wire.exchange_keys()
        ok = wire.server_key is not None
    if ok:
        wire.send_raw(payload)  # not a pickle at all: the expansion itself is the attack
    out(mode="bomb", target=args.target, compressed_bytes=len(payload), expands_to=args.mib << 20,
        handshake=ok, closed=wire.closed_within(args.wait_s) if wire else True)
    if wire:
        wire.close()


def mode_impersonate(cfg, args) -> None:
    """Dial ``--target`` naming ``--as`` (another member), proving it with this site's own key
    (``--proof own``) or with 64 random bytes (``--proof none``); then a heartbeat at a high term."""
    wire = Wire.for_site(cfg, args.target)
    ok = wire.handshake(args.as_, proof=args.proof)
    if ok:
        wire.send({"type": "append_entries", "term": own_term(cfg) + args.term_add, "commit_index": 0,
                   "prevLogIdx": 10**9, "prevLogTerm": 1, "entries": []})
    out(mode="impersonate", target=args.target, identity=args.as_, proof=args.proof, answered=ok,
        closed=wire.closed_within(args.wait_s))
    wire.close()


def mode_hello(cfg, args) -> None:
    """Dial ``--target`` as this site itself, proving it with this site's own key; report
    whether the target keeps the connection open for ``--wait-s``."""
    wire = Wire.for_site(cfg, args.target)
    ok = wire.handshake(cfg.self_ref().raft)
    out(mode="hello", target=args.target, identity=cfg.self_ref().raft, answered=ok,
        closed=wire.closed_within(args.wait_s))
    wire.close()


def mode_flood(cfg, args) -> None:
    host, port = args.target.rsplit(":", 1)
    socks, refused = [], 0
    start = time.monotonic()
    for _ in range(args.count):
        try:
            socks.append(socket.create_connection((host, int(port)), timeout=2))
        except OSError:
            refused += 1
    closed_after: list[float] = []
    pending = list(socks)
    deadline = start + args.hold_s
    while pending and time.monotonic() < deadline:
        for s in list(pending):
            s.settimeout(0.01)
            try:
                chunk = s.recv(1)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                closed_after.append(time.monotonic() - start)
                pending.remove(s)
        time.sleep(0.05)
    for s in socks:
        s.close()
    out(mode="flood", target=args.target, opened=len(socks), refused=refused, closed=len(closed_after),
        still_open=len(pending), max_closed_after_s=max(closed_after, default=None))


def mode_utility(cfg, args) -> None:
    for command in (["status"], ["transfer", args.target]):
        wire = Wire.for_site(cfg, args.target)
        reply = None
        if wire.signed:
            reply = wire.hello(command)  # the utility command where a member names itself
        else:
            key = wire.exchange_keys()
            if key is not None:
                wire.server_key = key
                wire.send(command)
                wire.sock.settimeout(args.wait_s)
                reply = wire.recv()
        out(mode="utility", target=args.target, command=command[0],
            answered=reply is not None, reply=str(reply)[:200] if reply is not None else None)
        wire.close()


def mode_bloat(cfg, args) -> None:
    from replicad.consensus.raft import RaftNode

    me = cfg.self_ref().raft
    partners = [s.raft for s in cfg.sites if s.site_id != cfg.site_id]
    work = Path(args.work_dir)
    node = RaftNode(me, partners, work, cfg.raft_password.get_secret_value(), trust=cfg.trust(),
                    signer=load_signer(cfg), sites={s.raft: s.site_id for s in cfg.sites},
                    members=[s.site_id for s in cfg.sites])  # as the daemon: the same initial state
    node.start()
    node._signer = None  # the channel proves this site; the forged commands go out unsigned

    async def run() -> dict:
        accepted = refused = failed = 0
        deadline = time.monotonic() + args.wait_s
        while node.status().get("leader") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for i in range(args.count):
            if time.monotonic() > deadline:
                break
            try:
                await node.propose({"op": "register_site", "by": f"forged-{i}", "now_ns": time.time_ns(),
                                    "site_id": f"forged-{i}", "peer_url": f"http://127.0.0.1:{1000 + i}",
                                    "kind": "data"}, timeout_s=3.0)
                accepted += 1
            except Exception as exc:  # the tests judge the honest sites; count what happened
                if getattr(exc, "code", "") == "no_quorum" and \
                        getattr(exc, "evidence", {}).get("reason") != "request_denied":  # refused at the leader's door
                    failed += 1
                else:
                    refused += 1
        return {"accepted": accepted, "refused": refused, "failed": failed}

    try:
        result = asyncio.run(run())
    finally:
        node.close()
    out(mode="bloat", **result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raft_attacker")
    parser.add_argument("mode", choices=["install-snapshot", "term", "bomb", "flood", "utility", "bloat",
                                         "impersonate", "hello"])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--target", default="")
    parser.add_argument("--as", dest="as_", default=None)
    parser.add_argument("--term-add", type=int, default=1000)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--interval-s", type=float, default=0.0)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--hold-s", type=float, default=10.0)
    parser.add_argument("--wait-s", type=float, default=3.0)
    parser.add_argument("--work-dir", default="")
    parser.add_argument("--proof", choices=["own", "none"], default="own")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    {"install-snapshot": mode_install_snapshot, "term": mode_term, "bomb": mode_bomb, "flood": mode_flood,
     "utility": mode_utility, "bloat": mode_bloat, "impersonate": mode_impersonate,
     "hello": mode_hello}[args.mode](cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
