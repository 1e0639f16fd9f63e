"""Rules 1 are b976d0a's decisions only if the helpers its frozen state machine calls are b976d0a's
too: :mod:`replicad.core.state_rules1` (that release's ``state.py``, unchanged) imports today's
:mod:`~replicad.core.anomaly`, :mod:`~replicad.core.identity` and :mod:`~replicad.core.retention`.
A change to one of the definitions it reaches (a detection default, a key check, the pruning
plan) would change what rules 1 decide on the upgraded sites only, and a cluster still running
b976d0a at some site would part (``checkpoint divergent``) — the very thing the rules version is
for. So every top-level definition ``state_rules1`` reaches in those modules, and everything they
reach there, must have b976d0a's source text; a change belongs under a new rules version (the
caller frozen beside its helper)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from replicad.core import state_rules1
from tests.unit.core.frozen import REPO, release_source

OLD_RELEASE = "b976d0a"
MODULES = {"anomaly": "replicad/core/anomaly.py", "identity": "replicad/core/identity.py",
           "retention": "replicad/core/retention.py"}


def definitions(text: str) -> dict[str, tuple[str, ast.AST]]:
    """``{name: (source text, node)}`` of the module's top-level functions, classes and assignments."""
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        for name in names:
            out[name] = (ast.get_source_segment(text, node) or "", node)
    return out


def reached(defs: dict[str, tuple[str, ast.AST]], roots: set[str]) -> set[str]:
    """The names of ``roots`` and of every top-level definition they reference, transitively."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        todo.extend(n.id for n in ast.walk(defs[name][1]) if isinstance(n, ast.Name) and n.id in defs)
    return seen


def used_by_rules1() -> dict[str, set[str]]:
    """``{module alias: names}`` that ``state_rules1`` takes from each module (``anomaly.X`` and
    ``from replicad.core.identity import X``)."""
    tree = ast.parse(Path(state_rules1.__file__).read_text(encoding="utf-8"))
    used: dict[str, set[str]] = {alias: set() for alias in MODULES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in MODULES:
            used[node.value.id].add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("replicad.core."):
            alias = node.module.rsplit(".", 1)[1]
            if alias in MODULES:
                used[alias].update(a.name for a in node.names)
    return used


def changed(old_text: str, new_text: str, roots: set[str]) -> list[str]:
    """The definitions reached from ``roots`` (in either text) whose source differs, or that one lacks."""
    old, new = definitions(old_text), definitions(new_text)
    names = reached(old, roots) | reached(new, roots) | roots
    return sorted(n for n in names if n not in old or n not in new or old[n][0] != new[n][0])


def old_source(path: str) -> str:
    """``path`` as of :data:`OLD_RELEASE`."""
    return release_source(OLD_RELEASE, path)


@pytest.mark.parametrize("alias", sorted(MODULES))
def test_what_rules_1_call_is_b976d0a_s_text(alias: str) -> None:
    roots = used_by_rules1()[alias]
    assert roots, f"state_rules1 takes nothing from {alias}: the list of modules is stale"
    text = (REPO / MODULES[alias]).read_text(encoding="utf-8")
    assert changed(old_source(MODULES[alias]), text, roots) == [], (
        f"{MODULES[alias]}: definitions state_rules1 reaches differ from {OLD_RELEASE}'s; keep them, or move the "
        "change under a new rules version")


def test_the_check_sees_a_changed_helper_and_a_changed_constant() -> None:
    """The comparison itself: a reached helper's body, a constant it reads, or a removed root is
    reported; a definition nothing reaches is not."""
    base = "LIMIT = 3\n\ndef helper(x):\n    return x < LIMIT\n\ndef root(x):\n    return helper(x)\n\nOTHER = 1\n"
    assert changed(base, base, {"root"}) == []
    assert changed(base, base.replace("x < LIMIT", "x <= LIMIT"), {"root"}) == ["helper"]
    assert changed(base, base.replace("LIMIT = 3", "LIMIT = 4"), {"root"}) == ["LIMIT"]
    assert changed(base, base.replace("OTHER = 1", "OTHER = 2"), {"root"}) == []
    assert changed(base, base.replace("def root", "def renamed"), {"root"}) == ["root"]
