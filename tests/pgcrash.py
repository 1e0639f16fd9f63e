"""Crash consistency of snapshots with a real PostgreSQL under pgbench, without hooks.

The protected volume is an image file on a loop-mounted XFS (``reflink=1``); inside the image is
an ext4 file system (``mkfs.ext4``, loop-mounted in turn) holding a PostgreSQL data directory
(``initdb --data-checksums``). While ``pgbench`` runs and a ``CHECKPOINT`` is asked for every
``checkpoint_every_s``, snapshots of the image are taken in-process by replicad's own snapshot
sources (:func:`replicad.sources.kinds.make_source`: ``reflink``, ``file``), no freeze hook,
each into its own chunk store and committed (the next one is incremental).

With the ``qemu`` source the image is a qcow2 disk (on the same XFS) served by a
``qemu-storage-daemon`` (QSD) started here (:func:`qsd_disk`), as a VM's disk would be: the ext4
is made on, and loop-mounted from, QSD's writable FUSE export of the qcow2 node, so every write
and flush of PostgreSQL and ext4 goes through QSD's block layer, where the source's persistent
dirty bitmap and copy-before-write fleecing see it; the source talks to QSD's QMP socket and
starts QSD's NBD server in its own state dir. The qemu source runs alone in its load (the
other sources read a raw image, not this disk). Then each snapshot
of a sample is restored into a fresh image (``storage.image.apply_snapshot`` +
``verify_image``: O5), that image loop-mounted, PostgreSQL started on it (crash recovery) and
judged (:class:`Verdict`): it starts; ``pg_amcheck --heapallindexed`` passes; the pgbench
invariant holds (every pgbench transaction adds the same ``delta`` to one account, one teller,
one branch and inserts it into the history, so ``sum(abalance) = sum(tbalance) = sum(bbalance)
= sum(delta)``); after a clean stop ``pg_checksums --check`` passes.

Used by ``tests/integration/test_postgres_snapshots.py`` (CI: few snapshots, ``reflink`` and
``qemu`` must give all good) and ``tests/bench/bench.py`` (``--pg-snapshots``: more, the
sources side by side, counted, not asserted).

Needs root (mounts, loop devices), PostgreSQL's server binaries (Debian ``postgresql``,
installed by ``scripts/setup.sh``; found under ``/usr/lib/postgresql/*/bin``), ``mkfs.ext4`` and
``mkfs.xfs``; for ``qemu`` also ``qemu-storage-daemon``, ``qemu-img``, ``fusermount3``,
``/dev/fuse`` and the Python modules ``nbd`` (python3-libnbd) and ``qemu.qmp``
(:func:`require_qemu`). PostgreSQL refuses to run as root: its commands run as the ``postgres`` system user
(created by the Debian package; created here with ``useradd --system`` if absent). Every process
started is stopped by its PID, every mount unmounted and every loop device detached by its own
path, on failure too (QSD by its PID, then every FUSE mount left under the work directory);
every command is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from replicad.config import VolumeConfig
from replicad.core.manifest import Manifest
from replicad.lab.localcluster import free_port
from replicad.sources.kinds import make_source
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.image import apply_snapshot, verify_image

PG_USER = "postgres"
DB = "bench"
CMD_TIMEOUT_S = 120
BLOCK_BYTES = 65536
QSD_NODE = "disk"
"""node-name of the qcow2 format node QSD serves (the qemu source's ``node``)."""
QSD_START_TIMEOUT_S = 30.0


class PgUnavailable(RuntimeError):
    """This machine cannot run the scenario (a tool, root, a loop device): the message says what."""


def pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``pg_ctl``, ``initdb``, ``pgbench``,
    ``pg_amcheck`` and ``pg_checksums``. Raises PgUnavailable if there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    for path in reversed(found):
        d = Path(path).parent
        if all((d / t).exists() for t in ("initdb", "pgbench", "pg_amcheck", "pg_checksums", "psql")):
            return d
    raise PgUnavailable("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                        "(Debian package postgresql; scripts/setup.sh installs it)")


def require() -> Path:
    """Check root, the tools and the ``postgres`` user (created if absent); the binaries' dir.
    Raises PgUnavailable with what is missing."""
    if os.geteuid() != 0:
        raise PgUnavailable("loop mounts need root")
    for tool in ("mkfs.ext4", "mkfs.xfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists() \
                and not Path(f"/sbin/{tool}").exists():
            raise PgUnavailable(f"{tool} is not installed")
    d = pg_bin()
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        res = _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER])
        if res.returncode != 0:
            raise PgUnavailable(f"no {PG_USER} user and useradd failed: {res.stderr.strip()}") from None
    return d


def _run(argv: list[str], *, as_pg: bool = False, timeout_s: float = CMD_TIMEOUT_S,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    kw = {"user": PG_USER, "group": pwd.getpwnam(PG_USER).pw_gid, "extra_groups": []} if as_pg else {}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False,
                          env=env, cwd="/", **kw)


def _check(res: subprocess.CompletedProcess, what: str) -> str:
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}): {(res.stderr or res.stdout).strip()[-800:]}")
    return res.stdout


def _free_port() -> int:
    """A free loopback port (from this test process's own range: localcluster.LAB_PORTS_ENV)."""
    return free_port()


@contextlib.contextmanager
def loop_mount(image: Path, mnt: Path) -> Iterator[Path]:
    """Attach ``image`` to a loop device of its own, mount it at ``mnt`` (created); yield ``mnt``.
    On exit: unmount ``mnt`` (lazily if busy), detach that device, remove ``mnt``."""
    res = _run(["losetup", "--find", "--show", str(image)])
    if res.returncode != 0:
        raise PgUnavailable(f"no loop device: {res.stderr.strip()}")
    device = res.stdout.strip()
    mounted = False
    try:
        mnt.mkdir(exist_ok=True)
        _check(_run(["mount", device, str(mnt)]), f"mount {device} {mnt}")
        mounted = True
        yield mnt
    finally:
        if mounted and _run(["umount", str(mnt)]).returncode != 0:
            _run(["umount", "-l", str(mnt)])
        _run(["losetup", "-d", device])
        with contextlib.suppress(OSError):
            mnt.rmdir()


@contextlib.contextmanager
def xfs(workdir: Path, size_bytes: int) -> Iterator[Path]:
    """A fresh loop-mounted XFS with reflink under ``workdir``; yields its mount point."""
    image = workdir / "xfs.fsimg"
    with open(image, "wb") as f:
        f.truncate(size_bytes)
    try:
        _check(_run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)]), "mkfs.xfs")
        with loop_mount(image, workdir / "xfs") as mnt:
            yield mnt
    finally:
        with contextlib.suppress(OSError):
            image.unlink()


def require_qemu() -> None:
    """Check what :func:`qsd_disk` and the ``qemu`` source need (module docstring). Raises
    PgUnavailable naming what is missing."""
    for tool in ("qemu-storage-daemon", "qemu-img", "fusermount3"):
        if shutil.which(tool) is None:
            raise PgUnavailable(f"{tool} is not installed (Debian qemu-system-common, qemu-utils, fuse3: "
                                "scripts/setup.sh)")
    if not Path("/dev/fuse").exists():
        raise PgUnavailable("/dev/fuse is missing (QSD's FUSE export needs it)")
    for module, package in (("nbd", "python3-libnbd"), ("qemu.qmp", "qemu.qmp")):
        try:
            __import__(module)
        except ImportError:
            raise PgUnavailable(f"Python module {module} is missing ({package}: scripts/setup.sh)") from None


@dataclass
class QemuDisk:
    """A qcow2 disk served by a running qemu-storage-daemon: ``image`` (the qcow2 file), ``node``
    (its format node's name), ``qmp`` (QSD's QMP unix socket), ``guest`` (QSD's writable FUSE
    export of ``node``: a regular file of ``size_bytes`` bytes whose reads and writes are the
    disk's), ``pid`` (QSD's), ``log`` (its output)."""

    image: Path
    node: str
    qmp: Path
    guest: Path
    size_bytes: int
    pid: int
    log: Path


def _fuse_mounts_under(root: Path) -> list[str]:
    """Mount points of FUSE file systems at or under ``root`` (``/proc/self/mountinfo``), deepest first."""
    real = os.path.realpath(root)
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text(errors="replace").splitlines():
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            if len(fields) > 4 and post.startswith("fuse"):
                point = fields[4].replace("\\040", " ")
                if point == real or point.startswith(real + "/"):
                    out.append(point)
    return sorted(out, key=len, reverse=True)


@contextlib.contextmanager
def qsd_disk(image: Path, size_bytes: int, rundir: Path, *, sweep: Path | None = None) -> Iterator[QemuDisk]:
    """A fresh qcow2 ``image`` of ``size_bytes`` served by a ``qemu-storage-daemon`` started here
    (sockets, FUSE mount point and log in ``rundir``, created): node ``QSD_NODE`` exported
    writable over FUSE on ``rundir/guest.img``, QMP on ``rundir/qmp.sock``, no NBD server (the
    qemu source starts its own). Yields the :class:`QemuDisk` once QSD answers and the export is
    mounted (bounded: QSD_START_TIMEOUT_S).

    On exit: SIGTERM to QSD's PID (a clean stop writes the persistent bitmaps back), SIGKILL
    after 30 s; then every FUSE mount left at or under ``sweep`` (default ``rundir``: e.g. a
    fleecing view of a QSD that died) is lazily unmounted. The qcow2 stays.

    Raises:
        PgUnavailable: QSD cannot be started here (a tool missing, QSD exits, or it does not
            answer in time; the message holds its log's tail).
        RuntimeError: ``qemu-img create`` failed.
    """
    require_qemu()
    rundir.mkdir(parents=True, exist_ok=True)
    _check(_run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(size_bytes)]), "qemu-img create")
    qmp, guest, log = rundir / "qmp.sock", rundir / "guest.img", rundir / "qsd.log"
    guest.touch()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["qemu-storage-daemon",
             "--blockdev", f"driver=file,node-name={QSD_NODE}-file,filename={image}",
             "--blockdev", f"driver=qcow2,node-name={QSD_NODE},file={QSD_NODE}-file",
             "--export", f"type=fuse,id=guest,node-name={QSD_NODE},mountpoint={guest},writable=on",
             "--chardev", f"socket,path={qmp},server=on,wait=off,id=qmp0", "--monitor", "chardev=qmp0"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + QSD_START_TIMEOUT_S
        while not (qmp.exists() and guest.stat().st_size == size_bytes):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PgUnavailable(f"qemu-storage-daemon did not start (exit {proc.poll()}): "
                                    f"{log.read_text(errors='replace').strip()[-600:]}")
            time.sleep(0.02)
        yield QemuDisk(image=image, node=QSD_NODE, qmp=qmp, guest=guest, size_bytes=size_bytes, pid=proc.pid,
                       log=log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        for point in _fuse_mounts_under(sweep or rundir):
            _run(["fusermount3", "-u", "-z", point], timeout_s=30)


class Postgres:
    """A PostgreSQL server on the data directory ``data`` (owned by the ``postgres`` user),
    listening on a unix socket in ``sockdir`` only, port ``port``; started with ``pg_ctl -w``
    and stopped by the postmaster's PID (``postmaster.pid``) if ``pg_ctl stop`` does not."""

    def __init__(self, bindir: Path, data: Path, sockdir: Path, log: Path) -> None:
        self.bindir, self.data, self.sockdir, self.log = bindir, data, sockdir, log
        self.port = _free_port()
        self.pid: int | None = None

    def start(self, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """``pg_ctl start -w`` (crash recovery included); the result (returncode 0: accepting
        connections). The log of a start that failed is in ``self.log``."""
        res = _run([str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout_s)), "-D", str(self.data),
                    "-l", str(self.log), "-o", f"-k {self.sockdir} -p {self.port} -c listen_addresses=''"],
                   as_pg=True, timeout_s=timeout_s + 30)
        pidfile = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.pid = int(pidfile.read_text().split()[0])
        return res

    def psql(self, sql: str, db: str = DB) -> str:
        """Run ``sql``; its unaligned output. Raises RuntimeError on failure."""
        return _check(_run([str(self.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", str(self.sockdir),
                            "-p", str(self.port), "-U", PG_USER, "-d", db, "-Atc", sql], as_pg=True), "psql").strip()

    def _ours(self) -> bool:
        """Whether ``self.pid`` is still this server's postmaster (its command line names this data
        directory): a PID freed by its exit may already belong to someone else."""
        try:
            return str(self.data).encode() in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``; then, if the postmaster still runs, SIGKILL to its PID."""
        _run([str(self.bindir / "pg_ctl"), "stop", "-w", "-t", "30", "-m", mode, "-D", str(self.data)],
             as_pg=True, timeout_s=60)
        if self.pid is not None and self._ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
                for _ in range(100):
                    if not self._ours():
                        break
                    time.sleep(0.05)
        self.pid = None


@dataclass
class Verdict:
    """How one restored snapshot fared: ``started`` (crash recovery ended, connections
    accepted), ``amcheck`` (``pg_amcheck --heapallindexed`` passed), ``invariant`` (the pgbench
    sums agree; ``sums``: accounts, tellers, branches, history), ``checksums`` (``pg_checksums
    --check`` after a clean stop), ``detail`` (why not, from the log or the tool)."""

    source: str
    index: int
    started: bool = False
    amcheck: bool = False
    invariant: bool = False
    checksums: bool = False
    sums: tuple[int, ...] = ()
    detail: str = ""

    @property
    def good(self) -> bool:
        """Started and passed every check."""
        return self.started and self.amcheck and self.invariant and self.checksums


@dataclass
class Campaign:
    """Snapshots taken under load: per source name, its store, its manifests in order, the
    seconds each snapshot took, each one's mode (``full``, ``tracked``, ``rescan``...: the
    source's ``SourceSnapshot.mode``); ``transactions`` committed by pgbench in ``load_s``
    seconds; ``checkpoints``: CHECKPOINTs that ran meanwhile."""

    stores: dict[str, ChunkStore] = field(default_factory=dict)
    manifests: dict[str, list[Manifest]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    modes: dict[str, list[str]] = field(default_factory=dict)
    transactions: int = 0
    load_s: float = 0.0
    checkpoints: int = 0


class Scenario:
    """The whole scenario under one work directory (made world-traversable: PostgreSQL runs as
    ``postgres``). Use as a context manager: leaving it stops every server, unmounts, detaches
    and removes the work directory.

    Args:
        scale: ``pgbench -i -s`` (1 = 100,000 accounts, ~16 MB).
        image_bytes: size of the protected image (the ext4 file system).
        clients: pgbench ``-c``.
        checkpoint_every_s: a CHECKPOINT is asked for this often while snapshots are taken.
    """

    def __init__(self, *, scale: int = 2, image_bytes: int = 192 * 2**20, clients: int = 4,
                 checkpoint_every_s: float = 1.0, base: Path | None = None) -> None:
        self.bindir = require()
        self.scale, self.image_bytes, self.clients = scale, image_bytes, clients
        self.checkpoint_every_s = checkpoint_every_s
        self.work = Path(tempfile.mkdtemp(prefix="replicad-pg-", dir=str(base) if base else "/var/tmp"))
        self.work.chmod(0o711)
        self.sockdir = self.work / "sock"
        self.sockdir.mkdir()
        self.logdir = self.work / "logs"
        self.logdir.mkdir()
        for d in (self.sockdir, self.logdir):
            shutil.chown(d, PG_USER, PG_USER)
        self._stack = contextlib.ExitStack()
        self.volume: Path | None = None

    def __enter__(self) -> Scenario:
        try:
            self.xfs = self._stack.enter_context(xfs(self.work, self.image_bytes * 6 + 2**30))
            self.xfs.chmod(0o711)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def _sources(self, kinds: tuple[str, ...], disk: QemuDisk | None) -> dict[str, object]:
        out = {}
        for kind in kinds:
            source: dict[str, object] = {"kind": kind}
            if kind == "qemu":
                assert disk is not None
                source.update(qmp_socket=str(disk.qmp), node=disk.node)
            cfg = VolumeConfig.model_validate({"name": "pg", "path": str(self.volume), "initial_primary": "site-a",
                                               "block_size": BLOCK_BYTES, "source": source})
            data_dir = self.work / f"data-{kind}"
            data_dir.mkdir()
            out[kind] = make_source(cfg, data_dir)
        return out

    def run_load(self, kinds: tuple[str, ...], n_snapshots: int, interval_s: float) -> Campaign:
        """Make the ext4 image on the XFS, initdb, ``pgbench -i``, then run pgbench and take
        ``n_snapshots`` rounds of snapshots (one per source kind of ``kinds``, in turn, no
        hooks) ``interval_s`` apart while it runs; stop everything (the sources' clones stay
        on the XFS, removed with it). ``kinds == ("qemu",)``: the image is a qcow2 disk served
        by a QSD started here and the ext4 is mounted from its FUSE export (module docstring);
        QSD is stopped at the end. Call once per Scenario. Returns the campaign.

        Raises ValueError (``qemu`` with another kind), RuntimeError (a PostgreSQL tool failed,
        pgbench ended early; the message holds its output), PgUnavailable, or what a source
        raises."""
        if "qemu" in kinds and len(kinds) > 1:
            raise ValueError(f"the qemu source runs alone (its disk is a qcow2, the others read a raw image): {kinds}")
        camp = Campaign()
        with contextlib.ExitStack() as live:
            disk: QemuDisk | None = None
            if kinds == ("qemu",):
                self.volume = self.xfs / "pg.qcow2"
                disk = live.enter_context(qsd_disk(self.volume, self.image_bytes, self.work / "qsd", sweep=self.work))
                block = disk.guest  # every write of ext4 goes through QSD
            else:
                self.volume = block = self.xfs / "pg.img"
                with open(self.volume, "wb") as f:
                    f.truncate(self.image_bytes)
            _check(_run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(block)]),
                   "mkfs.ext4")
            sources = self._sources(kinds, disk)
            for kind in kinds:
                camp.stores[kind] = self._stack.enter_context(ChunkStore(self.work / f"store-{kind}"))
                camp.manifests[kind], camp.seconds[kind], camp.modes[kind] = [], [], []
            mnt = live.enter_context(loop_mount(block, self.work / "live"))  # unmounted before QSD stops
            self._load(camp, sources, mnt, n_snapshots, interval_s)
        return camp

    def _load(self, camp: Campaign, sources: dict[str, object], mnt: Path, n_snapshots: int,
              interval_s: float) -> None:
        """initdb on the mounted ext4 ``mnt``, pgbench, the rounds of snapshots (run_load)."""
        kinds = tuple(sources)
        data = mnt / "pgdata"
        data.mkdir()
        shutil.chown(data, PG_USER, PG_USER)
        data.chmod(0o700)
        _check(_run([str(self.bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
                     "--data-checksums"], as_pg=True), "initdb")
        with open(data / "postgresql.conf", "a") as f:  # inherited by every restored copy
            f.write("\nfsync = on\nfull_page_writes = on\nmax_wal_size = 32MB\nmin_wal_size = 32MB\n"
                    "checkpoint_timeout = 30s\nshared_buffers = 16MB\nlog_checkpoints = on\n")
            # durable before any snapshot: a snapshot is what a power cut leaves, and an appended
            # line still in the page cache reads back as zeros there ("contains errors")
            f.flush()
            os.fsync(f.fileno())
        pg = Postgres(self.bindir, data, self.sockdir, self.logdir / "live.log")
        bench: subprocess.Popen | None = None
        stop = threading.Event()
        try:
            _check(pg.start(), "pg_ctl start (live)")
            pg.psql("CREATE DATABASE bench", db="postgres")
            _check(_run([str(self.bindir / "pgbench"), "-i", "-q", "-s", str(self.scale), "-h", str(self.sockdir),
                         "-p", str(pg.port), "-U", PG_USER, DB], as_pg=True), "pgbench -i")
            bench = subprocess.Popen(
                [str(self.bindir / "pgbench"), "-n", "-c", str(self.clients), "-j", "2", "-T", "3600",
                 "-h", str(self.sockdir), "-p", str(pg.port), "-U", PG_USER, DB],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/",
                user=PG_USER, group=pwd.getpwnam(PG_USER).pw_gid, extra_groups=[])
            t_load = time.perf_counter()

            def checkpoints() -> None:
                while not stop.wait(self.checkpoint_every_s):
                    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                        pg.psql("CHECKPOINT")
                        camp.checkpoints += 1

            ck = threading.Thread(target=checkpoints, daemon=True)
            ck.start()
            time.sleep(interval_s)
            parents: dict[str, Manifest | None] = {k: None for k in kinds}
            for seq in range(1, n_snapshots + 1):
                for kind, src in sources.items():
                    if bench.poll() is not None:
                        raise RuntimeError(f"pgbench ended early: {bench.stderr.read()[-800:]}")
                    t0 = time.perf_counter()
                    snap = asyncio.run(src.snapshot(volume="pg", seq=seq, epoch=1, parent=parents[kind],
                                                    store=camp.stores[kind], now_ns=time.time_ns()))
                    asyncio.run(src.committed(snap))
                    camp.seconds[kind].append(time.perf_counter() - t0)
                    camp.modes[kind].append(snap.mode)
                    parents[kind] = snap.result.manifest
                    camp.manifests[kind].append(snap.result.manifest)
                    time.sleep(interval_s / len(sources))
            stop.set()
            ck.join(CMD_TIMEOUT_S)
            camp.transactions = int(pg.psql("SELECT count(*) FROM pgbench_history"))
            camp.load_s = time.perf_counter() - t_load
        finally:
            stop.set()
            if bench is not None:  # by its PID
                if bench.poll() is None:
                    bench.terminate()
                try:
                    bench.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    bench.kill()
                    bench.communicate(timeout=30)
            pg.stop("fast")

    def judge(self, kind: str, index: int, manifest: Manifest, store: ChunkStore) -> Verdict:
        """Restore ``manifest`` into a fresh image (O5 checked), start PostgreSQL on it and judge it."""
        v = Verdict(kind, index)
        image = self.work / f"restored-{kind}-{index}.img"
        try:
            apply_snapshot(image, manifest, store)
            verify_image(image, manifest)  # O5: the restore itself is exact; what follows judges the snapshot
            with loop_mount(image, self.work / f"m-{kind}-{index}") as mnt:
                # the snapshot's lock file names the live postmaster: PostgreSQL ignores a stale one
                # unless that PID is alive, and here it may be (the stopped live server not yet reaped,
                # or its PID reused), so it goes, as after any restore onto another host; no data in it
                (mnt / "pgdata" / "postmaster.pid").unlink(missing_ok=True)
                pg = Postgres(self.bindir, mnt / "pgdata", self.sockdir, self.logdir / f"{kind}-{index}.log")
                try:
                    res = pg.start()
                    if res.returncode != 0:
                        log = pg.log.read_text(errors="replace") if pg.log.exists() else res.stderr
                        v.detail = next((ln for ln in log.splitlines() if "PANIC" in ln or "FATAL" in ln),
                                        log.strip()[-300:])
                        return v
                    v.started = True
                    row = pg.psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                                  "(SELECT sum(tbalance) FROM pgbench_tellers), "
                                  "(SELECT sum(bbalance) FROM pgbench_branches), "
                                  "(SELECT coalesce(sum(delta), 0) FROM pgbench_history)")
                    v.sums = tuple(int(x) for x in row.split("|"))
                    v.invariant = len(set(v.sums)) == 1
                    if not v.invariant:
                        v.detail = f"pgbench sums differ: {v.sums}"
                    res = _run([str(self.bindir / "pg_amcheck"), "-h", str(self.sockdir), "-p", str(pg.port),
                                "-U", PG_USER, "--install-missing", "--heapallindexed", "-d", DB], as_pg=True)
                    v.amcheck = res.returncode == 0
                    if not v.amcheck:
                        v.detail = v.detail or f"pg_amcheck: {(res.stdout + res.stderr).strip()[-300:]}"
                finally:
                    pg.stop("fast")
                if v.started:
                    res = _run([str(self.bindir / "pg_checksums"), "--check", "-D", str(mnt / "pgdata")], as_pg=True)
                    v.checksums = res.returncode == 0
                    if not v.checksums:
                        v.detail = v.detail or f"pg_checksums: {(res.stdout + res.stderr).strip()[-300:]}"
        finally:
            with contextlib.suppress(OSError):
                image.unlink()
        return v


def sample(n: int, k: int, rng: random.Random) -> list[int]:
    """``k`` indexes of ``range(n)`` (all of them if ``k >= n``), the last one always included, sorted."""
    if k >= n:
        return list(range(n))
    picked = set(rng.sample(range(n - 1), k - 1)) | {n - 1}
    return sorted(picked)


__all__ = ["Campaign", "PgUnavailable", "Postgres", "QemuDisk", "Scenario", "Verdict", "loop_mount", "pg_bin",
           "qsd_disk", "require", "require_qemu", "sample", "xfs"]
