"""What one tarpit REPLICA does to a primary's shipping and to the other, honest replica.

Run (from a checkout)::

    python -m tests.bench.ship_tarpit --cycles 40 --trickle-s 20

A 3-site :class:`~replicad.lab.localcluster.LocalCluster` (site-a primary, ``min_copies`` 2)
protects a 4 MiB image; its first snapshot is committed at every site. Then site-b's daemon
is restarted as :mod:`tests.security.tarpit_site` ``--ship`` (the replies of ``/v1/peer/missing``,
``chunks`` and ``snapshot`` one byte per ``--trickle-s``) and ``--cycles`` snapshots are taken at
site-a (2 blocks overwritten before each, through the admin API, one after the other). Per
cycle: its wall time (the API call), whether it committed, its holders; after the last one,
the seq site-c (the honest replica) holds and site-a's open TCP connections to site-b's peer
port (``ss``). Prints one row per cycle and a summary: cycle seconds (median, max), cycles
committed with site-c a holder, the connections held. The cluster's processes are stopped by
PID, its directory removed. ``--honest``: the same with site-b left honest (the baseline).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.tarpit_site import restart_as_tarpit


def connections(port: int) -> int:
    """Established TCP connections to 127.0.0.1:``port`` (both ends counted once: by dport)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"], capture_output=True,
                         text=True, timeout=10).stdout
    return len([line for line in out.splitlines() if line.strip()])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.ship_tarpit")
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--trickle-s", type=float, default=20.0)
    ap.add_argument("--honest", action="store_true", help="leave site-b honest (the baseline)")
    ap.add_argument("--keep-log", default=None, help="copy site-a's log here at the end")
    ap.add_argument("--workdir", default=None, help="parent of the cluster's directory (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ship-tarpit-", dir=args.workdir) as tmp:
        c = LocalCluster(Path(tmp) / "cluster", interval="1h", min_copies=2)
        try:
            img = c.sites["site-a"].volume_path(VOL)
            write_image(img, 64, random.Random(3))
            c.start_all()
            c.wait_ready(90)
            snapshot(c, "site-a")
            if not args.honest:
                restart_as_tarpit(c, "site-b", "ship", args.trickle_s)
            c.wait_for("the tarpit site-b serving", lambda: c.status("site-b"), 60)
            rng = random.Random(5)
            rows = []
            t_start = time.monotonic()
            for k in range(args.cycles):
                overwrite_blocks(img, rng.sample(range(64), 2), rng)
                t0 = time.monotonic()
                try:
                    rep = snapshot(c, "site-a")
                    err = ""
                except Exception as exc:  # noqa: BLE001 - a bench row, not a test
                    rep, err = {}, f"{exc.__class__.__name__}: {str(exc)[:80]}"
                dt = time.monotonic() - t0
                rows.append((dt, rep.get("committed", False), "site-c" in rep.get("holders", [])))
                print(f"cycle {k + 1:3d} seq {rep.get('seq', '-')!s:>4} {dt:6.2f}s committed={rep.get('committed')} "
                      f"holders={','.join(rep.get('holders', []))} {err}", flush=True)
            wall = time.monotonic() - t_start
            seq_c = c.status("site-c")["volumes"][VOL].get("standby_seq")
            held = connections(c.sites["site-b"].peer_port)
            times = [r[0] for r in rows]
            print(f"\n{args.cycles} cycles in {wall:.1f}s, cycle median {statistics.median(times):.2f}s max "
                  f"{max(times):.2f}s; committed {sum(r[1] for r in rows)}, with site-c a holder "
                  f"{sum(r[2] for r in rows)}; site-c standby_seq {seq_c}; connections to site-b's peer port: "
                  f"{held}")
            log = c.sites["site-a"].log_path.read_text(errors="replace")
            named = [line for line in log.splitlines() if " WARNING " in line and "site-b" in line]
            print(f"site-a WARNING lines naming site-b: {len(named)}; the first: {named[0][:300] if named else '-'}")
            if args.keep_log:
                Path(args.keep_log).write_text(log)
        finally:
            c.stop_all()


if __name__ == "__main__":
    main()
