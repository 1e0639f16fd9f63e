"""Copy-encrypt-delete split over two snapshots by an attacker holding the primary, on a volume that
does not discard (issue 14; conservation across snapshots, :class:`replicad.core.anomaly.Paired`).

site-a's volume is an ext4 file system in its image file, loop-mounted without ``discard``, holding
the detection benchmark's file share (:func:`tests.bench.detection.build_fileshare`). One clean
snapshot is replicated and applied at both standbys. Then the attacker takes the primary's host:
site-a's daemon is restarted as :mod:`tests.security.lying_site` (every snapshot recorded
``clean``). In one snapshot it writes each data file's ciphertext beside it as ``name.gz`` (gzip
level 0 around AES-CTR output: a valid gzip stream under the name ``gzip *`` writes); in the next
it unlinks the originals. The copies alone destroy nothing (the originals are intact): the honest
sites judge that snapshot clean and apply it. The deletes alone free structure and fill nothing:
per snapshot, clean too (before conservation across snapshots, both standbys then applied a
volume holding only ciphertext). Against the anchor the honest sites see both halves: they judge
the second snapshot suspect themselves, keep their standbys at the copies' snapshot (whose
originals are intact) and a forced promotion at site-b restores it: a letter reads back.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.bench.detection import aes, build_fileshare, data_files, make_ext4, mounted
from tests.integration.conftest import VOL, snapshot
from tests.security import lying_site
from tests.security.test_detection import opinion, sha, snaps, standby_seq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HONEST = ("site-b", "site-c")
IMAGE_MIB = 64
SCALE = 0.1  # build_fileshare: 150 letters and the rest, ~5 MB of files


def test_an_attacker_primary_cannot_split_copy_encrypt_delete_over_two_snapshots(tmp_path: Path) -> None:
    missing = [t for t in ("mkfs.ext4", "losetup", "mount", "umount") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("loop-mounting the volume's ext4 file system needs root")
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    mnt = tmp_path / "mnt"
    try:
        img = c.sites["site-a"].volume_path(VOL)
        make_ext4(img, IMAGE_MIB, block_size=4096)
        with mounted(img, mnt):
            build_fileshare(mnt, SCALE, random.Random(31))
            files = sorted(p.relative_to(mnt) for p in data_files(mnt))
            letter = sorted(p for p in files if p.parts[0] == "letters")[0]
            letter_bytes = (mnt / letter).read_bytes()
        c.start_all()
        c.wait_ready(60)
        first = snapshot(c, "site-a")
        clean_seq = first["seq"]
        assert first["committed"], first
        for s in HONEST:
            c.wait_for(f"{s} judged #{clean_seq} clean and applied it",
                       lambda s=s: opinion(c, s, clean_seq, s) == "clean" and standby_seq(c, s) == clean_seq, 90)

        restart_as_liar = lying_site.start
        restart_as_liar(c, "site-a")
        c.wait_ready(60)
        rng = random.Random(32)
        with mounted(img, mnt):  # the copies: ciphertext beside every data file, nothing deleted
            for p in files:
                (mnt / p).with_name(p.name + ".gz").write_bytes(
                    gzip.compress(aes((mnt / p).read_bytes(), rng), compresslevel=0))
        copies = snapshot(c, "site-a")
        copies_seq, copies_hash = copies["seq"], sha(img)
        for s in HONEST:  # nothing destroyed yet: clean, applied
            c.wait_for(f"{s} judged #{copies_seq} clean and applied it",
                       lambda s=s: opinion(c, s, copies_seq, s) == "clean" and standby_seq(c, s) == copies_seq, 90)
            here = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{copies_seq}/evidence")["here"]
            assert here["slow"]["paired"]["filled"] > 0.3 and here["slow"]["paired"]["released"] == 0, here["slow"]
        with mounted(img, mnt):  # the originals unlinked (no discard: their bytes stay as free space)
            for p in files:
                (mnt / p).unlink()
        deletes = snapshot(c, "site-a")
        bad_seq = deletes["seq"]
        assert deletes["committed"], deletes
        for s in HONEST:
            c.wait_for(f"{s} recorded its opinion on #{bad_seq}", lambda s=s: opinion(c, s, bad_seq, s) is not None, 90)
        time.sleep(1.0)  # one more replica tick: nothing may be applied
        for s in HONEST:
            catalog = snaps(c, s)
            mine = catalog[bad_seq]["opinions"][s]
            assert mine["verdict"] == "suspect" and "conservation across snapshots" in mine["reason"], (s, mine)
            assert catalog[bad_seq]["opinions"]["site-a"]["verdict"] == "clean", catalog[bad_seq]["opinions"]
            assert catalog[bad_seq]["verdict"] == "suspect", (s, catalog[bad_seq])
            assert standby_seq(c, s) == copies_seq, s
            assert sha(c.sites[s].volume_path(VOL)) == copies_hash, f"{s}'s standby is not the copies' image"
            here = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{bad_seq}/evidence")["here"]
            # per snapshot nothing fires: no block turned random, nothing filled, no name changed
            assert here["signals"]["conserved_counted"] == 0 and here["signals"]["renamed"] == 0, here["signals"]
            assert here["slow"]["paired"]["flagged"] and here["slow"]["paired"]["began"] == copies_seq, here["slow"]
            assert here["restore_seq"] == clean_seq, here  # before the copies: the drift began there

        res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 90}, timeout_s=120)
        assert res["restored_seq"] == copies_seq, res
        restored = c.sites["site-b"].volume_path(VOL)
        with mounted(restored, tmp_path / "mnt-b", options=("ro", "noload")) as mb:
            assert (mb / letter).read_bytes() == letter_bytes, "the originals are intact in the restored snapshot"
    finally:
        c.stop_all()
        with contextlib.suppress(OSError):
            mnt.rmdir()
