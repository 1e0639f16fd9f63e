"""Vouched checkpoints end to end: three signed RaftNode processes on loopback with a low
compaction threshold and a checkpoint every 8 commands (``signed_raft_helper``).

* A follower that was down while the others compacted their logs catches up through the
  leader's dump: a vouched checkpoint and the signed commands since, replayed; its state then
  equals the others'.
* A zeroed dump refuses to start (``dump_damaged``, exit 5, nothing changed); the README's
  way out (dump and journal moved aside, meta kept) brings the node back as a follower that
  votes for nobody until it has caught up, through a vouched dump.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from replicad.core import identity
from tests.integration.test_consensus import REPO_ROOT, Node, free_port, leader_of, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EVERY = 8
SITES = ("site-a", "site-b", "site-c")


class SignedNode(Node):
    """A ``signed_raft_helper`` process; ``start_error`` holds its refusal to start, if any."""

    def __init__(self, spec: dict, spec_path: Path) -> None:
        super().__init__(spec["addr"], spec["partners"], Path(spec["data_dir"]), spec["compaction"])
        spec_path.write_text(json.dumps(spec))
        self.spec = spec
        self.args = [sys.executable, "-m", "tests.integration.signed_raft_helper", str(spec_path)]
        self.start_error: dict | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                         text=True, env=env, cwd=REPO_ROOT)
        self.replies = {}
        first = json.loads(self.proc.stdout.readline() or "{}")
        if first.get("ready") is not True:
            self.start_error = first
            return
        self.start_error = None
        import threading
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def make_signed_cluster(tmp_path: Path, compaction: int = 20, attacker: str | None = None,
                        depose_grace: int | None = None) -> list[SignedNode]:
    addrs = {s: f"127.0.0.1:{free_port()}" for s in SITES}
    keys = {s: identity.generate_private_key() for s in SITES}
    cluster = f"ckpt-{uuid.uuid4().hex[:8]}"
    nodes = []
    for s in SITES:
        (tmp_path / f"{s}.pem").write_bytes(identity.private_key_pem(keys[s]))
        spec = {"addr": addrs[s], "partners": [a for t, a in addrs.items() if t != s],
                "data_dir": str(tmp_path / s), "compaction": compaction, "every": EVERY, "site_id": s,
                "key_pem": str(tmp_path / f"{s}.pem"), "password": "checkpoint-secret", "cluster": cluster,
                "keys": {t: identity.public_key_raw(keys[t]).hex() for t in SITES},
                "sites": {a: t for t, a in addrs.items()}, "attacker": s == attacker}
        if depose_grace is not None:
            spec["depose_grace"] = depose_grace
        nodes.append(SignedNode(spec, tmp_path / f"{s}.json"))
    return nodes


def propose_ok(node: Node, command: dict, timeout_s: float = 30.0) -> dict:
    command = {"now_ns": time.time_ns(), **command, "op_id": command.get("op_id") or uuid.uuid4().hex}
    deadline = time.monotonic() + timeout_s
    while True:
        reply = node.propose(command, timeout_s=3.0)
        if reply["ok"] or reply["error"] != "no_quorum" or time.monotonic() > deadline:
            assert reply["ok"], reply
            return reply
        time.sleep(0.2)


def register_all(nodes: list[SignedNode]) -> None:
    for node in nodes:
        propose_ok(node, {"op": "register_site", "site_id": node.spec["site_id"],
                          "peer_url": f"https://{node.spec['site_id']}", "kind": "data"})


def clocks(node: Node, count: int) -> None:
    for _ in range(count):
        propose_ok(node, {"op": "clock"})


def last_vouch(node: SignedNode) -> int:
    """The checkpoint ``node``'s site vouched last, as its own state records it (0: none)."""
    mine = node.state().get("vouches", {}).get(node.spec["site_id"])
    return mine[-1][0] if mine else 0


@pytest.fixture
def signed_cluster(tmp_path):
    made: list[SignedNode] = []

    def make(**kw) -> list[SignedNode]:
        made.extend(make_signed_cluster(tmp_path, **kw))
        return made

    yield make
    for node in made:
        node.kill()


def test_a_follower_behind_the_compacted_logs_catches_up_through_a_vouched_dump(signed_cluster):
    nodes = signed_cluster()
    for node in nodes:
        node.start()
    leader = leader_of(nodes)
    register_all(nodes)
    lagging = next(n for n in nodes if n is not leader)
    other = next(n for n in nodes if n is not leader and n is not lagging)
    wait_for(lambda: len(lagging.state()["sites"]) == 3, "the lagging node registered everyone")
    behind_at = lagging.status()["last_applied"]
    lagging.kill()
    clocks(leader, 6 * EVERY)
    # both remaining sites vouched a checkpoint past the lagging node, and the leader compacted past it
    wait_for(lambda: all(last_vouch(n) >= 4 * EVERY for n in (leader, other)), "vouches of the two running sites")
    clocks(leader, 30)  # past the compaction threshold once more: the dump's base is vouched
    wait_for(lambda: leader.call("journal")["result"]["entries"][0][0] > behind_at + 1, "the leader compacted")
    lagging.start()
    assert lagging.start_error is None, lagging.start_error
    target = leader.state()
    wait_for(lambda: lagging.state().get("applied", 0) >= target["applied"], "the lagging node caught up", 60)
    wait_for(lambda: lagging.state() == leader.state(), "equal states", 30)
    status = lagging.status()
    assert status["dump_error"] is None
    assert all(status["refused"].get(r, 0) == 0 for r in ("dump_not_vouched", "dump_bad_command", "dump_malformed",
                                                           "snapshot_regresses", "checkpoint_divergent")), status
    assert (Path(lagging.spec["data_dir"]) / "raft.dump").exists()
    assert "refused a full state" not in lagging.stderr()


def test_a_zeroed_dump_refuses_to_start_and_the_runbook_brings_the_node_back(signed_cluster):
    nodes = signed_cluster()
    for node in nodes:
        node.start()
    leader = leader_of(nodes)
    register_all(nodes)
    clocks(leader, 6 * EVERY)
    victim = next(n for n in nodes if n is not leader)
    raft_dir = Path(victim.spec["data_dir"])
    wait_for(lambda: (raft_dir / "raft.dump").exists(), "a dump on the victim", 60)
    victim.kill()
    dump = raft_dir / "raft.dump"
    dump.write_bytes(bytes(dump.stat().st_size))  # zeroed, as a failing disk leaves it
    before = dump.read_bytes()
    victim.start()
    assert victim.start_error is not None and victim.start_error["start_error"] == "dump_damaged", victim.start_error
    assert victim.proc.wait(timeout=30) == 5
    assert dump.read_bytes() == before  # nothing changed
    assert "Traceback" not in victim.stderr()

    # README "Raft dump damaged": move the dump and the journal aside, keep the meta file
    dump.rename(raft_dir / "raft.dump.damaged")
    (raft_dir / "raft.journal").rename(raft_dir / "raft.journal.damaged")
    clocks(leader, 2 * EVERY + 25)  # the majority goes on (and compacts)
    victim.start()
    assert victim.start_error is None, victim.start_error
    wait_for(lambda: victim.state().get("applied", 0) >= leader.state()["applied"], "the victim caught up", 60)
    wait_for(lambda: "votes again" in victim.stderr(), "the victim votes again", 30)
    assert victim.status()["refused"].get("dump_not_vouched", 0) == 0
