"""``[volumes.detection] mode = "encrypted"`` in the sites' config (issue 14): real daemons. One
site may not weaken detection on its own word, and encrypted mode drops the content signals: the
volume is registered with the default policy and the site that registered it requests the mode
(a ``set_detection`` request). Until an operator of another site approves it the volume is judged
in ``content`` mode; once approved every site judges it in ``encrypted`` mode, and leaving that
mode later is a weakening like any other (a request other sites approve), whatever a config says."""

from __future__ import annotations

from pathlib import Path

from replicad.lab.localcluster import LocalCluster

VOL = "ehr"


def _mode_request(c: LocalCluster, site: str) -> dict | None:
    return next((r for r in c.api(site, "GET", "/v1/requests")["requests"]
                 if r.get("action") == "set_detection" and r.get("status") == "pending"), None)


def test_the_config_key_requests_the_initial_mode_and_raft_rules_afterwards(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2,
                     extra_volume_toml='[volumes.detection]\nmode = "encrypted"\n')
    try:
        with open(c.sites["site-a"].volume_path(VOL), "wb") as f:
            f.truncate(4 * 2**20)
        c.start_all()
        c.wait_ready(90)
        req = c.wait_for("the mode requested by the registering site", lambda: _mode_request(c, "site-b"), 60)
        for s in ("site-a", "site-b", "site-c"):  # not applied on one site's word
            doc = c.api(s, "GET", f"/v1/volumes/{VOL}/detection")
            assert doc["detection"]["mode"] == "content" and doc["effective_here"]["mode"] == "content", doc
        approver = next(s for s in ("site-b", "site-c") if s != req.get("by"))
        c.api(approver, "POST", f"/v1/requests/{req['id']}/approve")
        for s in ("site-a", "site-b", "site-c"):
            doc = c.wait_for(f"{s} sees the approved mode", lambda s=s: (
                lambda d: d if d["detection"]["mode"] == "encrypted" else None)(
                c.api(s, "GET", f"/v1/volumes/{VOL}/detection")), 90)
            assert doc["effective_here"]["mode"] == "encrypted", doc
        # back to content mode is a weakening: a pending request, nothing applied
        back = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection", {"detection": {"mode": "content"},
                                                                        "reason": "not encrypted after all"})
        assert back["status"] == "pending", back
        assert c.api("site-b", "GET", f"/v1/volumes/{VOL}/detection")["detection"]["mode"] == "encrypted"
    finally:
        c.stop_all()
