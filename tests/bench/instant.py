"""Instant recovery against a full restore: time to first read served, and export read throughput.

Run (as root, from a checkout)::

    python -m tests.bench.instant --size-mib 1024
    python -m tests.bench.instant --size-mib 4096 --json-out /tmp/instant-4g.json
    python -m tests.bench.instant --postgres --size-mib 16384 --pg-scale 20

For each mode (``full``, then ``instant``) a fresh 3-site
:class:`~replicad.lab.localcluster.LocalCluster` protects the same ext4 image
(:func:`replicad.lab.demo_volume.build_volume`, ``--size-mib``, seed 42; about half full with
hospital-like files), takes its first snapshot at site-a, waits until site-b holds it, and kills
site-a once site-b judged the snapshot itself (issue 14: a takeover judges a snapshot first if
it has not; both modes are measured without that). The replicas keep no standby image (``apply_delay`` 1 h: a site without a warm standby,
the case instant recovery is for), so site-b restores every block. Then, at site-b:

* ``full``: ``replicad promote ehr --force``; the wall time until it returns is the RTO (the image
  is written and verified, O5).
* ``instant``: ``replicad promote ehr --force --instant``; then at once one 4 KiB read through the
  export (``qemu-io``): the wall time from the command's start to that read's answer is the time
  to first read served (the daemon's own ``first_read_after_s`` is printed beside it); the wall
  time until ``status`` shows the instant recovery done is the background copy with switch-over.
  Then the read throughput: ``nbdcopy`` of a read-only export of the same snapshot (the path the
  instant export reads before the switch-over: verified chunks from the store) to ``null:``,
  against ``nbdcopy`` of the plain image file (now the same bytes) to ``null:`` (both warm in
  the page cache, same minute). Prints the numbers and the load average; ``--json-out`` keeps them.

With ``--postgres`` the volume is instead a sparse image of ``--size-mib`` holding an ext4 file
system (``mkfs.ext4``, lazy inode tables: only its metadata and the data written are non-zero)
with a PostgreSQL cluster (``initdb`` and ``pgbench -i -s SCALE`` as the ``postgres`` user, unix
socket only; :class:`tests.pgcrash.Postgres`), stopped cleanly before the snapshot. Then each
mode also starts the application at site-b and times it from the command's start:

* ``full``: after ``promote --force`` returns, ``mount -o loop`` of the volume's image,
  ``pg_ctl start -w``, first ``SELECT count(*) FROM pgbench_accounts`` answered;
* ``instant``: after the first read, ``nbdfuse`` of the export's URI, ``losetup``, ``mount``,
  ``pg_ctl start -w``, the same query answered, while the background copy goes on; then when the
  switch-over is done (PostgreSQL still running on the export).

and the read throughput is measured cold (``echo 3 > /proc/sys/vm/drop_caches`` before each read):
``dd`` of 256 MiB (1 MiB reads) at the start of ``pgbench_accounts``'s data (``filefrag``) from
``nbdfuse`` of a read-only export of the snapshot (the chunk-store path) against ``dd`` of the
same range of the plain image file (the volume's image after the switch-over, same bytes),
three times alternately; the medians.
Everything started is stopped by its PID, every mount and loop device undone by its path.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replicad.lab.demo_volume import build_volume
from replicad.lab.localcluster import LocalCluster
from tests import pgcrash

VOL = "ehr"
READ_MIB = 256
DD_ROUNDS = 3
QUERY = "SELECT count(*) FROM pgbench_accounts"


def _env() -> dict:
    return dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
                PYTHONPATH=str(Path(__file__).resolve().parents[2]))


def _cli(c: LocalCluster, site: str, *args: str, timeout_s: float = 1800) -> dict:
    p = subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, "--json", *args],
                       capture_output=True, text=True, env=_env(), timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"replicad {' '.join(args)}: exit {p.returncode}: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def _nbdcopy_s(src: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["nbdcopy", src, "null:"], check=True, env=_env(), capture_output=True, timeout=1800)
    return time.monotonic() - t0


def _run(argv: list[str], timeout_s: float = 600, **kw) -> str:
    if "user" in kw:
        kw.update(group=pwd.getpwnam(kw["user"]).pw_gid, extra_groups=[])
    p = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=timeout_s, cwd="/", **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {(p.stderr or p.stdout)[-2000:]}")
    return p.stdout


def build_pg_volume(image: Path, size_mib: int, scale: int, work: Path) -> dict:
    """A sparse ``size_mib`` image at ``image`` holding ext4 with a PostgreSQL cluster (``pg/``,
    database ``bench``) filled by ``pgbench -i -s scale``, stopped cleanly. Returns ``{"data_mib":
    PostgreSQL's data size in MiB, "read_offset": byte offset of pgbench_accounts' first extent,
    1 MiB aligned, "allocated_mib": the image's allocated MiB}``. Raises RuntimeError, PgUnavailable."""
    bindir = pgcrash.require()
    with open(image, "wb") as f:
        f.truncate(size_mib * 2**20)
    _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)])
    sock = work / "sock"
    sock.mkdir(mode=0o777)
    os.chmod(sock, 0o777)
    with pgcrash.loop_mount(image, work / "mnt") as mnt:
        data = mnt / "pg"
        data.mkdir()
        shutil.chown(data, pgcrash.PG_USER, pgcrash.PG_USER)
        _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", pgcrash.PG_USER],
             user=pgcrash.PG_USER)
        (work / "pg-build.log").touch()
        shutil.chown(work / "pg-build.log", pgcrash.PG_USER, pgcrash.PG_USER)
        pg = pgcrash.Postgres(bindir, data, sock, work / "pg-build.log")
        try:
            res = pg.start(120)
            if res.returncode != 0:
                raise RuntimeError(f"pg_ctl start: {res.stderr[-800:]}")
            pg.psql("CREATE DATABASE bench", db="postgres")
            _run([str(bindir / "pgbench"), "-i", "-q", "-s", str(scale), "-h", str(sock), "-p", str(pg.port),
                  "-U", pgcrash.PG_USER, "bench"], user=pgcrash.PG_USER, timeout_s=1800)
            data_mib = int(pg.psql("SELECT sum(pg_database_size(oid)) FROM pg_database")) / 2**20
            rel = pg.psql("SELECT pg_relation_filepath('pgbench_accounts')")
        finally:
            pg.stop("fast")  # a clean shutdown checkpoint: no recovery needed at the other site
        os.sync()
        ext = _run(["filefrag", "-e", "-b4096", str(data / rel)])
        first = next(line for line in ext.splitlines() if line.strip().startswith("0:"))
        phys = int(first.split(":")[2].split("..")[0])
    st = os.stat(image)
    return {"data_mib": round(data_mib), "read_offset": phys * 4096 // 2**20 * 2**20,
            "allocated_mib": round(st.st_blocks * 512 / 2**20)}


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _dd_s(path: str, offset: int) -> float:
    """Cold sequential read of READ_MIB MiB at ``offset`` of ``path`` in 1 MiB reads; seconds."""
    _drop_caches()
    t0 = time.monotonic()
    _run(["dd", f"if={path}", "of=/dev/null", "bs=1M", f"count={READ_MIB}", f"skip={offset // 2**20}",
          "status=none"], timeout_s=1800)
    return time.monotonic() - t0


class Attached:
    """An NBD URI made a file (``nbdfuse``), a loop device and, optionally, a mount: how an application
    attaches to an export (README, instant recovery). Undone by ``close`` (by PID and path)."""

    def __init__(self, uri: str, root: Path) -> None:
        self.fuse, self.mnt, self.pidfile = root / "fuse", root / "mnt", root / "nbdfuse.pid"
        self.fuse.mkdir(parents=True)
        self.loop: str | None = None
        self.mounted = False
        self.proc = subprocess.Popen(["nbdfuse", "-P", str(self.pidfile), str(self.fuse / "image"), uri],
                                     env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not self.pidfile.exists() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.proc.poll() is not None or not self.pidfile.exists():
            raise RuntimeError(f"nbdfuse did not serve: {self.proc.stderr.read() if self.proc.stderr else ''}")

    @property
    def file(self) -> str:
        return str(self.fuse / "image")

    def mount(self) -> Path:
        self.loop = _run(["losetup", "--find", "--show", self.file], timeout_s=60).strip()
        self.mnt.mkdir()
        _run(["mount", "-t", "ext4", self.loop, str(self.mnt)], timeout_s=120)
        self.mounted = True
        return self.mnt

    def close(self) -> None:
        if self.mounted and subprocess.run(["umount", str(self.mnt)], env=_env(), capture_output=True,
                                           timeout=120).returncode != 0:
            subprocess.run(["umount", "-l", str(self.mnt)], env=_env(), capture_output=True, timeout=60)
        self.mounted = False
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], env=_env(), capture_output=True, timeout=60)
            self.loop = None
        if self.proc.poll() is None:
            deadline = time.monotonic() + 60  # the loop device lets go of the file asynchronously
            while subprocess.run(["fusermount3", "-u", str(self.fuse)], env=_env(), capture_output=True,
                                 timeout=60).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # by PID: the process started here
                self.proc.wait(timeout=10)


def _start_pg(mnt: Path, sock: Path, log: Path, out: dict, t0: float) -> pgcrash.Postgres:
    pg = pgcrash.Postgres(pgcrash.pg_bin(), mnt / "pg", sock, log)
    res = pg.start(600)
    if res.returncode != 0:
        pg.stop("immediate")
        raise RuntimeError(f"pg_ctl start on the restored volume: {res.stderr[-800:]} {log.read_text()[-800:]}")
    out["pg_started_s"] = round(time.monotonic() - t0, 3)
    out["accounts"] = int(pg.psql(QUERY))
    out["app_query_s"] = round(time.monotonic() - t0, 3)
    return pg


def one(mode: str, image: Path, work: Path, pg: dict | None = None) -> dict:
    """One cluster, one promotion of ``mode`` (full | instant) at site-b; returns the timings. With
    ``pg`` (from :func:`build_pg_volume`) PostgreSQL is started on the result and timed too."""
    c = LocalCluster(work / mode, interval="1h", min_copies=2, apply_delay="1h")
    if pg is not None:
        return _one_pg(c, mode, image, work, pg)
    try:
        shutil.copyfile(image, c.sites["site-a"].volume_path(VOL))
        c.start_all()
        c.wait_ready(120)
        t0 = time.monotonic()
        snap = c.api("site-a", "POST", f"/v1/volumes/{VOL}/snapshot", {}, timeout_s=1800)
        snapshot_s = time.monotonic() - t0
        c.wait_for("site-b holds the snapshot", lambda: any(
            s["seq"] == snap["seq"] and "site-b" in s["holders"]
            for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 600)
        # site-b judges every snapshot itself before it may take over on it (issue 14): wait for its
        # opinion here, so that neither mode pays for the judging inside its RTO
        c.wait_for("site-b's own verdict", lambda: "site-b" in c.api(
            "site-b", "GET", f"/v1/volumes/{VOL}/snapshots/{snap['seq']}/evidence")["opinions"], 1200, interval_s=1)
        c.kill("site-a")
        os.sync()
        out: dict = {"mode": mode, "snapshot_s": round(snapshot_s, 2), "seq": snap["seq"]}
        t0 = time.monotonic()
        if mode == "full":
            res = _cli(c, "site-b", "promote", VOL, "--force")
            out["rto_s"] = round(time.monotonic() - t0, 3)
            out["daemon_rto_s"] = res.get("rto_s")
            return out
        res = _cli(c, "site-b", "promote", VOL, "--force", "--instant")
        out["promote_returned_s"] = round(time.monotonic() - t0, 3)
        uri = res["instant"]["uri"]
        subprocess.run(["qemu-io", "-f", "raw", "-r", "-c", "read 0 4096", uri], check=True, env=_env(),
                       capture_output=True, timeout=120)
        out["first_read_s"] = round(time.monotonic() - t0, 3)
        out["serving_after_s"] = res["instant"]["serving_after_s"]

        def done():
            st = c.status("site-b")["volumes"][VOL].get("instant") or {}
            return st if st.get("phase") == "done" and c.status("site-b")["volumes"][VOL]["role"] == "primary" \
                else None
        st = c.wait_for("the switch-over", done, 3600, interval_s=0.5)
        out["copy_and_switch_s"] = round(time.monotonic() - t0, 3)
        out["daemon_first_read_after_s"] = st["first_read_after_s"]
        out["daemon_switched_after_s"] = st["switched_after_s"]
        e = c.api("site-b", "POST", f"/v1/volumes/{VOL}/exports", {"snapshot": snap["seq"]})
        try:
            _nbdcopy_s(e["uri"])  # warm both sides alike
            out["export_read_s"] = round(_nbdcopy_s(e["uri"]), 3)
        finally:
            c.api("site-b", "DELETE", f"/v1/exports/{e['export_id']}")
        img = str(c.sites["site-b"].volume_path(VOL))
        _nbdcopy_s(img)
        out["plain_read_s"] = round(_nbdcopy_s(img), 3)
        out["export_vs_plain"] = round(out["plain_read_s"] / out["export_read_s"], 3)
        return out
    finally:
        c.stop_all()
        shutil.rmtree(work / mode, ignore_errors=True)  # a 4 GiB run holds ~20 GiB per cluster


def _snapshot_and_kill_a(c: LocalCluster, image: Path) -> dict:
    _run(["cp", "--sparse=always", str(image), str(c.sites["site-a"].volume_path(VOL))])
    c.start_all()
    c.wait_ready(120)
    t0 = time.monotonic()
    snap = c.api("site-a", "POST", f"/v1/volumes/{VOL}/snapshot", {}, timeout_s=1800)
    snapshot_s = time.monotonic() - t0
    c.wait_for("site-b holds the snapshot", lambda: any(
        s["seq"] == snap["seq"] and "site-b" in s["holders"]
        for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 900)
    c.wait_for("site-b's own verdict", lambda: "site-b" in c.api(
        "site-b", "GET", f"/v1/volumes/{VOL}/snapshots/{snap['seq']}/evidence")["opinions"], 1800, interval_s=1)
    c.kill("site-a")
    os.sync()
    return {"snapshot_s": round(snapshot_s, 2), "seq": snap["seq"]}


def _one_pg(c: LocalCluster, mode: str, image: Path, work: Path, info: dict) -> dict:
    sock = work / f"sock-{mode}"
    sock.mkdir(mode=0o777)
    os.chmod(sock, 0o777)
    log = work / f"pg-{mode}.log"
    log.touch()
    shutil.chown(log, pgcrash.PG_USER, pgcrash.PG_USER)
    pg: pgcrash.Postgres | None = None
    attached: list[Attached] = []
    try:
        out: dict = {"mode": mode, "postgres": True, **_snapshot_and_kill_a(c, image)}
        t0 = time.monotonic()
        if mode == "full":
            _cli(c, "site-b", "promote", VOL, "--force")
            out["rto_s"] = round(time.monotonic() - t0, 3)
            with pgcrash.loop_mount(c.sites["site-b"].volume_path(VOL), work / "mnt-full") as mnt:
                out["mounted_s"] = round(time.monotonic() - t0, 3)
                pg = _start_pg(mnt, sock, log, out, t0)
                pg.stop("fast")
                pg = None
            return out
        res = _cli(c, "site-b", "promote", VOL, "--force", "--instant")
        out["promote_returned_s"] = round(time.monotonic() - t0, 3)
        uri = res["instant"]["uri"]
        _run(["qemu-io", "-f", "raw", "-r", "-c", "read 0 4096", uri], timeout_s=120)
        out["first_read_s"] = round(time.monotonic() - t0, 3)
        app = Attached(uri, work / "app")
        attached.append(app)
        mnt = app.mount()
        out["mounted_s"] = round(time.monotonic() - t0, 3)
        pg = _start_pg(mnt, sock, log, out, t0)
        st = c.status("site-b")["volumes"][VOL].get("instant") or {}
        out["phase_at_query"] = st.get("phase")
        out["progress_at_query"] = st.get("progress_ratio", st.get("progress"))

        def done():
            st = c.status("site-b")["volumes"][VOL].get("instant") or {}
            return st if st.get("phase") == "done" and c.status("site-b")["volumes"][VOL]["role"] == "primary" \
                else None
        st = c.wait_for("the switch-over", done, 3600, interval_s=0.5)
        out["copy_and_switch_s"] = round(time.monotonic() - t0, 3)
        out["daemon_first_read_after_s"] = st.get("first_read_after_s")
        out["daemon_switched_after_s"] = st.get("switched_after_s")
        out["accounts_after_switch"] = int(pg.psql(QUERY))
        pg.stop("fast")
        pg = None
        app.close()
        e = c.api("site-b", "POST", f"/v1/volumes/{VOL}/exports", {"snapshot": out["seq"]})
        try:
            ro = Attached(e["uri"], work / "ro")
            attached.append(ro)
            ex, pl = [], []
            for _ in range(DD_ROUNDS):  # alternately: the shared disk's speed drifts within minutes
                ex.append(round(_dd_s(ro.file, info["read_offset"]), 3))
                pl.append(round(_dd_s(str(c.sites["site-b"].volume_path(VOL)), info["read_offset"]), 3))
            ro.close()
        finally:
            c.api("site-b", "DELETE", f"/v1/exports/{e['export_id']}")
        out["export_dd_all_s"], out["plain_dd_all_s"] = ex, pl
        out["export_dd_s"], out["plain_dd_s"] = statistics.median(ex), statistics.median(pl)
        out["export_mib_s"] = round(READ_MIB / out["export_dd_s"], 1)
        out["plain_mib_s"] = round(READ_MIB / out["plain_dd_s"], 1)
        out["export_vs_plain"] = round(out["plain_dd_s"] / out["export_dd_s"], 3)
        return out
    finally:
        if pg is not None:
            pg.stop("immediate")
        for a in reversed(attached):
            a.close()
        c.stop_all()
        shutil.rmtree(work / mode, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--modes", default="full,instant")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--postgres", action="store_true", help="a PostgreSQL volume; time the application too")
    ap.add_argument("--pg-scale", type=int, default=20, help="pgbench -i scale (20: ~300 MiB)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rib", dir="/tmp"))
    os.chmod(work, 0o755)  # the postgres user reaches its socket directory and log under it
    try:
        image = work / "vol.img"
        info = None
        if args.postgres:
            info = build_pg_volume(image, args.size_mib, args.pg_scale, work)
            print(json.dumps({"built": info}), flush=True)
        else:
            build_volume(work / "build", image, size_bytes=args.size_mib * 2**20, rng=random.Random(42))
            shutil.rmtree(work / "build", ignore_errors=True)
        rows = []
        for mode in args.modes.split(","):
            row = one(mode, image, work, info)
            row["size_mib"] = args.size_mib
            if info:
                row.update(pg_scale=args.pg_scale, **info)
            row["load"] = os.getloadavg()[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
