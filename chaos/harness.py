"""Real site daemons, each in its own network namespace, joined by a bridge namespace.

Layout of run ``R`` (an integer 1..254, the third octet of every address it uses):

* namespace ``rpl-R-br`` holds the bridge ``br0`` with address ``10.77.R.1/24``;
* data/witness site ``i`` (``site-a``, ``site-b`` ...) runs in namespace ``rpl-R-<letter>``,
  interface ``eth0`` = ``10.77.R.(10+i)/24``, the other end ``vb-<letter>`` on ``br0``;
* each daemon listens on its own address: Raft 7001, peer 7002, admin 7003.

Nothing is created in, or changed in, the caller's network namespace: admin calls are made
from worker threads that entered the *site's own* namespace (``setns(2)``; a socket keeps
the namespace it was created in), so a site cut off by the nemesis stays controllable. The admin API is not on loopback, so every site gets one
admin bearer token (its SHA-256 in ``[[admin.tokens]]``).

Processes are ``ip netns exec NS python -m replicad run site.toml`` (``ip`` execs in place,
so the PID is the daemon's) with ``PYTHONPATH`` = this checkout. :meth:`Cluster.teardown`
SIGCONTs and SIGKILLs them by PID, deletes every namespace it created (which deletes the
veth pairs) and is idempotent; :class:`Cluster` is a context manager.

Requires root and ``ip`` (iproute2). Raises :class:`ChaosSetupError` when they are missing.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from replicad.ops.adminclient import call_admin
from replicad.lab.localcluster import NO_FLOOR_TOML, write_site_keys
from replicad.ops.auth import hash_token
from replicad.core.errors import ReplicadError, UnavailableError

REPO_ROOT = Path(__file__).resolve().parents[1]
RAFT_PORT, PEER_PORT, ADMIN_PORT = 7001, 7002, 7003
RAFT_KEY = "chaos-cluster-shared-raft-password-0123456789"
CLONE_NEWNET = 0x40000000  # <sched.h>
VOLUME = "ehr"


class ChaosSetupError(RuntimeError):
    """The machine cannot host a campaign (not root, no ``ip netns``) or setup failed."""


def sh(*args: str, check: bool = True, timeout_s: float = 20) -> subprocess.CompletedProcess:
    """Run a command (no shell); ChaosSetupError with its stderr when ``check`` and it fails."""
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout_s)
    if check and res.returncode != 0:
        raise ChaosSetupError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def netns_available() -> str | None:
    """None if this process can create network namespaces, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not root"
    try:
        res = sh("ip", "netns", "list", check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return f"ip netns unavailable: {err}"
    return None if res.returncode == 0 else f"ip netns unavailable: {res.stderr.strip()}"


class History:
    """Append-only JSONL history; every event gets ``t`` (``time.monotonic()``, seconds).

    Thread-safe; each line is flushed as written so a killed campaign keeps its history.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._f = open(self.path, "a", buffering=1)

    def record(self, type_: str, op: str, **fields: Any) -> dict:
        """Append ``{t, type, op, **fields}`` (type: invoke | ok | fail | info) and return it."""
        ev = {"t": time.monotonic(), "type": type_, "op": op, **fields}
        line = json.dumps(ev, default=str, sort_keys=True)
        with self._lock:
            self._f.write(line + "\n")
        return ev

    def close(self) -> None:
        with self._lock:
            self._f.close()


def read_history(path: Path) -> list[dict]:
    """The events of a JSONL history file, in order (a torn last line is ignored)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _enter_netns(name: str) -> None:
    """Thread initializer: move the calling thread into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
    finally:
        os.close(fd)


@dataclass
class Site:
    """One site: namespace, address, paths, token and (when running) its process."""

    site_id: str
    kind: str
    ns: str
    veth: str
    addr: str
    dir: Path
    token: str
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def admin_url(self) -> str:
        return f"http://{self.addr}:{ADMIN_PORT}"

    @property
    def config_path(self) -> Path:
        return self.dir / "site.toml"

    @property
    def log_path(self) -> Path:
        return self.dir / "replicad.log"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def volume_path(self, volume: str = VOLUME) -> Path:
        return self.dir / f"{volume}.img"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """A namespaced cluster of ``n_data`` data sites and ``n_witness`` witnesses.

    Args:
        root: run directory (site dirs, history, restores).
        run_id: 1..254, the third octet of ``10.77.run_id.0/24`` and the namespace prefix.
        history: where every action is recorded.
        n_blocks, block_size_bytes: geometry of the one volume ``ehr``.
        min_copies: O2 threshold.
    """

    root: Path
    run_id: int
    history: History
    n_data: int = 3
    n_witness: int = 0
    n_blocks: int = 32
    block_size_bytes: int = 65536
    min_copies: int = 2
    sites: dict[str, Site] = field(default_factory=dict)
    _created_ns: list[str] = field(default_factory=list)
    _pools: dict[str, concurrent.futures.ThreadPoolExecutor] = field(default_factory=dict)
    _ready: bool = False
    _poller: threading.Thread | None = None
    _stop_poll: threading.Event = field(default_factory=threading.Event)
    _paused: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not 1 <= self.run_id <= 254:
            raise ChaosSetupError(f"run_id {self.run_id} outside 1..254")
        self.root = Path(self.root)
        self.bridge_ns = f"rpl-{self.run_id}-br"
        for i in range(self.n_data + self.n_witness):
            letter = chr(ord("a") + i)
            sid = f"site-{letter}"
            self.sites[sid] = Site(sid, "data" if i < self.n_data else "witness", f"rpl-{self.run_id}-{letter}",
                                   f"vb-{letter}", f"10.77.{self.run_id}.{10 + i}", self.root / sid,
                                   secrets.token_urlsafe(24))

    @property
    def data_sites(self) -> list[str]:
        return [s for s, site in self.sites.items() if site.kind == "data"]

    # ------------------------------------------------------------------ network
    def setup(self) -> None:
        """Create the namespaces, bridge, veth pairs and addresses; write configs; start the admin pool."""
        why = netns_available()
        if why:
            raise ChaosSetupError(why)
        self._delete_stale()
        self.root.mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", self.bridge_ns)
        self._created_ns.append(self.bridge_ns)
        b = ["ip", "-n", self.bridge_ns]
        sh(*b, "link", "set", "lo", "up")
        sh(*b, "link", "add", "br0", "type", "bridge")
        sh(*b, "addr", "add", f"10.77.{self.run_id}.1/24", "dev", "br0")
        sh(*b, "link", "set", "br0", "up")
        for s in self.sites.values():
            sh("ip", "netns", "add", s.ns)
            self._created_ns.append(s.ns)
            # both ends are created inside our namespaces: the caller's namespace is never touched
            sh(*b, "link", "add", s.veth, "type", "veth", "peer", "name", "eth0", "netns", s.ns)
            sh(*b, "link", "set", s.veth, "master", "br0", "up")
            sh("ip", "-n", s.ns, "link", "set", "lo", "up")
            sh("ip", "-n", s.ns, "addr", "add", f"{s.addr}/24", "dev", "eth0")
            sh("ip", "-n", s.ns, "link", "set", "eth0", "up")
        for s in self.sites.values():
            self._pools[s.site_id] = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix=f"admin-{s.site_id}", initializer=_enter_netns, initargs=(s.ns,))
        self._ready = True
        self._write_configs()
        self.history.record("info", "setup", wall=time.time(), run_id=self.run_id, volume=VOLUME, n_blocks=self.n_blocks,
                            block_size=self.block_size_bytes, min_copies=self.min_copies,
                            sites={s: site.kind for s, site in self.sites.items()}, root=str(self.root))

    def _delete_stale(self) -> None:
        """Remove namespaces of an earlier crashed run with the same id (only ``rpl-<run>-*``)."""
        res = sh("ip", "netns", "list", check=False)
        prefix = f"rpl-{self.run_id}-"
        for line in res.stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(prefix):
                sh("ip", "netns", "del", name, check=False)

    def _write_configs(self) -> None:
        # every site signs with its own key; retention is exercised at the Raft level, so the sites'
        # local floor protects nothing here and approved changes apply without a cooling-off
        public = write_site_keys({s.site_id: s.dir for s in self.sites.values()})
        cluster_id = "chaos-" + secrets.token_hex(4)
        members = "".join(
            f'\n[[sites]]\nsite_id = "{s.site_id}"\nraft = "{s.addr}:{RAFT_PORT}"\n'
            f'peer_url = "http://{s.addr}:{PEER_PORT}"\nadmin_url = "{s.admin_url}"\nkind = "{s.kind}"\n'
            f'public_key = "{public[s.site_id]}"\n'
            for s in self.sites.values())
        primary = self.data_sites[0]
        for s in self.sites.values():
            s.dir.mkdir(parents=True, exist_ok=True)
            (s.dir / "raft.key").write_text(RAFT_KEY)
            os.chmod(s.dir / "raft.key", 0o600)
            vols = ""
            if s.kind == "data":
                vols = (f'\n[[volumes]]\nname = "{VOLUME}"\npath = "{s.volume_path()}"\n'
                        f'block_size = "{self.block_size_bytes // 1024}KiB"\ninterval = "1h"\n'
                        f'min_copies = {self.min_copies}\ninitial_primary = "{primary}"\napply_delay = "0s"\n')
            s.config_path.write_text(
                f'site_id = "{s.site_id}"\ncluster_id = "{cluster_id}"\ndata_dir = "{s.data_dir}"\nlog_level = "info"\n'
                f'[raft]\nbind = "{s.addr}:{RAFT_PORT}"\npassword_file = "raft.key"\n'
                f'[peer]\nlisten = "{s.addr}:{PEER_PORT}"\n[admin]\nlisten = "{s.addr}:{ADMIN_PORT}"\n'
                f'[[admin.tokens]]\nname = "chaos"\nrole = "admin"\nsha256 = "{hash_token(s.token)}"\n'
                '[identity]\nkey_file = "site.key"\n[policy]\ncooling_off = "0s"\n' + NO_FLOOR_TOML
                + members + vols)

    def link(self, site_id: str, up: bool) -> None:
        """Bring the bridge end of a site's veth up or down (down = the site is cut off)."""
        sh("ip", "-n", self.bridge_ns, "link", "set", self.sites[site_id].veth, "up" if up else "down")

    def blackhole(self, site_id: str, peer_id: str, on: bool) -> None:
        """Drop everything ``site_id`` sends to ``peer_id`` (a blackhole route in its namespace)."""
        s, p = self.sites[site_id], self.sites[peer_id]
        sh("ip", "-n", s.ns, "route", "add" if on else "del", "blackhole", f"{p.addr}/32", check=on)

    def throttle(self, site_id: str, rate: str | None) -> None:
        """Limit a site's egress to ``rate`` (tc htb, e.g. ``"256kbit"``); None removes the limit.

        The kernel of the test machines has no ``netem``, so a slow link is a rate limit.
        """
        ns = self.sites[site_id].ns
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if rate is not None:
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb",
               "default", "10")
            sh("ip", "netns", "exec", ns, "tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10",
               "htb", "rate", rate, "ceil", rate)

    # ------------------------------------------------------------------ processes
    def start(self, site_id: str) -> None:
        """Start (or restart) a site's daemon inside its namespace."""
        s = self.sites[site_id]
        if s.running():
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        with open(s.log_path, "ab") as log:
            log.write(f"\n===== chaos start #{s.starts + 1} at {time.time():.3f}\n".encode())
            s.proc = subprocess.Popen(["ip", "netns", "exec", s.ns, sys.executable, "-m", "replicad", "run",
                                       str(s.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=s.dir, start_new_session=True)
        s.starts += 1
        self._paused.discard(site_id)

    def signal(self, site_id: str, sig: int) -> None:
        """Send ``sig`` to a site's daemon by PID; SIGKILL also reaps it."""
        s = self.sites[site_id]
        if not s.running():
            return
        s.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            self._paused.add(site_id)
        elif sig == signal.SIGCONT:
            self._paused.discard(site_id)
        elif sig == signal.SIGKILL:
            s.proc.wait(timeout=20)
            self._paused.discard(site_id)

    def teardown(self) -> None:
        """Stop polling, kill every process we started (by PID), delete our namespaces. Idempotent."""
        self._stop_poll.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        for s in self.sites.values():
            if s.running():
                try:
                    s.proc.send_signal(signal.SIGCONT)
                    s.proc.send_signal(signal.SIGKILL)
                    s.proc.wait(timeout=20)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools.clear()
        self._ready = False
        for ns in reversed(self._created_ns):
            sh("ip", "netns", "del", ns, check=False)
        self._created_ns.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.teardown()

    def log_tail(self, site_id: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.sites[site_id].log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ admin API
    def api(self, site_id: str, method: str, path: str, body: dict | None = None, timeout_s: float = 60) -> Any:
        """Call a site's admin API from inside its namespace (bearer token); raises the
        ReplicadError named by an error answer, PeerUnavailableError if unreachable."""
        if not self._ready:
            raise ChaosSetupError("cluster not set up")
        s = self.sites[site_id]
        fut = self._pools[site_id].submit(call_admin, s.admin_url, method, path, body, timeout_s, s.token)
        try:
            return fut.result(timeout=timeout_s + 5)
        except concurrent.futures.TimeoutError:
            raise UnavailableError(f"admin call {method} {path} at {site_id} did not return",
                                   site=site_id) from None

    def status(self, site_id: str, timeout_s: float = 5) -> dict:
        return self.api(site_id, "GET", "/v1/status", timeout_s=timeout_s)

    def snapshots(self, site_id: str, timeout_s: float = 10) -> dict:
        return self.api(site_id, "GET", f"/v1/volumes/{VOLUME}/snapshots", timeout_s=timeout_s)

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout_s: float = 60,
                 interval_s: float = 0.3) -> Any:
        """Poll ``predicate()`` until truthy (ReplicadError counts as "not yet");
        UnavailableError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except ReplicadError as err:
                last = err
            time.sleep(interval_s)
        raise UnavailableError(f"timed out after {timeout_s}s waiting for {what}", last=str(last)[:300])

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Every running site knows a Raft leader and (data sites) the volume's epoch."""
        def ready() -> bool:
            for s in self.sites.values():
                if not s.running():
                    continue
                st = self.status(s.site_id)
                if st["raft"].get("leader") is None:
                    return False
                if s.kind == "data" and st["volumes"].get(VOLUME, {}).get("epoch") is None:
                    return False
            return True

        self.wait_for("cluster ready", ready, timeout_s)

    # ------------------------------------------------------------------ observation
    def poll_once(self) -> None:
        """Record one ``status`` event per reachable running site (role, epochs, standby)."""
        def one(sid: str) -> None:
            if not self.sites[sid].running() or sid in self._paused:
                return
            try:
                st = self.status(sid, timeout_s=2)
            except ReplicadError:
                return
            v = st["volumes"].get(VOLUME, {})
            self.history.record("info", "status", site=sid, leader=st["raft"].get("leader"),
                                current=(st.get("view") or {}).get("current"), primary=v.get("primary"), epoch=v.get("epoch"), role=v.get("role"),
                                acting_epoch=v.get("acting_epoch"), newest_committed=v.get("newest_committed"),
                                newest_clean=v.get("newest_clean"), standby_seq=v.get("standby_seq"),
                                rpo_s=v.get("rpo_s"), n_divergent=len(v.get("divergent") or []))

        threads = [threading.Thread(target=one, args=(sid,), daemon=True) for sid in self.sites]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=6)

    def record_catalog(self, site_id: str) -> dict | None:
        """Record a ``catalog`` event: the Raft catalog as ``site_id`` sees it ({seq: root, epoch, holders})."""
        try:
            snaps = self.snapshots(site_id)
        except ReplicadError:
            return None
        cat = {str(s["seq"]): {"root": s["root"], "epoch": s["epoch"], "holders": sorted(s["holders"]),
                               "verdict": s["verdict"]} for s in snaps["snapshots"]}
        self.history.record("info", "catalog", site=site_id, epoch=snaps["epoch"], primary=snaps["primary"],
                            snapshots=cat, divergent=[{"epoch": d["epoch"], "seq": d["seq"], "root": d["root"]}
                                                      for d in snaps["divergent"]])
        return snaps

    def record_log_events(self) -> None:
        """Record one ``acted_primary`` event per "is primary of VOL at epoch N" line of each
        site's log, with ``t`` converted from the log's local wall clock to the history's clock,
        and one ``pruned`` event {site, volume, seqs} per "retention pruned" line (pruning the
        daemons did on their own, which the history does not see otherwise)."""
        import datetime
        import re

        pat = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*site (\S+) is primary of (\S+) at epoch (\d+)")
        pruned = re.compile(r"retention pruned (\S+) snapshots \[([\d, ]*)\]")
        offset = time.monotonic() - time.time()
        for s in self.sites.values():
            try:
                text = s.log_path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                pm = pruned.search(line)
                if pm:
                    self.history.record("info", "pruned", site=s.site_id, volume=pm.group(1),
                                        seqs=[int(x) for x in pm.group(2).replace(",", " ").split()], line=line[:200])
                m = pat.match(line)
                if m:
                    wall = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1e3
                    self.history.record("info", "acted_primary", site=m.group(3), volume=m.group(4),
                                        epoch=int(m.group(5)), log_t=wall + offset, line=line[:200])

    def start_polling(self, interval_s: float = 0.5) -> None:
        """Poll every site's status in the background until :meth:`teardown` / :meth:`stop_polling`."""
        self._stop_poll.clear()

        def loop() -> None:
            while not self._stop_poll.wait(interval_s):
                self.poll_once()

        self._poller = threading.Thread(target=loop, name="status-poller", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop_poll.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None
