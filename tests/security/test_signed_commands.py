"""A compromised site cannot speak in another site's name through Raft, replay what another
site said, or weaken protection with its own admin token alone.

The attacker is site-a (the volume's primary): a real process (``command_attacker.py``)
holding site-a's config, the cluster's Raft password and site-a's own key runs site-a's Raft
member in place of its daemon and proposes commands. The honest sites b and c are judged:
their committed catalog, primary, epoch and retention do not change, every refused command
leaves a WARNING line and a ``replicad_command_refused_total{reason}`` sample, and the Raft
audit records each refusal; in its own name it cannot register another site either (as a
witness: out of every approval count, promotion and revocation). Then the stolen admin token
of site-a asks to shorten retention:
it stays a pending request, and applies only once an operator of site-b approves it at
site-b with site-b's own token. Last, a majority revokes site-a: its commands, its Raft
connections (existing and new) and its peer API requests are refused at b and c.

One cluster serves the whole module (the cases run in file order).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError, UnauthenticatedError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_history import metric

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HONEST = ("site-b", "site-c")
REPO = Path(__file__).parents[2]
TOKENS = {"site-a": {"ops-a": ("admin", "site-a-admin-token-0123456789abcdef")},
          "site-b": {"ops-b": ("admin", "site-b-admin-token-0123456789abcdef")},
          "site-c": {"ops-c": ("admin", "site-c-admin-token-0123456789abcdef")}}
STOLEN = TOKENS["site-a"]["ops-a"][1]
COOLING_S = 8  # [policy] cooling_off of this cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("signed") / "cluster", interval="1h", min_copies=2, tokens=TOKENS,
                     cooling_off=f"{COOLING_S}s", membership_cooling_off=f"{COOLING_S}s")
    write_image(c.sites["site-a"].volume_path(VOL), 48, random.Random(5))
    try:
        c.start_all()
        c.wait_ready(60)
        img = c.sites["site-a"].volume_path(VOL)
        for i in range(3):
            overwrite_blocks(img, [i + 1], random.Random(i))
            snapshot(c, "site-a")
        yield c
    finally:
        c.stop_all()


def attack(c: LocalCluster, mode: str, work: Path, *args: str) -> list[dict]:
    """Run the attacker with site-a's config (site-a's daemon down); its JSON lines."""
    out = subprocess.run([sys.executable, "-m", "tests.security.command_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), "--work-dir", str(work), *args],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert lines, out.stderr[-3000:]
    return lines


def raft_attack(c: LocalCluster, mode: str, *args: str) -> dict:
    """Run the Raft-channel attacker (``raft_attacker.py``) with site-a's config; its last JSON line."""
    out = subprocess.run([sys.executable, "-m", "tests.security.raft_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), *args], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()][-1]


def peer_attack(c: LocalCluster, mode: str, *args: str) -> list[dict]:
    """Run the peer-API attacker (``peer_attacker.py``) with site-a's config; its JSON lines."""
    out = subprocess.run([sys.executable, "-m", "tests.security.peer_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), *args], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def raft_addr(c: LocalCluster, site: str) -> str:
    return f"127.0.0.1:{c.sites[site].raft_port}"


def _metric(c: LocalCluster, site: str, name: str, reason: str) -> float:
    text = urllib.request.urlopen(urllib.request.Request(c.sites[site].admin_url + "/metrics"), timeout=10).read()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith(name + "{") and f'reason="{reason}"' in line)


def raft_refused(c: LocalCluster, site: str, reason: str) -> float:
    """``replicad_raft_refused_total{reason=...}`` on ``site``'s /metrics (0 when absent)."""
    return _metric(c, site, "replicad_raft_refused_total", reason)


def peer_refused(c: LocalCluster, site: str, reason: str) -> float:
    """``replicad_peer_refused_total{reason=...}`` on ``site``'s /metrics (0 when absent)."""
    return _metric(c, site, "replicad_peer_refused_total", reason)


def refused(c: LocalCluster, site: str, reason: str) -> float:
    """``replicad_command_refused_total{reason=...}`` on ``site``'s /metrics."""
    req = urllib.request.Request(c.sites[site].admin_url + "/metrics")
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("replicad_command_refused_total{") and f'reason="{reason}"' in line]
    assert values, f"replicad_command_refused_total{{reason={reason!r}}} is not exported"
    return sum(values)


def view(c: LocalCluster, site: str) -> dict:
    """What an honest site holds in the cluster state: primary, epoch, retention, catalog."""
    vols = c.api(site, "GET", "/v1/volumes")["volumes"][VOL]
    snaps = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
    return {"primary": vols["primary"], "epoch": vols["epoch"], "retention": vols["retention"],
            "catalog": {s["seq"]: (s["root"], s["verdict"]) for s in snaps}}


def test_every_site_signs_and_the_refusal_metric_starts_at_zero(cluster: LocalCluster) -> None:
    for site in cluster.sites:
        ident = cluster.status(site)["identity"]
        assert ident["signed"] is True and ident["unsafe_unsigned"] is False and ident["public_key"], ident
        for reason in ("bad_signature", "replayed", "expired", "not_self"):
            assert refused(cluster, site, reason) == 0


def test_commands_in_another_sites_name_are_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    # a pending request of site-c for the attacker to "approve" in site-b's name
    pending = cluster.api("site-c", "PUT", f"/v1/volumes/{VOL}/retention", {"retention": {"lock": "1h"}})
    assert pending["status"] == "pending"
    before = {s: view(cluster, s) for s in HONEST}
    cluster.kill("site-a")
    results = attack(cluster, "forge", tmp_path / "attacker")
    ops = {r["op"] for r in results}
    assert {"promote", "mark_verdict", "prune_snapshots", "commit_snapshot", "set_retention", "approve",
            "veto"} <= ops
    # the honest leader refuses each at the door (raft point 17: a member forwards only its own
    # site's commands); were the attacker leading, each would reach the log and be refused there
    assert all(r["error"] in ("refused_at_door", "bad_signature") for r in results), results
    in_log = {r["op"] for r in results if r["error"] == "bad_signature"}
    at_door = sum(r["error"] == "refused_at_door" for r in results)
    time.sleep(1.0)
    for s in HONEST:
        assert view(cluster, s) == before[s], s  # nothing changed: primary, epoch, retention, catalog
        if in_log:
            assert refused(cluster, s, "bad_signature") >= len(in_log), s
            assert "raft command refused [bad_signature]" in cluster.log_tail(s, 600), s
            audit = cluster.api(s, "GET", "/v1/audit")["audit"]
            assert {a["op"] for a in audit if a["error"] == "bad_signature" and a["by"] == "site-b"} >= \
                in_log & {"promote", "prune_snapshots", "commit_snapshot"}, s
    door = sum(raft_refused(cluster, s, r) for s in HONEST for r in ("forwarded_not_own", "forwarded_bad_signature"))
    assert door >= at_door
    if at_door:
        assert any("raft refused [forwarded_not_own]" in cluster.log_tail(s, 600) for s in HONEST)
    assert cluster.api("site-b", "GET", "/v1/requests")["requests"][0]["status"] == "pending"


def test_a_captured_signed_command_replayed_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    before = {s: refused(cluster, s, "replayed") for s in HONEST}
    [result] = attack(cluster, "replay", tmp_path / "attacker", "--victim", "site-b")
    assert result["op"] == "clock" and result["by"] == "site-b", result
    # refused at the honest leader's door (forwarded by site-a's member), or in the log if it led
    assert result["error"] in ("refused_at_door", "replayed"), result
    time.sleep(1.0)
    if result["error"] == "replayed":
        for s in HONEST:
            assert refused(cluster, s, "replayed") >= before[s] + 1, s
            assert "raft command refused [replayed]" in cluster.log_tail(s, 600), s
            audit = cluster.api(s, "GET", "/v1/audit")["audit"]
            assert any(a["op"] == "clock" and a["by"] == "site-b" and a["error"] == "replayed" for a in audit), s
    else:
        assert sum(raft_refused(cluster, s, "forwarded_not_own") for s in HONEST) >= 1


def test_the_compromised_site_cannot_register_another_site(cluster: LocalCluster, tmp_path: Path) -> None:
    """Review R2: site-a, with its own key, registered site-b and site-c as witnesses at a bogus
    address; its own request to shorten retention then needed its approval only, and b's forced
    promotion and b's revocation of site-a were refused ("is a witness"). Now each is refused
    (not_self, WARNING, counted) and the kinds stay the agreed membership's."""
    before = {s: (cluster.status(s)["sites"], refused(cluster, s, "not_self")) for s in HONEST}
    assert all(kinds["site-b"]["kind"] == "data" for kinds, _ in before.values())
    results = {r["attempt"]: r for r in attack(cluster, "reregister", tmp_path / "attacker", "--victim", "site-b")}
    print("reregister:", results)
    assert {k: results[k]["error"] for k in ("site-b_witness", "site-c_witness", "victim_data", "self_witness")} == \
        {"site-b_witness": "not_self", "site-c_witness": "not_self", "victim_data": "not_self",
         "self_witness": "conflict"}, results
    request = results["request"]
    assert request["error"] == "ok" and request["status"] == "pending" and request["needed"] == 2, request
    for s in HONEST:
        cluster.wait_for(f"{s} applied the attacker's request", lambda s=s: request["request"] in
                         {r["id"] for r in cluster.status(s)["requests"]}, 20)
        assert cluster.status(s)["sites"] == before[s][0], s  # kinds and peer addresses unchanged
        assert refused(cluster, s, "not_self") >= before[s][1] + 3, s
        assert "raft command refused [not_self]" in cluster.log_tail(s, 600), s
        audit = cluster.api(s, "GET", "/v1/audit")["audit"]
        assert sum(a["op"] == "register_site" and a["by"] == "site-a" and a["error"] == "not_self"
                   for a in audit) >= 3, s
        listed = {r["id"]: r for r in cluster.status(s)["requests"]}[request["request"]]
        assert listed["status"] == "pending" and listed["needed"] == 2, listed
    # site-b is still a data site: its forced promotion and its revocation of site-a work (the
    # last case of this module does both)


def test_a_command_flood_from_the_compromised_site_is_bounded_at_the_leader(cluster: LocalCluster,
                                                                           tmp_path: Path) -> None:
    """The attacker's Raft member forwards ~4,000 commands a second for 8 s: its own valid
    commands pass only within its budget, the forged ones never reach the log, and the honest
    sites keep committing; no follower deposes the honest leader (raft point 18)."""
    from replicad.consensus.guard import CLOCK_BURST, CLOCK_PER_S
    from replicad.consensus.raft import FORWARD_BURST_S, FORWARD_CMDS_PER_S
    seconds = 8.0
    applied = {s: cluster.status(s)["raft"]["last_applied"] for s in HONEST}
    [result] = attack(cluster, "flood", tmp_path / "attacker", "--wait-s", str(seconds))
    own, forged = result["own"], result["forged"]
    print("flood:", result)
    assert set(forged) <= {"refused_at_door"}, forged  # none reached the log
    assert own.get("refused_at_door", 0) > 0 and own.get("ok", 0) > 0, own  # over budget, after its burst
    # at most its burst plus its rate made it into the log (plus the honest sites' own commands)
    assert own["ok"] <= FORWARD_CMDS_PER_S * (FORWARD_BURST_S + seconds + 30), own
    over = sum(raft_refused(cluster, s, "forwarded_over_budget") for s in HONEST)
    not_own = sum(raft_refused(cluster, s, "forwarded_not_own") for s in HONEST)
    clocks = sum(raft_refused(cluster, s, "forwarded_clock_over_rate") for s in HONEST)  # r13 F3: its own clocks
    # every refusal counted at the leader (a forged command past the budget counts as over budget)
    assert over + not_own + clocks >= own["refused_at_door"] + forged["refused_at_door"], (over, not_own, result)
    assert clocks > 0 and own["ok"] <= CLOCK_BURST + CLOCK_PER_S * (seconds + 30), (clocks, own)
    assert not_own > 0, (over, not_own, result)
    # the honest sites are not held up: both report their clocks again after the flood
    after = {s: cluster.status(s)["raft"]["last_applied"] for s in HONEST}
    cluster.wait_for("a heartbeat of each honest site committed after the flood", lambda: all(
        cluster.status(s)["raft"]["last_applied"] > after[s] for s in HONEST), 30)
    assert all(after[s] > applied[s] for s in HONEST)
    # the honest leader appended nothing its door refuses: no honest follower deposed it (raft point 18)
    assert all(raft_refused(cluster, s, "leader_deposed") == 0 for s in HONEST)
    assert all(not cluster.status(s)["raft"].get("deposed") for s in HONEST)


def test_a_stolen_admin_token_only_makes_a_request(cluster: LocalCluster) -> None:
    cluster.start("site-a")
    cluster.wait_ready(60)
    path = f"/v1/volumes/{VOL}/retention"
    before = {s: view(cluster, s) for s in HONEST}
    token_b, token_c = TOKENS["site-b"]["ops-b"][1], TOKENS["site-c"]["ops-c"][1]
    one_second = {"retention": {"keep_all": "1s", "hourly": "1s", "daily": "1s", "lock": "1s"}}
    # the attacker, with site-a's admin token, shortens retention to one second everywhere
    req = cluster.api("site-a", "PUT", path, one_second, token=STOLEN)
    assert req["status"] == "pending" and req["needed"] == 2 and req["approvals"] == ["site-a"], req
    # approving it again at its own site, or at site-b with site-a's token, does nothing
    again = cluster.api("site-a", "POST", f"/v1/requests/{req['request']}/approve", {}, token=STOLEN)
    assert again["status"] == "pending"
    with pytest.raises(UnauthenticatedError):
        cluster.api("site-b", "POST", f"/v1/requests/{req['request']}/approve", {}, token=STOLEN)
    cluster.api("site-a", "POST", f"/v1/volumes/{VOL}/retention/run", {}, token=STOLEN)
    time.sleep(2.0)
    for s in HONEST:
        assert view(cluster, s) == before[s], s  # nothing changed, nothing pruned
        listed = {r["id"]: r for r in cluster.status(s)["requests"]}
        assert listed[req["request"]]["status"] == "pending", s  # every site's status lists it
        assert f"AUDIT request {req['request']} by site-a" in cluster.log_tail(s, 600), s
    # an operator of site-b is talked into approving it: it only starts the cooling-off, during
    # which site-c's operator vetoes it; it never takes effect
    done = cluster.api("site-b", "POST", f"/v1/requests/{req['request']}/approve", {}, token=token_b)
    assert done["status"] == "approved" and done["approvals"] == ["site-a", "site-b"], done
    assert view(cluster, "site-c")["retention"] == before["site-c"]["retention"]
    vetoed = cluster.api("site-c", "POST", f"/v1/requests/{req['request']}/veto", {}, token=token_c)
    assert vetoed["status"] == "vetoed" and vetoed["vetoed_by"] == "site-c"
    for s in HONEST:
        assert view(cluster, s) == before[s], s
    # a request both sites want applies once approved and cooled off
    wanted = cluster.api("site-a", "PUT", path, one_second, token=STOLEN)
    done = cluster.api("site-b", "POST", f"/v1/requests/{wanted['request']}/approve", {}, token=token_b)
    assert done["status"] == "approved"
    assert view(cluster, "site-c")["retention"] == before["site-c"]["retention"]
    cluster.wait_for("the approved retention everywhere after the cooling-off", lambda: all(
        view(cluster, s)["retention"]["lock_s"] == 1 for s in HONEST), COOLING_S + 20)
    assert f"AUDIT request {wanted['request']} applied" in cluster.log_tail("site-c", 600)
    # approved after the vetoed one, it applied once the majority clock passed the end of its cooling-off: so
    # had the vetoed one's too, and it never took effect (it was a fixed wait of the cooling-off + 6 s)
    for s in HONEST:
        assert {r["id"]: r for r in cluster.status(s)["requests"]}[req["request"]]["status"] == "vetoed", s
        assert f"AUDIT request {req['request']} applied" not in cluster.sites[s].log_path.read_text(), s


def test_a_majority_revokes_the_compromised_site(cluster: LocalCluster) -> None:
    token_b, token_c = TOKENS["site-b"]["ops-b"][1], TOKENS["site-c"]["ops-c"][1]
    req = cluster.api("site-b", "POST", "/v1/sites/site-a/revoke", {"reason": "compromised"}, token=token_b)
    assert req["status"] == "pending" and req["needed"] == 2, req
    done = cluster.api("site-c", "POST", f"/v1/requests/{req['request']}/approve", {}, token=token_c)
    # a revocation cools off like every membership change (it used to apply at once: then one site
    # plus one stolen token could revoke an honest one); site-a, the target, cannot veto it
    assert done["status"] == "approved", done
    with pytest.raises(ReplicadError) as refused_veto:
        cluster.api("site-a", "POST", f"/v1/requests/{req['request']}/veto", {}, token=STOLEN)
    assert refused_veto.value.code == "conflict", refused_veto.value
    for s in HONEST:  # (commands signed by a revoked key are refused by the state machine: unit tests; here
        # site-a is cut off the Raft network first, so its heartbeats no longer even reach the log)
        cluster.wait_for(f"{s} lists site-a revoked", lambda s=s: "site-a" in cluster.status(s)["identity"]["revoked"],
                         COOLING_S + 30)
    # the attacker's stolen token cannot even make a request any more: refused by site-a's own state
    # machine when site-a applied its revocation before being cut off, else it reaches no quorum
    requests_before = len(cluster.api("site-b", "GET", "/v1/requests")["requests"])
    with pytest.raises(ReplicadError) as info:
        cluster.api("site-a", "PUT", f"/v1/volumes/{VOL}/retention", {"retention": {"lock": "2s"}},  # a change: a request
                    token=STOLEN)
    assert info.value.code in ("revoked", "no_quorum"), info.value
    assert len(cluster.api("site-b", "GET", "/v1/requests")["requests"]) == requests_before
    # on the network: site-a's Raft connections are dropped at both honest sites, whichever side dialed
    addr_a = raft_addr(cluster, "site-a")
    for s in HONEST:
        cluster.wait_for(f"{s} drops site-a's Raft connection", lambda s=s: raft_refused(cluster, s, "revoked_site") >= 1
                         and cluster.status(s)["raft"]["partners"][addr_a] is False, 20)
        assert "raft refused [revoked_site]" in cluster.log_tail(s, 2000), s
        # cut off as intended: not an unreachable member that keeps the site degraded (operator try-out 2, item 7)
        reasons = cluster.status(s)["degraded_reasons"]
        assert not [r for r in reasons if r.get("site") == "site-a"], reasons
    # a new handshake signed with site-a's (revoked) key is refused where site-a may dial; where the
    # honest site is the dialer, it no longer dials site-a
    for s in HONEST:
        if addr_a > raft_addr(cluster, s):
            before = raft_refused(cluster, s, "revoked_site")
            hello = raft_attack(cluster, "hello", "--target", raft_addr(cluster, s))
            assert hello["closed"] is True, hello
            cluster.wait_for(f"{s} refuses the new handshake",
                             lambda s=s, b=before: raft_refused(cluster, s, "revoked_site") > b, 10)
        else:
            assert f"not dialing {addr_a} (site site-a): revoked through Raft" in cluster.log_tail(s, 2000), s
    # the peer API refuses site-a's requests (typed, audited, counted)
    epoch = cluster.api("site-b", "GET", "/v1/volumes")["volumes"][VOL]["epoch"]
    answers = peer_attack(cluster, "forge-manifests", "--volume", VOL, "--epoch", str(epoch), "--seq", "999")
    assert {a["target"]: a.get("error") for a in answers} == {s: "revoked" for s in HONEST}, answers
    for s in HONEST:
        assert peer_refused(cluster, s, "revoked") >= 1, s
        assert "AUDIT refused peer request /v1/peer/chunks from site-a" in cluster.log_tail(s, 2000), s
        audit = [json.loads(line) for line in (cluster.sites[s].dir / "data" / "peer-audit.jsonl").read_text()
                 .splitlines() if line.strip()]
        assert any(r.get("who") == "site-a" and r.get("error") == "revoked" for r in audit), s
    # the honest pair still commits: site-b takes the volume over
    promo = cluster.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True}, token=token_b)
    assert promo["primary"] == "site-b"
    # and ships nothing to the revoked site (it would receive patient data): site-c alone holds
    # the new primary's snapshots
    cluster.wait_for("site-b acts as primary", lambda: cluster.status("site-b")["volumes"][VOL]["role"] == "primary",
                     60)
    overwrite_blocks(cluster.sites["site-b"].volume_path(VOL), [3, 4, 5], random.Random(7))
    shot = snapshot(cluster, "site-b")
    assert shot["changed_blocks"] >= 3 and metric(cluster, "site-b", "replicad_ship_sent_bytes_total", peer="site-c") > 0
    assert shot["committed"] and sorted(shot["holders"]) == ["site-b", "site-c"], shot
    assert metric(cluster, "site-b", "replicad_ship_sent_bytes_total", peer="site-a") == 0
