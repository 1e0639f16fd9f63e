"""One compromised site takes no more than its share of the replicated state (review R9).

The attacker is site-a: a real process (``state_share_attacker.py``) holding site-a's config,
the cluster's Raft password and site-a's own key runs site-a's Raft member in place of its daemon
and proposes commands in its own name, each legal on its own. The honest sites b and c are judged:

* a request reason and a volume name holding a newline are refused (``bad_request``) and no
  forged line reaches their logs (F6);
* snapshots of its own volumes carrying 4 KB of stats each are refused (``bad_request``, more
  than ``state.STATS_BYTES_PER_RECORD``): nothing grows their state (F5); what its volumes can
  hold is bounded per volume (``state.SNAPSHOTS_MAX`` records, ``state.SITE_RECORDS_BOUND`` in
  all), never charged to another volume (review R10, F2);
* it registers at most ``state.VOLUMES_PER_SITE_MAX`` volumes; the hospital's next volume at site-b
  still registers (F4);
* its approved revocation, cooling off, survives its ``request`` + own ``veto`` flood (each a
  withdrawal, logged at b and c) and applies (F1).

One cluster serves the whole module (the cases run in file order; the last revokes site-a).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicad.core import state as st
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

HONEST = ("site-b", "site-c")
REPO = Path(__file__).parents[2]
COOLING_S = 30  # [policy] membership_cooling_off: longer than the flood of the last test takes (~4 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("share") / "cluster", interval="1h", min_copies=2,
                     membership_cooling_off=f"{COOLING_S}s")
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(9))
    try:
        c.start_all()
        c.wait_ready(120)
        snapshot(c, "site-a")
        c.kill("site-a")  # site-a is taken: its Raft member is the attacker's from now on
        yield c
    finally:
        c.stop_all()


def attack(c: LocalCluster, mode: str, tmp_path: Path, *args: str, timeout_s: float = 200) -> list[dict]:
    """Run the attacker with site-a's config (site-a's daemon down); its JSON lines."""
    out = subprocess.run([sys.executable, "-m", "tests.security.state_share_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), "--work-dir", str(tmp_path / f"attacker-{mode}"),
                          "--volume", VOL, *args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert lines, out.stderr[-3000:]
    return lines


def log_lines(c: LocalCluster, site: str) -> list[str]:
    return c.sites[site].log_path.read_text(errors="replace").splitlines()


def test_names_and_reasons_holding_a_newline_are_refused_and_forge_no_line(cluster: LocalCluster,
                                                                            tmp_path: Path) -> None:
    lines = attack(cluster, "logforge", tmp_path)
    assert [(x["attempt"], x["error"], x["refusal"]) for x in lines] == \
        [("reason", "bad_request", "not_printable"), ("volume", "bad_request", "not_printable")], lines
    time.sleep(2)  # the honest sites applied and logged both
    for site in HONEST:
        log = log_lines(cluster, site)
        assert not [line for line in log if line.startswith("2026-12-07 12:00:0")], site
        assert all("\\n2026-12-07" in line for line in log if "routine" in line or "tmp\\n" in line), site
    assert not [v for v in attack(cluster, "view", tmp_path)[0]["volumes"] if "\n" in v]


def test_snapshots_carrying_4_kb_of_stats_are_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    (line,) = attack(cluster, "bloat", tmp_path, "--volumes", "4", "--seconds", "3", "--rate", "100")
    assert line["volumes"] == 4 and line["sent"] > 100, line
    assert "ok" not in line["answers"] and line["answers"].get("bad_request", 0) > 0, line
    assert line["records"] == 0, line


def test_one_site_registers_at_most_its_share_of_the_volume_table(cluster: LocalCluster, tmp_path: Path) -> None:
    (line,) = attack(cluster, "squat", tmp_path, "--count", str(st.VOLUMES_PER_SITE_MAX + 10))
    assert line["mine"] == st.VOLUMES_PER_SITE_MAX and line["refused"] == 4, line
    assert line["refusal"] == {"error": "conflict", "refusal": "volume_quota"}, line
    # a month later the hospital adds volume "lab" at site-b, its primary
    b = cluster.sites["site-b"]
    b.config_path.write_text(b.config_path.read_text() + '\n[[volumes]]\nname = "lab"\npath = "lab.img"\n'
                             'block_size = "64KiB"\ninterval = "1h"\nmin_copies = 2\ninitial_primary = "site-b"\n'
                             'apply_delay = "0s"\n')
    (b.dir / "lab.img").write_bytes(random.Random(5).randbytes(2**20))
    cluster.kill("site-b", 15)
    cluster.start("site-b")

    def registrant() -> str | None:  # of volume lab, in honest site-c's Raft view
        vol = cluster.api("site-c", "GET", "/v1/volumes")["volumes"].get("lab")
        return vol and vol.get("registered_by", vol["primary"])

    deadline = time.monotonic() + 90
    while registrant() != "site-b" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert registrant() == "site-b", [line for line in log_lines(cluster, "site-b") if "lab" in line][-5:]


def test_an_approved_revocation_survives_its_targets_request_flood(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.wait_for("site-b's admin API (restarted above)", lambda: cluster.status("site-b"), 60)
    r = cluster.api("site-b", "POST", "/v1/sites/site-a/revoke", {"reason": "site-a compromised"})
    rid = r["request"]
    r2 = cluster.api("site-c", "POST", f"/v1/requests/{rid}/approve")
    assert r2["status"] == "approved", r2
    rounds = st.REQUESTS_MAX + 8  # the old table forgot the approved revocation at round 64
    lines = attack(cluster, "erase", tmp_path, "--target", rid, "--rounds", str(rounds))
    assert len(lines) == rounds
    trace = [(x["round"], x["veto"], x["target"], x["records"]) for x in lines]
    # until the revocation applies (the cooling-off may end during a slow flood) every round is a
    # withdrawal that leaves no record: the revocation stays approved past the old table's 64 records
    # (a proposal of the attacker's may fail on its way, no leader for a moment: not a round then)
    failed = [x for x in lines if x["veto"] is None]
    assert len(failed) <= 3, failed
    cooling = [x for x in lines if x["target"] == "approved" and x not in failed]
    assert len(cooling) > st.REQUESTS_MAX and {x["veto"] for x in cooling} == {"withdrawn"}, trace
    assert {x["target"] for x in lines} <= {"approved", "applied"}, trace
    assert max(x["records"] for x in cooling) <= 2 and not any(x["forgotten"] for x in lines), trace
    time.sleep(2)
    for site in HONEST:  # each withdrawal is in every honest site's log
        withdrawn = [line for line in log_lines(cluster, site) if "withdrawn by its requester site-a" in line]
        assert len(withdrawn) == sum(x["veto"] == "withdrawn" for x in lines), (site, withdrawn[-2:])
    cluster.wait_for("site-a revoked at b and c",
                     lambda: all(any(x["id"] == rid and x["status"] == "applied"
                                     for x in cluster.api(s, "GET", "/v1/requests")["requests"]) for s in HONEST),
                     COOLING_S + 60, interval_s=2)
