"""One NBD connection, served with asyncio: the fixed newstyle handshake, then the
transmission phase with simple replies (:mod:`replicad.core.nbd` holds the wire format).

Options answered: ``NBD_OPT_EXPORT_NAME``, ``NBD_OPT_INFO``, ``NBD_OPT_GO`` (the export's
name, or the empty default name), ``NBD_OPT_LIST`` (this one export), ``NBD_OPT_ABORT``;
every other option (STARTTLS, STRUCTURED_REPLY, meta contexts ...) gets ``NBD_REP_ERR_UNSUP``
(clients fall back to simple replies). Commands: READ, WRITE, FLUSH, TRIM (advisory: accepted,
nothing done), WRITE_ZEROES (holes in the overlay) — writes only on a writable export, else
EPERM — and DISC. A request past the export's end is
answered EINVAL; one whose data is larger than ``nbd.REQUEST_MAX_BYTES`` ends the connection
(a WRITE that large could not be read without buffering it).

A read whose chunk fails its digest (or is missing) is answered **EIO with no data**: with
simple replies the whole read is checked before its reply header is sent, so a client never
receives a byte that did not verify. Requests of one connection are served in order; several
connections (``NBD_FLAG_CAN_MULTI_CONN``: a flush covers every connection's writes, the
overlay being one file) run side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from replicad.core import nbd
from replicad.core.errors import IntegrityError, NotFoundError, RemoteProtocolError, ReplicadError

log = logging.getLogger("replicad.site.nbdserver")


@dataclass
class Backend:
    """What a connection serves. ``read(offset, length) -> bytes`` (awaitable; raises
    IntegrityError / NotFoundError for a chunk that does not verify), ``write(offset, data)``,
    ``zero(offset, length)`` and ``flush()`` (awaitables; None for a read-only export),
    ``on_read_error(offset, length, err)`` called for each read answered EIO, ``on_bytes(read,
    written)`` after each served request."""

    name: str
    size_bytes: int
    block_size: int
    description: str
    read: Callable[[int, int], Awaitable[bytes]]
    write: Callable[[int, bytes], Awaitable[None]] | None
    zero: Callable[[int, int], Awaitable[None]] | None
    flush: Callable[[], Awaitable[None]] | None
    on_read_error: Callable[[int, int, ReplicadError], None]
    on_bytes: Callable[[int, int], None]

    @property
    def writable(self) -> bool:
        """True when the export takes writes (its overlay)."""
        return self.write is not None

    @property
    def transmission_flags(self) -> int:
        """The NBD transmission flags announced for this export (read-only, or FUA/TRIM/WRITE_ZEROES;
        FLUSH and CAN_MULTI_CONN always)."""
        flags = nbd.TFLAG_HAS_FLAGS | nbd.TFLAG_SEND_FLUSH | nbd.TFLAG_CAN_MULTI_CONN
        if self.writable:
            flags |= nbd.TFLAG_SEND_FUA | nbd.TFLAG_SEND_TRIM | nbd.TFLAG_SEND_WRITE_ZEROES
        else:
            flags |= nbd.TFLAG_READ_ONLY
        return flags


class _Closed(Exception):
    """The handshake ended without entering transmission (ABORT, unknown EXPORT_NAME)."""


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
    """Serve one client until it disconnects, aborts, or breaks the protocol (logged at
    WARNING, the connection dropped). Never raises but CancelledError."""
    try:
        await _handshake(reader, writer, backend)
        await _transmission(reader, writer, backend)
    except _Closed:
        pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client went away
    except RemoteProtocolError as err:
        log.warning("NBD export %s: client broke the protocol (%s %s): connection dropped", backend.name, err,
                    err.evidence)
    except Exception:  # noqa: BLE001 — our bug: this connection ends, the export and the daemon go on
        log.exception("NBD export %s: connection failed", backend.name)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> bool:
    """Option haggling; returns when transmission starts (GO or EXPORT_NAME), with whether the
    client negotiated NO_ZEROES. Raises _Closed (ABORT, an unknown EXPORT_NAME), RemoteProtocolError."""
    writer.write(nbd.greeting(no_zeroes=True))
    await writer.drain()
    flags = nbd.parse_client_flags(await reader.readexactly(4))
    no_zeroes = bool(flags & nbd.FLAG_C_NO_ZEROES)
    while True:
        head = nbd.parse_option_header(await reader.readexactly(nbd.OPTION_HEADER_BYTES))
        data = await reader.readexactly(head.length) if head.length else b""
        opt = head.option
        if opt == nbd.OPT_EXPORT_NAME:
            if nbd.parse_export_name(data) not in ("", backend.name):
                raise _Closed()  # this option cannot answer an error: the protocol says close
            writer.write(nbd.export_name_answer(backend.size_bytes, backend.transmission_flags, no_zeroes))
            await writer.drain()
            return no_zeroes
        if opt == nbd.OPT_ABORT:
            writer.write(nbd.option_reply(opt, nbd.REP_ACK))
            await writer.drain()
            raise _Closed()
        if opt == nbd.OPT_LIST:
            if data:
                writer.write(nbd.option_reply(opt, nbd.REP_ERR_INVALID))
            else:
                writer.write(nbd.option_reply(opt, nbd.REP_SERVER, nbd.server_entry(backend.name)))
                writer.write(nbd.option_reply(opt, nbd.REP_ACK))
            await writer.drain()
            continue
        if opt in (nbd.OPT_INFO, nbd.OPT_GO):
            try:
                req = nbd.parse_info_request(data)
            except RemoteProtocolError:
                writer.write(nbd.option_reply(opt, nbd.REP_ERR_INVALID))
                await writer.drain()
                continue
            if req.name not in ("", backend.name):
                writer.write(nbd.option_reply(opt, nbd.REP_ERR_UNKNOWN))
                await writer.drain()
                continue
            writer.write(nbd.option_reply(opt, nbd.REP_INFO,
                                          nbd.info_export(backend.size_bytes, backend.transmission_flags)))
            if nbd.INFO_NAME in req.infos:
                writer.write(nbd.option_reply(opt, nbd.REP_INFO, nbd.info_name(backend.name)))
            if nbd.INFO_DESCRIPTION in req.infos:
                writer.write(nbd.option_reply(opt, nbd.REP_INFO, nbd.info_description(backend.description)))
            if nbd.INFO_BLOCK_SIZE in req.infos:
                preferred = min(max(backend.block_size, 512), 2**20)
                writer.write(nbd.option_reply(opt, nbd.REP_INFO,
                                              nbd.info_block_size(1, preferred, nbd.REQUEST_MAX_BYTES)))
            writer.write(nbd.option_reply(opt, nbd.REP_ACK))
            await writer.drain()
            if opt == nbd.OPT_GO:
                return no_zeroes
            continue
        writer.write(nbd.option_reply(opt, nbd.REP_ERR_UNSUP))  # STARTTLS, STRUCTURED_REPLY, meta contexts
        await writer.drain()


async def _transmission(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
    while True:
        req = nbd.parse_request(await reader.readexactly(nbd.REQUEST_HEADER_BYTES))
        if req.kind == nbd.CMD_DISC:
            return
        payload = b""
        if req.kind == nbd.CMD_WRITE:
            if req.length > nbd.REQUEST_MAX_BYTES:
                raise RemoteProtocolError("NBD write larger than the server accepts", length=req.length,
                                          limit=nbd.REQUEST_MAX_BYTES)
            payload = await reader.readexactly(req.length)
        error, data = await _serve(req, payload, backend)
        writer.write(nbd.simple_reply(req.cookie, error))
        if data:
            writer.write(data)
        await writer.drain()


async def _serve(req: nbd.Request, payload: bytes, backend: Backend) -> tuple[int, bytes]:
    """``(NBD error, READ data)`` of one request."""
    if req.kind not in (nbd.CMD_READ, nbd.CMD_WRITE, nbd.CMD_FLUSH, nbd.CMD_TRIM, nbd.CMD_WRITE_ZEROES):
        return nbd.EINVAL, b""
    if req.kind != nbd.CMD_FLUSH:
        bad = nbd.check_range(req, backend.size_bytes)
        if bad:
            return bad, b""
    if req.kind == nbd.CMD_READ:
        try:
            data = await backend.read(req.offset, req.length)
        except ReplicadError as err:  # a chunk that did not verify, is missing, or the overlay unreadable
            backend.on_read_error(req.offset, req.length, err)
            return nbd.EIO, b""
        backend.on_bytes(len(data), 0)
        return 0, data
    if backend.write is None or backend.zero is None or backend.flush is None:
        return (0 if req.kind == nbd.CMD_FLUSH else nbd.EPERM), b""  # read-only: nothing to flush
    try:
        if req.kind == nbd.CMD_WRITE:
            await backend.write(req.offset, payload)
            backend.on_bytes(0, len(payload))
        elif req.kind == nbd.CMD_WRITE_ZEROES:
            await backend.zero(req.offset, req.length)
        # TRIM: advisory (the protocol lets a server ignore it): nothing to do, the overlay stays
        if req.kind == nbd.CMD_FLUSH or req.flags & nbd.CMD_FLAG_FUA:
            await backend.flush()
    except (IntegrityError, NotFoundError) as err:  # a partial block completed from a corrupt chunk
        backend.on_read_error(req.offset, req.length, err)
        return nbd.EIO, b""
    except ReplicadError as err:
        log.error("NBD export %s: %s at offset %d (%d bytes) failed: %s", backend.name,
                  {nbd.CMD_WRITE: "write", nbd.CMD_FLUSH: "flush"}.get(req.kind, "zero"), req.offset, req.length, err)
        return (nbd.ENOSPC if err.code in ("store_full", "target_full") or "No space" in err.message
                else nbd.EIO), b""
    return 0, b""
