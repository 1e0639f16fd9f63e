"""One NBD connection served in-process (site/nbdserver.py), driven byte by byte as the protocol
document describes it, and by nbdinfo (libnbd) where installed: the handshake options, the
replies of each command, EIO without data for a read that fails, and a dropped connection for
a broken request."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from replicad.core import nbd
from replicad.core.errors import IntegrityError
from replicad.site.nbdserver import Backend, serve_connection

SIZE = 1 << 20
DATA = bytes(range(256)) * (SIZE // 256)
BAD_AT = 4096  # reads touching [4096, 8192) fail as a corrupt chunk would


def _backend(errors: list) -> Backend:
    async def read(offset: int, length: int) -> bytes:
        if offset < BAD_AT + 4096 and offset + length > BAD_AT:
            raise IntegrityError("chunk is corrupt (digest mismatch)", digest="ab" * 32)
        return DATA[offset:offset + length]

    return Backend("vol@1", SIZE, 65536, "test export", read, None, None, None,
                   lambda o, n, e: errors.append((o, n, e.code)), lambda r, w: None)


async def _serve(tmp_path: Path, errors: list):
    sock = tmp_path / "s.sock"
    server = await asyncio.start_unix_server(lambda r, w: serve_connection(r, w, _backend(errors)), path=str(sock))
    return server, sock


async def _handshake(sock: Path, flags: int = nbd.FLAG_C_FIXED_NEWSTYLE | nbd.FLAG_C_NO_ZEROES):
    r, w = await asyncio.open_unix_connection(str(sock))
    greet = await r.readexactly(18)
    assert greet[:16] == b"NBDMAGICIHAVEOPT"
    w.write(struct.pack(">I", flags))
    return r, w


def _option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", nbd.IHAVEOPT, opt, len(data)) + data


async def _reply(r) -> tuple[int, int, bytes]:
    magic, opt, kind, n = struct.unpack(">QIII", await r.readexactly(20))
    assert magic == nbd.OPT_REPLY_MAGIC
    return opt, kind, await r.readexactly(n)


def _request(kind: int, offset: int, length: int, cookie: int = 7) -> bytes:
    return struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, kind, cookie, offset, length)


def test_options_and_commands(tmp_path: Path) -> None:
    async def run() -> None:
        errors: list = []
        server, sock = await _serve(tmp_path, errors)
        # LIST, an unknown option, STRUCTURED_REPLY (refused: simple replies only), then ABORT
        r, w = await _handshake(sock)
        w.write(_option(nbd.OPT_LIST))
        assert (await _reply(r))[1:] == (nbd.REP_SERVER, nbd.server_entry("vol@1"))
        assert (await _reply(r))[1] == nbd.REP_ACK
        w.write(_option(99) + _option(nbd.OPT_STRUCTURED_REPLY))
        assert (await _reply(r))[1] == nbd.REP_ERR_UNSUP and (await _reply(r))[1] == nbd.REP_ERR_UNSUP
        name = b"other"
        w.write(_option(nbd.OPT_INFO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)))
        assert (await _reply(r))[1] == nbd.REP_ERR_UNKNOWN
        w.write(_option(nbd.OPT_ABORT))
        assert (await _reply(r))[1] == nbd.REP_ACK
        assert await r.read() == b""
        w.close()
        # EXPORT_NAME without NO_ZEROES: size, flags and 124 zero bytes; then the commands
        r, w = await _handshake(sock, nbd.FLAG_C_FIXED_NEWSTYLE)
        w.write(_option(nbd.OPT_EXPORT_NAME, b"vol@1"))
        size, flags = struct.unpack(">QH", await r.readexactly(10))
        assert size == SIZE and flags & nbd.TFLAG_READ_ONLY and await r.readexactly(124) == bytes(124)
        w.write(_request(nbd.CMD_READ, 100, 50))
        assert await r.readexactly(16) == nbd.simple_reply(7) and await r.readexactly(50) == DATA[100:150]
        w.write(_request(nbd.CMD_READ, BAD_AT, 10, cookie=8))  # EIO, and no data follows it
        w.write(_request(nbd.CMD_READ, 0, 4, cookie=9))
        assert await r.readexactly(16) == nbd.simple_reply(8, nbd.EIO)
        assert await r.readexactly(16) == nbd.simple_reply(9) and await r.readexactly(4) == DATA[:4]
        w.write(_request(nbd.CMD_READ, SIZE - 1, 2, cookie=10))
        assert await r.readexactly(16) == nbd.simple_reply(10, nbd.EINVAL)
        w.write(_request(nbd.CMD_WRITE, 0, 3, cookie=11) + b"abc")
        assert await r.readexactly(16) == nbd.simple_reply(11, nbd.EPERM)
        w.write(_request(nbd.CMD_FLUSH, 0, 0, cookie=12))
        assert await r.readexactly(16) == nbd.simple_reply(12)
        w.write(_request(nbd.CMD_DISC, 0, 0))
        assert await r.read() == b""
        w.close()
        assert errors == [(BAD_AT, 10, "integrity")]
        # a request without its magic: the connection is dropped
        r, w = await _handshake(sock)
        info = struct.pack(">I", 0) + struct.pack(">H", 0)
        w.write(_option(nbd.OPT_GO, info))
        assert (await _reply(r))[1] == nbd.REP_INFO and (await _reply(r))[1] == nbd.REP_ACK
        w.write(b"\0" * 28)
        assert await r.read() == b""
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(run(), 30))


@pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="nbdinfo (libnbd-bin) not installed")
def test_nbdinfo_lists_and_describes_the_export(tmp_path: Path) -> None:
    async def run() -> tuple[str, str]:
        server, sock = await _serve(tmp_path, [])
        uri = f"nbd+unix:///?socket={sock}"
        listed = await asyncio.to_thread(subprocess.run, ["nbdinfo", "--list", "--json", uri], capture_output=True,
                                         text=True, timeout=20)
        one = await asyncio.to_thread(subprocess.run, ["nbdinfo", "--json", uri], capture_output=True, text=True,
                                      timeout=20)
        server.close()
        await server.wait_closed()
        return listed.stdout, one.stdout

    listed, one = asyncio.run(asyncio.wait_for(run(), 60))
    assert [e["export-name"] for e in json.loads(listed)["exports"]] == ["vol@1"]
    e = json.loads(one)["exports"][0]
    assert e["export-size"] == SIZE and e["is_read_only"] and e["description"] == "test export"
    assert e["block_size_preferred"] == 65536
