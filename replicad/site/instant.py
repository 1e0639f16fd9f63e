"""Instant recovery (issue 16, item 1): ``replicad promote VOL --force --instant``.

Once Raft granted the promotion (epoch, fencing as for any forced promotion), the new primary
serves the chosen snapshot at once as a **writable NBD export** on the stable unix socket
``<data_dir>/nbd/instant-<volume>.sock`` (:meth:`Exports.open_instant`): reads come verified
from the chunk store, the application's writes go to a copy-on-write overlay (fsynced on
FLUSH). Meanwhile the takeover writes the snapshot into the volume's image with the ordinary
restore path (:meth:`Promotion._restore_in_place`, O5). When the image verifies, the
**switch-over** (:meth:`InstantRecovery.switch_over`) takes the export's write gate (writes,
zeroes, flushes wait; reads go on), copies every overlay block into the image, fsyncs it,
reads the copied blocks back and compares them, and from then the same export serves the
image itself: a connection lives through it; the application sees a pause of its writes, no
error, no reconnect. The volume is the plain image again: the first snapshot of the new primary
is taken only after the switch-over (the takeover holds the volume's lock), so it holds the
application's writes.

The durable record ``<data_dir>/instant/<volume>/record.json`` (tmp + fsync + rename +
directory fsync; ``{version, volume, epoch, seq, root, phase, requested_at_ns}``) is written
before the export listens, so no write is acknowledged before it exists; the overlay lives
beside it (``overlay/``). Phases: ``serving`` (the export listens; the copy is starting),
``copying``, ``switching`` (the overlay is being copied into the image), ``done`` (the image
holds snapshot + overlay, fsynced). **The rule after a crash** (kill -9 at any point): the
takeover runs again (the site is granted primary but never acted at that epoch); it finds the
record of the same epoch and snapshot and re-attaches the overlay as last flushed; in
``serving``/``copying``/``switching`` it restarts the copy (the image is compared block by
block against the snapshot and only differing blocks are rewritten, so finished work is not
redone; blocks of a half-done switch-over are put back to the snapshot's) and switches over
again; in ``done`` it does not touch the image and serves the image on the export.

**After the switch-over the export is the application's disk until the operator releases
it.** Once the acting epoch is durable the overlay is removed; the record stays, in ``done``
(``size_bytes``, ``block_size``), and says: serve the image on the instant socket. Every start
of the site whose acting epoch is the record's opens it again on the same socket
(:meth:`InstantRecovery.resume`), so an NBD client that reconnects (qemu's with
``reconnect-delay``, ``nbd-client -persist``) resumes after a restart. The operator releases it
(``replicad export --close instant-VOL``, after moving the application to the plain image):
the record goes and the export is not served again. A fence closes it and removes the record
(nothing is pending: the image holds everything). A record of an earlier epoch is **re-attached**
under the new epoch (the record rewritten, durably, before the export listens) when this site
takes the volume over again restoring the same snapshot (seq and root) and no other site was
primary at any epoch in between (:func:`primaries_between`, from the Raft state's role results):
a demote of this one does not discard the application's flushed writes (review R7, F3). The
forced promotion says ``instant`` to the Raft state, which holds the volume for this site until
its first commit at that epoch (:func:`replicad.core.state.instant_recovery`): no other site takes
it over, or demotes it, without other sites' approval, and a plain forced promotion of this site
continues a pending record (:meth:`InstantRecovery.pending`). Any other record (another snapshot,
another site primary meanwhile, an epoch the state no longer records) is set aside
(``<volume>.stale-<epoch>-<seq>``, logged at ERROR), never applied nor deleted: the writes in it
were made to a takeover whose branch the cluster left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicad.core.errors import IntegrityError, ReplicadError, RestoreVerifyError, UsageError, from_os_error
from replicad.core.manifest import Manifest
from replicad.core.state import is_int
from replicad.site.exports import Export, Exports
from replicad.storage.durable import fsync_dir
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.instant")

RECORD = "record.json"
RECORD_VERSION = 1
PHASES = ("serving", "copying", "switching", "done")
CHECKED_FRESH_S = 60.0  # promote --instant's check of the restore point stands in for the takeover's this long
WATCH_S = 1.0  # how often an instant export pending its switch-over checks that this site is still primary
MERGE_CHUNK_BLOCKS = 64  # overlay blocks copied into the image per read/write at the switch-over


EPOCHS_BETWEEN_MAX = 1024  # primaries_between looks at most this many epochs apart
MISSING: Any = object()  # primaries_between: an epoch whose primary the Raft state no longer records


def primaries_between(view: dict, volume: str, lo: int, hi: int) -> dict[int, Any]:
    """Who was primary of ``volume`` at each epoch ``lo < e < hi``, as the applied Raft state
    ``view`` (:mod:`replicad.core.state`) still records it: ``{epoch: site_id | None |
    MISSING}`` (None: a demote left it without one; :data:`MISSING`: no record of that epoch
    is left). The state keeps no history of epochs as such; its role changes are the results
    of ``promote`` (``epoch``, ``primary``, ``previous_primary``) and ``demote`` (``epoch``,
    ``previous_primary``) — the only ops that move an epoch — kept in ``applied_ops`` (the last
    ``APPLIED_OPS_MAX`` results), nested as the ``result`` of an approval that ran a role-change
    request, and in the request records (``requests``, the last ``REQUESTS_MAX``). Results are
    computed by the replicated state machine, so no site can write one. Pure; hostile shapes
    are skipped (their epochs stay MISSING)."""
    if hi - lo - 1 > EPOCHS_BETWEEN_MAX:
        return {lo + 1: MISSING}  # more role changes than any record keeps: nothing can be shown
    known: dict[int, Any] = {}

    def results() -> Any:
        for res in (view.get("applied_ops") or {}).values():
            yield res
            if isinstance(res, dict):
                yield res.get("result")
        for req in (view.get("requests") or {}).values():
            if isinstance(req, dict):
                yield req.get("result")

    for res in results():
        if not isinstance(res, dict) or res.get("ok") is not True or res.get("volume") != volume \
                or not is_int(res.get("epoch")) or "previous_primary" not in res:
            continue
        primary = res.get("primary")  # a demote's result names none
        if primary is None or isinstance(primary, str):
            known[res["epoch"]] = primary
        if res["previous_primary"] is None or isinstance(res["previous_primary"], str):
            known.setdefault(res["epoch"] - 1, res["previous_primary"])
    return {e: known.get(e, MISSING) for e in range(lo + 1, hi)}


def continuable(rec: dict, overlay: bool, view: dict, volume: str, site_id: str) -> int | None:
    """The snapshot seq of the instant-recovery record ``rec`` (a record of ``site_id``'s) if a
    forced promotion of ``site_id`` granted now would continue it (:meth:`InstantRecovery._reattach`'s
    rule, judged before the promotion): pending (not ``done``, or ``done`` with its ``overlay``
    still beside it), its snapshot still committed with the record's root, and no other site
    primary at any epoch after the record's, the current one included (:func:`primaries_between`;
    an epoch the state no longer records counts as another site's). Else None: the promotion is an
    ordinary one (the newest clean snapshot), and its takeover sets the record aside. Pure."""
    vs = (view.get("volumes") or {}).get(volume)
    seq, epoch = rec.get("seq"), rec.get("epoch")
    if vs is None or not is_int(seq) or not is_int(epoch) or epoch > vs.get("epoch", -1):
        return None
    if rec.get("phase") == "done" and not overlay:
        return None
    snap = (vs.get("snapshots") or {}).get(seq)
    root = snap.get("root") if isinstance(snap, dict) else None
    if not isinstance(root, bytes) or root.hex() != rec.get("root"):
        return None
    between = primaries_between(view, volume, epoch, vs["epoch"])
    if vs["epoch"] > epoch:
        between[vs["epoch"]] = vs.get("primary")
    if any(p not in (None, site_id) for p in between.values()):
        return None
    return seq


@dataclass
class InstantState:
    """One volume's instant recovery: the snapshot ``seq`` (``root``) served at ``epoch``, its
    ``phase`` (:data:`PHASES`, or ``fenced`` in memory: another site took the volume over before
    the switch-over and the export was closed), the export, and the timings (ns since the epoch,
    wall clock)."""

    volume: str
    epoch: int
    seq: int
    root: bytes
    dir: Path
    phase: str
    requested_at_ns: int
    resumed: bool = False
    serving_at_ns: int | None = None
    first_read_ns: int | None = None
    copy_done_blocks: int = 0
    copy_total_blocks: int = 0
    copy_done_at_ns: int | None = None
    switched_at_ns: int | None = None
    overlay_blocks: int = 0
    export: Export | None = None
    last_error: str | None = None
    size_bytes: int = 0
    block_size: int = 0
    serving: asyncio.Event = field(default_factory=asyncio.Event)

    def to_dict(self) -> dict[str, Any]:
        """``{volume, epoch, seq, root, phase, resumed, socket, uri, export_id, progress,
        copy_done_blocks, copy_total_blocks, overlay_blocks, serving_after_s, first_read_after_s,
        copy_after_s, switched_after_s, last_error}`` (``*_after_s``: seconds from the arrival of
        the promote request, or from the re-attach after a restart; None until it happened;
        ``copy_after_s``: the image verified, the switch-over begins)."""
        def after(ns: int | None) -> float | None:
            return None if ns is None else round((ns - self.requested_at_ns) / 1e9, 3)
        exp = self.export
        return {"volume": self.volume, "epoch": self.epoch, "seq": self.seq, "root": self.root.hex(),
                "phase": self.phase, "resumed": self.resumed,
                "export_id": exp.export_id if exp else None, "socket": str(exp.socket) if exp else None,
                "uri": f"nbd+unix:///?socket={exp.socket}" if exp else None,
                "progress": (self.copy_done_blocks / self.copy_total_blocks) if self.copy_total_blocks else 0.0,
                "copy_done_blocks": self.copy_done_blocks, "copy_total_blocks": self.copy_total_blocks,
                "overlay_blocks": (exp.overlay.blocks_written if exp is not None and exp.overlay is not None
                                   and self.phase != "done" else self.overlay_blocks),
                "serving_after_s": after(self.serving_at_ns), "first_read_after_s": after(self.first_read_ns),
                "copy_after_s": after(self.copy_done_at_ns), "switched_after_s": after(self.switched_at_ns),
                "last_error": self.last_error}


class InstantRecovery:
    """The instant recoveries of one site.

    Args:
        exports: the site's exports (the instant export is one of them, pinned while open).
        data_dir: records and overlays under ``<data_dir>/instant/``.
        metrics: ``replicad_instant_recovery_phase``, ``..._progress_ratio``,
            ``..._first_read_seconds``.
        background: the site's background tasks (cancelled at stop): the fence watch of each
            instant export is added there.
    """

    def __init__(self, exports: Exports, data_dir: Path, metrics: SiteMetrics,
                 background: set[asyncio.Task] | None = None) -> None:
        self.exports = exports
        self.background = background
        self.site_id = exports.site_id
        self.root = Path(data_dir) / "instant"
        self.metrics = metrics
        self._requests: dict[str, tuple[int, int]] = {}  # volume -> (seq, requested_at_ns): promote --instant
        self._checked: dict[str, tuple[int, Manifest, float]] = {}  # volume -> (seq, manifest, monotonic)
        self._states: dict[str, InstantState] = {}

    # ------------------------------------------------------------------ request
    def request(self, volume: str, seq: int, manifest: Manifest, requested_at_ns: int) -> None:
        """``promote --force --instant`` is about to propose: the takeover that follows serves
        ``volume#seq`` at once; ``manifest`` is the one ``promote`` just checked (complete here,
        clean in this site's opinion: :meth:`Promotion._check_restore_point`). In memory only: a
        crash before the takeover wrote its record loses nothing (no write was acknowledged
        yet), the takeover after the restart is then an ordinary one. ``requested_at_ns``: when
        the promote request arrived (the instant recovery's timings count from it)."""
        self._requests[volume] = (seq, requested_at_ns)
        self._checked[volume] = (seq, manifest, time.monotonic())
        st = self._states.get(volume)
        if st is not None and st.phase == "done":
            del self._states[volume]

    def pending(self, volume: str, view: dict) -> int | None:
        """The snapshot seq of ``volume``'s instant recovery this site left pending that its next
        takeover would continue (:func:`continuable` under the applied Raft state ``view``), None
        when there is none or the record cannot be read (the takeover names that one). A plain
        ``promote --force`` of this site continues it (:meth:`Promotion.promote`): the forced
        promotion then says ``instant`` on that snapshot, so the state holds the volume for this
        site again until its first commit (:func:`replicad.core.state.instant_recovery`).
        Blocking (reads the record: a worker thread)."""
        try:
            rec = self._read_record(volume)
        except ReplicadError:
            return None
        if rec is None:
            return None
        return continuable(rec, (self._dir(volume) / "overlay").is_dir(), view, volume, self.site_id)

    def withdraw(self, volume: str) -> None:
        """The promotion was not proposed (refused, lost quorum): forget the request."""
        self._requests.pop(volume, None)
        self._checked.pop(volume, None)

    def checked(self, volume: str, seq: int, vs: dict) -> Manifest | None:
        """The manifest ``promote --instant`` checked for ``volume#seq`` within the last
        :data:`CHECKED_FRESH_S` if it is still the root Raft committed for ``seq`` (the
        takeover then skips the second walk over every block digest, which costs seconds for a
        large volume before the first read), else None. Used once."""
        got = self._checked.pop(volume, None)
        snap = vs["snapshots"].get(seq)
        if got is None or snap is None or got[0] != seq or got[1].root != snap["root"] \
                or time.monotonic() - got[2] > CHECKED_FRESH_S:
            return None
        return got[1]

    def state(self, volume: str) -> dict | None:
        """:meth:`InstantState.to_dict` of ``volume``'s instant recovery (the last one, also when
        done), None if there was none since this site started."""
        st = self._states.get(volume)
        return st.to_dict() if st is not None else None

    def states(self) -> dict[str, dict]:
        """``{volume: state}`` for every volume with an instant recovery (``GET /v1/instant``)."""
        return {v: st.to_dict() for v, st in sorted(self._states.items())}

    async def wait_serving(self, volume: str) -> InstantState:
        """Wait until ``volume``'s instant export serves (the takeover reached it); returns its state."""
        while True:
            st = self._states.get(volume)
            if st is not None and st.serving.is_set():
                return st
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ durable record
    def _dir(self, volume: str) -> Path:
        return self.root / volume

    def _read_record(self, volume: str) -> dict | None:
        p = self._dir(volume) / RECORD
        try:
            rec = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise IntegrityError(f"the instant-recovery record {p} cannot be read ({err}): it is kept; move it "
                                 "aside to go on without it (the overlay beside it holds the application's writes)",
                                 path=str(p)) from None
        if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION or rec.get("phase") not in PHASES:
            raise IntegrityError(f"the instant-recovery record {p} is not one this version knows", path=str(p))
        return rec

    def _write_record(self, st: InstantState) -> None:
        """Persist ``st``'s record (tmp + fsync + rename + directory fsync). Raises typed OSError."""
        d = st.dir
        rec = {"version": RECORD_VERSION, "volume": st.volume, "epoch": st.epoch, "seq": st.seq,
               "root": st.root.hex(), "phase": st.phase, "requested_at_ns": st.requested_at_ns,
               "size_bytes": st.size_bytes, "block_size": st.block_size}
        tmp = d / (RECORD + ".tmp")
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            fsync_dir(d.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(rec).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, d / RECORD)
            fsync_dir(d)
        except OSError as err:
            raise from_os_error(err, f"write the instant-recovery record in {d}", path=str(d)) from None

    def _set_phase(self, st: InstantState, phase: str) -> None:
        st.phase = phase
        self._write_record(st)
        self.metrics.instant_phase(st.volume, phase)

    # ------------------------------------------------------------------ the takeover's steps
    def wanted(self, volume: str, epoch: int, seq: int, root: bytes) -> bool:
        """Whether the takeover of ``volume`` at ``epoch`` restoring ``seq`` (``root``) is an
        instant one: a record of this epoch and snapshot exists (a restart during one), or
        ``promote --instant`` asked for this snapshot, or a record of an earlier epoch of this
        snapshot that this takeover continues (:meth:`_reattach`: rewritten with ``epoch``). Any
        other record is set aside (logged at ERROR), or removed if it says ``done`` and its
        overlay is gone (nothing pending). Raises IntegrityError for an unreadable record, a
        typed OSError when it cannot be rewritten or set aside."""
        rec = self._read_record(volume)
        if rec is not None:
            if rec["epoch"] == epoch and rec["seq"] == seq and rec["root"] == root.hex():
                return True
            if self._reattach(volume, rec, epoch, seq, root):
                return True
            if rec["phase"] == "done" and not (self._dir(volume) / "overlay").is_dir():
                # switched over, then a crash before the record's removal: nothing pending (an
                # overlay still beside it is set aside below, never deleted)
                log.info("volume %s: removing the finished instant-recovery record of epoch %s", volume, rec["epoch"])
                try:
                    shutil.rmtree(self._dir(volume))
                    fsync_dir(self.root)
                except OSError as err:
                    raise from_os_error(err, f"remove the finished instant-recovery record of {volume}",
                                        path=str(self._dir(volume))) from None
                req = self._requests.get(volume)
                return req is not None and req[0] == seq
            aside = self.root / f"{volume}.stale-{rec['epoch']}-{rec['seq']}"
            n = 1
            while aside.exists():  # never onto an earlier one (set aside twice at the same epoch and seq)
                n += 1
                aside = self.root / f"{volume}.stale-{rec['epoch']}-{rec['seq']}.{n}"
            log.error("volume %s: the instant-recovery record of epoch %s, #%s (%s) does not match this takeover "
                      "(epoch %d, #%d): set aside as %s, not applied (its overlay holds writes made to a takeover "
                      "that no longer stands)", volume, rec["epoch"], rec["seq"], rec["phase"], epoch, seq, aside)
            try:
                os.replace(self._dir(volume), aside)
                fsync_dir(self.root)
            except OSError as err:
                raise from_os_error(err, f"set the instant-recovery record of {volume} aside",
                                    path=str(self._dir(volume))) from None
        req = self._requests.get(volume)
        return req is not None and req[0] == seq

    def _reattach(self, volume: str, rec: dict, epoch: int, seq: int, root: bytes) -> bool:
        """The record of an earlier epoch's takeover (``rec``) at this site's takeover of
        ``volume`` at ``epoch`` restoring ``seq`` (``root``): re-attach it under ``epoch`` when
        its writes still continue the history the cluster agreed — the same snapshot, still
        pending (or ``done`` with its overlay still beside it: a fence in the moment between the
        switch-over and the durable acting epoch), and no other site primary at any epoch
        between the record's and this one (:func:`primaries_between`: the Raft state's role
        results; an epoch it no longer records counts as another site's). The record is
        rewritten with ``epoch`` (tmp + fsync + rename + directory fsync) before this returns
        True, so a crash now finds a record of this takeover. Returns False when it must be set
        aside (logged at ERROR with why). Raises typed OSError from the record's write."""
        if rec["seq"] != seq or rec["root"] != root.hex() or not is_int(rec["epoch"]) or rec["epoch"] >= epoch:
            return False
        d = self._dir(volume)
        if rec["phase"] == "done" and not (d / "overlay").is_dir():
            return False  # switched over and the overlay already removed: nothing pending
        view = self.exports.cluster.view()
        between = primaries_between(view, volume, rec["epoch"], epoch)
        others = {e: p for e, p in between.items() if p not in (None, self.site_id)}
        if others:
            log.error("volume %s: the instant-recovery record of epoch %s (#%s) cannot continue at epoch %d: %s; its "
                      "overlay holds writes of a branch the cluster left", volume, rec["epoch"], seq, epoch,
                      "; ".join(f"epoch {e}: " + (f"{p} was primary" if p is not MISSING else
                                                 "the cluster state no longer says who was primary")
                                for e, p in sorted(others.items())))
            return False
        st = InstantState(volume, epoch, seq, root, d, "switching" if rec["phase"] == "done" else rec["phase"],
                          rec.get("requested_at_ns") if is_int(rec.get("requested_at_ns")) else time.time_ns(),
                          size_bytes=rec.get("size_bytes") or 0, block_size=rec.get("block_size") or 0)
        self._write_record(st)
        log.warning("AUDIT volume %s: this takeover (epoch %d, #%d) continues the instant recovery of epoch %s at %s: "
                    "same snapshot, and no other site was primary in between (epochs %s: %s); its overlay (the "
                    "application's flushed writes) is re-attached, not set aside", volume, epoch, seq, rec["epoch"],
                    self.site_id, f"{rec['epoch'] + 1}..{epoch - 1}" if epoch - rec["epoch"] > 1 else "none",
                    ", ".join(f"{e}: {p or 'no primary'}" for e, p in sorted(between.items())) or "-")
        return True

    async def serve(self, volume: str, epoch: int, seq: int, manifest: Manifest, image: Path) -> InstantState:
        """Serve ``volume#seq`` writable now (the takeover of ``epoch``, :meth:`wanted` said
        yes): write the record (or re-attach the one a previous run left), open the export
        on its overlay — or, for a record in ``done`` (a crash after the switch-over), on the
        volume's ``image``. Idempotent (a takeover retried after a failure reuses the export).
        Returns the state; raises what the record, :meth:`Exports.open_instant` and
        :meth:`Exports.open_instant_image` raise."""
        st = self._states.get(volume)
        if st is not None and st.epoch == epoch and st.seq == seq and st.export is not None \
                and st.phase != "done":
            return st
        rec = await asyncio.to_thread(self._read_record, volume)
        req = self._requests.pop(volume, None)
        if rec is not None:
            st = InstantState(volume, epoch, seq, manifest.root, self._dir(volume), rec["phase"], time.time_ns(),
                              resumed=True)
            log.warning("volume %s: re-attaching the instant recovery of #%d at epoch %d left in phase %s by the "
                        "previous run of %s", volume, seq, epoch, rec["phase"], self.site_id)
        else:
            st = InstantState(volume, epoch, seq, manifest.root, self._dir(volume), "serving",
                              req[1] if req else time.time_ns())
        st.size_bytes, st.block_size = manifest.size_bytes, manifest.block_size
        if rec is None:
            await asyncio.to_thread(self._write_record, st)  # durable before the export takes a write
        self._states[volume] = st
        self.metrics.instant_phase(volume, st.phase)
        if st.phase == "done":  # the image holds everything: serve it, nothing from the overlay
            st.export = await self.exports.open_instant_image(volume, epoch, seq, manifest.root, image,
                                                              size_bytes=st.size_bytes, block_size=st.block_size)
            st.serving_at_ns = time.time_ns()
            self._start_watch(st)
            st.serving.set()
            return st

        def first_read(ns: int) -> None:
            st.first_read_ns = ns
            self.metrics.instant_first_read(volume, (ns - st.requested_at_ns) / 1e9)
            log.info("volume %s: instant recovery served its first read %.3fs after %s", volume,
                     (ns - st.requested_at_ns) / 1e9, "the re-attach" if st.resumed else "the promote request")

        st.export = await self.exports.open_instant(volume, epoch, seq, manifest, st.dir / "overlay",
                                                    reopen=rec is not None and (st.dir / "overlay").is_dir(),
                                                    on_first_read=first_read)
        st.serving_at_ns = time.time_ns()
        st.copy_total_blocks = manifest.n_blocks
        self._start_watch(st)
        if st.phase == "serving":
            await asyncio.to_thread(self._set_phase, st, "copying")
        st.serving.set()
        log.warning("AUDIT volume %s: instant recovery of #%d at %s serving on %s (%.3fs after %s); the image is "
                    "written in the background, the application's writes go to the overlay until the switch-over",
                    volume, seq, self.site_id, st.export.socket, (st.serving_at_ns - st.requested_at_ns) / 1e9,
                    "the re-attach" if st.resumed else "the promote request")
        return st

    def _start_watch(self, st: InstantState) -> None:
        task = asyncio.create_task(self._watch(st), name=f"instant-watch:{st.volume}")
        if self.background is not None:
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def resume(self, volumes: dict[str, tuple[int | None, Path]]) -> None:
        """At the site's start (before the volume loops): serve again, on the instant socket,
        every volume whose record says ``done`` (switched over, not released) at the epoch the
        site acts at (``volumes``: ``{volume: (acting epoch from the catalog, image path)}``).
        Records of other phases or of a site not acting yet are the takeover's
        (:meth:`wanted`). Failures are logged at ERROR (the site starts; the application's
        client cannot reconnect until it is fixed and the site restarted). Raises nothing."""
        for volume, (acting, image) in sorted(volumes.items()):
            try:
                rec = await asyncio.to_thread(self._read_record, volume)
            except ReplicadError as err:
                log.error("volume %s: %s", volume, err)
                continue
            if rec is None or rec["phase"] != "done" or acting is None or rec["epoch"] != acting:
                continue
            if not rec.get("size_bytes") or not rec.get("block_size"):
                log.error("volume %s: the instant-recovery record of epoch %s names no size (written by an older "
                          "version): the export is not served again; replicad export --close cannot release it, "
                          "remove %s once the application is off it", volume, rec["epoch"], self._dir(volume))
                continue
            st = InstantState(volume, rec["epoch"], rec["seq"], bytes.fromhex(rec["root"]), self._dir(volume), "done",
                              time.time_ns(), resumed=True, size_bytes=rec["size_bytes"], block_size=rec["block_size"])
            try:
                st.export = await self.exports.open_instant_image(volume, st.epoch, st.seq, st.root, image,
                                                                  size_bytes=st.size_bytes, block_size=st.block_size)
            except ReplicadError as err:
                log.error("volume %s: the instant export cannot be served again after the restart: %s %s", volume,
                          err, err.evidence)
                continue
            st.serving_at_ns = time.time_ns()
            self._states[volume] = st
            self.metrics.instant_phase(volume, "done")
            self.metrics.instant_progress(volume, 1.0)
            self._start_watch(st)
            st.serving.set()
            log.warning("AUDIT volume %s: the instant export (recovery from #%d at epoch %d, switched over) is "
                        "served again at %s on %s: the volume's image itself, until released (replicad export "
                        "--close instant-%s)", volume, st.seq, st.epoch, self.site_id, st.export.socket, volume)

    def released(self, volume: str) -> None:
        """The operator closed ``volume``'s instant export after its switch-over
        (:attr:`Exports.on_instant_released`, worker thread): remove its record, so that it is
        not served again. Errors logged (the export would be served again at the next start)."""
        st = self._states.get(volume)
        if st is not None and st.phase == "done":
            st.export = None
            st.phase = "released"  # in memory: the record goes below
        d = self._dir(volume)
        rec = None
        try:
            rec = self._read_record(volume)
        except ReplicadError as err:
            log.error("volume %s: %s", volume, err)
            return
        if rec is None or rec["phase"] != "done":
            return  # nothing recorded, or a recovery still pending (the export refused to close)
        try:
            shutil.rmtree(d)
            fsync_dir(self.root)
        except OSError as err:
            log.error("volume %s: cannot remove the instant-recovery record %s (the export is served again at the "
                      "next start): %s", volume, d, err)
            return
        log.warning("AUDIT volume %s: the instant export is released at %s: no longer served (the application "
                    "runs on the volume's image)", volume, self.site_id)

    def progress(self, st: InstantState) -> Callable[[int, int], None]:
        """The restore's ``progress(done_blocks, total_blocks)`` for ``st`` (thread-safe enough:
        two ints and a gauge)."""
        def cb(done: int, total: int) -> None:
            st.copy_done_blocks, st.copy_total_blocks = done, total
            self.metrics.instant_progress(st.volume, done / total if total else 1.0)
        return cb

    async def switch_over(self, st: InstantState, image: Path) -> int:
        """The image holds the snapshot, verified (O5): copy the overlay into it and serve the
        image from now on. Under the export's write gate (writes wait, reads go on): record
        ``switching``; flush the overlay; copy each run of written blocks into ``image``; fsync;
        read the copied blocks back and compare; the export switches to the image; record
        ``done``. Returns the number of blocks copied.

        Raises RestoreVerifyError (a copied block reads back different: the export keeps serving
        the overlay, the takeover fails and is retried), a typed OSError."""
        exp = st.export
        if exp is None or exp.overlay is None or exp.gate is None:
            raise UsageError(f"volume {st.volume}: no instant export to switch over", volume=st.volume)
        st.copy_done_at_ns = time.time_ns()
        t0 = time.monotonic()
        async with exp.gate:
            await asyncio.to_thread(self._set_phase, st, "switching")
            fd, copied = await asyncio.to_thread(self._merge, st, exp, image)
            exp.image_fd = fd  # every request from now on: the image
            st.overlay_blocks = copied
            st.switched_at_ns = time.time_ns()
            await asyncio.to_thread(self._set_phase, st, "done")
        log.warning("AUDIT volume %s: instant recovery switched over at %s: %d overlay blocks written into %s "
                    "(fsynced, read back) in %.3fs; the export serves the image itself from now on", st.volume,
                    self.site_id, copied, image, time.monotonic() - t0)
        return copied

    def _merge(self, st: InstantState, exp: Export, image: Path) -> tuple[int, int]:
        """Copy the overlay's blocks into ``image`` (worker thread, under the gate): returns
        ``(an O_RDWR fd of the image, blocks copied)``."""
        ov = exp.overlay
        assert ov is not None
        ov.flush()
        bs = ov.bs
        size = ov.base.size_bytes
        runs = ov.written_runs()
        try:
            fd = os.open(image, os.O_RDWR)
        except OSError as err:
            raise from_os_error(err, f"open the volume image {image}", path=str(image)) from None
        try:
            pieces = [(first + k, min(MERGE_CHUNK_BLOCKS, n - k)) for first, n in runs
                      for k in range(0, n, MERGE_CHUNK_BLOCKS)]
            for first, n in pieces:
                lo, hi = first * bs, min((first + n) * bs, size)
                data = os.pread(ov.fd, hi - lo, lo)
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, data[done:], lo + done)
            os.fsync(fd)
            for first, n in pieces:  # read back what was written: the image, not a cache's promise
                lo, hi = first * bs, min((first + n) * bs, size)
                if os.pread(fd, hi - lo, lo) != os.pread(ov.fd, hi - lo, lo):
                    raise RestoreVerifyError(f"volume {st.volume}: overlay block {first}.. reads back different from "
                                             f"{image} after the switch-over's write", volume=st.volume,
                                             first_block=first, path=str(image))
        except OSError as err:
            os.close(fd)
            raise from_os_error(err, f"copy the instant-recovery overlay into {image}", path=str(image)) from None
        except BaseException:
            os.close(fd)
            raise
        return fd, sum(n for _, n in runs)

    async def finish(self, st: InstantState) -> None:
        """The acting epoch is durable: remove the overlay (the image holds everything). The
        record stays in ``done``: the export keeps serving the image, also after a restart
        (:meth:`resume`), until the operator releases it (:meth:`released`). Errors are logged (a
        leftover overlay is removed at the next finish or release)."""
        exp = st.export
        if exp is not None and exp.overlay is not None:
            exp.overlay.close()
            exp.overlay = None

        def remove() -> None:
            try:
                shutil.rmtree(st.dir / "overlay", ignore_errors=False) if (st.dir / "overlay").exists() else None
                fsync_dir(st.dir)
            except OSError as err:
                log.error("volume %s: cannot remove the applied instant-recovery overlay %s: %s", st.volume,
                          st.dir / "overlay", err)
        await asyncio.to_thread(remove)
        log.info("volume %s: instant recovery finished at %s: the export keeps serving the image on %s (also after "
                 "a restart) until released: move the application to the image, then replicad export --close "
                 "instant-%s", st.volume, self.site_id, exp.socket if exp is not None else "-", st.volume)
        self.metrics.instant_phase(st.volume, "done")
        self.metrics.instant_progress(st.volume, 1.0)

    async def _watch(self, st: InstantState) -> None:
        """While the instant export is open: once Raft shows a newer epoch than the takeover's,
        or another primary at its epoch (a forced promotion elsewhere while this site's copy was
        still failing, when the volume loop does not fence: this site never acted at that epoch;
        or while this site was down after its switch-over), stop serving (:meth:`fenced`). A
        stale view only shows older epochs (as at a start, before Raft caught up): never a false
        fence."""
        cluster = self.exports.cluster
        while self._states.get(st.volume) is st and st.export is not None \
                and self.exports.is_open(st.export.export_id):
            vs = cluster.volume_state(st.volume)
            if vs is not None and (vs["epoch"] > st.epoch or (vs["epoch"] == st.epoch
                                                               and vs["primary"] != self.site_id)):
                await self.fenced(st.volume)
                return
            await asyncio.sleep(WATCH_S)

    async def fenced(self, volume: str) -> None:
        """This site was fenced for ``volume`` (another site holds a newer epoch): the instant
        export stops serving at once (the application must not write to a volume this site no
        longer owns). Before the switch-over (or after it while the overlay is still beside the
        record) its overlay stays on disk with its record: a later takeover continues it
        (:meth:`_reattach`) or sets it aside, never deletes it; logged at ERROR. Raises nothing."""
        st = self._states.get(volume)
        if st is None or st.export is None or st.export.export_id not in {e["export_id"] for e in self.exports.list()}:
            return
        # switched over but the overlay not yet removed (the acting epoch was not durable yet: no
        # divergent snapshot will keep the image): the overlay stays, as before the switch-over
        pending = st.phase != "done" or (st.dir / "overlay").is_dir()
        was = st.phase
        try:
            await self.exports.close(st.export.export_id, "the site was fenced", force=True)
        except ReplicadError as err:
            log.error("volume %s: closing the instant export after a fence: %s", volume, err)
        if pending:
            st.phase = "fenced"  # in memory only (once closed): the record keeps its phase and epoch
            self.metrics.instant_phase(volume, "fenced")
        else:  # switched over: nothing pending; the export must not come back at the next start
            def remove() -> None:
                try:
                    shutil.rmtree(st.dir, ignore_errors=False) if st.dir.exists() else None
                    fsync_dir(self.root)
                except OSError as err:
                    log.error("volume %s: cannot remove the instant-recovery record %s: %s", volume, st.dir, err)
            await asyncio.to_thread(remove)
        (log.error if pending else log.warning)(
            "volume %s: fenced at %s during its instant recovery (phase %s): the export is closed%s", volume,
            self.site_id, was, f"; the application's writes stay in {st.dir / 'overlay'} (not applied until "
            "this site takes the volume over again from the same snapshot, no other site primary meanwhile)"
            if pending else "")

    def failed(self, volume: str, err: Exception) -> None:
        """The takeover failed during an instant recovery (it is retried): kept for the status."""
        st = self._states.get(volume)
        if st is not None:
            st.last_error = str(err)
