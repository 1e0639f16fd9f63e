"""The attacker of the fetch tests: a real process holding ONE site's config (and its data dir)
that asks honest holders' ``/v1/peer/fetch`` in that site's name with code of its own.

Run as ``python3 -m tests.security.fetch_attacker MODE --config SITE.toml --target SITE [options]``;
it prints one JSON line per request with what the target answered, and exits 0 whatever the
target answered (the tests judge the honest site, not the attacker's view).

Modes:

* ``hold``: ``--connections`` raw HTTP connections, each a ``/v1/peer/fetch`` of ``--volume`` asking
  every distinct block digest of ``--image`` (blocks of ``--block-size``, all-zero ones left out),
  opened one after the other and never read for ``--hold-s`` seconds; then the first bytes each
  target sent are read (its status line: 200 for a fetch it serves, 503 ``peer_busy``...) and the
  connections closed (reset). With ``--duplicates`` each request asks the first digest 4,096 times.
* ``read``: ``--digest`` (hex, repeatable) fetched with the project's own client under ``--volume``;
  prints the chunks received or the error code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import blake3

from replicad.config import load_config
from replicad.core import wire
from replicad.core.errors import ReplicadError
from replicad.peer.transport import PeerClient


def block_digests(image: Path, block_size: int) -> list[bytes]:
    """The distinct BLAKE3 digests of the non-zero blocks of ``image``, in order."""
    out: dict[bytes, None] = {}
    with open(image, "rb") as f:
        while block := f.read(block_size):
            if any(block):
                out.setdefault(blake3.blake3(block).digest(), None)
    return list(out)


async def _hold(args: argparse.Namespace, host: str, port: int, site_id: str) -> list[dict]:
    digests = block_digests(Path(args.image), args.block_size)
    if args.duplicates:
        digests = [digests[0]] * wire.MAX_DIGESTS_PER_DOC
    doc = wire.encode_doc("fetch", volume=args.volume, epoch=0, digests=digests, **{"from": site_id})
    conns = []
    for _ in range(args.connections):
        r, w = await asyncio.open_connection(host, port)
        w.write(f"POST /v1/peer/fetch HTTP/1.1\r\nHost: {host}\r\nContent-Type: {wire.CONTENT_TYPE}\r\n"
                f"Content-Length: {len(doc)}\r\n\r\n".encode() + doc)
        await w.drain()
        conns.append((r, w))
    print(json.dumps({"opened": len(conns), "digests": len(digests)}), flush=True)
    await asyncio.sleep(args.hold_s)
    out = []
    for r, w in conns:
        try:
            head = await asyncio.wait_for(r.read(200), 5)
        except (asyncio.TimeoutError, ConnectionError):
            head = b""
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        out.append({"status": status, "busy": b"peer_busy" in head})
        w.transport.abort()  # a reset, as a client that goes away
    return out


async def _read(args: argparse.Namespace, url: str, site_id: str) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        client = PeerClient(session, site_id)
        got = 0
        try:
            async for frames in client.fetch_frames(url, args.volume, 0, [bytes.fromhex(d) for d in args.digest]):
                got += len(frames)
        except ReplicadError as err:
            return [{"volume": args.volume, "error": err.code, "reason": err.evidence.get("reason"), "chunks": got}]
        return [{"volume": args.volume, "error": None, "chunks": got}]


async def _run(args: argparse.Namespace) -> list[dict]:
    cfg = load_config(Path(args.config))
    (target,) = [s for s in cfg.sites if s.site_id == args.target]
    url = str(target.peer_url).rstrip("/")
    if args.mode == "hold":
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        return await _hold(args, host, int(port), cfg.site_id)
    return await _read(args, url, cfg.site_id)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the attack; prints one JSON document per line of results."""
    p = argparse.ArgumentParser(prog="fetch_attacker")
    p.add_argument("mode", choices=("hold", "read"))
    p.add_argument("--config", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--volume", required=True)
    p.add_argument("--image")
    p.add_argument("--block-size", type=int, default=2**20)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--hold-s", type=float, default=10.0)
    p.add_argument("--duplicates", action="store_true")
    p.add_argument("--digest", action="append", default=[])
    args = p.parse_args(argv)
    for line in asyncio.run(_run(args)):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
