"""``replicad promote VOL --force --snapshot SEQ`` with real daemons (issue 14, part 5).

The operator looked at the snapshots after an incident and names the last one known clean: the
forced promotion restores exactly that one (O5-verified), not the newest clean one, even though
newer snapshots are committed and judged clean (an attack the detection did not see, say).
A SEQ that is not committed, or suspect without being cleared, is refused with a typed error
(exit 3 / exit 4) before anything is proposed: the epoch does not move. A planned switchover
cannot name a snapshot (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import BLOCK, VOL, overwrite_blocks, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N_BLOCKS = 24


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_forced_promotion_restores_the_snapshot_the_operator_names(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, N_BLOCKS, random.Random(21))
        c.start_all()
        c.wait_ready(60)
        snapshot(c, "site-a")
        overwrite_blocks(img, [4], random.Random(22))  # benign edits of text by text
        chosen = snapshot(c, "site-a")
        chosen_hash = sha(img)
        overwrite_blocks(img, [7], random.Random(23))
        newer = snapshot(c, "site-a")
        with open(img, "r+b") as f:  # the attack: whole text blocks replaced by random bytes
            for b in (1, 4, 7, 10, 13, 16):
                f.seek(b * BLOCK)
                f.write(random.Random(b).randbytes(BLOCK))
        bad = snapshot(c, "site-a")
        assert chosen["committed"] and newer["committed"] and bad["committed"], (chosen, newer, bad)
        assert (chosen["verdict"], newer["verdict"], bad["verdict"]) == ("clean", "clean", "suspect")
        c.wait_for("site-b holds every snapshot", lambda: all(
            "site-b" in s["holders"] for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]),
            60)
        c.kill("site-a")
        admin = c.sites["site-b"].admin_url

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "replicad", "--admin", admin, *args], capture_output=True,
                                  text=True, timeout=180)

        epoch = c.status("site-b")["volumes"][VOL]["epoch"]
        missing = cli("promote", VOL, "--force", "--snapshot", str(bad["seq"] + 50))
        assert missing.returncode == 3 and "no committed snapshot" in missing.stderr, missing.stderr
        assert f"(committed: #1, #2, #3, #{bad['seq']})" in " ".join(missing.stderr.split()), missing.stderr
        suspect = cli("promote", VOL, "--force", "--snapshot", str(bad["seq"]))
        assert suspect.returncode == 4 and "suspect" in suspect.stderr, suspect.stderr
        planned = cli("promote", VOL, "--to", "site-c", "--snapshot", str(chosen["seq"]))
        assert planned.returncode == 2, planned.stderr
        assert c.status("site-b")["volumes"][VOL]["epoch"] == epoch  # nothing was proposed

        done = cli("--json", "promote", VOL, "--force", "--snapshot", str(chosen["seq"]))
        assert done.returncode == 0, done.stderr
        res = json.loads(done.stdout)
        assert res["primary"] == "site-b" and res["epoch"] == epoch + 1 and res["ready"] is True, res
        assert res["restored_seq"] == chosen["seq"] and res["restore"]["pinned"] is True, res
        assert sha(c.sites["site-b"].volume_path(VOL)) == chosen_hash  # the named one, not #newer
        st = c.status("site-b")["volumes"][VOL]
        assert st["primary"] == "site-b" and st["standby_seq"] == chosen["seq"], st

        # the new primary goes on from there: its next snapshot is committed on top of the named one
        after = snapshot(c, "site-b")
        assert after["committed"] and after["verdict"] == "clean", after
        snaps = {s["seq"]: s for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}
        assert snaps[after["seq"]]["parent_seq"] == chosen["seq"], snaps[after["seq"]]
    finally:
        c.stop_all()
