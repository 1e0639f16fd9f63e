"""How long a primary of many volumes takes to commit every volume's first snapshot, paired A/B
of two checkouts (the primary's bound on its chunk streams to one peer, CHUNK_SLOTS_PER_PEER,
against the code before it).

Run (from a checkout; BEFORE and AFTER are directories holding a ``replicad`` package, e.g.
``git archive COMMIT | tar -x -C DIR``)::

    python -m tests.bench.ship_slots --before BEFORE --after AFTER --rounds 3 --volumes 12 [--held]

Each run is a fresh 3-site :class:`~replicad.lab.localcluster.LocalCluster` whose daemons run
that checkout: site-a the primary of ``--volumes`` volumes of ``--blocks`` random 64 KiB blocks,
``min_copies`` 3 (every data site), ``--interval`` (default 5 s: every volume's first cycle is
due at once, one interval after the cluster is ready). ``--held``: site-b is stopped (SIGSTOP)
from the moment the cluster is ready until site-a has shipped every volume to site-c (at most
``--hold-max-s``), so that every ship to site-b reaches it at once (a replica pausing, or one
back from a short outage). Measured from ready: seconds until every volume has a committed
snapshot (``first_all_s``), the CPU seconds of the three daemons meanwhile (utime + stime from
/proc), cycles not committed, chunk streams refused at site-b and site-c
(``replicad_peer_doc_refused_total{route="chunks"}``), streams that waited at site-a for a place
(``replicad_ship_slot_waits_total``, the AFTER code only), and the 1-minute load average at the
start and the end of the run. Runs alternate BEFORE and AFTER. One JSON line per run, then a
summary per side (median, min, max). Processes are stopped by PID; the directories removed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from replicad.core.errors import UnavailableError
from replicad.lab.localcluster import LocalCluster


def metric(c: LocalCluster, site: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on ``site``'s /metrics whose labels include ``labels``."""
    text = urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def cpu_s(c: LocalCluster) -> float:
    """User + system CPU seconds of the cluster's daemon processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for s in c.sites.values():
        if s.proc is not None and s.proc.poll() is None:
            fields = Path(f"/proc/{s.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run(code: Path, root: Path, volumes: int, blocks: int, interval: str, held: bool, hold_max_s: float) -> dict:
    """One run of ``code``'s daemons (see the module's docstring); its measures."""
    names = tuple(f"v{i:02d}" for i in range(volumes))
    c = LocalCluster(root, volumes=names, interval=interval, min_copies=3)
    c.code_dir = code
    rng = random.Random(17)
    for v in names:
        c.sites["site-a"].volume_path(v).write_bytes(rng.randbytes(blocks * 65536))
    try:
        c.start_all()
        c.wait_ready(120)
        load0 = os.getloadavg()[0]
        t0, cpu0 = time.monotonic(), cpu_s(c)
        if held:
            c.kill("site-b", signal.SIGSTOP)
            try:
                c.wait_for("site-a's ships to site-c", lambda: all(
                    metric(c, "site-a", "replicad_ship_sent_bytes_total", volume=v, peer="site-c") > 0
                    for v in names), hold_max_s, 0.1)
            except UnavailableError:
                pass
            finally:
                c.kill("site-b", signal.SIGCONT)
        first: dict[str, float] = {}

        def all_committed() -> bool:
            st = c.status("site-a")["volumes"]
            for v in names:
                if v not in first and st[v].get("newest_committed") is not None:
                    first[v] = time.monotonic() - t0
            return len(first) == len(names)

        c.wait_for("every volume's first commit", all_committed, 600, 0.1)
        t_all, cpu1 = time.monotonic() - t0, cpu_s(c)
        return {"code": str(code), "volumes": volumes, "held": held, "first_all_s": round(t_all, 2),
                "first_median_s": round(statistics.median(first.values()), 2), "cpu_s": round(cpu1 - cpu0, 2),
                "not_committed": metric(c, "site-a", "replicad_snapshot_cycles_total", outcome="not_committed"),
                "refused_b": metric(c, "site-b", "replicad_peer_doc_refused_total", route="chunks"),
                "refused_c": metric(c, "site-c", "replicad_peer_doc_refused_total", route="chunks"),
                "slot_waits": metric(c, "site-a", "replicad_ship_slot_waits_total"),
                "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    finally:
        c.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.ship_slots")
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--after", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--volumes", type=int, default=12)
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--interval", default="5s")
    ap.add_argument("--held", action="store_true", help="hold site-b (SIGSTOP) until site-c got every ship")
    ap.add_argument("--hold-max-s", type=float, default=6.0)
    ap.add_argument("--workdir", default=None, help="parent of the clusters' directories (default: a temp dir)")
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="ship-slots-", dir=args.workdir) as tmp:
        for r in range(args.rounds):
            for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                code = (args.before if side == "before" else args.after).resolve()
                row = run(code, Path(tmp) / f"{side}{r}", args.volumes, args.blocks, args.interval, args.held,
                          args.hold_max_s)
                row["side"] = side
                rows[side].append(row)
                print(json.dumps(row), flush=True)
    for side, got in rows.items():
        if not got:
            continue
        summary = {"side": side, "runs": len(got)}
        for key in ("first_all_s", "first_median_s", "cpu_s", "not_committed", "refused_b", "slot_waits"):
            values = [row[key] for row in got]
            summary[key] = [statistics.median(values), min(values), max(values)]
        summary["load"] = [min(row["load"][0] for row in got), max(row["load"][1] for row in got)]
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
