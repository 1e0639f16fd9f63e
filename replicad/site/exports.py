"""Exports: a committed snapshot served as a block device over NBD on a unix socket of this
site (issue 16, the base of instant recovery and of file-level restore).

:meth:`Exports.create` pins the snapshot (retention and GC keep it while the export lives:
:meth:`Exports.pinned`), makes it complete in the local store (missing chunks fetched from
its holders, :meth:`~replicad.site.pull.Pull.ensure_snapshot`) and listens on
``<data_dir>/nbd/<export_id>.sock`` (mode 0600; never a network address). Reads come from the
chunk store through the manifest, every chunk verified against its digest
(:class:`~replicad.storage.snapshotview.SnapshotReader`); a chunk that does not verify answers
that read EIO, logged at ERROR and counted (``replicad_export_read_errors_total``): never
wrong data. A ``writable`` export keeps its writes in a copy-on-write overlay
(``<data_dir>/exports/<export_id>/``: a sparse file and a bitmap of written blocks, fsynced on
FLUSH), never in the store; closing the export discards them.

The pin lives exactly as long as the export: in this process's memory, released by
:meth:`Exports.close` (or the daemon's stop). A crash leaves socket files and overlays that
:meth:`Exports.recover` removes at the next start (logged at WARNING). An ``auto_close``
export closes itself once its last NBD connection ended (after at least one), or when none
came within ``AUTO_CLOSE_FIRST_S``: what ``replicad mount``/``files``/``diff`` use, so that an
operator's command that dies leaves nothing pinned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from replicad.core.errors import ConflictError, NotFoundError, ReplicadError, UsageError, from_os_error
from replicad.core.manifest import Manifest
from replicad.site.cluster import Cluster
from replicad.site.nbdserver import Backend, serve_connection
from replicad.site.pull import Pull
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.snapshotview import Overlay, SnapshotReader, _punch_hole
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.exports")

SOCKET_PATH_MAX = 107        # sun_path holds 108 bytes with the terminating NUL
AUTO_CLOSE_FIRST_S = 120.0   # an auto_close export nobody connected to within this is closed
MAX_EXPORTS = 32             # open at once at a site: each pins a snapshot and holds a listening socket


@dataclass
class Export:
    """One open export: the snapshot ``volume#seq`` (``epoch``, ``root``), its socket and, when
    writable, its overlay; ``connections`` open now, ``served`` connections so far."""

    export_id: str
    volume: str
    seq: int
    epoch: int
    root: bytes
    manifest: Manifest | None  # None: an instant export serving the image after a restart (no snapshot read)
    socket: Path
    writable: bool
    auto_close: bool
    created_at_ns: int
    reader: SnapshotReader | None
    overlay: Overlay | None = None
    server: asyncio.AbstractServer | None = None
    connections: set[asyncio.StreamWriter] = field(default_factory=set)
    served: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    read_errors: int = 0
    closer: asyncio.Task | None = None
    verdict: str = "clean"
    # instant recovery (site/instant.py): the overlay outlives the process and is not removed at
    # close; ``gate`` serialises writes with the switch-over; once ``image_fd`` is set every
    # request goes to the volume's image itself (after the switch-over)
    instant: bool = False
    gate: asyncio.Lock | None = None
    image_fd: int | None = None
    first_read_ns: int | None = None
    on_first_read: Callable[[int], None] | None = None
    size_bytes: int = 0   # the manifest's, or the instant record's when there is no manifest
    block_size: int = 0

    def __post_init__(self) -> None:
        if self.manifest is not None:
            self.size_bytes, self.block_size = self.manifest.size_bytes, self.manifest.block_size

    @property
    def name(self) -> str:
        """The NBD export name: ``VOLUME@SEQ`` (the empty default name is served too)."""
        return f"{self.volume}@{self.seq}"

    def to_dict(self) -> dict:
        """The admin API's view: ``{export_id, volume, seq, epoch, root, socket, uri, name,
        size_bytes, block_size_bytes, writable, auto_close, created_at_ns, connections,
        bytes_read, bytes_written, read_errors, verdict, overlay?, overlay_blocks?}`` (``verdict``: the
        snapshot's, clean or suspect, when the export opened)."""
        out = {"export_id": self.export_id, "volume": self.volume, "seq": self.seq, "epoch": self.epoch,
               "root": self.root.hex(), "socket": str(self.socket), "uri": f"nbd+unix:///?socket={self.socket}",
               "name": self.name, "size_bytes": self.size_bytes, "block_size_bytes": self.block_size,
               "writable": self.writable, "auto_close": self.auto_close, "created_at_ns": self.created_at_ns,
               "connections": len(self.connections), "bytes_read": self.bytes_read,
               "bytes_written": self.bytes_written, "read_errors": self.read_errors, "verdict": self.verdict}
        if self.overlay is not None and self.image_fd is None:
            out["overlay"] = str(self.overlay.root)
            out["overlay_blocks"] = self.overlay.blocks_written
        if self.instant:
            out["instant"] = True
            out["serves"] = "image" if self.image_fd is not None else "snapshot+overlay"
        return out

    @property
    def serves_image(self) -> bool:
        """An instant recovery's export after its switch-over: it serves the volume's image itself."""
        return self.instant and self.image_fd is not None


class Exports:
    """The snapshot exports of one site.

    Args:
        cluster: Raft view (committed snapshots).
        store: this site's chunk store (read only here).
        pull: completes a snapshot in the store from its holders.
        data_dir: the site's data dir (sockets under ``nbd/``, overlays under ``exports/``).
        metrics: the site's metrics (exports open, bytes read/written, read errors).
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, pull: Pull, data_dir: Path, metrics: SiteMetrics) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.pull = pull
        self.socket_dir = Path(data_dir) / "nbd"
        self.overlay_dir = Path(data_dir) / "exports"
        self.metrics = metrics
        self._exports: dict[str, Export] = {}
        # instant recovery: called (worker thread) with the volume when the operator closes its
        # export after the switch-over, so that it is not opened again at the next start
        self.on_instant_released: Callable[[str], None] | None = None
        self._pending: dict[str, tuple[str, int, int, bytes]] = {}  # pinned while being created

    # ------------------------------------------------------------------ pins
    def pinned(self) -> dict[tuple[str, int, int], bytes]:
        """``{(volume, epoch, seq): root}`` of every snapshot an export (open or being opened)
        holds: retention keeps their local records, GC their chunks (``Housekeeping``)."""
        out = {(e.volume, e.epoch, e.seq): e.root for e in self._exports.values()
               if not e.serves_image}  # an instant export after its switch-over reads no snapshot
        out.update({(v, ep, s): r for v, ep, s, r in self._pending.values()})
        return out

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> None:
        """At start: remove the socket files and overlays a previous run left (a crash; an
        export never outlives its process). Logged at WARNING. Raises nothing."""
        for d, what in ((self.socket_dir, "socket"), (self.overlay_dir, "overlay")):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if what == "socket" and p.name.startswith("instant-"):
                    log.info("removing the socket %s an instant recovery left: it is opened again, on its overlay, "
                             "when the takeover resumes (site/instant.py)", p)
                    p.unlink(missing_ok=True)
                    continue
                log.warning("removing the %s %s of an export the previous run of this site left open (its writes, "
                            "if any, are discarded)", what, p)
                try:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                except OSError as err:
                    log.error("cannot remove %s: %s", p, err)

    async def create(self, volume: str, seq: int, *, writable: bool = False, auto_close: bool = False) -> dict:
        """Export committed snapshot ``volume#seq`` on a new unix socket.

        Returns :meth:`Export.to_dict` (``socket``: the path to give ``nbdinfo``/``qemu-img``
        as ``nbd+unix:///?socket=PATH``; ``size_bytes``). Raises NotFoundError (unknown volume
        or snapshot, or a holder lacks its chunks), UsageError (too many exports, a socket path
        longer than 107 bytes: a shorter data dir), PeerUnavailableError / IntegrityError
        (chunks could not be completed here), a typed OSError."""
        vs = self.cluster.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        snap = vs["snapshots"].get(seq)
        if snap is None:
            raise NotFoundError(f"no committed snapshot {volume}#{seq}", volume=volume, seq=seq)
        if len(self._exports) + len(self._pending) >= MAX_EXPORTS:
            raise UsageError(f"{MAX_EXPORTS} exports are open at {self.site_id}: close one first (replicad export "
                             "--close ID, or DELETE /v1/exports/ID)", open=len(self._exports))
        export_id = "x" + secrets.token_hex(4)
        sock = self.socket_dir / f"{export_id}.sock"
        if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
            raise UsageError(f"the export socket path {sock} is longer than {SOCKET_PATH_MAX} bytes (a unix socket "
                             "limit): give the site a shorter data_dir", path=str(sock))
        self._pending[export_id] = (volume, snap["epoch"], seq, snap["root"])  # pinned before any fetch or GC
        try:
            manifest = await self.pull.ensure_snapshot(volume, seq, vs)
            exp = Export(export_id, volume, seq, snap["epoch"], snap["root"], manifest, sock, writable, auto_close,
                         time.time_ns(), SnapshotReader(self.store, manifest), verdict=snap.get("verdict", "clean"))
            await asyncio.to_thread(self._prepare, exp)
            try:
                exp.server = await asyncio.start_unix_server(lambda r, w: self._connection(exp, r, w), path=str(sock))
                os.chmod(sock, 0o600)
            except OSError as err:
                await asyncio.to_thread(self._discard, exp)
                raise from_os_error(err, f"listen on {sock}", path=str(sock)) from None
            self._exports[export_id] = exp
        finally:
            self._pending.pop(export_id, None)
        if auto_close:
            exp.closer = asyncio.create_task(self._close_if_unused(exp), name=f"export:{export_id}")
        self.metrics.export_opened(len(self._exports))
        log.info("AUDIT export %s of %s#%d (%s, epoch %d, root %s) open at %s: %s, %s%s", export_id, volume, seq,
                 exp.verdict, exp.epoch, exp.root.hex()[:16], self.site_id, sock,
                 "writable (overlay)" if writable else "read-only",
                 ", closes after its last connection" if auto_close else "")
        return exp.to_dict()

    async def open_instant(self, volume: str, epoch: int, seq: int, manifest: Manifest, overlay_root: Path, *,
                           reopen: bool, on_first_read: Callable[[int], None] | None = None) -> Export:
        """Instant recovery (:mod:`replicad.site.instant`): serve snapshot ``volume#seq``
        (``manifest``, complete in the store) writable on the stable socket
        ``<data_dir>/nbd/instant-<volume>.sock`` (export id ``instant-<volume>``), its overlay in
        ``overlay_root`` — created, or re-attached as the last FLUSH left it when ``reopen``.
        The overlay survives :meth:`close` and a crash (:meth:`recover` does not touch it); the
        export refuses to close while it is the only copy of the application's writes.
        ``on_first_read(ns)`` is called once, at the first read answered.

        Returns the :class:`Export`. Raises UsageError (socket path too long, too many exports),
        IntegrityError (an overlay that cannot be re-attached), a typed OSError."""
        export_id = f"instant-{volume}"
        if export_id in self._exports:
            return self._exports[export_id]
        sock = self._instant_socket(export_id)
        exp = Export(export_id, volume, seq, epoch, manifest.root, manifest, sock, True, False, time.time_ns(),
                     SnapshotReader(self.store, manifest), instant=True, gate=asyncio.Lock(),
                     on_first_read=on_first_read)

        def prepare() -> None:
            try:
                self.socket_dir.mkdir(mode=0o700, exist_ok=True)
                sock.unlink(missing_ok=True)
            except OSError as err:
                raise from_os_error(err, f"prepare {self.socket_dir}", path=str(self.socket_dir)) from None
            exp.overlay = Overlay(overlay_root, exp.reader, reopen=reopen)

        await asyncio.to_thread(prepare)
        await self._listen_instant(exp)
        log.info("AUDIT export %s of %s#%d (epoch %d, root %s) open at %s for instant recovery: %s, writable "
                 "(overlay %s%s)", export_id, volume, seq, epoch, manifest.root.hex()[:16], self.site_id, sock,
                 overlay_root, f", re-attached with {exp.overlay.blocks_written} blocks" if reopen else "")
        return exp

    async def open_instant_image(self, volume: str, epoch: int, seq: int, root: bytes, image: Path, *,
                                 size_bytes: int, block_size: int) -> Export:
        """Instant recovery after its switch-over, at a (re)start: serve the volume's ``image``
        itself, writable, on the instant socket ``<data_dir>/nbd/instant-<volume>.sock`` (the one
        the application's NBD client knows, so a client that reconnects resumes), until the
        operator releases it (:meth:`close` without ``force``). ``seq``/``root``: the snapshot
        the recovery started from (shown, not read); ``size_bytes``/``block_size``: what the
        export announces (the volume's).

        Returns the :class:`Export`. Raises UsageError (socket path too long, too many exports),
        a typed OSError (the image cannot be opened read-write, the socket cannot listen)."""
        export_id = f"instant-{volume}"
        if export_id in self._exports:
            return self._exports[export_id]
        sock = self._instant_socket(export_id)
        exp = Export(export_id, volume, seq, epoch, root, None, sock, True, False, time.time_ns(), None,
                     instant=True, gate=asyncio.Lock(), size_bytes=size_bytes, block_size=block_size)

        def prepare() -> None:
            try:
                self.socket_dir.mkdir(mode=0o700, exist_ok=True)
                sock.unlink(missing_ok=True)
                exp.image_fd = os.open(image, os.O_RDWR)
            except OSError as err:
                raise from_os_error(err, f"open {image} for the instant export", path=str(image)) from None

        await asyncio.to_thread(prepare)
        await self._listen_instant(exp)
        log.info("AUDIT export %s of %s (instant recovery from #%d, epoch %d) open at %s: %s, writable, serving the "
                 "image %s itself until released (replicad export --close %s)", export_id, volume, seq, epoch,
                 self.site_id, sock, image, export_id)
        return exp

    def _instant_socket(self, export_id: str) -> Path:
        """The socket path of instant export ``export_id`` (``<data_dir>/nbd/<id>.sock``) once it
        may open. Raises UsageError when :data:`MAX_EXPORTS` are open or the path is longer
        than a unix socket allows (:data:`SOCKET_PATH_MAX` bytes)."""
        if len(self._exports) + len(self._pending) >= MAX_EXPORTS:
            raise UsageError(f"{MAX_EXPORTS} exports are open at {self.site_id}: close one first", open=len(self._exports))
        sock = self.socket_dir / f"{export_id}.sock"
        if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
            raise UsageError(f"the export socket path {sock} is longer than {SOCKET_PATH_MAX} bytes (a unix socket "
                             "limit): give the site a shorter data_dir", path=str(sock))
        return sock

    async def _listen_instant(self, exp: Export) -> None:
        """Listen on ``exp``'s socket (0600) and register it. Raises a typed OSError (the
        export's fds are closed)."""
        try:
            exp.server = await asyncio.start_unix_server(lambda r, w: self._connection(exp, r, w),
                                                         path=str(exp.socket))
            os.chmod(exp.socket, 0o600)
        except OSError as err:
            await asyncio.to_thread(self._discard, exp)
            raise from_os_error(err, f"listen on {exp.socket}", path=str(exp.socket)) from None
        self._exports[exp.export_id] = exp
        self.metrics.export_opened(len(self._exports))

    def is_open(self, export_id: str) -> bool:
        """Whether export ``export_id`` is open now."""
        return export_id in self._exports

    def _prepare(self, exp: Export) -> None:
        """Create the socket directory (0700) and, when writable, the overlay (worker thread)."""
        try:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
            exp.socket.unlink(missing_ok=True)
        except OSError as err:
            raise from_os_error(err, f"prepare {self.socket_dir}", path=str(self.socket_dir)) from None
        if exp.writable:
            self.overlay_dir.mkdir(mode=0o700, exist_ok=True)
            exp.overlay = Overlay(self.overlay_dir / exp.export_id, exp.reader)

    def list(self) -> list[dict]:
        """Every open export, oldest first (:meth:`Export.to_dict`)."""
        return [e.to_dict() for e in sorted(self._exports.values(), key=lambda e: e.created_at_ns)]

    async def close(self, export_id: str, why: str = "closed by request", *, force: bool = False) -> dict:
        """Close export ``export_id``: stop listening, drop its connections, remove its socket
        and overlay, release its pin. Returns its last :meth:`Export.to_dict` with
        ``closed: true``. Raises NotFoundError for an unknown id, ConflictError for an instant
        recovery's export before its switch-over unless ``force`` (the site stops, or was fenced:
        its overlay stays on disk). An instant export closed after its switch-over without
        ``force`` is *released* (:attr:`on_instant_released`): it is not served again at the next
        start; with ``force`` (the site stops) it is."""
        exp = self._exports.get(export_id)
        if exp is None:
            raise NotFoundError(f"no open export {export_id} at {self.site_id}", export_id=export_id)
        if exp.instant and exp.image_fd is None and not force:
            raise ConflictError(f"export {export_id} is the instant recovery of {exp.volume}: until the switch-over "
                                "its overlay holds the application's writes; it closes itself never, close it "
                                "after replicad status shows the instant recovery done", export_id=export_id,
                                volume=exp.volume)
        del self._exports[export_id]
        out = exp.to_dict()
        if exp.closer is not None and exp.closer is not asyncio.current_task():
            exp.closer.cancel()
        if exp.server is not None:
            exp.server.close()
        for w in list(exp.connections):
            w.close()
        await asyncio.to_thread(self._discard, exp)
        self.metrics.export_opened(len(self._exports))
        released = exp.instant and not force
        if released and self.on_instant_released is not None:
            await asyncio.to_thread(self.on_instant_released, exp.volume)
        log.info("AUDIT export %s of %s#%d closed at %s (%s): %d bytes read, %d written, %d read errors%s", export_id,
                 exp.volume, exp.seq, self.site_id, why, exp.bytes_read, exp.bytes_written, exp.read_errors,
                 "; the instant recovery is released: the export is not served again" if released else "")
        return {**out, "closed": True}

    async def close_all(self) -> None:
        """Close every export (the daemon's stop). An instant export with NBD clients connected is
        logged at WARNING: their requests fail until the site is back (it serves the export again
        on the same socket at its start). Raises nothing."""
        for export_id in list(self._exports):
            exp = self._exports.get(export_id)
            if exp is not None and exp.instant and exp.connections:
                log.warning("the site %s stops while %d NBD client(s) are connected to %s (the application's disk "
                            "%s, %s): their reads and writes fail until the site is back and serves it again on %s; "
                            "a client that reconnects (qemu's NBD client with reconnect-delay, nbd-client -persist) "
                            "resumes, nbdfuse does not (a file system on it sees I/O errors and may lose writes). "
                            "Before stopping a site, move the application to the plain image (README, Instant "
                            "recovery)", self.site_id, len(exp.connections), export_id, exp.volume,
                            "the image itself" if exp.image_fd is not None else "snapshot + overlay", exp.socket)
            try:
                await self.close(export_id, "the site stops", force=True)
            except ReplicadError as err:
                log.error("closing export %s: %s", export_id, err)

    def _discard(self, exp: Export) -> None:
        """Remove the socket file and the overlay of ``exp`` (worker thread); errors logged."""
        try:
            exp.socket.unlink(missing_ok=True)
        except OSError as err:
            log.error("cannot remove the export socket %s: %s", exp.socket, err)
        if exp.image_fd is not None:
            try:
                os.close(exp.image_fd)
            except OSError as err:
                log.error("closing the image of export %s: %s", exp.export_id, err)
            exp.image_fd = None
        if exp.overlay is not None:
            exp.overlay.close()
            if not exp.instant:  # an instant recovery's overlay is removed by site/instant.py, after the switch-over
                shutil.rmtree(exp.overlay.root, ignore_errors=True)

    # ------------------------------------------------------------------ serving
    async def _connection(self, exp: Export, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exp.connections.add(writer)
        exp.served += 1
        try:
            await serve_connection(reader, writer, self._backend(exp))
        finally:
            exp.connections.discard(writer)
            if exp.auto_close and not exp.connections and exp.export_id in self._exports:
                exp.closer = asyncio.create_task(self._close_if_unused(exp, after_s=1.0),
                                                 name=f"export:{exp.export_id}")

    async def _close_if_unused(self, exp: Export, after_s: float = AUTO_CLOSE_FIRST_S) -> None:
        """auto_close: close ``exp`` if no connection is open ``after_s`` seconds from now (a
        client that reconnects at once, as ``nbdfuse`` does per connection, keeps it)."""
        await asyncio.sleep(after_s)
        if not exp.connections and exp.export_id in self._exports:
            await self.close(exp.export_id, "its last connection ended" if exp.served else
                             f"nobody connected within {after_s:.0f} s")

    def _backend(self, exp: Export) -> Backend:
        if exp.instant:
            return self._instant_backend(exp)
        return self._plain_backend(exp)

    def _plain_backend(self, exp: Export) -> Backend:
        ov = exp.overlay

        async def read(offset: int, length: int) -> bytes:
            assert exp.reader is not None, "only an instant export after its switch-over has no reader"
            return await asyncio.to_thread(ov.read if ov is not None else exp.reader.read, offset, length)

        def on_bytes(nread: int, nwritten: int) -> None:
            if nread and exp.first_read_ns is None:
                exp.first_read_ns = time.time_ns()
                if exp.on_first_read is not None:
                    exp.on_first_read(exp.first_read_ns)
            exp.bytes_read += nread
            exp.bytes_written += nwritten
            self.metrics.export_bytes(exp.volume, nread, nwritten)

        def on_read_error(offset: int, length: int, err: ReplicadError) -> None:
            exp.read_errors += 1
            self.metrics.export_read_error(exp.volume)
            log.error("export %s of %s#%d: read of %d bytes at offset %d answered EIO: %s %s", exp.export_id,
                      exp.volume, exp.seq, length, offset, err, err.evidence)

        write = zero = flush = None
        if ov is not None:
            async def write(offset: int, data: bytes) -> None:
                await asyncio.to_thread(ov.write, offset, data)

            async def zero(offset: int, length: int) -> None:
                await asyncio.to_thread(ov.zero, offset, length)

            async def flush() -> None:
                await asyncio.to_thread(ov.flush)

        return Backend(exp.name, exp.size_bytes, exp.block_size,
                       f"replicad {exp.volume}#{exp.seq} at {self.site_id}", read, write, zero, flush,
                       on_read_error, on_bytes)

    def _instant_backend(self, exp: Export) -> Backend:
        """An instant recovery's export: snapshot + overlay until the switch-over, then the
        volume's image itself (``exp.image_fd``), chosen per request, so a connection lives
        through the switch-over. Writes, zeroes and flushes hold ``exp.gate`` (the switch-over
        takes it to copy the overlay into the image with no write in flight)."""
        base = self._plain_backend(exp)
        ov = exp.overlay
        assert (ov is not None or exp.image_fd is not None) and exp.gate is not None
        gate = exp.gate

        async def read(offset: int, length: int) -> bytes:
            fd = exp.image_fd
            if fd is not None:
                return await asyncio.to_thread(_pread_exact, fd, offset, length)
            assert ov is not None
            return await asyncio.to_thread(ov.read, offset, length)

        async def write(offset: int, data: bytes) -> None:
            async with gate:
                fd = exp.image_fd
                if fd is not None:
                    await asyncio.to_thread(_pwrite_all, fd, offset, data)
                else:
                    await asyncio.to_thread(ov.write, offset, data)

        async def zero(offset: int, length: int) -> None:
            async with gate:
                fd = exp.image_fd
                if fd is not None:
                    await asyncio.to_thread(_zero_image, fd, offset, length)
                else:
                    await asyncio.to_thread(ov.zero, offset, length)

        async def flush() -> None:
            async with gate:
                fd = exp.image_fd
                if fd is not None:
                    await asyncio.to_thread(_fsync, fd)
                else:
                    await asyncio.to_thread(ov.flush)

        return Backend(base.name, base.size_bytes, base.block_size,
                       f"replicad {exp.volume}: instant recovery from #{exp.seq} at {self.site_id}", read, write, zero,
                       flush, base.on_read_error, base.on_bytes)


def _pread_exact(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes of the image at ``offset``. Raises a typed OSError (a short read too)."""
    try:
        data = os.pread(fd, length, offset)
        while len(data) < length:
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                raise OSError(5, f"short read of the volume image at {offset + len(data)}")
            data += more
        return data
    except OSError as err:
        raise from_os_error(err, "read the volume image") from None


def _pwrite_all(fd: int, offset: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    except OSError as err:
        raise from_os_error(err, "write the volume image") from None


def _zero_image(fd: int, offset: int, length: int) -> None:
    try:
        _punch_hole(fd, offset, length)
    except OSError as err:
        raise from_os_error(err, "zero a range of the volume image") from None


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as err:
        raise from_os_error(err, "fsync the volume image") from None


PinsFn = Callable[[], dict[tuple[str, int, int], bytes]]
"""What :meth:`Exports.pinned` is to the rooms that must keep pinned snapshots."""
