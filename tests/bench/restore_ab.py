"""Restore from peers, before and after a change, paired: the same moment, the same machine.

Run (as root, from a checkout)::

    python -m tests.bench.restore_ab --before 2ea6dbd --rounds 8
    python -m tests.bench.restore_ab --before HEAD~3 --after HEAD --size-mib 256 --rounds 2

On a machine shared with other work, a benchmark run of the old code and one of the new code
taken minutes apart compare the load of those minutes more than the code. Here both run side
by side: the source tree of ``--before`` (``git archive``) and of ``--after`` (a revision, or
by default this checkout's files as they are) each get a 3-site
:class:`~replicad.lab.localcluster.LocalCluster` started from that tree, protecting the same
image (:func:`replicad.lab.demo_volume.build_volume`, ``--size-mib``, seed 42) and holding its
first snapshot at site-b and site-c. Each round restores that snapshot from both holders into a
new file with the bench's :func:`tests.bench.bench.restore_from_peers` (a fresh store, the
daemon's ``restore_from_holders``, O5 included) once with each tree's code against its own
cluster, each in its own process after an ``os.sync()``, the order alternating between rounds,
then times the floor ``dd if=IMAGE of=TARGET bs=8M oflag=direct conv=fsync``. Prints the
medians, the ratios to dd, how many rounds the new code won, and the load average; writes every
sample to ``--json-out``. Clusters are stopped through their helper process (SIGTERM: each stops
its sites by PID); every step is bounded in time.

Beside each restore: the CPU seconds of the restoring process (``restorer``: ``process_time`` of
the restore itself, after the child's imports; ``restorer_all``: ``getrusage`` of the whole child,
~0.7 s of imports included) and of each holder (``/proc/PID/stat``, user + system) over it; the
medians are also printed per GiB of image. ``--after-only`` runs one cluster
(the ``--after`` tree) and no "before" restores; ``--one-cluster`` runs the ``--after`` tree's
cluster only and both trees' restores against it (fair for a change of the restoring side
only: the holders' code is the after tree's for both); ``--lean`` removes, once the holders hold the
snapshot, site-a's daemon (stopped), image and store and the holders' standby images (a restore
needs only the holders' stores): at 4 GiB one cluster then takes ~11 GB instead of ~21 GB;
``--no-standby`` sets ``standby = false`` on the volume (the replicas hold the snapshot's chunks,
no standby image): at 16 GiB the peak while the snapshot replicates falls from ~59 GB to ~42 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CLUSTER = r'''
import json, os, shutil, signal, subprocess, sys, threading
from pathlib import Path
tree, image, out, lean = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "lean"
standby = sys.argv[5] != "nostandby"
sys.path.insert(0, tree)
from replicad.lab.localcluster import LocalCluster
stop = threading.Event()
ready = False


def _term(*_):
    stop.set()
    if not ready:  # still setting up (building, replicating): stop the sites now, through the finally below
        raise SystemExit(1)


signal.signal(signal.SIGTERM, _term)
c = LocalCluster(out.parent / "cluster", volumes=("ehr",), interval="3650d", min_copies=2,
                 extra_volume_toml="" if standby else "standby = false")
subprocess.run(["cp", "--sparse=always", str(image), str(c.sites["site-a"].volume_path("ehr"))], check=True)
try:
    c.start_all()
    c.wait_ready(120)
    rep = c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {}, timeout_s=900)
    if standby:
        c.wait_for("standbys", lambda: all(c.status(s)["volumes"]["ehr"]["standby_seq"] == rep["seq"]
                                           for s in ("site-b", "site-c")), 900, 0.1)
    else:  # no standby images: the snapshot held (committed with both holders) is all a restore needs
        c.wait_for("holders", lambda: {"site-b", "site-c"} <= set(next(
            s["holders"] for s in c.api("site-a", "GET", "/v1/volumes/ehr/snapshots")["snapshots"]
            if s["seq"] == rep["seq"])), 900, 0.1)
    snaps = c.api("site-a", "GET", "/v1/volumes/ehr/snapshots")["snapshots"]
    root = next(s["root"] for s in snaps if s["seq"] == rep["seq"])
    urls = {s: f"http://127.0.0.1:{c.sites[s].peer_port}" for s in ("site-b", "site-c")}
    if lean:  # the holders' stores are all a restore needs
        c.kill("site-a", signal.SIGTERM)
        shutil.rmtree(c.sites["site-a"].dir / "data")
        for s in ("site-a", "site-b", "site-c"):
            c.sites[s].volume_path("ehr").unlink(missing_ok=True)
    pids = {s: c.sites[s].proc.pid for s in urls}
    ready = True
    out.write_text(json.dumps({"urls": urls, "root": root, "pids": pids}))
    stop.wait(3 * 3600)
finally:
    c.stop_all()
'''

_RESTORE = r'''
import asyncio, json, sys, time
from pathlib import Path
tree, cfg, work = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
sys.path.insert(0, tree)
from tests.bench.bench import restore_from_peers
cpu0 = time.process_time()  # after the imports: the restore's own CPU, not the interpreter's start
out = asyncio.run(restore_from_peers(cfg["urls"], bytes.fromhex(cfg["root"]), work / "store", work / "target.img"))
out["cpu_s"] = time.process_time() - cpu0
print(json.dumps(out))
'''


def export_tree(rev: str, dest: Path) -> Path:
    """``git archive rev`` of this checkout unpacked into ``dest``. Raises CalledProcessError."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True, timeout=120)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=120)
    return dest


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``); 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_restore(tree: Path, cfg: Path, work: Path, timeout_s: float) -> tuple[float, dict[str, float]]:
    """One restore with ``tree``'s code against the cluster described by ``cfg``: its seconds and
    the CPU seconds over it of the restoring process (``restorer``: the restore itself, from
    after its imports; ``restorer_all``: the whole process, imports included) and of each holder."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    pids = json.loads(cfg.read_text()).get("pids", {})
    try:
        os.sync()
        before = {h: proc_cpu_s(p) for h, p in pids.items()}
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = subprocess.run([sys.executable, "-c", _RESTORE, str(tree), str(cfg), str(work)], capture_output=True,
                             text=True, timeout=timeout_s, cwd=str(tree))
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise RuntimeError(f"restore with {tree} failed: {res.stderr[-2000:]}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        cpu = {"restorer": float(out["cpu_s"]), "restorer_all": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime}
        cpu.update({h: proc_cpu_s(p) - before[h] for h, p in pids.items()})
        return float(out["total"]), cpu
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=None, help="git revision of the code before the change")
    ap.add_argument("--after-only", action="store_true", help="one cluster, the --after tree's; no before restores")
    ap.add_argument("--one-cluster", action="store_true",
                    help="both trees' restores against the after tree's cluster (a change of the restoring side only)")
    ap.add_argument("--lean", action="store_true",
                    help="once the snapshot is held, remove site-a and the standby images (disk: 4 GiB in ~11 GB)")
    ap.add_argument("--no-standby", action="store_true",
                    help="the volume without standby images (standby = false): 16 GiB in ~42 GB at the peak instead of ~59 GB")
    ap.add_argument("--after", default=None, help="git revision after (default: this checkout's files)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--image", type=Path, default=None,
                    help="an image built before by build_volume (seed 42) of --size-mib, used instead of building one")
    ap.add_argument("--step-timeout-s", type=float, default=900.0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.after_only and args.before is None:
        ap.error("--before is required unless --after-only")
    sys.path.insert(0, str(REPO))
    from replicad.lab.demo_volume import build_volume

    work = Path(tempfile.mkdtemp(prefix="replicad-restore-ab-", dir="/var/tmp"))
    helpers: dict[str, subprocess.Popen] = {}
    samples: dict[str, list[float]] = {"before": [], "after": [], "dd": []}
    cpus: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    loads: list[float] = []
    try:
        trees = {} if args.after_only else {"before": export_tree(args.before, work / "before")}
        trees["after"] = export_tree(args.after, work / "after") if args.after else REPO
        if args.image is not None:
            if args.image.stat().st_size != args.size_mib * 2**20:
                raise SystemExit(f"{args.image} is not {args.size_mib} MiB")
            image = args.image
        else:
            image = build_volume(work / "build", work / "image.img", size_bytes=args.size_mib * 2**20,
                                 rng=random.Random(42)).path
        shutil.rmtree(work / "build", ignore_errors=True)
        cfgs = {}
        for name, tree in trees.items():
            if args.one_cluster and name == "before":
                continue
            (work / f"c-{name}").mkdir()
            cfgs[name] = work / f"c-{name}" / "cluster.json"
            with open(work / f"c-{name}.log", "w") as log:
                helpers[name] = subprocess.Popen([sys.executable, "-c", _CLUSTER, str(tree), str(image),
                                                  str(cfgs[name]), "lean" if args.lean else "full",
                                                  "nostandby" if args.no_standby else "standby"], cwd=str(tree),
                                                 stdout=subprocess.DEVNULL, stderr=log)
        if args.one_cluster:
            cfgs["before"] = cfgs["after"]
        deadline = time.monotonic() + args.step_timeout_s
        while not all(c.exists() for c in cfgs.values()):
            for name, p in helpers.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} cluster ended: {(work / f'c-{name}.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the clusters did not hold their first snapshot in time")
            time.sleep(0.5)
        for k in range(args.rounds):
            for name in (("before", "after") if k % 2 == 0 else ("after", "before")):
                if name in trees:
                    secs, cpu = one_restore(trees[name], cfgs[name], work / "restore", args.step_timeout_s)
                    samples[name].append(secs)
                    cpus[name].append(cpu)
            os.sync()
            t0 = time.perf_counter()
            subprocess.run(["dd", f"if={image}", f"of={work / 'dd.img'}", "bs=8M", "oflag=direct", "conv=fsync",
                            "status=none"], check=True, timeout=args.step_timeout_s)
            samples["dd"].append(time.perf_counter() - t0)
            (work / "dd.img").unlink()
            loads.append(os.getloadavg()[0])
            cpu_txt = "; ".join(f"{n} cpu " + " ".join(f"{h} {v:.2f}" for h, v in cpus[n][-1].items())
                                for n in trees)
            print(f"round {k}: " + " ".join(f"{n} {samples[n][-1]:.3f}s" for n in trees) +
                  f" dd {samples['dd'][-1]:.3f}s load {loads[-1]:.1f}; {cpu_txt}", flush=True)
    finally:
        for p in helpers.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in helpers.values():
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    txt = ", ".join(f"{n} {med[n]:.3f}s ({med['dd'] / med[n]:.2f}x of dd)" for n in ("before", "after") if n in med)
    if "before" in med:
        txt += f"; after faster in {sum(a < b for a, b in zip(samples['after'], samples['before']))} of {args.rounds}"
    ratios = " ".join(f"{d / a:.2f}" for a, d in zip(samples["after"], samples["dd"]))
    print(f"medians: {txt}; dd {med['dd']:.3f}s; after / dd per round {ratios}; load {min(loads):.1f}-{max(loads):.1f}")
    for n in trees:
        cpu_med = {h: statistics.median(c[h] for c in cpus[n]) for h in cpus[n][0]}
        gib = args.size_mib / 1024
        print(f"{n}: CPU-s per restore (medians) " + " ".join(f"{h} {v:.2f}" for h, v in cpu_med.items()) +
              "; per GiB of image " + " ".join(f"{h} {v / gib:.2f}" for h, v in cpu_med.items() if h != "restorer_all") +
              f", all but the imports {sum(v for h, v in cpu_med.items() if h != 'restorer_all') / gib:.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "samples": samples,
                                             "cpu_s": cpus, "load": loads}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
