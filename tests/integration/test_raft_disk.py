"""Raft storage under a full disk, with three real node processes (issue 13, item 3): the
leader's Raft directory is a small tmpfs that runs full. Every entry a node acknowledged is in
its journal after a restart, no torn record sits in front of valid ones, and while the disk is
full the node answers ``store_full`` (HTTP 507) instead of a ``no_quorum`` timeout, and the
other two go on committing."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_consensus import Node, cmd, free_port, leader_of, register, wait_for
from tests.tmpfs import small_tmpfs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PAD = "x" * 3000  # ~3 KiB per entry: the disk fills in a few dozen appends


def journal_of(node: Node) -> list[list[int]]:
    return node.call("journal")["result"]["entries"]


def test_a_full_disk_on_the_leader_loses_no_acknowledged_entry_and_answers_store_full(tmp_path):
    import contextlib

    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes: list[Node] = []
    with contextlib.ExitStack() as stack:
        dirs = [stack.enter_context(small_tmpfs(tmp_path / f"site{i}", "2m")) for i in range(3)]
        for i, addr in enumerate(addrs):
            nodes.append(Node(addr, [a for a in addrs if a != addr], dirs[i] / "raft", 5000))
        stack.callback(lambda: [n.kill() for n in nodes])
        for node in nodes:
            node.start()
        leader = leader_of(nodes)
        others = [n for n in nodes if n is not leader]
        leader_dir = dirs[nodes.index(leader)]
        st = os.statvfs(leader_dir)
        filler = leader_dir / "filler"
        filler.write_bytes(b"\xff" * (st.f_bavail * st.f_frsize - 48 * 1024))  # ~48 KiB left

        committed, answers = [], []
        for i in range(40):  # ~120 KiB of entries through the leader: it runs full on the way
            command = {**cmd("register_site", by=f"s{i}", site_id=f"s{i}", peer_url=f"https://s{i}", kind="data"),
                       "op_id": uuid.uuid4().hex, "pad": PAD}
            t0 = time.monotonic()
            reply = leader.propose(command, timeout_s=3.0)
            answers.append((reply.get("error"), time.monotonic() - t0))
            if reply["ok"] or reply["error"] not in ("no_quorum", "store_full"):
                committed.append(i)  # applied (a state machine refusal is committed too)
        errors_seen = [e for e, _ in answers if e in ("no_quorum", "store_full")]
        assert errors_seen, f"the leader's disk never ran full: {answers}"
        # checked last (the data checks below come first): the full node says so, at once,
        # rather than a timeout that reads as a lost majority
        said_store_full = errors_seen[-1] == "store_full" and max(s for _, s in answers[-5:]) < 2.0

        # The other two still commit (the full node does not keep a leadership it cannot use).
        reply = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reply = others[0].propose(cmd("register_site", by="after", site_id="after", peer_url="https://after",
                                          kind="data"), timeout_s=3.0)
            if reply["ok"]:
                break
            time.sleep(0.3)
        others_committed = reply is not None and reply["ok"]
        stepped_down = not leader.status()["is_leader"]

        filler.unlink()  # space is back: the node appends again and catches up
        if others_committed:
            wait_for(lambda: "after" in leader.state()["sites"], "the full node catching up", timeout_s=30)
        else:
            time.sleep(3)
        commit_index = leader.status()["commit_index"]

        # A restart of that node alone (the others stopped): its own journal is whole.
        for node in nodes:
            node.kill()
        leader.start()
        entries = journal_of(leader)
        idxs = [e[0] for e in entries]
        assert idxs == list(range(idxs[0], idxs[0] + len(idxs))), "a gap in the journal"
        assert idxs[-1] >= commit_index, (idxs[-1], commit_index)
        assert not list((leader_dir / "raft").glob("raft.journal.torn-*")), "a torn record was dropped"
        leader.signal(signal.SIGKILL)
        assert said_store_full, answers
        assert others_committed and stepped_down, (reply, stepped_down)


def test_a_site_with_a_damaged_journal_refuses_to_start_and_rejoins_once_it_is_moved_aside(cluster_factory):
    """Item 2 end to end: one flipped byte in the middle of a site's journal; the site exits
    with journal_damaged (exit 5, file and offset named, no traceback, nothing truncated);
    the README's way out (move the journal aside, keep meta and dump) brings it back as a
    follower that catches up from the majority."""
    from tests.integration.conftest import VOL, snapshot

    c = cluster_factory()
    for _ in range(3):
        snapshot(c, "site-a")
    c.kill("site-c", signal.SIGKILL)
    journal = c.sites["site-c"].dir / "data" / "raft" / "raft.journal"
    data = bytearray(journal.read_bytes())
    assert len(data) > 400
    data[len(data) // 2] ^= 0x01
    journal.write_bytes(bytes(data))
    before = journal.read_bytes()
    c.start("site-c")
    proc = c.sites["site-c"].proc
    assert proc.wait(timeout=60) == 5
    log = c.log_tail("site-c", 60)
    assert "journal_damaged" in log and str(journal) in log and "Traceback" not in log, log
    assert journal.read_bytes() == before  # refused, not truncated
    assert not list(journal.parent.glob("raft.journal.torn-*"))

    journal.rename(journal.with_name("raft.journal.damaged"))  # README: "Raft journal damaged"
    committed = snapshot(c, "site-a")  # the majority goes on meanwhile
    c.start("site-c")
    c.wait_for("site-c caught up", lambda: committed["seq"] in {
        s["seq"] for s in c.api("site-c", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}, 60)
    assert "votes again" in c.log_tail("site-c", 400)


def test_a_full_leader_steps_down_without_an_election_storm(tmp_path):
    """Issue 13, item 6: the leader's disk fills; a follower (as a volume primary would) keeps
    proposing. The full node steps down at its first failed append, and never moves its term
    without storing it: before, its in-memory term ran ahead of its meta file, its pre-vote
    answers drove the others up (terms 1 to 11 seen) and commits stalled for seconds."""
    import contextlib

    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes: list[Node] = []
    with contextlib.ExitStack() as stack:
        dirs = [stack.enter_context(small_tmpfs(tmp_path / f"site{i}", "2m")) for i in range(3)]
        for i, addr in enumerate(addrs):
            nodes.append(Node(addr, [a for a in addrs if a != addr], dirs[i] / "raft", 5000))
        stack.callback(lambda: [n.kill() for n in nodes])
        for node in nodes:
            node.start()
        leader = leader_of(nodes)
        proposer, third = [n for n in nodes if n is not leader]
        start_term = leader.status()["term"]
        full_dir = dirs[nodes.index(leader)]
        st = os.statvfs(full_dir)
        (full_dir / "filler").write_bytes(b"\xff" * (st.f_bavail * st.f_frsize - 8 * 1024))  # ~8 KiB left

        outcomes = []
        t0 = time.monotonic()
        for i in range(20):  # ~3 KiB each: the leader runs full within the first few
            command = {**cmd("register_site", by=f"s{i}", site_id=f"s{i}", peer_url=f"https://s{i}", kind="data"),
                       "op_id": uuid.uuid4().hex, "pad": PAD}
            reply = leader.propose(command, timeout_s=0.5) if i < 3 else None  # fill it through the leader
            reply = proposer.propose(command, timeout_s=3.0) if reply is None or reply.get("error") else reply
            outcomes.append((round(time.monotonic() - t0, 2), reply.get("error")))
        committed = [t for t, e in outcomes[3:] if e not in ("no_quorum", "store_full")]
        new_terms = max(n.status()["term"] for n in (proposer, third)) - start_term
        stepped_down = not leader.status()["is_leader"]
        assert stepped_down, outcomes
        assert committed, f"the other two never committed: {outcomes}"
        assert new_terms <= 3, f"{new_terms} new terms after the leader ran full (an election storm): {outcomes}"
        assert "Traceback" not in leader.stderr_path.read_text(errors="replace")


def test_a_leader_that_cannot_read_its_dump_steps_down_and_the_lagging_follower_catches_up(tmp_path):
    """Issue 13, item 6: a follower behind the compacted log needs the leader's dump, and the
    leader cannot read it. Before: the leader stayed leader forever, logging a traceback per
    attempt (~3,000 a second here), and the follower never caught up. Now the leader steps
    down after a few failed reads with one ERROR line, counts them, and a member that can
    read its own dump leads and serves the follower."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = [Node(a, [b for b in addrs if b != a], tmp_path / f"site{i}", 4) for i, a in enumerate(addrs)]
    try:
        for node in nodes:
            node.start()
        leader = leader_of(nodes)
        lagging = next(n for n in nodes if n is not leader)
        lagging.kill()
        sites = [f"s{i}" for i in range(12)]
        for site in sites:  # compaction every few entries: the lagging node is behind the log's start
            assert register(leader, site)["ok"]
        dump = Path(leader.args[5]) / "raft.dump"
        dump.unlink()
        dump.mkdir()  # unreadable from now on (an I/O error on the dump, as far as the leader can tell)
        lagging.start()
        wait_for(lambda: not leader.status()["is_leader"], "the leader stepping down", timeout_s=60)
        wait_for(lambda: set(sites) <= set(lagging.state()["sites"]), "the lagging node catching up", timeout_s=60)
        wait_for(lambda: lagging.call("synced")["result"], "the lagging node synced", timeout_s=30)
        failures = leader.status()["dump_send_failures"]
        stderr = leader.stderr_path.read_text(errors="replace")
    finally:
        for node in nodes:
            node.kill()
    assert failures >= 3
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if "cannot read this node's full dump" in ln]
    assert len(lines) == 1 and "stepping down" in lines[0] and "IsADirectoryError" in lines[0], lines


def test_a_follower_that_cannot_catch_up_says_it_is_not_synced(tmp_path):
    """Issue 13, item 6: a follower behind the log's start cannot store the leader's dump. It
    hears its leader and has applied everything *its own* log covers: before, it called itself
    synced (Cluster.raft_synced) while it lacked every entry since. Now it compares with the
    commit index its leader reports, says it is not synced, logs a WARNING, and is synced again
    once it could catch up."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = [Node(a, [b for b in addrs if b != a], tmp_path / f"site{i}", 4) for i, a in enumerate(addrs)]
    try:
        for node in nodes:
            node.start()
        leader = leader_of(nodes)
        lagging = next(n for n in nodes if n is not leader)
        lagging.kill()
        sites = [f"s{i}" for i in range(12)]
        for site in sites:
            assert register(leader, site)["ok"]
        blocker = Path(lagging.args[5]) / "raft.dump.1.tmp"
        blocker.mkdir()  # where a received dump is written before its rename: it cannot store one
        lagging.start()
        wait_for(lambda: lagging.status()["leader"] is not None and lagging.status()["has_quorum"]
                 and sum(lagging.status()["refused"].values()) >= 2, "the leader's dump refused twice")
        samples = [lagging.call("synced")["result"] for _ in range(10)]
        status = lagging.status()
        assert samples == [False] * 10, (samples, status)
        assert status["leader_commit_index"] > status["last_applied"] and not status["caught_up"], status
        wait_for(lambda: "behind the commit index its leader reports" in
                 lagging.stderr_path.read_text(errors="replace"), "a WARNING", timeout_s=40)
        assert not set(sites) & set(lagging.state()["sites"])  # it really is stuck
        blocker.rmdir()
        wait_for(lambda: set(sites) <= set(lagging.state()["sites"]), "catching up", timeout_s=60)
        wait_for(lambda: lagging.call("synced")["result"], "synced once caught up", timeout_s=30)
    finally:
        for node in nodes:
            node.kill()
