"""A ransom note written into the volume (a new small file in free space) with real daemons
(issue 14): the replicas find the ``ransom_note`` signal in the changed block, judges the
snapshot suspect with the signal named in its reason and evidence, and the replicas do not
apply it to their standbys, although the primary's whole-volume screen scores it 0.0."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import BLOCK, VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_detection import opinion, snaps, standby_seq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NOTE = (b"YOUR FILES HAVE BEEN ENCRYPTED!\n\nAll patient records on this server were encrypted with a strong "
        b"algorithm. To decrypt them you need the private key and our decryption tool.\nPay 2 BTC to the Bitcoin "
        b"address below within 72 hours. Contact us through Tor Browser at "
        b"http://x7nq4jvbldqlfwkx4qelsnsaz5hryxi7tmejkmcoqq5c6bwbbcmahvid.onion\nDo not rename the files.\n")


def test_a_ransom_note_in_a_new_file_makes_every_site_judge_the_snapshot_suspect(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, 24, random.Random(41))
        c.start_all()
        c.wait_ready(60)
        snapshot(c, "site-a")
        overwrite_blocks(img, [4], random.Random(42))
        clean_seq = snapshot(c, "site-a")["seq"]
        for s in ("site-b", "site-c"):
            c.wait_for(f"{s} applied #{clean_seq}", lambda s=s: standby_seq(c, s) == clean_seq, 90)
        with open(img, "r+b") as f:  # block 9 was zeros: the note lands in free space, 4 KiB into it
            f.seek(9 * BLOCK + 4096)
            f.write(NOTE)
            f.flush()
            os.fsync(f.fileno())
        bad = snapshot(c, "site-a")
        assert bad["committed"] and bad["score"] == 0.0, bad  # nothing turned random
        for s in ("site-b", "site-c"):
            c.wait_for(f"{s} judged #{bad['seq']} suspect", lambda s=s: opinion(c, s, bad["seq"], s) == "suspect", 90)
        time.sleep(1.0)  # one more replica tick: nothing may be applied
        for s in ("site-b", "site-c"):
            assert snaps(c, s)[bad["seq"]]["verdict"] == "suspect", s
            assert standby_seq(c, s) == clean_seq, s
            here = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{bad['seq']}/evidence")["here"]
            assert here["signals"]["ransom_note"] == 1 and here["signals"]["turned_random"] == 0, here["signals"]
            assert [n["index"] for n in here["ransom_notes"]] == [9] and len(here["ransom_notes"][0]["patterns"]) >= 2
            assert any(r.startswith("ransom_note:") for r in here["reasons"]), here["reasons"]
            # the slow windows (one-sided CUSUMs since #1, no confirmation): carried from the clean
            # snapshot's evidence to this one's, neither flagged
            before = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{clean_seq}/evidence")["here"]
            for doc in (before, here):
                assert doc["slow"]["anchor"] == 1 and doc["slow"]["learned_rate"] is None, doc["slow"]
                assert not doc["slow"]["relative"]["flagged"] and not doc["slow"]["conservation"]["flagged"]
            assert here["slow"]["relative"]["total"] <= before["slow"]["relative"]["total"] + here["score"], here
    finally:
        c.stop_all()
