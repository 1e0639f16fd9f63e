"""Which release of replicad this process runs, to tell sites apart during an upgrade.

``__version__`` (``0.1.0``) is the same on every release, so ``replicad --version`` and
``replicad_build_info`` could not say whether two sites run the same code. The identity here
adds what does differ:

* ``rules``: the range of cluster rules this code applies (1 to
  :data:`replicad.core.state.RULES_MAX`): a rolling upgrade raises the rules only once every
  site's code applies the new ones (README, "Upgrading");
* ``source``: the first 12 hex digits of a SHA-256 over the package's ``.py`` files (each one's
  path relative to the package, then its bytes, in sorted path order) — the same for a git
  checkout and for the package ``pip install`` copied from it, different for any changed line;
  computed once per process (about 100 files, milliseconds);
* ``commit``: the git commit of the checkout the package is imported from, when it is one (an
  installed package has none: None); local changes beside it show only in ``source``.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path

from replicad import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_DIGITS = 12
"""Hex digits of the source digest shown (48 bits: two releases colliding is not a concern)."""
GIT_TIMEOUT_S = 5.0


@functools.cache
def source_digest() -> str:
    """:func:`digest_of` this package, computed once per process."""
    return digest_of(PACKAGE_DIR)


def digest_of(package_dir: Path) -> str:
    """SHA-256 over the ``.py`` files under ``package_dir`` (module docstring), its first
    :data:`SOURCE_DIGITS` hex digits; ``"unreadable"`` when a file cannot be read (never raises)."""
    h = hashlib.sha256()
    try:
        for path in sorted(package_dir.rglob("*.py")):
            rel = path.relative_to(package_dir).as_posix().encode()
            data = path.read_bytes()
            h.update(b"%d:%s\0%d\0" % (len(rel), rel, len(data)))
            h.update(data)
    except OSError:
        return "unreadable"
    return h.hexdigest()[:SOURCE_DIGITS]


@functools.cache
def git_commit() -> str | None:
    """The commit (12 hex digits) of the git checkout holding the package, or None (an
    installed package, no git, any failure; never raises)."""
    top = PACKAGE_DIR.parent
    if not (top / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(top), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit and all(c in "0123456789abcdef" for c in commit) else None


def identity() -> dict:
    """``{"version": str, "rules": "1-N", "rules_max": int, "source": str, "commit": str | None}``
    (module docstring)."""
    from replicad.core.state import RULES_MAX

    return {"version": __version__, "rules": f"1-{RULES_MAX}", "rules_max": RULES_MAX, "source": source_digest(),
            "commit": git_commit()}


def identity_text(ident: dict | None = None) -> str:
    """``replicad 0.1.0 (rules 1-2, source 1a2b3c4d5e6f, commit 0123456789ab; Python 3.11.7)``:
    :func:`identity` (or ``ident``, another site's) in one line, ``commit`` left out when None."""
    ident = identity() if ident is None else ident
    parts = [f"rules {ident.get('rules')}", f"source {ident.get('source')}"]
    if ident.get("commit"):
        parts.append(f"commit {ident['commit']}")
    python = ident.get("python") or platform.python_version()
    return f"replicad {ident.get('version')} ({', '.join(parts)}; Python {python})"
