"""Bad and hostile input against real daemons: the peer API reads whole bodies however the
network splits them, trusts no sender's word about epochs, and keeps working afterwards;
restore refuses to destroy the site's own state; a frozen replica does not hold commits."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import msgpack
import pytest

from replicad.core import wire
from replicad.core.errors import UsageError
from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, ready_again, snapshot, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One cluster for the tests that leave it as they found it (a frozen site thawed, a moved image put back):
    each cluster start costs seconds of daemon start-up."""
    c = start_cluster(tmp_path_factory.mktemp("hostile") / "cluster", n_blocks=48)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def cluster(shared_cluster: LocalCluster) -> LocalCluster:
    return ready_again(shared_cluster)


def post_slowly(port: int, path: str, body: bytes, piece: int = 1448, pause_s: float = 0.002) -> tuple[int, bytes]:
    """POST ``body`` to 127.0.0.1:``port`` in small pieces, as a WAN link delivers it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {wire.CONTENT_TYPE}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        for i in range(0, len(body), piece):
            sock.sendall(body[i:i + piece])
            time.sleep(pause_s)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def test_peer_documents_split_by_the_network_are_read_whole(cluster: LocalCluster) -> None:
    digests = [os.urandom(32) for _ in range(3000)]  # ~100 KB document
    body = wire.encode_doc("missing", volume=VOL, epoch=1, digests=digests, **{"from": "site-a"})
    status, payload = post_slowly(cluster.sites["site-b"].peer_port, "/v1/peer/missing", body)
    assert status == 200, payload[:300]
    assert len(wire.decode_reply(payload)["missing"]) == 3000


def test_peer_writes_need_the_committed_primary_and_epoch(cluster: LocalCluster) -> None:
    port = cluster.sites["site-c"].peer_port
    frame = wire.encode_frame(b"\x01" * 32, 0, b"x")  # never reaches the store: refused first

    def chunks(epoch: int, sender: str) -> tuple[int, dict]:
        header = wire.encode_doc("chunks", volume=VOL, epoch=epoch, **{"from": sender})
        status, payload = post_slowly(port, "/v1/peer/chunks", header + frame, piece=1 << 16, pause_s=0)
        return status, json.loads(payload)

    status, err = chunks(1, "mallory")  # not a site of this cluster
    assert status == 404 and err["error"] == "not_found"
    status, err = chunks(2, "site-b")  # a future epoch on the sender's word: refused after the catch-up wait
    assert status == 409 and err["error"] == "stale_epoch"
    status, err = chunks(1, "site-b")  # a real site, but not the primary
    assert status == 409 and err["error"] == "not_primary"
    status, err = chunks(0, "site-a")  # the primary under an old epoch
    assert status == 409 and err["error"] == "stale_epoch"
    huge = msgpack.packb({"v": 1, "volume": VOL, "epoch": 1, "from": "site-a", "seq": 2**63 - 1,
                          "root": b"\x00" * 32}, use_bin_type=True)
    status, payload = post_slowly(port, "/v1/peer/snapshot", huge, pause_s=0)
    assert status == 400 and json.loads(payload)["error"] == "remote_protocol"
    # the site still works: the next snapshot commits with every holder
    rep = snapshot(cluster, "site-a")
    assert rep["committed"] and set(rep["holders"]) == {"site-a", "site-b", "site-c"}
    assert "Traceback" not in cluster.sites["site-c"].log_path.read_text()


def test_restore_refuses_to_destroy_site_state(cluster: LocalCluster, tmp_path: Path) -> None:
    snapshot(cluster, "site-a")
    data_dir = cluster.sites["site-b"].dir / "data"
    for target, overwrite in ((data_dir / "catalog.db", True), (data_dir / "new.img", False),
                              (Path("/dev/null"), True), (tmp_path, True),
                              (cluster.sites["site-b"].volume_path(VOL), True)):
        with pytest.raises(UsageError):
            cluster.api("site-b", "POST", f"/v1/volumes/{VOL}/restore",
                        {"target": str(target), "overwrite": overwrite})


def test_frozen_replica_does_not_hold_commits(cluster: LocalCluster) -> None:
    first = snapshot(cluster, "site-a")
    cluster.kill("site-c", signal.SIGSTOP)
    try:
        img = cluster.sites["site-a"].volume_path(VOL)
        with open(img, "r+b") as f:
            f.write(b"a day of new records" * 100)
        rep = snapshot(cluster, "site-a")
        assert rep["committed"] and set(rep["holders"]) == {"site-a", "site-b"}
        assert rep["peers"]["site-c"]["error"] == "straggler"
    finally:
        cluster.kill("site-c", signal.SIGCONT)
    cluster.wait_for("site-c holds the snapshot after it thawed", lambda: "site-c" in next(
        s["holders"] for s in cluster.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
        if s["seq"] == rep["seq"]), 90)
    assert first["seq"] < rep["seq"]


def test_a_second_daemon_on_a_running_sites_data_dir_stops_before_touching_it(cluster: LocalCluster) -> None:
    import subprocess
    import sys

    site = cluster.sites["site-b"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-m", "replicad", "run", str(site.config_path)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "in use by another replicad process" in out.stderr, out.stderr
    assert f"pid {site.proc.pid}" in out.stderr
    assert "Traceback" not in out.stderr and "site site-b stopped" not in out.stderr  # it never started
    assert cluster.status("site-b")["raft"]["synced"]  # the running site is untouched


def test_a_failing_cycle_stays_visible_in_status(cluster_factory) -> None:
    c = cluster_factory(interval="2s")
    img = c.sites["site-a"].volume_path(VOL)
    moved = img.with_name("moved-away.img")
    img.rename(moved)  # the primary's source disappears: every periodic cycle fails
    try:
        c.wait_for("a failed cycle", lambda: c.status("site-a")["volumes"][VOL]["last_error"], 30)
        seen = [c.status("site-a")["volumes"][VOL]["last_error"] for _ in range(8) if not time.sleep(0.25)]
        assert all(seen), f"idle ticks hid the failure: {seen}"  # ticks every 0.5 s, cycles every 2 s
    finally:
        moved.rename(img)


def test_a_failed_snapshot_now_shows_in_status_and_a_replica_names_the_primary(cluster: LocalCluster) -> None:
    """An operator's "snapshot now" that fails leaves its error in status (``last error``, the
    site degraded) as a scheduled cycle's does (interval 1h here: no scheduled cycle runs), and
    a success clears it; asked at a replica, the CLI names the primary."""
    import subprocess
    import sys

    from replicad.core.errors import ReplicadError

    img = cluster.sites["site-a"].volume_path(VOL)
    moved = img.with_name("moved-away.img")
    img.rename(moved)  # the primary's source disappears
    try:
        with pytest.raises(ReplicadError) as failed:
            snapshot(cluster, "site-a")
        error = cluster.status("site-a")["volumes"][VOL]["last_error"]
        assert error and error.startswith(f"{failed.value.code}: "), (error, failed.value)
    finally:
        moved.rename(img)
    assert snapshot(cluster, "site-a")["committed"]
    assert cluster.status("site-a")["volumes"][VOL]["last_error"] is None
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-m", "replicad", "--admin", cluster.sites["site-b"].admin_url, "snapshot",
                          VOL], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 and "hint: the primary is site-a" in " ".join(out.stderr.split()), out.stderr
