"""What an ext2/3/4 file system in a volume image allocates and what its files reference.

The ransomware signal's wipe measure (:func:`replicad.core.anomaly.judge_relative`, ``wipe_max``)
counts blocks that held data and are now zeros. ``fstrim`` (or ``-o discard``) on a file system in
a loop-mounted image or a thin volume turns the file system's *free* blocks into holes, which read
as zeros: after ``VACUUM FULL`` moved a database's tables, its old relation files' blocks read as
zeros although nothing was lost. This module reads, from the bytes of one snapshot, the two maps
that tell a discard from a wipe (:func:`read_allocation`):

* the **block bitmaps**: which file-system blocks the file system says are in use;
* the **blocks its files reference**: every extent of every in-use inode's extent tree (and the
  tree's own index and leaf blocks, and extended-attribute blocks), as the kernel finds a file's
  data. A wiper that zeroes live files leaves them referenced; one that also unlinks them makes the
  file system reference less data, which :attr:`Ext4Allocation.written` (with the blocks' content:
  :func:`data_weight`) measures.

The on-disk format is the kernel's, ``Documentation/filesystems/ext4/`` (``super.rst``: the
superblock at byte 1024, ``group_descr.rst``: the group descriptor table in the block after the
superblock's, 32 or ``s_desc_size`` bytes per group with ``INCOMPAT_64BIT``; ``bitmaps.rst``: one
bit per block, least significant bit first, 1 = in use; ``inodes.rst``: ``i_mode`` at 0x0,
``i_links_count`` at 0x1A, ``i_flags`` at 0x20 (``EXTENTS_FL`` 0x80000, ``INLINE_DATA_FL``
0x10000000), ``i_block`` at 0x28 (60 bytes), ``i_file_acl`` at 0x68 and its high 16 bits at 0x76;
``ifork.rst``: the extent tree, a 12-byte header (magic 0xF30A, entries, max, depth) followed by
12-byte index entries (``ei_leaf_lo`` at 4, ``ei_leaf_hi`` at 8) or leaf extents (``ee_block``,
``ee_len`` at 4 (above 32768: an unwritten extent of ``ee_len - 32768`` blocks), ``ee_start_hi``
at 6, ``ee_start_lo`` at 8)). The PyPI ``ext4`` reader (1.4.1) reads files by path and offers no
block bitmap or whole-table walk, and pins its dependencies to exact versions; e2fsprogs'
``dumpe2fs``/``debugfs`` need the image as a file. The few fields needed are read here with numpy,
from the snapshot's verified chunks.

The bytes are the volume's, so possibly an attacker's: every count is bounded by the volume's size,
an extent tree by :data:`TREE_DEPTH_MAX` levels and :data:`TREE_NODES_MAX` nodes, and the whole walk
by a work budget proportional to the file system's blocks (:func:`parse_budget`); anything this
reader does not understand (no ext2/3/4 superblock, ``META_BG``, ``BIGALLOC``, a file mapped by
ext2/3 indirect blocks, a malformed tree) gives ``None``: the caller then excuses nothing (the
wipe measure counts every zeroed block, as before).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from replicad.core.anomaly import fill_period

EXT4_MAGIC = 0xEF53
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_SPARSE_SUPER = 0x1
COMPAT_SPARSE_SUPER2 = 0x200
BG_INODE_UNINIT = 0x1
BG_BLOCK_UNINIT = 0x2
EXTENTS_FL = 0x80000
INLINE_DATA_FL = 0x10000000
EXTENT_MAGIC = 0xF30A
TREE_DEPTH_MAX = 5
"""The kernel's bound on an extent tree's depth (``EXT4_MAX_EXTENT_DEPTH``, ``ext4_extents.h``)."""
TREE_NODES_MAX = 1 << 20
"""Index and leaf blocks read in one file system at most (a 16 TiB file system of 4 KiB blocks
fully fragmented into 340-extent leaves needs ~3M; past this the reader gives up: ``None``)."""
READ_MAX = 64 << 20
"""Bytes of bitmaps or inode tables read in one request (a group's table is read in pieces)."""
BLOCKS_MAX = 1 << 27
"""File-system blocks read at most (512 GiB of 4 KiB blocks: three maps of 128 MiB); a larger file
system gives ``None`` (its zeroed blocks count as wiped, as without this reader). Open: maps
packed one bit a block, and the bitmaps read in batches, for larger volumes."""
HEADS_MAX = 1 << 20
"""Rows of :attr:`Ext4Allocation.heads` kept at most (24 bytes each: 24 MiB). The walk's budget
allows ~3 inodes per file-system block, so a forged table of tiny files would otherwise cost 72
bytes per block, 24 times the maps themselves; past it a uniform sample is kept."""
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_METADATA_CSUM = 0x400
COMPAT_HAS_JOURNAL = 0x4
INCOMPAT_RECOVER = 0x4
JOURNAL_INO = 8
JBD2_MAGIC = 0xC03B3998
JBD2_DESCRIPTOR, JBD2_COMMIT, JBD2_SB_V1, JBD2_SB_V2, JBD2_REVOKE = 1, 2, 3, 4, 5
JBD2_INCOMPAT_64BIT, JBD2_INCOMPAT_CSUM_V2, JBD2_INCOMPAT_CSUM_V3, JBD2_INCOMPAT_FAST_COMMIT = 0x2, 0x8, 0x10, 0x20
JBD2_FLAG_ESCAPE, JBD2_FLAG_SAME_UUID, JBD2_FLAG_LAST_TAG = 0x1, 0x2, 0x8
JBD2_FC_BLOCKS_DEFAULT = 256
"""jbd2's on-disk format (``Documentation/filesystems/ext4/journal.rst``; ``include/linux/jbd2.h``):
big-endian block headers (magic, block type, sequence), the journal superblock's ``s_blocksize``
(0xC), ``s_maxlen`` (0x10), ``s_first`` (0x14), ``s_sequence`` (0x18), ``s_start`` (0x1C),
``s_feature_incompat`` (0x28), ``s_num_fc_blks`` (0x54); descriptor tags of 16 bytes with
``CSUM_V3`` (``journal_block_tag3_t``), else 12 (+2 with ``CSUM_V2``, -4 without ``64BIT``), each
followed by a 16-byte UUID unless ``SAME_UUID``; revoke records of 4 or 8 (``64BIT``) bytes after a
16-byte header whose ``r_count`` (0xC) is the bytes used. The superblock's ``s_journal_inum``
(0xE0) names the journal's inode (8); ``INCOMPAT_RECOVER`` is set while the file system is mounted
(cleared by a clean unmount)."""
OWNER_EXTENTS_MAX = 1 << 22
"""Extents (and tree blocks) whose owning inode :attr:`Ext4Allocation.owners` keeps at most (16
bytes each: 64 MiB). A real file system has far fewer (one per file, a few for large or fragmented
ones); a forged one past it keeps no owners (``owners`` None: nothing is excused by ownership)."""
JOURNAL_NODES_MAX = 1024
"""Extent-tree blocks of the journal inode read at most (a real journal needs one or none)."""


@dataclass(frozen=True)
class Ext4Allocation:
    """The allocation of one ext2/3/4 file system (:func:`read_allocation`).

    Attributes:
        block_size: the file system's block size in bytes (1024-65536).
        blocks: the file system's block count.
        in_use: ``uint8`` array, one per block: 1 where the block bitmap says in use (blocks of
            ``BLOCK_UNINIT`` groups read as free, as the kernel reads them).
        referenced: ``uint8`` array, one per block: 1 where an in-use inode (``i_links_count`` > 0)
            references the block: an extent (written or unwritten), an extent-tree node, an
            extended-attribute block.
        written: ``uint8`` array, one per block: 1 where a written (initialized) extent of an
            in-use inode covers the block: where the files hold data (a wiper that unlinks files
            clears it; ``fallocate`` does not set it; two inodes on one block count it once).
        heads: ``int64`` array of shape ``(files, 3)``: per in-use regular file whose logical
            block 0 lies in a written extent, ``(block, run, size)``: the file-system block
            holding the file's first bytes, how many blocks of that extent follow it
            contiguously (``ee_len``), and the file's size in bytes (``i_size``). What a file
            starts with (``replicad.core.filehead``) is read from there. At most
            :data:`HEADS_MAX` rows: past it a uniform random sample (:attr:`heads_share`).
        heads_share: the probability with which each regular file's row was kept in
            :attr:`heads` (1.0: all of them; halved each time the rows would pass
            :data:`HEADS_MAX`, each row kept by a draw from ``os.urandom``-seeded randomness the
            volume's writer cannot know): a count over :attr:`heads` divided by it estimates the
            count over every file.
        owners: which inode references each block, as ``(start, length, owner)`` ``int64``
            arrays sorted by ``start`` (written and unwritten extents and extent-tree blocks;
            not extended-attribute blocks, which inodes may share; ``owner`` is the inode number
            plus its ``i_generation`` (offset 0x64) x 2^32: ext4 gives every inode it creates a
            new generation, so a new file that got a deleted file's number is another owner),
            read through :meth:`owner`; None when not kept (more than :data:`OWNER_EXTENTS_MAX`, or two
            ranges overlap: a real file system never maps one block twice).
    """

    block_size: int
    blocks: int
    in_use: np.ndarray
    referenced: np.ndarray
    written: np.ndarray
    heads: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    heads_share: float = 1.0
    owners: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def owner(self, blocks: np.ndarray) -> np.ndarray | None:
        """The owner (inode number + ``i_generation`` x 2^32, :attr:`owners`) referencing each
        file-system block of ``blocks`` (an integer array of block numbers), 0 where no inode's
        extent or tree block covers it (free space, metadata, an extended-attribute block); None
        when :attr:`owners` was not kept. ``owner & 0xFFFFFFFF`` is the inode number."""
        if self.owners is None:
            return None
        start, length, ino = self.owners
        blocks = np.asarray(blocks, dtype=np.int64)
        at = np.searchsorted(start, blocks, side="right") - 1
        ok = at >= 0
        at = np.where(ok, at, 0)
        inside = ok & (blocks < start[at] + length[at]) if len(start) else np.zeros(len(blocks), dtype=bool)
        return np.where(inside, ino[at] if len(start) else 0, 0).astype(np.int64)

    @property
    def file_blocks(self) -> int:
        """Blocks the files hold data in (``written``)."""
        return int(np.count_nonzero(self.written))

    def unused(self, offset: int, length: int) -> bool:
        """True when every file-system block overlapping bytes ``[offset, offset + length)`` of the
        volume is free in the bitmap and referenced by no inode; a range reaching past the file
        system's end is not (bytes outside the file system are nobody's free space)."""
        first = offset // self.block_size
        last = (offset + length + self.block_size - 1) // self.block_size
        if last > self.blocks or first >= last:
            return False
        return not (self.in_use[first:last].any() or self.referenced[first:last].any())

    def referenced_in(self, offset: int, length: int) -> int:
        """How many file-system blocks within bytes ``[offset, offset + length)`` an inode
        references (whole blocks of the range)."""
        first = offset // self.block_size
        last = min(self.blocks, (offset + length + self.block_size - 1) // self.block_size)
        return int(np.count_nonzero(self.referenced[first:last])) if first < last else 0


SUPERBLOCK_OFFSET = 1024
"""Where an ext2/3/4 superblock starts on its volume (kernel ``Documentation/filesystems/ext4``)."""


def has_superblock(read: Callable[[int, int], bytes], size_bytes: int) -> bool:
    """True when the volume read through ``read(offset, length)`` holds the ext2/3/4 magic
    (``EXT4_MAGIC`` at ``SUPERBLOCK_OFFSET + 0x38``); says nothing of whether
    :func:`read_allocation` understands the rest. Raises only what ``read`` raises."""
    if size_bytes < SUPERBLOCK_OFFSET + 1024:
        return False
    return struct.unpack_from("<H", read(SUPERBLOCK_OFFSET + 0x38, 2), 0)[0] == EXT4_MAGIC


def read_allocation(read: Callable[[int, int], bytes], size_bytes: int,
                    report: dict | None = None) -> Ext4Allocation | None:
    """The block bitmaps and the blocks referenced by the in-use inodes of the ext2/3/4 file system
    at the start of a volume of ``size_bytes`` bytes, read through ``read(offset, length) -> bytes``.

    Returns None when the volume holds no ext2/3/4 file system this reader understands (see the
    module docstring), or when walking its inodes and extent trees would take more work than a real
    file system of its size can need (:func:`parse_budget`: forged metadata; the caller then
    excuses nothing). ``report``, if given, is filled with the budget's :meth:`ParseBudget.doc`
    once the walk started (``exceeded`` True: it gave up for that reason). A file system marked as
    needing recovery (``INCOMPAT_RECOVER``: mounted while snapshotted, or not cleanly unmounted) is
    read with the committed transactions of its internal journal replayed over the home locations
    (:func:`journal_copies`), as a mount of the snapshot would see it: ext4 commits metadata to the
    journal first and writes it home up to ~30 s later, so the home locations alone show files that
    a restore's mount no longer has (and miss new ones). Raises only what ``read`` raises (a corrupt
    or missing chunk)."""
    if size_bytes < 2048:
        return None
    sb = read(1024, 1024)
    (magic,) = struct.unpack_from("<H", sb, 0x38)
    if magic != EXT4_MAGIC:
        return None
    inodes_count, blocks_lo = struct.unpack_from("<II", sb, 0x0)
    first_data, log_bs, _log_cs, per_group, _cpg, inodes_per_group = struct.unpack_from("<IIIIII", sb, 0x14)
    (rev,) = struct.unpack_from("<I", sb, 0x4C)
    first_ino, inode_size = struct.unpack_from("<IH", sb, 0x54) if rev >= 1 else (11, 128)
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    (desc_size,) = struct.unpack_from("<H", sb, 0xFE)
    (blocks_hi,) = struct.unpack_from("<I", sb, 0x150)
    wide = bool(incompat & INCOMPAT_64BIT)
    if log_bs > 6 or incompat & INCOMPAT_META_BG or ro_compat & RO_COMPAT_BIGALLOC:
        return None
    bs = 1024 << log_bs
    blocks = blocks_lo | ((blocks_hi << 32) if wide else 0)
    desc = desc_size if wide and desc_size >= 64 else 32
    if (not 0 < blocks <= min(size_bytes // bs, BLOCKS_MAX) or per_group != 8 * bs or first_data > 1
            or desc & (desc - 1) or desc > 1024 or inode_size < 128 or inode_size & (inode_size - 1) or inode_size > bs
            or not 0 < inodes_per_group <= 8 * bs):
        return None
    groups = (blocks - first_data + per_group - 1) // per_group
    if inodes_count > groups * inodes_per_group:
        return None
    if (first_data + 1) * bs + groups * desc > size_bytes:
        return None
    if compat & COMPAT_HAS_JOURNAL and incompat & INCOMPAT_RECOVER:
        # mounted (or not cleanly unmounted): what the kernel committed to the journal and has not
        # written to its home yet is read from the journal, as a mount would replay it
        gdt0 = read((first_data + 1) * bs, desc)
        table0 = struct.unpack_from("<I", gdt0, 0x8)[0] | (
            (struct.unpack_from("<I", gdt0, 0x28)[0] << 32) if wide and desc >= 64 else 0)
        (journal_ino,) = struct.unpack_from("<I", sb, 0xE0)
        if journal_ino == JOURNAL_INO and JOURNAL_INO <= inodes_per_group and table0 < blocks:
            inode = read(table0 * bs + (JOURNAL_INO - 1) * inode_size, 128)
            copies = journal_copies(read, bs, blocks, inode)
            if copies:
                read = _overlaid(read, bs, copies)
    gdt = read((first_data + 1) * bs, groups * desc)
    g = np.frombuffer(gdt, dtype=np.uint8).reshape(groups, desc)

    def field(off: int, hi: int | None) -> np.ndarray:
        v = g[:, off:off + 4].copy().view("<u4").ravel().astype(np.uint64)
        if wide and hi is not None and desc >= 64:
            v |= g[:, hi:hi + 4].copy().view("<u4").ravel().astype(np.uint64) << np.uint64(32)
        return v

    bitmap_at, inode_bitmap_at, table_at = field(0x0, 0x20), field(0x4, 0x24), field(0x8, 0x28)
    flags = g[:, 0x12:0x14].copy().view("<u2").ravel()
    # inodes at the end of a group's table never used (bg_itable_unused, kept with GDT_CSUM or
    # METADATA_CSUM): not read; a forged count hides inodes as the kernel then ignores them too
    # (their files count as deleted against the base)
    unused = g[:, 0x1C:0x1E].copy().view("<u2").ravel().astype(np.int64)
    if wide and desc >= 64:
        unused |= g[:, 0x32:0x34].copy().view("<u2").ravel().astype(np.int64) << 16
    if not ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM):
        unused[:] = 0
    if (bitmap_at >= blocks).any() or (inode_bitmap_at >= blocks).any() or (table_at >= blocks).any():
        return None
    in_use = np.zeros(groups * per_group, dtype=np.uint8)
    for k in range(groups):
        if flags[k] & BG_BLOCK_UNINIT:
            continue
        bits = np.unpackbits(np.frombuffer(read(int(bitmap_at[k]) * bs, bs), dtype=np.uint8), bitorder="little")
        in_use[k * per_group:(k + 1) * per_group] = bits[:per_group]
    in_use = in_use[:blocks - first_data]
    in_use = np.concatenate([np.ones(first_data, dtype=np.uint8), in_use])  # block 0 of a 1 KiB file system
    # what the kernel counts in use in a BLOCK_UNINIT group (ext4_init_block_bitmap): a backup
    # superblock with the group descriptors and reserved GDT blocks after it, the group's own
    # bitmaps and inode table; marked in every group (in use is the side that excuses nothing)
    meta = 1 + (groups * desc + bs - 1) // bs + struct.unpack_from("<H", sb, 0xCE)[0]
    backups = struct.unpack_from("<II", sb, 0x24C) if compat & COMPAT_SPARSE_SUPER2 else None
    for k in range(groups):
        if _has_backup(k, bool(ro_compat & RO_COMPAT_SPARSE_SUPER), backups):
            at = first_data + k * per_group
            in_use[at:at + meta] = 1
    for at in np.concatenate([bitmap_at, inode_bitmap_at]).tolist():
        in_use[at] = 1
    table_blocks = (inodes_per_group * inode_size + bs - 1) // bs
    for at in table_at.tolist():
        in_use[at:at + table_blocks] = 1
    referenced = np.zeros(blocks, dtype=np.uint8)
    budget = parse_budget(blocks)
    if report is not None:
        report.update(budget.doc())
    walker = _Walker(read, bs, blocks, referenced, budget)
    total = 0  # a real file system's tables are disjoint: together within the volume
    for k in range(groups):
        if flags[k] & BG_INODE_UNINIT:
            continue
        table_bytes = max(0, inodes_per_group - int(unused[k])) * inode_size
        start = int(table_at[k]) * bs
        total += table_bytes
        if start + table_bytes > size_bytes or total > size_bytes:
            return None
        for off in range(0, table_bytes, READ_MAX):
            raw = read(start + off, min(READ_MAX, table_bytes - off))
            if raw.count(0) == len(raw):  # never-used inodes (zeroed tables): nothing to walk
                continue
            number = k * inodes_per_group + off // inode_size + 1
            ok = walker.inodes(np.frombuffer(raw, dtype=np.uint8).reshape(-1, inode_size), number, first_ino)
            if report is not None:
                report.update(budget.doc())
            if not ok:
                return None
    walker.flush()
    heads = np.concatenate(walker.heads).astype(np.int64) if walker.heads else np.zeros((0, 3), dtype=np.int64)
    return Ext4Allocation(bs, blocks, in_use, referenced, walker.written, heads, walker.heads_share,
                          walker.owners())


DATA_SHARE_FULL = 8
"""A file-system block counts as a whole block of data when at least 1/8 of its bytes are not zero
(:func:`data_weight`); below, by its share of non-zero bytes times 8."""


def data_weight(content: bytes, bs: int) -> np.ndarray:
    """Per file-system block of ``content`` (a whole number of ``bs``-byte blocks), how much data it
    holds: ``min(1, 8 x non-zero bytes / bs)`` (float64), 0 for a *fill* (one short period repeated:
    ``0xFF``, ``DEADBEEF``, a repeated sector; :func:`replicad.core.anomaly.fill_period`). A file
    written full of zeros or of a fill holds none, a database page or text at least 1/8 full holds
    a whole block: what a wiper would have to write back, in non-zero bytes that are no fill, to
    make deleted data look moved."""
    a = np.frombuffer(content, dtype=np.uint8).reshape(-1, bs)
    w = np.minimum(1.0, np.count_nonzero(a, axis=1) * (DATA_SHARE_FULL / bs))
    for i in np.flatnonzero(w).tolist():
        if fill_period(content[i * bs:(i + 1) * bs]):
            w[i] = 0.0
    return w


def journal_copies(read: Callable[[int, int], bytes], bs: int, blocks: int,
                   inode: bytes) -> dict[int, tuple[int, bool]]:
    """What a mount would replay from an ext3/4 file system's internal jbd2 journal (the
    journal's inode ``inode``, its first 128 bytes): ``{file-system block: (the file-system block
    holding its newest committed copy in the journal, escaped)}`` (escaped: the copy's first four
    bytes stand for :data:`JBD2_MAGIC`). Follows the log from ``s_start`` with ``s_sequence`` as the
    kernel's recovery does (``fs/jbd2/recovery.c``): transactions in sequence, each descriptor's
    tags naming the blocks that follow it, a transaction counted once its commit block is found,
    a block revoked by a transaction at or after its own not replayed; the log ends at the first
    block that is not the next expected one. Empty when the journal is clean (``s_start`` 0), not
    an extent-mapped inode, or not understood (a block size other than the file system's, a
    journal superblock version 1 without features). Not done: checksums (``CSUM_V2``/``V3``) are
    not verified (the kernel skips a block or stops at a commit whose checksum fails: a journal
    forged to fail them is replayed here and not by the kernel), the fast-commit area (``FAST_COMMIT``:
    inode updates logged apart from the main log) is not read. Bounded by the journal's length:
    each log block is visited at most once. Raises only what ``read`` raises."""
    (mode,) = struct.unpack_from("<H", inode, 0)
    (iflags,) = struct.unpack_from("<I", inode, 0x20)
    if mode & 0xF000 != 0x8000 or not iflags & EXTENTS_FL:
        return {}
    ext: list[tuple[int, int, int]] = []  # (logical, physical, length) of the journal's written extents
    nodes = [0]

    def walk(raw: bytes, depth_left: int) -> bool:
        magic, entries, max_entries, depth = struct.unpack_from("<HHHH", raw, 0)
        if magic != EXTENT_MAGIC or depth >= depth_left or entries > max_entries or 12 + 12 * entries > len(raw):
            return False
        for k in range(entries):
            a = 12 + 12 * k
            if depth == 0:
                logical, length, hi, lo = struct.unpack_from("<IHHI", raw, a)
                if 0 < length <= 32768 and (hi << 32 | lo) + length <= blocks:
                    ext.append((logical, hi << 32 | lo, length))
                continue
            lo, hi = struct.unpack_from("<IH", raw, a + 4)
            child = hi << 32 | lo
            nodes[0] += 1
            if child >= blocks or nodes[0] > JOURNAL_NODES_MAX or not walk(read(child * bs, bs), depth):
                return False
        return True
    if not walk(inode[0x28:0x28 + 60], TREE_DEPTH_MAX + 1) or not ext:
        return {}
    ext.sort()
    logical = np.array([e[0] for e in ext], dtype=np.int64)

    def where(n: int) -> int | None:  # the file-system block of the journal's block n
        k = int(np.searchsorted(logical, n, side="right")) - 1
        if k < 0 or n >= ext[k][0] + ext[k][2]:
            return None
        return ext[k][1] + n - ext[k][0]
    at = where(0)
    if at is None:
        return {}
    fs_block = _blocks_of(read, bs, blocks)
    js = fs_block(at)
    magic, kind = struct.unpack_from(">II", js, 0)
    j_bs, maxlen, first, sequence, start = struct.unpack_from(">IIIII", js, 0xC)
    if magic != JBD2_MAGIC or kind not in (JBD2_SB_V1, JBD2_SB_V2) or j_bs != bs or start == 0 \
            or not 0 < first <= start < maxlen:
        return {}
    incompat = struct.unpack_from(">I", js, 0x28)[0] if kind == JBD2_SB_V2 else 0
    wide, v2, v3 = (bool(incompat & f) for f in (JBD2_INCOMPAT_64BIT, JBD2_INCOMPAT_CSUM_V2, JBD2_INCOMPAT_CSUM_V3))
    if incompat & JBD2_INCOMPAT_FAST_COMMIT:
        maxlen -= struct.unpack_from(">I", js, 0x54)[0] or JBD2_FC_BLOCKS_DEFAULT
    tag_bytes = 16 if v3 else 12 + (2 if v2 else 0) - (0 if wide else 4)
    tail = 4 if v2 or v3 else 0
    copies: dict[int, tuple[int, bool, int]] = {}  # block -> (its copy's fs block, escaped, transaction)
    revoked: dict[int, int] = {}  # block -> newest transaction revoking it
    pending: list[tuple[int, int, bool]] = []
    pending_revokes: list[int] = []
    pos, seq, committed = start, sequence, 0

    def step(n: int) -> int:
        n += 1
        return first if n >= maxlen else n
    for _ in range(max(0, maxlen - first)):
        at = where(pos)
        if at is None:
            break
        block = fs_block(at)
        magic, kind, tid = struct.unpack_from(">III", block, 0)
        if magic != JBD2_MAGIC or tid != seq:
            break
        if kind == JBD2_DESCRIPTOR:
            off, end = 12, bs - tail
            while off + tag_bytes <= end:
                if v3:
                    lo, flags, hi = struct.unpack_from(">III", block, off)
                else:
                    lo, flags, hi = struct.unpack_from(">I2xHI", block, off) if tag_bytes >= 12 else \
                        (*struct.unpack_from(">I2xH", block, off), 0)
                target = lo | (hi << 32 if wide else 0)
                pos = step(pos)
                copy = where(pos)
                if copy is None:
                    break
                if target < blocks:
                    pending.append((target, copy, bool(flags & JBD2_FLAG_ESCAPE)))
                off += tag_bytes + (0 if flags & JBD2_FLAG_SAME_UUID else 16)
                if flags & JBD2_FLAG_LAST_TAG:
                    break
        elif kind == JBD2_REVOKE:
            (count,) = struct.unpack_from(">I", block, 0xC)
            size = 8 if wide else 4
            for off in range(16, min(count, bs) - size + 1, size):
                pending_revokes.append(int.from_bytes(block[off:off + size], "big"))
        elif kind == JBD2_COMMIT:
            committed += 1  # transactions counted in log order (the sequence number wraps)
            for target, copy, escaped in pending:
                copies[target] = (copy, escaped, committed)
            for target in pending_revokes:
                revoked[target] = committed
            pending, pending_revokes = [], []
            seq = (seq + 1) & 0xFFFFFFFF
        else:
            break
        pos = step(pos)
        if pos == start:
            break
    return {b: (c, e) for b, (c, e, t) in copies.items() if revoked.get(b, 0) < t}


JOURNAL_READ_BYTES = 1 << 20
"""Bytes read at once from the journal's log (:func:`_blocks_of`): the log is read in order, so one
verified read serves the blocks of a window (a 1 KiB block read alone would decompress its 64 KiB
chunk once per block)."""


def _blocks_of(read: Callable[[int, int], bytes], bs: int, blocks: int) -> Callable[[int], bytes]:
    """``block(n)``: file-system block ``n`` (``bs`` bytes, below ``blocks``), read through ``read``
    a window of :data:`JOURNAL_READ_BYTES` at a time; the last window is kept."""
    per = max(1, JOURNAL_READ_BYTES // bs)
    kept: list = [None, b""]

    def block(n: int) -> bytes:
        w = n // per
        if kept[0] != w:
            first = w * per
            kept[0], kept[1] = w, read(first * bs, (min(blocks, first + per) - first) * bs)
        at = (n - w * per) * bs
        return kept[1][at:at + bs].ljust(bs, b"\0")
    return block


def _overlaid(read: Callable[[int, int], bytes], bs: int,
              copies: dict[int, tuple[int, bool]]) -> Callable[[int, int], bytes]:
    """``read`` with the file-system blocks of ``copies`` (:func:`journal_copies`) read from their
    journal copies."""
    keys = np.array(sorted(copies), dtype=np.int64)
    magic = struct.pack(">I", JBD2_MAGIC)
    copy_of = _blocks_of(read, bs, max(at for at, _ in copies.values()) + 1)

    def overlaid(offset: int, length: int) -> bytes:
        raw = read(offset, length)
        end = offset + len(raw)
        lo, hi = np.searchsorted(keys, [offset // bs, (end + bs - 1) // bs])
        if lo == hi:
            return raw
        buf = bytearray(raw)
        for b in keys[lo:hi].tolist():
            at, escaped = copies[b]
            data = bytearray(copy_of(at))
            if escaped:
                data[0:4] = magic
            s, e = max(offset, b * bs), min(end, (b + 1) * bs)
            buf[s - offset:e - offset] = data[s - b * bs:e - b * bs]
        return bytes(buf)
    return overlaid


def _has_backup(group: int, sparse: bool, backups: tuple[int, int] | None) -> bool:
    """Whether ``group`` holds a backup superblock (``super.rst``: every group without
    ``sparse_super``; with it groups 0, 1 and powers of 3, 5 and 7; with ``sparse_super2`` group 0
    and the two groups ``s_backup_bgs`` names)."""
    if group == 0:
        return True
    if backups is not None:
        return group in backups
    if not sparse or group == 1:
        return True
    for b in (3, 5, 7):
        n = b
        while n < group:
            n *= b
        if n == group:
            return True
    return False


class ParseBudget:
    """The work one :func:`read_allocation` may do, in units of about one live inode's cost: an
    in-use inode or an extent entry counts 1, a tree block read :data:`NODE_COST`. Sized by
    :func:`parse_budget` from the file system's own block count; spent by :class:`_Walker`.

    Attributes:
        limit: the units allowed.
        spent: the units spent so far (may pass ``limit`` by the last charge).
        inodes, extents, nodes: what was charged, by kind.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.spent = int(limit), 0
        self.inodes = self.extents = self.nodes = 0

    def charge(self, inodes: int = 0, extents: int = 0, nodes: int = 0) -> bool:
        """Charge work; False once the budget is exceeded (the caller gives up: ``None``)."""
        self.inodes += inodes
        self.extents += extents
        self.nodes += nodes
        self.spent += inodes + extents + nodes * NODE_COST
        return self.spent <= self.limit

    @property
    def exceeded(self) -> bool:
        return self.spent > self.limit

    def doc(self) -> dict:
        """Plain dict: ``limit``, ``spent``, ``inodes``, ``extents``, ``nodes``, ``exceeded``."""
        return {"limit": self.limit, "spent": self.spent, "inodes": self.inodes, "extents": self.extents,
                "nodes": self.nodes, "exceeded": self.exceeded}


NODE_COST = 256
"""Budget units (:class:`ParseBudget`) of one extent-tree block read: a 4 KiB read through the
snapshot's verified chunks (54 µs CPU measured here: a 64 KiB chunk decompressed and hashed)
against ~0.15 µs per inode or extent read as arrays (its extents are charged apart)."""
PARSE_BUDGET_PER_BLOCK = 3
"""Budget units per file-system block (:func:`parse_budget`). What a real file system can need:
every extent covers at least one block and no two files share one (ext4 has no reflinks), so its
extent entries are at most its blocks; its in-use inodes at most its inode count (one per 16 KiB
by default, ``mke2fs.conf`` ``inode_ratio``; one per block at the smallest common ratio, 4 KiB);
its tree blocks one per ~170-340 extents (leaves at least half full), x :data:`NODE_COST`, ~1.5
per block. Not covered: many small files of more than 4 extents each (one tree block per file):
such a file system gives up and excuses nothing. The file systems of the detection bench spend
well under 1 % of it (tests/bench/results/detection-discard.md)."""
PARSE_BUDGET_MIN = 1 << 16
"""Budget units every file system gets, however small (a 64 MiB test volume)."""


def parse_budget(blocks: int) -> ParseBudget:
    """The budget of one :func:`read_allocation` of a file system of ``blocks`` blocks:
    :data:`PARSE_BUDGET_MIN` + :data:`PARSE_BUDGET_PER_BLOCK` x ``blocks``. What a forged file
    system (every inode live with 4 extents, or trees of empty or full leaves) costs within it:
    tests/bench/results/detection-discard.md (``tests/bench/detection_forged.py``)."""
    return ParseBudget(PARSE_BUDGET_MIN + PARSE_BUDGET_PER_BLOCK * int(blocks))


FLUSH_SLICES_MAX = 1 << 16
"""Most extents :meth:`_Walker.flush` marks one slice each (when their lengths sum to at most the
file system's blocks, as a real file system's do); more, or overlapping ones (forged), through a
difference array."""


class _Walker:
    """Marks the blocks an inode table's in-use inodes reference (:func:`read_allocation`), within
    a :class:`ParseBudget`. Extents are gathered as arrays and marked in batches
    (:meth:`flush`: one pass over the maps per batch of at most :attr:`batch` extents), so an
    extent of 32,768 blocks costs what one of 1 does."""

    def __init__(self, read: Callable[[int, int], bytes], bs: int, blocks: int, referenced: np.ndarray,
                 budget: ParseBudget | None = None) -> None:
        self.read, self.bs, self.blocks, self.referenced = read, bs, blocks, referenced
        self.written = np.zeros(blocks, dtype=np.uint8)
        self.nodes = 0
        self.visited: set[int] = set()  # tree blocks: a real tree never shares a node
        self.budget = budget if budget is not None else parse_budget(blocks)
        self.batch = max(1 << 20, blocks // 8)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._queued = 0
        self.heads: list[np.ndarray] = []  # (block, run, size) rows of each regular file's logical block 0
        self.heads_share = 1.0  # each row kept with this probability (_keep_heads)
        self._head_rows = 0
        self._rng: np.random.Generator | None = None
        self._owned: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = []  # (start, length, inode)
        self._owned_n = 0

    def _own(self, start: np.ndarray, length: np.ndarray, ino: np.ndarray) -> None:
        """Record that inodes ``ino`` reference ``length`` blocks from ``start`` (arrays of one
        length); past :data:`OWNER_EXTENTS_MAX` ranges no owners are kept."""
        if self._owned is None:
            return
        self._owned_n += len(start)
        if self._owned_n > OWNER_EXTENTS_MAX:
            self._owned = None
            return
        self._owned.append((start.astype(np.int64), length.astype(np.int64), ino.astype(np.int64)))

    def owners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The recorded ranges sorted by start (:attr:`Ext4Allocation.owners`), empty ranges
        dropped; None when not kept or when two ranges overlap."""
        if self._owned is None:
            return None
        if not self._owned:
            return (np.zeros(0, np.int64),) * 3
        start, length, ino = (np.concatenate([o[k] for o in self._owned]) for k in range(3))
        keep = length > 0
        order = np.argsort(start[keep], kind="stable")
        start, length, ino = start[keep][order], length[keep][order], ino[keep][order]
        if len(start) > 1 and (start[1:] < start[:-1] + length[:-1]).any():
            return None
        return start, length, ino

    def _keep_heads(self, rows: np.ndarray) -> None:
        """Keep ``rows`` of :attr:`heads`, each with probability :attr:`heads_share`; past
        :data:`HEADS_MAX` rows every kept row is kept again with probability 1/2 and the share
        halves (a uniform sample of every file's row, whatever their order on disk)."""
        if self.heads_share < 1.0:
            rows = rows[self._draw(len(rows)) < self.heads_share]
        self.heads.append(rows)
        self._head_rows += len(rows)
        while self._head_rows > HEADS_MAX:
            kept = np.concatenate(self.heads)
            kept = kept[self._draw(len(kept)) < 0.5]
            self.heads, self._head_rows, self.heads_share = [kept], len(kept), self.heads_share / 2

    def _draw(self, n: int) -> np.ndarray:
        if self._rng is None:
            self._rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        return self._rng.random(n)

    def _extents(self, start: np.ndarray, length: np.ndarray, ino: np.ndarray) -> bool:
        """Queue leaf extents (raw ``ee_len``: above 32,768 an unwritten extent of ``ee_len -
        32768`` blocks) of inodes ``ino`` (one per extent); False when one reaches past the file
        system's end."""
        written = length <= 32768
        length = np.where(written, length, length - 32768)
        if (start + length > self.blocks).any():
            return False
        self._own(start, length, ino)
        self._pending.append((start, length, written))
        self._queued += len(start)
        if self._queued >= self.batch:
            self.flush()
        return True

    def flush(self) -> None:
        """Mark the queued extents in ``referenced`` (all) and ``written`` (written ones): a
        difference array over the blocks (``bincount`` of starts less ends, cumulated)."""
        if not self._pending:
            return
        start = np.concatenate([p[0] for p in self._pending])
        length = np.concatenate([p[1] for p in self._pending])
        written = np.concatenate([p[2] for p in self._pending])
        self._pending, self._queued = [], 0
        for marks, keep in ((self.referenced, length > 0), (self.written, written & (length > 0))):
            s, n = start[keep], length[keep]
            if not len(s):
                continue
            if len(s) <= FLUSH_SLICES_MAX and int(n.sum()) <= self.blocks:
                # a real file system's few extents, disjoint: slices (a difference array costs a
                # pass over every block: 0.12 CPU-s at 16 GiB for 3 extents)
                for a, k in zip(s.tolist(), n.tolist()):
                    marks[a:a + k] = 1
                continue
            cover = np.cumsum(np.bincount(s, minlength=self.blocks + 1)[:self.blocks]
                              - np.bincount(s + n, minlength=self.blocks + 1)[:self.blocks])
            marks |= (cover > 0).astype(np.uint8)

    def inodes(self, table: np.ndarray, number: int, first_ino: int) -> bool:
        """Walk one slice of an inode table (rows of ``inode_size`` bytes, the first being inode
        ``number``); False when an in-use inode is not understood (ext2/3 block map, a malformed
        tree) or the budget is spent. Reserved inodes below ``s_first_ino`` mapped the ext2/3 way
        (the resize inode 7: reserved group-descriptor blocks, in use in the bitmap) are skipped.
        Inline trees (depth 0, up to 4 extents in ``i_block``: most files) are read as arrays;
        deeper ones block by block (:meth:`node`)."""
        mode = table[:, 0:2].copy().view("<u2").ravel()
        links = table[:, 0x1A:0x1C].copy().view("<u2").ravel()
        live = np.flatnonzero((mode != 0) & (links > 0))
        if not len(live):
            return True
        if not self.budget.charge(inodes=len(live)):
            return False
        rows = table[live]
        iflags = rows[:, 0x20:0x24].copy().view("<u4").ravel()
        acl = (rows[:, 0x68:0x6C].copy().view("<u4").ravel().astype(np.uint64)
               | (rows[:, 0x76:0x78].copy().view("<u2").ravel().astype(np.uint64) << np.uint64(32)))
        self.referenced[acl[(acl > 0) & (acl < self.blocks)].astype(np.int64)] = 1
        iblocks = rows[:, 0x1C:0x20].copy().view("<u4").ravel()
        kind = mode[live] & 0xF000
        inline = (iflags & INLINE_DATA_FL) != 0
        extents = ~inline & ((iflags & EXTENTS_FL) != 0)
        # a fast symlink, a device, fifo or socket holds no blocks; a file or directory with
        # blocks mapped the ext2/3 way is not read here
        mapped = (~inline & ~extents & (iblocks != 0) & np.isin(kind, (0x8000, 0x4000, 0xA000))
                  & (number + live >= first_ino))
        if mapped.any():
            return False
        tree = rows[extents][:, 0x28:0x28 + 60]
        if not len(tree):
            return True
        head = tree[:, :8].copy().view("<u2")
        magic, entries, max_entries, depth = head[:, 0], head[:, 1].astype(np.int64), head[:, 2], head[:, 3]
        if ((magic != EXTENT_MAGIC) | (depth > TREE_DEPTH_MAX) | (entries > max_entries) | (entries > 4)).any():
            return False
        flat = depth == 0
        e = tree[flat][:, 12:60].reshape(-1, 4, 12)
        used = np.arange(4)[None, :] < entries[flat][:, None]
        owner = np.broadcast_to(np.arange(len(used))[:, None], used.shape)[used]  # row of tree[flat] per extent
        e = e[used]
        if not self.budget.charge(extents=len(e)):
            return False
        length = e[:, 4:6].copy().view("<u2").ravel().astype(np.int64)
        start = (e[:, 8:12].copy().view("<u4").ravel().astype(np.int64)
                 | (e[:, 6:8].copy().view("<u2").ravel().astype(np.int64) << 32))
        # each row of tree's owner: its inode number and i_generation (0x64; ext4 draws a new one
        # for every inode it creates: a number reused by a new file is another owner)
        generation = rows[:, 0x64:0x68].copy().view("<u4").ravel().astype(np.int64)
        numbers = ((number + live).astype(np.int64) | (generation << 32))[extents]
        if len(e) and not self._extents(start, length, numbers[flat][owner]):
            return False
        # each regular file's first bytes: the written extent whose ee_block is 0
        size = (rows[:, 0x4:0x8].copy().view("<u4").ravel().astype(np.int64)
                | (rows[:, 0x6C:0x70].copy().view("<u4").ravel().astype(np.int64) << 32))[extents]
        regular = (kind[extents] == 0x8000)
        logical = e[:, 0:4].copy().view("<u4").ravel()
        first = np.flatnonzero((logical == 0) & (length > 0) & (length <= 32768) & regular[flat][owner])
        if len(first):  # arrays: a forged table of millions of files must not become millions of objects
            self._keep_heads(np.stack([start[first], length[first], size[flat][owner[first]]], axis=1))
        for raw, is_reg, n, ino in zip(tree[~flat], regular[~flat].tolist(), size[~flat].tolist(),
                                       numbers[~flat].tolist()):
            if not self.node(raw.tobytes(), TREE_DEPTH_MAX + 1, n if is_reg else None, ino):
                return False
        return True

    def node(self, raw: bytes, depth_left: int, size: int | None = None, ino: int = 0) -> bool:
        """One extent-tree node (the inode's ``i_block`` or a tree block) of inode ``ino``;
        ``size``: the file's size when the tree is a regular file's (its logical block 0 goes to
        :attr:`heads`)."""
        magic, entries, max_entries, depth = struct.unpack_from("<HHHH", raw, 0)
        if magic != EXTENT_MAGIC or depth >= depth_left or entries > max_entries or 12 + 12 * entries > len(raw):
            return False
        if not entries:
            return True
        if not self.budget.charge(extents=entries):
            return False
        e = np.frombuffer(raw, dtype=np.uint8, count=12 * entries, offset=12).reshape(entries, 12)
        if depth == 0:
            length = e[:, 4:6].copy().view("<u2").ravel().astype(np.int64)
            start = (e[:, 8:12].copy().view("<u4").ravel().astype(np.int64)
                     | (e[:, 6:8].copy().view("<u2").ravel().astype(np.int64) << 32))
            if size is not None:
                logical = e[:, 0:4].copy().view("<u4").ravel()
                first = np.flatnonzero((logical == 0) & (length > 0) & (length <= 32768))
                if len(first):
                    self._keep_heads(np.array([[start[first[0]], length[first[0]], size]], dtype=np.int64))
            return self._extents(start, length, np.full(len(start), ino, dtype=np.int64))
        leaf = (e[:, 4:8].copy().view("<u4").ravel().astype(np.int64)
                | (e[:, 8:10].copy().view("<u2").ravel().astype(np.int64) << 32))
        for b in leaf.tolist():
            self.nodes += 1
            if b >= self.blocks or self.nodes > TREE_NODES_MAX or b in self.visited \
                    or not self.budget.charge(nodes=1):
                return False
            self.visited.add(b)
            self.referenced[b] = 1
            self._own(np.array([b], np.int64), np.ones(1, np.int64), np.array([ino], np.int64))
            if not self.node(self.read(b * self.bs, self.bs), depth, size, ino):
                return False
        return True
