"""A frozen member (SIGSTOP, a hung host) keeps its TCP connections open; operator try-out 3 saw
``replicad status`` call a site stopped for 2 min reachable. At the Raft leader the link is not
idle (append_entries every tick), so pysyncobj's connection timeout drops the frozen follower's
connection within seconds: the leader's status ``partners`` and ``replicad_raft_peer_up`` go to
0 and ReplicadRaftPeerUnreachable can fire from the leader's metrics; they come back once it
answers. (Between two followers the link is idle by design: there a frozen site shows through its
clock reports, ``ops.admin.members`` ``silent_s``.) Real daemons; a regression guard of that
path."""

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
