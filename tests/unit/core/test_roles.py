"""The role table: legal transitions, named refusals, and the diagram in ARCHITECTURE.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from replicad.core import errors
from replicad.core.roles import EVENTS, ROLES, TRANSITIONS, mermaid, next_role

ARCHITECTURE = Path(__file__).resolve().parents[3] / "ARCHITECTURE.md"


def test_table_uses_only_known_roles_and_events():
    for (role, event), new_role in TRANSITIONS.items():
        assert role in ROLES and new_role in ROLES and event in EVENTS
    assert {r for r, _ in TRANSITIONS} == set(ROLES)  # no dead-end role
    assert {e for _, e in TRANSITIONS} == set(EVENTS)


@pytest.mark.parametrize("path, expected", [
    (["epoch_advanced_elsewhere"], "fenced"),  # O3: old primary sees a newer epoch
    (["epoch_advanced_elsewhere", "found_uncommitted_snapshots", "resynced"], "replica"),
    (["demoted", "granted_primary"], "primary"),  # planned switchover and back
    (["restore_started", "restore_done"], "primary"),  # forced failover, verified (O5)
    (["restore_started", "epoch_advanced_elsewhere", "resynced"], "replica"),
])
def test_stories_from_primary(path, expected):
    role = "primary"
    for event in path:
        role = next_role(role, event)
    assert role == expected


@pytest.mark.parametrize("role, event", [
    ("fenced", "granted_primary"),  # must resync first
    ("divergent", "granted_primary"),
    ("replica", "restore_done"),
    ("restoring", "granted_primary"),
    ("primary", "resynced"),
    ("primary", "no_such_event"),
    ("no_such_role", "demoted"),
])
def test_anything_outside_the_table_is_an_illegal_role_transition(role, event):
    with pytest.raises(errors.ConflictError) as info:
        next_role(role, event)
    assert str(info.value) == "illegal role transition"
    assert info.value.evidence["role"] == role and info.value.evidence["event"] == event
    assert info.value.evidence["allowed"] == sorted(e for r, e in TRANSITIONS if r == role)


def test_mermaid_lists_every_transition_once():
    lines = mermaid().splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert sorted(lines[1:]) == sorted(f"    {r} --> {n}: {e}" for (r, e), n in TRANSITIONS.items())


def test_architecture_diagram_matches_the_table():
    assert ARCHITECTURE.exists(), "ARCHITECTURE.md must embed the role diagram"
    blocks = re.findall(r"```mermaid\n(.*?)```", ARCHITECTURE.read_text(), flags=re.S)
    diagrams = [b for b in blocks if b.lstrip().startswith("stateDiagram")]
    assert diagrams, "ARCHITECTURE.md has no role diagram"
    assert diagrams[0].strip() == mermaid().strip()
