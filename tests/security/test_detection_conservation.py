"""Copy-encrypt-delete keeping the file names on a discarding volume, by an attacker holding the
primary (security review F1; the conservation signal of :mod:`replicad.core.anomaly`).

site-a's volume is an ext4 file system in its image file, loop-mounted with ``-o discard`` (freed
blocks become holes of the image: zeros), holding a file share of letters, a SQLite database,
PNG scans, archives, logs and a software install (the detection benchmark's builder,
:func:`tests.bench.detection.build_fileshare`). One clean snapshot is replicated and applied at
both standbys. Then the attacker takes the primary's host: site-a's daemon is restarted as
:mod:`tests.security.lying_site` (replicad's daemon whose detection records every snapshot
``clean`` through Raft, and whose commit-time screen calls everything clean; a config can only
tighten detection, so the attacker changes the code). Over several cycles it encrypts the
share's files as the review did (:func:`tests.bench.detection.copy_encrypt_delete` with
``keep_names``: read the file, write AES-CTR ciphertext and an 8 KiB text footer under an
unrelated temporary name, unlink the original, rename the copy to the original's name; the
discards zero the freed blocks), one snapshot per cycle. No block turns random against its
previous version and no name changes: only the conservation signal sees the first one.

The honest replicas site-b and site-c judge every attack snapshot suspect themselves (their
opinions recorded through Raft; the first one for conservation), keep their standbys at the
clean image byte for byte, record site-a's clean opinions as disagreements, and a forced
promotion at site-b restores the plaintext (a letter of the clean snapshot reads back).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.bench.detection import (build_fileshare, copy_encrypt_delete, data_files, discards_landed, make_ext4,
                                   mounted)
from tests.integration.conftest import VOL, snapshot
from tests.security import lying_site
from tests.security.test_detection import opinion, sha, snaps, standby_seq
from tests.security.test_holders import metric

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HONEST = ("site-b", "site-c")
IMAGE_MIB = 64
SCALE = 0.1  # build_fileshare: 150 letters (~1.6 MB) and the rest, ~5 MB of files
CYCLES = 4  # a quarter of the files' bytes per cycle: the wipe signal (30 % of the data blocks) stays silent


def _require_root_and_tools() -> None:
    missing = [t for t in ("mkfs.ext4", "losetup", "mount", "umount", "fstrim") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian e2fsprogs, mount, util-linux)")
    if os.geteuid() != 0:
        pytest.skip("loop-mounting the volume's ext4 file system needs root")


def restart_as_liar(c: LocalCluster, site: str) -> None:
    """Stop ``site``'s daemon (SIGTERM, by PID) and start it again as
    :mod:`tests.security.lying_site` on the same config and data dir; the cluster stops it by
    PID like any of its sites."""
    lying_site.start(c, site)


def test_an_attacker_primary_cannot_make_the_replicas_apply_copy_encrypt_delete_keeping_names(
        tmp_path: Path) -> None:
    _require_root_and_tools()
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    mnt = tmp_path / "mnt"
    try:
        img = c.sites["site-a"].volume_path(VOL)
        make_ext4(img, IMAGE_MIB, block_size=4096)  # as mke2fs makes volumes from 512 MiB
        with mounted(img, mnt, options=("discard",)):
            build_fileshare(mnt, SCALE, random.Random(21))
            sizes = {p.relative_to(mnt): p.stat().st_size for p in data_files(mnt)}
            letter = sorted(p for p in sizes if p.parts[0] == "letters")[0]
            letter_bytes = (mnt / letter).read_bytes()
        c.start_all()
        c.wait_ready(60)
        first = snapshot(c, "site-a")
        clean_seq, clean_hash = first["seq"], sha(img)
        assert first["committed"], first
        for s in HONEST:
            c.wait_for(f"{s} judged #{clean_seq} clean and applied it",
                       lambda s=s: opinion(c, s, clean_seq, s) == "clean" and standby_seq(c, s) == clean_seq, 90)
            assert sha(c.sites[s].volume_path(VOL)) == clean_hash, s

        # the attacker holds site-a's host: its daemon now lies, then copy-encrypt-delete keeping names
        restart_as_liar(c, "site-a")
        c.wait_ready(60)
        files = sorted(sizes)
        order = list(files)
        random.Random(22).shuffle(order)  # the attacker's order; about a CYCLES-th of the bytes per cycle
        total, done, batches = sum(sizes.values()), 0, [[] for _ in range(CYCLES)]
        for p in order:
            batches[min(CYCLES - 1, done * CYCLES // total)].append(p)
            done += sizes[p]
        rng = random.Random(23)
        bad: list[dict] = []
        for batch in batches:
            with mounted(img, mnt, options=("discard",)):
                copy_encrypt_delete([mnt / p for p in batch], rng, keep_names=True, footer=8192)
                discards_landed(mnt)
                assert sorted(p.relative_to(mnt) for p in data_files(mnt)) == files, "names kept"
                if letter in batch:
                    assert (mnt / letter).read_bytes()[:len(letter_bytes)] != letter_bytes, "encrypted"
            bad.append(snapshot(c, "site-a"))
        assert all(b["committed"] for b in bad), bad
        assert bad[0]["verdict"] == "clean", bad[0]  # the primary's commit-time claim
        bad_seqs = [b["seq"] for b in bad]

        for s in HONEST:
            for q in bad_seqs:
                c.wait_for(f"{s} recorded its opinion on #{q}", lambda s=s, q=q: opinion(c, s, q, s) is not None, 90)
        time.sleep(1.0)  # one more replica tick: nothing may be applied
        for s in HONEST:
            catalog = snaps(c, s)
            for q in bad_seqs:
                mine = catalog[q]["opinions"][s]
                assert mine["verdict"] == "suspect", (s, q, mine)  # its own opinion, recorded through Raft
                assert catalog[q]["opinions"]["site-a"]["verdict"] == "clean", (s, q, catalog[q]["opinions"])
                assert catalog[q]["verdict"] == "suspect", (s, q, catalog[q])
            first_bad = catalog[bad_seqs[0]]
            assert "conservation:" in first_bad["opinions"][s]["reason"], first_bad["opinions"][s]
            assert first_bad["verdict_reason"].startswith("judged suspect by site-"), first_bad
            assert standby_seq(c, s) == clean_seq, s
            assert sha(c.sites[s].volume_path(VOL)) == clean_hash, f"{s}'s standby is not the clean image"
            # the liar's clean opinions are recorded disagreements, at every honest site
            ev = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{bad_seqs[0]}/evidence")
            assert ev["disagreement"] is True, ev
            assert ev["opinions"]["site-a"]["verdict"] == "clean" and ev["opinions"][s]["verdict"] == "suspect", ev
            here = ev["here"]
            assert here["base_seq"] == clean_seq and here["restore_seq"] == clean_seq, here
            # nothing turned random against its previous version and no name changed: conservation
            assert here["signals"]["renamed"] == 0 and here["signals"]["conserved"] > 0.03, here["signals"]
            assert any(r.startswith("conservation:") for r in here["reasons"]), here["reasons"]
            c.wait_for(f"{s} counts the disagreements", lambda s=s: metric(
                c, s, "replicad_anomaly_verdict_disagreements") >= len(bad_seqs), 30)
            assert "VERDICTS DISAGREE" in c.log_tail(s, 4000), s

        # a forced promotion at an honest site restores the plaintext
        res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 90}, timeout_s=120)
        assert res["restored_seq"] == clean_seq and res["restore"]["skipped_seqs"] == [], res
        restored = c.sites["site-b"].volume_path(VOL)
        assert sha(restored) == clean_hash
        with mounted(restored, tmp_path / "mnt-b", options=("ro", "noload")) as mb:
            assert (mb / letter).read_bytes() == letter_bytes, "the clean snapshot's letter reads back"
            assert sorted(p.relative_to(mb) for p in data_files(mb)) == files
    finally:
        c.stop_all()
        with contextlib.suppress(OSError):  # mounted() unmounted and detached by path
            mnt.rmdir()
