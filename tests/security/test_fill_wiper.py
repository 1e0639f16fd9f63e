"""A wiper at the primary that writes no zeros (issue 14): each snapshot overwrites a quarter of
the blocks still holding data with a fill, 0xFF (as ``shred``'s patterns, a flash erase or a
wiper's constant buffer would), then with ``DEADBEEF``.

Three real sites; site-a, the primary, runs replicad's own unmodified daemon: the attacker only
writes into the volume's image between snapshots. Before fills counted as wiped, such blocks were
neither zeros nor random: every snapshot was clean at every site and both standbys applied a
volume whose data was gone. Now a block whose every 4 KiB is zeros or a fill counts where zeros
count (:func:`replicad.core.anomaly.fill_period`): the first wipe (16 of 64 data blocks, 25 %) is
clean, the second (12 more: 43.8 % in the wipe window) is suspect at site-b and site-c, their
evidence names #2 as where it began and #1 as the restore point, and their standbys hold #2, byte
for byte.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import BLOCK, VOL, snapshot, write_image
from tests.security.test_detection import snaps, standby_seq
from tests.security.test_slow_wiper import HONEST, N_BLOCKS, data_blocks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FILLS = (b"\xff" * BLOCK, b"DEADBEEF" * (BLOCK // 8))


def fill_blocks(path: Path, blocks: list[int], fill: bytes) -> None:
    """Write ``fill`` over ``blocks`` of the image, fsynced."""
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(fill)
        f.flush()
        os.fsync(f.fileno())


def test_a_wiper_writing_0xff_at_the_primary_is_flagged_and_the_honest_standbys_hold(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, N_BLOCKS, random.Random(7))
        c.start_all()
        c.wait_ready(90)
        assert snapshot(c, "site-a")["seq"] == 1 and len(data_blocks(img)) == 64
        rng = random.Random(1)
        live = data_blocks(img)
        at_two = None
        for fill, want in zip(FILLS, ("clean", "suspect")):
            victims = rng.sample(live, len(live) // 4)  # 25 % of what is left: under wipe_max
            fill_blocks(img, victims, fill)
            live = [b for b in live if b not in victims]
            seq = snapshot(c, "site-a")["seq"]

            def judged() -> dict | None:
                s = snaps(c, "site-b")[seq]
                return s if set(HONEST) <= set(s.get("opinions") or {}) else None

            s = c.wait_for(f"#{seq} judged by site-b and site-c", judged, 120)
            assert {k: s["opinions"][k]["verdict"] for k in HONEST} == {k: want for k in HONEST}, (seq, s["opinions"])
            if seq == 2:
                at_two = hashlib.sha256(img.read_bytes()).hexdigest()
                c.wait_for("both standbys at #2", lambda: all(standby_seq(c, x) == 2 for x in HONEST), 60)
        assert seq == 3 and len(live) == 36  # 16 + 12 of 64 data blocks overwritten
        for site in HONEST:
            ev = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots/3/evidence")["here"]
            assert ev["verdict"] == "suspect" and ev["first_suspect_seq"] == 2 and ev["restore_seq"] == 1, ev
            assert any(r.startswith("slow drift (wipe window") and "zeros or a fill" in r and "it began at #2" in r
                       for r in ev["reasons"]), ev
            w = ev["slow"]["wipes"]
            assert w["flagged"] and w["count"] == 28 and w["data"] == 64 and w["began"] == 2, w
            st = c.status(site)["volumes"][VOL]
            assert st.get("standby_seq") == 2 and st.get("newest_clean") == 2, st
            assert hashlib.sha256(c.sites[site].volume_path(VOL).read_bytes()).hexdigest() == at_two
    finally:
        c.stop_all()
