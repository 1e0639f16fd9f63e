"""A primary of more volumes than a replica takes chunk streams of it at once (real daemons).

A replica receives at most CHUNK_STREAMS_PER_PEER (8) chunk streams of one peer at once and
refuses the rest (503 peer_busy). site-a, the primary of 12 volumes, ships a snapshot of each
at the same moment while site-b is held (SIGSTOP) until site-a shipped all 12 to site-c: when
site-b runs again, 12 ships reach it together. Before the primary's own bound, site-b refused
the streams past its 8 (``replicad_peer_doc_refused_total{route="chunks"}``) and those snapshots
missed min_copies = 3; now site-a opens at most CHUNK_SLOTS_PER_PEER streams to it at once, the
others wait their turn here (``replicad_ship_slot_waits_total``), and every snapshot commits
held by all three sites.
"""

from __future__ import annotations

import random
import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from replicad.core.errors import UnavailableError
from replicad.lab.localcluster import LocalCluster
from replicad.peer.transport import CHUNK_STREAMS_PER_PEER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N_VOLUMES = CHUNK_STREAMS_PER_PEER + 4
BLOCKS = 32          # 2 MiB of random blocks per volume: a stream lasts while the others start
HOLD_MAX_S = 6.0     # site-b is held at most this long (the ships' /missing deadline is 10 s)


def metric(c: LocalCluster, site: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on ``site``'s /metrics whose labels include ``labels``."""
    text = urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def test_a_primary_queues_its_chunk_streams_within_a_replicas_bound(tmp_path: Path) -> None:
    volumes = tuple(f"v{i:02d}" for i in range(N_VOLUMES))
    c = LocalCluster(tmp_path / "cluster", volumes=volumes, interval="1h", min_copies=3)
    rng = random.Random(21)
    for v in volumes:
        c.sites["site-a"].volume_path(v).write_bytes(rng.randbytes(BLOCKS * 65536))
    try:
        c.start_all()
        c.wait_ready(90)
        with ThreadPoolExecutor(N_VOLUMES) as pool:
            c.kill("site-b", signal.SIGSTOP)
            try:
                futures = {v: pool.submit(c.api, "site-a", "POST", f"/v1/volumes/{v}/snapshot", {}) for v in volumes}
                try:  # every volume scanned and shipped to site-c: its ships to site-b wait for site-b
                    c.wait_for("site-a's ships to site-c", lambda: all(
                        metric(c, "site-a", "replicad_ship_sent_bytes_total", volume=v, peer="site-c") > 0
                        for v in volumes), HOLD_MAX_S, 0.1)
                except UnavailableError:
                    pass  # a loaded machine: fewer ships meet at site-b (the waits asserted below say if any did)
            finally:
                c.kill("site-b", signal.SIGCONT)
            reports = {v: f.result() for v, f in futures.items()}
        for v, report in reports.items():
            assert report["committed"] and set(report["holders"]) == {"site-a", "site-b", "site-c"}, (v, report["peers"])
        for replica in ("site-b", "site-c"):
            assert metric(c, replica, "replicad_peer_doc_refused_total", route="chunks") == 0, c.log_tail(replica)
        log_a = c.sites["site-a"].log_path.read_text(errors="replace")
        assert "peer_busy" not in log_a and "request documents of" not in log_a
        # the bound was met: streams to site-b waited here for a place, none gave up
        assert metric(c, "site-a", "replicad_ship_slot_waits_total", peer="site-b", outcome="got") > 0
        assert metric(c, "site-a", "replicad_ship_slot_waits_total", outcome="timed_out") == 0
    finally:
        c.stop_all()
