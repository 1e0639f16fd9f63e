"""The site daemon: one process per site, wiring store, catalog, Raft, peer and admin servers,
and one :class:`VolumeRunner` per protected volume.

What a runner does each tick (every 0.5 s or when woken):

* **primary** (Raft says ``primary == me`` and this site acts under that epoch): when the
  interval is due, run one replication cycle — capture+scan (:mod:`replicad.sources.file`), judge
  (:mod:`replicad.core.anomaly`), ship to every data peer concurrently (:mod:`replicad.peer.transport`),
  commit through Raft once ``min_copies`` sites stored it (O2).
* **newly granted primary** (promotion): role ``restoring`` — bring the local image to the
  newest clean committed snapshot (only differing blocks), verify its root (O5), then act
  under the new epoch.
* **fenced** (Raft shows a newer epoch than the one this site acts under): stop producing
  at once (O3: the Raft apply callback sets the fence flag on the tick thread, before the
  loop even wakes), keep any uncommitted snapshots and the image's current content as a
  ``divergent`` branch, then resync as a replica.
* **replica**: hold the newest committed and newest clean snapshots (pull what is missing
  from holders), and apply the newest clean one to the standby image after ``apply_delay``;
  never a suspect snapshot.

Pure decisions live elsewhere (state machine, role table, anomaly, retention); this module
does I/O and ordering. Blocking work goes to worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import ssl
import signal
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from replicad.core import anomaly
from replicad.storage import fingerprints
from replicad.core import retention
from replicad.core import roles
from replicad.storage.catalog import Catalog, RestoreRecord, SnapshotRecord
from replicad.storage.durable import fsync_dir
from replicad.storage.chunkstore import ChunkStore
from replicad.config import SiteConfig, VolumeConfig
from replicad.consensus.raft import RaftNode
from replicad.core.errors import (ConfigError, ConflictError, IntegrityError, NoQuorumError, NotFoundError, NotPrimaryError,
                     ReplicadError, StaleEpochError, UsageError, _jsonable, from_os_error, is_transient)
from replicad.core.manifest import Manifest, changed_digests, chunk_digests, iter_block_digests, page_entries
from replicad.telemetry.metrics import SiteMetrics
from replicad.storage.image import apply_snapshot, check_target_size, target_error, verify_image
from replicad.sources.file import take_snapshot
from replicad.peer.tls import check_site_tls, client_context, server_context
from replicad.core.state import CLOCK_REPORT_PERIOD_NS, newest_clean, newest_committed, newest_common, quorum_now_ns
from replicad.peer.transport import PeerClient, SharedFrames, peer_routes, snapshot_complete

log = logging.getLogger("replicad.site.daemon")

TICK_S = 0.5
PROPOSE_TIMEOUT_S = 5.0
RETENTION_TICK_S = 60.0
CLOCK_HEARTBEAT_S = CLOCK_REPORT_PERIOD_NS / 1e9  # Raft-reported site clocks (lock window by a majority)
OPERATIONS_KEPT = 100
PARTIAL_SUFFIX = ".partial"  # a restore's image until its root verified (then renamed onto the target)
SHUTDOWN_GRACE_S = 10.0    # well inside systemd's TimeoutStopSec=60
STRAGGLER_GRACE_S = 2.0    # after min_copies stored, how long to wait for the other replicas
# Scans running at once on a site (each uses every core for its batches and holds 16 MiB of
# read buffers): more would not finish sooner, and peak memory would grow with the number of
# volumes (8 sparse volumes scanned at once: 326 MB peak RSS, vs 8 MiB batches: 271 MB).
SCAN_SLOTS = max(1, min(4, os.cpu_count() or 1))
EPOCH_CATCH_UP_S = 2.0     # how long a receiver waits to apply an epoch a sender already has
PROPOSE_DEADLINE_S = 15.0   # how long a proposal waits for a leader election (seen: 0.5-2.1 s)


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Operation:
    """A long-running admin operation (restore) with progress, polled by the CLI."""

    id: str
    kind: str
    volume: str
    state: str = "running"                  # running | done | failed
    phase: str = "starting"                 # fetching | writing | verifying
    done_blocks: int = 0
    total_blocks: int = 0
    result: dict | None = None
    error: ReplicadError | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def progress(self, done: int, total: int) -> None:
        """Progress callback (called from worker threads; plain attribute stores)."""
        self.done_blocks, self.total_blocks = done, total

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "volume": self.volume, "state": self.state, "phase": self.phase,
                "done_blocks": self.done_blocks, "total_blocks": self.total_blocks, "result": self.result,
                "error": self.error.to_dict() if self.error else None, "started_at": self.started_at,
                "finished_at": self.finished_at}


@dataclass
class VolumeRunner:
    """Per-volume state of this site (mutated only on the event loop, except ``fence_flag``)."""

    cfg: VolumeConfig
    role: str = "replica"
    acting_epoch: int | None = None
    parent: Manifest | None = None          # newest committed manifest of our line (primary)
    # monotonic; cycles run one interval apart, the first one interval after start/promotion
    last_cycle_at: float = field(default_factory=time.monotonic)
    fence_flag: threading.Event = field(default_factory=threading.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    became_primary: asyncio.Event = field(default_factory=asyncio.Event)
    last_error: str | None = None
    last_report: dict[str, Any] = field(default_factory=dict)
    snapshot_now: bool = False
    standby_applying: bool = False          # the standby is being rewritten (its record is cleared)


class SiteDaemon:
    """One site. ``await start()``, then ``await run_until_stopped()``; ``await stop()`` cleans up.

    Args:
        cfg: the validated site configuration.
    """

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.site_id = cfg.site_id
        self.data_dir = Path(cfg.data_dir)
        self.runners = {v.name: VolumeRunner(cfg=v) for v in cfg.volumes}
        self.store: ChunkStore | None = None
        self.catalog: Catalog | None = None
        self.raft: RaftNode | None = None
        self.session: aiohttp.ClientSession | None = None
        self.peers: PeerClient | None = None
        self._web_runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self.operations: dict[str, Operation] = {}
        self.interrupted_restores: list[str] = []  # in-place restore targets a crash left incomplete
        self._restoring: set[str] = set()  # resolved targets of the restores running now
        self._scan_slots = asyncio.Semaphore(SCAN_SLOTS)  # see SCAN_SLOTS
        self._data_dir_lock: int | None = None  # fd holding the flock of data_dir/lock
        self.metrics = SiteMetrics.for_site(cfg, self.status, lambda: self.raft.view() if self.raft else {})
        self._background: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the store and catalog, start Raft, the peer and admin servers and the runners."""
        self._loop = asyncio.get_running_loop()
        if self.cfg.tls is not None:  # before anything opens: a bad certificate stops the start
            check_site_tls(self.cfg.tls, self.site_id)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self.store = await asyncio.to_thread(ChunkStore, self.data_dir / "chunks")
        self.catalog = Catalog(self.data_dir / "catalog.db")
        me = self.cfg.self_ref()
        partners = [s.raft for s in self.cfg.sites if s.site_id != self.site_id]
        (self.data_dir / "raft").mkdir(exist_ok=True)
        self.raft = RaftNode(me.raft, partners, self.data_dir / "raft",
                             self.cfg.raft_password.get_secret_value(), on_applied=self._on_applied,
                             needs_leader=self._acts_as_primary)
        for name, runner in self.runners.items():
            runner.acting_epoch = self.catalog.acting_epoch(name)
            runner.role = "primary" if runner.acting_epoch is not None else "replica"
        await asyncio.to_thread(self._recover_restores)
        self.raft.start()
        tls = self.cfg.tls
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(tls)) if tls is not None else None)
        self.peers = PeerClient(self.session, self.site_id)
        from replicad.ops.admin import admin_routes  # admin imports daemon types

        await self._serve(peer_routes(self), self.cfg.peer_listen, client_max_size=64 * 2**20,
                          ssl_context=server_context(tls) if tls is not None else None)
        await self._serve(admin_routes(self), self.cfg.admin_listen)
        self._tasks.append(asyncio.create_task(self._bootstrap(), name="bootstrap"))
        for runner in self.runners.values():
            self._tasks.append(asyncio.create_task(self._run_volume(runner), name=f"volume:{runner.cfg.name}"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
        self._tasks.append(asyncio.create_task(self._clock_loop(), name="clock"))
        log.info("site %s started: peer %s admin %s raft %s", self.site_id, self.cfg.peer_listen,
                 self.cfg.admin_listen, me.raft)

    def _lock_data_dir(self) -> None:
        """Take ``data_dir/lock`` (flock, held until the process exits) so that a second
        daemon started on the same data dir stops before it touches anything.
        Raises ConflictError naming the holder's PID; InternalError-like OS errors typed."""
        path = self.data_dir / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as err:
            raise from_os_error(err, f"open {path}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConflictError(f"data dir {self.data_dir} is in use by another replicad process (pid {holder})",
                                data_dir=str(self.data_dir), pid=holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._data_dir_lock = fd  # held until stop() or the process ends

    def _acts_as_primary(self) -> bool:
        """True while this site acts as the primary of a volume (read on the Raft tick thread:
        its snapshot commits need a reachable leader, see consensus point 7)."""
        return any(r.acting_epoch is not None for r in list(self.runners.values()))

    async def _serve(self, routes: list[web.RouteDef], listen: str, ssl_context: ssl.SSLContext | None = None,
                     **app_kw: Any) -> None:
        app = web.Application(**app_kw)
        app.add_routes(routes)
        # on stop, in-flight requests get SHUTDOWN_GRACE_S to finish, then are abandoned
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        host, port = _host_port(listen)
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        self._web_runners.append(runner)

    def request_stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this)."""
        if not self._stopping.is_set():
            log.info("site %s stopping: in-flight work is abandoned; everything already stored stays stored",
                     self.site_id)
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stopping.wait()

    async def wait_joined(self, notifier) -> None:
        """Wait until Raft knows a leader, then notify READY (systemd ``Type=notify``)."""
        assert self.raft is not None
        t0 = time.monotonic()
        while self.raft.status().get("leader") is None:
            notifier.status(f"waiting for a Raft leader ({time.monotonic() - t0:.0f}s): a majority of the "
                            f"{len(self.cfg.sites)} sites must be reachable")
            await asyncio.sleep(0.5)
        notifier.ready(f"serving: site {self.site_id}, {len(self.runners)} volume(s), "
                       f"Raft leader {self.raft.status().get('leader')}")
        log.info("site %s ready (Raft leader known)", self.site_id)

    async def reload_from(self, config_path: Path, notifier) -> dict:
        """SIGHUP: re-read the config file and apply every change that can be applied live
        (:func:`reload_plan`); a change that needs a restart keeps its old value until then
        and is logged (WARNING) and shown in systemd's STATUS. A config that fails validation
        is refused as a whole (logged with every problem); the daemon keeps its current config.
        Returns ``{"applied": [key path], "refused": [key path]}``.
        """
        from replicad.config import load_config
        from replicad.telemetry.systemd import configure_logging

        notifier.reloading()
        try:
            new = load_config(config_path)
        except ReplicadError as err:
            log.error("reload refused, config invalid: %s", "; ".join(getattr(err, "problems", []) or [str(err)]))
            notifier.ready("serving (reload refused: config invalid)")
            return {"applied": [], "refused": ["invalid config"]}
        safe, unsafe = reload_plan(self.cfg, new)
        try:
            live = live_config(self.cfg, new)
        except ConfigError as err:
            log.error("reload refused: the live changes %s are invalid without the changes that need a restart "
                      "(%s): %s", ", ".join(safe), ", ".join(unsafe), "; ".join(err.problems))
            notifier.ready("serving (reload refused: restart needed)")
            return {"applied": [], "refused": safe + unsafe}
        self.cfg = live
        for v in self.cfg.volumes:
            self.runners[v.name].cfg = v
        configure_logging(self.cfg.log_level)
        log.info("reloaded %s: %s", config_path, ", ".join(safe) or "no change applied")
        if unsafe:
            log.warning("reload: these changes need a restart and keep their old value until then: %s",
                        ", ".join(unsafe))
            notifier.ready(f"serving (configuration reloaded; restart needed for: {', '.join(unsafe)})")
        else:
            notifier.ready("serving (configuration reloaded)")
        return {"applied": safe, "refused": unsafe}

    async def stop(self) -> None:
        """Cancel runners, close servers, Raft, catalog and store — each only if it was opened."""
        tasks = [*self._tasks, *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in self._web_runners:
            await r.cleanup()
        if self.session is not None:
            await self.session.close()
        if self.raft is not None:
            await asyncio.to_thread(self.raft.close)
        if self.catalog is not None:
            self.catalog.close()
        if self.store is not None:
            self.store.close()
        if self._data_dir_lock is not None:
            os.close(self._data_dir_lock)  # releases the flock
            self._data_dir_lock = None

    # ------------------------------------------------------------------ raft bridge
    def _on_applied(self, command: dict, result: dict) -> None:
        """Called on the Raft tick thread after each applied command.

        O3: a promotion/demotion that advances a volume's epoch past the one this site acts
        under sets the runner's fence flag right here, before anything else runs for it.
        """
        if not result.get("ok") or command.get("op") not in ("promote", "demote"):
            return
        runner = self.runners.get(command.get("volume", ""))
        if runner is None:
            return
        new_epoch = result.get("epoch")
        if runner.acting_epoch is not None and isinstance(new_epoch, int) and new_epoch > runner.acting_epoch \
                and not (command.get("op") == "promote" and command.get("to") == self.site_id):
            runner.fence_flag.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(runner.wake.set)

    async def propose(self, op: str, *, deadline_s: float = PROPOSE_DEADLINE_S, **args: Any) -> dict:
        """Propose a command through Raft as this site and return its result.

        Retries the *same* command (same ``op_id``, so it applies at most once) while no
        leader is reachable — e.g. during the election that follows the loss of the leader
        — until ``deadline_s``; then NoQuorumError: a minority partition cannot commit.
        State machine refusals (StaleEpochError, ConflictError ...) are raised at once.
        """
        assert self.raft is not None
        cmd = {"op": op, "by": self.site_id, "now_ns": time.time_ns(), "op_id": uuid.uuid4().hex, **args}
        deadline = time.monotonic() + deadline_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self.raft.propose(cmd, timeout_s=max(0.5, min(PROPOSE_TIMEOUT_S, remaining)))
            except NoQuorumError:
                if time.monotonic() + 0.3 >= deadline:
                    raise
                await asyncio.sleep(0.3)

    def raft_synced(self) -> bool:
        """True when this site's applied Raft state is current: a leader is known and every
        entry it reported committed is applied here, and a majority is connected. A restarted
        site replays an old log
        first; acting on that view would act under a superseded epoch (found by the chaos
        campaign, crash-all seeds 2 and 3)."""
        assert self.raft is not None
        st = self.raft.status()
        # has_quorum: pysyncobj keeps a lone node's last leader forever (it only starts an
        # election when connected to someone), so "a leader is known" alone proves nothing.
        return (st.get("leader") is not None and bool(st.get("has_quorum"))
                and st.get("last_applied", 0) >= st.get("commit_index", 0))

    async def wait_synced(self, timeout_s: float = PROPOSE_DEADLINE_S) -> None:
        """Wait until :meth:`raft_synced`; NoQuorumError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.raft_synced():
            if time.monotonic() >= deadline:
                raise NoQuorumError("this site's view of the cluster is not current (no Raft leader, or the log "
                                    "is still being applied)", site=self.site_id, raft=self.raft.status())
            await asyncio.sleep(0.1)

    def volume_state(self, name: str) -> dict | None:
        assert self.raft is not None
        return self.raft.view()["volumes"].get(name)  # read only: never mutate what this returns

    async def _bootstrap(self) -> None:
        """Register this site and its volumes in the Raft state (idempotent; retried until a quorum)."""
        me = self.cfg.self_ref()
        while True:
            try:
                await self.propose("register_site", site_id=self.site_id, peer_url=me.peer_url, kind=me.kind)
                for v in self.cfg.volumes:
                    vs = self.volume_state(v.name)
                    if vs is None:
                        await self.propose("add_volume", volume=v.name, primary=v.initial_primary,
                                           block_size=v.block_size_bytes, size_bytes=0, min_copies=v.min_copies,
                                           retention=_retention_dict(v))
                log.info("site %s registered in the cluster", self.site_id)
                return
            except ConflictError as err:
                log.warning("bootstrap refused: %s %s", err, err.evidence)
                return
            except NotFoundError as err:  # e.g. the initial primary has not registered yet
                log.info("bootstrap waiting: %s", err)
                await asyncio.sleep(1.0)
            except ReplicadError as err:
                log.info("bootstrap waiting for a quorum: %s", err)
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ helpers
    def peer_url(self, site_id: str) -> str:
        for s in self.cfg.sites:
            if s.site_id == site_id:
                return s.peer_url
        raise NotFoundError(f"unknown site {site_id}", site=site_id)

    def data_peers(self) -> list[str]:
        return [s.site_id for s in self.cfg.sites if s.site_id != self.site_id and s.kind == "data"]

    def load_manifest(self, root: bytes) -> Manifest:
        assert self.store is not None
        return Manifest.decode(self.store.get(root))

    # PeerHost ---------------------------------------------------------------
    def complete_base(self, volume: str) -> Manifest | None:
        """The newest snapshot of ``volume`` in this site's catalog whose manifest is here:
        every recorded snapshot's chunks are kept live by :meth:`_gc`, and a record is only
        written once the snapshot was complete (received, produced, or fetched). None while
        the store has chunks to repair (``ChunkStore.repairs_pending``): a recorded snapshot
        may then lack one, and every block is looked up instead."""
        assert self.catalog is not None and self.store is not None
        if self.store.repairs_pending:
            return None
        for rec in sorted(self.catalog.list(volume), key=lambda r: r.seq, reverse=True):
            if self.store.has(rec.root):
                return self.load_manifest(rec.root)
        return None

    async def check_write_epoch(self, volume: str, epoch: int, sender: str) -> None:
        """Fencing of peer writes: only the primary named by Raft, at exactly the committed
        epoch, may store snapshots here.

        An epoch newer than this site has applied (its Raft view lags the sender's by a few
        milliseconds after a promotion) is given up to EPOCH_CATCH_UP_S to arrive; it is
        never trusted on the sender's word. Raises NotFoundError (unknown volume or sender),
        StaleEpochError (older epoch, or a newer one this site never learns), NotPrimaryError.
        """
        if not any(s.site_id == sender and s.kind == "data" for s in self.cfg.sites):
            raise NotFoundError(f"{sender!r} is not a data site of this cluster", sender=sender, volume=volume)
        deadline = time.monotonic() + EPOCH_CATCH_UP_S
        while True:
            vs = self.volume_state(volume)
            if vs is None:
                raise NotFoundError(f"unknown volume {volume}", volume=volume)
            if epoch <= vs["epoch"] or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        if epoch != vs["epoch"]:
            raise StaleEpochError(f"{sender} writes {volume} under epoch {epoch}, committed epoch here is "
                                  f"{vs['epoch']}", volume=volume, got_epoch=epoch, committed_epoch=vs["epoch"],
                                  sender=sender)
        if vs["primary"] != sender:
            raise NotPrimaryError(f"{sender} is not the primary of {volume} at epoch {epoch}",
                                  volume=volume, epoch=epoch, sender=sender, primary=vs["primary"])

    def chunks_received(self, volume: str, sender: str, payload_bytes: int) -> None:
        self.metrics.received(volume, sender, payload_bytes)

    async def snapshot_received(self, volume: str, epoch: int, seq: int, root: bytes, created_at_ns: int) -> None:
        assert self.catalog is not None
        if self.catalog.find_root(volume, root) is None:
            await asyncio.to_thread(self.catalog.put, SnapshotRecord(volume, epoch, seq, root, "received",
                                                                     created_at_ns))

    # ------------------------------------------------------------------ volume loop
    async def _run_volume(self, runner: VolumeRunner) -> None:
        name = runner.cfg.name
        while True:
            try:
                async with runner.lock:
                    worked = await self._step(runner)
                if worked:  # an idle tick proves nothing: the last failure stays visible in status
                    runner.last_error = None
            except asyncio.CancelledError:
                raise
            except ReplicadError as err:
                runner.last_error = f"{err.code}: {err}"
                if runner.role == "primary":
                    self.metrics.cycle_failed(name)
                (log.info if is_transient(err) else log.warning)("volume %s: %s %s", name, err, err.evidence)
            except Exception as err:  # noqa: BLE001 — a runner must survive its own bugs, loudly
                runner.last_error = f"internal: {err!r}"
                log.exception("volume %s: unexpected error", name)
            runner.wake.clear()
            try:
                await asyncio.wait_for(runner.wake.wait(), TICK_S)
            except asyncio.TimeoutError:
                pass

    async def _step(self, runner: VolumeRunner) -> bool:
        """One tick of the volume's role; True if it did work that succeeded (a cycle, a
        fence, a takeover, a replica step), False for an idle tick."""
        vs = self.volume_state(runner.cfg.name)
        if vs is None:
            return False
        # A stale view (restart, cut off from the majority) can only show an older epoch than the
        # truth: fencing on it is safe, and so is going on producing under the epoch this site
        # already acts under (nothing commits without a majority; uncommitted snapshots become
        # divergent). Taking a role over on it is not.
        if runner.fence_flag.is_set() or (runner.acting_epoch is not None and
                                          (vs["primary"] != self.site_id or vs["epoch"] > runner.acting_epoch)):
            await self._fence(runner, vs)
            return True
        if vs["primary"] == self.site_id:
            worked = False
            if runner.acting_epoch != vs["epoch"]:
                if not self.raft_synced():
                    return False  # never become primary on a stale view (chaos crash-all seeds 2, 3)
                await self._become_primary(runner, vs)
                worked = True
            due = time.monotonic() - runner.last_cycle_at >= runner.cfg.interval_s
            if due or runner.snapshot_now:
                runner.snapshot_now = False
                await self.cycle(runner)
                worked = True
            return worked
        await self._replica_step(runner, vs)
        return True

    def _transition(self, runner: VolumeRunner, event: str) -> None:
        """Change the runner's role through the one role table (ConflictError if illegal)."""
        new = roles.next_role(runner.role, event)
        if new != runner.role:
            log.info("volume %s: role %s -> %s (%s)", runner.cfg.name, runner.role, new, event)
        runner.role = new

    # ------------------------------------------------------------------ primary
    async def _become_primary(self, runner: VolumeRunner, vs: dict) -> None:
        """Granted primary at ``vs['epoch']``: restore the newest clean snapshot (O5), then act."""
        assert self.catalog is not None
        name = runner.cfg.name
        t0 = time.monotonic()
        seq = newest_clean(vs)
        report: dict[str, Any] = {"epoch": vs["epoch"], "restored_seq": seq}
        if runner.role in ("fenced", "divergent"):
            # promoted before its resync finished: the restore below *is* the resync (the
            # divergent snapshots stay listed in the catalog)
            self._transition(runner, "resynced")
        retry = runner.role == "restoring"  # a previous restore attempt failed: resume it
        if not retry:
            self._transition(runner, "granted_primary")
        if seq is not None:
            if not retry:
                self._transition(runner, "restore_started")
            manifest = await self.ensure_snapshot(name, seq, vs)
            t_fetched = time.monotonic()
            standby = self.catalog.standby(name)
            base = None
            if standby is not None and standby.root != manifest.root and self.store.has(standby.root):
                base = self.load_manifest(standby.root)
            elif standby is not None and standby.root == manifest.root:
                base = manifest
            applied = await self.apply_repairing(name, Path(runner.cfg.path), manifest, base=base)
            t_applied = time.monotonic()
            await asyncio.to_thread(verify_image, runner.cfg.path, manifest)  # O5
            await asyncio.to_thread(self.catalog.set_standby, name, seq, manifest.root)
            runner.parent = manifest
            report.update(blocks_written=applied.blocks_written, bytes_written=applied.bytes_written,
                          phases={"fetch_s": t_fetched - t0, "write_s": t_applied - t_fetched,
                                  "verify_s": time.monotonic() - t_applied})
        else:
            runner.parent = None
        runner.acting_epoch = vs["epoch"]
        await asyncio.to_thread(self.catalog.set_acting_epoch, name, vs["epoch"])
        runner.fence_flag.clear()
        if runner.role == "restoring":
            self._transition(runner, "restore_done")  # O5: the root matched
        report["rto_s"] = time.monotonic() - t0
        runner.last_report = report
        runner.last_cycle_at = time.monotonic()  # the restored snapshot is committed: next one in an interval
        runner.became_primary.set()
        log.info("site %s is primary of %s at epoch %d (%s)", self.site_id, name, vs["epoch"],
                 f"restored snapshot #{seq}, root verified, in {report['rto_s']:.2f}s" if seq is not None
                 else "no committed snapshot yet: producing from the volume as it is")

    async def cycle(self, runner: VolumeRunner) -> dict:
        """One replication cycle (caller holds ``runner.lock``). Returns a report dict.

        Raises NotPrimaryError / StaleEpochError if fenced meanwhile, NoQuorumError if the
        commit could not reach a majority.
        """
        assert self.store is not None and self.catalog is not None
        cfg = runner.cfg
        epoch = runner.acting_epoch
        vs = self.volume_state(cfg.name)
        if epoch is None or vs is None or vs["primary"] != self.site_id or vs["epoch"] != epoch:
            raise NotPrimaryError(f"{self.site_id} is not the primary of {cfg.name}", volume=cfg.name)
        runner.last_cycle_at = time.monotonic()
        t0 = time.monotonic()
        # The parent is the snapshot the image descends from. On this primary's own line (the
        # newest committed snapshot is of its epoch) that is the newest committed one, as Raft
        # says: a commit whose reply was lost may have applied, and an older parent may have
        # been pruned since (found by the seeded simulation, GAP_STALE_PARENT). Right after a
        # promotion it is the snapshot restored into the volume — never a newer suspect one
        # the restore skipped (found by a tester: the new line inherited the attack's taint).
        nc = newest_committed(vs)
        if nc is None:
            runner.parent = None
        elif vs["snapshots"][nc]["epoch"] == epoch or runner.parent is None \
                or runner.parent.seq not in vs["snapshots"]:
            if runner.parent is None or runner.parent.root != vs["snapshots"][nc]["root"]:
                runner.parent = self.load_manifest(vs["snapshots"][nc]["root"])
        local_max = max((r.seq for r in self.catalog.list(cfg.name, "local") if r.epoch == epoch), default=0)
        seq = max(vs["last_seq"], local_max) + 1
        async with self._scan_slots:
            result = await take_snapshot(Path(cfg.path), volume=cfg.name, seq=seq, epoch=epoch,
                                         parent=runner.parent, store=self.store, now_ns=time.time_ns(),
                                         fingerprints=fingerprints.path_for(self.data_dir, cfg.name),
                                         pre_snapshot=cfg.source.pre_snapshot,
                                         post_snapshot=cfg.source.post_snapshot,
                                         block_size=cfg.block_size_bytes)
        m = result.manifest
        await asyncio.to_thread(self.catalog.put, SnapshotRecord(cfg.name, epoch, seq, m.root, "local",
                                                                 m.created_at_ns))
        history = [s["stats"] for _, s in sorted(vs["snapshots"].items()) if s["verdict"] == "clean"]
        verdict = anomaly.judge(m.stats, history, min_score=cfg.anomaly.min_score, factor=cfg.anomaly.factor)
        parent_snap = vs["snapshots"].get(runner.parent.seq) if runner.parent is not None else None
        if verdict.verdict == "clean" and parent_snap is not None and parent_snap["verdict"] == "suspect":
            # A suspect state stays suspect until an operator clears it: the cycle after an attack
            # changes nothing, scores 0, and must not become "the newest clean snapshot".
            verdict = dataclasses.replace(verdict, verdict="suspect", reason=(
                f"descends from suspect snapshot #{runner.parent.seq}; an operator clears it with "
                f"'replicad verdict {cfg.name} {runner.parent.seq} clean' (two sites)"))
        t_scan = time.monotonic() - t0
        if runner.fence_flag.is_set():  # O3
            raise StaleEpochError("fenced during the cycle", volume=cfg.name, acting_epoch=epoch)
        shipped = await self._ship_all(runner, vs, m)
        t_acked = time.monotonic()  # O2 acknowledgements in hand: the commit timer starts here
        holders = [self.site_id] + [p for p, r in shipped.items() if r.get("ok")]
        report = {"seq": seq, "changed_blocks": len(result.changed_blocks), "verdict": verdict.verdict,
                  "score": verdict.score, "baseline": verdict.baseline, "holders": holders,
                  "bytes_shipped": sum(r.get("bytes", 0) for r in shipped.values()),
                  "scan_s": t_scan, "ship_s": t_acked - t0 - t_scan, "peers": shipped}
        if runner.fence_flag.is_set():  # O3: never commit after learning a newer epoch
            raise StaleEpochError("fenced during the cycle", volume=cfg.name, acting_epoch=epoch)
        if len(holders) < cfg.min_copies:  # O2
            report["committed"] = False
            runner.last_report = report
            self.metrics.cycle_done(cfg.name, report)
            log.warning("snapshot %s#%d stored at %d site(s), min_copies=%d: not committed", cfg.name, seq,
                        len(holders), cfg.min_copies)
            return report
        await self.propose("commit_snapshot", volume=cfg.name, seq=seq, epoch=epoch, root=m.root,
                           parent_seq=runner.parent.seq if runner.parent else None, created_at_ns=m.created_at_ns,
                           holders=holders, stats=m.stats, verdict=verdict.verdict, size_bytes=m.size_bytes)
        report["commit_s"] = time.monotonic() - t_acked  # ship acknowledged -> Raft commit applied here
        await asyncio.to_thread(self.catalog.set_state, cfg.name, epoch, seq, "committed")
        runner.parent = m
        report["committed"] = True
        report["cycle_s"] = time.monotonic() - t0
        runner.last_report = report
        self.metrics.cycle_done(cfg.name, report)
        if verdict.verdict == "suspect":
            log.warning("SUSPECT snapshot %s#%d: score %.3f vs baseline %.3f (%s)", cfg.name, seq, verdict.score,
                        verdict.baseline, verdict.reason)
        log.info("committed %s#%d epoch %d: %d changed blocks, %s, held by %s, %.2fs", cfg.name, seq, epoch,
                 len(result.changed_blocks), verdict.verdict, ", ".join(holders), report["cycle_s"])
        return report

    async def _ship_all(self, runner: VolumeRunner, vs: dict, m: Manifest) -> dict[str, dict]:
        """Ship ``m`` to every data peer concurrently; return ``{peer: report}``.

        Returns once every peer answered, or STRAGGLER_GRACE_S after enough peers stored it
        for ``min_copies`` (O2): one slow or frozen replica must not hold every commit for a
        socket timeout. A straggler's ship keeps running in the background; once the snapshot
        is committed, that replica adds itself as a holder (``_replica_step``).
        """
        peers = self.data_peers()
        shared = SharedFrames(self.store, consumers=len(peers)) if self.store is not None else None

        async def one(peer: str) -> tuple[str, dict]:
            try:
                return peer, await self.ship(peer, vs, m, runner.acting_epoch, shared)
            except ReplicadError as err:
                if "url" in err.evidence:  # the peer's answer, or the link to it
                    log.warning("ship %s#%d to %s failed: %s", m.volume, m.seq, peer, err)
                else:  # e.g. a chunk to send pruned or corrupt in this site's own store
                    log.warning("ship %s#%d to %s stopped by a local condition at %s: %s: %s %s", m.volume, m.seq,
                                peer, self.site_id, err.code, err, err.evidence)
                return peer, {"ok": False, "error": err.code, "message": str(err)}

        tasks = {asyncio.create_task(one(p), name=f"ship:{m.volume}#{m.seq}:{p}"): p for p in peers}
        results: dict[str, dict] = {}
        pending: set[asyncio.Task] = set(tasks)
        grace_until: float | None = None
        while pending:
            timeout = None if grace_until is None else max(0.0, grace_until - time.monotonic())
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for t in done:
                peer, rep = t.result()
                results[peer] = rep
            stored = 1 + sum(1 for r in results.values() if r.get("ok"))
            if grace_until is None and stored >= runner.cfg.min_copies:
                grace_until = time.monotonic() + STRAGGLER_GRACE_S
        for t in pending:
            results[tasks[t]] = {"ok": False, "error": "straggler", "message": "still shipping in the background"}
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        return results

    async def ship(self, peer: str, vs: dict, m: Manifest, epoch: int, shared: SharedFrames | None = None) -> dict:
        """Ship snapshot ``m`` to ``peer``: offer only what differs from the newest snapshot both
        hold (delta), stream what it lacks, then get its O2 "stored" acknowledgement.

        A chunk found corrupt in the local store while reading it for shipping is dropped,
        re-fetched (verified) from another data site that has it, and the ship retried once
        (reading its own batches: ``shared`` may hold the failed one).
        """
        try:
            return await self._ship_once(peer, vs, m, epoch, shared)
        except IntegrityError as err:
            bad = err.evidence.get("digest")
            if not isinstance(bad, str) or err.code != "integrity" or "url" in err.evidence:
                raise  # a peer's verdict on what it received (it carries the peer url): not our store
            log.error("corrupt chunk %s in the store of %s while shipping: re-fetching it", bad, self.site_id)
            await asyncio.to_thread(self.store.delete_corrupt, bytes.fromhex(bad))
            await self._fetch_missing(m.volume, epoch, [bytes.fromhex(bad)], self.data_peers())
            return await self._ship_once(peer, vs, m, epoch)

    async def _ship_once(self, peer: str, vs: dict, m: Manifest, epoch: int,
                         shared: SharedFrames | None = None) -> dict:
        assert self.peers is not None and self.store is not None
        url = self.peer_url(peer)
        base_seq = max((s for s, snap in vs["snapshots"].items() if peer in snap["holders"]
                        and self.site_id in snap["holders"]), default=None)
        base = self.load_manifest(vs["snapshots"][base_seq]["root"]) if base_seq is not None else None
        offer = await asyncio.to_thread(offer_digests, self.store, m, base)
        lacking = await self.peers.missing(url, m.volume, epoch, offer)
        sent_bytes = 0
        if lacking:
            _, sent_bytes = await self.peers.send_chunks(url, m.volume, epoch, self.store, lacking, shared)
            self.metrics.shipped(m.volume, peer, sent_bytes)
        ok = await self.peers.snapshot_stored(url, m.volume, epoch, m.seq, m.root)
        return {"ok": ok, "offered": len(offer), "sent": len(lacking), "bytes": sent_bytes,
                "base_seq": base_seq}

    # ------------------------------------------------------------------ fencing
    async def _fence(self, runner: VolumeRunner, vs: dict) -> None:
        """O3: stop producing, keep uncommitted work as a divergent branch, resync as replica."""
        assert self.catalog is not None and self.store is not None
        name = runner.cfg.name
        old_epoch = runner.acting_epoch
        runner.fence_flag.set()
        if runner.role in ("primary", "restoring"):
            self._transition(runner, "epoch_advanced_elsewhere")  # O3
        log.warning("site %s fenced for %s: acting epoch %s, committed epoch %d (primary %s)", self.site_id, name,
                    old_epoch, vs["epoch"], vs["primary"])
        committed_roots = {s["root"] for s in vs["snapshots"].values()}
        divergent = []
        for rec in self.catalog.list(name, "local"):
            if rec.root not in committed_roots:
                await asyncio.to_thread(self.catalog.set_state, name, rec.epoch, rec.seq, "divergent")
                divergent.append(rec.seq)
        # Capture what the image holds now, for forensics, if it differs from what is committed.
        if old_epoch is not None and Path(runner.cfg.path).exists():
            parent = runner.parent
            if parent is None:
                ours = [q for q, snap in vs["snapshots"].items() if snap["epoch"] == old_epoch
                        and self.store.has(snap["root"])]
                parent = self.load_manifest(vs["snapshots"][max(ours)]["root"]) if ours else None
            seq = max((r.seq for r in self.catalog.list(name) if r.epoch == old_epoch), default=0) + 1
            async with self._scan_slots:
                res = await take_snapshot(Path(runner.cfg.path), volume=name, seq=seq, epoch=old_epoch,
                                          parent=parent, store=self.store, now_ns=time.time_ns(),
                                          block_size=runner.cfg.block_size_bytes)
            if res.changed_blocks or parent is None or parent.root not in committed_roots:
                await asyncio.to_thread(self.catalog.put, SnapshotRecord(
                    name, old_epoch, seq, res.manifest.root, "divergent", res.manifest.created_at_ns))
                divergent.append(seq)
            # the image is exactly this now
            await asyncio.to_thread(self.catalog.set_standby, name, seq, res.manifest.root)
        if divergent and runner.role == "fenced":
            self._transition(runner, "found_uncommitted_snapshots")
            log.warning("volume %s: kept divergent snapshots %s of epoch %s (never shipped)", name, divergent,
                        old_epoch)
        runner.acting_epoch = None
        await asyncio.to_thread(self.catalog.set_acting_epoch, name, None)
        runner.parent = None
        runner.became_primary.clear()
        runner.fence_flag.clear()
        if runner.role == "fenced" and not divergent:
            self._transition(runner, "resynced")  # nothing diverged: the image is committed content

    # ------------------------------------------------------------------ replica
    async def _replica_step(self, runner: VolumeRunner, vs: dict) -> None:
        assert self.catalog is not None and self.store is not None
        name = runner.cfg.name
        for seq in {newest_committed(vs), newest_clean(vs)} - {None}:
            snap = vs["snapshots"][seq]
            if self.site_id not in snap["holders"]:
                await self.ensure_snapshot(name, seq, vs)
                try:
                    await self.propose("add_holder", volume=name, seq=seq, site_id=self.site_id)
                except ConflictError as err:
                    log.info("add_holder %s#%d refused: %s", name, seq, err)
        target = newest_clean(vs)
        if target is None or not runner.cfg.standby:
            return
        snap = vs["snapshots"][target]
        standby = self.catalog.standby(name)
        if standby is not None and standby.root == snap["root"]:
            if runner.role == "divergent":
                self._transition(runner, "resynced")
            return
        if time.time_ns() - snap["created_at_ns"] < runner.cfg.apply_delay_s * 1e9:
            return
        manifest = await self.ensure_snapshot(name, target, vs)
        base = self.load_manifest(standby.root) if standby is not None and self.store.has(standby.root) else None
        # unknown while rewriting (crash-safe: a restart compares the image block by block)
        await asyncio.to_thread(self.catalog.set_standby, name, None, None)
        runner.standby_applying = True
        try:
            rep = await self.apply_repairing(name, Path(runner.cfg.path), manifest, base=base)
            await asyncio.to_thread(self.catalog.set_standby, name, target, manifest.root)
        finally:
            runner.standby_applying = False
        if runner.role == "divergent":
            self._transition(runner, "resynced")  # resynced from the newest common snapshot
        log.info("standby %s now at #%d (%d blocks rewritten)", name, target, rep.blocks_written)

    async def ensure_snapshot(self, volume: str, seq: int, vs: dict | None = None) -> Manifest:
        """Make sure committed snapshot ``seq`` is complete in the local store, fetching what is
        missing from its holders; chunks found corrupt locally are dropped and re-fetched.

        Returns its manifest. Raises NotFoundError if unknown, PeerUnavailableError /
        IntegrityError if no holder could supply it.
        """
        assert self.store is not None and self.catalog is not None and self.peers is not None
        vs = vs or self.volume_state(volume)
        if vs is None or seq not in vs["snapshots"]:
            raise NotFoundError(f"no committed snapshot {volume}#{seq}", volume=volume, seq=seq)
        snap = vs["snapshots"][seq]
        root = snap["root"]
        holders = [h for h in snap["holders"] if h != self.site_id]
        last_err: ReplicadError | None = None
        for attempt in range(3):
            try:
                await self._fetch_missing(volume, vs["epoch"], [root], holders)
                manifest = self.load_manifest(root)
                await self._fetch_missing(volume, vs["epoch"], list(manifest.pages), holders)
                need = await asyncio.to_thread(
                    lambda: self.store.missing(d for d in iter_block_digests(manifest, self.store.get) if any(d)))
                await self._fetch_missing(volume, vs["epoch"], need, holders)
                if need:
                    log.info("pulled %s#%d from %s: %d block chunks were missing here", volume, seq,
                             ", ".join(holders), len(need))
                await asyncio.to_thread(snapshot_complete, self.store, volume, snap["epoch"], seq, root)
                if self.catalog.find_root(volume, root) is None:
                    await asyncio.to_thread(self.catalog.put, SnapshotRecord(
                        volume, snap["epoch"], seq, root, "committed", snap["created_at_ns"]))
                else:
                    rec = self.catalog.find_root(volume, root)
                    if rec.state in ("local", "received"):
                        await asyncio.to_thread(self.catalog.set_state, volume, rec.epoch, rec.seq, "committed")
                return manifest
            except IntegrityError as err:
                bad = err.evidence.get("digest")
                log.error("corrupt chunk at %s (%s): dropping and re-fetching from a peer", self.site_id,
                          err.evidence)
                if isinstance(bad, str):
                    self.store.delete_corrupt(bytes.fromhex(bad))
                elif isinstance(bad, bytes):
                    self.store.delete_corrupt(bad)
                last_err = err
            except NotFoundError as err:
                last_err = err
        assert last_err is not None
        raise last_err

    async def apply_repairing(self, volume: str, target: Path, manifest: Manifest, *, base: Manifest | None = None,
                              progress=None, attempts: int = 8):
        """:func:`~replicad.storage.image.apply_snapshot`, healing bit rot on the way: a chunk found
        corrupt in the local store is dropped, re-fetched from another holder (verified) and
        the apply resumed. Raises the IntegrityError if no holder has a good copy."""
        assert self.store is not None
        vs = self.volume_state(volume)
        snap = (vs or {}).get("snapshots", {}).get(manifest.seq, {})
        holders = [h for h in snap.get("holders", self.data_peers()) if h != self.site_id] or self.data_peers()
        for attempt in range(attempts):
            try:
                return await asyncio.to_thread(apply_snapshot, target, manifest, self.store, base=base,
                                               progress=progress)
            except IntegrityError as err:
                bad = err.evidence.get("digest")
                if not isinstance(bad, str) or attempt == attempts - 1:
                    raise
                log.error("corrupt chunk %s in the store of %s: re-fetching it from %s", bad, self.site_id, holders)
                digest = bytes.fromhex(bad)
                await asyncio.to_thread(self.store.delete_corrupt, digest)
                try:
                    await self._fetch_missing(volume, vs["epoch"] if vs else 0, [digest], holders)
                except NotFoundError:
                    raise err from None
        raise AssertionError("unreachable")

    async def _fetch_missing(self, volume: str, epoch: int, digests: list[bytes], holders: list[str]) -> None:
        assert self.store is not None and self.peers is not None
        need = await asyncio.to_thread(self.store.missing, digests)
        for holder in holders:
            if not need:
                return
            try:
                await self.peers.fetch(self.peer_url(holder), volume, epoch, need, self.store)
            except ReplicadError as err:
                log.info("fetch from %s failed: %s", holder, err)
            need = await asyncio.to_thread(self.store.missing, need)
        if need:
            raise NotFoundError(f"{len(need)} chunks of {volume} not available from any holder",
                                volume=volume, missing=len(need), holders=holders)

    # ------------------------------------------------------------------ operations (admin)
    async def snapshot_now(self, volume: str) -> dict:
        """Take, ship and commit a snapshot right now (primary only)."""
        runner = self._runner(volume)
        async with runner.lock:
            vs = self.volume_state(volume)
            if (vs is not None and vs["primary"] == self.site_id and runner.acting_epoch != vs["epoch"]
                    and not runner.fence_flag.is_set() and runner.acting_epoch is None):
                await self.wait_synced()  # never become primary on a stale view
                vs = self.volume_state(volume)
                if vs is not None and vs["primary"] == self.site_id and runner.acting_epoch != vs["epoch"]:
                    await self._become_primary(runner, vs)
            if vs is None or vs["primary"] != self.site_id or runner.acting_epoch != vs["epoch"]:
                raise NotPrimaryError(f"{self.site_id} is not the primary of {volume}", volume=volume,
                                      primary=vs["primary"] if vs else None)
            return await self.cycle(runner)

    async def promote(self, volume: str, to: str | None, force: bool, wait_s: float = 120.0) -> dict:
        """Planned switchover (``to``, run at the current primary) or forced failover (at ``to``).

        Raises NoQuorumError when this site cannot reach a majority (a minority partition
        cannot promote), StaleEpochError if the epoch moved meanwhile, ConflictError otherwise.
        """
        runner = self._runner(volume)
        await self.wait_synced()
        vs = self.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        target = to or self.site_id
        t0 = time.monotonic()
        if force:
            if target != self.site_id:
                raise UsageError("a forced promotion is run at the site to promote (omit --to)", volume=volume)
            if vs["primary"] == self.site_id and runner.acting_epoch == vs["epoch"]:
                raise ConflictError(f"{self.site_id} is already the primary of {volume}", volume=volume)
            runner.became_primary.clear()
            res = await self.propose("promote", volume=volume, to=target, expected_epoch=vs["epoch"], force=True)
        else:
            if vs["primary"] != self.site_id:
                raise NotPrimaryError(f"a planned switchover runs at the primary ({vs['primary']})", volume=volume,
                                      primary=vs["primary"])
            if target == self.site_id:
                raise UsageError("--to names the site to hand the volume to", volume=volume)
            async with runner.lock:
                final = await self.cycle(runner)  # final snapshot: no data lost
                if not final.get("committed"):
                    raise NoQuorumError("final snapshot could not be committed; switchover aborted", volume=volume)
                res = await self.propose("promote", volume=volume, to=target, expected_epoch=vs["epoch"], force=False)
                await self._step_down(runner)
            return {"volume": volume, "primary": target, "epoch": res.get("epoch"), "final_seq": final["seq"],
                    "elapsed_s": time.monotonic() - t0}
        runner.wake.set()
        try:
            await asyncio.wait_for(runner.became_primary.wait(), wait_s)
        except asyncio.TimeoutError:
            raise ConflictError("promotion granted but the restore did not finish in time", volume=volume,
                                last_error=runner.last_error) from None
        return {"volume": volume, "primary": target, "epoch": res.get("epoch"),
                "restored_seq": runner.last_report.get("restored_seq"),
                "rto_s": time.monotonic() - t0, "restore": runner.last_report}

    async def _step_down(self, runner: VolumeRunner) -> None:
        """This site gave its epoch up itself (planned switchover, demote): nothing diverged."""
        assert self.catalog is not None
        runner.acting_epoch = None
        await asyncio.to_thread(self.catalog.set_acting_epoch, runner.cfg.name, None)
        runner.parent = None
        runner.became_primary.clear()
        if runner.role in ("primary", "restoring"):
            self._transition(runner, "demoted")
        runner.fence_flag.clear()

    async def demote(self, volume: str) -> dict:
        """Leave the volume without a primary (epoch + 1).

        At the primary it steps down cleanly; at another data site it is a forced demote
        (the primary fences itself when it learns the new epoch, O3).
        """
        await self.wait_synced()
        vs = self.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        runner = self.runners.get(volume)
        if vs["primary"] == self.site_id and runner is not None:
            async with runner.lock:
                res = await self.propose("demote", volume=volume, expected_epoch=vs["epoch"])
                await self._step_down(runner)
        else:
            res = await self.propose("demote", volume=volume, expected_epoch=vs["epoch"], force=True)
        return {"volume": volume, "epoch": res.get("epoch")}

    async def restore(self, volume: str, target: Path, seq: int | None, last_clean: bool = True, *,
                      overwrite: bool = False, op: "Operation | None" = None,
                      divergent_epoch: int | None = None) -> dict:
        """Restore committed snapshot ``seq`` (default: the newest clean one) into ``target``,
        fetching missing chunks from holders and healing corrupt ones, then verify the
        image's root against the manifest's (O5) before reporting success.

        With ``divergent_epoch``, restore this site's *divergent* snapshot ``(epoch, seq)``
        instead (forensics of what an old primary wrote alone; its chunks exist only here).

        Raises UsageError (target is the live volume, or exists without ``overwrite``),
        NotFoundError (no such snapshot / no clean one), IntegrityError / RestoreVerifyError.
        """
        assert self.catalog is not None
        vs = self.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        target = Path(target)
        self._runner(volume)
        self._check_restore_target(target, overwrite)
        t0 = time.monotonic()
        if divergent_epoch is not None:
            rec = next((r for r in self.catalog.list(volume, "divergent")
                        if r.epoch == divergent_epoch and r.seq == seq), None)
            if rec is None:
                raise NotFoundError(f"no divergent snapshot {volume} epoch {divergent_epoch} #{seq} at "
                                    f"{self.site_id}", volume=volume, epoch=divergent_epoch, seq=seq)
            manifest = self.load_manifest(rec.root)
            verdict = "divergent"
        else:
            if seq is None:
                seq = newest_clean(vs)  # the default, and what --last-clean asks for explicitly
            if seq is None:
                raise NotFoundError(f"{volume} has no clean committed snapshot", volume=volume)
            if seq not in vs["snapshots"]:
                raise NotFoundError(f"no committed snapshot {volume}#{seq}", volume=volume, seq=seq)
            log.info("restoring %s#%d into %s", volume, seq, target)
            if op is not None:
                op.phase = "fetching"
            manifest = await self.ensure_snapshot(volume, seq, vs)
            verdict = vs["snapshots"][seq]["verdict"]
        if op is not None:
            op.phase = "writing"
        phases = {"fetch_s": time.monotonic() - t0}
        rep, root = await self._write_restore(volume, target, manifest, divergent_epoch is not None, op, phases)
        log.info("restored %s#%d (%s) into %s: root verified, %d blocks written, %.2fs (fetch %.2fs, write %.2fs, "
                 "verify %.2fs)", volume, manifest.seq, verdict, target, rep.blocks_written, time.monotonic() - t0,
                 phases["fetch_s"], phases["write_s"], phases["verify_s"])
        return {"volume": volume, "seq": manifest.seq, "verdict": verdict, "target": str(target),
                "root": root.hex(), "verified": True,
                "blocks_written": rep.blocks_written, "bytes_written": rep.bytes_written,
                "seconds": time.monotonic() - t0, "phases": phases}

    async def _write_restore(self, volume: str, target: Path, manifest: Manifest, local_only: bool,
                             op: "Operation | None", phases: dict[str, float]) -> tuple[Any, bytes]:
        """Write ``manifest`` into ``target`` and verify it (O5); ``(apply report, root)``.
        Sets ``phases["write_s"]`` and ``phases["verify_s"]`` (seconds).

        A new target is written as ``.<name>.<random>.partial`` beside it (created
        exclusively: never an existing file) and renamed onto ``target`` only once its root
        verified (then the directory is fsynced): an interrupted or failed restore never
        leaves a file under the target's name. An existing target (``overwrite``, a block
        device) is rewritten in place (only differing blocks). Either way the restore is
        recorded in the catalog while it runs (see :meth:`_recover_restores`); one restore
        per target at a time (ConflictError). Raises like :meth:`restore`; the partial file
        is removed on any error.
        """
        assert self.catalog is not None
        key = str(target.resolve())
        if key in self._restoring:
            raise ConflictError(f"a restore into {target} is already running", target=str(target))
        self._restoring.add(key)
        try:
            return await self._write_restore_locked(volume, target, manifest, local_only, op, phases)
        finally:
            self._restoring.discard(key)

    async def _write_restore_locked(self, volume: str, target: Path, manifest: Manifest, local_only: bool,
                                    op: "Operation | None", phases: dict[str, float]) -> tuple[Any, bytes]:
        assert self.catalog is not None
        in_place = target.exists()
        await asyncio.to_thread(check_target_size, target, manifest)  # a too-small device: refused, untouched
        progress = op.progress if op else None
        written = target
        if not in_place:  # a name of our own, created exclusively: never someone else's file
            written = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
            try:
                os.close(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
            except OSError as err:
                raise target_error(err, f"create the restore image {written} beside {target}", written,
                                   manifest.size_bytes) from err
        await asyncio.to_thread(self.catalog.begin_restore,
                                RestoreRecord(str(target), str(written), in_place, time.time_ns()))
        t_write = time.monotonic()
        try:
            if local_only:  # a divergent snapshot: only this site holds it, nothing to re-fetch from
                rep = await asyncio.to_thread(apply_snapshot, written, manifest, self.store, progress=progress)
            else:
                rep = await self.apply_repairing(volume, written, manifest, progress=progress)
            phases["write_s"] = time.monotonic() - t_write
            if op is not None:
                op.phase = "verifying"
            root = await asyncio.to_thread(verify_image, written, manifest, progress=progress)  # O5
            if not in_place:
                await asyncio.to_thread(_publish, written, target, manifest.size_bytes)
            phases["verify_s"] = time.monotonic() - t_write - phases["write_s"]
        except BaseException:
            if not in_place:
                written.unlink(missing_ok=True)
                await asyncio.to_thread(self.catalog.end_restore, str(target))
            elif str(target) not in self.interrupted_restores:
                # an in-place target stays recorded: it is incomplete until a restore into it succeeds
                self.interrupted_restores.append(str(target))
            raise
        await asyncio.to_thread(self.catalog.end_restore, str(target))
        if str(target) in self.interrupted_restores:
            self.interrupted_restores.remove(str(target))
        return rep, root

    def _recover_restores(self) -> None:
        """At start: clean up after restores the previous run left in the middle.

        A restore into a new file wrote ``.<target name>.<random>.partial`` beside it: deleted
        (the target never appeared). A restore over an existing target (``overwrite``, a
        block device) wrote in place: that target is incomplete, which is logged at ERROR and
        listed in status (``interrupted_restores``) at every start until a restore into it
        succeeds.
        """
        assert self.catalog is not None
        for rec in self.catalog.restores_in_flight():
            if rec.in_place:  # the record stays until a restore into this target succeeds
                log.error("a restore into %s was interrupted or failed: %s is incomplete; restore it again",
                          rec.target, rec.target)
                self.interrupted_restores.append(rec.target)
                continue
            try:
                Path(rec.written).unlink(missing_ok=True)
            except OSError as exc:
                log.error("cannot remove the partial image %s of an interrupted restore: %s", rec.written, exc)
                continue
            log.warning("a restore into %s was interrupted when this site stopped: its partial image %s "
                        "was removed (the target was never created)", rec.target, rec.written)
            self.catalog.end_restore(rec.target)

    def _check_restore_target(self, target: Path, overwrite: bool) -> None:
        """Refuse targets that would destroy this site's own state: a protected volume's
        path (use promote), anything inside the data dir, a non-file, or an existing file
        without ``overwrite``. A symlink is followed: to an existing file it is that file
        (rewritten in place with ``overwrite``); a dangling one (or a loop) is refused, since
        publishing the new image would replace the link itself. Raises UsageError."""
        if target.is_symlink() and not target.exists():
            raise UsageError(f"restore target {target} is a symlink to {os.readlink(target)}, which does not exist; "
                             "give the final path (or remove the link)", target=str(target),
                             link_to=os.readlink(target))
        resolved = target.resolve()
        if any(resolved == Path(v.path).resolve() for v in self.cfg.volumes):
            raise UsageError("restore target is a protected volume's live path at this site; use promote",
                             target=str(target))
        if resolved == self.data_dir.resolve() or self.data_dir.resolve() in resolved.parents:
            raise UsageError(f"restore target is inside the data dir {self.data_dir}", target=str(target))
        if target.exists():
            st = target.stat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise UsageError(f"restore target {target} is neither a regular file nor a block device",
                                 target=str(target))
            for v in self.cfg.volumes:  # the same file under another name: a hard link, a bind mount
                try:
                    live = os.stat(v.path)
                except OSError:
                    continue
                if (live.st_dev, live.st_ino) == (st.st_dev, st.st_ino) or \
                        (stat.S_ISBLK(st.st_mode) and stat.S_ISBLK(live.st_mode) and live.st_rdev == st.st_rdev):
                    raise UsageError("restore target is a protected volume's live image at this site (another "
                                     "name for it); use promote", target=str(target), volume=v.name)
            if not overwrite:
                raise UsageError(f"restore target {target} exists; pass --overwrite (API: \"overwrite\": true) to "
                                 "rewrite it", target=str(target))
        if str(resolved) in self._restoring:
            raise ConflictError(f"a restore into {target} is already running", target=str(target))

    def start_operation(self, kind: str, volume: str, coro_fn) -> "Operation":
        """Run ``coro_fn(op)`` in the background as a pollable operation (``GET /v1/operations/ID``)."""
        op = Operation(id=uuid.uuid4().hex[:12], kind=kind, volume=volume)
        self.operations[op.id] = op
        while len(self.operations) > OPERATIONS_KEPT:
            self.operations.pop(next(iter(self.operations)))

        async def run() -> None:
            try:
                op.result = await coro_fn(op)
                op.state = "done"
            except ReplicadError as err:
                op.error = err
                op.state = "failed"
            except Exception as err:  # noqa: BLE001 — reported to the operator, logged with its traceback
                log.exception("operation %s %s failed", kind, op.id)
                from replicad.core.errors import InternalError

                op.error = InternalError(f"internal error: {err!r}")
                op.state = "failed"
            op.finished_at = time.time()

        self._tasks.append(asyncio.create_task(run(), name=f"op:{op.id}"))
        return op

    def _runner(self, volume: str) -> VolumeRunner:
        runner = self.runners.get(volume)
        if runner is None:
            raise NotFoundError(f"volume {volume} is not configured at {self.site_id}", volume=volume)
        return runner

    # ------------------------------------------------------------------ retention
    async def _clock_loop(self) -> None:
        """Report this site's clock through Raft every CLOCK_HEARTBEAT_S: the state machine
        measures the retention lock window with the time a majority of sites have reached, so
        one site's clock stepping forward cannot prune inside it (O4)."""
        while True:
            await asyncio.sleep(CLOCK_HEARTBEAT_S)
            try:
                await self.propose("clock", deadline_s=CLOCK_HEARTBEAT_S)
            except ReplicadError as err:
                log.debug("clock heartbeat not committed: %s", err)

    async def repair_step(self) -> int:
        """Re-fetch the chunks this store dropped and could not heal (``repairs_pending``:
        corrupt, or lost with a pack tail) from the other data sites, for every volume.
        While any is pending, new snapshots are checked against every block (not a held base),
        so a replica missing a chunk keeps refusing them rather than acknowledging a hole.
        Returns how many are still pending. Found by a break-it pass: a replica whose chunk
        was lost while its peers were down refused every later snapshot until an operator ran
        ``verify`` on the old snapshot."""
        assert self.store is not None
        if not self.store.repairs_pending:
            return 0
        wanted = await asyncio.to_thread(self.store.pending_repairs)
        for name in self.runners:
            vs = self.volume_state(name)
            if vs is None or not wanted:
                continue
            try:
                await self._fetch_missing(name, vs["epoch"], wanted, self.data_peers())
            except NotFoundError as err:
                log.info("repair of %d chunks for %s: %s", len(wanted), name, err)
            wanted = await asyncio.to_thread(self.store.pending_repairs)
        if wanted:
            log.warning("%d chunks lost at %s are still not available from any data site", len(wanted), self.site_id)
        else:
            log.info("every chunk lost at %s was re-fetched", self.site_id)
        return len(wanted)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_TICK_S)
            try:
                await self.repair_step()
            except ReplicadError as err:
                log.info("repair: %s", err)
            for runner in self.runners.values():
                try:
                    async with runner.lock:
                        await self.retention_step(runner.cfg.name)
                except ReplicadError as err:
                    log.info("retention %s: %s", runner.cfg.name, err)

    async def retention_step(self, volume: str, *, plan: bool = True) -> dict:
        """Apply the Raft-agreed retention policy of ``volume`` at this site.

        At the primary (only if ``plan``): plan with the pure planner (never the lock window,
        the newest committed/clean snapshot, or the newest snapshot shared with each replica)
        and propose ``prune_snapshots`` (the state machine re-checks the lock, O4). At every
        site: forget local records of snapshots no longer in the catalog — re-checking the
        lock window with this site's own clock, refusing (and logging) otherwise — then
        collect chunks that no kept snapshot references. Divergent records are never touched.
        ``plan=False`` does only the local part (after an operator's explicit prune, which
        must prune nothing more than it named).
        Returns ``{"pruned": [...], "forgotten": n, "refused": [...], "gc": {...}}``.
        """
        assert self.catalog is not None and self.store is not None
        vs = self.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        runner = self._runner(volume)
        report: dict[str, Any] = {"pruned": [], "forgotten": 0, "refused": [], "gc": None}
        if plan and vs["primary"] == self.site_id and runner.acting_epoch == vs["epoch"]:
            # plan with the time a majority of sites reached: the state machine measures the lock so
            quorum_now = quorum_now_ns(self.raft.view())
            now_plan = min(time.time_ns(), quorum_now) if quorum_now is not None else None
            # the bases of the next delta ship to each replica: the state machine's own rule, so the
            # plan never proposes what it would refuse
            common = set(newest_common(self.raft.view(), vs))
            plan = retention.plan_prune(vs["snapshots"], vs["retention"], now_plan,
                                        common) if now_plan is not None else []
            if plan:
                res = await self.propose("prune_snapshots", volume=volume, seqs=plan)
                report["pruned"] = res.get("pruned", plan)
                log.info("retention pruned %s snapshots %s (planned at %s)", volume, report["pruned"], self.site_id)
                vs = self.volume_state(volume) or vs
        live_roots = {s["root"] for s in vs["snapshots"].values()}
        lock_ns = vs["retention"]["lock_s"] * 1e9
        now = time.time_ns()
        for rec in self.catalog.list(volume):
            stale_received = rec.state == "received" and rec.seq <= vs["last_seq"]
            if rec.root in live_roots or rec.state not in ("committed", "received") or \
                    (rec.state == "received" and not stale_received):
                continue
            if now - rec.created_at_ns < lock_ns:  # O4, with this site's own clock
                log.warning("AUDIT refused to delete %s#%d (epoch %d) at %s: inside the lock window", volume,
                            rec.seq, rec.epoch, self.site_id)
                report["refused"].append(rec.seq)
                continue
            await asyncio.to_thread(self.catalog.delete, volume, rec.epoch, rec.seq)
            report["forgotten"] += 1
        if report["forgotten"]:
            report["gc"] = await asyncio.to_thread(self._gc)
        return report

    async def set_verdict(self, volume: str, seq: int, verdict: str, reason: str,
                          approved_by: list[str] | None = None) -> dict:
        """Operator verdict on a committed snapshot through Raft. Clearing a ``suspect``
        snapshot needs ``approved_by`` naming another site (two-party rule, enforced by the
        state machine). Clearing the newest suspect snapshot makes it the newest clean one:
        standbys apply it and the next snapshots descend from a clean parent."""
        args: dict[str, Any] = {"volume": volume, "seq": seq, "verdict": verdict, "reason": reason}
        if approved_by:
            args["approved_by"] = list(approved_by)
        vs = self.volume_state(volume)
        newer_suspect = sorted(s for s, snap in (vs or {}).get("snapshots", {}).items()
                               if s > seq and snap["verdict"] == "suspect")
        res = await self.propose("mark_verdict", **args)
        log.warning("AUDIT snapshot %s#%d marked %s at %s: %s (approved by %s)%s", volume, seq, verdict, self.site_id,
                    reason, ", ".join(approved_by or []) or "nobody else",
                    f"; newer suspect snapshots remain: {newer_suspect}" if verdict == "clean" and newer_suspect
                    else "")
        for runner in self.runners.values():
            runner.wake.set()
        out = {"volume": volume, "seq": seq, "verdict": res.get("verdict", verdict)}
        if verdict == "clean" and newer_suspect:
            out["warning"] = (f"newer suspect snapshots remain ({', '.join(map(str, newer_suspect))}): #{seq} is now "
                              f"the newest clean snapshot, so standbys apply it and failovers restore it")
        return out

    async def verify(self, volume: str, seq: int | None = None) -> dict:
        """Re-read and check every chunk (manifest, pages, blocks) of a committed snapshot held
        here (default: the newest this site holds). A corrupt chunk is dropped and re-fetched,
        verified, from another holder ("healed"), and so is one missing here (dropped by an
        earlier check that no holder could heal); one no holder can supply stays "lost" (and
        pending repair, :meth:`repair_step`).

        Returns ``{volume, seq, checked, corrupt: [digest hex], healed, lost, seconds}``.
        Raises NotFoundError if this site holds no such snapshot.
        """
        assert self.store is not None
        vs = self.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        held = [s for s, snap in vs["snapshots"].items() if self.site_id in snap["holders"]]
        if seq is None:
            if not held:
                raise NotFoundError(f"{self.site_id} holds no committed snapshot of {volume}", volume=volume)
            seq = max(held)
        if seq not in held:
            raise NotFoundError(f"{self.site_id} does not hold {volume}#{seq}", volume=volume, seq=seq)
        t0 = time.monotonic()
        snap = vs["snapshots"][seq]
        checked, corrupt = await asyncio.to_thread(self._verify_chunks, snap["root"])
        healed = lost = 0
        holders = [h for h in snap["holders"] if h != self.site_id]
        for digest in corrupt:
            try:
                await self._fetch_missing(volume, vs["epoch"], [digest], holders)
                healed += 1
            except NotFoundError:
                lost += 1
        self.metrics.verify_done(volume, checked, len(corrupt))
        report = {"volume": volume, "seq": seq, "checked": checked,
                  "corrupt": [d.hex() for d in corrupt], "healed": healed, "lost": lost,
                  "seconds": time.monotonic() - t0}
        (log.warning if corrupt else log.info)("verify %s#%d at %s: %d chunks checked, %d corrupt, %d healed, %d lost",
                                               volume, seq, self.site_id, report["checked"], len(corrupt), healed,
                                               lost)
        return report

    def _verify_chunks(self, root: bytes) -> tuple[int, list[bytes]]:
        """Read every chunk of the snapshot ``root`` (verified reads); drop the corrupt ones.

        Returns ``(chunks_checked, corrupt_digests)``."""
        assert self.store is not None
        corrupt: list[bytes] = []
        checked = 0

        def check(d: bytes) -> bytes | None:
            nonlocal checked
            checked += 1
            try:
                return self.store.get(d)
            except IntegrityError:
                self.store.delete_corrupt(d)
                corrupt.append(d)
                return None
            except NotFoundError:  # dropped earlier (found corrupt, nobody could supply it): heal it now
                corrupt.append(d)
                return None

        raw = check(root)
        if raw is not None:
            manifest = Manifest.decode(raw)
            seen: set[bytes] = set()
            for pd in manifest.pages:
                page = check(pd)
                if page is None:
                    continue
                for d in page_entries(page):
                    if any(d) and d not in seen:
                        seen.add(d)
                        check(d)
        return checked, corrupt

    async def drill(self, volume: str, seq: int | None, sandbox: Path, keep: bool = False,
                    op: "Operation | None" = None) -> dict:
        """Recovery drill: restore ``seq`` (default newest clean) into a new image under
        ``sandbox`` while replication goes on, verify its root, report the timings, and
        delete the image unless ``keep``. Raises like :meth:`restore`."""
        sandbox = Path(sandbox)
        if not sandbox.is_dir():
            raise UsageError(f"drill sandbox {sandbox} is not a directory", sandbox=str(sandbox))
        target = sandbox / f"drill-{volume}-{int(time.time())}-{uuid.uuid4().hex[:6]}.img"
        t0 = time.monotonic()
        try:
            rep = await self.restore(volume, target, seq, True, op=op)
        finally:
            if not keep:
                target.unlink(missing_ok=True)
        rep.update(drill=True, kept=keep, rto_s=time.monotonic() - t0)
        log.info("drill %s#%d at %s: restored and verified in %.2fs", volume, rep["seq"], self.site_id, rep["rto_s"])
        return rep

    async def prune(self, volume: str, seqs: list[int]) -> dict:
        """Operator request to prune exactly the committed snapshots ``seqs`` now; the state
        machine refuses (``retention_locked``, audited in the Raft log) anything inside the
        lock window. This site then forgets them and collects their chunks; the retention
        policy does not run here (it runs on its own schedule, or ``retention/run``).

        Returns ``{"volume", "pruned": [seq], "local": <retention_step report, pruned == []>}``.
        """
        res = await self.propose("prune_snapshots", volume=volume, seqs=list(seqs))
        log.info("retention pruned %s snapshots %s (operator request at %s)", volume, res.get("pruned", seqs),
                 self.site_id)
        runner = self._runner(volume)
        async with runner.lock:
            local = await self.retention_step(volume, plan=False)
        return {"volume": volume, "pruned": res.get("pruned", seqs), "local": local}

    def _gc(self) -> dict:
        """Collect chunks that no snapshot this site keeps references (O4: retained ones stay)."""
        assert self.catalog is not None and self.store is not None
        live: set[bytes] = set()
        for name in self.runners:
            for rec in self.catalog.list(name):
                if self.store.has(rec.root):
                    live |= chunk_digests(self.load_manifest(rec.root), self.store.get)
        stats = self.store.gc(live)
        log.info("gc: %s", stats)
        return stats

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """Site status for the admin API: Raft view, per-volume role/epoch/RPO/last report."""
        assert self.raft is not None and self.catalog is not None
        st = self.raft.view()
        vols = {}
        now = time.time_ns()
        for name, runner in self.runners.items():
            vs = st["volumes"].get(name)
            entry: dict[str, Any] = {"role": runner.role, "acting_epoch": runner.acting_epoch,
                                     "last_error": runner.last_error}
            if vs is not None:
                nc = newest_committed(vs)
                ncl = newest_clean(vs)
                entry.update(primary=vs["primary"], epoch=vs["epoch"], newest_committed=nc, newest_clean=ncl,
                             suspect=[s for s, snap in sorted(vs["snapshots"].items()) if snap["verdict"] == "suspect"],
                             rpo_s=(now - vs["snapshots"][nc]["created_at_ns"]) / 1e9 if nc is not None else None)
            sb = self.catalog.standby(name)
            entry["standby_seq"] = sb.seq if sb else None
            entry["standby_applying"] = runner.standby_applying
            entry["divergent"] = [{"epoch": r.epoch, "seq": r.seq, "root": r.root.hex()}
                                  for r in self.catalog.list(name, "divergent")]
            entry["last_report"] = _jsonable_report(runner.last_report)
            vols[name] = entry
        # "synced": false means the figures below may be an old view (restart, no leader)
        return {"site_id": self.site_id, "raft": {**self.raft.status(), "synced": self.raft_synced()},
                "volumes": vols,
                "raft_sites": {s.raft: s.site_id for s in self.cfg.sites},
                "sites": st.get("sites", {}), "store": self.store.stats() if self.store else {},
                "interrupted_restores": list(self.interrupted_restores)}


def _publish(written: Path, target: Path, size_bytes: int) -> None:
    """Rename a verified restore image (of a ``size_bytes`` snapshot) onto its target and fsync
    the directory. Raises the typed error of a failed rename/fsync (the caller removes ``written``)."""
    try:
        os.replace(written, target)
        fsync_dir(target.parent)
    except OSError as err:
        raise target_error(err, f"rename the verified image onto {target}", target, size_bytes) from err


def offer_digests(store: ChunkStore, m: Manifest, base: Manifest | None) -> list[bytes]:
    """Digests a peer holding ``base`` may lack to hold ``m``: new pages, changed blocks, the root."""
    base_pages = set(base.pages) if base is not None else set()
    out = dict.fromkeys(pd for pd in m.pages if pd not in base_pages)
    out.update(dict.fromkeys(changed_digests(base, m, store.get)))
    out[m.root] = None
    return list(out)


def _retention_dict(v: VolumeConfig) -> dict:
    r = v.retention
    return {"keep_all_s": int(r.keep_all_s), "hourly_s": int(r.hourly_s), "daily_s": int(r.daily_s),
            "lock_s": int(r.lock_s)}


def _jsonable_report(rep: dict) -> dict:
    return _jsonable(rep)


# Fields a SIGHUP may change; anything else needs a restart (identity, addresses, storage,
# membership, volume geometry, Raft-agreed settings).
RELOADABLE_SITE_FIELDS = frozenset({"log_level", "volumes", "admin_tokens"})  # tokens: revocation
RELOADABLE_VOLUME_FIELDS = frozenset({"interval_s", "apply_delay_s", "anomaly", "source", "standby"})


def reload_plan(old: SiteConfig, new: SiteConfig) -> tuple[list[str], list[str]]:
    """Compare two configs of one site: ``(changed_reloadable, changed_needing_restart)``,
    as key paths (``"volumes[ehr].interval_s"``). Pure."""
    safe: list[str] = []
    unsafe: list[str] = []
    a, b = old.model_dump(), new.model_dump()
    for key in sorted(set(a) | set(b)):
        if key == "volumes" or a.get(key) == b.get(key):
            continue
        (safe if key in RELOADABLE_SITE_FIELDS else unsafe).append(key)
    old_vols = {v["name"]: v for v in a.get("volumes", ())}
    new_vols = {v["name"]: v for v in b.get("volumes", ())}
    for name in sorted(set(old_vols) ^ set(new_vols)):
        unsafe.append(f"volumes[{name}] added or removed")
    for name in sorted(set(old_vols) & set(new_vols)):
        for key in sorted(set(old_vols[name]) | set(new_vols[name])):
            if old_vols[name].get(key) != new_vols[name].get(key):
                (safe if key in RELOADABLE_VOLUME_FIELDS else unsafe).append(f"volumes[{name}].{key}")
    return safe, unsafe


def live_config(old: SiteConfig, new: SiteConfig) -> SiteConfig:
    """The config a running site switches to on reload: ``old`` with every reloadable field
    (:data:`RELOADABLE_SITE_FIELDS`, and :data:`RELOADABLE_VOLUME_FIELDS` of the volumes both
    configs have) taken from ``new``; everything that needs a restart keeps its old value, and
    volumes added or removed stay as they were (they need a restart). Pure.

    Raises:
        ConfigError: that mix breaks a cross-field rule (e.g. every admin token removed while
            the non-loopback ``admin.listen`` it required can only change at a restart).
    """
    from pydantic import ValidationError

    new_vols = {v.name: v for v in new.volumes}
    volumes = tuple(v.model_copy(update={f: getattr(new_vols[v.name], f) for f in RELOADABLE_VOLUME_FIELDS})
                    if v.name in new_vols else v for v in old.volumes)
    fields = {f: getattr(old, f) for f in type(old).model_fields}
    fields.update({f: getattr(new, f) for f in RELOADABLE_SITE_FIELDS if f != "volumes"}, volumes=volumes)
    try:
        return type(old).model_validate(fields)  # the cross-field rules, on the mix
    except ValidationError as err:
        problems = [p for e in err.errors(include_url=False)
                    for p in (e.get("ctx", {}).get("problems") or [e["msg"]])]
        raise ConfigError("the changes that apply live are invalid without those that need a restart",
                          problems=problems) from None


async def run_site(cfg: SiteConfig, config_path: Path | None = None) -> int:
    """Run a site until SIGTERM/SIGINT; returns the process exit code (0 on a clean stop).

    Under systemd (``Type=notify``): READY=1 is sent once the store and catalog are open,
    the servers listen and Raft knows a leader (STATUS tells what it waits for meanwhile);
    WATCHDOG=1 pings come from the event loop; SIGHUP re-reads ``config_path`` and applies
    what can change safely (:func:`reload_plan`); STOPPING=1 precedes the shutdown.
    """
    from replicad.telemetry.systemd import Notifier, configure_logging

    configure_logging(cfg.log_level)
    notifier = Notifier.from_env()
    daemon = SiteDaemon(cfg)
    loop = asyncio.get_running_loop()
    watchdog: asyncio.Task | None = None
    try:
        await daemon.start()
        watchdog = asyncio.create_task(notifier.watchdog_loop(), name="watchdog")
        if config_path is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.create_task(
                daemon.reload_from(config_path, notifier), name="reload"))
        ready = asyncio.create_task(daemon.wait_joined(notifier), name="ready")
        await daemon.run_until_stopped()
        ready.cancel()
    finally:
        notifier.stopping()
        if watchdog is not None:
            watchdog.cancel()
        await daemon.stop()
        log.info("site %s stopped", cfg.site_id)
    return 0
