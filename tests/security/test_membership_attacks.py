"""One compromised site plus one stolen admin token of another site cannot revoke an honest
site, rewrite the agreed membership or choose it at founding (security review findings 1-3).

The attacker holds everything of site-a: its daemon (a real process, driven through its own
admin API with its own token; for founding, ``command_attacker.py found`` runs site-a's Raft
member itself with site-a's key) and the admin token of site-b. Two of three sites sign what
it asks, a majority: what stops it is the cooling-off of revocations and membership changes
(``[policy] membership_cooling_off``, the production default of 15 minutes here), during which
the honest operators veto, and the founding rule (a majority of the configured sites must
propose the identical member list). The honest sites b and c are judged: no revocation, the
membership unchanged, both restart, keep a quorum when site-a is gone, and found the cluster
with their own list.

One cluster serves the first two cases (file order); founding uses its own.
"""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicad.config import load_config
from replicad.core.errors import ReplicadError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).parents[2]
TOKENS = {"site-a": {"ops-a": ("admin", "site-a-admin-token-0123456789abcdef")},
          "site-b": {"ops-b": ("admin", "site-b-admin-token-0123456789abcdef")},
          "site-c": {"ops-c": ("admin", "site-c-admin-token-0123456789abcdef")}}
OWN_A = TOKENS["site-a"]["ops-a"][1]  # the attacker's own site
STOLEN_B = TOKENS["site-b"]["ops-b"][1]  # the stolen token (the honest operators of b use it too)
TOKEN_C = TOKENS["site-c"]["ops-c"][1]
COOLING = "15m"  # the production default: the attacks never wait for it to end


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("membership") / "cluster", interval="1h", min_copies=2, tokens=TOKENS,
                     membership_cooling_off=COOLING)
    write_image(c.sites["site-a"].volume_path(VOL), 48, random.Random(5))
    try:
        c.start_all()
        c.wait_ready(90)
        snapshot(c, "site-a")
        yield c
    finally:
        c.stop_all()


def members_of(c: LocalCluster, site: str) -> list[dict]:
    """The membership ``site``'s config describes (every honest site's is the same)."""
    return load_config(c.sites[site].config_path).membership()


def agreed(c: LocalCluster, site: str) -> list[dict] | None:
    """The agreed membership ``site`` copied from its Raft state into its catalog (read-only)."""
    path = c.sites[site].dir / "data" / "catalog.db"
    if not path.exists():  # the site has not opened it yet
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='membership'").fetchone()
    except sqlite3.OperationalError:  # created a moment ago, its schema not written yet
        return None
    finally:
        db.close()
    return json.loads(row[0]) if row else None


def request_status(c: LocalCluster, site: str, req: str) -> str:
    return {r["id"]: r["status"] for r in c.api(site, "GET", "/v1/requests")["requests"]}[req]


def refused_code(call) -> str:
    with pytest.raises(ReplicadError) as info:
        call()
    return info.value.code


def test_a_membership_rewrite_cools_off_is_vetoed_and_the_honest_sites_restart(cluster: LocalCluster) -> None:
    c = cluster
    honest = members_of(c, "site-b")
    # finding 2: drop site-c and move site-b's Raft address
    evil = [dict(m) for m in honest if m["site_id"] != "site-c"]
    for m in evil:
        if m["site_id"] == "site-b":
            m["raft"] = "127.0.0.1:1"
    req = c.api("site-a", "POST", "/v1/membership", {"members": evil, "reason": "maintenance"}, token=OWN_A)
    assert req["status"] == "pending", req
    done = c.api("site-b", "POST", f"/v1/requests/{req['request']}/approve", {}, token=STOLEN_B)
    assert done["status"] == "approved" and done["effective_ns"] > 0, done  # cooling off, not applied
    vetoed = c.api("site-c", "POST", f"/v1/requests/{req['request']}/veto", {}, token=TOKEN_C)
    assert vetoed["status"] == "vetoed", vetoed
    # a member's address never changes without its own signed approval: a majority is not enough
    moved = [{**m, "raft": "127.0.0.1:2"} if m["site_id"] == "site-c" else m for m in honest]
    req2 = c.api("site-a", "POST", "/v1/membership", {"members": moved}, token=OWN_A)
    done2 = c.api("site-b", "POST", f"/v1/requests/{req2['request']}/approve", {}, token=STOLEN_B)
    assert done2["status"] == "pending", done2
    for s in ("site-b", "site-c"):
        assert request_status(c, s, req["request"]) == "vetoed"
        assert request_status(c, s, req2["request"]) == "pending"
        assert agreed(c, s) == honest, s
    # the honest sites restart (maintenance, a crash, a power cut during the incident): both come back
    for s in ("site-c", "site-b"):
        c.kill(s, signal.SIGTERM)
        c.start(s)
        c.wait_ready(90)
    for s in ("site-b", "site-c"):
        assert c.sites[s].proc.poll() is None, c.log_tail(s)
        assert "refuses to start" not in c.sites[s].log_path.read_text()
        assert agreed(c, s) == honest, s


def test_one_site_and_a_stolen_token_cannot_revoke_an_honest_site(cluster: LocalCluster) -> None:
    c = cluster
    # finding 1: site-a asks to revoke site-c; the stolen token of site-b approves it
    req = c.api("site-a", "POST", "/v1/sites/site-c/revoke", {"reason": "routine"}, token=OWN_A)
    done = c.api("site-b", "POST", f"/v1/requests/{req['request']}/approve", {}, token=STOLEN_B)
    assert done["status"] == "approved", done  # cooling off: site-c is not revoked
    for s in ("site-b", "site-c"):
        assert "site-c" not in c.status(s)["identity"]["revoked"], s
    # site-c may not veto its own revocation (else the real culprit would veto its own)...
    assert refused_code(lambda: c.api("site-c", "POST", f"/v1/requests/{req['request']}/veto", {},
                                      token=TOKEN_C)) == "conflict"
    # ...site-b's honest operator does, in the cooling-off
    vetoed = c.api("site-b", "POST", f"/v1/requests/{req['request']}/veto", {}, token=STOLEN_B)
    assert vetoed["status"] == "vetoed", vetoed
    for s in ("site-b", "site-c"):
        assert request_status(c, s, req["request"]) == "vetoed"
        assert "site-c" not in c.status(s)["identity"]["revoked"], s
        assert "revoked_site" not in c.log_tail(s, 2000)
    # the attacker's site goes away: b and c keep a quorum and fail over
    c.kill("site-a")
    res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"to": "site-b", "force": True}, timeout_s=60)
    assert res["primary"] == "site-b" if "primary" in res else res, res
    c.wait_for("site-b primary everywhere", lambda: all(
        c.status(s)["volumes"][VOL]["primary"] == "site-b" for s in ("site-b", "site-c")), 60)


def test_the_attacker_proposing_first_does_not_choose_the_membership(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, tokens=TOKENS)
    write_image(c.sites["site-a"].volume_path(VOL), 48, random.Random(5))
    attacker = subprocess.Popen(
        [sys.executable, "-m", "tests.security.command_attacker", "found", "--config",
         str(c.sites["site-a"].config_path), "--work-dir", str(tmp_path / "attacker"), "--victim", "site-c",
         "--wait-s", "40", "--stop-file", str(tmp_path / "founded")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=REPO)
    try:
        first = json.loads(attacker.stdout.readline())  # its Raft member runs and proposes before b and c start
        assert first.get("started"), first
        time.sleep(1.0)
        c.start("site-b")
        c.start("site-c")
        honest = members_of(c, "site-b")
        for s in ("site-b", "site-c"):  # (the volume's initial primary is site-a: no volume is ready)
            c.wait_for(f"{s} founds the cluster with the honest list", lambda s=s: agreed(c, s) == honest, 90)
            assert c.sites[s].proc.poll() is None, c.log_tail(s)
        (tmp_path / "founded").touch()  # it stops after a round the founded cluster committed (at most 40 s)
        out, err = attacker.communicate(timeout=90)
        answers = [json.loads(line) for line in out.splitlines() if line.strip()]
        # every proposal of the attacker's lists went through Raft; none was adopted
        committed = [a for a in answers if a.get("error") == "ok"]
        assert committed, err[-2000:]
        assert all(a.get("members") in (None, honest) for a in committed), committed[:5]
        # the real site-a daemon, with the extra key pinned for site-c in its config, is refused
        # with a message naming the entry and telling its operator to compare out of band
        cfg = c.sites["site-a"].config_path
        evil_key = first["evil_key"]
        blocks = cfg.read_text().split("\n[[sites]]\n")
        for i, block in enumerate(blocks):
            if 'site_id = "site-c"' in block:
                blocks[i] = re.sub(r'public_key = "([^"]+)"',
                                   lambda m: f'public_key = ["{m.group(1)}", "{evil_key}"]', block)
        cfg.write_text("\n[[sites]]\n".join(blocks))
        c.start("site-a")
        assert c.sites["site-a"].proc.wait(timeout=90) == 2, c.log_tail("site-a")
        log = c.sites["site-a"].log_path.read_text()
        assert "sites.site-c.public_key" in log and "Do not copy either list" in log, c.log_tail("site-a")
        for s in ("site-b", "site-c"):
            assert c.sites[s].proc.poll() is None, c.log_tail(s)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait(timeout=10)
        c.stop_all()

