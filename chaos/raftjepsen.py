"""A Jepsen-style history of the Raft layer alone: three real signed RaftNode processes
(:mod:`chaos.raftnode`) on 127.0.0.1, clients that propose commands and record
invoke / ok / fail / info with timestamps, a seeded nemesis (SIGKILL, SIGSTOP, disk faults of
:mod:`chaos.raftdisk` with the README's way out, ENOSPC on the leader's journal, an
unreadable dump on the leader), and an offline checker (:func:`check`).

``python -m chaos.raftjepsen --seeds 1,2,3 [--faults a,b] [--out DIR]`` runs one history per
seed and prints a table; exit code 0 only if every history passed.

History (JSONL, ``t`` = ``time.monotonic()`` seconds, one event per line):

* ``{op: "append", type: "invoke"|"ok"|"fail"|"info", process, node, op_id, error?}``:
  ``ok`` = the node answered committed (applied, or refused by the state machine, which is
  committed too); ``fail`` = a definite refusal before the command entered the log
  (``store_full``: the journal cannot be written); ``info`` = indeterminate (``no_quorum``
  timeout, the node died or did not answer): it may or may not be in the log.
* ``{op: "nemesis", type, f, node, ...}``: ``kill``, ``start``, ``start_refused`` (the node
  exited on purpose with a typed damage error: ``code``, ``exit``), ``pause``/``resume``,
  ``flip`` (class, file, offset, bit), ``zero_dump``, ``unreadable_dump``, ``enospc``
  (strace on the journal's pwrite64) / ``enospc_end``, ``move_aside`` (the runbook).
* ``{op: "faults_stopped"}``, then ``{op: "leader", elapsed_s, bound_s, leader}`` (a
  majority agreeing on one leader), ``{op: "final", node, applied, digest}`` per node.

Checked (:func:`check`), over the history and every node's applied log (one line per
applied command, :mod:`chaos.raftnode`):

* ``single_order``: no two commands at one position ``n`` across all nodes' logs;
* ``exactly_once``: every client command is at one position at most (not twice in the log,
  not applied twice); a node never applies one position twice but as a replay of the same
  command;
* ``acknowledged_in_final``: every ``ok`` command is in the log, and every node's final
  state has applied past it; every node's final state digest is equal (same count);
* ``failed_not_committed``: no ``fail`` command is in any log; ``no_phantom``: nothing in the
  log was never invoked;
* ``real_time_order``: if ``a`` was acknowledged before ``b`` was invoked, and both are in
  the log, ``a`` precedes ``b`` (linearizability of the log append);
* ``leader_after_faults``: a majority agrees on one leader within ``LEADER_BOUND_TIMEOUTS``
  election timeouts (``raftMaxTimeout`` 1.4 s) after the faults stopped and every node ran;
* ``typed_refusal``: a node refused to start only with a typed damage error, and only where
  the fault calls for it (:data:`chaos.raftdisk.EXPECTED`); a node expected to refuse that
  started instead is reported unless nothing acknowledged was lost (``refuse_or_start``).

A node that refuses to start on purpose is not a loss in itself: it holds no final log until
the runbook (move the damaged file aside, keep the meta file) brings it back as a follower
that catches up; its final log is then judged like any other. A node that stays refused at the
end counts as absent, and the majority's logs must still hold every acknowledged command.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import raftdisk

REPO_ROOT = Path(__file__).resolve().parents[1]
SITES = ("site-a", "site-b", "site-c")
ELECTION_TIMEOUT_S = 1.4  # pysyncobj raftMaxTimeout (RaftNode keeps the default)
LEADER_BOUND_TIMEOUTS = 10
COMPACTION = 40
EVERY = 8
CLIENT_TIMEOUT_S = 3.0
FAULTS = ("kill", "kill-leader", "pause", "journal-header", "journal-middle", "journal-tail", "journal-tail-minority",
          "meta", "dump-header", "dump-body", "dump-zero", "dump-unreadable", "enospc-leader")
DEFINITE_FAILURES = {"store_full"}


class History:
    """Append-only JSONL history, thread-safe; ``t`` = monotonic seconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def record(self, type_: str, op: str, **fields: Any) -> dict:
        e = {"t": time.monotonic(), "type": type_, "op": op, **fields}
        with self._lock:
            self._f.write(json.dumps(e, default=str) + "\n")
        return e

    def close(self) -> None:
        self._f.close()


@dataclass
class NodeProc:
    """One :mod:`chaos.raftnode` process and its JSON-lines channel."""

    site: str
    spec: dict
    spec_path: Path
    proc: subprocess.Popen | None = None
    replies: dict = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    wlock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def raft_dir(self) -> Path:
        return Path(self.spec["data_dir"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> dict:
        """Start the process; ``{"ready": True}`` or its ``{"start_error", "message", "exit"}``."""
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        stderr = open(self.raft_dir.with_name(self.site + ".stderr"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "chaos.raftnode", str(self.spec_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                     env=env, cwd=REPO_ROOT, start_new_session=True)
        stderr.close()
        self.replies = {}
        first = json.loads(self.proc.stdout.readline() or "{}")
        if first.get("ready") is not True:
            try:
                first["exit"] = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                first["exit"] = None
            return first
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return first

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.replies[reply.get("id")] = reply
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def call(self, cmd: str, wait_s: float = 10.0, **kw: Any) -> dict:
        """Send one request; its reply. Raises TimeoutError (no answer: dead, stopped, slow)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise TimeoutError(f"{self.site} is not running")
        req_id = uuid.uuid4().hex
        try:
            with self.wlock:
                proc.stdin.write(json.dumps({"id": req_id, "cmd": cmd, **kw}) + "\n")
                proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise TimeoutError(f"{self.site}: {exc}") from None
        deadline = time.monotonic() + wait_s
        with self.cond:
            while req_id not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0 or proc.poll() is not None:
                    raise TimeoutError(f"{self.site}: no reply to {cmd}")
                self.cond.wait(min(left, 0.5))
            return self.replies.pop(req_id)

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGCONT + SIGKILL by PID, reaped."""
        if self.running():
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class RaftRun:
    """Three nodes under ``root``, a history, clients and a nemesis for one seed."""

    def __init__(self, root: Path, seed: int) -> None:
        from replicad.core import identity
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.rng = random.Random(seed)
        self.h = History(self.root / "history.jsonl")
        ports = _free_ports(len(SITES))
        addrs = {s: f"127.0.0.1:{p}" for s, p in zip(SITES, ports)}
        keys = {s: identity.generate_private_key() for s in SITES}
        cluster = f"jepsen-{uuid.uuid4().hex[:8]}"
        self.nodes: dict[str, NodeProc] = {}
        for s in SITES:
            (self.root / f"{s}.pem").write_bytes(identity.private_key_pem(keys[s]))
            os.chmod(self.root / f"{s}.pem", 0o600)
            spec = {"addr": addrs[s], "partners": [a for t, a in addrs.items() if t != s],
                    "data_dir": str(self.root / s / "raft"), "compaction": COMPACTION, "every": EVERY,
                    "site_id": s, "key_pem": str(self.root / f"{s}.pem"), "password": "jepsen-raft-secret",
                    "cluster": cluster, "keys": {t: identity.public_key_raw(keys[t]).hex() for t in SITES},
                    "sites": {a: t for t, a in addrs.items()},
                    "applied_log": str(self.root / f"{s}.applied.jsonl")}
            (self.root / s / "raft").mkdir(parents=True, exist_ok=True)
            spec_path = self.root / f"{s}.json"
            spec_path.write_text(json.dumps(spec))
            self.nodes[s] = NodeProc(s, spec, spec_path)
        self.h.record("info", "setup", seed=seed, sites=list(SITES), compaction=COMPACTION, every=EVERY,
                      election_timeout_s=ELECTION_TIMEOUT_S)
        self.paused: set[str] = set()
        self.down: set[str] = set()
        self.refused: set[str] = set()
        self.stop_clients = threading.Event()
        self.clients: list[threading.Thread] = []
        self.stracer: raftdisk.WriteErrors | None = None

    # ------------------------------------------------------------------ nemesis
    def start(self, site: str) -> bool:
        """Start ``site``; a typed refusal is recorded ``start_refused``. True if it runs."""
        self.h.record("invoke", "nemesis", f="start", node=site)
        first = self.nodes[site].start()
        if first.get("ready"):
            self.h.record("ok", "nemesis", f="start", node=site)
            self.down.discard(site)
            self.refused.discard(site)
            return True
        stderr = self.nodes[site].raft_dir.with_name(site + ".stderr").read_text(errors="replace")
        self.h.record("info", "nemesis", f="start_refused", node=site, code=first.get("start_error"),
                      exit=first.get("exit"), message=str(first.get("message"))[:600],
                      traceback="Traceback" in stderr[-20000:])
        self.down.add(site)
        self.refused.add(site)
        return False

    def kill(self, site: str) -> None:
        self.h.record("invoke", "nemesis", f="kill", node=site)
        self.nodes[site].kill()
        self.paused.discard(site)
        self.down.add(site)
        self.h.record("ok", "nemesis", f="kill", node=site)

    def pause(self, site: str) -> None:
        self.nodes[site].signal(signal.SIGSTOP)
        self.paused.add(site)
        self.h.record("ok", "nemesis", f="pause", node=site)

    def resume(self, site: str) -> None:
        self.nodes[site].signal(signal.SIGCONT)
        self.paused.discard(site)
        self.h.record("ok", "nemesis", f="resume", node=site)

    def status(self, site: str) -> dict | None:
        if site in self.paused or not self.nodes[site].running():
            return None
        try:
            return self.nodes[site].call("status", wait_s=3)["result"]
        except (TimeoutError, KeyError):
            return None

    def leader(self, timeout_s: float = 30.0) -> str | None:
        """The site a majority of running nodes names as leader (None after ``timeout_s``)."""
        by_addr = {n.spec["addr"]: s for s, n in self.nodes.items()}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            named = [st.get("leader") for s in SITES if (st := self.status(s))]
            for addr in set(named):
                if addr is not None and named.count(addr) >= 2 and by_addr.get(addr) not in self.down | self.paused:
                    return by_addr[addr]
            time.sleep(0.1)
        return None

    def runbook(self, site: str, where: str) -> None:
        """README "Raft journal damaged" / "Raft dump damaged": move the damaged file(s) aside,
        keep the meta file (a damaged meta file is moved aside too: the node then starts fresh
        and catches up), restart."""
        names = {"meta": ("raft.journal.meta",), "journal": ("raft.journal",)}.get(
            where.split("-")[0], ("raft.dump", "raft.journal"))
        moved = raftdisk.move_aside(self.nodes[site].raft_dir, names, f"{int(time.time())}")
        self.h.record("ok", "nemesis", f="move_aside", node=site, moved=moved)
        self.start(site)

    def disk_fault(self, where: str) -> None:
        """Stop a node (a follower, or the leader for the leader's classes), damage its Raft
        storage with class ``where``, keep a second node down meanwhile for the ``-minority``
        and middle-record variants (the damaged node is needed for the majority then), restart;
        a typed refusal is followed by the runbook."""
        self.wait_not_rejoining()
        lead = self.leader(20)
        victim = self.rng.choice([s for s in SITES if s != lead] or list(SITES))
        if where.startswith("dump"):
            if not (self.nodes[victim].raft_dir / "raft.dump").exists():
                self.propose_burst(victim, COMPACTION + 10)
        other = None
        if where in ("journal-middle", "journal-tail-minority"):
            # the third node is down first (it lags), acknowledged commands then live on the
            # victim and one more node only; that one goes down with the victim
            third = self.rng.choice([s for s in SITES if s != victim])
            self.kill(third)
            self.propose_burst(victim, 6)
            other = next(s for s in SITES if s not in (victim, third))
            self.kill(victim)
            self.kill(other)
            self.start(third)
            down_with = other
        else:
            self.kill(victim)
            down_with = None
        cls = "journal-tail" if where == "journal-tail-minority" else where
        try:
            if cls == "dump-zero":
                info = raftdisk.zero_dump(self.nodes[victim].raft_dir)
            else:
                info = raftdisk.flip(self.nodes[victim].raft_dir, cls, self.rng)
            self.h.record("ok", "nemesis", f="flip", node=victim, fault=where, expected=raftdisk.EXPECTED[cls],
                          **info)
        except (OSError, ValueError) as exc:
            self.h.record("info", "nemesis", f="flip_skipped", node=victim, fault=where, why=str(exc)[:200])
        time.sleep(self.rng.uniform(0.5, 2.0))
        if not self.start(victim):
            time.sleep(1.0)
            self.runbook(victim, cls)
        if down_with is not None:
            time.sleep(self.rng.uniform(1.0, 3.0))
            self.start(down_with)

    def rejoining(self) -> list[str]:
        """Nodes whose meta file says they lost Raft storage and have not caught up yet."""
        out = []
        for s, n in self.nodes.items():
            try:
                if "rejoin" in json.loads((n.raft_dir / "raft.journal.meta").read_text()):
                    out.append(s)
            except (OSError, ValueError):
                continue
        return out

    def wait_not_rejoining(self, timeout_s: float = 60.0) -> None:
        """Fault model: one site's Raft storage damaged at a time. Wait (bounded) until the
        last victim caught up and votes again before damaging another; records how long."""
        t0 = time.monotonic()
        while (left := self.rejoining()) and time.monotonic() - t0 < timeout_s:
            time.sleep(0.5)
        self.h.record("info", "rejoin_wait", waited_s=time.monotonic() - t0, still=left)

    def enospc_leader(self) -> None:
        """Every journal append of the leader fails with ENOSPC for a few seconds."""
        lead = self.leader(20)
        if lead is None:
            return
        w = raftdisk.WriteErrors(self.nodes[lead].proc.pid)
        try:
            w.attach()
        except RuntimeError as exc:
            self.h.record("info", "nemesis", f="enospc_skipped", node=lead, why=str(exc))
            return
        self.stracer = w
        self.h.record("ok", "nemesis", f="enospc", node=lead)
        time.sleep(self.rng.uniform(3.0, 6.0))
        w.detach()
        self.stracer = None
        self.h.record("ok", "nemesis", f="enospc_end", node=lead)

    def unreadable_dump_on_leader(self) -> None:
        """A follower lags behind the leader's compacted log; the leader cannot read its dump."""
        lead = self.leader(20)
        if lead is None:
            return
        lagging = self.rng.choice([s for s in SITES if s != lead])
        self.kill(lagging)
        self.propose_burst(lead, COMPACTION * 2 + 10)
        info = raftdisk.unreadable_dump(self.nodes[lead].raft_dir)
        self.h.record("ok", "nemesis", f="unreadable_dump", node=lead, **info)
        self.start(lagging)
        time.sleep(8.0)
        raftdisk.readable_dump(self.nodes[lead].raft_dir)
        self.h.record("ok", "nemesis", f="readable_dump", node=lead)

    # ------------------------------------------------------------------ clients
    def propose_one(self, process: str, site: str) -> None:
        op_id = f"jep-{uuid.uuid4().hex[:16]}"
        self.h.record("invoke", "append", process=process, node=site, op_id=op_id)
        node = self.nodes[site]
        try:
            reply = node.call("propose", wait_s=CLIENT_TIMEOUT_S + 4,
                              command={"op": "clock", "op_id": op_id, "now_ns": time.time_ns()},
                              timeout_s=CLIENT_TIMEOUT_S)
        except TimeoutError as exc:
            self.h.record("info", "append", process=process, node=site, op_id=op_id, error=str(exc)[:100])
            return
        if reply.get("ok"):
            self.h.record("ok", "append", process=process, node=site, op_id=op_id)
        elif reply.get("error") in DEFINITE_FAILURES:
            self.h.record("fail", "append", process=process, node=site, op_id=op_id, error=reply["error"])
        elif reply.get("error") in ("no_quorum", "internal", "unavailable"):
            self.h.record("info", "append", process=process, node=site, op_id=op_id, error=reply.get("error"))
        else:  # a state machine refusal: committed all the same
            self.h.record("ok", "append", process=process, node=site, op_id=op_id, refused=reply.get("error"))

    def propose_burst(self, site: str, n: int) -> None:
        for _ in range(n):
            if site in self.down | self.paused:
                return
            self.propose_one("burst", site)

    def _client(self, site: str) -> None:
        while not self.stop_clients.is_set():
            if site in self.down or site in self.paused:
                time.sleep(0.2)
                continue
            self.propose_one(f"client-{site}", site)
            time.sleep(random.uniform(0.0, 0.05))  # not self.rng: the fault schedule stays seeded

    def run(self, faults: list[str], rounds: int) -> None:
        """Start, register, run clients through ``rounds`` seeded faults, heal, record finals."""
        try:
            for s in SITES:
                self.start(s)
            self.leader(60)
            for s in SITES:  # a signed cluster: every site registered before it proposes
                for _ in range(20):
                    r = self.nodes[s].call("propose", wait_s=20, timeout_s=5.0, command={
                        "op": "register_site", "site_id": s, "peer_url": f"https://{s}", "kind": "data"})
                    if r.get("ok") or r.get("error") not in ("no_quorum",):
                        break
            self.clients = [threading.Thread(target=self._client, args=(s,), daemon=True) for s in SITES]
            for th in self.clients:
                th.start()
            for _ in range(rounds):
                time.sleep(self.rng.uniform(0.5, 2.0))
                self.fault(self.rng.choice(faults))
                self.heal()
            time.sleep(1.0)
            self.stop_clients.set()
            for th in self.clients:
                th.join(timeout=CLIENT_TIMEOUT_S + 10)
            self.heal()
            self.finish()
        finally:
            self.stop_clients.set()
            if self.stracer is not None:
                self.stracer.detach()
            for n in self.nodes.values():
                n.kill()
            self.h.close()

    def fault(self, f: str) -> None:
        self.h.record("info", "fault", f=f)
        if f == "kill":
            s = self.rng.choice(SITES)
            self.kill(s)
            time.sleep(self.rng.uniform(0.5, 3.0))
            self.start(s)
        elif f == "kill-leader":
            s = self.leader(20)
            if s:
                self.kill(s)
                time.sleep(self.rng.uniform(0.5, 3.0))
                self.start(s)
        elif f == "pause":
            s = self.rng.choice(SITES)
            self.pause(s)
            time.sleep(self.rng.uniform(1.0, 4.0))
            self.resume(s)
        elif f == "enospc-leader":
            self.enospc_leader()
        elif f == "dump-unreadable":
            self.unreadable_dump_on_leader()
        else:
            self.disk_fault(f)

    def heal(self) -> None:
        for s in sorted(self.paused):
            self.resume(s)
        for s in SITES:
            if s in self.down and s not in self.refused:
                self.start(s)
            elif s in self.refused:
                self.runbook(s, "journal")

    def finish(self, bound_s: float = 90.0) -> None:
        """Faults stopped: time a leader, wait (bounded) until every running node applied the
        same count, record each node's final ``applied`` and state digest."""
        t0 = self.h.record("info", "faults_stopped")["t"]
        lead = self.leader(LEADER_BOUND_TIMEOUTS * ELECTION_TIMEOUT_S + 30)
        self.h.record("info", "leader", leader=lead, elapsed_s=time.monotonic() - t0,
                      bound_s=LEADER_BOUND_TIMEOUTS * ELECTION_TIMEOUT_S)
        if lead is not None:  # one more command through the leader: commits of the new term apply everywhere
            for _ in range(5):
                self.propose_one("final", lead)
                time.sleep(0.2)
        deadline = time.monotonic() + bound_s
        finals: dict[str, dict] = {}
        while time.monotonic() < deadline:
            finals = {}
            for s in SITES:
                try:
                    finals[s] = self.nodes[s].call("state", wait_s=5)["result"]
                except (TimeoutError, KeyError):
                    pass
            if len(finals) == len(SITES) and len({f["applied"] for f in finals.values()}) == 1:
                break
            time.sleep(0.5)
        for s in SITES:
            f = finals.get(s)
            self.h.record("info", "final", node=s, applied=f and f["applied"], digest=f and f["digest"],
                          running=self.nodes[s].running(), refused=s in self.refused)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (:func:`replicad.lab.localcluster.free_ports`: from the
    range of ``REPLICAD_LAB_PORTS`` when set, as the test suite sets it per worker process)."""
    from replicad.lab.localcluster import free_ports
    return free_ports(n)


# ---------------------------------------------------------------------- checker
@dataclass
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.detail}"


def read_jsonl(path: Path) -> list[dict]:
    """Events of a JSONL file; a torn last line (a killed writer) is skipped."""
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def check(events: list[dict], applied: dict[str, list[dict]]) -> list[Violation]:
    """Every invariant of the module docstring over ``events`` (the history) and ``applied``
    (site -> that node's applied-log lines). Returns the violations (empty: passed)."""
    out: list[Violation] = []
    events = sorted(events, key=lambda e: e["t"])
    # one sequence: position n -> command, consistent across nodes
    pos: dict[int, str] = {}  # everything ever applied anywhere: a position holds one command, for good
    where: dict[str, set[int]] = {}
    final_logs: dict[str, dict[int, str]] = {}  # per node, the newest line per position: its final log
    reported: set[int] = set()
    for site, lines in applied.items():
        mine = final_logs.setdefault(site, {})
        for ln in lines:
            n, op_id = ln.get("n"), ln.get("op_id")
            if n is None or op_id is None:
                continue
            if pos.setdefault(n, op_id) != op_id and n not in reported:
                reported.add(n)
                out.append(Violation("single_order", f"position {n} was applied as {pos[n]} and as {op_id} (at "
                                                     f"{site}): an applied command was rewritten"))
            mine[n] = op_id
            where.setdefault(op_id, set()).add(n)
    for op_id, ns in where.items():
        if op_id.startswith("jep-") and len(ns) > 1:
            out.append(Violation("exactly_once", f"{op_id} is in the log {len(ns)} times, at {sorted(ns)}"))
    at = {op_id: min(ns) for op_id, ns in where.items()}
    in_final: dict[str, set[str]] = {}  # op_id -> nodes whose final log holds it
    for site, mine in final_logs.items():
        for op_id in mine.values():
            in_final.setdefault(op_id, set()).add(site)
    appends = [e for e in events if e.get("op") == "append"]
    invoked = {e["op_id"]: e for e in appends if e["type"] == "invoke"}
    done = {e["op_id"]: e for e in appends if e["type"] != "invoke"}
    finals = {e["node"]: e for e in events if e.get("op") == "final"}
    present = [f for f in finals.values() if f.get("applied") is not None]
    for op_id, e in done.items():
        if e["type"] == "ok" and op_id not in at:
            out.append(Violation("acknowledged_in_final", f"{op_id} acknowledged by {e['node']} at t={e['t']:.2f} "
                                                          "is in no node's log"))
        elif e["type"] == "ok":
            rewritten = sorted(s for s, mine in final_logs.items() if mine.get(at[op_id], op_id) != op_id)
            if rewritten or not in_final.get(op_id):
                out.append(Violation("acknowledged_in_final", f"{op_id} acknowledged by {e['node']} at "
                                                              f"t={e['t']:.2f} was applied at {at[op_id]}, then "
                                                              f"rewritten: another command there in the final log "
                                                              f"of {rewritten or 'every node'}"))
        if e["type"] == "fail" and op_id in at:
            out.append(Violation("failed_not_committed", f"{op_id} answered {e.get('error')} (a definite failure) "
                                                         f"but is in the log at {at[op_id]}"))
    for op_id in at:
        if op_id.startswith("jep-") and op_id not in invoked:
            out.append(Violation("no_phantom", f"{op_id} is in the log but was never proposed"))
    acked_max = max((at[o] for o, e in done.items() if e["type"] == "ok" and o in at), default=0)
    for f in finals.values():
        if f.get("applied") is None:
            if not f.get("refused"):
                out.append(Violation("acknowledged_in_final", f"{f['node']} has no final state and did not refuse "
                                                              "to start on purpose"))
        elif f["applied"] < acked_max:
            out.append(Violation("acknowledged_in_final", f"{f['node']} applied {f['applied']} commands, an "
                                                          f"acknowledged one is at {acked_max}"))
    if len({(f["applied"], f["digest"]) for f in present}) > 1:
        out.append(Violation("acknowledged_in_final", "final states differ: " + ", ".join(
            f"{f['node']}: {f['applied']} {str(f['digest'])[:12]}" for f in present)))
    if len(present) < 2:
        out.append(Violation("acknowledged_in_final", f"only {len(present)} node(s) have a final state"))
    # real-time order: acknowledged a before b invoked => pos(a) < pos(b)
    oks = sorted(((done[o]["t"], at[o], o) for o in done if done[o]["type"] == "ok" and o in at))
    later = sorted(((invoked[o]["t"], at[o], o) for o in at if o in invoked))
    best = (-1, None)  # the largest position among ops acknowledged before the current invoke
    i = 0
    for t_inv, p, o in later:
        while i < len(oks) and oks[i][0] < t_inv:
            if oks[i][1] > best[0]:
                best = (oks[i][1], oks[i][2])
            i += 1
        if best[0] >= 0 and p < best[0]:
            out.append(Violation("real_time_order", f"{o} (invoked after {best[1]} was acknowledged) is at position "
                                                    f"{p}, before {best[1]} at {best[0]}"))
    # leader after faults
    lead = next((e for e in events if e.get("op") == "leader"), None)
    if lead is None or lead.get("leader") is None or lead["elapsed_s"] > lead["bound_s"]:
        out.append(Violation("leader_after_faults", f"no majority leader within the bound: {lead}"))
    # typed refusals
    out.extend(Violation("typed_refusal", x) for x in raftdisk.refusal_problems(events, "node"))
    return out


def check_run(root: Path) -> tuple[list[dict], list[Violation]]:
    """Read a run directory's history and applied logs; returns (events, violations)."""
    root = Path(root)
    events = read_jsonl(root / "history.jsonl")
    applied = {s: read_jsonl(root / f"{s}.applied.jsonl") for s in SITES if (root / f"{s}.applied.jsonl").exists()}
    return events, check(events, applied)


def summarize(events: list[dict], violations: list[Violation], faults: list[str]) -> dict:
    """One table row: seed, faults drawn, ops invoked/ok/fail/info, refusals, leader s, outcome."""
    ap = [e for e in events if e.get("op") == "append"]
    lead = next((e for e in events if e.get("op") == "leader"), {})
    return {"seed": next((e["seed"] for e in events if e.get("op") == "setup"), None),
            "faults": [e["f"] for e in events if e.get("op") == "fault"],
            "invoked": sum(e["type"] == "invoke" for e in ap), "ok": sum(e["type"] == "ok" for e in ap),
            "fail": sum(e["type"] == "fail" for e in ap), "info": sum(e["type"] == "info" for e in ap),
            "refused_starts": sum(e.get("f") == "start_refused" for e in events),
            "leader_s": lead.get("elapsed_s"), "outcome": "PASS" if not violations else f"FAIL ({len(violations)})"}


def run_seed(root: Path, seed: int, faults: list[str], rounds: int) -> tuple[dict, list[Violation]]:
    """One history: run, check. Returns (summary row, violations)."""
    RaftRun(root, seed).run(faults, rounds)
    events, violations = check_run(root)
    return summarize(events, violations, faults), violations


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos.raftjepsen", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("/tmp/rpl-raftjepsen") / str(int(time.time())))
    ap.add_argument("--check", type=Path, default=None, help="only re-check this run directory")
    args = ap.parse_args(argv)
    if args.check:
        events, violations = check_run(args.check)
        for v in violations:
            print(v)
        return 1 if violations else 0
    faults = args.faults.split(",")
    rows, failed = [], False
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.monotonic()
        row, violations = run_seed(args.out / f"seed-{seed}", seed, faults, args.rounds)
        row["duration_s"] = time.monotonic() - t0
        rows.append(row)
        print(f"seed {seed}: {row['outcome']} in {row['duration_s']:.0f}s", flush=True)
        for v in violations[:20]:
            print("  " + str(v))
        failed |= bool(violations)
    print("| seed | faults | invoked | ok | fail | info | refused starts | leader s | outcome | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {', '.join(r['faults'])} | {r['invoked']} | {r['ok']} | {r['fail']} | {r['info']} | "
              f"{r['refused_starts']} | {r['leader_s'] and round(r['leader_s'], 1)} | {r['outcome']} | "
              f"{r['duration_s']:.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
