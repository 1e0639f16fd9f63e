"""The RPO row of issue 15: the shortest snapshot interval that keeps up with 1 % churn per minute
on a 16 GiB volume, per source (``reflink``, ``qemu``, and ``file`` beside them).

Run through the benchmark (as root; ``xfsprogs``, ``qemu-utils``, ``qemu-system-common``,
``python3-libnbd``)::

    python -m tests.bench.bench --rpo                          # 16 GiB, reflink,qemu,file
    python -m tests.bench.bench --rpo --rpo-gib 2 --rpo-window-s 60 --rpo-sources reflink

Per source, a **real local cluster of two data sites** (``min_copies = 2``: a snapshot commits
once the replica stored it, so the replica holds every committed snapshot; its standby image is
brought to each clean one): two sites because a third 16 GiB standby image does not fit beside
the others on the reference machine's disk, and the RPO a site sees is the primary's cycle plus
shipping to a replica plus the replica's apply, which two sites already include. The volume:
``--rpo-gib`` GiB of distinct text-like 64 KiB blocks (``bench.write_text_image``) —

* ``reflink``: the image on a loop-mounted XFS (``reflink=1``), the site's volume a symlink to it;
* ``qemu``: the raw image as the data file of a qcow2 metadata sidecar (README's recipe) served
  by a ``qemu-storage-daemon`` started here; the writer writes through its NBD export;
* ``file``: the raw image in the site's directory, read whole each cycle.

The first (full) snapshot is taken on demand and applied at the replica's standby. Then a
**writer process** rewrites ``--rpo-churn-pct`` (default 1) % of the volume's 64 KiB blocks per
minute at random places, spread evenly over time (one block every 60 / (0.01 * blocks) s: 43.7
writes/s at 16 GiB), with an fdatasync (qemu: an NBD flush) every second, as a guest would;
and the daemon runs its own cycles at each interval of ``--rpo-intervals`` in turn (ascending;
the primary's config is rewritten and reloaded with SIGHUP between them). Each interval runs for
``--rpo-window-s`` (default 300 s) after ``--rpo-warmup-s`` (30 s, not counted), while the
primary's and the replica's status are polled every 0.5 s:

* cycle durations: ``cycle_s`` of each cycle report (scan + ship to the replica + Raft commit),
  and per cycle its parts in the JSON (``parts``: scan, ship, commit, bytes shipped, and the
  source's own: ``clone_s``, ``map_s`` and ``extents`` of reflink, ``view_s`` of qemu);
* held lag: the replica's age of the newest committed snapshot (which it holds: O2), the RPO a
  failover to it would see;
* applied lag: the age of the snapshot the replica's standby holds.

**Keeps up** = at least 5 cycles, the 95th percentile of the cycle durations below the interval,
no failed cycle, and the applied lag bounded: its maximum over the window's last third is at most
its maximum over the first third plus one interval. An interval whose median cycle is already at
or above it after 5 cycles is cut short ("behind"): the daemon then runs cycles back to back and
the RPO is the cycle time, not the interval. ``--rpo-all`` runs every interval; by default a
source stops at the first interval that keeps up (the shortest: the list is ascending).

Disk: per source the image (``--rpo-gib``), the replica's standby image (as large) and two stores
(the text compresses ~5x); the work dir is removed after each source. Processes (sites, QSD,
writer) are stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from replicad.lab.localcluster import LocalCluster

BLOCK_BYTES = 65536
VOL = "ehr"
POLL_S = 0.5
MIN_CYCLES = 5
SOURCE_PARTS = ("mode", "clone_s", "map_s", "extents", "read_blocks", "view_s")
"""Fields of a cycle report's ``source`` kept per cycle in the results (what each source spent)."""


def rpo_writer(kind: str, target: str, size_bytes: str, blocks_per_s: str, seed: str, progress: str) -> None:
    """Writer process (run by :func:`rpo_run` as ``python -c``): rewrite one random 64 KiB block
    of ``target`` every ``1 / blocks_per_s`` seconds on an absolute schedule, text-like content,
    with an fdatasync (``kind == "qemu"``: ``target`` is an NBD unix socket, an NBD flush) every
    second; writes the count done into ``progress`` every second. Runs until SIGTERM."""
    rate = float(blocks_per_s)
    n_blocks = int(size_bytes) // BLOCK_BYTES
    rng = random.Random(int(seed))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    if kind == "qemu":
        import nbd

        h = nbd.NBD()
        h.set_export_name("disk")
        h.connect_unix(target)
        write, flush = (lambda data, off: h.pwrite(data, off)), h.flush
    else:
        fd = os.open(target, os.O_RDWR)
        write, flush = (lambda data, off: os.pwrite(fd, data, off)), (lambda: os.fdatasync(fd))
    t0 = time.monotonic()
    done, last_flush = 0, t0
    while not stop:
        due = t0 + done / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
            continue
        b = rng.randrange(n_blocks)
        line = f"edit block {b} value {rng.randrange(10**9)} at {done}: reviewed\n".encode()
        write((line * (BLOCK_BYTES // len(line) + 1))[:BLOCK_BYTES], b * BLOCK_BYTES)
        done += 1
        if now - last_flush >= 1.0:
            flush()
            last_flush = now
            Path(progress + ".tmp").write_text(f"{done} {now - t0:.3f}\n")
            os.replace(progress + ".tmp", progress)
    flush()


def _p95(vals: list[float]) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def judge_window(interval_s: float, cycles: list[float], failed: int,
                 applied: list[tuple[float, float]], window_s: float) -> tuple[bool, str]:
    """Keeps up (module docstring)? ``cycles``: cycle seconds; ``applied``: (t since window start
    in s, applied lag in s) samples. Returns (verdict, why)."""
    if len(cycles) < MIN_CYCLES:
        return False, f"{len(cycles)} cycles (< {MIN_CYCLES})"
    if failed:
        return False, f"{failed} failed cycles"
    if _p95(cycles) >= interval_s:
        return False, f"p95 cycle {_p95(cycles):.2f}s >= {interval_s:g}s"
    first = [lag for t, lag in applied if t < window_s / 3]
    last = [lag for t, lag in applied if t >= 2 * window_s / 3]
    if not first or not last:
        return False, "no applied-lag samples"
    if max(last) > max(first) + interval_s:
        return False, f"applied lag grew: {max(first):.1f}s -> {max(last):.1f}s"
    return True, "keeps up"


def _set_interval(c: LocalCluster, site: str, interval_s: float) -> None:
    """Rewrite ``interval = ...`` of ``site``'s volume and reload it (SIGHUP, by PID)."""
    path = c.sites[site].config_path
    lines = [f'interval = "{interval_s:g}s"' if ln.startswith("interval = ") else ln
             for ln in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    proc = c.sites[site].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGHUP)


def _measure(c: LocalCluster, interval_s: float, args: argparse.Namespace, log: Callable[[str], None],
             created: dict[int, float] | None = None) -> dict:
    """One interval: warm-up, then the window; returns its samples and verdict. ``created``: seq ->
    creation (wall s) as the replica saw it, shared by the intervals of one source (a standby still
    at a snapshot of an earlier interval has an applied lag too)."""
    _set_interval(c, "site-a", interval_s)
    created = {} if created is None else created  # seq -> creation (wall s), from the replica's view
    cycles: dict[int, float] = {}
    parts: dict[int, dict] = {}  # seq -> the cycle report's parts (scan, ship, the source's clone/maps/view)
    starts: dict[int, float] = {}
    failed: set[Any] = set()
    held: list[tuple[float, float]] = []
    applied: list[tuple[float, float]] = []
    t_begin = time.monotonic()
    t_win = t_begin + args.rpo_warmup_s
    end = t_win + args.rpo_window_s
    cut = ""
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            a = c.status("site-a")["volumes"][VOL]
            b = c.status("site-b")["volumes"][VOL]
        except Exception as err:  # noqa: BLE001 — a slow answer is a sample lost, said in the log
            log(f"status poll failed: {err}")
            time.sleep(POLL_S)
            continue
        now = time.time()
        rep = a.get("last_report") or {}
        if isinstance(rep.get("seq"), int) and t >= t_win:
            if rep.get("committed") and "cycle_s" in rep:
                if rep["seq"] not in cycles:
                    cycles[rep["seq"]] = float(rep["cycle_s"])
                    starts[rep["seq"]] = t - float(rep["cycle_s"])
                    parts[rep["seq"]] = {k: rep.get(k) for k in ("changed_blocks", "scan_s", "ship_s", "commit_s",
                                                                 "bytes_shipped")}
                    parts[rep["seq"]].update({k: v for k, v in (rep.get("source") or {}).items()
                                              if k in SOURCE_PARTS})
            elif a.get("last_error"):
                failed.add((rep["seq"], a.get("last_error")))
        nc, age = b.get("newest_committed"), b.get("newest_age_s")
        if isinstance(nc, int) and age is not None:
            created.setdefault(nc, now - age)
            if t >= t_win:
                held.append((t - t_win, age))
        sb = b.get("standby_seq")
        if t >= t_win and isinstance(sb, int) and sb in created:
            applied.append((t - t_win, now - created[sb]))
        vals = list(cycles.values())
        if len(vals) >= MIN_CYCLES and statistics.median(vals) >= interval_s:
            cut = f"behind: median cycle {statistics.median(vals):.2f}s >= {interval_s:g}s after {len(vals)} cycles"
            break
        time.sleep(max(0.0, POLL_S - (time.monotonic() - t)))
    window = time.monotonic() - t_win
    vals = list(cycles.values())
    if cut:
        ok, why = False, cut
    else:
        ok, why = judge_window(interval_s, vals, len(failed), applied, window)
    gaps = [b - a for a, b in zip(sorted(starts.values()), sorted(starts.values())[1:])]
    out = {"interval_s": interval_s, "keeps_up": ok, "why": why, "window_s": window, "cycles": vals,
           "parts": [dict(seq=q, **parts[q]) for q in sorted(parts)],
           "failed": sorted(map(str, failed)), "gap_median_s": statistics.median(gaps) if gaps else None,
           "held_max_s": max((v for _, v in held), default=None),
           "held_median_s": statistics.median([v for _, v in held]) if held else None,
           "applied_max_s": max((v for _, v in applied), default=None),
           "applied_median_s": statistics.median([v for _, v in applied]) if applied else None}
    log(f"  interval {interval_s:g}s: {'KEEPS UP' if ok else 'no'} ({why}); {len(vals)} cycles, "
        + (f"cycle median {statistics.median(vals):.3f}s p95 {_p95(vals):.3f}s max {max(vals):.3f}s, " if vals else "")
        + f"start gap median {out['gap_median_s']}, held lag median/max {out['held_median_s']}/{out['held_max_s']}, "
        f"applied lag median/max {out['applied_median_s']}/{out['applied_max_s']}")
    return out


def rpo_source(kind: str, work: Path, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Set up one source's volume and two-site cluster under ``work``, run the intervals; returns
    ``{"kind", "size_gib", "first_sync_s", "intervals": [...], "writer": {...}}``."""
    from tests.bench.bench import write_text_image

    size = args.rpo_gib * 2**30
    n_blocks = size // BLOCK_BYTES
    rate = args.rpo_churn_pct / 100 * n_blocks / 60.0
    out: dict[str, Any] = {"kind": kind, "size_gib": args.rpo_gib, "blocks_per_s": rate, "intervals": []}
    rng = random.Random(15)
    first = min(args.rpo_intervals)
    with ExitStack() as stack:
        writer_target = ""
        if kind == "reflink":
            from tests.loopfs import loop_fs

            mnt = stack.enter_context(loop_fs(work, "xfs", size_bytes=size + size // 4 + 2**30))
            image = mnt / "ehr.img"
            stack.callback(lambda: [p.unlink() for p in (mnt / ".replicad-clones").glob("*")])
            src_toml = '[volumes.source]\nkind = "reflink"\n'
        else:
            image = work / "ehr.raw"
        t0 = time.perf_counter()
        write_text_image(image, size, rng)
        log(f"{kind}: {args.rpo_gib} GiB image written in {time.perf_counter() - t0:.0f}s")
        if kind == "qemu":
            from tests.integration.test_qemu_source import running_qsd

            qroot = work / "qsd"
            qroot.mkdir()
            q = stack.enter_context(running_qsd(qroot, size, data_dir=work / "cluster" / "site-a" / "data", raw=image))
            src_toml = f'[volumes.source]\nkind = "qemu"\nqmp_socket = "{q.qmp}"\nnode = "disk"\nnbd_socket = "{q.nbd}"\n'
            writer_target = str(q.nbd)
        elif kind == "file":
            src_toml = ""
        writer_target = writer_target or str(image)
        c = LocalCluster(work / "cluster", n_data=2, n_witness=1, interval="3650d", min_copies=2,
                         extra_volume_toml=src_toml)
        stack.callback(c.stop_all)
        vpath = c.sites["site-a"].volume_path(VOL)
        vpath.unlink(missing_ok=True)
        vpath.symlink_to(q.image if kind == "qemu" else image)
        c.start_all()
        c.wait_ready(120)
        t0 = time.perf_counter()
        rep = c.api("site-a", "POST", f"/v1/volumes/{VOL}/snapshot", {}, timeout_s=args.step_timeout_s)
        if not rep.get("committed"):
            raise RuntimeError(f"{kind}: first snapshot not committed: {rep}")
        c.wait_for("the replica's standby at the first snapshot", lambda: c.status("site-b")["volumes"][VOL]
                   ["standby_seq"] == rep["seq"], args.step_timeout_s, 1.0)
        out["first_sync_s"] = time.perf_counter() - t0
        log(f"{kind}: first snapshot committed in {rep.get('cycle_s', 0):.1f}s, standby applied after "
            f"{out['first_sync_s']:.0f}s (mode {rep.get('source', {}).get('mode')})")
        progress = work / "writer.progress"
        src = str(Path(__file__).resolve().parents[2])
        writer = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.bench.rpo import rpo_writer; rpo_writer(*sys.argv[1:])",
             kind, writer_target, str(size), f"{rate:.4f}", "7", str(progress)],
            cwd=src, env=dict(os.environ, PYTHONPATH=src), stdin=subprocess.DEVNULL)

        def stop_writer() -> None:
            if writer.poll() is None:
                os.kill(writer.pid, signal.SIGTERM)
                try:
                    writer.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(writer.pid, signal.SIGKILL)
                    writer.wait(30)

        stack.callback(stop_writer)
        t_w = time.monotonic()
        created: dict[int, float] = {}
        for interval_s in sorted(args.rpo_intervals):
            if interval_s < first:
                continue
            r = _measure(c, interval_s, args, log, created)
            out["intervals"].append(r)
            if writer.poll() is not None:
                raise RuntimeError(f"{kind}: the writer process ended ({writer.returncode})")
            if r["keeps_up"] and not args.rpo_all:
                break
        done = progress.read_text().split() if progress.exists() else ["0", "1"]
        out["writer"] = {"blocks": int(done[0]), "s": float(done[1]), "rate_asked": rate,
                         "rate_done": int(done[0]) / max(float(done[1]), 1e-9), "wall_s": time.monotonic() - t_w}
        log(f"{kind}: writer {out['writer']['rate_done']:.1f} blocks/s done (asked {rate:.1f})")
        src_status = c.status("site-a")["volumes"][VOL].get("source", {})
        out["source_status"] = {k: src_status.get(k) for k in ("kind", "state", "lost_total")}
    return out


def rpo_run(work: Path, args: argparse.Namespace, log: Callable[[str], None]) -> list[dict]:
    """Every source of ``--rpo-sources`` in turn, each in a fresh ``work/<kind>`` removed after."""
    results = []
    for kind in [k for k in args.rpo_sources.split(",") if k]:
        need = (2 * args.rpo_gib + args.rpo_gib // 4 + 2) * 2**30  # image, standby, two stores (~5x lz4)
        free = shutil.disk_usage(work).free
        if free - 15 * 2**30 < need:
            log(f"{kind}: {need / 2**30:.0f} GiB needed beside 15 GiB left for others, "
                f"{free / 2**30:.0f} GiB free under {work}: skipped")
            continue
        root = work / kind
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        try:
            results.append(rpo_source(kind, root, args, log))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return results


def rpo_rows(results: list[dict], add: Callable[..., None]) -> None:
    """Table rows: per source the shortest interval that kept up, its cycle durations and lags,
    and the intervals that did not."""
    for r in results:
        kept = [i for i in r["intervals"] if i["keeps_up"]]
        best = min(kept, key=lambda i: i["interval_s"]) if kept else None
        no = ", ".join(f"{i['interval_s']:g}s ({i['why']})" for i in r["intervals"] if not i["keeps_up"])
        if best is not None:
            cyc = best["cycles"]
            ours = (f"{best['interval_s']:g}s: cycle median {statistics.median(cyc):.3f}s p95 {_p95(cyc):.3f}s "
                    f"max {max(cyc):.3f}s (n={len(cyc)}); held lag max {best['held_max_s']:.1f}s, "
                    f"applied lag max {best['applied_max_s']:.1f}s")
        else:
            ours = "none of those tried"
        add(f"RPO at {r['size_gib']} GiB, {r['writer']['rate_done'] * 60 * BLOCK_BYTES / 2**20:.0f} MiB/min "
            f"churn, {r['kind']} source: shortest interval that keeps up",
            ours, f"not: {no}" if no else "", None, "info", None)
