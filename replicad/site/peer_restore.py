"""Restoring an image straight from the holders of a snapshot: every holder at once, several
fetch streams each, the decoding and the writes overlapped with the transfers.

Used by :class:`~replicad.site.recovery.Recovery` when a restore into a new file needs chunks
this site does not hold (its store was lost, or it never held the snapshot). The chunks go from
the network to the image without passing through the local chunk store (which would write
them twice and read them back); the chunks the store does hold are read from it.

How (see ARCHITECTURE.md, "Restore from peers"):

* The snapshot is cut into units (:func:`replicad.storage.assemble.plan_units`: up to 8 MiB of
  consecutive blocks, all-zero units left out: holes). Units wait in one queue in block order.
* Every holder gets STREAMS_PER_HOLDER streams. A stream takes the first unit it may serve,
  asks its holder for the unit's missing chunks (one ``/v1/peer/fetch``), and hands each piece
  that arrives to a worker thread that decodes (lz4), checks the digest (BLAKE3) and copies it
  into the unit's buffer (:meth:`~replicad.storage.assemble.ImageAssembler.place`) while the
  next piece is received. A complete unit is written (O_DIRECT) by another worker thread while
  the stream goes on with the next unit. Faster holders take more units: the split follows the
  holders' speed.
* Memory is bounded by RESTORE_WINDOW_BYTES: a unit takes one of ``window // UNIT_BYTES``
  buffers before its first chunk is asked for and gives it back once written (plus, per unit
  being written, one read-back buffer of the same size).
* End game: once a stream finds no queued unit it may take, it takes over a unit in flight at
  another holder for HEDGE_FACTOR times longer than its own holder's units took (the median):
  that fetch is cut (the chunks it placed stay), the slow holder is not given that unit again
  while another holder is left, and the unit goes to the head of the queue. A holder that keeps
  just above the progress rule (1 MiB per 10 s: 80 s for an 8 MiB unit) cannot hold the last
  units up (BitTorrent's end game, Cohen 2003, as :meth:`replicad.site.pull.Pull._fetch_parallel`).
* A holder that answers PeerBusyError (it serves as many fetches as it allows) is asked again
  after FETCH_BUSY_RETRY_S, its unit back at the head of the queue for the other holders
  meanwhile; FETCH_BUSY_RETRIES such answers in a row count as a failure.
* A holder that fails (unreachable, cut mid-stream, an error, a chunk that does not match its
  digest) is dropped for the rest of the restore: its unit goes back to the head of the queue,
  keeping the chunks already placed, and the other holders' streams take it. A holder that
  answers without some chunk is not asked for that unit again. With no holder left for a unit
  the restore fails: NotFoundError if every holder answered without a chunk,
  PeerUnavailableError if none could be reached.
* O5: every chunk is checked against its digest before it is written; each unit, once
  written, is read back from the disk (O_DIRECT) and compared with the verified buffer (no
  second hash), and at the end the image is fsynced once, its other blocks proven zero and the
  root rebuilt (:meth:`~replicad.storage.assemble.ImageAssembler.finish`): what
  ``verify_image`` proves (the disk returns the snapshot's bytes; the image is durable before
  the restore counts as done), without a second pass over the image.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from replicad.core.errors import (IntegrityError, NotFoundError, PeerBusyError, PeerUnavailableError,
                                  RemoteProtocolError, ReplicadError)
from replicad.core.manifest import Manifest
from replicad.peer.transport import FETCH_BUSY_RETRIES, FETCH_BUSY_RETRY_S, PeerClient
from replicad.storage.assemble import UNIT_BYTES, ImageAssembler, Unit, plan_units
from replicad.storage.chunkstore import CODEC_RAW, ChunkStore

log = logging.getLogger("replicad.site.peer_restore")

RESTORE_WINDOW_BYTES = 64 * 2**20  # decoded bytes of the units in flight (fetching, decoding, writing): 8 of 8 MiB
STREAMS_PER_HOLDER = 2             # concurrent /v1/peer/fetch streams to each holder
PLACE_BATCH_BYTES = 4 * 2**20      # received payload bytes handed to a worker thread together (the last batch: less)
HEDGE_FACTOR = 3.0                 # a unit in flight this many times longer than a holder's own units took is taken over
HEDGE_POLL_S = 0.2                 # how often an idle stream looks for such a unit


@dataclass
class HolderReport:
    """What one holder supplied to a restore: ``chunks`` and payload ``bytes`` (compressed, as
    sent), ``failed``: why it was dropped (None if it served to the end), ``taken_over``: units
    it was fetching that a faster holder's stream took over (the end game)."""

    chunks: int = 0
    bytes: int = 0
    failed: str | None = None
    taken_over: int = 0  # units of its taken over by a faster holder's stream (the end game)


@dataclass
class PeerRestoreReport:
    """Outcome of :func:`restore_from_holders`: blocks / bytes written, chunks read from the local
    store, per holder what it supplied, units planned, seconds spent."""

    blocks_total: int
    blocks_written: int
    bytes_written: int
    local_chunks: int
    holders: dict[str, HolderReport] = field(default_factory=dict)
    units: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready form (the restore's answer, ``peers``)."""
        return {"local_chunks": self.local_chunks, "units": self.units,
                "holders": {h: {"chunks": r.chunks, "bytes": r.bytes, "failed": r.failed, "taken_over": r.taken_over}
                            for h, r in self.holders.items()}}


class _Run:
    """The shared state of one restore's streams (event loop only: no locks needed)."""

    def __init__(self, units: list[Unit], slots: int, holders: Iterable[str] = ()) -> None:
        self.holders = list(holders)
        self.queue: collections.deque[Unit] = collections.deque(units)
        self.bufs: dict[int, memoryview] = {}            # unit ordinal -> its buffer (holds a slot)
        self.free: list[memoryview] = []                 # buffers given back, reused
        self.free_slots = slots
        self.changed = asyncio.Condition()
        self.remaining = len(units)                      # units not yet written
        self.busy = 0                                    # streams working on a unit
        self.writing = 0                                 # unit writes in flight
        self.dead: set[str] = set()
        self.error: BaseException | None = None
        self.tasks: set[asyncio.Task] = set()
        self.local_checked: set[int] = set()             # units whose local chunks were placed
        self.inflight: dict[int, tuple[str, float, asyncio.Future]] = {}  # unit -> (holder, started, its fetch)
        self.avoid: dict[int, set[str]] = {}             # unit -> holders it was taken over from
        self.took: dict[str, list[float]] = {}           # holder -> seconds each unit it fetched took

    def may_serve(self, holder: str, unit: Unit) -> bool:
        """``holder`` did not answer without some of ``unit``'s chunks, and the unit was not taken
        over from it (unless every holder still in the restore was)."""
        if holder in unit.lacking_at:
            return False
        avoided = self.avoid.get(unit.ordinal)
        if not avoided or holder not in avoided:
            return True
        return not any(h not in avoided and h not in self.dead for h in self.holders)

    def take(self, holder: str, new_buffer: memoryview | None) -> Unit | None:
        """The first queued unit ``holder`` may serve that has a buffer already; else, if a slot
        is free, the first one it may serve (given a buffer: ``new_buffer()``)."""
        for unit in self.queue:
            if self.may_serve(holder, unit) and unit.ordinal in self.bufs:
                self.queue.remove(unit)
                return unit
        if self.free_slots <= 0:
            return None
        for unit in self.queue:
            if self.may_serve(holder, unit):
                self.queue.remove(unit)
                self.free_slots -= 1
                self.bufs[unit.ordinal] = self.free.pop() if self.free else new_buffer()
                return unit
        return None

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def late(self, holder: str, now: float) -> tuple[int, str, float] | None:
        """The end game: ``(unit, other holder, seconds in flight)`` of the unit fetched longest
        at another holder, if that is more than HEDGE_FACTOR times the median time ``holder``'s
        own units took (None before it fetched one, or when nothing is that late)."""
        mine = self.took.get(holder)
        if not mine:
            return None
        limit = HEDGE_FACTOR * statistics.median(mine)
        late = [(now - t0, o, h) for o, (h, t0, _) in self.inflight.items()
                if h != holder and holder not in self.avoid.get(o, ()) and now - t0 > limit]
        if not late:
            return None
        secs, o, h = max(late)
        return o, h, secs


async def restore_from_holders(peers: PeerClient, holders: dict[str, str], volume: str, epoch: int,
                               manifest: Manifest, store: ChunkStore, target: Path, *,
                               progress: Callable[[int, int], None] | None = None,
                               window_bytes: int = RESTORE_WINDOW_BYTES,
                               streams_per_holder: int = STREAMS_PER_HOLDER, direct: bool = True,
                               plan: tuple[list[Unit], int] | None = None) -> PeerRestoreReport:
    """Write snapshot ``manifest`` of ``volume`` into the new, empty file ``target``, taking each
    chunk from ``store`` where it is there and intact, else from ``holders`` (site id → peer
    URL), all of them at once; then fsync and prove it (O5: every block read back from the
    disk after its write and compared, one fsync at the end, the root rebuilt; see the module
    docstring).

    Args:
        epoch: the volume's epoch (sent with the fetch requests).
        store: this site's chunk store; it must hold the manifest's pages (its block chunks
            may be missing). Nothing is stored into it.
        progress: ``progress(done_blocks, total_blocks)`` as units are written.
        window_bytes: decoded bytes in flight at most (RESTORE_WINDOW_BYTES; at least one unit).
        streams_per_holder: concurrent fetch streams per holder (STREAMS_PER_HOLDER).
        direct: write with O_DIRECT where the file system allows it.
        plan: ``plan_units(manifest, store.get)`` already made by the caller (it read the pages
            once to find what is missing here: :meth:`~replicad.site.pull.Pull.ensure_pages`),
            fresh (units are consumed by the restore); None: made here.
    Returns:
        :class:`PeerRestoreReport`.
    Raises:
        NotFoundError: a chunk neither here nor at any holder that answered.
        PeerUnavailableError: chunks still needed and every holder failed.
        TargetFullError / UsageError: the target (:class:`~replicad.storage.assemble.ImageAssembler`).
        RestoreVerifyError: the image read back does not match the snapshot (O5).
        InternalError: a unit was never written (a bug).
    """
    t0 = time.monotonic()
    units, zero_blocks = plan if plan is not None else await asyncio.to_thread(plan_units, manifest, store.get)
    total = manifest.n_blocks
    report = PeerRestoreReport(total, 0, 0, 0, {h: HolderReport() for h in holders}, len(units))
    done = zero_blocks
    if units and not holders:
        wanted = await asyncio.to_thread(lambda: store.missing(list(set().union(*(u.distinct() for u in units)))))
        if wanted:
            raise NotFoundError(f"{len(wanted)} chunks of {volume}#{manifest.seq} are not here and no holder was "
                                "given", volume=volume, seq=manifest.seq, missing=len(wanted))
    assembler = await asyncio.to_thread(ImageAssembler, target, manifest, direct=direct)
    run = _Run(units, max(1, window_bytes // UNIT_BYTES), holders)
    try:
        if progress is not None:
            progress(done, total)

        async def write(unit: Unit) -> None:
            nonlocal done
            buf = run.bufs[unit.ordinal]
            try:
                await asyncio.to_thread(assembler.write, unit, buf)
                done += unit.n_blocks
                if progress is not None:
                    progress(done, total)
            except BaseException as err:
                run.error = run.error or err
                if not isinstance(err, Exception):
                    raise
            finally:
                del run.bufs[unit.ordinal]
                run.free.append(buf)
                run.free_slots += 1
                run.remaining -= 1
                run.writing -= 1
                await run.notify()

        def complete(unit: Unit) -> None:
            run.writing += 1
            task = asyncio.ensure_future(write(unit))
            run.tasks.add(task)
            task.add_done_callback(run.tasks.discard)

        async def place_local(unit: Unit) -> None:
            """Place the unit's chunks this store holds intact (a worker thread). A failure of this
            store itself (not of a chunk in it) propagates: the unit stays unchecked."""

            def read() -> int:
                wanted = list(unit.pending)
                absent = set(store.missing(wanted))
                frames = []
                for d in wanted:
                    if d in absent:
                        continue
                    try:
                        frames.append((d, CODEC_RAW, store.get(d)))
                    except (IntegrityError, NotFoundError):  # corrupt or gone here: a holder supplies it
                        continue
                assembler.place(unit, run.bufs[unit.ordinal], frames)
                return len(frames)

            report.local_chunks += await asyncio.to_thread(read)
            run.local_checked.add(unit.ordinal)

        async def fetch_into(url: str, unit: Unit, rep: HolderReport) -> None:
            """Ask a holder for ``unit``'s pending chunks; what is received is placed in a worker
            thread while more is received, in batches of PLACE_BATCH_BYTES (the rest once the
            answer ends): one placing in flight; a batch complete while the one before is still
            being placed waits for it. A network piece is ~256 KiB: one hand-off per piece, or per
            whatever arrived while the last placing ran (~2000 per GiB), cost the restoring process
            ~10 % more CPU than two per 8 MiB unit (a worker woken, its result handed back to the
            event loop) for no gain in overlap. A frame that is not its digest's chunk
            (IntegrityError, RemoteProtocolError from the assembler) is reported against the
            holder (PeerClient.holder_fault: warned, counted, asked last)."""
            buf = run.bufs[unit.ordinal]

            async def place(frames: list) -> None:
                try:
                    await asyncio.to_thread(assembler.place, unit, buf, frames)
                except (IntegrityError, RemoteProtocolError) as err:
                    peers.holder_fault(url, err)
                    raise

            # a placing runs to its end even when this fetch is cut (taken over, cancelled): the
            # unit's buffer and pending set are never written by two threads at once
            placing: asyncio.Future | None = None
            waiting: list = []
            waiting_bytes = 0
            stream = peers.fetch_frames(url, volume, epoch, sorted(unit.pending), views=True)
            try:
                async for frames in stream:
                    n = sum(len(f[2]) for f in frames)
                    rep.chunks += len(frames)
                    rep.bytes += n
                    waiting.extend(frames)
                    waiting_bytes += n
                    if waiting_bytes < PLACE_BATCH_BYTES:
                        continue
                    if placing is not None:
                        await asyncio.shield(placing)
                        placing = None
                    placing = asyncio.ensure_future(place(waiting))
                    waiting, waiting_bytes = [], 0
                if placing is not None:
                    await asyncio.shield(placing)
                    placing = None
                if waiting:
                    placing, waiting = asyncio.ensure_future(place(waiting)), []
                    await asyncio.shield(placing)
                    placing = None
            finally:
                await stream.aclose()  # cut here: the answer's connection is released now
                # the stream broke or was cut: what was received is still placed, one placing at a
                # time (asyncio.wait: a wait that is itself cut does not cut the placing)
                for last in ([placing] if placing is not None else []) + ([place(waiting)] if waiting else []):
                    fut = asyncio.ensure_future(last)
                    await asyncio.wait({fut})
                    if not fut.cancelled():
                        fut.exception()  # retrieved: the stream's own error is the one raised

        async def stream(holder: str, url: str) -> None:
            rep = report.holders[holder]
            busy = 0  # PeerBusyError answers in a row (the holder serves its limit of fetches): asked again later
            while True:
                if run.error is not None or holder in run.dead or run.remaining == 0:
                    return
                unit = run.take(holder, assembler.buffer)
                if unit is None:
                    late = run.late(holder, time.monotonic())
                    if late is not None:  # the end game: cut the slow holder's fetch of that unit
                        o, other, secs = late
                        _, _, fetch = run.inflight.pop(o)
                        run.avoid.setdefault(o, set()).add(other)
                        report.holders[other].taken_over += 1
                        log.info("restore of %s#%d: unit %d at %s for %.1fs (%s's units took %.1fs): taken over by %s",
                                 volume, manifest.seq, o, other, secs, holder, statistics.median(run.took[holder]),
                                 holder)
                        fetch.cancel()  # its stream puts the unit back at the head of the queue
                        continue
                    async with run.changed:
                        if run.busy == 0 and run.writing == 0:  # nothing can change any more
                            run.changed.notify_all()
                            return
                        if run.took.get(holder) and any(h != holder for h, _, _ in run.inflight.values()):
                            with contextlib.suppress(TimeoutError):  # look for a late unit again soon
                                async with asyncio.timeout(HEDGE_POLL_S):
                                    await run.changed.wait()
                        else:
                            await run.changed.wait()
                    continue
                run.busy += 1
                try:
                    if unit.ordinal not in run.local_checked:
                        await place_local(unit)
                    if unit.pending:
                        t_fetch = time.monotonic()
                        fetch = asyncio.ensure_future(fetch_into(url, unit, rep))
                        run.inflight[unit.ordinal] = (holder, t_fetch, fetch)
                        try:
                            await asyncio.wait({fetch})
                        finally:
                            if run.inflight.get(unit.ordinal, (None, None, None))[2] is fetch:
                                del run.inflight[unit.ordinal]
                            if not fetch.done():  # this stream itself is cancelled: its fetch too
                                fetch.cancel()
                                await asyncio.wait({fetch})
                        if fetch.cancelled():  # taken over by a faster holder's stream (the end game)
                            run.queue.appendleft(unit)
                            continue
                        if fetch.exception() is not None:
                            raise fetch.exception()
                        run.took.setdefault(holder, []).append(time.monotonic() - t_fetch)
                        busy = 0
                    if unit.pending:  # the holder answered without some of them
                        unit.lacking_at = unit.lacking_at | {holder}
                        run.queue.appendleft(unit)
                    else:
                        complete(unit)
                except ReplicadError as err:
                    if unit.ordinal not in run.local_checked:  # this site's store failed, not the holder
                        run.error = run.error or err
                        return
                    run.queue.appendleft(unit)  # its placed chunks stay; another holder's stream takes it
                    if holder in run.dead:  # its other stream said so already
                        return
                    if isinstance(err, PeerBusyError) and busy < FETCH_BUSY_RETRIES:
                        busy += 1
                        await run.notify()  # the unit is open to the other holders' streams meanwhile
                        await asyncio.sleep(FETCH_BUSY_RETRY_S)
                        continue
                    rep.failed = f"{err.code}: {err.message}"
                    run.dead.add(holder)
                    log.warning("restore of %s#%d: holder %s failed after %d chunks (%s); its share goes to %s",
                                volume, manifest.seq, holder, rep.chunks, rep.failed,
                                ", ".join(h for h in holders if h not in run.dead) or "no one")
                except BaseException as err:
                    run.error = run.error or err
                    raise
                finally:
                    run.busy -= 1
                    await run.notify()

        # interleaved (b, c, b, c): with a window of fewer units than streams every holder still gets one
        streams = [asyncio.ensure_future(stream(h, url)) for _ in range(max(1, streams_per_holder))
                   for h, url in holders.items()]
        try:
            if not streams:  # everything is here: one pass over the store
                for unit in list(run.queue):
                    run.queue.remove(unit)
                    run.bufs[unit.ordinal] = run.free.pop() if run.free else assembler.buffer()
                    await place_local(unit)
                    if unit.pending:
                        raise NotFoundError(f"{len(unit.pending)} chunks of {volume}#{manifest.seq} are not here",
                                            volume=volume, seq=manifest.seq)
                    run.writing += 1
                    await write(unit)
            await asyncio.gather(*streams)
            while run.tasks:
                await asyncio.gather(*list(run.tasks))
        except BaseException:
            for t in (*streams, *run.tasks):
                t.cancel()
            await asyncio.gather(*streams, *run.tasks, return_exceptions=True)
            raise
        if run.error is not None:
            raise run.error
        if run.remaining:
            lacking = sum(len(u.pending) for u in run.queue)
            failed = {h: r.failed for h, r in report.holders.items() if r.failed}
            if any(u.lacking_at for u in run.queue):
                raise NotFoundError(f"{lacking} chunks of {volume}#{manifest.seq} are not available from any holder",
                                    volume=volume, seq=manifest.seq, missing=lacking, holders=list(holders),
                                    failed=failed)
            raise PeerUnavailableError(f"{lacking} chunks of {volume}#{manifest.seq} missing here and every holder "
                                       f"failed ({', '.join(holders)})", volume=volume, seq=manifest.seq,
                                       missing=lacking, holders=list(holders), failed=failed)
        await asyncio.to_thread(assembler.finish, units)
    finally:
        assembler.close()
    report.blocks_written = assembler.blocks_written
    report.bytes_written = assembler.bytes_written
    report.seconds = time.monotonic() - t0
    if progress is not None:
        progress(total, total)
    return report


__all__ = ["RESTORE_WINDOW_BYTES", "STREAMS_PER_HOLDER", "HolderReport", "PeerRestoreReport", "restore_from_holders"]
