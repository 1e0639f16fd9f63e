"""A leader that withholds the founding from the site starting last is deposed; that site does not
stop (attacker review r15, F1).

The attacker is site-c: its real daemon runs with the patches of ``founding_withholder.py``. It
and site-a start first; site-c leads (it votes for nobody else) and a and c found the cluster.
site-b, an honest daemon, starts last (a first deployment where one site comes up later): site-c
sends it nothing past the first entry of its term while reporting that entry as the commit index
(b counts itself caught up), denies b's ``found`` and drops every relay, and stays silent to b for
its first 6 s so a's and c's membership reports, naming the incarnation, reach b first. Before,
b's founding-replay check (``SiteDaemon._judge_founding_replay``) stopped it after 20 s (exit 2,
``membership_mismatch``, blaming a retired founding key and telling the operator to move its Raft
directory aside), before raft point 19 deposed site-c, and again at each restart. Now b's replay
refused no founder's ``found``, so it logs an ERROR naming site-c as possibly withholding the
founding and keeps proposing; its withheld ``found`` makes it depose site-c (point 19, here
``[raft] withheld_after`` = 30 s: past the former 20 s stop, so the test fails on the former code),
and b joins the incarnation a and c founded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.security.test_signed_commands import raft_refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WITHHELD_AFTER_S = 30.0
"""Point 19's watch here (production: 45 s); the lab minimum is 20 s."""


def lines(c: LocalCluster, site: str, text: str) -> list[str]:
    return [line for line in c.sites[site].log_path.read_text(errors="replace").splitlines() if text in line]


def running(c: LocalCluster, site: str) -> bool:
    proc = c.sites[site].proc
    return proc is not None and proc.poll() is None


def test_a_leader_withholding_the_founding_from_the_last_site_is_deposed_and_that_site_joins(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, withheld_after=f"{WITHHELD_AFTER_S:.0f}s")
    try:
        c.start("site-c", module="tests.security.founding_withholder", args=("site-b", "run"))
        c.start("site-a")
        c.wait_for("a and c found the cluster", lambda: lines(c, "site-a", "registered in the cluster"), 120)
        c_addr = c.status("site-c")["raft"]["self"]
        assert c.status("site-c")["raft"]["is_leader"], c.log_tail("site-c")

        c.start("site-b")
        c.wait_for("site-b joins or stops", lambda: not running(c, "site-b")
                   or lines(c, "site-b", "registered in the cluster"), 4 * WITHHELD_AFTER_S + 90)
        assert running(c, "site-b") and not lines(c, "site-b", "the site stops"), c.log_tail("site-b")
        assert lines(c, "site-c", "WITHHELD"), c.log_tail("site-c")  # the attack ran
        # before it joined: the ERROR naming site-c, and site-c deposed for the withheld found
        error = lines(c, "site-b", "founding withheld?")
        assert error and "ERROR" in error[0], c.log_tail("site-b")
        assert f"the leader {c_addr} (site site-c) may withhold them" in error[0], error[0]
        assert raft_refused(c, "site-b", "leader_withholds") >= 1, c.log_tail("site-b")
        assert not lines(c, "site-b", "membership_mismatch") and not lines(c, "site-b", "site site-b stops"), \
            c.log_tail("site-b")
        assert c.status("site-b")["raft"]["leader"] != c_addr
    finally:
        c.stop_all()
