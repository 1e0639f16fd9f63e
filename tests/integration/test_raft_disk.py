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

import pytest

from tests.integration.test_consensus import Node, cmd, free_port, leader_of, wait_for
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
            command = {**cmd("register_site", site_id=f"s{i}", peer_url=f"https://s{i}", kind="data"),
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
            reply = others[0].propose(cmd("register_site", by="b", site_id="after", peer_url="https://after",
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
