"""Alert rules, their promtool unit tests, the example scrape config and the Grafana dashboard.

promtool runs for real (Debian package ``prometheus``). Its tests are skipped only when it is
absent and ``CI`` is unset; in CI its absence fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from replicad.telemetry.metrics import SiteMetrics
from tests.unit.telemetry.test_metrics import NOW_NS, raft_state, site_status

REPO = Path(__file__).resolve().parents[3]
PROM_DIR = REPO / "config" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
DASHBOARD = REPO / "grafana" / "replicad.json"
NAME = re.compile(r"\b((?:replicad|process)_[a-z0-9_]+|up|ALERTS)\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (Debian package `prometheus`), and CI must run these tests")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=PROM_DIR)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules(promtool: str) -> None:
    out = run(promtool, "check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_test_rules(promtool: str) -> None:
    out = run(promtool, "test", "rules", str(ALERTS_TEST))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_check_example_config(promtool: str) -> None:
    out = run(promtool, "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_unit_tests_are_generated_from_current_rules() -> None:
    out = subprocess.run([sys.executable, str(PROM_DIR / "gen_alerts_test.py"), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_every_alert_has_severity_runbook_and_fires_and_not() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    checks = [c for t in tests for c in t["alert_rule_test"]]
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert len(rule["annotations"]["runbook"]) >= 80, name
        assert rule["annotations"]["summary"], name
        assert any(c["alertname"] == name and c["exp_alerts"] for c in checks), f"{name} never fires in a test"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in checks), f"{name} never stays quiet"


def exported_names(tmp_path: Path) -> set[str]:
    """Sample names one site exports once every kind of event happened."""
    status = {**site_status(), "view": {"current": True, "age_s": 2.0, "why": None}}
    m = SiteMetrics("site-b", lambda: status, state_fn=raft_state, data_dir=tmp_path,
                    volume_intervals_s={"ehr": 10.0}, clock_ns=lambda: NOW_NS, holders=["site-a", "site-c"])
    m.cycle_done("ehr", {"committed": True, "cycle_s": 0.2, "changed_blocks": 1})
    m.shipped("ehr", "site-c", 1)
    m.received("ehr", "site-a", 1)
    m.verify_done("ehr", 1, 1)
    return {s.name for fam in text_string_to_metric_families(m.render().decode()) for s in fam.samples}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_rules_and_dashboard_use_only_exported_metrics(tmp_path: Path) -> None:
    exported = exported_names(tmp_path) | {"up", "scrape_duration_seconds", "ALERTS"}
    exprs = [r["expr"] for r in rules()] + dashboard_exprs()
    used = {n for e in exprs for n in NAME.findall(e)}
    assert used - exported == set()


def test_dashboard_shape() -> None:
    doc = dashboard()
    assert doc["schemaVersion"] >= 36
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for var in ("site", "volume"):
        assert variables[var]["type"] == "query" and variables[var]["multi"] and variables[var]["allValue"] == ".*"
        assert variables[var]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    text = "\n".join(dashboard_exprs())
    for needed in ("replicad_volume_rpo_seconds", "replicad_volume_role", "replicad_volume_epoch",
                   "replicad_ship_sent_bytes_total", "replicad_ship_received_bytes_total",
                   "replicad_anomaly_score_ratio", "replicad_volume_suspect_snapshots", "replicad_raft_is_leader",
                   "replicad_raft_term", "replicad_raft_has_quorum", "replicad_store_size_bytes",
                   "replicad_disk_free_bytes", "ALERTS"):
        assert needed in text, needed
    # every query follows the site variable, and the volume variable when it reads per-volume series
    per_volume = re.compile(r"replicad_(volume|snapshot|ship|anomaly|standby|verify)_")
    for e in dashboard_exprs():
        if "ALERTS" in e:
            continue
        assert 'site=~"$site"' in e, e
        if per_volume.search(e):
            assert 'volume=~"$volume"' in e, e


def test_runbooks_name_the_templated_unit() -> None:
    """The unit is ``replicad@SITE`` (config/systemd/replicad@.service): a runbook telling
    ``systemctl status replicad`` points at a unit that does not exist."""
    import re

    text = (Path(__file__).resolve().parents[3] / "config" / "prometheus" / "alerts.yml").read_text()
    wrong = re.findall(r"(?:systemctl \w+|journalctl -u) replicad(?!@)\b", text)
    assert not wrong, wrong
    assert "systemctl status replicad@{{ $labels.site }}" in text


def test_raft_refused_alert_leaves_out_exactly_the_routine_reasons() -> None:
    """ReplicadRaftTrafficRefused fires on any refusal but those honest members also cause
    (``channel.ROUTINE_REASONS``), and on a flood of ``channel.ROUTINE_FLOOD_REASONS``: the rule
    and the lists the channel documents must not drift apart (a reason added to one only would
    fire for every restart again, or hide an attack)."""
    from replicad.consensus import channel

    rule = next(r for r in rules() if r["alert"] == "ReplicadRaftTrafficRefused")
    any_, flood = [line.strip() for line in rule["expr"].strip().splitlines()]
    left_out = re.fullmatch(r'increase\(replicad_raft_refused_total\{reason!~"([a-z_|]+)"\}\[15m\]\) > 0', any_)
    assert left_out and set(left_out.group(1).split("|")) == set(channel.ROUTINE_REASONS), any_
    flooded = re.fullmatch(r'or increase\(replicad_raft_refused_total\{reason=~"([a-z_|]+)"\}\[15m\]\) > (\d+)', flood)
    assert flooded and set(flooded.group(1).split("|")) == set(channel.ROUTINE_FLOOD_REASONS), flood
    assert int(flooded.group(2)) == channel.ROUTINE_FLOOD
    assert set(channel.ROUTINE_FLOOD_REASONS) < set(channel.ROUTINE_REASONS) <= set(channel.KNOWN_REASONS)
    assert not {"bad_identity", "leader_deposed", "leader_withholds", "snapshot_from_non_leader"} & \
        set(channel.ROUTINE_REASONS)
