"""Writing an image unit by unit from verified chunks (replicad.storage.assemble), on real files
and a real chunk store: the plan, a chunk that lies about its digest, and the O5 proof as the
image is written (a block read back wrong, data where a hole should be)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from replicad.core.errors import IntegrityError, RestoreVerifyError, UsageError
from replicad.core.manifest import DEFAULT_PAGE_ENTRIES, V1_PAGE_ENTRIES, ZERO_DIGEST, iter_block_digests
from replicad.sources.file import take_snapshot
from replicad.storage import assemble
from replicad.storage.chunkstore import CODEC_RAW, ChunkStore

BLOCK = 65536


def make_image(path: Path, n_blocks: int) -> bytes:
    rng = random.Random(n_blocks)
    data = b"".join(bytes(BLOCK) if i % 4 == 0 or 300 <= i < 440 else rng.randbytes(BLOCK) for i in range(n_blocks))
    data += b"tail"
    path.write_bytes(data)
    return data


def snapshot(tmp_path: Path, n_blocks: int):
    image = tmp_path / "volume.img"
    data = make_image(image, n_blocks)
    store = ChunkStore(tmp_path / "store")
    manifest = asyncio.run(take_snapshot(image, volume="ehr", seq=1, epoch=1, parent=None, store=store,
                                         now_ns=1)).manifest
    return data, store, manifest


def assemble_all(asm: assemble.ImageAssembler, units, store: ChunkStore) -> None:
    for u in units:
        buf = asm.buffer()
        asm.place(u, buf, [(d, CODEC_RAW, store.get(d)) for d in sorted(u.pending)])
        asm.write(u, buf)


def test_units_leave_out_zero_runs_and_the_image_is_proven_as_written(tmp_path: Path) -> None:
    data, store, manifest = snapshot(tmp_path, 600)
    with store:
        units, zero_blocks = assemble.plan_units(manifest, store.get)
        per_unit = assemble.UNIT_BYTES // BLOCK
        assert [u.first_block for u in units] == [i * per_unit for i in range(5)]  # 601 blocks, units of 128
        assert zero_blocks == 0 and sum(u.n_blocks for u in units) == manifest.n_blocks
        units, zero_blocks = assemble.plan_units(manifest, store.get, unit_bytes=20 * BLOCK)
        assert zero_blocks == 140  # blocks 300..439 are zeros: 7 units of 20 left out (holes)
        asm = assemble.ImageAssembler(tmp_path / "out.img", manifest)
        try:
            assemble_all(asm, units, store)
            assert asm.finish(units) == manifest.root
        finally:
            asm.close()
    assert (tmp_path / "out.img").read_bytes() == data


def test_a_chunk_that_does_not_match_its_digest_is_never_placed(tmp_path: Path) -> None:
    _, store, manifest = snapshot(tmp_path, 130)
    with store:
        units, _ = assemble.plan_units(manifest, store.get)
        asm = assemble.ImageAssembler(tmp_path / "out.img", manifest)
        try:
            u = units[0]
            d = sorted(u.pending)[0]
            with pytest.raises(IntegrityError) as err:
                asm.place(u, asm.buffer(), [(d, CODEC_RAW, bytes(BLOCK - 1) + b"x")])
            assert err.value.evidence["digest"] == d.hex() and d in u.pending
        finally:
            asm.close()
        with pytest.raises(UsageError):  # only into a new, empty file
            assemble.ImageAssembler(tmp_path / "volume.img", manifest)


def test_a_block_read_back_wrong_and_data_in_a_hole_fail_o5(tmp_path: Path, monkeypatch) -> None:
    _, store, manifest = snapshot(tmp_path, 300)
    with store:
        units, _ = assemble.plan_units(manifest, store.get)
        real = assemble.write_direct_run

        def flipping(dfd: int, fd: int, data: memoryview, offset: int) -> None:
            bad = bytearray(data)
            bad[len(bad) // 2] ^= 1  # what the disk would hold after a write gone wrong
            os.pwrite(fd, bytes(bad), offset)

        asm = assemble.ImageAssembler(tmp_path / "bad.img", manifest)
        try:
            monkeypatch.setattr(assemble, "write_direct_run", flipping)
            u = units[1]
            buf = asm.buffer()
            asm.place(u, buf, [(d, CODEC_RAW, store.get(d)) for d in sorted(u.pending)])
            with pytest.raises(RestoreVerifyError) as err:
                asm.write(u, buf)
            assert u.first_block <= err.value.evidence["block"] < u.first_block + u.n_blocks
        finally:
            asm.close()
        monkeypatch.setattr(assemble, "write_direct_run", real)

        units, _ = assemble.plan_units(manifest, store.get)  # afresh: the units above were partly placed
        asm = assemble.ImageAssembler(tmp_path / "hole.img", manifest)
        try:
            assemble_all(asm, units, store)
            os.pwrite(asm.fd, b"not a zero", 0)  # block 0 is zero in the snapshot: a hole, never written
            with pytest.raises(RestoreVerifyError) as err:
                asm.finish(units)
            assert err.value.evidence["first_differing_page"] == 0
        finally:
            asm.close()


def test_one_fsync_at_the_end_and_no_sync_per_unit(tmp_path: Path, monkeypatch) -> None:
    """Units are written and read back without a sync each; finish() syncs the image once, before
    it proves the holes and the root (the restore is durable before it counts as done)."""
    data, store, manifest = snapshot(tmp_path, 600)
    calls: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(assemble.os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(assemble.os, "fdatasync", lambda fd: calls.append("fdatasync") or real_fdatasync(fd))
    with store:
        units, _ = assemble.plan_units(manifest, store.get, unit_bytes=20 * BLOCK)
        asm = assemble.ImageAssembler(tmp_path / "out.img", manifest)
        try:
            assemble_all(asm, units, store)
            assert calls == []
            assert asm.finish(units) == manifest.root
            assert calls == ["fsync"]
        finally:
            asm.close()
    assert (tmp_path / "out.img").read_bytes() == data


def test_same_bytes() -> None:
    a, b = bytearray(b"x" * 100_000), bytearray(b"x" * 100_000)
    assert assemble.same_bytes(memoryview(a), memoryview(b))
    b[99_999] ^= 1
    assert not assemble.same_bytes(memoryview(a), memoryview(b))
    assert not assemble.same_bytes(memoryview(a)[:10], memoryview(b)[:11])
    assert assemble.same_bytes(memoryview(a)[:0], memoryview(b)[:0])
    assert assemble.same_bytes(memoryview(bytes(a))[:5], memoryview(b)[:5])  # read-only: a plain comparison


@pytest.mark.parametrize("geometry", [DEFAULT_PAGE_ENTRIES, V1_PAGE_ENTRIES])
def test_a_plan_whose_units_cross_page_borders_restores_byte_exact_and_keeps_no_object_per_block(
        tmp_path: Path, geometry: int) -> None:
    """4 KiB blocks, 4,400 of them (9 manifest pages of 512 entries, 2 of format 1's 4096),
    units of 3 blocks: neither 512 nor 4,096 is a multiple of 3, so units span the pages' borders. The units' digests, laid end to end with the holes
    between them, are the manifest's block digests; each unit is one bytes object (its
    places and pending built on first use, dropped once written); the image comes out
    byte-exact with the root rebuilt page by page; and a block of a hole found holding data
    fails the proof."""
    bs = 4096
    rng = random.Random(3)
    image = tmp_path / "volume.img"
    blocks = [bytes(bs) if (i // 50) % 3 == 1 else rng.randbytes(bs) for i in range(4400)]
    image.write_bytes(b"".join(blocks))
    with ChunkStore(tmp_path / "store") as store:
        manifest = asyncio.run(take_snapshot(image, volume="ehr", seq=1, epoch=1, parent=None, store=store,
                                             now_ns=1, block_size=bs, page_entries=geometry)).manifest
        assert manifest.page_entries == geometry and len(manifest.pages) == -(-4400 // geometry)
        units, zero_blocks = assemble.plan_units(manifest, store.get, unit_bytes=3 * bs)
        laid = [ZERO_DIGEST] * manifest.n_blocks
        for u in units:
            assert isinstance(u.digests, bytes) and u._places is None and u.n_blocks <= 3
            for k in range(u.n_blocks):
                laid[u.first_block + k] = u.block_digest(k)
        assert laid == list(iter_block_digests(manifest, store.get))
        assert any(u.first_block < border < u.first_block + u.n_blocks  # one spans a border
                   for u in units for border in range(geometry, manifest.n_blocks, geometry))
        assert zero_blocks + sum(u.n_blocks for u in units) == manifest.n_blocks
        asm = assemble.ImageAssembler(tmp_path / "out.img", manifest)
        try:
            assemble_all(asm, units, store)
            assert all(u._places is None and not u.pending for u in units)  # released once written
            assert asm.finish(units) == manifest.root
        finally:
            asm.close()
        assert (tmp_path / "out.img").read_bytes() == image.read_bytes()
        hole = next(i for i in range(manifest.n_blocks) if laid[i] == ZERO_DIGEST and i > 4096)
        units, _ = assemble.plan_units(manifest, store.get)
        asm = assemble.ImageAssembler(tmp_path / "out2.img", manifest)
        try:
            assemble_all(asm, units, store)
            with open(tmp_path / "out2.img", "r+b") as f:  # data where the snapshot has a zero block
                f.seek(hole * bs)
                f.write(b"x")
            with pytest.raises(RestoreVerifyError) as err:
                asm.finish(units)
            assert err.value.evidence["first_differing_page"] == hole // geometry
        finally:
            asm.close()
