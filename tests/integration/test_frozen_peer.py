"""A frozen member keeps its Raft connections (SIGSTOP, a hung host: the kernel still answers
TCP keepalives), so pysyncobj reported it connected for as long as it was frozen and
``replicad_raft_peer_up`` stayed 1 (operator try-out 3: ReplicadRaftPeerUnreachable never fired
for a site stopped 2 min). The leader now shows a follower that answered no append_entries for
``raft.PARTNER_SILENT_S`` as unreachable, and reachable again once it answers. Real daemons."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, write_image

pytestmark = pytest.mark.integration


def peer_up(c: LocalCluster, site: str, peer: str) -> float | None:
    import urllib.request

    with urllib.request.urlopen(f"{c.sites[site].admin_url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("replicad_raft_peer_up{") and f'peer="{peer}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(240)
def test_the_leader_shows_a_frozen_follower_unreachable_and_back(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=1)
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(7))
    frozen = None
    try:
        c.start_all()
        c.wait_ready(90)
        leader = c.wait_for("a leader", lambda: next((s for s in c.sites if c.status(s)["raft"]["is_leader"]), None))
        frozen = next(s for s in c.sites if s != leader)
        addr = f"127.0.0.1:{c.sites[frozen].raft_port}"
        assert c.status(leader)["raft"]["partners"][addr] is True and peer_up(c, leader, frozen) == 1
        c.kill(frozen, signal.SIGSTOP)
        c.wait_for("the leader shows the frozen follower unreachable", lambda: c.status(leader)["raft"]["partners"][
            addr] is False and peer_up(c, leader, frozen) == 0, 60, interval_s=0.5)
        assert c.status(leader)["raft"]["has_quorum"]  # the other follower answers: nothing else changed
        c.kill(frozen, signal.SIGCONT)
        frozen = None
        c.wait_for("reachable again once it answers", lambda: c.status(leader)["raft"]["partners"][addr] is True
                   and peer_up(c, leader, next(s for s in c.sites if f"127.0.0.1:{c.sites[s].raft_port}" == addr))
                   == 1, 60, interval_s=0.5)
    finally:
        if frozen is not None:
            c.kill(frozen, signal.SIGCONT)
        c.stop_all()
