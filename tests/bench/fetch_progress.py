"""What an honest holder delivers to /v1/peer/fetch under load: the measurement behind the
progress rule's constants (:data:`replicad.peer.transport.FETCH_PROGRESS_S`,
:data:`~replicad.peer.transport.FETCH_PROGRESS_BYTES`).

Run (from a checkout)::

    python -m tests.bench.fetch_progress --size-mib 256 --streams 2 8 --hogs 0 4

A 3-site :class:`~replicad.lab.localcluster.LocalCluster` protects a ``--size-mib`` image (text-like
and random 64 KiB blocks, a third zero: :func:`tests.integration.conftest.write_image`); its
snapshot is committed at every site; site-c is stopped and its store read (offline) for the
snapshot's block digests. Then, for each ``--hogs`` (busy-looping processes started by PID and
killed by PID afterwards, on top of whatever else runs) and each ``--streams`` count, that many
concurrent streams fetch the snapshot's chunks from site-a in requests of
:data:`replicad.site.pull.FETCH_SLICE` digests (as a pull does; a restore asks 8 MiB units), the
client doing nothing with the frames. Per request: the wait for its first complete frame, the
longest gap between two deliveries of complete frames, and the fewest payload bytes delivered
in any whole FETCH_PROGRESS_S window (-1: no request lasted that long), and the slowest
request's rate (its payload bytes over its seconds).
Prints one row per setting with the worst of each, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from replicad.core.manifest import iter_block_digests
from replicad.lab.localcluster import LocalCluster
from replicad.peer.transport import FETCH_PROGRESS_S, PeerClient
from replicad.site.pull import FETCH_SLICE
from replicad.site.runner import load_manifest
from replicad.storage.chunkstore import ChunkStore
from tests.integration.conftest import VOL, write_image


async def _measure(url: str, digests: list[bytes], streams: int) -> dict:
    slices = [digests[i:i + FETCH_SLICE] for i in range(0, len(digests), FETCH_SLICE)]
    slices.reverse()
    first, gaps, windows, rates, total = [], [], [], [], 0
    async with aiohttp.ClientSession() as session:
        client = PeerClient(session, "site-b")

        async def stream() -> None:
            nonlocal total
            while slices:
                part = slices.pop()
                t0 = last = time.monotonic()
                marks: list[tuple[float, int]] = []
                async for frames in client.fetch_frames(url, VOL, 1, part, views=True):
                    now = time.monotonic()
                    if not marks:
                        first.append(now - t0)
                    gaps.append(now - last)
                    last = now
                    n = sum(len(f[2]) for f in frames)
                    marks.append((now, n))
                    total += n
                end = time.monotonic()
                rates.append(sum(n for _, n in marks) / (end - t0))
                # fewest bytes in any whole window of FETCH_PROGRESS_S starting at t0 or just after a delivery
                for s in [t0] + [t for t, _ in marks]:
                    if s + FETCH_PROGRESS_S <= end:
                        windows.append(sum(n for t, n in marks if s < t <= s + FETCH_PROGRESS_S))

        t = time.monotonic()
        await asyncio.gather(*[stream() for _ in range(streams)])
        secs = time.monotonic() - t
    return {"first_s": max(first), "gap_s": max(gaps), "min_window_bytes": min(windows, default=-1),
            "slowest_mb_s": min(rates) / 1e6,
            "mb_s": total / secs / 1e6, "seconds": secs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.fetch_progress")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--streams", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 4], help="busy-looping processes on top")
    ap.add_argument("--work", type=Path, default=None, help="work dir (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="fetch-progress-", dir=args.work)
    c = LocalCluster(Path(tmp.name) / "cluster", interval="3650d", min_copies=2)
    hogs: list[subprocess.Popen] = []
    try:
        write_image(c.sites["site-a"].volume_path(VOL), args.size_mib * 16, random.Random(42))
        c.start_all()
        c.wait_ready(120)
        rep = c.api("site-a", "POST", f"/v1/volumes/{VOL}/snapshot", {}, timeout_s=900)
        c.wait_for("standbys", lambda: all(c.status(s)["volumes"][VOL]["standby_seq"] == rep["seq"]
                                           for s in ("site-b", "site-c")), 900, 0.2)
        root = bytes.fromhex(next(s["root"] for s in c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")
                                  ["snapshots"] if s["seq"] == rep["seq"]))
        c.kill("site-c", signal.SIGTERM)
        store = ChunkStore(c.sites["site-c"].dir / "data" / "chunks")
        digests = sorted({d for d in iter_block_digests(load_manifest(store, root), store.get) if any(d)})
        url = f"http://127.0.0.1:{c.sites['site-a'].peer_port}"
        print(f"{len(digests)} distinct chunks, {args.size_mib} MiB image; window {FETCH_PROGRESS_S:.0f}s")
        print("hogs streams  first-frame-s  longest-gap-s  fewest-bytes-per-window  slowest-request-MB/s  MB/s   "
              "load1")
        for n_hogs in args.hogs:
            while len(hogs) < n_hogs:
                hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            for streams in args.streams:
                r = asyncio.run(_measure(url, digests, streams))
                print(f"{n_hogs:4d} {streams:7d}  {r['first_s']:13.3f}  {r['gap_s']:13.3f}  "
                      f"{r['min_window_bytes']:23d}  {r['slowest_mb_s']:20.1f}  {r['mb_s']:5.0f}  "
                      f"{os.getloadavg()[0]:5.1f}", flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait(10)
        c.stop_all()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
