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

Run as ``python3 -m tests.security.tarpit_site [--trickle-s S | --loop] CONFIG`` (in place of
``python3 -m replicad run CONFIG``). Everything else is replicad's code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web


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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.security.tarpit_site")
    ap.add_argument("--trickle-s", type=float, default=20.0, help="seconds between the bytes of a fetch's frames")
    ap.add_argument("--loop", action="store_true", help="replay the first frame of each answer for ever")
    ap.add_argument("config")
    args = ap.parse_args(argv)
    if args.loop:
        install_loop()
    else:
        install(args.trickle_s)
    from replicad.cli import main as replicad_main
    return replicad_main(["run", args.config])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
