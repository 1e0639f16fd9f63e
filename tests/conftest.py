"""Settings of the whole test session.

The suite starts some hundreds of Python processes: every site daemon of every cluster, each
restart, each ``replicad`` command run as a subprocess, the attacker processes. Under
``PYTHONDONTWRITEBYTECODE`` each of them compiled replicad's modules from source again (~70 modules,
0.3-0.9 s of CPU per process on the 2-core machine the suite is timed on). For the session, those
processes keep their bytecode in a private cache directory instead (``PYTHONPYCACHEPREFIX``, Python
3.8+): nothing is written beside the sources, as the setting asks, and the directory is removed at
the end. The processes run the same code (a cached module is used only while its source's mtime and
size match).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_PYCACHE: list[tuple[str, str]] = []  # (cache directory, the PYTHONDONTWRITEBYTECODE value it replaced)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
        cache = tempfile.mkdtemp(prefix="replicad-tests-pycache-")  # mode 0700: this user's only
        _PYCACHE.append((cache, os.environ.pop("PYTHONDONTWRITEBYTECODE")))  # for child processes: this one's
        os.environ["PYTHONPYCACHEPREFIX"] = cache  # flag was read at its start


def pytest_unconfigure(config: pytest.Config) -> None:
    while _PYCACHE:
        cache, dont_write = _PYCACHE.pop()
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ["PYTHONDONTWRITEBYTECODE"] = dont_write
        shutil.rmtree(cache, ignore_errors=True)
