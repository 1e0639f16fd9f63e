"""Restore from peers alone and while another site's identity holds unread fetches at a holder.

Run (as root, from a checkout)::

    python -m tests.bench.restore_under_flood --size-mib 512 --rounds 3

One 3-site :class:`~replicad.lab.localcluster.LocalCluster` of this checkout's code protects an
image of ``--size-mib`` MiB (half random, half text-like 1 MiB pieces) held at site-b and site-c.
Each round restores its snapshot from both holders with the bench's
:func:`tests.bench.bench.restore_from_peers` (in site-a's name) once alone and once while
``tests.security.fetch_attacker hold`` in site-c's name keeps 20 fetches of the volume's blocks
open and unread at site-b (the order alternating between rounds). Prints one JSON line per
restore: its seconds, the load average, site-b's RSS before it and its peak (VmHWM, reset before
each flood). Bounded: every step has a timeout; the cluster is stopped by PID and its directory
removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replicad.lab.localcluster import LocalCluster
from tests.bench.bench import restore_from_peers

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return -1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="restore-flood-"))
    c = LocalCluster(root / "cluster", volumes=("ehr",), interval="3650d", min_copies=2)
    img = c.sites["site-a"].volume_path("ehr")
    rng = random.Random(3)
    with open(img, "wb") as f:
        for i in range(args.size_mib):
            f.write(rng.randbytes(MIB) if i % 2 else (f"patient {i} {rng.random()}\n" * 40000).encode()[:MIB])
    try:
        c.start_all()
        c.wait_ready(120)
        rep = c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {}, timeout_s=900)

        def snap() -> dict:
            return next(s for s in c.api("site-a", "GET", "/v1/volumes/ehr/snapshots")["snapshots"]
                        if s["seq"] == rep["seq"])
        c.wait_for("holders", lambda: {"site-b", "site-c"} <= set(snap()["holders"]), 900, 0.2)
        root_digest = bytes.fromhex(snap()["root"])
        urls = {s: f"http://127.0.0.1:{c.sites[s].peer_port}" for s in ("site-b", "site-c")}
        pid_b = c.sites["site-b"].proc.pid
        for rnd in range(args.rounds):
            for mode in (("alone", "flood") if rnd % 2 == 0 else ("flood", "alone")):
                work = root / "restore"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                attacker = None
                if mode == "flood":
                    Path(f"/proc/{pid_b}/clear_refs").write_text("5")
                    attacker = subprocess.Popen(
                        [sys.executable, "-m", "tests.security.fetch_attacker", "hold", "--config",
                         str(c.sites["site-c"].config_path), "--target", "site-b", "--volume", "ehr", "--image",
                         str(img), "--connections", "20", "--hold-s", "60"],
                        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(8)  # its fetches open: 2 served and unread, the others refused peer_busy
                try:
                    os.sync()
                    rss = _vm(pid_b, "VmRSS")
                    t0 = time.monotonic()
                    asyncio.run(asyncio.wait_for(restore_from_peers(urls, root_digest, work / "store",
                                                                    work / "target.img"), 900))
                    print(json.dumps({"round": rnd, "mode": mode, "restore_s": round(time.monotonic() - t0, 2),
                                      "load": os.getloadavg()[0], "site_b_rss_mib": rss,
                                      "site_b_peak_mib": _vm(pid_b, "VmHWM")}), flush=True)
                finally:
                    if attacker is not None:
                        attacker.kill()
                        attacker.wait(30)
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
