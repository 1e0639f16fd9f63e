"""One site cannot hold the honest sites' judges, and with them a takeover, hostage with a
manifest that is cheap to make and costly to judge (review F1).

The attacker is site-a, the volume's primary: a real process (``judge_attacker.py``) holding
site-a's config, the cluster's Raft password and site-a's own key runs site-a's Raft member in
place of its daemon, ships a snapshot of PAGES copies of one manifest page of 4,096 copies of
one random 64 KiB block (three chunks) to site-b and site-c, and commits it with their honest
acknowledgements (where the volume's agreed maximum size refuses such a manifest: COUNT
snapshots of the largest it admits). Judged block by block (one ``compare_block`` per changed block, ~1-6 ms each)
under the volume's ``runner.lock``, it held each honest site's replica step for hours, and with
it every takeover: three forced promotions were granted in Raft and none took effect. Now each
distinct (old, new) pair is compared once, past a budget a random sample is, and no judgement
runs under ``runner.lock``: site-b's forced promotion to the older clean snapshot takes effect,
and both honest sites judge the attack snapshot suspect (every block that held data turned
random: the stratum the score counts is looked at whole).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.core import state
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import BLOCK, VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_detection import opinion

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).parents[2]
HONEST = ("site-b", "site-c")
N_BLOCKS = 32  # the real volume: 2 MiB
PAGES = 200  # 819,200 blocks (50 GiB claimed) in one snapshot, where no agreed maximum size bounds it
COUNT = 8  # snapshots of the most pages that bound admits (4: 16,384 blocks each, 131,072 in all)


def attack_shape() -> tuple[int, int]:
    """``(pages, snapshots)``: PAGES in one, or the most pages the volume's agreed maximum size
    admits (every honest receiver refuses a larger manifest at its announcement) in COUNT."""
    bound = getattr(state, "default_max_size_bytes", None)
    if bound is None:
        return PAGES, 1
    pages = max(1, min(PAGES, bound(N_BLOCKS * BLOCK) // (4096 * BLOCK)))
    return pages, 1 if pages == PAGES else COUNT


def test_a_costly_manifest_never_holds_a_takeover(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), N_BLOCKS, random.Random(3))
    try:
        c.start_all()
        c.wait_ready(60)
        overwrite_blocks(c.sites["site-a"].volume_path(VOL), [1, 2], random.Random(1))
        clean = snapshot(c, "site-a")
        assert clean["committed"], clean
        older = clean["seq"]
        for s in HONEST:  # the honest sites judged every snapshot so far clean themselves
            c.wait_for(f"{s} judged #{older} clean", lambda s=s: opinion(c, s, older, s) == "clean", 90)
        c.kill("site-a")  # its daemon is down; the attacker runs its Raft member

        pages, count = attack_shape()
        out = subprocess.run([sys.executable, "-m", "tests.security.judge_attacker", "--config",
                              str(c.sites["site-a"].config_path), "--work-dir", str(tmp_path / "attacker"),
                              "--volume", VOL, "--pages", str(pages), "--count", str(count)],
                             capture_output=True, text=True, timeout=180, cwd=REPO)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        acks = [x for x in lines if x["mode"] == "acks"]
        commits = [x for x in lines if x["mode"] == "commit"]
        assert len(acks) == len(commits) == count, lines
        assert all(x["acks"] == list(HONEST) and x["blocks"] == pages * 4096 for x in acks), lines
        assert all(x["error"] == "ok" for x in commits) and commits[0]["seq"] == older + 1, lines
        bad = commits[-1]["seq"]

        # the forced promotion to the older clean snapshot takes effect (before: granted in Raft,
        # never acted on while site-b's replica step judged #bad under runner.lock)
        promo = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "snapshot": older})
        assert promo["primary"] == "site-b", promo
        c.wait_for("site-b serves the older snapshot", lambda: (
            c.status("site-b")["volumes"][VOL]["role"] == "primary"
            and (c.status("site-b")["volumes"][VOL].get("last_report") or {}).get("restored_seq") == older), 120)
        report = c.status("site-b")["volumes"][VOL]["last_report"]
        assert report["pinned"] is True, report

        # and the attack snapshot is judged, within the budget, suspect at both honest sites
        for s in HONEST:
            c.wait_for(f"{s} judged #{bad}", lambda s=s: opinion(c, s, bad, s) is not None, 120)
            here = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{bad}/evidence")["here"]
            assert here["verdict"] == "suspect", here["reasons"]
            sampling = here["sampling"]
            assert sampling["changed"] == pages * 4096 and sampling["distinct"] <= N_BLOCKS + 1, sampling
            assert sampling["strata"]["data"][0] == sampling["strata"]["data"][1] <= N_BLOCKS, sampling
    finally:
        c.stop_all()
