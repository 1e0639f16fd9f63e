"""A larger agreed maximum size from one site and one stolen admin token of another (defence in
depth: the threat model grants the attacker one site, and here one stolen token of a second).

site-a is the attacker, the volume's primary (a 4 MiB volume: agreed maximum 1 GiB + 4 MiB): its
daemon down, a real attacker process with site-a's key and Raft password
(``command_attacker.py raise-max``) requests a maximum of 2**50 bytes in site-a's name, and
site-b's stolen admin token approves it at site-b's admin API. Before, that approval applied it
at once and no site could veto it: every replica's chunk quota became 1.25 PiB, and a hostile
primary could ship chunks up to it and fill their disks. Now a new maximum past twice the
current one (its base kept for a day) cools off (``[policy] cooling_off``, 1 h here) and site-c's
operator vetoes it. A doubling still applies at the approval (a disk resize needs one approval
and no wait), but doublings do not repeat at once: the next one within the day cools off, and
site-c vetoes it too.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from replicad.core.errors import ConflictError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, snapshot, write_image
from tests.security.test_signed_commands import attack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKENS = {s: {f"ops-{s[-1]}": ("admin", f"{s}-admin-token-0123456789abcdef")} for s in ("site-a", "site-b", "site-c")}
STOLEN_B = TOKENS["site-b"]["ops-b"][1]
TOKEN_C = TOKENS["site-c"]["ops-c"][1]
HONEST = ("site-b", "site-c")


def maximum(c: LocalCluster, site: str) -> int:
    return c.api(site, "GET", "/v1/volumes")["volumes"][VOL]["max_size_bytes"]


def raise_max(c: LocalCluster, work: Path, size: int) -> str:
    """The attacker's request (site-a's key) of a maximum of ``size`` bytes; its id."""
    [line] = attack(c, "raise-max", work, "--volume", VOL, "--size-bytes", str(size))
    assert line["error"] == "ok" and line["status"] == "pending" and line["needed"] == 2, line
    return line["request"]


def test_one_site_and_a_stolen_token_cannot_lift_the_maximum_at_once(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, tokens=TOKENS, cooling_off="1h")
    try:
        write_image(c.sites["site-a"].volume_path(VOL), 64, random.Random(5))  # 4 MiB
        c.start_all()
        c.wait_ready(90)
        assert snapshot(c, "site-a")["committed"]
        m0 = maximum(c, "site-c")
        assert m0 == 2**30 + 4 * 2**20
        c.kill("site-a")  # the attacker runs site-a's Raft member itself

        # the exact attack: 2**50 requested by site-a, approved with site-b's stolen token
        req = raise_max(c, tmp_path / "attacker", 2**50)
        ap = c.api("site-b", "POST", f"/v1/requests/{req}/approve", {}, token=STOLEN_B)
        assert ap["status"] == "approved" and ap["effective_ns"], ap  # before: "applied", 1 PiB at every site
        assert all(maximum(c, s) == m0 for s in HONEST)
        veto = c.api("site-c", "POST", f"/v1/requests/{req}/veto", {}, token=TOKEN_C)
        assert veto["status"] == "vetoed", veto
        assert all(maximum(c, s) == m0 for s in HONEST)
        for s in HONEST:  # named at every site
            assert f"AUDIT veto of request {req} (set_max_size of volume {VOL}, requested by site-a) by site-c" \
                in c.log_tail(s, 2000), s

        # a doubling applies at the approval (a disk resize), not vetoable...
        req = raise_max(c, tmp_path / "attacker2", 2 * m0)
        with pytest.raises(ConflictError):
            c.api("site-c", "POST", f"/v1/requests/{req}/veto", {}, token=TOKEN_C)
        ap = c.api("site-b", "POST", f"/v1/requests/{req}/approve", {}, token=STOLEN_B)
        assert ap["status"] == "applied", ap
        c.wait_for("2 x the maximum at b and c", lambda: all(maximum(c, s) == 2 * m0 for s in HONEST), 30)
        # ...but the next one within the day is judged against the maximum before the first: it cools off
        req = raise_max(c, tmp_path / "attacker3", 4 * m0)
        ap = c.api("site-b", "POST", f"/v1/requests/{req}/approve", {}, token=STOLEN_B)
        assert ap["status"] == "approved", ap  # before: applied, and again, and again (2**k in k requests)
        assert c.api("site-c", "POST", f"/v1/requests/{req}/veto", {}, token=TOKEN_C)["status"] == "vetoed"
        assert all(maximum(c, s) == 2 * m0 for s in HONEST)
    finally:
        c.stop_all()
