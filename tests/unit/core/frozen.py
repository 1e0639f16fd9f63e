"""Older releases' state machines, from the repository's history, for the tests that pin a rules
version's decisions against the release that made them: one file's text (``git show``), that
``state.py`` as a module of its own, or the whole ``replicad`` package tree (``git archive``) run in
a child process of its own. A checkout without that history fails the test (never skips it)."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]

# the child: applies a pickled log with a release's state machine, from that release's own tree;
# argv: tree, that release's RULES_MAX, "counted" to count the commands as the Raft node does
# (checkpoint.advance: "applied") or "apply" for ``state.apply`` alone
_RUNNER = """
import pickle, sys
tree, rules_max, counted = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "counted"
sys.path.insert(0, tree)
from replicad.core import state as st
from replicad.core.identity import Trust
from replicad.consensus.checkpoint import advance, state_digest
import msgpack
assert st.__file__.startswith(tree), st.__file__
assert st.RULES_MAX == rules_max, st.RULES_MAX
job = pickle.load(sys.stdin.buffer)
trust = None if job["keys"] is None else Trust(cluster_id="c", keys=job["keys"])
s = st.initial_state(**job["initial"])
out = []
for command in job["log"]:
    if counted:
        s, res, _ = advance(s, msgpack.packb(command, use_bin_type=True), trust)
    else:
        s, res = st.apply(s, command, trust)
    out.append((res, state_digest(s)))
sys.stdout.buffer.write(pickle.dumps(out))
"""


def release_source(release: str, path: str) -> str:
    """The text of ``path`` (relative to the repository) as of commit ``release``; fails the test
    when this checkout lacks that history."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "show", f"{release}:{path}"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:  # a checkout without history
        pytest.fail(f"release {release}'s {path} is not in this checkout's history: {exc}")


def release_state(release: str, rules_max: int | None = None) -> ModuleType:
    """``release``'s ``replicad.core.state`` as a module of its own (``replicad_state_<release>``),
    its text kept as ``SOURCE``; ``rules_max``: the ``RULES_MAX`` that text must set."""
    path = "replicad/core/state.py"
    text = release_source(release, path)
    if rules_max is not None:
        assert f"\nRULES_MAX = {rules_max}\n" in text
    spec = importlib.util.spec_from_loader(f"replicad_state_{release}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and annotations look their module up
    exec(compile(text, f"{release}:{path}", "exec"), module.__dict__)
    module.SOURCE = text
    return module


def release_tree(tmp_path_factory: pytest.TempPathFactory, release: str, rules_max: int) -> Path:
    """``release``'s ``replicad`` package tree, extracted under a fresh temporary folder (returned);
    ``rules_max``: the ``RULES_MAX`` its ``state.py`` must set."""
    try:
        blob = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", release, "replicad"],
                              check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"release {release} is not in this checkout's history: {exc}")
    out = tmp_path_factory.mktemp(f"release{release}")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(out, filter="data")
    assert f"\nRULES_MAX = {rules_max}\n" in (out / "replicad" / "core" / "state.py").read_text()
    return out


def run_release(tree: Path, rules_max: int, log: list[dict], keys: dict | None, initial: dict, *,
                counted: bool, timeout: float) -> list[tuple[dict, bytes]]:
    """``log`` applied by the release extracted at ``tree`` (:func:`release_tree`) in a child
    process (``timeout`` seconds at most), from ``state.initial_state(**initial)``, trusting
    ``keys`` (``{site: (raw public key, ...)}``, None: unsigned): each result and the state digest
    after it. ``counted``: as the Raft node applies them (``checkpoint.advance``, which counts
    ``applied``), else through ``state.apply`` alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    argv = [sys.executable, "-c", _RUNNER, str(tree), str(rules_max), "counted" if counted else "apply"]
    done = subprocess.run(argv, cwd=tree, env=env, timeout=timeout, capture_output=True,
                          input=pickle.dumps({"log": log, "keys": keys, "initial": initial}))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return pickle.loads(done.stdout)


def assert_alike(log: list[dict], previous: list, current: list) -> None:
    """Every result and every digest equal, step by step (the first difference named)."""
    assert len(previous) == len(current) == len(log)
    for i, (command, (old_res, old_digest), (new_res, new_digest)) in enumerate(zip(log, previous, current)):
        what = {k: command.get(k) for k in ("op", "op_id", "to", "rules", "by")}
        assert new_res == old_res, (i, what, new_res, old_res)
        assert new_digest == old_digest, (i, what)
