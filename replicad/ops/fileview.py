"""File-level views of a snapshot, on the site's own machine (issue 16, item 2): a snapshot
export (:mod:`replicad.site.exports`) made a file by ``nbdfuse``, attached to a read-only loop
device and mounted read-only with the file system's own kernel driver; listing its files;
comparing the trees of two snapshots.

The chain of one mount, each link undone in reverse order on error and on unmount (every
process by its PID, never by name)::

    export (auto_close, over the admin API)   unix socket under the site's data dir
      -> nbdfuse -r STATE/fuse/image nbd+unix:///?socket=...   (a FUSE file, read-only)
      -> losetup --find --show --read-only STATE/fuse/image    (/dev/loopN, read-only)
      -> mount -t TYPE -o ro,... /dev/loopN DIR                (ext2/3/4: ro,noload; XFS: ro,norecovery,nouuid)

``noload``/``norecovery``: the journal is not replayed (a read-only device cannot take the
replay, and a snapshot is shown as it was taken). ``nouuid``: two snapshots of one XFS volume
(or a snapshot beside the live volume) share their UUID. The file system type comes from
``blkid -p``; anything but ext2/3/4 and XFS is refused (UsageError). An image that holds a
partition table (a whole VM disk, ``blkid`` PTTYPE) is read with ``partx``: the partition asked
for, or the only one with a supported file system, gets its own read-only loop device
(``--offset``/``--sizelimit``).

A lasting mount (``replicad mount``) records its chain in ``STATE/mount.json`` under
``$REPLICAD_MOUNT_STATE_DIR`` (default ``/run/replicad/mounts``), one directory per mount
point, before each step runs and again with its result; ``replicad umount DIR`` reads it back.

Interrupts: the tools run in their own session (a Ctrl-C at the terminal reaches this process
only), and SIGINT/SIGTERM wait (:func:`_shielded`) until a step and the record of its result are
done. Cleanup is idempotent and looks at what is there: the mount by its target in
/proc/self/mountinfo, the loop devices by their backing file (sysfs, as ``losetup -j``), and a
FUSE mount a dead nbdfuse left (ENOTCONN) is unmounted lazily. An interrupted command raises
:class:`Interrupted` naming what is left (usually nothing). The export closes by itself once nbdfuse's
connections end (``auto_close``), so a mount whose processes died leaves nothing pinned at
the site. Errors: ToolError (a tool failed: its stderr in the evidence), UsageError (a bad
directory, an unsupported file system, a socket not on this machine), NotFoundError (no
mount recorded at DIR).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import blake3

from replicad.core.errors import NotFoundError, ReplicadError, ToolError, UsageError

STATE_DIR_ENV = "REPLICAD_MOUNT_STATE_DIR"
DEFAULT_STATE_DIR = "/run/replicad/mounts"
FUSE_READY_S = 30.0     # nbdfuse writes its pid file once it serves; longer is a failure
TOOL_TIMEOUT_S = 60.0   # losetup, blkid, mount, umount, fusermount3
MOUNT_OPTIONS = {"ext2": "ro,noload", "ext3": "ro,noload", "ext4": "ro,noload", "xfs": "ro,norecovery,nouuid"}

Api = Callable[..., Any]
"""``api(method, path, body=None) -> decoded JSON``: the admin API of the site (raises its errors)."""


def state_root() -> Path:
    """Where lasting mounts are recorded: ``$REPLICAD_MOUNT_STATE_DIR`` or /run/replicad/mounts."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def nbd_uri(socket: str) -> str:
    """The NBD URI of an export socket, as ``qemu-img``, ``nbdinfo`` and ``nbdfuse`` take it."""
    return f"nbd+unix:///?socket={socket}"


@dataclass
class MountRecord:
    """One mounted snapshot: where (``mountpoint``), what (``volume``, ``seq``, ``export_id``)
    and the chain to undo (``state``: its directory, ``fuse_dir``, ``loop`` device, the
    ``nbdfuse_pid`` and that process's start time in clock ticks, ``fstype``, the ``partition``
    number when the image holds a partition table)."""

    mountpoint: str
    volume: str
    seq: int
    export_id: str
    socket: str
    state: str
    fuse_dir: str
    nbdfuse_pid: int | None = None
    nbdfuse_start: int | None = None
    loop: str | None = None
    fstype: str | None = None
    mounted: bool = False
    partition: int | None = None
    mount_started: bool = False  # the mount step began (recorded before it runs: an interrupt cannot hide it)
    verdict: str = "clean"       # the snapshot's verdict when the export opened (clean or suspect)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a mount (or a command on a temporary mount) after its chain
    was undone: ``left`` names whatever could not be (empty: nothing is left mounted)."""

    def __init__(self, left: list[str] | None = None) -> None:
        super().__init__()
        self.left = list(left or [])

    @property
    def message(self) -> str:
        return "interrupted; " + ("nothing left mounted" if not self.left else "left: " + "; ".join(self.left))


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (a step and the record of its result),
    then raise KeyboardInterrupt."""
    got: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        got.append(signum)
    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            raise KeyboardInterrupt()


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mounted_at(path: str | Path) -> bool:
    """True when something is mounted at ``path`` (by /proc/self/mountinfo: no stat, so a dead
    FUSE mount, whose stat fails with ENOTCONN, is found too)."""
    path = str(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    return any(len(f) > 4 and _unescape(f[4]) == path for f in (line.split(" ") for line in lines))


def _loops_of(image: str) -> list[str]:
    """The loop devices whose backing file is ``image`` (as ``losetup -j``, read from sysfs
    without a stat of the file, which fails under a dead FUSE mount)."""
    out = []
    for bf in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if bf.read_text().strip() in (image, image + " (deleted)"):
                out.append("/dev/" + bf.parent.parent.name)
    return sorted(out)


def _run(cmd: list[str], what: str, timeout_s: float = TOOL_TIMEOUT_S) -> str:
    """Run a tool; its stdout. Raises ToolError (non-zero exit, missing tool, timeout)."""
    try:
        # its own session: a Ctrl-C at the terminal reaches this process (which defers it, _shielded), not the tool
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                           start_new_session=True)
    except FileNotFoundError:
        raise ToolError(f"{what}: {cmd[0]} is not installed (Debian: scripts/setup.sh installs it)",
                        tool=cmd[0]) from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what}: {cmd[0]} did not finish within {timeout_s:.0f} s", tool=cmd[0]) from None
    if p.returncode != 0:
        raise ToolError(f"{what}: {cmd[0]} failed (exit {p.returncode}): {p.stderr.strip()[:400]}", tool=cmd[0],
                        command=cmd, exit_code=p.returncode)
    return p.stdout


_CHILDREN: dict[int, subprocess.Popen] = {}  # nbdfuse processes this process started (reaped when they exit)


def _proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of process ``pid``, None if it is gone: with the PID
    it names one process, not a later one that reused the number."""
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()  # reap our own child once it exited
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(rec: MountRecord) -> bool:
    """True while the nbdfuse process of ``rec`` (its PID and start time) runs."""
    return (rec.nbdfuse_pid is not None and rec.nbdfuse_start is not None
            and _proc_start(rec.nbdfuse_pid) == rec.nbdfuse_start)


def _start_nbdfuse(rec: MountRecord, save: Callable[[MountRecord], None]) -> None:
    """Start ``nbdfuse -r`` on the export (its own session: a lasting mount outlives this
    command) and wait until it serves (its pid file). Raises ToolError."""
    fuse = Path(rec.fuse_dir)
    try:
        fuse.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno != errno.ENOTCONN:
            raise
        raise ToolError(f"a dead FUSE mount is left at {fuse} (Transport endpoint is not connected): "
                        f"replicad umount {rec.mountpoint} removes it (or: fusermount3 -u -z {fuse})",
                        path=str(fuse)) from None
    pidfile = Path(rec.state) / "nbdfuse.pid"
    log = open(Path(rec.state) / "nbdfuse.log", "wb")
    try:
        with _shielded():
            try:
                proc = subprocess.Popen(["nbdfuse", "-r", "-P", str(pidfile), str(fuse / "image"), nbd_uri(rec.socket)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except FileNotFoundError:
                raise ToolError("nbdfuse is not installed (Debian package nbdfuse; scripts/setup.sh installs it)",
                                tool="nbdfuse") from None
            _CHILDREN[proc.pid] = proc
            rec.nbdfuse_pid, rec.nbdfuse_start = proc.pid, _proc_start(proc.pid)
            save(rec)
    finally:
        log.close()
    deadline = time.monotonic() + FUSE_READY_S
    while not pidfile.exists():
        if proc.poll() is not None:
            raise ToolError(f"nbdfuse stopped (exit {proc.returncode}) before serving the export: "
                            f"{(Path(rec.state) / 'nbdfuse.log').read_text(errors='replace').strip()[:400]}",
                            tool="nbdfuse")
        if time.monotonic() > deadline:
            raise ToolError(f"nbdfuse did not serve the export within {FUSE_READY_S:.0f} s", tool="nbdfuse")
        time.sleep(0.05)


def _probe(dev: str, tag: str = "TYPE") -> str:
    """``blkid -p``'s ``tag`` of ``dev`` ("" when it finds none)."""
    try:
        return _run(["blkid", "-p", "-o", "value", "-s", tag, dev], f"probe {dev}").strip()
    except ToolError:  # blkid exits 2 when it recognises nothing
        return ""


def _partitions(dev: str) -> list[tuple[int, int, int]]:
    """``(number, start_bytes, size_bytes)`` of the partitions in ``dev``'s table (``partx``)."""
    out = _run(["partx", "--raw", "--noheadings", "--output", "NR,START,SECTORS", dev],
               f"read the partition table of {dev}")
    parts = []
    for line in out.splitlines():
        nr, start, sectors = (int(x) for x in line.split())
        parts.append((nr, start * 512, sectors * 512))
    return parts


def _attach(rec: MountRecord, mountpoint: Path, partition: int | None = None,
            save: Callable[[MountRecord], None] = lambda rec: None) -> None:
    """Loop device (read-only), file system type, read-only mount. An image holding a partition
    table (a whole VM disk): the partition ``partition``, or the only one with a supported file
    system, gets its own read-only loop device (``--offset``/``--sizelimit``). Raises ToolError,
    UsageError (no supported file system, several without ``partition``)."""
    image = str(Path(rec.fuse_dir) / "image")
    with _shielded():  # every loop device of the image is found by its backing file when cleaning (_loops_of)
        rec.loop = _run(["losetup", "--find", "--show", "--read-only", image],
                        "attach the snapshot to a loop device").strip()
        save(rec)
    fstype = _probe(rec.loop)
    if partition is not None and not fstype and not _probe(rec.loop, "PTTYPE"):
        raise UsageError(f"{rec.volume}#{rec.seq} has no partition table; omit --partition",
                         volume=rec.volume, seq=rec.seq, partition=partition)
    if partition is not None and fstype:
        raise UsageError(f"{rec.volume}#{rec.seq} has no partition table (its file system is {fstype}); "
                         "omit --partition", volume=rec.volume, seq=rec.seq, partition=partition)
    if partition is not None or (not fstype and _probe(rec.loop, "PTTYPE")):
        parts = _partitions(rec.loop)
        with _shielded():
            disk, rec.loop = rec.loop, None
            _run(["losetup", "--detach", disk], f"detach {disk}")
            save(rec)
        found = []
        for nr, start, size in parts:
            if partition is not None and nr != partition:
                continue
            with _shielded():
                loop = _run(["losetup", "--find", "--show", "--read-only", "--offset", str(start), "--sizelimit",
                             str(size), image], f"attach partition {nr} to a loop device").strip()
                rec.loop = rec.loop or loop
                save(rec)
            kind = _probe(loop)
            found.append((nr, kind))
            if kind in MOUNT_OPTIONS and rec.loop == loop and fstype == "" and rec.partition is None:
                fstype, rec.partition = kind, nr
            else:
                with _shielded():
                    _run(["losetup", "--detach", loop], f"detach {loop}")
                    if rec.loop == loop:
                        rec.loop = None
                    save(rec)
        usable = [f"{nr} ({kind})" for nr, kind in found if kind in MOUNT_OPTIONS]
        if rec.loop is None or (partition is None and len(usable) > 1):
            listed = ", ".join(f"{nr}: {kind or 'unknown'}" for nr, kind in found) or "none"
            raise UsageError(f"snapshot {rec.volume}#{rec.seq} holds a partition table (partitions {listed}); "
                             + ("choose one with --partition N" if len(usable) > 1 else
                                f"no partition{'' if partition is None else ' ' + str(partition)} holds a supported "
                                f"file system ({', '.join(sorted(MOUNT_OPTIONS))})"),
                             volume=rec.volume, seq=rec.seq, partitions=[nr for nr, _ in found])
    rec.fstype = fstype or None
    options = MOUNT_OPTIONS.get(fstype)
    if options is None:
        raise UsageError(f"snapshot {rec.volume}#{rec.seq} holds {'a ' + fstype + ' file system' if fstype else 'no file system this machine recognises'}"
                         f" (supported: {', '.join(sorted(MOUNT_OPTIONS))}); 'replicad export' still serves its "
                         "blocks", volume=rec.volume, seq=rec.seq, fstype=fstype or None)
    with _shielded():
        rec.mount_started = True
        save(rec)
        _run(["mount", "-t", fstype, "-o", options, rec.loop, str(mountpoint)], f"mount {rec.loop} ({fstype}) read-only")
        rec.mounted = True
        save(rec)


def _teardown(rec: MountRecord) -> list[str]:
    """Undo whatever of ``rec``'s chain exists, in reverse order; returns the problems (each
    step is tried even if an earlier one failed). Idempotent, and it looks at what is there
    rather than only at the record: the mount by its target in /proc/self/mountinfo, the loop
    devices by their backing file, a FUSE mount left by a dead nbdfuse by its path. SIGINT and
    SIGTERM wait until it is done; then Interrupted, naming what is left."""
    try:
        with _shielded():
            return _teardown_now(rec)
    except KeyboardInterrupt:  # deferred until the teardown was done
        raise Interrupted(_left(rec)) from None


def _teardown_now(rec: MountRecord) -> list[str]:
    problems: list[str] = []
    if (rec.mounted or rec.mount_started) and mounted_at(rec.mountpoint):
        try:
            _run(["umount", rec.mountpoint], f"unmount {rec.mountpoint}")
        except ToolError as err:
            problems.append(err.message)
    if not mounted_at(rec.mountpoint) or not (rec.mounted or rec.mount_started):
        rec.mounted = rec.mount_started = False
    image = str(Path(rec.fuse_dir) / "image")
    if not rec.mounted:
        for loop in sorted(set(_loops_of(image)) | ({rec.loop} if rec.loop else set())):
            try:
                _run(["losetup", "--detach", loop], f"detach {loop}")
            except ToolError as err:
                if loop in _loops_of(image):  # (a recorded device already gone is no problem)
                    problems.append(err.message)
        if not _loops_of(image):
            rec.loop = None
    if rec.nbdfuse_pid is not None and not rec.mounted and rec.loop is None:
        if _alive(rec):
            with contextlib.suppress(ToolError):
                _run(["fusermount3", "-u", rec.fuse_dir], f"unmount {rec.fuse_dir}")
            deadline = time.monotonic() + 10
            while _alive(rec) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(rec):  # by its PID, checked against its start time
                os.kill(rec.nbdfuse_pid, signal.SIGTERM)
                time.sleep(0.5)
        if not _alive(rec):
            rec.nbdfuse_pid = None
        else:
            problems.append(f"nbdfuse (pid {rec.nbdfuse_pid}) did not stop")
    if not rec.mounted and rec.loop is None and rec.nbdfuse_pid is None and mounted_at(rec.fuse_dir):
        # nbdfuse died (or the site restarted under it): its FUSE mount is left, dead (ENOTCONN)
        for cmd in (["fusermount3", "-u", "-z", rec.fuse_dir], ["umount", "-l", rec.fuse_dir]):
            with contextlib.suppress(ToolError):
                _run(cmd, f"unmount the dead FUSE mount {rec.fuse_dir}")
            if not mounted_at(rec.fuse_dir):
                break
        else:
            problems.append(f"a dead FUSE mount is left at {rec.fuse_dir} (fusermount3 -u -z {rec.fuse_dir})")
    if rec.nbdfuse_pid is None and not rec.mounted and rec.loop is None and not mounted_at(rec.fuse_dir):
        shutil.rmtree(rec.state, ignore_errors=True)
    return problems


def _left(rec: MountRecord) -> list[str]:
    """What of ``rec``'s chain is still there (after a teardown), one phrase each."""
    left = []
    if mounted_at(rec.mountpoint) and (rec.mounted or rec.mount_started):
        left.append(f"{rec.mountpoint} mounted")
    left += [f"loop device {loop}" for loop in _loops_of(str(Path(rec.fuse_dir) / "image"))]
    if rec.nbdfuse_pid is not None and _alive(rec):
        left.append(f"nbdfuse pid {rec.nbdfuse_pid}")
    if mounted_at(rec.fuse_dir):
        left.append(f"FUSE mount {rec.fuse_dir}")
    return left


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, so that the cleanup runs."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt()
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def create_export(api: Api, volume: str, seq: int, *, writable: bool = False, auto_close: bool = False) -> dict:
    """``POST /v1/volumes/VOL/exports``; the export's description (``socket``, ``uri`` ...)."""
    return api("POST", f"/v1/volumes/{volume}/exports", {"snapshot": seq, "writable": writable,
                                                        "auto_close": auto_close})


def _mount(api: Api, volume: str, seq: int, mountpoint: Path, state: Path, partition: int | None = None,
           save: Callable[[MountRecord], None] = lambda rec: None) -> MountRecord:
    """The whole chain at ``mountpoint`` (an existing empty directory); on any error every
    link made is undone and the error raised. ``save(rec)`` records each step's intent before
    it runs and its result after (SIGINT/SIGTERM wait meanwhile). Interrupted: Interrupted
    (what is left, if anything)."""
    try:
        exp = create_export(api, volume, seq, auto_close=True)
    except KeyboardInterrupt:  # an export made meanwhile closes itself (auto_close, no connection)
        raise Interrupted() from None
    if not Path(exp["socket"]).exists():
        with contextlib.suppress(ReplicadError):
            api("DELETE", f"/v1/exports/{exp['export_id']}")
        raise UsageError(f"the export socket {exp['socket']} is not on this machine: run this command on the "
                         "site's machine (choose the site with --admin/--config)", socket=exp["socket"])
    rec = MountRecord(str(mountpoint), volume, seq, exp["export_id"], exp["socket"], str(state), str(state / "fuse"),
                      verdict=exp.get("verdict", "clean"))
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _terminate_as_interrupt():
            save(rec)
            _start_nbdfuse(rec, save)
            _attach(rec, mountpoint, partition, save)
    except BaseException as err:
        try:
            problems = _teardown(rec)
        except Interrupted as again:  # a second Ctrl-C: the teardown was still finished
            problems, err = again.left, again
        if Path(rec.state).is_dir():
            with contextlib.suppress(OSError):
                save(rec)  # what is left stays recorded: replicad umount finishes it
        with contextlib.suppress(ReplicadError, KeyboardInterrupt):  # auto_close would close it too: at once is better
            api("DELETE", f"/v1/exports/{rec.export_id}")
        if isinstance(err, KeyboardInterrupt):
            raise Interrupted(_left(rec)) from None
        raise
    return rec


def _check_mountpoint(mountpoint: Path) -> Path:
    """``mountpoint`` resolved, if it is an existing empty directory nothing is mounted on.
    Raises UsageError otherwise."""
    mountpoint = mountpoint.resolve()
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint} is not a directory (create it first)", path=str(mountpoint))
    if os.path.ismount(mountpoint) or mounted_at(mountpoint):
        raise UsageError(f"something is already mounted at {mountpoint}", path=str(mountpoint))
    if any(mountpoint.iterdir()):
        raise UsageError(f"{mountpoint} is not empty", path=str(mountpoint))
    return mountpoint


def _record_dir(mountpoint: Path) -> Path:
    return state_root() / hashlib.sha256(str(mountpoint).encode()).hexdigest()[:16]


def _leftover(state: Path, mountpoint: Path) -> MountRecord:
    """A record of whatever an unrecorded earlier chain left in ``state`` (a dead FUSE mount,
    loop devices of its image)."""
    return MountRecord(str(mountpoint), "?", 0, "?", "", str(state), str(state / "fuse"))


def mount(api: Api, volume: str, seq: int, mountpoint: Path, partition: int | None = None) -> dict:
    """Mount snapshot ``volume#seq`` read-only at ``mountpoint`` until :func:`umount`.

    The record (``mount.json``) is written before each step, so that ``replicad umount``
    undoes a chain whose command was killed. Returns the :class:`MountRecord` as a dict.
    Raises UsageError (not an empty directory, already mounted, unsupported file system),
    ToolError, Interrupted, and the admin API's errors."""
    mountpoint = _check_mountpoint(mountpoint)
    state = _record_dir(mountpoint)
    if (state / "mount.json").exists():
        raise UsageError(f"a snapshot mount is recorded at {mountpoint}: replicad umount {mountpoint} first",
                         path=str(mountpoint))
    if state.exists():  # a chain left without its record (e.g. a dead FUSE mount): cleared first
        problems = _teardown(_leftover(state, mountpoint))
        if problems:
            raise ToolError(f"an earlier mount at {mountpoint} left work undone: {'; '.join(problems)}",
                            problems=problems)

    def save(rec: MountRecord) -> None:
        tmp = state / "mount.json.tmp"
        tmp.write_text(json.dumps(asdict(rec)))
        tmp.replace(state / "mount.json")
    try:
        rec = _mount(api, volume, seq, mountpoint, state, partition, save)
    except Interrupted as intr:
        if intr.left:
            intr.left.append(f"recorded: replicad umount {mountpoint} undoes it")
        raise
    return asdict(rec)


def umount(mountpoint: Path) -> dict:
    """Undo a :func:`mount` at ``mountpoint``: unmount, detach the loop device, stop nbdfuse
    (then the export closes itself), and remove the FUSE mount a dead nbdfuse left. Returns
    ``{mountpoint, volume, seq, export_id, done: [what was undone]}``. Raises NotFoundError
    (nothing of a mount there), ToolError (a step failed: the message says what is left; run it
    again)."""
    mountpoint = mountpoint.resolve()
    state = _record_dir(mountpoint)
    path = state / "mount.json"
    try:
        rec = MountRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        if not state.exists():
            raise NotFoundError(f"no snapshot is mounted at {mountpoint} by replicad mount",
                                path=str(mountpoint)) from None
        rec = _leftover(state, mountpoint)
    except (ValueError, TypeError) as err:
        raise UsageError(f"the mount record {path} is unreadable: {err}", path=str(path)) from None
    except OSError as err:
        if err.errno != errno.ENOTCONN:
            raise
        rec = _leftover(state, mountpoint)
    done = []
    if (rec.mounted or rec.mount_started) and mounted_at(rec.mountpoint):
        done.append(f"unmounted {rec.mountpoint}")
    loops = sorted(set(_loops_of(str(Path(rec.fuse_dir) / "image"))) | ({rec.loop} if rec.loop else set()))
    done += [f"detached {loop}" for loop in loops]
    if rec.nbdfuse_pid is not None and _alive(rec):
        done.append(f"stopped nbdfuse (pid {rec.nbdfuse_pid})")
    elif mounted_at(rec.fuse_dir):
        done.append(f"removed the dead FUSE mount {rec.fuse_dir} (nbdfuse had stopped)")
    try:
        problems = _teardown(rec)
    except Interrupted as intr:  # Ctrl-C meanwhile: the teardown was finished first
        problems = intr.left
        if not problems:
            raise
    if problems:
        if Path(rec.state).is_dir():
            with contextlib.suppress(OSError):
                path.write_text(json.dumps(asdict(rec)))
        raise ToolError(f"unmounting {mountpoint} left work undone: {'; '.join(problems)}; left: "
                        f"{'; '.join(_left(rec)) or 'nothing mounted'}", problems=problems, left=_left(rec))
    return {"mountpoint": str(mountpoint), "volume": rec.volume, "seq": rec.seq, "export_id": rec.export_id,
            "done": done}


@contextlib.contextmanager
def temporary_mount(api: Api, volume: str, seq: int, partition: int | None = None,
                    seen: dict | None = None) -> Iterator[Path]:
    """Snapshot ``volume#seq`` mounted read-only at a temporary directory for the ``with``
    block; everything is undone on the way out (an error, Ctrl-C, SIGTERM included: then
    Interrupted, naming what is left). ``seen``, when given, receives the mount's record
    (``verdict`` ...)."""
    state = Path(tempfile.mkdtemp(prefix=f"replicad-{volume}-{seq}-"))
    mountpoint = state / "root"
    mountpoint.mkdir()
    try:
        rec = _mount(api, volume, seq, mountpoint, state / "chain", partition)
    except BaseException as err:
        left = err.left if isinstance(err, Interrupted) else []
        if not left:
            shutil.rmtree(state, ignore_errors=True)  # _mount undid its chain
        raise
    if seen is not None:
        seen.update(asdict(rec))
    interrupted: Interrupted | None = None
    try:
        with _terminate_as_interrupt():
            yield mountpoint
    except KeyboardInterrupt as ki:
        interrupted = ki if isinstance(ki, Interrupted) else Interrupted()
    finally:
        try:
            problems = _teardown(rec)
        except Interrupted as again:
            problems, interrupted = again.left, interrupted or Interrupted()
        if not problems:
            shutil.rmtree(state, ignore_errors=True)
        if interrupted is not None:
            raise Interrupted(interrupted.left + (_left(rec) if problems else [])) from None
        if problems:
            raise ToolError(f"cleaning up the temporary mount {mountpoint} failed: {'; '.join(problems)}",
                            problems=problems)


# ---------------------------------------------------------------------- files and diffs

def _kind(mode: int) -> str:
    return ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "symlink" if stat.S_ISLNK(mode)
            else "other")


def _entry(root: Path, path: Path, st: os.stat_result) -> dict:
    rel = "/" + str(path.relative_to(root)) if path != root else "/"
    out = {"path": rel, "kind": _kind(st.st_mode), "mode": stat.filemode(st.st_mode), "size_bytes": st.st_size,
           "mtime_ns": st.st_mtime_ns, "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        out["target"] = os.readlink(path)
    return out


def _inside(root: Path, sub: str) -> Path:
    """``root/sub`` without leaving ``root`` (``..`` and symlinks are not followed out)."""
    p = (root / sub.lstrip("/")).resolve()
    if p != root.resolve() and root.resolve() not in p.parents:
        raise UsageError(f"{sub} leaves the snapshot's file system", path=sub)
    return p


def list_files(root: Path, sub: str = "/", recursive: bool = False) -> list[dict]:
    """Entries under ``sub`` of the tree at ``root``: ``{path, kind, mode, size_bytes, mtime_ns,
    uid, gid, target?}``, sorted by path; a directory's own entries (all below it with
    ``recursive``), or the one entry when ``sub`` is not a directory. Raises NotFoundError."""
    base = _inside(root, sub)
    try:
        st = base.lstat()
    except FileNotFoundError:
        raise NotFoundError(f"{sub} does not exist in the snapshot", path=sub) from None
    except NotADirectoryError:  # a path through a regular file: named as given, never the mount's own path
        raise NotFoundError(f"{sub} does not exist in the snapshot (a part of it is a file, not a directory)",
                            path=sub) from None
    if not stat.S_ISDIR(st.st_mode):
        return [_entry(root, base, st)]
    out = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                out.append(_entry(root, p, p.lstat()))
    else:
        for p in base.iterdir():
            out.append(_entry(root, p, p.lstat()))
    return sorted(out, key=lambda e: e["path"])


def _tree(root: Path) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out["/" + str(p.relative_to(root))] = p.lstat()
    return out


def _digest(path: Path) -> bytes:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(4 * 2**20):
            h.update(block)
    return h.digest()


def diff_trees(a: Path, b: Path, quick: bool = False) -> dict:
    """Compare the trees at ``a`` (older) and ``b`` (newer) by path (``lstat``, links not followed).

    Returns ``{"added": [entry], "removed": [entry], "changed": [entry + "why": [..]],
    "metadata": [entry + "why"]}`` (entries as :func:`list_files`, of ``b``, of ``a`` for removed).
    A path is *changed* when its kind, its size, a symlink's target, or a regular file's content
    (BLAKE3 of both, read whenever the sizes match: mtimes can be forged) differs; with ``quick``
    equal size and mtime count as equal content. *metadata*: content equal, mode, owner or mtime
    differ. Directories are only added or removed."""
    ta, tb = _tree(a), _tree(b)
    added = [_entry(b, b / p.lstrip("/"), tb[p]) for p in sorted(set(tb) - set(ta))]
    removed = [_entry(a, a / p.lstrip("/"), ta[p]) for p in sorted(set(ta) - set(tb))]
    changed, metadata = [], []
    for p in sorted(set(ta) & set(tb)):
        sa, sb = ta[p], tb[p]
        why = []
        if _kind(sa.st_mode) != _kind(sb.st_mode):
            why.append("kind")
        elif stat.S_ISLNK(sb.st_mode):
            if os.readlink(a / p.lstrip("/")) != os.readlink(b / p.lstrip("/")):
                why.append("target")
        elif stat.S_ISREG(sb.st_mode):
            if sa.st_size != sb.st_size:
                why.append("size")
            elif not (quick and sa.st_mtime_ns == sb.st_mtime_ns) and \
                    _digest(a / p.lstrip("/")) != _digest(b / p.lstrip("/")):
                why.append("content")
        entry = _entry(b, b / p.lstrip("/"), sb)
        if why:
            changed.append({**entry, "why": why})
            continue
        if _kind(sb.st_mode) == "dir":
            continue
        meta = [k for k, x, y in (("mode", sa.st_mode, sb.st_mode), ("owner", (sa.st_uid, sa.st_gid),
                                                                       (sb.st_uid, sb.st_gid)),
                                  ("mtime", sa.st_mtime_ns, sb.st_mtime_ns)) if x != y]
        if meta:
            metadata.append({**entry, "why": meta})
    return {"added": added, "removed": removed, "changed": changed, "metadata": metadata}
