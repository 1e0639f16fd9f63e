"""The rules version a Raft node's log starts from (``RaftNode._pin_initial_limits``).

A cluster founded by this release starts under ``RULES_MAX`` (an attacker review: a hostile site
registered 256 volumes of its own under the previous release's rules in the seconds before an
honest site raised them); a node of an upgraded cluster (``raft.limits`` without ``rules``), a
joining one, or one whose log predates the file starts under rules 1. Real nodes on loopback,
real files; each node is started and closed.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from replicad.consensus.raft import RaftNode
from replicad.core import errors
from replicad.core import state as st

PASSWORD = "initial-rules-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started(data_dir: Path, **kw) -> dict:
    """Start a one-member node on ``data_dir``, return its applied state (before any command),
    close it."""
    node = RaftNode(f"127.0.0.1:{free_port()}", [], data_dir, PASSWORD, members=["a", "b", "c"], **kw)
    node.start()
    try:
        return node.state()
    finally:
        node.close()


def test_a_new_cluster_starts_under_this_release_s_rules_and_keeps_them(tmp_path: Path) -> None:
    state = started(tmp_path)
    assert st.rules(state) == st.RULES_MAX
    pinned = json.loads((tmp_path / "raft.limits").read_text())
    assert pinned["members"] == ["a", "b", "c"] and pinned["rules"] == st.RULES_MAX
    assert (tmp_path / "raft.journal").exists()  # a log now exists: the pinned file decides
    assert st.rules(started(tmp_path, fresh_rules=1)) == st.RULES_MAX


def test_an_upgraded_cluster_s_node_starts_under_rules_1_even_with_its_log_rebuilt(tmp_path: Path) -> None:
    """``raft.limits`` of the previous release has no ``rules``: with its log (a restart after the
    upgrade) and without it (the log moved away and rebuilt from the leader) the node replays
    the cluster's history under rules 1; the file is left without ``rules``."""
    (tmp_path / "raft.limits").write_text(json.dumps({"members": ["a", "b", "c"], "max_sites": 64}))
    assert st.rules(started(tmp_path)) == 1  # no journal, no dump: a rebuilt log
    assert "rules" not in json.loads((tmp_path / "raft.limits").read_text())
    assert (tmp_path / "raft.journal").exists()
    assert st.rules(started(tmp_path)) == 1


def test_a_joining_node_starts_under_rules_1(tmp_path: Path) -> None:
    """A site joining an existing cluster takes its rules from the cluster's log or dump."""
    assert st.rules(started(tmp_path, joining=True)) == 1
    assert "rules" not in json.loads((tmp_path / "raft.limits").read_text())


def test_a_file_naming_newer_rules_stops_the_node(tmp_path: Path) -> None:
    (tmp_path / "raft.limits").write_text(json.dumps({"members": ["a", "b", "c"], "max_sites": 64,
                                                      "rules": st.RULES_MAX + 1}))
    node = RaftNode(f"127.0.0.1:{free_port()}", [], tmp_path, PASSWORD, members=["a", "b", "c"])
    with pytest.raises(errors.RulesVersionError) as info:
        node.start()
    node.close()
    assert info.value.evidence == {"rules": st.RULES_MAX + 1, "max_rules": st.RULES_MAX}
