"""A forged ``found`` founds nothing: the honest sites found the cluster with their true keys
(attacker review r14, A1).

The attacker is site-c: its real daemon runs with the patches of ``forging_founder.py``. With
site-a down and every log empty, it takes the lead (it votes for nobody else) and, leading before
the founding, appends a ``found`` in site-a's name signed with a key it made, listing that key for
site-a, and its own ``found`` with the same list; its daemon's own proposals list it too. Before,
a ``found`` was checked against the key its own list gave its proposer: the two made a majority of
the three configured sites, the cluster was founded with c's key recorded for site-a, and site-b
(then site-a) stopped with ``membership_mismatch`` (a fresh cluster could not be founded while
site-c led first). Now site-b refuses the forged one (``bad_signature``, counted in
``replicad_command_refused_total``, ERROR naming site-a and the leader that appended it, site-c),
counts site-c's own proposal once, and once site-a starts, a and b found the cluster with their
configs' list; site-c's own daemon (whose config is the true one) joins it. Both kinds: the plain
``found`` (decided, under rules 1, by the frozen rules-1 state machine) and the one carrying rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.core.state import RULES_MAX
from replicad.lab.localcluster import LocalCluster
from tests.security.test_signed_commands import refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def lines(c: LocalCluster, site: str, text: str) -> list[str]:
    return [line for line in c.sites[site].log_path.read_text(errors="replace").splitlines() if text in line]


def running(c: LocalCluster, site: str) -> bool:
    proc = c.sites[site].proc
    return proc is not None and proc.poll() is None


@pytest.mark.parametrize("kind", ["plain", "rules"])
def test_a_forged_found_is_refused_and_the_honest_sites_found_the_cluster(tmp_path: Path, kind: str) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        c.start("site-c", module="tests.security.forging_founder", args=("site-a", kind, "run"))
        c.start("site-b")
        # printed once it leads, before the founding: it appends them then
        c.wait_for("site-c leading, its forged founds", lambda: len(lines(c, "site-c", "FORGED found")) >= 2, 90)
        assert c.status("site-c")["raft"]["is_leader"]
        # the forged found reaches site-b's state machine: refused and counted, or (before) it founds
        # the cluster with site-c's key for site-a and site-b stops on the mismatch
        c.wait_for("site-b judged the forged found", lambda: not running(c, "site-b") or refused(
            c, "site-b", "bad_signature") >= 1 or lines(c, "site-b", "the site stops"), 60)
        assert running(c, "site-b") and not lines(c, "site-b", "the site stops"), c.log_tail("site-b")
        assert refused(c, "site-b", "bad_signature") >= 1, c.log_tail("site-b")
        c_addr = c.status("site-c")["raft"]["self"]
        error = lines(c, "site-b", "in the name of site 'site-a', not signed with the key")
        assert error and "ERROR" in error[0] and f"leader {c_addr} (site site-c)" in error[0], c.log_tail("site-b")
        audit = c.api("site-b", "GET", "/v1/audit")["audit"]
        # the first entry applied, to the initial state (rules 1): for the plain kind, what the frozen
        # rules-1 machine would have decided had the check not come first
        assert audit[0]["op"] == "found" and audit[0]["by"] == "site-a" and audit[0]["error"] == "bad_signature", audit

        c.start("site-a")  # its found and site-b's: the true list, founded by a and b
        c.wait_ready(120)
        for site in ("site-a", "site-b", "site-c"):
            assert running(c, site) and not lines(c, site, "the site stops"), c.log_tail(site)
            assert c.status(site)["rules"]["version"] == RULES_MAX
        # each daemon compares the agreed membership (keys included) with its config and stops on a
        # difference: all three run, so the cluster pins site-a's true key
        assert refused(c, "site-a", "bad_signature") >= 1  # replayed at site-a: the same refusal
    finally:
        c.stop_all()
