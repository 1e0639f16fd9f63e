"""The attacker of the fetch-progress tests, holding ONE site (root on its host): that site's own
daemon, a real ``replicad run`` process with its config, key, Raft password and data dir, that
answers every ``/v1/peer/fetch`` as a tarpit. The answer's head and its header document go out
at once; every byte after that (the chunk frames) is sent alone, ``--trickle-s`` seconds apart
(default 20 s: under the peer client's 30 s sock_read timeout, so no read ever times out). A
holder that does this to an honest site's restore stalls it for as long as it likes unless the
client asks for progress, not just for bytes now and then.

Run as ``python3 -m tests.security.tarpit_site [--trickle-s S] CONFIG`` (in place of
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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.security.tarpit_site")
    ap.add_argument("--trickle-s", type=float, default=20.0, help="seconds between the bytes of a fetch's frames")
    ap.add_argument("config")
    args = ap.parse_args(argv)
    install(args.trickle_s)
    from replicad.cli import main as replicad_main
    return replicad_main(["run", args.config])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
