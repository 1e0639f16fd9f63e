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
point; ``replicad umount DIR`` reads it back. The export closes by itself once nbdfuse's
connections end (``auto_close``), so a mount whose processes died leaves nothing pinned at
the site. Errors: ToolError (a tool failed: its stderr in the evidence), UsageError (a bad
directory, an unsupported file system, a socket not on this machine), NotFoundError (no
mount recorded at DIR).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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


def _run(cmd: list[str], what: str, timeout_s: float = TOOL_TIMEOUT_S) -> str:
    """Run a tool; its stdout. Raises ToolError (non-zero exit, missing tool, timeout)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
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


def _start_nbdfuse(rec: MountRecord) -> None:
    """Start ``nbdfuse -r`` on the export (its own session: a lasting mount outlives this
    command) and wait until it serves (its pid file). Raises ToolError."""
    fuse = Path(rec.fuse_dir)
    fuse.mkdir(parents=True, exist_ok=True)
    pidfile = Path(rec.state) / "nbdfuse.pid"
    log = open(Path(rec.state) / "nbdfuse.log", "wb")
    try:
        proc = subprocess.Popen(["nbdfuse", "-r", "-P", str(pidfile), str(fuse / "image"), nbd_uri(rec.socket)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError:
        raise ToolError("nbdfuse is not installed (Debian package nbdfuse; scripts/setup.sh installs it)",
                        tool="nbdfuse") from None
    finally:
        log.close()
    _CHILDREN[proc.pid] = proc
    rec.nbdfuse_pid, rec.nbdfuse_start = proc.pid, _proc_start(proc.pid)
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


def _attach(rec: MountRecord, mountpoint: Path, partition: int | None = None) -> None:
    """Loop device (read-only), file system type, read-only mount. An image holding a partition
    table (a whole VM disk): the partition ``partition``, or the only one with a supported file
    system, gets its own read-only loop device (``--offset``/``--sizelimit``). Raises ToolError,
    UsageError (no supported file system, several without ``partition``)."""
    image = str(Path(rec.fuse_dir) / "image")
    rec.loop = _run(["losetup", "--find", "--show", "--read-only", image], "attach the snapshot to a loop device").strip()
    fstype = _probe(rec.loop)
    if partition is not None or (not fstype and _probe(rec.loop, "PTTYPE")):
        parts = _partitions(rec.loop)
        disk, rec.loop = rec.loop, None
        _run(["losetup", "--detach", disk], f"detach {disk}")
        found = []
        for nr, start, size in parts:
            if partition is not None and nr != partition:
                continue
            loop = _run(["losetup", "--find", "--show", "--read-only", "--offset", str(start), "--sizelimit", str(size),
                         image], f"attach partition {nr} to a loop device").strip()
            kind = _probe(loop)
            found.append((nr, kind))
            if kind in MOUNT_OPTIONS and rec.loop is None:
                rec.loop, fstype, rec.partition = loop, kind, nr
            else:
                _run(["losetup", "--detach", loop], f"detach {loop}")
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
    _run(["mount", "-t", fstype, "-o", options, rec.loop, str(mountpoint)], f"mount {rec.loop} ({fstype}) read-only")
    rec.mounted = True


def _teardown(rec: MountRecord) -> list[str]:
    """Undo whatever of ``rec``'s chain exists, in reverse order; returns the problems (each
    step is tried even if an earlier one failed)."""
    problems: list[str] = []
    if rec.mounted:
        try:
            _run(["umount", rec.mountpoint], f"unmount {rec.mountpoint}")
            rec.mounted = False
        except ToolError as err:
            problems.append(err.message)
    if rec.loop and not rec.mounted:
        try:
            _run(["losetup", "--detach", rec.loop], f"detach {rec.loop}")
            rec.loop = None
        except ToolError as err:
            problems.append(err.message)
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
                with contextlib.suppress(ToolError):
                    _run(["fusermount3", "-u", "-z", rec.fuse_dir], f"unmount {rec.fuse_dir}")
        if not _alive(rec):
            rec.nbdfuse_pid = None
        else:
            problems.append(f"nbdfuse (pid {rec.nbdfuse_pid}) did not stop")
    if rec.nbdfuse_pid is None and not rec.mounted and rec.loop is None:
        shutil.rmtree(rec.state, ignore_errors=True)
    return problems


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


def _mount(api: Api, volume: str, seq: int, mountpoint: Path, state: Path, partition: int | None = None) -> MountRecord:
    """The whole chain at ``mountpoint`` (an existing empty directory); on any error every
    link made is undone and the error raised."""
    exp = create_export(api, volume, seq, auto_close=True)
    if not Path(exp["socket"]).exists():
        with contextlib.suppress(ReplicadError):
            api("DELETE", f"/v1/exports/{exp['export_id']}")
        raise UsageError(f"the export socket {exp['socket']} is not on this machine: run this command on the "
                         "site's machine (choose the site with --admin/--config)", socket=exp["socket"])
    rec = MountRecord(str(mountpoint), volume, seq, exp["export_id"], exp["socket"], str(state), str(state / "fuse"))
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _terminate_as_interrupt():
            _start_nbdfuse(rec)
            _attach(rec, mountpoint, partition)
    except BaseException:
        _teardown(rec)
        with contextlib.suppress(ReplicadError):  # auto_close would close it too: at once is better
            api("DELETE", f"/v1/exports/{rec.export_id}")
        raise
    return rec


def _check_mountpoint(mountpoint: Path) -> Path:
    """``mountpoint`` resolved, if it is an existing empty directory nothing is mounted on.
    Raises UsageError otherwise."""
    mountpoint = mountpoint.resolve()
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint} is not a directory (create it first)", path=str(mountpoint))
    if os.path.ismount(mountpoint):
        raise UsageError(f"something is already mounted at {mountpoint}", path=str(mountpoint))
    if any(mountpoint.iterdir()):
        raise UsageError(f"{mountpoint} is not empty", path=str(mountpoint))
    return mountpoint


def _record_dir(mountpoint: Path) -> Path:
    return state_root() / hashlib.sha256(str(mountpoint).encode()).hexdigest()[:16]


def mount(api: Api, volume: str, seq: int, mountpoint: Path, partition: int | None = None) -> dict:
    """Mount snapshot ``volume#seq`` read-only at ``mountpoint`` until :func:`umount`.

    Returns the :class:`MountRecord` as a dict. Raises UsageError (not an empty directory,
    already mounted, unsupported file system), ToolError, and the admin API's errors."""
    mountpoint = _check_mountpoint(mountpoint)
    state = _record_dir(mountpoint)
    if (state / "mount.json").exists():
        raise UsageError(f"a snapshot mount is recorded at {mountpoint}: replicad umount {mountpoint} first",
                         path=str(mountpoint))
    try:
        rec = _mount(api, volume, seq, mountpoint, state, partition)
    except BaseException:
        shutil.rmtree(state, ignore_errors=True)  # nothing of the chain is left (_mount undid it)
        raise
    (state / "mount.json").write_text(json.dumps(asdict(rec)))
    return asdict(rec)


def umount(mountpoint: Path) -> dict:
    """Undo a :func:`mount` at ``mountpoint``: unmount, detach the loop device, stop nbdfuse
    (then the export closes itself). Returns ``{mountpoint, volume, seq, export_id}``.
    Raises NotFoundError (no mount recorded there), ToolError (a step failed: run it again)."""
    mountpoint = mountpoint.resolve()
    path = _record_dir(mountpoint) / "mount.json"
    try:
        rec = MountRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise NotFoundError(f"no snapshot is mounted at {mountpoint} by replicad mount", path=str(mountpoint)) from None
    except (ValueError, TypeError) as err:
        raise UsageError(f"the mount record {path} is unreadable: {err}", path=str(path)) from None
    problems = _teardown(rec)
    if problems:
        if Path(rec.state).is_dir():
            path.write_text(json.dumps(asdict(rec)))
        raise ToolError(f"unmounting {mountpoint} left work undone: {'; '.join(problems)}", problems=problems)
    return {"mountpoint": str(mountpoint), "volume": rec.volume, "seq": rec.seq, "export_id": rec.export_id}


@contextlib.contextmanager
def temporary_mount(api: Api, volume: str, seq: int, partition: int | None = None) -> Iterator[Path]:
    """Snapshot ``volume#seq`` mounted read-only at a temporary directory for the ``with``
    block; everything is undone on the way out (an error, Ctrl-C, SIGTERM included)."""
    state = Path(tempfile.mkdtemp(prefix=f"replicad-{volume}-{seq}-"))
    mountpoint = state / "root"
    mountpoint.mkdir()
    try:
        rec = _mount(api, volume, seq, mountpoint, state / "chain", partition)
    except BaseException:
        shutil.rmtree(state, ignore_errors=True)  # _mount undid its chain
        raise
    try:
        with _terminate_as_interrupt():
            yield mountpoint
    finally:
        problems = _teardown(rec)
        if not problems:
            shutil.rmtree(state, ignore_errors=True)
        else:
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
