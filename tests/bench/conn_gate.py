"""Bounds on a listener's connections (:mod:`replicad.peer.conngate`): what an attacker holding one
site's certificate costs the honest site, before and after, and what the gate costs honest traffic.

Usage::

    python -m tests.bench.conn_gate slowloris --before HEAD~1 --connections 2000 --hold-s 40
    python -m tests.bench.conn_gate throughput --mib 256 --rounds 4

``slowloris``: for each tree (``--before``: ``git archive`` of a revision; ``--after``: this
checkout), a cluster of three real daemons with mutual TLS; site-c is stopped and
``tests.security.conn_attacker`` with site-c's config keeps ``--connections`` connections to
site-b that never finish a request head for ``--hold-s`` (one the target closes is opened again
after 0.2 s); 5 s in, site-a snapshots (its ship needs site-b). Prints per tree: site-b's open fds
(``/proc/PID/fd``) and RSS before, 5 s in, at the peak (sampled every 0.2 s) and after, site-b's
CPU seconds, the attacker's view, whether the snapshot committed, and the load average.

``throughput``: one process, an aiohttp server on 127.0.0.1 (``web.TCPSite`` vs
:class:`~replicad.peer.conngate.GatedTCPSite`, alternating) and a client that uploads and then
downloads ``--mib`` MiB, one request each; prints the process's CPU seconds and the wall time per
round and the medians. Results: ``tests/bench/results/conn_gate.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

from replicad.lab.localcluster import LocalCluster, free_port
from replicad.peer.conngate import ConnGate, GatedTCPSite

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


def export_tree(rev: str, dest: Path) -> Path:
    """``git archive rev`` of this checkout unpacked into ``dest``. Raises CalledProcessError."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True, timeout=120)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=120)
    return dest


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def slowloris(tree: Path, work: Path, connections: int, hold_s: float) -> dict:
    """One cluster of ``tree``'s daemons under the attack; the measured figures."""
    c = LocalCluster(work / "cluster", interval="1h", min_copies=2, tls=True)
    c.code_dir = tree
    img = c.sites["site-a"].volume_path("ehr")
    img.write_bytes(random.Random(3).randbytes(4 * MIB))
    try:
        c.start_all()
        c.wait_ready(90)
        c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {})
        c.kill("site-c")
        time.sleep(1.0)
        pid = c.sites["site-b"].proc.pid
        f0, r0, cpu0, load0 = _fds(pid), _rss(pid), _cpu_s(pid), os.getloadavg()[0]
        peak = {"fds": f0, "rss": r0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["fds"], peak["rss"] = max(peak["fds"], _fds(pid)), max(peak["rss"], _rss(pid))
                time.sleep(0.2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "tests.security.conn_attacker", "--config",
                                 str(c.sites["site-c"].config_path), "--target", "site-b", "--connections",
                                 str(connections), "--hold-s", str(hold_s), "--opening", "64", "--reopen-s", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        time.sleep(min(hold_s / 2, 5.0))
        with open(img, "r+b") as f:
            f.write(random.Random(4).randbytes(MIB))
        c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {})
        snaps = c.api("site-a", "GET", "/v1/volumes/ehr/snapshots")["snapshots"]
        mid = {"fds": _fds(pid), "rss": _rss(pid)}
        peak["fds"], peak["rss"] = max(peak["fds"], mid["fds"]), max(peak["rss"], mid["rss"])
        out, err = proc.communicate(timeout=hold_s + 120)
        stop.set()
        sampler.join()
        time.sleep(1.0)
        metrics = urllib.request.urlopen(c.sites["site-b"].admin_url + "/metrics", timeout=10).read().decode()
        refused = {line.split("reason=\"")[1].split("\"")[0]: float(line.rsplit(" ", 1)[1])
                   for line in metrics.splitlines()
                   if line.startswith("replicad_conn_refused_total{") and 'peer="site-c"' in line}
        return {"fds": [f0, mid["fds"], peak["fds"], _fds(pid)],
                "rss_mib": [round(x / MIB) for x in (r0, mid["rss"], peak["rss"], _rss(pid))],
                "siteb_cpu_s": round(_cpu_s(pid) - cpu0, 2), "wall_s": round(time.monotonic() - t0, 1),
                "committed": len(snaps) == 2 and "site-b" in snaps[-1]["holders"],
                "load": [round(load0, 1), round(os.getloadavg()[0], 1)], "refused": refused,
                "attacker": json.loads(out.strip().splitlines()[-1]) if out.strip() else err[-500:]}
    finally:
        c.stop_all()


async def _transfer(gated: bool, mib: int) -> tuple[float, float]:
    """Upload then download ``mib`` MiB through one server; (CPU s, wall s) of this process."""
    payload = b"\x5a" * MIB

    async def up(request: web.Request) -> web.Response:
        n = 0
        async for part in request.content.iter_chunked(2**16):
            n += len(part)
        return web.Response(text=str(n))

    async def down(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(mib):
            await resp.write(payload)
        await resp.write_eof()
        return resp

    gate = ConnGate("bench", "peer")
    app = web.Application(middlewares=[gate.middleware] if gated else [], client_max_size=2 * mib * MIB)
    app.add_routes([web.post("/up", up), web.get("/down", down)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = GatedTCPSite(runner, "127.0.0.1", port, gate) if gated else web.TCPSite(runner, "127.0.0.1", port)
    await site.start()

    async def body():
        for _ in range(mib):
            yield payload
    try:
        c0, t0 = time.process_time(), time.monotonic()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/up", data=body()) as resp:
                assert int(await resp.text()) == mib * MIB
            n = 0
            async with session.get(f"http://127.0.0.1:{port}/down") as resp:
                async for part in resp.content.iter_chunked(2**16):
                    n += len(part)
            assert n == mib * MIB
        return time.process_time() - c0, time.monotonic() - t0
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one of the benchmarks; prints JSON lines."""
    ap = argparse.ArgumentParser(prog="conn_gate")
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("slowloris")
    s.add_argument("--before", default=None, help="git revision of the code before the change")
    s.add_argument("--connections", type=int, default=2000)
    s.add_argument("--hold-s", type=float, default=40.0)
    t = sub.add_parser("throughput")
    t.add_argument("--mib", type=int, default=256)
    t.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    if args.what == "slowloris":
        with tempfile.TemporaryDirectory(prefix="conn-gate-") as tmp:
            trees = {"after": REPO}
            if args.before:
                trees = {"before": export_tree(args.before, Path(tmp) / "before"), **trees}
            for name, tree in trees.items():
                print(json.dumps({"tree": name, **slowloris(tree, Path(tmp) / name / "work", args.connections,
                                                           args.hold_s)}), flush=True)
        return 0
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "gated": []}
    for k in range(args.rounds):
        for name in (("plain", "gated") if k % 2 == 0 else ("gated", "plain")):
            cpu, wall = asyncio.run(_transfer(name == "gated", args.mib))
            runs[name].append((cpu, wall))
            print(json.dumps({"round": k, "site": name, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                              "load": round(os.getloadavg()[0], 1)}), flush=True)
    print(json.dumps({name: {"cpu_s_median": round(statistics.median(c for c, _ in r), 3),
                             "wall_s_median": round(statistics.median(w for _, w in r), 3)}
                      for name, r in runs.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
