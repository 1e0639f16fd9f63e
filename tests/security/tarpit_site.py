"""The attacker of the fetch-progress tests, holding ONE site (root on its host): that site's own
daemon, a real ``replicad run`` process with its config, key, Raft password and data dir, that
answers every ``/v1/peer/fetch`` as a tarpit. The answer's head and its header document go out
at once; every byte after that (the chunk frames) is sent alone, ``--trickle-s`` seconds apart
(default 20 s: under the peer client's 30 s sock_read timeout, so no read ever times out). A
holder that does this to an honest site's restore stalls it for as long as it likes unless the
client asks for progress, not just for bytes now and then.

With ``--loop`` it sends instead the first chunk frame of its answer (real, intact: read and
verified by replicad's own code) again and again at ~256 KiB/s (2.5x the client's progress
rule), for ever: complete valid frames, but never the others asked for.

It is a tarpit REPLICA too: the answers of the requests a primary's ship makes of it
(``/v1/peer/missing``, ``/v1/peer/chunks``, ``/v1/peer/snapshot``) send their head at once and
then their body (the reply document, computed by replicad's own handler) one byte every
``--trickle-s`` seconds. With ``--ship`` it is only that (fetches answered honestly); with
``--loop`` only the looping holder above.

Run as ``python3 -m tests.security.tarpit_site [--trickle-s S | --loop | --ship] CONFIG`` (in
place of ``python3 -m replicad run CONFIG``). Everything else is replicad's code.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from aiohttp import web


def restart_as_tarpit(c: Any, site: str, mode: str = "trickle", trickle_s: float = 20.0) -> None:
    """Stop ``site``'s daemon of the :class:`~replicad.lab.localcluster.LocalCluster` ``c``
    (SIGTERM, by PID) and start it again as this module on the same config and data dir
    (``mode`` "trickle": its fetch answers and the replies of a ship's requests one byte per
    ``trickle_s``; "loop": its fetch answers' first frame for ever; "ship": only the replies of
    a ship's requests one byte per ``trickle_s``); the cluster
    stops it by PID like any of its sites."""
    c.kill(site, signal.SIGTERM)
    how = {"loop": ["--loop"], "ship": ["--ship", "--trickle-s", str(trickle_s)]}.get(
        mode, ["--trickle-s", str(trickle_s)])
    c.start(site, module="tests.security.tarpit_site", args=how)


def install(trickle_s: float) -> None:
    """Replace :meth:`aiohttp.web.StreamResponse.write` so that the answers of /v1/peer/fetch
    trickle (one byte every ``trickle_s`` seconds after the first write); all else unchanged."""
    original = web.StreamResponse.write

    async def write(self: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        req = getattr(self, "_req", None)
        if req is None or req.path != "/v1/peer/fetch":
            return await original(self, data)
        n = getattr(self, "_tarpit_writes", 0)
        self._tarpit_writes = n + 1  # type: ignore[attr-defined]
        if n == 0:  # the header document: at once
            return await original(self, data)
        view = memoryview(data).cast("B")
        for i in range(len(view)):
            await original(self, bytes(view[i:i + 1]))
            await asyncio.sleep(trickle_s)

    web.StreamResponse.write = write  # type: ignore[method-assign]


def install_loop(rate: float = 256 * 1024) -> None:
    """Replace :meth:`aiohttp.web.StreamResponse.write` so that the answers of /v1/peer/fetch
    send their header document, then their first chunk frame again and again at ``rate``
    bytes/s, never ending; all else unchanged."""
    from replicad.core import wire

    original = web.StreamResponse.write

    async def write(self: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        req = getattr(self, "_req", None)
        if req is None or req.path != "/v1/peer/fetch":
            return await original(self, data)
        head = getattr(self, "_loop_head", None)
        if head is None:  # the header document: at once
            self._loop_head = bytes(data)  # type: ignore[attr-defined]
            return await original(self, data)
        splitter = wire.FrameSplitter("chunks")
        splitter.feed(head)
        d, codec, payload = splitter.feed(bytes(data))[0]
        frame = wire.encode_frame(d, codec, bytes(payload))
        while True:
            await original(self, frame)
            await asyncio.sleep(len(frame) / rate)

    web.StreamResponse.write = write  # type: ignore[method-assign]


SHIP_PATHS = ("/v1/peer/missing", "/v1/peer/chunks", "/v1/peer/snapshot")


def install_ship(trickle_s: float) -> None:
    """Replace :meth:`aiohttp.web.Response.write_eof` so that the reply documents of the ship's
    requests (SHIP_PATHS) go out one byte every ``trickle_s`` seconds after their head (the
    first byte at once); all else unchanged."""
    original = web.Response.write_eof

    async def write_eof(self: web.Response, data: bytes = b"") -> None:
        req = getattr(self, "_req", None)
        body = self.body
        if req is None or req.path not in SHIP_PATHS or not isinstance(body, (bytes, bytearray)) or self._eof_sent:
            return await original(self, data)
        view = memoryview(bytes(body))
        for i in range(len(view)):
            if i:
                await asyncio.sleep(trickle_s)
            await web.StreamResponse.write(self, bytes(view[i:i + 1]))
        await web.StreamResponse.write_eof(self)

    web.Response.write_eof = write_eof  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.security.tarpit_site")
    ap.add_argument("--trickle-s", type=float, default=20.0,
                    help="seconds between the bytes of a fetch's frames and of a ship's replies")
    ap.add_argument("--loop", action="store_true", help="replay the first frame of each answer for ever")
    ap.add_argument("--ship", action="store_true",
                    help="a tarpit replica: trickle the replies of /v1/peer/missing, chunks and snapshot")
    ap.add_argument("config")
    args = ap.parse_args(argv)
    if args.loop:
        install_loop()
    elif not args.ship:
        install(args.trickle_s)
    if not args.loop:
        install_ship(args.trickle_s)
    from replicad.cli import main as replicad_main
    return replicad_main(["run", args.config])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
