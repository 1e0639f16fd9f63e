"""AUDIT lines of requests on three real sites, as an operator greps them: an approval by the
site that made the request names the action and its arguments (not ``r1 by site-a:   --``);
arguments and results are ``key=value`` words, not Python dict reprs; a restarted site does not
log the request history again as new ``AUDIT request`` WARNINGs: the Raft log's replay is marked
``AUDIT (replayed from the Raft log)`` at INFO; a founding is logged as committed before a site
first joined (INFO), never as while it was away; a deleted mark is no first start (WARNING)."""

from __future__ import annotations

import re

import signal

import pytest

from replicad.lab.localcluster import NO_FLOOR_TOML

from .conftest import VOL
from .test_operator_cli import cli, flat

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_request_audit_lines_name_the_action_and_a_restart_marks_its_replay(cluster_factory) -> None:
    c = cluster_factory(n_blocks=32, interval="3650d", extra_site_toml=NO_FLOOR_TOML)
    for site in c.sites:  # the founding (add_volume, the rules raise) is no site's absence
        founding = c.sites[site].log_path.read_text(errors="replace").splitlines()
        assert not [x for x in founding if "was away" in x], (site, [x for x in founding if "was away" in x])
        assert all("INFO" in x for x in founding if "AUDIT (committed before this site first joined)" in x), site
    # a token sent to a site without access control is said to be unchecked, once; none sent: nothing said
    res = cli(c, "site-a", "--token", "wrong-" + "x" * 30, "requests")
    assert res.returncode == 0 and res.stderr.count("has no access control") == 1, res.stderr
    assert "has no access control" not in cli(c, "site-a", "requests").stderr
    res = cli(c, "site-a", "max-size", VOL, "2GiB", "--reason", "disk resized")
    req = re.search(r"request (r\d+)", flat(res)).group(1)
    res = cli(c, "site-a", "approve", req)  # its own request: counted already
    assert res.returncode == 0, flat(res)
    res = cli(c, "site-b", "approve", req)
    assert res.returncode == 0 and "applied" in flat(res), flat(res)

    def lines(site: str, start: int = 0) -> list[str]:
        return c.sites[site].log_path.read_text(errors="replace").splitlines()[start:]

    c.wait_for("site-c logged the request applied",
               lambda: any(f"AUDIT request {req} applied" in x for x in lines("site-c")), 30)
    made = next(x for x in lines("site-c") if f"AUDIT request {req} by site-a:" in x)
    assert "set_max_size volume=ehr max_size_bytes=2147483648" in made and 'reason="disk resized"' in made, made
    again = next(x for x in lines("site-a") if f"AUDIT request {req} (" in x and "already counted" in x)
    assert "set_max_size volume=ehr" in again and "INFO" in again, again
    applied = next(x for x in lines("site-c") if f"AUDIT request {req} applied" in x)
    assert "{" not in applied and "'" not in applied and "True" not in applied, applied
    assert "max_size_bytes=2147483648" in applied, applied

    before = len(lines("site-c"))
    c.kill("site-c", signal.SIGTERM)  # a stop records how far site-c saw the cluster live
    c.start("site-c")
    c.wait_for("site-c joined again", lambda: c.status("site-c").get("raft", {}).get("leader"), 60)
    c.wait_for("site-c replayed the request",
               lambda: any(f"request {req} applied" in x for x in lines("site-c", before)), 60)
    after = [x for x in lines("site-c", before) if f"request {req}" in x]
    assert after and all("AUDIT (replayed from the Raft log) request" in x and "WARNING" not in x for x in after), \
        after

    # site-c down while site-a asks and site-b approves: committed while site-c was away, so its
    # restart logs them at WARNING as such (a hostile site's changes made while the honest sites
    # start or upgrade reach their logs), and a later restart does not again
    c.kill("site-c")
    res = cli(c, "site-a", "max-size", VOL, "3GiB", "--reason", "while c was down")
    away_req = re.search(r"request (r\d+)", flat(res)).group(1)
    res = cli(c, "site-b", "approve", away_req)
    assert res.returncode == 0 and "applied" in flat(res), flat(res)
    before = len(lines("site-c"))
    c.start("site-c")
    c.wait_for("site-c logged what it missed",
               lambda: any(f"request {away_req} applied" in x for x in lines("site-c", before)), 60)
    missed = [x for x in lines("site-c", before) if f"request {away_req}" in x]
    assert missed and all("AUDIT (committed while this site was away) request" in x and "WARNING" in x
                          for x in missed), missed
    # lines of history: no next step for a request that has applied since (its fate follows them)
    assert not any(f"replicad approve {away_req}" in x for x in missed), missed
    assert any(f"request {away_req} by site-a:" in x and "approvals at that command" in x for x in missed), missed
    # ... and once it joined, what became of it (from the state now)
    c.wait_for("site-c told the request's status now", lambda: any(
        f"AUDIT (committed while this site was away) request {away_req} (set_max_size, requested by site-a): "
        f"since applied" in x for x in lines("site-c", before)), 60)
    assert not any(f"request {req} " in x and "WARNING" in x for x in lines("site-c", before)), \
        "seen live before: not logged as missed"
    c.wait_for("site-c joined", lambda: c.status("site-c").get("raft", {}).get("leader"), 60)
    before = len(lines("site-c"))
    c.kill("site-c", signal.SIGTERM)
    c.start("site-c")
    c.wait_for("site-c replayed it", lambda: any(f"request {away_req} applied" in x for x in lines("site-c", before)),
               60)
    again = [x for x in lines("site-c", before) if f"request {away_req}" in x]
    assert all("AUDIT (replayed from the Raft log) request" in x and "WARNING" not in x for x in again), again

    # the mark deleted (to hide what was committed while site-c was down): not a first start, the
    # replayed history is logged at WARNING saying the mark was missing
    c.wait_for("site-c joined", lambda: c.status("site-c").get("raft", {}).get("leader"), 60)
    c.kill("site-c", signal.SIGTERM)
    (c.sites["site-c"].dir / "data" / "audit.seen").unlink()
    before = len(lines("site-c"))
    c.start("site-c")
    c.wait_for("site-c replayed it", lambda: any(f"request {away_req} applied" in x for x in lines("site-c", before)),
               60)
    hidden = [x for x in lines("site-c", before) if f"request {away_req}" in x]
    assert hidden and all("WARNING" in x and "mark audit.seen was missing" in x for x in hidden), hidden
