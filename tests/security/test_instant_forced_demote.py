"""A demote during an honest site's instant recovery (review R7, F3), with real daemons, a real
attacker process and a real NBD client.

site-a is the attacker: a real process holding site-a's config and its own site key that runs
site-a's Raft member (``command_attacker.py churn --rounds 1``: a forced ``demote``, then a forced
``promote`` of itself). site-b took the volume over with ``promote --force --instant``; its image
is immutable (``chattr +i``), so the copy cannot finish and the application's writes live only in
the instant overlay. The application (``qemu-io``) writes and FLUSHes 64 KiB.

* The attacker's forced demote, its one forced role change of the hour, once fenced site-b; now
  the state holds the volume for a primary in an instant recovery (``state.instant_recovery``)
  and both are refused (``approval_required``; ``tests/security/test_instant_takeover.py`` has the
  rest of that attack). A demotion other sites approved (an operator's mistake, or a stolen admin
  token) still fences site-b (the export closes); site-b is promoted again (its second forced
  change within the hour: a request site-c's operator approves) restoring the same snapshot, and
  no other site was primary in between: the overlay is re-attached under the new epoch and, once
  the copy completes, the image holds the application's write (before the F3 fix the overlay was
  set aside as ``ehr.stale-<epoch>-<seq>`` and the image held the snapshot).
* Control: when another site (site-c, by its forced promotion, a request site-b approved) was
  primary in between, the branch truly diverged and site-b's overlay is still set aside, kept on
  disk, never applied.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.core.errors import ApprovalRequiredError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, snapshot, write_image

TOOLS = ("qemu-io", "chattr")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420),
              pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root"),
              pytest.mark.skipif(any(shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
                                     for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (scripts/setup.sh)")]

REPO = Path(__file__).parents[2]
WRITE = b"\x42" * 65536


def _env() -> dict:
    return dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin", PYTHONPATH=str(REPO))


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, env=_env(), capture_output=True, timeout=30)


def _instant(c: LocalCluster, site: str) -> dict | None:
    return c.status(site)["volumes"][VOL].get("instant")


def _instant_takeover_with_a_write(c: LocalCluster, held: Path) -> dict:
    """site-a's daemon is down; site-b promotes --instant on an immutable image; the application
    writes and flushes 64 KiB of 0x42 at offset 0 through the export. Returns the promotion."""
    write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(9))
    c.start_all()
    c.wait_ready(60)
    snap = snapshot(c, "site-a")
    assert snap["committed"], snap
    c.wait_for("site-b and site-c hold the snapshot", lambda: any(
        s["seq"] == snap["seq"] and {"site-b", "site-c"} <= set(s["holders"])
        for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 60)
    c.kill("site-a")  # the attacker runs site-a's Raft member itself
    held.write_bytes(b"")
    _chattr("+i", held)  # the copy cannot finish: the writes live in the overlay only
    res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "instant": True})
    w = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x42 0 65536", "-c", "flush", res["instant"]["uri"]],
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert w.returncode == 0, (w.stdout, w.stderr)
    return res


def _promote_b_again_through_a_request(c: LocalCluster) -> None:
    """site-b's second forced promotion within the hour is a request; site-c's operator approves it."""
    with pytest.raises(ApprovalRequiredError) as err:
        c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 5}, timeout_s=60)
    req = err.value.evidence["request"]
    assert c.api("site-c", "POST", f"/v1/requests/{req}/approve", {})["status"] == "applied"


def test_a_forced_demote_during_an_instant_recovery_loses_no_flushed_write(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "c", interval="1h", min_copies=2, apply_delay="1h")
    held = c.sites["site-b"].volume_path(VOL)
    try:
        res = _instant_takeover_with_a_write(c, held)
        out = subprocess.run([sys.executable, "-m", "tests.security.command_attacker", "churn", "--config",
                              str(c.sites["site-a"].config_path), "--work-dir", str(tmp_path / "attacker"),
                              "--volume", VOL, "--rounds", "1"], capture_output=True, text=True, timeout=120,
                             cwd=REPO, env=_env())
        assert out.returncode == 0, out.stderr[-3000:]
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        assert [(x["op"], x["error"]) for x in lines] == [("demote", "approval_required"),
                                                          ("promote", "approval_required")], lines
        assert all((x["epoch"], x["primary"]) == (res["epoch"], "site-b") for x in lines), lines
        # a demotion other sites approved: site-c's operator asks, site-b's approves
        with pytest.raises(ApprovalRequiredError) as err:
            c.api("site-c", "POST", f"/v1/volumes/{VOL}/demote", {}, timeout_s=60)
        assert err.value.evidence["refusal"] == "instant_recovery", err.value.evidence
        done = c.api("site-b", "POST", f"/v1/requests/{err.value.evidence['request']}/approve", {})
        assert done["status"] == "applied" and done["result"]["epoch"] == res["epoch"] + 1, done
        c.wait_for("site-b's instant export fenced",
                   lambda: (s := _instant(c, "site-b")) and s["phase"] == "fenced", 60)
        record = c.sites["site-b"].dir / "data" / "instant" / VOL
        assert (record / "overlay" / "overlay.img").read_bytes()[:65536] == WRITE  # kept while demoted

        _chattr("-i", held)
        _promote_b_again_through_a_request(c)
        c.wait_for("site-b acts as primary again", lambda: c.status("site-b")["volumes"][VOL]["role"] == "primary",
                   120)
        assert not list(record.parent.glob(f"{VOL}.stale-*"))  # nothing set aside (before: ehr.stale-2-1)
        with open(held, "rb") as f:
            assert f.read(65536) == WRITE  # the application's flushed write survived
        st = _instant(c, "site-b")  # the takeover continued the instant recovery: switched over at the new epoch
        assert st["phase"] == "done" and st["epoch"] == res["epoch"] + 2 and st["seq"] == res["instant"]["seq"], st
        assert "is re-attached, not set aside" in c.log_tail("site-b", 3000)
        # its plain forced promotion continued the pending instant recovery: the state holds it again
        held_by = c.api("site-c", "GET", "/v1/volumes")["volumes"][VOL].get("instant")
        assert held_by == {**held_by, "site": "site-b", "epoch": res["epoch"] + 2, "seq": res["instant"]["seq"]}, held_by
    finally:
        if held.exists():
            subprocess.run(["chattr", "-i", str(held)], env=_env(), capture_output=True, timeout=30)
        c.stop_all()


def test_another_primary_in_between_still_sets_the_overlay_aside(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "c", interval="1h", min_copies=2, apply_delay="1h")
    held = c.sites["site-b"].volume_path(VOL)
    try:
        res = _instant_takeover_with_a_write(c, held)
        with pytest.raises(ApprovalRequiredError) as err:  # site-b is in an instant recovery: site-b approves
            c.api("site-c", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 5}, timeout_s=60)
        assert err.value.evidence["refusal"] == "instant_recovery", err.value.evidence
        promo = c.api("site-b", "POST", f"/v1/requests/{err.value.evidence['request']}/approve", {})
        assert promo["result"]["primary"] == "site-c" and promo["result"]["epoch"] == res["epoch"] + 1, promo
        c.wait_for("site-b's instant export fenced",
                   lambda: (s := _instant(c, "site-b")) and s["phase"] == "fenced", 60)
        _chattr("-i", held)
        _promote_b_again_through_a_request(c)
        c.wait_for("site-b acts as primary again", lambda: c.status("site-b")["volumes"][VOL]["role"] == "primary", 120)
        aside = c.sites["site-b"].dir / "data" / "instant" / f"{VOL}.stale-{res['epoch']}-{res['instant']['seq']}"
        assert (aside / "overlay" / "overlay.img").read_bytes()[:65536] == WRITE  # kept, not applied
        with open(held, "rb") as f:
            assert f.read(65536) != WRITE
        assert f"epoch {res['epoch'] + 1}: site-c was primary" in c.log_tail("site-b", 3000)
    finally:
        if held.exists():
            subprocess.run(["chattr", "-i", str(held)], env=_env(), capture_output=True, timeout=30)
        c.stop_all()
