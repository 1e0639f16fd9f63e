"""A member that withholds its vouches while another site is down cannot make the honest survivor
keep an unbounded Raft log (raft point 22; attack review R16, F3).

The attacker is site-c, the Raft leader: its real daemon runs with two patches
(``growing_site.py``): it never vouches for a checkpoint, and once the trigger file exists 16 tasks
propose signed commands in its own name with a 36 KB pad (a ``veto`` of no request: every state
machine refuses it once applied, after journaling it). site-b, honest, is down meanwhile, so no
checkpoint gets a majority's vouches and no site compacts its log (point 14). Before, site-c's own
entries passed no door: site-a's Raft dir grew by ~6 MB a second (353 MB and 430 MB of RSS in 60 s,
1,056 MB in 180 s, measured), nothing named site-c, and site-c kept leading. Now site-a charges the
leader's own entries to a member's forwarding budget (1 MiB/s, bursts of 10 s), deposes site-c
(``replicad_raft_refused_total{reason="leader_over_budget"}``, ERROR naming site-c), and what site-c
can still forward is held to that budget and, beyond its share of the uncompacted log (256 MiB, not
reached here), refused. Bounded to 60 s of flooding; the bounds asserted are generous.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, write_image
from tests.integration.test_incarnation import _lead
from tests.security.test_signed_commands import raft_refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

SITES = ("site-a", "site-b", "site-c")
FLOOD_S = 60.0
GROWTH_MAX_MB = 160  # before: ~360 MB in these 60 s; now: a deposition, then <= 1 MiB/s at a's door
RSS_GROWTH_MAX_MB = 320  # before: ~430 MB


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raft_dir_mb(c: LocalCluster, site: str) -> float:
    return sum(f.stat().st_size for f in (c.sites[site].dir / "data" / "raft").iterdir() if f.is_file()) / 2**20


def lines(c: LocalCluster, site: str, text: str) -> list[str]:
    return [line for line in c.sites[site].log_path.read_text(errors="replace").splitlines() if text in line]


def test_a_member_blocking_compaction_cannot_grow_the_survivors_log_without_bound(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(7))
    trigger = tmp_path / "grow"
    try:
        c.start_all()
        c.wait_ready(90)
        c.kill("site-c")
        c.start("site-c", module="tests.security.growing_site", args=(str(trigger), "16", "36000", "run"))
        c.wait_for("site-c back", lambda: c.status("site-c")["raft"]["leader"] is not None, 90)
        _lead(c, "site-c", SITES)
        c.kill("site-b", signal.SIGTERM)  # an honest site down: no checkpoint gets a majority's vouches
        c.wait_for("site-b down", lambda: c.sites["site-b"].proc.poll() is not None, 30)
        pid = c.sites["site-a"].proc.pid
        dir0, rss0 = raft_dir_mb(c, "site-a"), rss_mb(pid)
        trigger.touch()
        start, dir_max, rss_max = time.monotonic(), dir0, rss0
        while time.monotonic() - start < FLOOD_S:
            time.sleep(2)
            dir_max, rss_max = max(dir_max, raft_dir_mb(c, "site-a")), max(rss_max, rss_mb(pid))
        grow = lines(c, "site-c", "GROW ")
        assert grow, "the attacker never proposed"
        assert dir_max - dir0 <= GROWTH_MAX_MB, (dir0, dir_max, grow[-1])
        assert rss_max - rss0 <= RSS_GROWTH_MAX_MB, (rss0, rss_max, grow[-1])
        deposed = lines(c, "site-a", "[leader_over_budget]")
        assert deposed and "(site site-c)" in deposed[0], deposed[:1]
        assert raft_refused(c, "site-a", "leader_over_budget") >= 1
        print(f"site-a raft dir {dir0:.0f} -> {dir_max:.0f} MB, RSS {rss0:.0f} -> {rss_max:.0f} MB; {grow[-1]}")
    finally:
        c.stop_all()
