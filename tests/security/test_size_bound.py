"""One site cannot make the honest sites believe a volume is larger than it is (review F1, F2).

The attacker is site-a, the volume's primary (a 4 MiB volume: agreed maximum 1 GiB + 4 MiB),
holding its config, TLS key, Raft password and site key:

1. ``peer_attacker.py inflate-then-flood`` announces, in site-a's name, a 64 KB manifest of one
   page repeated 2048 times: 512 GiB, 8.4 million blocks. site-b and site-c refuse it at the
   announcement, before any walk of its pages (``remote_protocol``, AUDIT WARNING, counted): no
   stored acknowledgement, and site-b's peak memory did not grow by the walk (it grew by 700 MB
   on the reviewer's cluster, 15 s of CPU, and the commit that followed made every site judge it).
2. ``command_attacker.py inflate-commit`` (site-a's daemon down, its Raft member run by the
   attacker) ships a real one-block snapshot to b and c, collects their honest signed
   acknowledgements, and commits it with ``size_bytes`` 2**50 (refused ``out_of_range``: past
   the agreed maximum) and with 512 MiB (refused ``bad_ack``: the acknowledgements attest the
   64 KiB b and c stored). Raft's size stays 4 MiB at b and c, and a 150 MiB chunk flood right
   after is cut at the 69 MiB budget (``quota_exceeded``). Before, the 2**50 commit applied and
   the budget became 1.25 PiB: the flood went through whole.
3. The honest path: site-a (its daemon back) grows its image past the maximum; its cycle ships
   nothing (``out_of_range``) and files a ``set_max_size`` request, logged; once site-b's
   operator approves it, the next snapshot commits at the new size. An operator's own request
   (``PUT .../max-size``) applies once another site approves it.

One cluster serves the module (the cases run in file order).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError
from replicad.core.state import default_max_size_bytes
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, snapshot, write_image
from tests.security.test_history import metric
from tests.security.test_signed_commands import attack, refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).parents[2]
HONEST = ("site-b", "site-c")
MIB = 2**20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("sizebound") / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 64, random.Random(5))  # 4 MiB
    try:
        c.start_all()
        c.wait_ready(60)
        assert snapshot(c, "site-a")["committed"]
        yield c
    finally:
        c.stop_all()


def peer_attack(c: LocalCluster, *args: str) -> list[dict]:
    """``peer_attacker.py`` with site-a's config; its JSON lines."""
    out = subprocess.run([sys.executable, "-m", "tests.security.peer_attacker", *args,
                          "--config", str(c.sites["site-a"].config_path)],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def peak_rss_bytes(c: LocalCluster, site: str) -> int:
    """The peak resident memory of ``site``'s daemon (VmHWM of its process)."""
    status = Path(f"/proc/{c.sites[site].proc.pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def volume(c: LocalCluster, site: str) -> dict:
    return c.api(site, "GET", "/v1/volumes")["volumes"][VOL]


def test_a_manifest_past_the_agreed_maximum_is_refused_before_any_walk(cluster: LocalCluster) -> None:
    c = cluster
    vol = volume(c, "site-b")
    peak = {s: peak_rss_bytes(c, s) for s in HONEST}
    results = peer_attack(c, "inflate-then-flood", "--volume", VOL, "--epoch", str(vol["epoch"]),
                          "--seq", str(vol["last_seq"] + 1), "--claim-gib", "512", "--mib", "0")
    announced = [r for r in results if not r.get("flood")]
    assert {r["target"] for r in announced} == set(HONEST), results
    assert all(r.get("announce_error") == "remote_protocol" and "announced" not in r for r in announced), results
    for s in HONEST:
        assert metric(c, s, "replicad_peer_refused_total", reason="remote_protocol") >= 1, s
        log = c.log_tail(s, 400)
        assert "more than the volume's agreed maximum" in log and "AUDIT refused snapshot" in log, s
        assert peak_rss_bytes(c, s) - peak[s] < 64 * MIB, (s, peak[s], peak_rss_bytes(c, s))
        assert c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"][-1]["seq"] == vol["last_seq"]
    assert vol["size_bytes"] == 4 * MIB and vol.get("max_size_bytes") == 4 * MIB + 2**30, vol  # the registered image


def test_a_commit_cannot_claim_a_size_its_holders_did_not_store(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    before = {s: volume(c, s) for s in HONEST}
    counts = {s: (refused(c, s, "out_of_range"), refused(c, s, "bad_ack")) for s in HONEST}
    c.kill("site-a")  # its daemon is down; the attacker runs its Raft member
    results = attack(c, "inflate-commit", tmp_path / "attacker", "--volume", VOL, "--size-bytes", str(512 * MIB))
    assert results[0]["acks"] == list(HONEST), results  # b and c stored the one block and said so, signed
    got = {r["attempt"]: r["error"] for r in results if "attempt" in r}
    assert got == {"exact": "out_of_range", "within_bound": "bad_ack"}, results
    for s in HONEST:
        after = volume(c, s)
        assert after["size_bytes"] == 4 * MIB and after["last_seq"] == before[s]["last_seq"], (s, after)
        assert refused(c, s, "out_of_range") == counts[s][0] + 1 and refused(c, s, "bad_ack") == counts[s][1] + 1, s
        log = c.log_tail(s, 600)
        assert "raft command refused [out_of_range]" in log and "raft command refused [bad_ack]" in log, s
    # the budget stayed that of a 4 MiB volume: 1.25 x 4 MiB + 64 MiB
    stored = {s: c.status(s)["store"]["stored_bytes"] for s in HONEST}
    floods = [r for r in peer_attack(c, "chunk-flood", "--volume", VOL, "--epoch", str(before["site-b"]["epoch"]),
                                     "--mib", "150") if r.get("flood")]
    assert {r["target"] for r in floods} == set(HONEST) and all(r.get("error") == "quota_exceeded" for r in floods), \
        floods
    for s in HONEST:
        grown = c.status(s)["store"]["stored_bytes"] - stored[s]
        assert grown <= 80 * MIB, (s, grown)


def test_the_primary_asks_for_a_larger_maximum_when_its_image_grows(cluster: LocalCluster) -> None:
    c = cluster
    c.start("site-a")
    c.wait_ready(90)
    limit = volume(c, "site-a")["max_size_bytes"]
    os.truncate(c.sites["site-a"].volume_path(VOL), limit + MIB)  # a resize: zeros past the old end
    with pytest.raises(ReplicadError) as info:
        snapshot(c, "site-a")
    assert info.value.code == "out_of_range", info.value
    log = c.log_tail("site-a", 400)
    assert "past its agreed maximum" in log and "requested a maximum of" in log, log[-2000:]
    pending = [r for r in c.api("site-b", "GET", "/v1/requests")["requests"]
               if r["action"] == "set_max_size" and r["status"] == "pending"]
    # the default of the new size, or at most what applies at the approval (state.max_size_at_once)
    wanted = pending[0]["args"]["max_size_bytes"] if len(pending) == 1 else None
    assert wanted is not None and limit + MIB <= wanted <= default_max_size_bytes(limit + MIB), pending
    assert pending[0]["args"] == {"volume": VOL, "max_size_bytes": wanted}, pending
    c.api("site-b", "POST", f"/v1/requests/{pending[0]['id']}/approve", {})
    c.wait_for("the new maximum everywhere", lambda: all(
        volume(c, s)["max_size_bytes"] == wanted for s in c.sites), 60)
    grown = snapshot(c, "site-a")
    assert grown["committed"] and set(grown["holders"]) == {"site-a", *HONEST}, grown
    c.wait_for("the grown size at b and c", lambda: all(volume(c, s)["size_bytes"] == limit + MIB for s in HONEST), 60)
    # an operator raises it ahead of a resize (PUT .../max-size): a request too, approved at site-c
    ahead = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/max-size", {"max_size_bytes": "8GiB", "reason": "resize"})
    assert ahead["status"] == "pending" and ahead["previous"] == wanted, ahead
    assert volume(c, "site-a")["max_size_bytes"] == wanted
    c.api("site-c", "POST", f"/v1/requests/{ahead['request']}/approve", {})
    c.wait_for("8 GiB agreed", lambda: all(volume(c, s)["max_size_bytes"] == 8 * 2**30 for s in c.sites), 60)
    same = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/max-size", {"max_size_bytes": 8 * 2**30})
    assert same["status"] == "unchanged", same


def test_a_volume_no_honest_config_names_stores_nothing_there(cluster: LocalCluster, tmp_path: Path) -> None:
    """Review G1: site-a registered a volume of its own at 1 TiB, itself its primary: a chunk budget
    of 1.25 TiB + 64 MiB at every honest site for a volume none of their operators configured. Now
    b and c refuse every write of a volume their config does not name (``not_configured``, AUDIT
    line), whatever Raft records: a 32 MiB flood of ``loot`` leaves their stores as they were."""
    c = cluster
    c.kill("site-a")  # its daemon is down; the attacker runs its Raft member
    [added] = attack(c, "add-volume", tmp_path / "attacker", "--new-volume", "loot", "--size-bytes", str(2**40))
    assert added["error"] == "ok", added  # registering its own volume in its own name is allowed
    c.wait_for("loot registered at b and c", lambda: all(
        c.api(s, "GET", "/v1/volumes")["volumes"].get("loot", {}).get("primary") == "site-a" for s in HONEST), 30)
    stored = {s: c.status(s)["store"]["stored_bytes"] for s in HONEST}
    floods = [r for r in peer_attack(c, "chunk-flood", "--volume", "loot", "--epoch", "1", "--mib", "32")
              if r.get("flood")]
    assert {r["target"] for r in floods} == set(HONEST) and all(r.get("error") == "not_found" for r in floods), floods
    for s in HONEST:
        assert c.status(s)["store"]["stored_bytes"] - stored[s] < MIB, s
        assert "AUDIT refused a write of volume loot by site-a" in c.log_tail(s, 400), s
