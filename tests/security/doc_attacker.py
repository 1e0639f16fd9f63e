"""The attacker of the request-document tests: a real process holding ONE site's config (its TLS
certificate and key) that keeps an honest site's peer API busy with request documents it never
finishes.

Run as ``python3 -m tests.security.doc_attacker --config SITE.toml --target SITE [options]``; it
keeps ``--connections`` raw HTTP connections open for ``--hold-s`` seconds, each a ``POST`` to
``/v1/peer/ROUTE`` (``--route``, default fetch) declaring ``--declared`` body bytes and sending
all but the last; a connection the target answers (a refusal, or its deadline) is closed and
opened again after ``--pause-s``, so the target nearly always faces ``--connections`` unfinished
documents. Over mutual TLS when the config has ``[tls]`` (the site's own certificate). Prints one
JSON line:
connections opened in all, and the answers by status and error reason. Exits 0 whatever the
target answered (the tests judge the honest site, not the attacker's view).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import ssl
import sys
import time
from pathlib import Path

from replicad.config import load_config
from replicad.core import wire
from replicad.peer.tls import client_context


async def _one(host: str, port: int, ctx: ssl.SSLContext | None, route: str, declared: int,
               until: float, pause_s: float, tally: collections.Counter[str]) -> None:
    """One connection slot: hold an unfinished document until ``until``, reopen when answered."""
    block = b"\x00" * 2**16
    while time.monotonic() < until:
        try:
            r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None)
        except OSError as err:
            tally[f"connect:{type(err).__name__}"] += 1
            await asyncio.sleep(0.1)
            continue
        tally["opened"] += 1
        try:
            w.write(f"POST /v1/peer/{route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {wire.CONTENT_TYPE}\r\n"
                    f"Content-Length: {declared}\r\n\r\n".encode())
            left = declared - 1
            while left > 0:  # all but the last byte (the target may answer and close meanwhile)
                w.write(block[:min(left, len(block))])
                left -= min(left, len(block))
                await asyncio.wait_for(w.drain(), max(0.01, until - time.monotonic()))
            head = await asyncio.wait_for(r.read(600), max(0.01, until - time.monotonic()))
            status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"
            reason = next((x for x in (b"doc_busy", b"doc_too_large", b"doc_too_slow") if x in head), b"")
            tally[f"{status}:{reason.decode()}"] += 1
            await asyncio.sleep(pause_s)  # then the slot opens another connection
        except (asyncio.TimeoutError, TimeoutError):
            tally["held_to_the_end"] += 1
        except (OSError, ssl.SSLError) as err:
            tally[f"cut:{type(err).__name__}"] += 1
        finally:
            w.transport.abort()


async def _run(args: argparse.Namespace) -> dict:
    cfg = load_config(Path(args.config))
    (target,) = [s for s in cfg.sites if s.site_id == args.target]
    url = str(target.peer_url).rstrip("/")
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    ctx = None
    if cfg.tls is not None:
        ctx = client_context(cfg.tls)
        ctx.check_hostname = False  # the attacker does not care who answers
    tally: collections.Counter[str] = collections.Counter()
    until = time.monotonic() + args.hold_s
    await asyncio.gather(*(_one(host, int(port), ctx, args.route, args.declared, until, args.pause_s, tally)
                           for _ in range(args.connections)))
    return {"site": cfg.site_id, "route": args.route, "declared": args.declared, **dict(tally)}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the attack; prints one JSON document."""
    p = argparse.ArgumentParser(prog="doc_attacker")
    p.add_argument("--config", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--route", default="fetch", choices=("fetch", "missing", "snapshot", "chunks"))
    p.add_argument("--declared", type=int, default=8 * 2**20)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--hold-s", type=float, default=12.0)
    p.add_argument("--pause-s", type=float, default=0.2, help="wait after an answer before the next connection")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
