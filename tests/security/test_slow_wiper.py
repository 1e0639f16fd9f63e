"""A slow wiper at the primary (issue 14; review R7, F4): each snapshot zeroes a quarter of the
blocks that still hold data, under ``wipe_max`` (30 %) every time.

Three real sites; site-a, the primary, runs replicad's own unmodified daemon: the attacker only
writes zeros into the volume's image between snapshots (as ``shred -z`` or ``blkdiscard -z`` of
a share of the data would), and the daemon snapshots and ships each one. Judged per snapshot
alone, every step was clean and both standbys applied a volume with 81 % of its data gone. The
wipe window (:class:`replicad.core.anomaly.Wipes`: distinct blocks zeroed since the last
confirmed snapshot) passes ``wipe_max`` on the second wipe (16 + 12 of 64 blocks): site-b and
site-c judge it and every later one suspect, their evidence names the first wiped snapshot (#2)
and the restore point before it (#1), and their standbys hold the last snapshot judged clean
(#2, byte for byte).
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N_BLOCKS = 96  # a third zeros: 64 data blocks
HONEST = ("site-b", "site-c")


def data_blocks(path: Path) -> list[int]:
    """Indices of the image's blocks that are not all zeros."""
    out = []
    with open(path, "rb") as f:
        for i in range(N_BLOCKS):
            if f.read(BLOCK) != bytes(BLOCK):
                out.append(i)
    return out


def zero_blocks(path: Path, blocks: list[int]) -> None:
    """Write zeros over ``blocks`` of the image, fsynced."""
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(bytes(BLOCK))
        f.flush()
        os.fsync(f.fileno())


def test_a_slow_wiper_at_the_primary_is_flagged_when_the_total_crosses_wipe_max(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, N_BLOCKS, random.Random(7))
        c.start_all()
        c.wait_ready(90)
        assert snapshot(c, "site-a")["seq"] == 1 and len(data_blocks(img)) == 64
        rng = random.Random(1)
        wiped = 0
        at_two = None
        for _ in range(6):
            live = data_blocks(img)
            victims = rng.sample(live, len(live) // 4)  # 25 % of what is left: under wipe_max
            zero_blocks(img, victims)
            wiped += len(victims)
            seq = snapshot(c, "site-a")["seq"]

            def judged() -> dict | None:
                s = snaps(c, "site-b")[seq]
                return s if set(HONEST) <= set(s.get("opinions") or {}) else None

            s = c.wait_for(f"#{seq} judged by site-b and site-c", judged, 120)
            crossed = wiped / 64 > 0.3
            assert {k: s["opinions"][k]["verdict"] for k in HONEST} == \
                {k: "suspect" if crossed else "clean" for k in HONEST}, (seq, wiped, s["opinions"])
            if seq == 2:
                at_two = hashlib.sha256(img.read_bytes()).hexdigest()
                c.wait_for("both standbys at #2", lambda: all(standby_seq(c, x) == 2 for x in HONEST), 60)
        assert wiped == 52  # 16 + 12 + 9 + 6 + 5 + 4: 81 % of the data
        for site in HONEST:
            ev = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots/3/evidence")["here"]
            assert ev["verdict"] == "suspect" and ev["first_suspect_seq"] == 2 and ev["restore_seq"] == 1, ev
            assert any(r.startswith("slow drift (wipe window") and "it began at #2" in r for r in ev["reasons"]), ev
            w = ev["slow"]["wipes"]
            assert w["flagged"] and w["count"] == 28 and w["data"] == 64 and w["began"] == 2, w
            last = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots/7/evidence")["here"]
            assert last["verdict"] == "suspect" and last["first_suspect_seq"] == 2, last
        # the standbys hold #2, the last snapshot judged clean; the cluster's newest clean is #2
        for site in HONEST:
            st = c.status(site)["volumes"][VOL]
            assert st.get("standby_seq") == 2 and st.get("newest_clean") == 2, st
            assert hashlib.sha256(c.sites[site].volume_path(VOL).read_bytes()).hexdigest() == at_two
    finally:
        c.stop_all()
