"""systemd integration of a real site process: the unit file verifies, READY comes after
Raft joined, WATCHDOG pings come from the event loop, SIGHUP reloads what can change
safely, SIGTERM stops cleanly with exit code 0 — even in the middle of a transfer."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from replicad.ops.auth import hash_token
from replicad.core.errors import ReplicadError, UnauthenticatedError
from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

UNIT = Path(__file__).resolve().parents[2] / "config" / "systemd" / "replicad@.service"
SRC = str(Path(__file__).resolve().parents[2])


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI")
        pytest.skip(f"{tool} not installed")
    return path


def test_unit_file_verifies(tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    replicad_bin = shutil.which("replicad") or sys.executable
    text = UNIT.read_text().replace("/usr/local/bin/replicad", replicad_bin)
    (tmp_path / "replicad@.service").write_text(text)
    (tmp_path / "replicad@site-a.service").symlink_to("replicad@.service")
    res = subprocess.run([analyze, "verify", str(tmp_path / "replicad@site-a.service")], capture_output=True,
                         text=True, timeout=60)
    problems = [line for line in (res.stdout + res.stderr).splitlines() if "replicad@" in line]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
    for key in ("Type=notify", "WatchdogSec=", "ExecStartPre=" + replicad_bin + " check-config",
                "ProtectSystem=strict", "NoNewPrivileges=yes", "ExecReload="):
        assert key in text


class NotifyListener:
    """A NOTIFY_SOCKET that collects the datagrams a daemon sends (as systemd would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def wait_for(self, key: str, value: str | None = None, after: int = 0, timeout_s: float = 60) -> int:
        """Index of the first message at or after ``after`` that has ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, m in enumerate(self.messages[after:], start=after):
                if key in m and (value is None or m[key] == value):
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no {key}={value} after message {after}: {self.messages[after:][-5:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _start_under_notify(c: LocalCluster, site: str, notify: Path, watchdog_usec: int) -> subprocess.Popen:
    s = c.sites[site]
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC=str(watchdog_usec), JOURNAL_STREAM="8:1",
               PYTHONUNBUFFERED="1", PYTHONPATH=SRC)
    env.pop("WATCHDOG_PID", None)
    log = open(s.log_path, "ab")
    s.proc = subprocess.Popen([sys.executable, "-m", "replicad", "run", str(s.config_path)], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=s.dir)
    log.close()
    return s.proc


@pytest.fixture
def cluster(tmp_path: Path):
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 48, random.Random(3))
    try:
        yield c
    finally:
        c.stop_all()


def test_notify_ready_watchdog_reload_and_clean_stop(cluster: LocalCluster, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        proc = _start_under_notify(cluster, "site-a", listener.path, watchdog_usec=400_000)
        time.sleep(1.0)
        # alone, site-a cannot know a Raft leader: no READY yet, but it says why
        assert not any(m.get("READY") == "1" for m in listener.messages)
        listener.wait_for("STATUS")
        assert "waiting for a Raft leader" in next(m["STATUS"] for m in listener.messages if "STATUS" in m)
        cluster.start("site-b")
        cluster.start("site-c")
        ready = listener.wait_for("READY", "1")
        cluster.wait_ready(60)
        first_ping = listener.wait_for("WATCHDOG", "1")
        listener.wait_for("WATCHDOG", "1", after=first_ping + 1)
        assert snapshot(cluster, "site-a")["committed"]

        cfg = cluster.sites["site-a"].config_path
        original = cfg.read_text()
        cfg.write_text(original.replace('interval = "1h"', 'interval = "30m"'))
        mark = len(listener.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1", after=mark)
        listener.wait_for("READY", "1", after=reloading)
        # a change that needs a restart does not hold back those that apply live (an admin token here)
        admin = f'[admin]\nlisten = "127.0.0.1:{cluster.sites["site-a"].admin_port}"\n'
        token = "reload-test-admin-token-0123456789"
        assert admin in original
        cfg.write_text(original.replace('data_dir = "data"', 'data_dir = "elsewhere"').replace(
            admin, admin + f'[[admin.tokens]]\nname = "ops"\nrole = "admin"\nsha256 = "{hash_token(token)}"\n'))
        mark = len(listener.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1", after=mark)
        ready_again = listener.wait_for("READY", "1", after=reloading)
        assert "restart needed for: data_dir" in listener.messages[ready_again]["STATUS"]
        log_text = cluster.sites["site-a"].log_path.read_text()
        assert "reloaded" in log_text and "interval_s" in log_text and "admin_tokens" in log_text
        assert "these changes need a restart and keep their old value until then: data_dir" in log_text
        assert "<6>replicad.site.reload:" in log_text  # journald priority prefix under JOURNAL_STREAM
        with pytest.raises(UnauthenticatedError):  # the new token list is live
            cluster.api("site-a", "GET", "/v1/volumes", token="")
        cluster.tokens["site-a"] = {"ops": ("admin", token)}
        assert snapshot(cluster, "site-a")["committed"]  # still serving with its old data_dir
        assert not (cluster.sites["site-a"].dir / "elsewhere").exists()

        mark = len(listener.messages)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        listener.wait_for("STOPPING", "1", after=mark)
        assert listener.messages[ready].get("MAINPID") == str(proc.pid)
    finally:
        listener.close()


def test_sigterm_during_a_transfer_exits_zero_and_restarts_clean(cluster: LocalCluster) -> None:
    img = cluster.sites["site-a"].volume_path(VOL)
    with open(img, "wb") as f:  # 160 MiB of incompressible data: a transfer that takes a while
        for _ in range(160):
            f.write(os.urandom(2**20))
    cluster.start_all()
    cluster.wait_ready(60)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(errors, snapshot, cluster, "site-a"), daemon=True)
    t.start()
    # wait until bytes are arriving at a replica, then stop the primary in the middle
    packs = cluster.sites["site-b"].dir / "data" / "chunks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(p.stat().st_size for p in packs.rglob("*.pack")) < 8 * 2**20:
        time.sleep(0.05)
    proc = cluster.sites["site-a"].proc
    assert proc is not None and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    t.join(timeout=60)
    assert not t.is_alive()
    cluster.start("site-a")
    cluster.wait_ready(60)
    rep = cluster.wait_for("a snapshot after the restart", lambda: snapshot(cluster, "site-a"), 90, interval_s=1)
    assert rep["committed"] and set(rep["holders"]) == {"site-a", "site-b", "site-c"}
    # never a blind full copy again: each replica got a delta on a snapshot it holds, or (if the
    # interrupted snapshot was abandoned and nothing committed since) only what it still lacked
    for peer, p in rep["peers"].items():
        assert p["base_seq"] is not None or p["sent"] < p["offered"], (peer, p)
    received_b = sum(p.stat().st_size for p in packs.rglob("*.pack"))
    assert received_b < 1.5 * 160 * 2**20  # the 160 MiB image crossed to site-b about once, not twice


def _catch(errors: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except (ReplicadError, OSError) as err:
        errors.append(err)
