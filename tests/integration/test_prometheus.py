"""A real Prometheus server scrapes a real three-site cluster, loads config/prometheus/alerts.yml,
and answers every query of grafana/replicad.json and every alert expression.

What "answers" means:

* every dashboard query (template variables replaced: ``$site``/``$volume`` by the regex
  ``.*``, ``$__rate_interval`` by ``30s``) parses and returns at least one series;
* every alert rule is loaded, evaluates without error (``/api/v1/rules`` health ``ok``),
  its expression parses when queried, and every metric it references returns at least one
  series. The expressions themselves are normally empty on a healthy cluster (that is the
  point of an alert), so the series check is made on the metric names they reference;
* a site killed mid-test makes ``ReplicadSiteDown`` pending for that site, which is also
  what gives the dashboard's "Active alerts" panel (``ALERTS``) a series to show.

Skipped only when ``prometheus`` is not installed and the ``CI`` environment variable is
unset; in CI its absence is a failure (the CI setup installs Debian's ``prometheus``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from replicad.lab.localcluster import LocalCluster, free_port

from .conftest import VOL, overwrite_blocks, snapshot

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "config" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "grafana" / "replicad.json"
WAIT_S = 60.0
SUBSTITUTIONS = (("$__rate_interval", "30s"), ("$__interval", "5s"), ("$__range", "5m"),
                 ("${site}", ".*"), ("$site", ".*"), ("${volume}", ".*"), ("$volume", ".*"))
METRIC_NAME = re.compile(r"\b(replicad_[a-z0-9_]+|up|scrape_duration_seconds)\b")


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (Debian package `prometheus`), and CI must run this test")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return path


class Prom:
    """A Prometheus server process on a free loopback port, stopped by PID."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
               "rule_files": [str(ALERTS)],
               "scrape_configs": [{"job_name": "replicad", "honor_labels": True, "metrics_path": "/metrics",
                                   "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"site": site}}
                                                      for site, port in targets.items()]}]}
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as err:  # 400: the query did not parse; the body says why
            doc = json.load(err)
        if doc.get("status") != "success":
            raise AssertionError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def wait(self, what: str, predicate, timeout_s: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                last = predicate()
                if last:
                    return last
            except (OSError, AssertionError, KeyError) as err:
                last = err
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {last!r}\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


def dashboard_queries() -> list[tuple[str, str]]:
    """``(panel title, expr with template variables substituted)`` of every dashboard target."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in SUBSTITUTIONS:
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            out.append((panel["title"], expr))
    return out


def alert_rules() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


@pytest.mark.timeout(240)
def test_prometheus_scrapes_cluster_and_answers_dashboard_and_alerts(cluster_factory, tmp_path: Path) -> None:
    binary = prometheus_binary()
    c: LocalCluster = cluster_factory()
    first = snapshot(c, "site-a")
    overwrite_blocks(c.sites["site-a"].volume_path(VOL), [1, 4, 7], random.Random(2))
    second = snapshot(c, "site-a")
    assert first["committed"] and second["committed"]
    c.wait_for("standbys at the second snapshot", lambda: all(
        c.status(s)["volumes"][VOL]["standby_seq"] == second["seq"] for s in ("site-b", "site-c")), 30)

    prom = Prom(binary, tmp_path / "prometheus", {s: site.admin_port for s, site in c.sites.items()})
    try:
        # every target up, with enough samples for rate()/increase() over 30s windows
        prom.wait("3 targets up", lambda: len([t for t in prom.get("/api/v1/targets")["activeTargets"]
                                               if t["health"] == "up"]) == 3)
        prom.wait("4 scrapes of every target", lambda: len(prom.query("count_over_time(up[30s]) >= 4")) == 3)

        # the dashboard's template variables resolve
        sites = prom.get("/api/v1/label/site/values", **{"match[]": "replicad_build_info"})
        assert sorted(sites) == ["site-a", "site-b", "site-c"]
        assert VOL in prom.get("/api/v1/label/volume/values", **{"match[]": 'replicad_volume_epoch{site=~".*"}'})

        # every rule loaded and evaluated without error
        rules = alert_rules()
        loaded = prom.wait("every rule evaluated", lambda: (lambda rs: rs if all(
            r["lastEvaluation"] > "0001-01-02" for r in rs) and len(rs) == len(rules) else None)(
            [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]))
        assert {r["name"] for r in loaded} == set(rules)
        bad = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
        assert not bad, bad

        # every alert expression parses; every metric it references has series
        for name, expr in rules.items():
            prom.query(expr)  # raises on a parse or evaluation error
            referenced = set(METRIC_NAME.findall(expr))
            assert referenced, name
            for metric in sorted(referenced):
                assert prom.query(metric), f"alert {name}: no series for {metric}"
        # and the values make sense for this cluster
        leaders = prom.query("sum(replicad_raft_is_leader)")
        assert float(leaders[0]["value"][1]) == 1
        rpo = prom.query(f'replicad_volume_rpo_seconds{{volume="{VOL}"}}')
        assert {s["metric"]["site"] for s in rpo} == {"site-a", "site-b", "site-c"}
        roles = prom.query(f'replicad_volume_role{{volume="{VOL}"}} == 1')
        assert {(s["metric"]["site"], s["metric"]["role"]) for s in roles} == {
            ("site-a", "primary"), ("site-b", "replica"), ("site-c", "replica")}
        sent = prom.query(f'replicad_ship_sent_bytes_total{{site="site-a", volume="{VOL}"}} > 0')
        assert {s["metric"]["peer"] for s in sent} == {"site-b", "site-c"}

        # every dashboard query except the alerts panel (it needs an alert: below)
        queries = dashboard_queries()
        assert len(queries) >= 20
        for title, expr in queries:
            if "ALERTS" in expr:
                continue
            assert prom.query(expr), f"panel {title!r}: no series for {expr}"

        # a site goes down: ReplicadSiteDown becomes pending for it, and the alerts panel shows it
        c.kill("site-c", signal.SIGKILL)
        prom.wait("ReplicadSiteDown pending for site-c", lambda: prom.query(
            'ALERTS{alertname="ReplicadSiteDown", site="site-c"}'))
        for title, expr in queries:
            if "ALERTS" in expr:
                assert prom.query(expr), f"panel {title!r}: no series for {expr}"
    finally:
        prom.stop()
