"""A Raft leader that withholds the other sites' commands is deposed (raft point 19; attacker
review F3).

The attacker is site-a, the volume's primary: its real daemon runs with one patch
(``withholding_leader.py``): once the trigger file exists it drops every command a member
forwards to it, while it goes on heartbeating and committing its own entries. Before, it was
never deposed: site-b's forced promotion and every clock report and verdict of b and c failed
with ``no_quorum`` for as long as it led (3+ minutes observed), ``has_quorum`` stayed true and no
log line named it. Now b and c each find their own commands kept out of the log for
``WITHHELD_AFTER_S`` (45 s; here ``[raft] withheld_after`` = 25 s) while site-a's
heartbeats arrive, depose it (ERROR naming site-a, ``replicad_raft_refused_total{reason="leader_withholds"}``),
elect one of themselves, and site-b's forced promotion commits.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, write_image
from tests.integration.test_incarnation import _lead
from tests.security.test_signed_commands import raft_refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SITES = ("site-a", "site-b", "site-c")
HONEST = ("site-b", "site-c")
WITHHELD_AFTER_S = 25.0
"""The watch under test (production: 45 s): above the daemon's 15 s proposal deadline with a margin,
so site-b still follows site-a when its withheld promotion fails."""


def start_withholding(c: LocalCluster, trigger: Path) -> None:
    """Replace site-a's daemon with the patched one (its process is tracked by PID as before)."""
    c.kill("site-a")
    c.start("site-a", module="tests.security.withholding_leader", args=(str(trigger), "run"))


def raft_of(c: LocalCluster, site: str) -> dict:
    return c.status(site)["raft"]


def test_a_leader_withholding_the_others_commands_is_deposed_and_the_forced_promotion_commits(tmp_path: Path):
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, withheld_after=f"{WITHHELD_AFTER_S:.0f}s")
    write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(3))
    trigger = tmp_path / "withhold"
    try:
        c.start_all()
        c.wait_ready(90)
        start_withholding(c, trigger)
        c.wait_for("site-a back", lambda: raft_of(c, "site-a")["leader"] is not None, 90)
        _lead(c, "site-a", SITES)
        a_addr = raft_of(c, "site-a")["self"]
        assert all(raft_refused(c, s, "leader_withholds") == 0 for s in HONEST)

        trigger.touch()
        term = raft_of(c, "site-b")["term"]
        with pytest.raises(ReplicadError) as refused:  # withheld: the honest daemon's 15 s deadline passes
            c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
        assert refused.value.code == "no_quorum", refused.value
        assert raft_of(c, "site-b")["leader"] == a_addr  # still following it

        for site in HONEST:
            c.wait_for(f"{site} deposes site-a", lambda: raft_refused(c, site, "leader_withholds") >= 1,
                       3 * WITHHELD_AFTER_S + 60)
            lines = [line for line in c.sites[site].log_path.read_text(errors="replace").splitlines()
                     if "raft refused [leader_withholds]" in line]
            assert len(lines) == 1 and "ERROR" in lines[0], c.log_tail(site)
            assert f"the leader of term {term}, {a_addr} (site site-a)" in lines[0], lines[0]
            assert raft_of(c, site)["deposed"][a_addr]["site"] == "site-a"

        leader = c.wait_for("an honest leader", lambda: next((s for s in HONEST if raft_of(c, s)["is_leader"]), None),
                            90)
        assert raft_of(c, leader)["term"] > term
        promo = c.wait_for("site-b's forced promotion commits", lambda: c.api(
            "site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True}), 90)
        assert promo["primary"] == "site-b", promo
        assert c.api("site-c", "GET", "/v1/volumes")["volumes"][VOL]["primary"] == "site-b"
        assert all(raft_of(c, s)["leader"] != a_addr for s in HONEST)
    finally:
        c.stop_all()
