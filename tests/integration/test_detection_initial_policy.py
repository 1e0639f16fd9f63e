"""``[volumes.detection] mode = "encrypted"`` in the sites' config (issue 14): real daemons. The
``add_volume`` that first registers the volume carries the mode into Raft, so the volume is
judged in encrypted mode from its first snapshot without a request; leaving that mode later is
a weakening like any other (a request other sites approve), whatever a site's config says."""

from __future__ import annotations

from pathlib import Path

from replicad.lab.localcluster import LocalCluster

VOL = "ehr"


def test_the_config_key_sets_the_initial_mode_and_raft_rules_afterwards(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2,
                     extra_volume_toml='[volumes.detection]\nmode = "encrypted"\n')
    try:
        with open(c.sites["site-a"].volume_path(VOL), "wb") as f:
            f.truncate(4 * 2**20)
        c.start_all()
        c.wait_ready(90)
        for s in ("site-a", "site-b", "site-c"):
            doc = c.wait_for(f"{s} sees the volume's policy", lambda s=s: (
                lambda d: d if d["detection"]["mode"] == "encrypted" else None)(
                c.api(s, "GET", f"/v1/volumes/{VOL}/detection")), 60)
            assert doc["effective_here"]["mode"] == "encrypted", doc
            assert doc["detection"]["cold_baseline_cap"] == 0.02 and doc["detection"]["rename_min"] == 16, doc
        # back to content mode is a weakening: a pending request, nothing applied
        req = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection", {"detection": {"mode": "content"},
                                                                       "reason": "not encrypted after all"})
        assert req["status"] == "pending", req
        assert c.api("site-b", "GET", f"/v1/volumes/{VOL}/detection")["detection"]["mode"] == "encrypted"
    finally:
        c.stop_all()
