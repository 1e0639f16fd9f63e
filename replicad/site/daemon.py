"""The site daemon: one process per site. :class:`SiteDaemon` opens the store, catalog and Raft,
serves the peer and admin APIs, and wires the rooms of the site together — each room gets
only what it needs:

* :mod:`~replicad.site.cluster` — Raft handle (proposals, applied state) and members;
* :mod:`~replicad.site.pull` — fetch what a snapshot lacks here from its holders;
* :mod:`~replicad.site.replication` — the cycle and shipping;
* :mod:`~replicad.site.receiver` — the peer API's hooks: fencing, write-once records, peer audit;
* :mod:`~replicad.site.promotion` — takeover, fencing, promote, demote;
* :mod:`~replicad.site.volumes` — the per-volume loop (one :class:`~replicad.site.runner.VolumeRunner` each);
* :mod:`~replicad.site.recovery` — restore and drill (:mod:`~replicad.site.drills`: its checks and signed report); :mod:`~replicad.site.scrub` — verify, repair;
* :mod:`~replicad.site.housekeeping` — retention, prune, verdicts, GC;
* :mod:`~replicad.site.exports` — snapshots served over NBD on unix sockets (pinned while open);
* :mod:`~replicad.site.status`, :mod:`~replicad.site.operations`, :mod:`~replicad.site.reload`.

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

Pure decisions live elsewhere (state machine, role table, anomaly, retention); the site does
I/O and ordering. Blocking work goes to worker threads (``asyncio.to_thread``). The admin API
is passed in by the composition root (:func:`replicad.ops.service.run_site`): the site never
imports the layers above it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from replicad.config import SiteConfig, VolumeConfig, load_signer, membership_differences
from replicad.consensus import raft as consensus_raft
from replicad.consensus.raft import RaftNode
from replicad.core import anomaly
from replicad.core.backoff import Backoff
from replicad.core.errors import (ConflictError, MembershipMismatchError, NotFoundError, ReplicadError,
                                  RulesVersionError, facts_text, from_os_error, is_transient)
from replicad.core.identity import parse_public_key
from replicad.core.state import (CLOCK_REPORT_PERIOD_NS, DEFAULT_RETENTION, REQUESTS_MAX, REQUESTS_PENDING_PER_SITE,
                                 RULES_MAX, list_requests, request_expired, rules)
from replicad.peer import conngate
from replicad.peer.tls import check_site_tls, client_context, server_context
from replicad.peer.transport import PeerClient, peer_routes
from replicad.site import reload
from replicad.site.clusterid import ClusterIdCheck
from replicad.site.cluster import PROPOSE_DEADLINE_S, Cluster
from replicad.site.detection import Detection
from replicad.site.housekeeping import Housekeeping
from replicad.site.operations import Operations
from replicad.site.promotion import Promotion
from replicad.site.pull import Pull
from replicad.site.receiver import Receiver
from replicad.site.drills import Drills
from replicad.site.exports import Exports
from replicad.site.instant import InstantRecovery
from replicad.site.recovery import Recovery, recover_restores
from replicad.site.replication import Replication
from replicad.site.runner import VolumeRunner
from replicad.site.scrub import Scrub
from replicad.site.standby import StandbyCheck
from replicad.site.status import Status
from replicad.site.volumes import VolumeLoop
from replicad.site.registration import RegistrationCheck, registered_size_bytes
from replicad.site.requestwatch import RequestWatch
from replicad.site.rules_raise import RulesRaise, founding_rules, reported_rules_max
from replicad.core.requestdiff import args_summary
from replicad.site.seen import (HISTORY_FATES_MAX, SeenMark, approved_words, fate_words, pending_words,
                                unadopted_words)
from replicad.site.catchup import install_report, withdrawn_after_approval
from replicad.site.catchup import request_words as _request_words
from replicad.storage import fingerprints
from replicad.storage.audit import AuditLog
from replicad.storage.catalog import Catalog
from replicad.storage.chunkstore import ChunkStore
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.daemon")


CLOCK_HEARTBEAT_S = CLOCK_REPORT_PERIOD_NS / 1e9  # Raft-reported site clocks (lock window by a majority)
SHUTDOWN_GRACE_S = 10.0    # well inside systemd's TimeoutStopSec=60
# Scans running at once on a site (each uses every core for its batches and holds 16 MiB of
# read buffers): more would not finish sooner, and peak memory would grow with the number of
# volumes (8 sparse volumes scanned at once: 326 MB peak RSS, vs 8 MiB batches: 271 MB).
SCAN_SLOTS = max(1, min(4, os.cpu_count() or 1))

AdminRoutes = Callable[["SiteDaemon"], list[web.RouteDef]]


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class SiteDaemon:
    """One site. ``await start(admin_routes=...)``, then ``await run_until_stopped()``;
    ``await stop()`` cleans up.

    The rooms (``cluster``, ``pull``, ``replication``, ``receiver``, ``promotion``, ``volumes``,
    ``recovery``, ``drills``, ``scrub``, ``housekeeping``, ``exports``, ``status``) exist once :meth:`start` opened
    what they use; ``operations`` and ``metrics`` from construction.

    Args:
        cfg: the validated site configuration.
    """

    cluster: Cluster
    pull: Pull
    replication: Replication
    receiver: Receiver
    promotion: Promotion
    volumes: VolumeLoop
    recovery: Recovery
    drills: Drills
    exports: Exports
    instant: InstantRecovery
    scrub: Scrub
    standby: StandbyCheck
    housekeeping: Housekeeping
    status: Status

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.site_id = cfg.site_id
        self.data_dir = Path(cfg.data_dir)
        self.runners = {v.name: VolumeRunner(cfg=v) for v in cfg.volumes}
        self.store: ChunkStore | None = None
        self.catalog: Catalog | None = None
        self.raft: RaftNode | None = None
        self._signer = None  # this site's identity (start); None in unsigned lab mode
        self.session: aiohttp.ClientSession | None = None
        self.peers: PeerClient | None = None
        self._web_runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self.operations = Operations(self._spawn)
        self.interrupted_restores: list[str] = []  # in-place restore targets a crash left incomplete
        self._scan_slots = asyncio.Semaphore(SCAN_SLOTS)  # see SCAN_SLOTS
        self._data_dir_lock: int | None = None  # fd holding the flock of data_dir/lock
        self.metrics = SiteMetrics.for_site(cfg, lambda: self.status.report(),
                                            lambda: self.raft.view() if self.raft else {})
        self.request_watch = RequestWatch(self.site_id, counted=self.metrics.request_vanished,  # R13, F6
                                          audit_prefix=self._audit_prefix, logged_live=self._logged_live)
        self._background: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()
        self.fatal: ReplicadError | None = None  # why the site stopped itself (run_site exits with its code)
        self._agreed_at_start: list[dict] | None = None  # the membership this site last saw agreed, at start
        self._founding_logged: dict[str, list[str]] = {}  # other sites' differing found proposals, as last logged

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, admin_routes: AdminRoutes, admin_middlewares: Sequence[Any] = ()) -> None:
        """Open the store and catalog, start Raft, the peer and admin servers and the runners.

        Args:
            admin_routes: builds the admin API of this site (``replicad.ops.admin.admin_routes``),
                served on ``admin.listen``.
            admin_middlewares: aiohttp middlewares of the admin listener, after the connection gate
                (``replicad.ops.admin.json_route_errors``: unknown paths and methods as typed JSON errors).
        """
        self._loop = asyncio.get_running_loop()
        self._reported_max = reported_rules_max(self.cfg.lab)  # ConfigError (a bad lab knob): before anything opens
        self._founding_rules = founding_rules(self.cfg.lab)  # the rules this site's found proposals carry
        if self.cfg.tls is not None:  # before anything opens: a bad certificate stops the start
            check_site_tls(self.cfg.tls, self.site_id)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        for v in self.cfg.volumes:  # a scan killed with the site left its fingerprint cache half written
            try:
                if fingerprints.remove_partial(self.data_dir, v.name):
                    log.info("volume %s: removed the partial fingerprint cache a previous run left (killed "
                             "mid-scan)", v.name)
            except OSError as err:  # the next scan writes the same name over it: nothing is lost
                log.warning("volume %s: the partial fingerprint cache a previous run left cannot be removed: %s",
                            v.name, err)
        self.store = await asyncio.to_thread(ChunkStore, self.data_dir / "chunks")
        self.catalog = Catalog(self.data_dir / "catalog.db", require_incarnation=True)
        self._check_membership_before_raft()  # MembershipMismatchError: before this site can vote or lead
        me = self.cfg.self_ref()
        partners = [s.raft for s in self.cfg.sites if s.site_id != self.site_id]
        (self.data_dir / "raft").mkdir(exist_ok=True)
        signer = self._signer = load_signer(self.cfg)  # ConfigError: key unreadable, readable by others, not pinned
        if signer is None:
            log.warning("UNSAFE: site %s runs without identity (identity.unsafe_unsigned = true): its commands are "
                        "not signed and no command's site is checked; a test bench setting, never production",
                        self.site_id)
        else:
            log.info("site %s signs its commands as %s (cluster %s)", self.site_id, signer.public_key,
                     self.cfg.cluster_id)
        if self.cfg.raft_withheld_after_s is not None:  # a test bench (lab = true, config.py): point 19's watch
            consensus_raft.WITHHELD_AFTER_S = self.cfg.raft_withheld_after_s  # read at each check; one site a process
        compaction = os.environ.get(LAB_COMPACTION_ENTRIES_ENV) if self.cfg.lab else None
        self.raft = RaftNode(me.raft, partners, self.data_dir / "raft",
                             self.cfg.raft_password.get_secret_value(), on_applied=self._on_applied,
                             compaction_min_entries=int(compaction) if compaction else COMPACTION_ENTRIES,
                             needs_leader=self._acts_as_primary,
                             members=[s.site_id for s in self.cfg.sites],
                             trust=self.cfg.trust(), signer=signer,
                             sites={s.raft: s.site_id for s in self.cfg.sites}, joining=self.cfg.raft_join)
        every = os.environ.get(LAB_CHECKPOINT_EVERY_ENV)
        if every and self.cfg.lab:  # a test bench: checkpoints (and their vouches) within seconds
            self.raft.set_checkpoint_interval(int(every))
        self.raft.on_installed = self._on_installed  # a full state installed: its audit (site.catchup)
        self.cluster = Cluster(self.site_id, self.raft, lambda: self.cfg)
        for name, runner in self.runners.items():
            runner.acting_epoch = self.catalog.acting_epoch(name)
            runner.role = "primary" if runner.acting_epoch is not None else "replica"
        self.interrupted_restores.extend(await asyncio.to_thread(recover_restores, self.catalog))
        self.seen = SeenMark(self.data_dir)  # before the first entry is applied
        self.raft.start()
        tls = self.cfg.tls
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(tls)) if tls is not None else None)
        self.peers = PeerClient(self.session, self.site_id)
        self._build_rooms(self.store, self.catalog, self.peers)
        await asyncio.to_thread(self.exports.recover)  # sockets and overlays of exports a crash left (issue 16)
        # issue 16: an instant export switched over and not released is the application's disk: served again at once
        await self.instant.resume({n: (r.acting_epoch, Path(r.cfg.path)) for n, r in self.runners.items()})

        await self._serve([*peer_routes(self.receiver), self.rules_raise.route()], self.cfg.peer_listen,
                          client_max_size=64 * 2**20,
                          ssl_context=server_context(tls) if tls is not None else None)
        await self._serve(admin_routes(self), self.cfg.admin_listen, listener="admin", middlewares=admin_middlewares)
        self._tasks.append(asyncio.create_task(self._bootstrap(), name="bootstrap"))
        for runner in self.runners.values():
            self._tasks.append(asyncio.create_task(self.volumes.run_volume(runner),
                                                   name=f"volume:{runner.cfg.name}"))
        self._tasks.append(asyncio.create_task(self.housekeeping.retention_loop(), name="retention"))
        self._tasks.append(asyncio.create_task(self.standby.loop(), name="standby-check"))
        self._tasks.append(asyncio.create_task(self._clock_loop(), name="clock"))
        self._tasks.append(asyncio.create_task(ClusterIdCheck(  # a cluster_id typo named (bad_identity handshakes)
            self.site_id, lambda: self.cfg.cluster_id, self.raft._refusals.bad_identity_sites, self.cluster.peer_url,
            lambda: [s.site_id for s in self.cfg.sites], self.peers.hello).run(), name="cluster-id-check"))
        log.info("site %s started: peer %s admin %s raft %s", self.site_id, self.cfg.peer_listen,
                 self.cfg.admin_listen, me.raft)

    def _check_membership_before_raft(self) -> None:
        """Issue 13, item 9: refuse to start when this config's ``[[sites]]`` disagrees with the
        membership this site last saw agreed in its Raft state (kept in its catalog, so the
        check runs before the Raft node opens: a site with a stale member list must never vote
        or lead with the wrong majority).

        Raises:
            MembershipMismatchError: each difference in ``problems`` (exit 2)."""
        agreed = self.catalog.membership() if self.catalog is not None else None
        self._agreed_at_start = agreed
        if agreed is None:
            return
        problems = membership_differences(agreed, self.cfg.membership())
        if problems:
            raise MembershipMismatchError(
                f"site {self.site_id}: this config's [[sites]] differs from the membership this site last saw "
                f"agreed in the cluster's Raft state in {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} "
                f"({'; '.join(problems)}); the site refuses to start. {MEMBERSHIP_COMPARE}",
                problems=problems, source=f"{self.data_dir / 'catalog.db'} (copy of the Raft state's membership)",
                action=MEMBERSHIP_RUNBOOK)

    def _membership_agreed(self, agreed: list[dict], decisive: bool = False) -> None:
        """The Raft state's agreed membership is ``agreed`` (event loop): keep a copy for the
        next start's check. A site that never saw one before and disagrees stops
        (:attr:`fatal`, before any volume acts: it learned the membership from the cluster).
        One that agreed with an earlier membership is told to restart with a matching config
        (a change on purpose, ``set_members``, made while it ran).

        A site that never saw a membership judges only a ``decisive`` one (``_bootstrap``: the
        membership current once it caught up): while it replays the log, the ``set_members``
        it applies are older ones (a site added by a later one would stop on the first)."""
        problems = membership_differences(agreed, self.cfg.membership())
        if self._agreed_at_start is None and not decisive:
            return  # catching up: _bootstrap decides on the current membership
        if problems and self._agreed_at_start is None:
            self._fail(MembershipMismatchError(
                f"site {self.site_id}: a majority of the configured sites founded the cluster with a membership that "
                f"differs from this config's [[sites]] in {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} "
                f"({'; '.join(problems)}); the site stops before it acts as leader or primary. {MEMBERSHIP_COMPARE}",
                problems=problems, source="the cluster's Raft state (learned from the leader)",
                action=MEMBERSHIP_RUNBOOK))
            return
        if problems:
            applied = self._applied_set_members(agreed)
            if applied is not None:  # the expected path of a key rotation or a membership change: said calmly
                log.warning("site %s: request %s (set_members, applied) changed the cluster's agreed membership and "
                            "this site still runs with the config before it (%s): restart this site with a config "
                            "that matches, one site at a time (README 'Rotate a site's key' step 4); it runs on until "
                            "then", self.site_id, applied,
                            "; ".join(membership_differences(agreed, self.cfg.membership(), hints=False)))
            else:
                log.warning("site %s: an approved set_members request changed the cluster's agreed membership and it "
                            "no longer matches this config (%s); this site keeps running but will refuse to start "
                            "with this config. %s", self.site_id, "; ".join(problems), MEMBERSHIP_COMPARE)
        if self.catalog is not None and self.catalog.membership() != agreed:
            self.catalog.set_membership(agreed)
        self._agreed_at_start = self._agreed_at_start or agreed

    def _applied_set_members(self, agreed: list[dict]) -> str | None:
        """The id of the applied ``set_members`` request whose members are ``agreed`` (the newest
        such), else None (read from this site's Raft view; never raises)."""
        try:
            requests = list_requests(self.raft.view()) if self.raft is not None else []
        except Exception:  # noqa: BLE001 - only the wording of a log line depends on it
            return None
        want = sorted(((m.get("site_id"), m.get("raft"), m.get("kind"), tuple(sorted(m.get("keys") or ())))
                       for m in agreed), key=str)
        for r in requests:  # newest first
            members = (r.get("args") or {}).get("members") if r.get("action") == "set_members" else None
            if r.get("status") == "applied" and isinstance(members, list) and sorted(
                    ((m.get("site_id"), m.get("raft"), m.get("kind"), tuple(sorted(m.get("keys") or ())))
                     for m in members if isinstance(m, dict)), key=str) == want:
                return str(r.get("id"))
        return None

    def _fail(self, err: ReplicadError) -> None:
        """Stop the site because of ``err`` (logged at ERROR; ``run_site`` exits with its code)."""
        if self.fatal is None:
            self.fatal = err
            log.error("site %s stops: %s %s", self.site_id, err, getattr(err, "problems", "") or err.evidence)
        self.request_stop()

    def _build_rooms(self, store: ChunkStore, catalog: Catalog, peers: PeerClient) -> None:
        """Wire the rooms: each gets the resources it uses, and the rooms it calls."""
        cluster, runners = self.cluster, self.runners
        self.pull = Pull(cluster, store, catalog, peers, self.metrics)
        self.replication = Replication(cluster, store, catalog, peers, self.pull, self.metrics, self.data_dir,
                                       self._scan_slots, self._background)
        self.promotion = Promotion(cluster, store, catalog, runners, self.pull, self.replication, self._scan_slots,
                                   self.metrics)
        self.volumes = VolumeLoop(cluster, store, catalog, runners, self.pull, self.replication, self.promotion,
                                  self.metrics)
        # issue 14: every data site judges every snapshot itself (the cluster's policy, tightened locally)
        self.detection = Detection(cluster, store, self.metrics, self.data_dir, self._local_detection,
                                   self.pull.ensure_snapshot)
        self.volumes.detection = self.promotion.detection = self.detection
        self.volumes.registration = RegistrationCheck(self.site_id, self.metrics.registration_mismatch)
        self.volumes.background = self._background
        self.recovery = Recovery(cluster, lambda: self.cfg, self.data_dir, store, catalog, runners, self.pull,
                                 self.interrupted_restores)
        self.recovery.detection = self.detection  # the default restore's filter is the takeover's (held_here)
        self.drills = Drills(cluster, lambda: self.cfg, self.data_dir, self.recovery, self._signer, self.metrics)
        self.standby = StandbyCheck(cluster, store, catalog, runners, self.pull, lambda: self.cfg.scrub, self.metrics)
        self.scrub = Scrub(cluster, store, runners, self.pull, self.metrics, self.standby)
        self.receiver = Receiver(cluster, store, catalog, self.metrics, AuditLog(self.data_dir / "peer-audit.jsonl"),
                                 signer=self._signer, configured=lambda: {v.name for v in self.cfg.volumes})
        self.exports = Exports(cluster, store, self.pull, self.data_dir, self.metrics)  # issue 16: NBD exports
        self.instant = InstantRecovery(self.exports, self.data_dir, self.metrics,  # issue 16: promote --instant
                                       background=self._background)
        self.promotion.instant = self.instant
        self.exports.on_instant_released = self.instant.released
        self.housekeeping = Housekeeping(cluster, store, catalog, runners, self.scrub.repair_step,
                                         lambda: self.cfg.floor, self.metrics, pins=self.exports.pinned)
        self.status = Status(cluster, catalog, store, runners, self.interrupted_restores,
                             signing_key=self._signer.public_key if self._signer is not None else None)
        self.status.instant = self.instant.state  # issue 16: instant recovery per volume
        self.status.joined = self.volumes.joined.is_set  # no snapshot is taken before it (VolumeLoop.snapshot_now)
        self.rules_raise = RulesRaise(self.site_id, cluster, self._signer, lambda: self.cfg.trust(), self.session,
                                      self._reported_max)  # the current config's trust (SIGHUP replaces cfg)
        self.status.rules = self.rules_raise.status  # the rules version and the wait to raise it

    def _local_detection(self, volume: str) -> dict:
        """This site's ``[volumes.anomaly]`` thresholds of ``volume`` (current config, SIGHUP
        included): they can only tighten the cluster's detection policy (issue 14)."""
        vol = next((v for v in self.cfg.volumes if v.name == volume), None)
        if vol is None:
            return {}
        out = {"min_score": float(vol.anomaly.min_score), "factor": float(vol.anomaly.factor)}
        if vol.detection.mode is not None:  # the initial mode: compared with Raft's, never applied (Detection.policy)
            out["mode"] = vol.detection.mode
        return out

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        """Run ``coro`` as a task that :meth:`stop` cancels."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

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
                     listener: str = "peer", middlewares: Sequence[Any] = (), **app_kw: Any) -> None:
        """Serve ``routes`` on ``listen`` under a :class:`~replicad.peer.conngate.ConnGate`
        (ARCHITECTURE.md, Choices: "A connection costs its listener a bounded number of file
        descriptors"). ``listener`` ``"peer"``: at most CONN_PER_PEER connections of one
        certificate's site (without TLS, addresses are no site's: only CONN_TOTAL bounds them) and
        CONN_TOTAL in all, idle keep-alive closed after IDLE_S; ``"admin"``: ADMIN_CONN_PER_ADDRESS
        of one address and ADMIN_CONN_TOTAL in all, aiohttp's keep-alive (longer than any
        scraper's pool). Both: a request head within HEAD_S of connecting
        (``REPLICAD_LAB_CONN_HEAD_S`` with ``lab = true``), a TLS handshake within HANDSHAKE_S.
        Refusals counted in ``replicad_conn_refused_total``."""
        head_s = conngate.HEAD_S
        if self.cfg.lab and os.environ.get(conngate.LAB_CONN_HEAD_ENV):  # a test bench: deadlines within seconds
            head_s = float(os.environ[conngate.LAB_CONN_HEAD_ENV])
        sites = {s.site_id for s in self.cfg.sites}

        def refused(peer: str, reason: str) -> None:
            if self.metrics is not None:
                self.metrics.conn_refused(listener, peer if listener == "peer" and peer in sites else "other", reason)
        if listener == "peer":
            total = max(conngate.CONN_TOTAL, conngate.CONN_PER_PEER * len(self.cfg.sites))
            gate = conngate.ConnGate(self.site_id, listener, refused, total=total, head_s=head_s,
                                     per_peer=conngate.CONN_PER_PEER if ssl_context is not None else total)
            handler_kw: dict[str, Any] = {"keepalive_timeout": conngate.IDLE_S}
        else:
            gate = conngate.ConnGate(self.site_id, listener, refused, per_peer=conngate.ADMIN_CONN_PER_ADDRESS,
                                     total=conngate.ADMIN_CONN_TOTAL, head_s=head_s)
            handler_kw = {}
        app = web.Application(middlewares=[gate.middleware, *middlewares], **app_kw)
        app.add_routes(routes)
        # on stop, in-flight requests get SHUTDOWN_GRACE_S to finish, then are abandoned
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S, **handler_kw)
        await runner.setup()
        host, port = _host_port(listen)
        await conngate.GatedTCPSite(runner, host, port, gate, ssl_context=ssl_context).start()
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
        """SIGHUP: :func:`replicad.site.reload.reload_from` on this site's config; the
        changes that apply live are switched to at once (the runners' volume configs too)."""
        return await reload.reload_from(self.cfg, config_path, notifier, self._switch_config)

    def _switch_config(self, live: SiteConfig) -> None:
        self.cfg = live
        for v in self.cfg.volumes:
            self.runners[v.name].cfg = v

    async def stop(self) -> None:
        """Cancel runners, close servers, Raft, catalog and store — each only if it was opened."""
        if getattr(self, "exports", None) is not None:  # snapshot exports: sockets, overlays, pins (issue 16)
            await self.exports.close_all()
        tasks = [*self._tasks, *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in self._web_runners:
            await r.cleanup()
        if getattr(self, "receiver", None) is not None:  # the peer server is down: audit the last reads
            await self.receiver.flush_reads()
        if self.session is not None:
            await self.session.close()
        if self._seen_task is not None:
            self._seen_task.cancel()
        self._save_seen()  # the last mark, written now
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
        A committed snapshot this site holds turns its ``received`` record ``committed``
        (:meth:`Receiver.committed`), which the local floor's calendar rules count.
        """
        if self.raft is not None:  # an approved request gone from the state unapplied: ERROR (site.requestwatch)
            self.request_watch.observe(self.raft.view(), self.raft.applied_count(), command, result)
        if result.get("ok") and command.get("op") == "commit_snapshot" and self._loop is not None \
                and getattr(self, "receiver", None) is not None:
            self._loop.call_soon_threadsafe(self.receiver.committed, command)
        if result.get("ok") and (command.get("op") in ("request", "approve", "veto") or result.get("requests_applied")):
            self._request_event(command, result)
            done = [result, *(result.get("requests_applied") or [])]
            if any(d.get("action") == "set_members" and d.get("status") == "applied" for d in done) \
                    and self._loop is not None and getattr(self, "volumes", None) is not None:
                members = (self.raft.view().get("incarnation") or {}).get("members") if self.raft else None
                if members:
                    self._loop.call_soon_threadsafe(self._membership_agreed, members)
        if result.get("ok") and command.get("op") in CLUSTER_WIDE_OPS:
            self._cluster_wide_event(command, result)
        if result.get("ok") and (command.get("op") == "found" or (command.get("op") == "rules"
                                                                   and result.get("changed"))) \
                and isinstance(result.get("rules"), int) and isinstance(result.get("previous"), int) \
                and result["rules"] > result["previous"]:  # a raise, not another command's stored answer
            self._rules_event(command, result)
        if not result.get("ok"):
            return
        changes = []  # (volume, new epoch, this site promoted): role changes, direct or as approved requests
        if command.get("op") in ("promote", "demote"):
            changes.append((command.get("volume", ""), result.get("epoch"),
                            command.get("op") == "promote" and command.get("to") == self.site_id))
        for done in [result, *(result.get("requests_applied") or [])]:
            if done.get("action") in ("promote", "demote") and done.get("status") == "applied":
                res = done.get("result") or {}
                changes.append((res.get("volume", ""), res.get("epoch"), res.get("primary") == self.site_id))
        for volume, new_epoch, promoted_here in changes:
            runner = self.runners.get(volume)
            if runner is None:
                continue
            if runner.acting_epoch is not None and isinstance(new_epoch, int) and new_epoch > runner.acting_epoch \
                    and not promoted_here:
                runner.fence_flag.set()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(runner.wake.set)

    def _on_installed(self, before: dict, after: dict, at_start: bool) -> None:
        """Called on the Raft tick thread when a full state replaced the applied one (attacker review
        r13, F3): one received from the leader by a site behind its compacted log, or this site's own
        Raft dump loaded at start. The entries it covers never reach :meth:`_on_applied`, so what
        they changed is logged here (:func:`~replicad.site.catchup.install_report`: a summary line
        naming the commands covered, then one line per cluster-wide fact and per audit record, with
        the AUDIT heads of :meth:`_audit_prefix`), and what ``on_applied`` would have done for them
        is done from the new state: fence flags of volumes whose epoch moved past the one this site
        acts under, runners woken, the agreed membership kept. Never raises (a failure is logged)."""
        try:
            seen = getattr(self, "seen", None)
            report = install_report(before, after, at_start=at_start, mark=None if seen is None else seen.mark,
                                    missing=None if seen is None else seen.missing,
                                    first_start=seen is not None and seen.before_first_join(),
                                    mark_name="audit.seen" if seen is None else seen.path.name)
            for level, line in report:
                log.log(level, "%s", line)
            if report and report[0][0] == logging.WARNING:  # news (not a first start, not seen): as live (R16, F1)
                for gone in withdrawn_after_approval(before, after):
                    self.metrics.request_withdrawn(str(gone.get("action")), approved=True)
            if any(level == logging.WARNING for level, _ in report):
                self._logged_live()  # after the lines (only once joined; else the clock loop's first save)
        except Exception as exc:  # the state is installed; its audit must not stop the Raft node
            log.error("site %s: cannot audit the full state installed here (%s: %s); compare `replicad status` "
                      "with another site's", self.site_id, type(exc).__name__, str(exc)[:300])
        volumes = after.get("volumes") if isinstance(after, dict) else None
        for name, runner in self.runners.items():
            vol = volumes.get(name) if isinstance(volumes, dict) else None
            epoch = vol.get("epoch") if isinstance(vol, dict) else None
            if runner.acting_epoch is not None and isinstance(epoch, int) and epoch > runner.acting_epoch \
                    and vol.get("primary") != self.site_id:
                runner.fence_flag.set()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(runner.wake.set)
        members = ((after.get("incarnation") or {}).get("members") if isinstance(after, dict) else None)
        was = ((before.get("incarnation") or {}).get("members") if isinstance(before, dict) else None)
        if members and members != was and self._loop is not None and getattr(self, "volumes", None) is not None:
            self._loop.call_soon_threadsafe(self._membership_agreed, members)
        if self.raft is not None:  # an approved request gone in what it covers: ERROR (site.requestwatch), last
            self.request_watch.observe(after, self.raft.applied_count())

    def _joined(self) -> bool:
        return getattr(self, "volumes", None) is not None and self.volumes.joined.is_set()

    def _away(self) -> bool:
        """Tick thread, in ``on_applied``: the entry just applied was committed while this site was
        down or catching up (past its :class:`~replicad.site.seen.SeenMark`), not seen live."""
        seen = getattr(self, "seen", None)
        return seen is not None and self.raft is not None and seen.away(self.raft.applied_count())

    def _audit_prefix(self) -> tuple[int, str]:
        """Tick thread: the level and the start of an AUDIT line for the entry just applied: seen
        live (WARNING ``AUDIT``), committed before this site first joined the cluster (its first
        start: INFO ``AUDIT (committed before this site first joined)``), committed while this site
        was away (WARNING ``AUDIT (committed while this site was away)``; with ``, or before: its
        mark audit.seen was missing`` when a data dir with a Raft log had no mark) or this site's
        history replayed at start (INFO ``AUDIT (replayed from the Raft log)``)."""
        if self._joined():
            return logging.WARNING, "AUDIT"
        seen = getattr(self, "seen", None)
        if seen is not None and seen.before_first_join():
            return logging.INFO, "AUDIT (committed before this site first joined)"
        if self._away():
            if seen is not None and seen.missing is not None:
                return logging.WARNING, (f"AUDIT (committed while this site was away, or before: its mark "
                                         f"{seen.path.name} was {seen.missing})")
            return logging.WARNING, "AUDIT (committed while this site was away)"
        return logging.INFO, "AUDIT (replayed from the Raft log)"

    _seen_upto: int | None = None  # the applied count up to which every AUDIT line was logged live
    _history_requests: list | None = None  # (request id, AUDIT head) named in lines of history, until joined
    _initial_lock: asyncio.Lock | None = None  # the volumes' initial requests, one at a time (_initial_requests)
    _seen_task: asyncio.Future | None = None

    def _logged_live(self) -> None:
        """Tick thread, after AUDIT lines of the entry just applied were logged live: the mark may move
        up to it. Written by the event loop within :data:`SEEN_SAVE_S` (never an fsync on the tick
        thread: every honest site would pay one per change another site makes)."""
        if self.raft is None or not self._joined():
            return
        self._seen_upto = self.raft.applied_count()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._save_seen_soon)

    def _save_seen_soon(self) -> None:
        """Event loop: write the mark once, :data:`SEEN_SAVE_S` from now (one write for a burst)."""
        if self._seen_task is None or self._seen_task.done():
            async def later() -> None:
                await asyncio.sleep(SEEN_SAVE_S)
                await asyncio.to_thread(self._save_seen)
            self._seen_task = asyncio.ensure_future(later())

    def _save_seen(self) -> None:
        """Record how far this site has seen the cluster live (:attr:`_seen_upto`, only once it joined);
        a write error is logged (the mark stays behind: later entries are logged again at the next
        start). Not on the tick thread (an fsync)."""
        seen = getattr(self, "seen", None)
        if seen is None or self._seen_upto is None:
            return
        try:
            seen.save(self._seen_upto)
        except ReplicadError as err:
            log.warning("site %s: cannot record how far it saw the cluster live: %s %s", self.site_id, err,
                        facts_text(err.evidence))

    def _cluster_wide_event(self, command: dict, result: dict) -> None:
        """Tick thread: a command signed by ANOTHER site that changed a volume for every site (its
        registration, retention, detection policy, a verdict, its primary: :data:`CLUSTER_WIDE_OPS`)
        is logged at WARNING naming that site, once this site joined (not its replay at start), or
        when it was committed while this site was away (``AUDIT (committed while this site was
        away)``: :mod:`replicad.site.seen`). A compromised site's changes are then in every honest
        site's log, not only in its own."""
        by = command.get("by")
        if by == self.site_id or result.get("changed") is False or result.get("created") is False:
            return
        level, audit = self._audit_prefix()
        if level != logging.WARNING:  # the history replayed at start: not logged again
            return
        op = command.get("op")
        fields = {k: command[k] for k in CLUSTER_WIDE_FIELDS.get(op, ()) if k in command}
        outcome = {k: result[k] for k in ("epoch", "previous_primary", "cleared", "weakened") if k in result}
        expected = op == "add_volume" and self._as_configured(command)  # a new cluster's volumes: no warning
        log.log(logging.INFO if expected else logging.WARNING,
                "%s %s of volume %s by %s (a command signed by %s, applied at every site%s): %s", audit, op,
                command.get("volume"), by, by, "; as this site's config [[volumes]] names it" if expected else "",
                facts_text({**fields, **outcome}))
        self._logged_live()  # after the line: a crash before the mark is written logs it again, never loses it

    def _as_configured(self, command: dict) -> bool:
        """An ``add_volume`` registering a volume exactly as this site's config names it: the
        same name, ``initial_primary`` the signing site, the same block size (what every site of a
        new cluster sees once per volume; anything else is logged at WARNING)."""
        v = next((v for v in self.cfg.volumes if v.name == command.get("volume")), None)
        return v is not None and v.initial_primary == command.get("by") == command.get("primary") \
            and v.block_size_bytes == command.get("block_size")

    def _rules_event(self, command: dict, result: dict) -> None:
        """Tick thread: a raise of the cluster's rules is logged at every site at WARNING, naming the
        site that proposed it, the members it leaves behind and the operators who consented (the
        raising site's own line says the same from its side). Replayed at start: INFO, as the
        other AUDIT lines. A founding that carried the rules (``found``, ``state.founding_rules``)
        says the cluster is founded under them, at WARNING when it dropped what members had applied
        before it under rules 1."""
        level, audit = self._audit_prefix()
        if command.get("op") == "found":  # the founding carried them (state.founding_rules)
            if audit.startswith("AUDIT (committed before this site first joined"):
                audit = "AUDIT"  # the founding this site joins now, not history from before it
            dropped = result.get("dropped") or {}
            log.log(level if not dropped else logging.WARNING,
                    "%s the cluster is founded under rules %s (%s's found proposal carried them)%s%s", audit,
                    result.get("rules"), command.get("by"),
                    "" if result.get("adopted", True) else unadopted_words(audit == "AUDIT"),
                    (f"; dropped what members applied before it under rules {result.get('previous')}: "
                     f"{facts_text(dropped)}") if dropped else "")
            if level == logging.WARNING:
                self._logged_live()
            return
        behind = result.get("behind") or {}
        log.log(level, "%s the cluster's rules raised %s -> %s by %s%s", audit, result.get("previous"),
                result.get("rules"), command.get("by"),
                (f", leaving behind {facts_text(behind)} with the consent of the operators of "
                 f"{', '.join(result.get('consented') or [])}") if behind else " (every member reported the release)")
        if level == logging.WARNING:
            self._logged_live()

    def _request_event(self, command: dict, result: dict) -> None:
        """Tick thread: every site logs protection-weakening requests and what became of them
        (operators at every site see what they are asked to approve), and wakes its runners
        when an approved action applied (a verdict cleared, a retention changed).

        Lines start ``AUDIT request``, at WARNING; an entry applied before this site joined the
        cluster (the Raft log replayed at start, or caught up from the leader) starts
        ``AUDIT (replayed from the Raft log) request``, at INFO: grepping ``AUDIT request`` finds
        what happened while the site runs, not the whole history again at each restart — unless
        it was committed while this site was away (:mod:`replicad.site.seen`): ``AUDIT
        (committed while this site was away) request``, at WARNING. Only a line seen live gives the
        next step (``replicad approve r6``, ``replicad veto r6``): a line of history says the count
        was then and that what became of the request follows
        (:func:`~replicad.site.seen.pending_words`), as the request may have applied or ended since.
        The action and its arguments (a document longer than 400 characters counted,
        :func:`~replicad.core.requestdiff.args_summary`) are ``key=value`` words
        (:func:`~replicad.core.errors.facts_text`), an approval names the request's action (from the
        Raft view: the approve command has none)."""
        level, audit = self._audit_prefix()
        requests = (self.raft.view().get("requests") or {}) if self.raft is not None else {}
        req_id = result.get("request")
        entry = requests.get(req_id) or {}
        if command.get("op") == "request":
            what = _request_words(command.get("action"), command.get("args"), command.get("reason"))
        else:
            what = _request_words(entry.get("action"), entry.get("args"), entry.get("reason"))
        if result.get("status") == "pending":
            if command.get("op") == "request":
                head = f"{req_id} by {command.get('by')}: {what}"
            else:
                head = (f"{req_id} ({what}, requested by {entry.get('by', '?')}) "
                        + (f"approved by {command.get('by')}" if result.get("changed", True)
                           else f"not changed: {command.get('by')} was already counted"))
            log.log(level if result.get("changed", True) else logging.INFO, "%s request %s -- %s", audit, head,
                    pending_words(len(result.get("approvals") or []), result.get("needed"), req_id, audit == "AUDIT"))
        elif result.get("status") == "approved":
            log.log(level, "%s request %s (%s, requested by %s) approved by %s: %s", audit, req_id, what,
                    entry.get("by", "?"), ", ".join(result.get("approvals") or []),
                    approved_words(result.get("effective_ns") or 0, req_id, audit == "AUDIT"))
        elif result.get("status") == "vetoed" and command.get("op") == "veto":
            log.log(level, "%s veto of request %s (%s%s, requested by %s) by %s: it will not take effect (%s's veto "
                    "number %s; a site that vetoes every request can be revoked by a majority: replicad revoke "
                    "%s)", audit, req_id, result.get("action"),
                    f" of volume {result['volume']}" if result.get("volume") else "", result.get("requested_by"),
                    result.get("vetoed_by"), result.get("vetoed_by"), result.get("vetoes"), result.get("vetoed_by"))
        elif result.get("status") == "withdrawn":
            self._withdrawal_event(level, audit, req_id, result)
        for gone in result.get("forgotten") or ():  # finished records of the same requester, oldest first
            log.log(level, "%s request %s (%s, %s, requested by %s) forgotten: its requester made more than %d "
                    "requests since", audit, gone.get("request"), gone.get("action"), gone.get("status"),
                    gone.get("requested_by"), REQUESTS_MAX)
        applied = list(result.get("requests_applied") or [])
        if result.get("status") == "applied":
            applied.append(result)
        for done in applied:
            log.log(level, "%s request %s %s: %s: %s (requested by %s)", audit, done.get("request"), done.get("status"),
                    done.get("action"), facts_text(args_summary(done.get("result"))),
                    (requests.get(done.get("request")) or {}).get("by", "?"))
        if level == logging.WARNING and audit != "AUDIT":  # history: its fate is told once this site joined
            if self._history_requests is None:
                self._history_requests = []
            for rid in [req_id, *(d.get("request") for d in applied)]:
                if rid is not None and all(rid != named for named, _ in self._history_requests):
                    self._history_requests.append((rid, audit))
        if level == logging.WARNING:
            self._logged_live()  # after the lines: a crash before the mark is written logs them again
        if applied and self._loop is not None:
            for runner in self.runners.values():
                self._loop.call_soon_threadsafe(runner.wake.set)

    def _withdrawal_event(self, level: int, audit: str, req_id: Any, result: dict) -> None:
        """Tick thread: a request withdrawn by its requester (its own veto: ``state._op_veto``, the
        record goes, no veto counted). When another site had approved it, every site logs it at
        ERROR naming the requester and the approvals it voids, and counts it
        (``replicad_request_withdrawn_total{approved="true"}``, alert
        ``ReplicadRequestWithdrawnAfterApproval``): a site that copies an honest site's pending
        request, gets it approved and withdraws it during the cooling-off keeps a majority's
        change from taking effect without a veto counted against it (attack review R16, F1). A
        withdrawal nobody else approved (an operator taking back their own request) stays a
        WARNING, counted ``approved="false"``. Counted only when logged as news (level WARNING:
        live or committed while away), not the history replayed at start (its counter starts at
        each start)."""
        requester = result.get("withdrawn_by")
        voided = [str(s) for s in (result.get("approvals") or ()) if s != requester]
        about = f" of volume {result['volume']}" if result.get("volume") else ""
        if voided:
            log.log(logging.ERROR if level == logging.WARNING else level,
                    "%s request %s (%s%s, %s when withdrawn) withdrawn by its requester %s after %s approved it: "
                    "the approval(s) of %s are void and it will not take effect (no veto is counted). If the change "
                    "is still wanted, approve an identical request of another site or ask for it again at your own "
                    "(replicad requests); ask %s's operator why: a site that withdraws a request others approved "
                    "may be keeping a majority's change from taking effect", audit, req_id, result.get("action"),
                    about, result.get("was"), requester, ", ".join(voided), ", ".join(voided), requester)
        else:
            log.log(level, "%s request %s (%s%s, %s when withdrawn) withdrawn by its requester %s: it will not take "
                    "effect", audit, req_id, result.get("action"), about, result.get("was"), requester)
        if level == logging.WARNING:
            self.metrics.request_withdrawn(str(result.get("action")), approved=bool(voided))

    async def _bootstrap(self) -> None:
        """Join the cluster, then register this site and its volumes in the Raft state
        (idempotent; retried until a quorum).

        Joining (issue 13, items 4 and 9): ``found`` with a fresh random incarnation id and this
        config's membership; the first one applied to the Raft state fixes both, later ones answer
        what is recorded. A membership that disagrees with this config stops the site
        (:meth:`_membership_agreed`); otherwise the volumes enter the recorded incarnation
        (:meth:`VolumeLoop.enter_incarnation`), and only then do they act.

        Until a majority of the configured sites proposed an identical list (the state machine's
        adoption rule, :mod:`replicad.core.state` ``found``), the proposal is repeated every
        :data:`FOUND_RETRY_S`, and the sites proposing another list are logged with their
        differences from this config."""
        me = self.cfg.self_ref()
        self.raft.ask_membership(True)
        while not self.volumes.joined.is_set():
            try:
                self._judge_reported_membership()
                if self.fatal is not None:
                    return
                await self._synced_or_stopped()  # catch up first: decide on the CURRENT membership
                if self.fatal is not None:
                    return
                current = self.raft.view().get("incarnation")
                hold = self._judge_founding_replay(None if current is None else current.get("id"))
                if self.fatal is not None:
                    return
                if hold:  # its replay refused a found: not before the members' reports are compared
                    await asyncio.sleep(1.0)
                    continue
                if current is None and not self._said_unpinned and self.raft.founding_unpinned_log():
                    self._said_unpinned = True
                    log.warning("site %s: this Raft log was started by an older release and pins no founding keys: "
                                "until the cluster is founded, a found forged in another site's name counts here as "
                                "that release decided it. Stop every site, move each site's Raft directory aside and "
                                "start them again (README \"Upgrades\")", self.site_id)
                if current is None:  # not founded yet: propose this config's list
                    # the founding carries this release's rules: a new cluster is decided under them from
                    # its founding (state.founding_rules; a cluster founded already is not refounded)
                    res = await self.cluster.propose("found", incarnation=os.urandom(16),
                                                     members=self.cfg.membership(),
                                                     **({"rules": self._founding_rules}
                                                        if self._founding_rules > 1 else {}))
                    if not res.get("adopted", True):
                        self._founding_waits(res)
                        if self.fatal is not None:
                            return
                        # the others' proposals may found it in the meantime: join as soon as they do
                        await _until(lambda: self.raft.view().get("incarnation") is not None, FOUND_RETRY_S)
                        continue
                    await self.cluster.wait_synced()
                    current = self.raft.view().get("incarnation") or {"id": res["incarnation"],
                                                                      "members": res["members"]}
                # a site joining an existing incarnation proposes no found: it compares this config
                # with the membership current at the end of its catch-up (set_members applied since
                # the founding included), never with the first one it replays
                res = {"incarnation": current["id"], "members": current["members"]}
                self._membership_agreed(res["members"], decisive=True)
                if self.fatal is not None:
                    return
                await self.volumes.enter_incarnation(res["incarnation"], self.raft.view())
                self.raft.ask_membership(False)
            except ReplicadError as err:
                log.info("bootstrap waiting to join the cluster: %s %s", err, err.evidence)
                await asyncio.sleep(1.0)
            except Exception:  # never let one bad round end the join: a site that never joins never acts
                log.exception("bootstrap: a round of joining the cluster failed unexpectedly; retrying")
                await asyncio.sleep(1.0)
        await self._register(me)

    async def _register(self, me: Any) -> None:
        """Register this site (``register_site``, idempotent) and then its volumes
        (:meth:`_register_volume`) in the Raft state: the bootstrap's last step, once joined.

        A transient failure (:func:`~replicad.core.errors.is_transient`: no leader or quorum, a
        commit not known within the deadline) is logged at WARNING with the try and the delay and
        tried again after :data:`REGISTER_BACKOFF_S` (equal jitter: 1 s, 2 s, 4 s ... at most 60 s;
        a fixed second wrote an INFO line a second for as long as the quorum was gone); the first
        try that works after failures is logged at WARNING too. A ``not_found`` (a volume's
        initial primary not registered yet) waits for it. Any other refusal is permanent (the
        agreed membership or the state refuses this site's word: ``conflict``, ``not_self``, a
        revoked or unknown key): logged at ERROR once, naming the cause, and not tried again
        (a restart tries again, once the cause is fixed); the site runs on unregistered. So is a
        refusal at the leader's door (``request_denied``, transient otherwise) that this site's
        applied view shows permanent (:meth:`_denied_for_good`: its key revoked, or not a member)."""
        backoff = Backoff(*REGISTER_BACKOFF_S)
        while True:
            try:
                await self.cluster.propose("register_site", site_id=self.site_id, peer_url=me.peer_url, kind=me.kind)
                self._raise_rules()
                if self.fatal is not None:
                    return
                for v in self.cfg.volumes:
                    await self._register_volume(v)
                if backoff.failures:
                    log.warning("site %s registered in the cluster after %d failed tries", self.site_id,
                                backoff.failures)
                else:
                    log.info("site %s registered in the cluster", self.site_id)
                return
            except NotFoundError as err:  # e.g. the initial primary has not registered yet
                log.info("bootstrap waiting: %s", err)
                primaries = {v.initial_primary for v in self.cfg.volumes}
                registered = lambda: primaries <= set(self.cluster.view().get("sites") or {})  # noqa: E731
                if registered():  # refused for another reason: look again in a second
                    await asyncio.sleep(1.0)
                else:  # try again as soon as the initial primaries registered
                    await _until(registered, 1.0)
            except ReplicadError as err:
                denied = self._denied_for_good(err)
                if denied is not None:
                    log.error("site %s: registration refused at the leader's door, not tried again: %s (this site "
                              "runs unregistered: no volume of it replicates; %s, then restart the site)",
                              self.site_id, *denied)
                    return
                if not is_transient(err):
                    log.error("site %s: registration refused, not tried again: %s %s (this site runs unregistered: "
                              "no volume of it replicates; fix what the refusal names, then restart the site)",
                              self.site_id, err, facts_text(err.evidence))
                    return
                delay_s = backoff.failed()
                log.warning("site %s: registration not committed (%s); try %d in %.1f s", self.site_id, err,
                            backoff.failures + 1, delay_s)
                await asyncio.sleep(delay_s)

    def _denied_for_good(self, err: ReplicadError) -> tuple[str, str] | None:
        """``(why, what to do)`` when a proposal the leader refused at its door (``NoQuorumError``
        reason ``request_denied``, :mod:`replicad.consensus.raft` point 17) will be refused every
        time, by this site's applied view: this site's signing key revoked (``revoke_site``), or this
        site not a member of the founded cluster. None otherwise (a door refusal for a spent forwarding budget or rate passes:
        transient). The door refuses both as ``forwarded_bad_signature`` and the proposer sees only
        ``request_denied``, which :meth:`_register` retried for ever (a WARNING a minute)."""
        if (err.evidence or {}).get("reason") != "request_denied" or self.raft is None:
            return None
        view = self.raft.view()
        entry = (view.get("revoked") or {}).get(self.site_id)
        if self._signer is not None and isinstance(entry, dict):
            try:
                mine = parse_public_key(self._signer.public_key)
            except ValueError:
                mine = None
            if mine is not None and mine in (entry.get("keys") or ()):
                return (f"this site's key {self._signer.public_key} is revoked in the cluster state",
                        "rebuild it with a new key pinned in every site's config (README \"A site is compromised\")")
        members = (view.get("incarnation") or {}).get("members")
        if members and all(m.get("site_id") != self.site_id for m in members):
            return (f"site {self.site_id!r} is not a member of the agreed membership "
                    f"({', '.join(str(m.get('site_id')) for m in members)})",
                    "have the members add it (`replicad members propose` at a member) or correct this config")
        return None

    def _raise_rules(self) -> None:
        """Raise the cluster state's rules version to this code's :data:`~replicad.core.state.RULES_MAX`
        (op ``rules``) once every member runs a release applying it: called by the bootstrap after
        this site's Raft view is current and it registered. A state already there is left alone; one
        above it stops the site (:class:`RulesVersionError`: this release cannot decide like the
        others); else :meth:`RulesRaise.run <replicad.site.rules_raise.RulesRaise.run>` waits in the
        background (the bootstrap goes on: the site's volumes register and act meanwhile) until
        every unrevoked member of the agreed membership reported, signed, a release applying it
        (``GET /v1/peer/release``), then proposes the raise with their reports; the state machine
        checks them again (:func:`~replicad.core.state.rules_reports_problems`).

        So a rolling upgrade is safe (:mod:`replicad.core.state`, "Rules version"): while one member
        still runs b976d0a (no report) the state stays under rules 1, which every release decides
        alike, and the raise is applied only once each member runs a release that applies it. Every
        upgraded site waits so; the first raise applied wins, the others find it done. The stop
        covers a state this site received whole (a dump); a raise past its ``RULES_MAX`` that it
        replays is refused there (under rules 1 as b976d0a refuses it, an unknown op). Once the
        rules are at ``RULES_MAX`` (founded or raised so), :meth:`RulesRaise.watch` names at ERROR
        each member whose release does not apply them."""
        current = rules(self.raft.view())
        if current > RULES_MAX:
            self._fail(RulesVersionError(f"the cluster state is decided under rules {current}, and this release "
                                         f"applies rules 1..{RULES_MAX}: run the release the other sites run",
                                         rules=current, max_rules=RULES_MAX))
            return
        if current < RULES_MAX and not any(t.get_name() == "rules-raise" and not t.done() for t in self._tasks):
            self._tasks.append(asyncio.create_task(self.rules_raise.run(self._stopping), name="rules-raise"))
        if not any(t.get_name() == "rules-watch" for t in self._tasks):  # names members behind once there
            self._tasks.append(asyncio.create_task(self.rules_raise.watch(self._stopping), name="rules-watch"))

    async def _register_when_room(self, v: VolumeConfig) -> None:
        """Try ``add_volume`` of ``v`` again, after :data:`VOLUME_ROOM_BACKOFF_S` (equal jitter),
        while the cluster refuses it as full (``conflict`` with ``max_volumes``): each try at INFO,
        the registration that works at WARNING; another refusal ends it (logged at ERROR, as
        :meth:`_register_volume` does). Runs in the background until then or until the daemon stops."""
        backoff = Backoff(*VOLUME_ROOM_BACKOFF_S)
        while not self._stopping.is_set():
            delay_s = backoff.failed()
            log.info("volume %s: the cluster was full at try %d: trying again in %.0f s", v.name, backoff.failures,
                     delay_s)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay_s)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self._register_volume(v, retrying=True)
            except ReplicadError as err:
                if isinstance(err, ConflictError) and "max_volumes" in err.evidence or is_transient(err) \
                        or isinstance(err, NotFoundError):
                    continue
                log.error("volume %s: registration refused: %s %s", v.name, err, facts_text(err.evidence))
                return
            if self.cluster.volume_state(v.name) is not None:
                log.warning("volume %s is registered now, after %d tries refused for a full cluster", v.name,
                            backoff.failures)
                return

    async def _register_volume(self, v: VolumeConfig, retrying: bool = False) -> None:
        """Register ``v`` in the Raft state if this site is its ``initial_primary`` and nobody did
        yet (``add_volume`` is signed by the volume's primary only): with each retention key at
        most the state's :data:`~replicad.core.state.DEFAULT_RETENTION` (one site may not make
        every site keep copies longer), then this site requests its ``[volumes.retention]`` and
        ``[volumes.detection]`` where they differ (:meth:`_request_initial_retention`,
        :meth:`_request_initial_policy`). Other sites wait for the primary's registration. A
        registration that differs from this config (another registering site or block size:
        squatted, or a race lost to one) is refused here as ``conflict`` and judged by every
        runner (:mod:`replicad.site.registration`): logged, never the end of the bootstrap of
        the other volumes."""
        if self.cluster.volume_state(v.name) is not None or v.initial_primary != self.site_id:
            return
        configured = _retention_dict(v)
        registered = {k: min(x, DEFAULT_RETENTION[k]) for k, x in configured.items()}
        try:
            size = await registered_size_bytes(v)  # bounded: a hung device or QSD must not stall the loop
        except ReplicadError as err:  # a qemu volume whose QSD does not answer: never registered without a size
            log.error("volume %s: registration refused: %s %s", v.name, err, facts_text(err.evidence))
            return
        try:
            res = await self.cluster.propose("add_volume", volume=v.name, primary=self.site_id,
                                             block_size=v.block_size_bytes, size_bytes=size,
                                             min_copies=v.min_copies, retention=registered)
        except ReplicadError as err:
            if is_transient(err) or isinstance(err, NotFoundError):  # the bootstrap's loop tries again
                raise
            if isinstance(err, ConflictError) and "max_volumes" in err.evidence and not retrying:
                # the cluster holds the most volumes of unrevoked sites: room comes back when a site
                # hoarding them is revoked or its volumes removed (review R13, F1), so try again
                log.error("volume %s: registration refused: %s %s; tried again every few minutes until the "
                          "cluster has room (revoke or remove what fills it: README \"A site is compromised\")",
                          v.name, err, facts_text(err.evidence))
                task = asyncio.create_task(self._register_when_room(v), name=f"register-{v.name}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                return
            if retrying:
                raise
            # registered meanwhile with another block size (the runner judges it), this site's own
            # share of volumes full, a size or policy out of range: permanent, the other volumes go on
            log.error("volume %s: registration refused: %s %s", v.name, err, facts_text(err.evidence))
            return
        if res.get("created"):
            # in the background, retried with backoff: a lost quorum must neither drop them nor
            # hold this site's bootstrap (its other volumes, its registration) meanwhile
            task = asyncio.create_task(self._initial_requests(v, registered, configured),
                                       name=f"initial-requests-{v.name}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _initial_requests(self, v: VolumeConfig, registered: dict, configured: dict) -> None:
        """The requests of a volume this site just registered: its ``[volumes.detection]``, then
        its ``[volumes.retention]`` (each through :func:`request_with_retry`), one volume's after
        another's (a lock), each only while this site has fewer pending requests than the state
        allows (:meth:`_room_for_request`). A site registering its 128 volumes
        (``state.VOLUMES_PER_SITE_MAX``) at its first start proposed up to 256 requests at once, the
        state refusing all but :data:`~replicad.core.state.REQUESTS_PENDING_PER_SITE`: with its 129
        registrations, 385 commands past the leader's door's burst (``raft.OPS_BURST``, 300), whose
        refusals read as an attack (``ReplicadRaftTrafficRefused``)."""
        if self._initial_lock is None:
            self._initial_lock = asyncio.Lock()
        async with self._initial_lock:
            await self._request_initial_policy(v)
            await self._request_initial_retention(v, registered, configured)

    def _room_for_request(self, what: str, meanwhile: str) -> bool:
        """True while this site has fewer pending, unexpired requests in its applied view than
        :data:`~replicad.core.state.REQUESTS_PENDING_PER_SITE` (the state refuses a request past them,
        ``conflict``); else logs at WARNING that ``what`` is not requested and ``meanwhile`` (as
        :func:`request_with_retry` logs a refusal) and returns False: not proposed at all."""
        view = self.cluster.view()
        pending = [r for r, e in (view.get("requests") or {}).items() if isinstance(e, dict) and
                   e.get("by") == self.site_id and e.get("status") == "pending" and not request_expired(view, e)]
        if len(pending) < REQUESTS_PENDING_PER_SITE:
            return True
        log.warning("%s could not be requested (this site has %d pending requests, %s, the most a site may have: "
                    "not proposed); %s", what, len(pending), ", ".join(pending), meanwhile)
        return False

    async def _request_configured(self, v: VolumeConfig, section: str, keys: str, op: str, args: dict,
                                  meanwhile: str) -> dict | None:
        """The ``[volumes.<section>]`` keys of ``v`` (``keys``: "name = value, ..." as logged)
        requested as ``op`` with ``args`` (the volume's name added), if this site has room for
        another pending request (:meth:`_room_for_request`), tried again while not committed
        (:func:`request_with_retry`): the committed answer, or None (no room, refused, or not
        committed after the last try: logged at WARNING, ``meanwhile`` saying what holds until
        the operator asks again)."""
        what = f"volume {v.name}: [volumes.{section}] {keys}"
        if not self._room_for_request(what, meanwhile):
            return None
        return await request_with_retry(self.cluster, what, op, {"volume": v.name, **args},
                                        f"[volumes.{section}] {keys} in {self.site_id}'s config", meanwhile)

    async def _request_initial_retention(self, v: VolumeConfig, registered: dict, configured: dict) -> None:
        """``[volumes.retention]`` longer than :data:`~replicad.core.state.DEFAULT_RETENTION` for a
        volume this site just registered (with the defaults for those keys): requested as a
        ``set_retention`` other sites approve (longer: no cooling-off), logged at WARNING with the
        request id. A request not committed is tried again (:func:`request_with_retry`); a refused
        one, or one still not committed after the last try, is logged; the operator can make it
        again (``replicad retention VOL --set KEY=DURATION``)."""
        if registered == configured:
            return
        keys = ", ".join(f"{k.removesuffix('_s')} = {configured[k]} s" for k in sorted(configured)
                         if configured[k] != registered[k])
        meanwhile = f"the volume keeps {registered} until 'replicad retention {v.name} --set ...' is approved"
        res = await self._request_configured(v, "retention", keys, "set_retention", {"retention": configured},
                                             meanwhile)
        if res is None:
            return
        log.warning("AUDIT volume %s: [volumes.retention] %s: requested as %s; the volume keeps the defaults for "
                    "those keys until an operator of another site approves it (replicad approve %s)", v.name, keys,
                    res.get("request"), res.get("request"))

    async def _request_initial_policy(self, v: VolumeConfig) -> None:
        """``[volumes.detection]`` keys other than the defaults for a volume this site just
        registered: the volume starts with the default policy (one site may not set detection on
        its own word: the state machine refuses an ``add_volume`` that carries another policy) and
        this site requests the configured policy as a ``set_detection`` other sites approve
        (approvals; a weakening such as ``mode = "encrypted"`` also cools off), logged at WARNING
        with the request id. A request not committed is tried again (:func:`request_with_retry`); a
        refused one, or one still not committed after the last try, is logged; the operator can
        make it again (``replicad detection VOL --set KEY=VALUE``)."""
        configured = {k: x for k, x in v.detection.model_dump().items() if x is not None}
        policy = {**anomaly.POLICY_DEFAULTS, **configured}
        if policy == anomaly.POLICY_DEFAULTS:
            return
        keys = ", ".join(f"{k} = {x!r}" for k, x in sorted(configured.items()) if x != anomaly.POLICY_DEFAULTS[k])
        weakened = anomaly.weakened_keys(anomaly.POLICY_DEFAULTS, policy)
        meanwhile = f"it is judged with the default policy until 'replicad detection {v.name} --set ...' is approved"
        res = await self._request_configured(v, "detection", keys, "set_detection", {"policy": policy}, meanwhile)
        if res is None:
            return
        log.warning("AUDIT volume %s: [volumes.detection] %s%s: requested as %s; judged with the default policy until "
                    "an operator of another site approves it (replicad approve %s)", v.name, keys,
                    f" weakens detection ({', '.join(weakened)})" if weakened else "", res.get("request"),
                    res.get("request"))

    async def _synced_or_stopped(self) -> None:
        """Bootstrap: wait for a current Raft view as :meth:`Cluster.wait_synced` does (NoQuorumError after
        ``cluster.PROPOSE_DEADLINE_S``), judging the members' membership reports every second meanwhile
        (:meth:`_judge_reported_membership`; returns once it stopped the site): a site whose config lacks
        the leader never hears it, and it stopped only after that whole wait."""
        deadline = time.monotonic() + PROPOSE_DEADLINE_S
        while not self.cluster.raft_synced() and time.monotonic() < deadline:
            await _until(self.cluster.raft_synced, 1.0)
            self._judge_reported_membership()
            if self.fatal is not None:
                return
        await self.cluster.wait_synced(0.0)  # NoQuorumError unless current

    def _judge_reported_membership(self) -> None:
        """Before joining: stop (:class:`MembershipMismatchError`) when a majority of this
        config's sites report one agreed membership (:meth:`RaftNode.membership_reports`, each
        report bound to its site by the Raft channel) that differs from this config's
        ``[[sites]]``. This site's own replay cannot be relied on for it: with a config that
        differs from the founders', its founding rule and its pinned keys differ, and a leader
        its config lacks is refused (it waited forever). One site's word is never enough."""
        mine = self.cfg.membership()
        names = {m["raft"]: m["site_id"] for m in mine if m["site_id"] != self.site_id}
        by_list: dict[tuple, list[str]] = {}
        lists: dict[tuple, list[dict]] = {}
        for addr, report in self.raft.membership_reports().items():
            try:  # shapes are checked by the guard; a member's word is still never trusted to parse
                members = [{"site_id": m["site_id"], "raft": m["raft"], "kind": m["kind"], "keys": sorted(m["keys"])}
                           for m in report["members"]]
                key = tuple((m["site_id"], m["raft"], m["kind"], tuple(m["keys"])) for m in members)
                if addr not in names or not membership_differences(members, mine):
                    continue
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("site %s: a membership report from %s cannot be read (%s); ignored", self.site_id,
                            names.get(addr, addr), exc)
                continue
            by_list.setdefault(key, []).append(names[addr])
            lists[key] = members
        for key, sites in by_list.items():
            if len(sites) >= len(mine) // 2 + 1:
                problems = membership_differences(lists[key], mine)
                self._fail(MembershipMismatchError(
                    f"site {self.site_id}: a majority of the sites this config names ({', '.join(sorted(sites))}) "
                    f"report the cluster's agreed membership, which differs from this config's [[sites]] in "
                    f"{len(problems)} entr{'y' if len(problems) == 1 else 'ies'} ({'; '.join(problems)}); the site "
                    f"stops before it acts as leader or primary. {MEMBERSHIP_COMPARE}",
                    problems=problems, source=f"membership reports of {', '.join(sorted(sites))} (Raft channel)",
                    action=MEMBERSHIP_RUNBOOK))
                return

    _unfounded_since: float | None = None  # monotonic s: a majority reported a founding this site's state lacks
    _held_since: float | None = None  # monotonic s: founded here after a refused found, no majority report yet
    _withheld_said: float | None = None  # monotonic s: the ERROR line on a founding never applied here, last
    _said_unpinned = False  # the WARNING on a log an older release started, unfounded, said

    def _judge_founding_replay(self, mine: bytes | None) -> bool:
        """Before joining, caught up (attacker review r14, A1; r15 F1): stop
        (:class:`MembershipMismatchError`) when a majority of this config's sites report one cluster
        incarnation (their membership reports, :meth:`RaftNode.membership_reports`: each bound to
        its site by the Raft channel, one site's word never enough) and this site's state holds
        another (``mine``): it would act on another incarnation. One gap leads there: a ``found``
        counts only signed with the key the ``[[sites]]`` config pinned for its proposer when this
        site's Raft log started (``state.founding_keys``), so a site that started its log (rebuilt,
        or joining) after a founder's founding key was retired from the configs, while a leader's
        log still held the founding, refuses that founder's proposal.

        A state that founded nothing never stops (it acts on no incarnation): the leader that sends
        this site its log may withhold the founding while it reports this site caught up (r15 F1: a
        leading site made the last site of a first deployment stop, blaming a key rotation), and
        may append a ``found`` forged in a founder's name with that founder's public random id,
        which this site refuses and :meth:`RaftNode.refused_founder_of` then names (attacker review
        r2, F2: a stop on that named a retired key that was never retired). The site logs an ERROR
        (after three rounds of :data:`FOUND_RETRY_S`, then every :data:`FOUNDING_REPLAY_S`): no
        refused founder, a founding withheld by the leader it names; a refused one, both causes
        (that leader withholding and forging, or that founder's key retired: the remedy of README
        "Rotate a site's key", step 6). It keeps proposing its ``found``, which that leader must
        append, or this site deposes it after ``WITHHELD_AFTER_S`` (raft point 19) and catches up
        from the next leader.

        Returns True (hold: do not join yet) while this site is founded, refused a ``found`` for its
        key since it started (:meth:`RaftNode.founds_unpinned`: a forged one, or one it judged
        otherwise than the founders), and no majority reported yet, for at most
        :data:`FOUNDING_REPLAY_S` (then it joins, WARNING: nothing to compare with). A site that
        refused no ``found`` never waits for the reports."""
        names = {s.raft: s.site_id for s in self.cfg.sites if s.site_id != self.site_id}
        by_id: dict[bytes, list[str]] = {}
        for addr, report in self.raft.membership_reports().items():
            inc = report.get("incarnation") if isinstance(report, dict) else None
            if addr in names and isinstance(inc, bytes):
                by_id.setdefault(inc, []).append(names[addr])
        theirs = next(((inc, sorted(sites)) for inc, sites in by_id.items()
                       if len(sites) >= len(self.cfg.sites) // 2 + 1), None)
        now = time.monotonic()
        if theirs is None and mine is not None and self.raft.founds_unpinned():
            self._held_since = now if self._held_since is None else self._held_since
            if now - self._held_since < FOUNDING_REPLAY_S:
                return True
            log.warning("site %s: this site refused a found proposal of the founding for its key, and no majority of "
                        "the configured sites reported the cluster's incarnation within %.0f s to compare its own "
                        "with; it joins incarnation %s", self.site_id, FOUNDING_REPLAY_S, mine.hex())
            return False
        if theirs is None or theirs[0] == mine:
            self._unfounded_since = None
            return False
        refused = self.raft.refused_founder_of(theirs[0])
        leader = self.raft.leader_text()
        if mine is None:
            # never a stop here (attacker review r2, F2): a refused found among the founders may be
            # one the leader forged in a founder's name (incarnation random ids are public), and a
            # site holding no incarnation acts on none; it keeps proposing its found and says why
            if self._unfounded_since is None:
                self._unfounded_since = now
            waited = now - self._unfounded_since
            # not on the first rounds: reports of an entry committed after this site's catch-up
            if waited >= 3 * FOUND_RETRY_S and (self._withheld_said is None
                                                or now - self._withheld_said >= FOUNDING_REPLAY_S):
                self._withheld_said = now
                if refused is None:
                    log.error("site %s: founding withheld? %s report the cluster founded as %s for %.0f s; this "
                              "site's replay of the Raft log, caught up by the leader's word, holds none of the found "
                              "proposals that founded it: the leader %s may withhold them (README \"A site is "
                              "compromised\"). The site keeps proposing its found: a leader that never appends it is "
                              "deposed after %.0f s (raft point 19) and this site catches up from the next one",
                              self.site_id, ", ".join(theirs[1]), theirs[0].hex(), waited, leader,
                              consensus_raft.WITHHELD_AFTER_S)
                else:
                    log.error("site %s: founding not applied here: %s report the cluster founded as %s for %.0f s; "
                              "this site's replay of the Raft log founded nothing, and it refused a found proposal in "
                              "the name of site %s that would count among their founders, as not signed with the key "
                              "the [[sites]] config pinned for it when this site's Raft log started. Either the "
                              "leader %s withholds the founding and appended a found forged in site %s's name "
                              "(README \"A site is compromised\"; a leader that never appends this site's found is "
                              "deposed after %.0f s, raft point 19), or a founder's key that signed the founding was "
                              "retired from this config while a Raft log still holds the founding (move this site's "
                              "Raft directory aside and start it again once the leader's log is compacted past the "
                              "founding: README \"Rotate a site's key\", step 6). The site acts on no incarnation "
                              "it does not hold: it keeps proposing its found and waits",
                              self.site_id, ", ".join(theirs[1]), theirs[0].hex(), waited, refused, leader, refused,
                              consensus_raft.WITHHELD_AFTER_S)
            return False
        cause = (f"it refused site {refused}'s found proposal, which counts among the founders of {theirs[0].hex()}, "
                 "as not signed with the key the [[sites]] config pinned for it when this site's Raft log started: a "
                 "founder's key that signed the founding is no longer pinned in this config (retired while a Raft log "
                 f"still holds the founding), or this config differs from theirs, or the leader {leader} forged that "
                 "proposal and withheld the founding"
                 if refused is not None else
                 f"no found it refused counts among their founders: the founds that founded {mine.hex()} here were "
                 f"sent by the leader {leader}, which may have sent this site another log than the others, or this "
                 "config differs from theirs (README \"A site is compromised\")")
        problem = (f"incarnation: {', '.join(theirs[1])} report the cluster founded as {theirs[0].hex()}, this site's "
                   f"replay of the Raft log founded {mine.hex()}")
        self._fail(MembershipMismatchError(
            f"site {self.site_id}: {problem}: it decided the founding's found proposals otherwise than the sites that "
            f"founded the cluster: {cause}. The site stops before it acts as leader or primary. Move this site's Raft "
            "directory aside and start it again once the leader's log is compacted past the founding (README "
            "\"Rotate a site's key\", step 6)",
            problems=[problem], source=f"membership reports of {', '.join(theirs[1])} (Raft channel)",
            action=MEMBERSHIP_RUNBOOK))
        return False

    def _founding_waits(self, res: dict) -> None:
        """Log why the cluster is not founded yet: how many sites propose this config's list, and
        each site proposing another one with its differences (from the Raft state's
        ``founding``), so operators can compare them out of band. When a majority of this
        config's sites propose one other list, this site stops (:class:`MembershipMismatchError`):
        its config is the odd one out (its own state machine, whose reference is its config, may
        never adopt that list)."""
        founding = (self.raft.state().get("founding") or {}) if self.raft is not None else {}
        mine = self.cfg.membership()
        configured = {s.site_id for s in self.cfg.sites}
        lists: dict[str, list[str]] = {}
        for site, proposal in sorted(founding.items()):
            if site in configured and proposal.get("members") != mine:
                lists.setdefault(repr(proposal.get("members")), []).append(site)
        for sites in lists.values():
            if len(sites) >= len(configured) // 2 + 1:
                problems = membership_differences(founding[sites[0]]["members"], mine)
                self._fail(MembershipMismatchError(
                    f"site {self.site_id}: a majority of the sites this config names ({', '.join(sites)}) propose a "
                    f"membership that differs from this config's [[sites]] in {len(problems)} "
                    f"entr{'y' if len(problems) == 1 else 'ies'} ({'; '.join(problems)}); the site stops before it "
                    f"acts as leader or primary. {MEMBERSHIP_COMPARE}",
                    problems=problems, source="the found proposals in the cluster's Raft state",
                    action=MEMBERSHIP_RUNBOOK))
                return
        others = {site: membership_differences(p["members"], mine) for site, p in sorted(founding.items())
                  if p.get("members") != mine}
        log.info("bootstrap: %d of the %d sites needed propose this config's membership (%s); waiting",
                 len(res.get("agreeing") or []), res.get("needed") or 0, ", ".join(res.get("agreeing") or []))
        for site, problems in others.items():
            if self._founding_logged.get(site) == problems:
                continue
            self._founding_logged[site] = problems
            log.warning("bootstrap: site %s proposes a membership that differs from this config's [[sites]] (%s). %s",
                        site, "; ".join(problems), MEMBERSHIP_COMPARE)

    def _log_history_fates(self) -> None:
        """Event loop, once this site joined: for each request its lines of history named (committed
        while it was away; those lines give no next step), what became of it, from the state now
        (:func:`~replicad.site.seen.fate_words`: ``since applied``, or still pending with the step
        that is current now), at most :data:`~replicad.site.seen.HISTORY_FATES_MAX` lines."""
        ids, self._history_requests = list(self._history_requests or ()), None
        if not ids or self.raft is None:
            return
        requests = self.raft.view().get("requests") or {}
        for rid, audit in ids[:HISTORY_FATES_MAX]:  # under the head of the lines that named it
            log.warning("%s %s", audit, fate_words(rid, requests.get(rid)))
        if len(ids) > HISTORY_FATES_MAX:
            log.warning("%s ... and %d more request(s) named above: their status now in replicad requests",
                        ids[-1][1], len(ids) - HISTORY_FATES_MAX)

    async def _clock_loop(self) -> None:
        """Report this site's clock through Raft every CLOCK_HEARTBEAT_S: the state machine
        measures the retention lock window with the time a majority of sites have reached, so
        one site's clock stepping forward cannot prune inside it (O4). Only once this site joined
        the cluster's incarnation: before it, the log holds only ``found`` commands, whose
        signatures apply checks without the local config (:func:`replicad.core.state.signing_keys`)."""
        await self.volumes.joined.wait()
        self._log_history_fates()
        self._seen_upto = self.raft.applied_count()  # what it caught up with is seen (and logged if it was away)
        await asyncio.to_thread(self._save_seen)
        while True:
            await asyncio.sleep(CLOCK_HEARTBEAT_S)
            try:
                await self.cluster.propose("clock", deadline_s=CLOCK_HEARTBEAT_S)
            except ReplicadError as err:
                log.debug("clock heartbeat not committed: %s", err)


SEEN_SAVE_S = 1.0
"""How soon after AUDIT lines logged live the mark of how far this site saw the cluster is written
(:mod:`replicad.site.seen`): a stop or crash within it logs those lines once more at the next start."""
LAB_CHECKPOINT_EVERY_ENV = "REPLICAD_LAB_CHECKPOINT_EVERY"
"""Environment variable read only with ``lab = true``: the Raft checkpoint interval in commands
(every site of the bench must use the same); production always uses ``CHECKPOINT_EVERY``."""
COMPACTION_ENTRIES = 5000
"""Raft log entries past which a site writes its full state and compacts its log (pysyncobj's
``logCompactionMinEntries``; it also compacts every 5 minutes). A site behind the leader's log start
catches up from that state (:mod:`replicad.site.catchup` audits it)."""
LAB_COMPACTION_ENTRIES_ENV = "REPLICAD_LAB_COMPACTION_ENTRIES"
"""Environment variable read only with ``lab = true``: :data:`COMPACTION_ENTRIES` for a test bench
(at least 2; with ``REPLICAD_LAB_CHECKPOINT_EVERY`` a full-state catch-up within seconds)."""
CLUSTER_WIDE_OPS = ("add_volume", "set_retention", "set_detection", "mark_verdict", "demote", "promote")
"""Ops that change a volume for every site: each applied one signed by another site is logged
at WARNING at this site (:meth:`SiteDaemon._cluster_wide_event`)."""
CLUSTER_WIDE_FIELDS = {"add_volume": ("primary", "block_size", "min_copies", "retention"),
                       "set_retention": ("retention",), "set_detection": ("policy",),
                       "mark_verdict": ("seq", "verdict", "reason"), "demote": ("expected_epoch", "force"),
                       "promote": ("to", "expected_epoch", "force", "snapshot")}


VOLUME_ROOM_BACKOFF_S = (60.0, 900.0)
"""``(base_s, max_s)`` of the :class:`~replicad.core.backoff.Backoff` between the tries to register a
volume the cluster refused as full (``SiteDaemon._register_when_room``)."""

REGISTER_BACKOFF_S = (1.0, 60.0)
"""``(base_s, max_s)`` of the :class:`~replicad.core.backoff.Backoff` between a site's tries to
register itself and its volumes after a transient failure (``SiteDaemon._register``)."""

INITIAL_REQUEST_TRIES = 6
"""Tries of a registering site's initial request (:func:`request_with_retry`): each waits up to
``cluster.PROPOSE_DEADLINE_S`` (15 s) for a leader, with :data:`INITIAL_REQUEST_BACKOFF_S`
between them: 2-3 minutes in all before it gives up."""
INITIAL_REQUEST_BACKOFF_S = (2.0, 30.0)
"""``(base_s, max_s)`` of the :class:`~replicad.core.backoff.Backoff` between those tries."""


async def request_with_retry(cluster: Any, what: str, action: str, args: dict, reason: str, meanwhile: str,
                             tries: int = INITIAL_REQUEST_TRIES, backoff: Backoff | None = None) -> dict | None:
    """Propose ``request`` of ``action`` with ``args`` and ``reason`` through ``cluster``
    (:meth:`replicad.site.cluster.Cluster.propose`), up to ``tries`` times: a transient failure
    (:func:`replicad.core.errors.is_transient`: no quorum, a timeout) is logged at WARNING with
    the try and the delay and tried again after ``backoff`` (default
    :data:`INITIAL_REQUEST_BACKOFF_S`, equal jitter) with the *same* ``op_id``, so a try that
    did commit is answered, never made twice. Returns the request's result, or None after a
    refusal (at once) or the last failed try, logged at WARNING with ``what`` and ``meanwhile``
    (what holds until an operator makes the request). Never raises a ReplicadError;
    cancellation propagates."""
    backoff = backoff or Backoff(*INITIAL_REQUEST_BACKOFF_S)
    op_id = uuid.uuid4().hex
    for attempt in range(1, tries + 1):
        try:
            return await cluster.propose("request", op_id=op_id, action=action, args=args, reason=reason)
        except ReplicadError as err:
            if not is_transient(err) or attempt == tries:
                log.warning("%s could not be requested (%s %s; try %d of %d); %s", what, err, err.evidence, attempt,
                            tries, meanwhile)
                return None
            delay_s = backoff.failed()
            log.warning("%s: the request was not committed (%s); try %d of %d in %.1f s", what, err, attempt + 1,
                        tries, delay_s)
            await asyncio.sleep(delay_s)
    return None


FOUNDING_REPLAY_S = 20.0
"""How long a site that founded after refusing a ``found`` waits for the members' reports
(``SiteDaemon._judge_founding_replay``), and how often a founding not applied here is logged (ERROR;
such a site waits, it never stops for it: attacker review r2, F2). A caught-up site applies the
entry that founded the cluster within milliseconds of the others."""


FOUND_RETRY_S = 2.0
"""Seconds between two ``found`` proposals of a site while the cluster is not founded yet (it
joins as soon as the others' proposals found it, without waiting for the next one)."""
UNTIL_POLL_S = 0.05
"""Seconds between two looks of :func:`_until` at the applied Raft state."""


async def _until(done: Callable[[], bool], timeout_s: float) -> None:
    """Return once ``done()`` is true (looked at every :data:`UNTIL_POLL_S`) or ``timeout_s``
    seconds passed, whichever comes first; never raises for the timeout (the caller's loop
    looks again). For the bootstrap's waits on what other sites commit: a fixed sleep made
    every fresh cluster's first proposer wait a whole retry period after the others founded it."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(UNTIL_POLL_S)


MEMBERSHIP_COMPARE = (
    "Do not copy either list: compare each entry named here (site id, Raft address, kind, public keys) with the "
    "operators of the other sites out of band (phone or in person, not through this cluster), then correct the "
    "config that is wrong; an entry nobody configured or approved is a security incident (README, \"Membership "
    "mismatch\")")
"""What a membership mismatch tells the operator to do (never to adopt a list blindly)."""
MEMBERSHIP_RUNBOOK = "README, Membership mismatch"


def _retention_dict(v: VolumeConfig) -> dict:
    r = v.retention
    return {"keep_all_s": int(r.keep_all_s), "hourly_s": int(r.hourly_s), "daily_s": int(r.daily_s),
            "lock_s": int(r.lock_s)}
