"""Notifications (issue 16, item 4): a real Prometheus scrapes a live three-site cluster and
evaluates ReplicadSiteDown (its expression from config/prometheus/alerts.yml, ``for`` shortened
to 2 s); a real Alertmanager (Debian ``prometheus-alertmanager``) routes it with the routing tree
of config/prometheus/alertmanager.yml, every receiver pointed at a webhook this test serves
on 127.0.0.1. A site is killed; the webhook must receive the firing alert naming that site,
through the example's critical route (receiver ``oncall-email``). Every process is bound to
127.0.0.1 and stopped by its PID; intervals are 1-2 s."""

from __future__ import annotations

import http.server
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from replicad.lab.localcluster import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "config" / "prometheus"


def _binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (Debian package `{package}`; scripts/setup.sh), and CI must run this")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


class _Proc:
    """A server process we started, logging to a file, stopped by PID."""

    def __init__(self, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


def _webhook() -> tuple[http.server.ThreadingHTTPServer, "queue.Queue[dict]"]:
    """An HTTP server on 127.0.0.1 that queues every JSON document POSTed to it."""
    received: "queue.Queue[dict]" = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 — http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.put({"path": self.path, **json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="webhook").start()
    return server, received


def _alertmanager_config(hook_url: str) -> dict:
    """The example's routing tree and inhibitions, every receiver a webhook to the test (the
    path names the receiver), and group timings of 1 s."""
    doc = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())
    doc["global"] = {"resolve_timeout": "1m"}
    doc["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": f"{hook_url}/{r['name']}",
                                                                 "send_resolved": False}]}
                        for r in doc["receivers"]]
    doc["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
    return doc


def _rules() -> dict:
    """ReplicadSiteDown as alerts.yml has it, with ``for: 2s``."""
    rules = [r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]
             if r.get("alert") == "ReplicadSiteDown"]
    assert len(rules) == 1
    return {"groups": [{"name": "replicad-test", "rules": [{**rules[0], "for": "2s"}]}]}


@pytest.mark.timeout(150)
def test_a_site_going_down_reaches_the_webhook_through_alertmanager(cluster_factory, tmp_path: Path) -> None:
    am_bin = _binary("prometheus-alertmanager", "prometheus-alertmanager")
    prom_bin = _binary("prometheus", "prometheus")
    server, received = _webhook()
    hook = f"http://127.0.0.1:{server.server_address[1]}"
    procs: list[_Proc] = []
    try:
        c = cluster_factory(n_blocks=16)
        am_port, prom_port = free_port(), free_port()
        (tmp_path / "am").mkdir()
        am_cfg = tmp_path / "am" / "alertmanager.yml"
        am_cfg.write_text(yaml.safe_dump(_alertmanager_config(hook)))
        procs.append(_Proc([am_bin, f"--config.file={am_cfg}", f"--storage.path={tmp_path / 'am' / 'data'}",
                            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                            "--log.level=warn"], tmp_path / "am" / "log", tmp_path / "am"))
        (tmp_path / "prom").mkdir()
        rules = tmp_path / "prom" / "rules.yml"
        rules.write_text(yaml.safe_dump(_rules()))
        # 2 s scrapes with a 2 s timeout: a loaded machine must not make a live site look down
        prom_cfg = {"global": {"scrape_interval": "2s", "evaluation_interval": "1s", "scrape_timeout": "2s"},
                    "rule_files": [str(rules)],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                    "scrape_configs": [{"job_name": "replicad", "honor_labels": True, "metrics_path": "/metrics",
                                        "static_configs": [{"targets": [f"127.0.0.1:{s.admin_port}"],
                                                            "labels": {"site": name}}
                                                           for name, s in c.sites.items()]}]}
        (tmp_path / "prom" / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        procs.append(_Proc([prom_bin, f"--config.file={tmp_path / 'prom' / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp_path / 'prom' / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                           tmp_path / "prom" / "log", tmp_path / "prom"))
        c.wait_for("three targets scraped", lambda: _targets_up(prom_port) == 3, 30)

        c.kill("site-c", signal.SIGKILL)
        deadline = time.monotonic() + 60
        # the example routes critical alerts to the e-mail receiver and (continue: true) the
        # webhook: both deliveries come, in either order; wait for the e-mail route's
        by_receiver: dict[str, dict] = {}
        while "oncall-email" not in by_receiver:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no ReplicadSiteDown notification on the e-mail route within 60 s (got "
                                     f"{sorted(by_receiver)})\nalertmanager:\n"
                                     f"{procs[0].tail()}\nprometheus:\n{procs[1].tail()}")
            try:
                doc = received.get(timeout=min(remaining, 5))
            except queue.Empty:
                for p in procs:
                    assert p.proc.poll() is None, f"{p.log_path} exited:\n{p.tail()}"
                continue
            if any(a["labels"].get("alertname") == "ReplicadSiteDown" and a["labels"].get("site") == "site-c"
                   for a in doc.get("alerts", [])):
                by_receiver.setdefault(doc.get("receiver"), doc)
        got = by_receiver["oncall-email"]
        alert = next(a for a in got["alerts"] if a["labels"]["alertname"] == "ReplicadSiteDown")
        assert alert["status"] == "firing" and alert["labels"]["site"] == "site-c"
        assert alert["labels"]["severity"] == "critical"
        assert "site-c" in alert["annotations"]["summary"] and alert["annotations"]["runbook"]
        assert got["path"] == "/oncall-email"
        assert got["version"] == "4" and got["status"] == "firing"
    finally:
        for p in reversed(procs):
            p.stop()
        server.shutdown()
        server.server_close()


def _targets_up(prom_port: int) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/targets", timeout=5) as resp:
            doc = json.load(resp)
    except OSError:  # Prometheus still starting
        return 0
    return len([t for t in doc["data"]["activeTargets"] if t["health"] == "up"])
