"""Point in time + changed ranges on btrfs: a read-only subvolume snapshot per cycle and the image's
file extent items newer than the previous snapshot (``btrfs subvolume find-new``'s method), paired
at two image sizes with the same write history, beside FICLONE of the image inside btrfs.

Each size (``--gib``, default ``1,16``) gets a sparse loop btrfs under ``--work`` with the image
(distinct text-like 64 KiB blocks) in a subvolume of its own (``vol/ehr.img``); ``--mode``
``cow`` (default), ``nodatacow`` (``chattr +C`` on the empty image) or ``zstd`` (mounted
``compress=zstd:1``). Snapshot 0 is taken after the image is written. Then ``--cycles`` rounds,
the sizes taking turns going first; per round and image: ``--blocks`` (default 163) random
64 KiB blocks rewritten and fsynced (plus ``--punch`` blocks hole-punched, default 0;
``--features`` passes ``mkfs.btrfs -O``, e.g. ``^no-holes``), then

* ``snap``: ``BTRFS_IOC_SNAP_CREATE_V2`` (read-only) of the subvolume (commits a transaction);
* ``find``: ``BTRFS_IOC_TREE_SEARCH_V2`` over the new snapshot's tree for the image inode's
  ``EXTENT_DATA`` items with ``min_transid`` above the previous snapshot's root generation (the
  kernel skips subtrees not written since), keeping the items whose own generation is above it
  (the search returns whole leaves written since); their file ranges are the changes;
* ``drop``: ``BTRFS_IOC_SNAP_DESTROY`` of the previous snapshot (the cleaner thread frees it later);
* every ``--clone-every`` rounds: ``FICLONE`` of the image to a file beside it and its unlink.

Reported per cycle: wall, user and sys CPU seconds of this process per phase, the CPU seconds of
this file system's ``btrfs-cleaner`` and ``btrfs-transaction`` kernel threads during the round
(deletion and commit work done outside this process; data writeback in shared kworkers is not
counted), the image's extents (``filefrag``), the load average; and correctness: every rewritten
or punched block must lie in a reported range (a miss is counted and printed), over-reported
blocks are counted. Prints one line per cycle and medians per window; ``--json`` keeps samples.

    python3 -m tests.bench.btrfs_findnew --work /tmp/btrfs [--gib 1,16] [--cycles 100] [--mode cow]

Kernel structures and ioctl numbers: include/uapi/linux/btrfs.h, btrfs_tree.h (Linux);
the method: cmds/subvolume.c ``find_updated_files`` (btrfs-progs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import re
import resource
import statistics
import struct
import subprocess
import time
from pathlib import Path

from tests.bench.bench import BLOCK_BYTES, write_text_image
from tests import loopfs
from tests.loopfs import loop_fs


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0x94 << 8) | nr


SEARCH_KEY = struct.Struct("<7Q4I4Q")          # struct btrfs_ioctl_search_key (104 bytes)
SEARCH_HEADER = struct.Struct("<3Q2I")          # struct btrfs_ioctl_search_header (32 bytes)
FILE_EXTENT = struct.Struct("<QQBBHBQQQQ")      # struct btrfs_file_extent_item (53 bytes, packed)
IOC_TREE_SEARCH_V2 = _ioc(3, 17, SEARCH_KEY.size + 8)
IOC_INO_LOOKUP = _ioc(3, 18, 4096)
IOC_SNAP_CREATE_V2 = _ioc(1, 23, 4096)
IOC_SNAP_DESTROY = _ioc(1, 15, 4096)
FICLONE = 0x40049409
EXTENT_DATA_KEY, ROOT_ITEM_KEY, ROOT_TREE, FIRST_FREE_OBJECTID = 108, 132, 1, 256
U64 = 2**64 - 1
RDONLY = 1 << 1
SEARCH_BUF = 1 << 20


def _search(fd: int, tree: int, objectid: int, typ: int, min_transid: int = 0):
    """Yield (leaf transid, key offset, item bytes) of ``tree``'s items (objectid, typ, *)."""
    buf = bytearray(SEARCH_KEY.size + 8 + SEARCH_BUF)
    min_off = 0
    while True:
        SEARCH_KEY.pack_into(buf, 0, tree, objectid, objectid, min_off, U64, min_transid, U64,
                             typ, typ, 4096, 0, 0, 0, 0, 0)
        struct.pack_into("<Q", buf, SEARCH_KEY.size, SEARCH_BUF)
        fcntl.ioctl(fd, IOC_TREE_SEARCH_V2, buf, True)
        n = SEARCH_KEY.unpack_from(buf, 0)[9]
        if n == 0:
            return
        pos, off = SEARCH_KEY.size + 8, 0
        for _ in range(n):
            transid, _obj, off, _typ, ln = SEARCH_HEADER.unpack_from(buf, pos)
            pos += SEARCH_HEADER.size
            yield transid, off, memoryview(buf)[pos:pos + ln]
            pos += ln
        if off == U64:
            return
        min_off = off + 1


def root_of(path: Path) -> tuple[int, int]:
    """(root id, root item generation) of the subvolume at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = bytearray(4096)
        struct.pack_into("<QQ", args, 0, 0, FIRST_FREE_OBJECTID)
        fcntl.ioctl(fd, IOC_INO_LOOKUP, args, True)
        rootid = struct.unpack_from("<Q", args, 0)[0]
        gens = [struct.unpack_from("<Q", item, 160)[0] for _t, _o, item in _search(fd, ROOT_TREE, rootid, ROOT_ITEM_KEY)]
        return rootid, gens[-1]
    finally:
        os.close(fd)


def changed_since(snap: Path, ino: int, gen: int) -> dict:
    """The image's file ranges in snapshot ``snap`` written after transaction ``gen`` (the
    previous snapshot's: it was made while committing ``gen``, so its writes are in ``gen`` or
    before and every later write is in a later transaction):
    {"ranges": [(offset, bytes)], "items_seen", "items_kept", "min_gen_kept"}."""
    fd = os.open(snap, os.O_RDONLY | os.O_DIRECTORY)
    ranges, seen, gmin = [], 0, None
    try:
        for _t, off, item in _search(fd, 0, ino, EXTENT_DATA_KEY, min_transid=gen + 1):
            seen += 1
            g, ram, _c, _e, _o, typ, _db, _dn, _xo, num = FILE_EXTENT.unpack_from(item, 0) if len(item) >= 53 \
                else (*struct.unpack_from("<QQBBHB", item, 0), 0, 0, 0, 0)
            if g <= gen:
                continue
            gmin = g if gmin is None else min(gmin, g)
            ranges.append((off, ram if typ == 0 else num))
    finally:
        os.close(fd)
    return {"ranges": ranges, "items_seen": seen, "items_kept": len(ranges), "min_gen_kept": gmin}


def snap_create(vol: Path, dest: Path, name: str) -> None:
    src = os.open(vol, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = bytearray(4096)
        struct.pack_into("<qQQ", args, 0, src, 0, RDONLY)
        args[56:56 + len(name)] = name.encode()
        fcntl.ioctl(dfd, IOC_SNAP_CREATE_V2, args)
    finally:
        os.close(src)
        os.close(dfd)


def snap_destroy(dest: Path, name: str) -> None:
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = bytearray(4096)
        args[8:8 + len(name)] = name.encode()
        fcntl.ioctl(dfd, IOC_SNAP_DESTROY, args)
    finally:
        os.close(dfd)


def filefrag(path: Path) -> int:
    out = subprocess.run(["filefrag", str(path)], check=True, capture_output=True, text=True, timeout=600).stdout
    return int(re.search(r"(\d+) extents? found", out).group(1))


def kthreads() -> dict[int, str]:
    found = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                comm = (p / "comm").read_text().strip()
                if comm in ("btrfs-cleaner", "btrfs-transaction"):
                    found[int(p.name)] = comm
    return found


def kcpu(pids: list[int]) -> float:
    tot = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            tot += int(f[11]) + int(f[12])
    return tot / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall, user and sys seconds of this process over a ``with`` block, into ``sample``."""

    def __init__(self, sample: dict, name: str) -> None:
        self.s, self.n = sample, name

    def __enter__(self):
        self.r, self.t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()

    def __exit__(self, *exc):
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.s[f"{self.n}_wall"] = time.perf_counter() - self.t
        self.s[f"{self.n}_usr"] = r.ru_utime - self.r.ru_utime
        self.s[f"{self.n}_sys"] = r.ru_stime - self.r.ru_stime


class Volume:
    """One image in its own subvolume on its own loop btrfs, and its snapshots."""

    def __init__(self, gib: int, mnt: Path, mode: str, kpids: list[int]) -> None:
        self.gib, self.mnt, self.kpids, self.mode = gib, mnt, kpids, mode
        self.vol, self.snaps = mnt / "vol", mnt / "snaps"
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(self.vol)], check=True, timeout=60)
        self.snaps.mkdir()
        self.img = self.vol / "ehr.img"
        self.img.touch()
        if mode == "nodatacow":
            subprocess.run(["chattr", "+C", str(self.img)], check=True, timeout=60)
        self.rng = random.Random(gib)
        write_text_image(self.img, gib * 2**30, self.rng)
        os.sync()
        self.nblocks = gib * 2**30 // BLOCK_BYTES
        self.ino = self.img.stat().st_ino
        self.k = 0
        snap_create(self.vol, self.snaps, "s0")
        self.gen = root_of(self.snaps / "s0")[1]

    def write(self, n: int, punch: int) -> set[int]:
        picked = self.rng.sample(range(self.nblocks), n + punch)
        with open(self.img, "r+b") as f:
            for b in sorted(picked[:n]):
                line = f"edit {self.k} block {b} value {self.rng.randrange(10**9)}: reviewed\n".encode()
                f.seek(b * BLOCK_BYTES)
                f.write((line * (BLOCK_BYTES // len(line) + 1))[:BLOCK_BYTES])
            f.flush()
            for b in picked[n:]:
                _punch(f.fileno(), b * BLOCK_BYTES, BLOCK_BYTES)
            os.fsync(f.fileno())
        return set(picked)

    def cycle(self, n: int, punch: int, clone: bool) -> dict:
        written = self.write(n, punch)
        s = {"gib": self.gib, "round": self.k, "load1": os.getloadavg()[0]}
        k0 = kcpu(self.kpids)
        self.k += 1
        new = f"s{self.k}"
        with Phase(s, "snap"):
            snap_create(self.vol, self.snaps, new)
        with Phase(s, "find"):
            gen = root_of(self.snaps / new)[1]
            ch = changed_since(self.snaps / new, self.ino, self.gen)
        with Phase(s, "drop"):
            snap_destroy(self.snaps, f"s{self.k - 1}")
        reported = set()
        for off, ln in ch["ranges"]:
            reported.update(range(off // BLOCK_BYTES, (off + ln - 1) // BLOCK_BYTES + 1))
        s.update(prev_gen=self.gen, gen=gen, items_seen=ch["items_seen"], items_kept=ch["items_kept"],
                 reported_blocks=len(reported), missed=sorted(written - reported)[:20], n_missed=len(written - reported),
                 over_blocks=len(reported - written), written=len(written))
        self.gen = gen
        if clone:
            dst = self.vol / ".clone"
            dst.touch()
            if self.mode == "nodatacow":  # btrfs clones only between files of the same NOCOW flag
                subprocess.run(["chattr", "+C", str(dst)], check=True, timeout=60)
            with Phase(s, "clone"):
                with open(self.img, "rb") as a, open(dst, "r+b") as b:
                    fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
            with Phase(s, "unlink"):
                dst.unlink()
        s["kthread_cpu"] = kcpu(self.kpids) - k0
        s["extents"] = filefrag(self.img)
        return s


def _punch(fd: int, off: int, ln: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, 0x01 | 0x02, off, ln) != 0:  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
        raise OSError(ctypes.get_errno(), "fallocate punch")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--gib", default="1,16")
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--blocks", type=int, default=163)
    ap.add_argument("--punch", type=int, default=0)
    ap.add_argument("--mode", choices=("cow", "nodatacow", "zstd"), default="cow")
    ap.add_argument("--features", default="", help="mkfs.btrfs -O list, e.g. ^no-holes")
    ap.add_argument("--clone-every", type=int, default=10)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [int(x) for x in args.gib.split(",") if x]
    if args.features:
        loopfs.MKFS["btrfs"] = [*loopfs.MKFS["btrfs"], "-O", args.features]
    samples: list[dict] = []
    with contextlib.ExitStack() as stack:
        vols = []
        for gib in sizes:
            root = args.work / f"{args.mode}-{gib}"
            root.mkdir(parents=True)
            stack.callback(root.rmdir)
            before = set(kthreads())
            mnt = stack.enter_context(loop_fs(root, "btrfs", size_bytes=gib * 2**30 * 5 // 4 + 2 * 2**30))
            if args.mode == "zstd":
                subprocess.run(["mount", "-o", "remount,compress=zstd:1", str(mnt)], check=True, timeout=60)
            kp = sorted(set(kthreads()) - before)
            t0 = time.perf_counter()
            v = Volume(gib, mnt, args.mode, kp)
            stack.callback(lambda v=v: subprocess.run(["btrfs", "-q", "subvolume", "delete", *map(str, v.snaps.iterdir())],
                                                      timeout=600, check=False))
            print(f"{gib} GiB {args.mode}: image written in {time.perf_counter() - t0:.1f}s, "
                  f"{filefrag(v.img)} extents, kthreads {kp}", flush=True)
            vols.append(v)
        for k in range(args.cycles):
            for v in (vols if k % 2 == 0 else vols[::-1]):
                s = v.cycle(args.blocks, args.punch, args.clone_every > 0 and k % args.clone_every == args.clone_every - 1)
                samples.append(s)
                tot = s["snap_wall"] + s["find_wall"] + s["drop_wall"]
                cpu = sum(s[f"{p}_{c}"] for p in ("snap", "find", "drop") for c in ("usr", "sys"))
                print(f"r{k:3} {v.gib:>2}G ext {s['extents']:>6} | snap {s['snap_wall']*1e3:6.1f} (sys {s['snap_sys']*1e3:5.1f}) "
                      f"find {s['find_wall']*1e3:6.1f} (usr {s['find_usr']*1e3:5.1f} sys {s['find_sys']*1e3:5.1f}) "
                      f"drop {s['drop_wall']*1e3:6.1f} | tot {tot*1e3:6.1f} cpu {cpu*1e3:6.1f} kthr {s['kthread_cpu']*1e3:5.0f} ms"
                      f" | items {s['items_seen']}/{s['items_kept']} rep {s['reported_blocks']} miss {s['n_missed']}"
                      f" over {s['over_blocks']}"
                      + (f" | clone {s['clone_wall']*1e3:.1f} (sys {s['clone_sys']*1e3:.1f}) unlink {s['unlink_wall']*1e3:.1f}"
                         if "clone_wall" in s else "") + f" | load {s['load1']:.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    miss = sum(s["n_missed"] for s in samples)
    print(f"\nmode {args.mode}: missed blocks in all cycles: {miss}"
          + (f" (FATAL: first {[(s['gib'], s['round'], s['missed']) for s in samples if s['n_missed']][:3]})" if miss else ""))
    print("medians per window (ms; ext = image extents after the cycle; cpu = this process usr+sys of snap+find+drop)")
    for lo in range(0, args.cycles, args.window):
        row, tots, cpus = [], [], []
        for gib in sizes:
            w = [s for s in samples if s["gib"] == gib and lo <= s["round"] < lo + args.window]
            tot = med([s["snap_wall"] + s["find_wall"] + s["drop_wall"] for s in w])
            cpu = med([sum(s[f"{p}_{c}"] for p in ("snap", "find", "drop") for c in ("usr", "sys")) for s in w])
            tots.append(tot)
            cpus.append(cpu)
            cl = [s["clone_wall"] for s in w if "clone_wall" in s]
            row.append(f"{gib}G ext {med([s['extents'] for s in w]):.0f} tot {tot*1e3:.1f} cpu {cpu*1e3:.1f} "
                       f"snap {med([s['snap_wall'] for s in w])*1e3:.1f}/sys {med([s['snap_sys'] for s in w])*1e3:.1f} "
                       f"find {med([s['find_wall'] for s in w])*1e3:.1f}/sys {med([s['find_sys'] for s in w])*1e3:.1f} "
                       f"drop {med([s['drop_wall'] for s in w])*1e3:.1f} kthr {med([s['kthread_cpu'] for s in w])*1e3:.0f} "
                       f"over {med([s['over_blocks'] for s in w]):.0f}"
                       + (f" clone {med(cl)*1e3:.1f}" if cl else ""))
        load = [s["load1"] for s in samples if lo <= s["round"] < lo + args.window]
        print(f"rounds {lo}-{min(lo + args.window, args.cycles) - 1}: " + " | ".join(row)
              + f" | ratio wall {tots[-1] / tots[0]:.2f} cpu {cpus[-1] / cpus[0]:.2f} | load {min(load):.1f}-{max(load):.1f}")


if __name__ == "__main__":
    main()
