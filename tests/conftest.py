"""Settings of the whole test session.

The suite starts some hundreds of Python processes: every site daemon of every cluster, each
restart, each ``replicad`` command run as a subprocess, the attacker processes. Under
``PYTHONDONTWRITEBYTECODE`` each of them compiled replicad's modules from source again (~70 modules,
0.3-0.9 s of CPU per process on the 2-core machine the suite is timed on). For the session, those
processes keep their bytecode in a private cache directory instead (``PYTHONPYCACHEPREFIX``, Python
3.8+): nothing is written beside the sources, as the setting asks, and the directory is removed at
the end. The processes run the same code (a cached module is used only while its source's mtime and
size match).

Ports: every test process picks the ports of the daemons it starts from a range of its own below the
kernel's ephemeral range (``REPLICAD_LAB_PORTS``, :func:`replicad.lab.localcluster.free_ports`): a
port picked and not bound yet is never handed to another worker's pick, server or client.

Parallel run (pytest-xdist, ``-n 2 --dist loadgroup``): every test that starts processes of replicad,
servers or file systems (``tests/integration``, ``tests/security``, tests marked ``integration``) is
in one group, run one after the other by one worker as without xdist, so their timing and their
checks of this machine's mounts, loop devices and network namespaces see only their own; the other
worker runs the in-process tests (unit, simulation, checkers) and ``BESIDE_THE_DAEMONS`` meanwhile.
Each worker is given the main process's terminal size (``COLUMNS``, ``LINES``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_PYCACHE: list[tuple[str, str]] = []  # (cache directory, the PYTHONDONTWRITEBYTECODE value it replaced)
_TERM_SIZE_ENV = "REPLICAD_TESTS_TERMINAL_SIZE"  # the main process's COLUMNS and LINES, for its workers (JSON)
_PORTS: list[str | None] = []  # the REPLICAD_LAB_PORTS value this process replaced
PORTS_LOW = 20000
"""The lowest port of the test processes' ranges (below it: well-known services' ports)."""
DAEMON_GROUP = "daemons"
DAEMON_DIRS = ("integration", "security")
"""``tests/<dir>``: every test in it starts processes of replicad or servers (``DAEMON_GROUP``)."""
BESIDE_THE_DAEMONS = ("integration/test_postgres_snapshots.py",)
"""Modules of ``DAEMON_DIRS`` left out of ``DAEMON_GROUP``: they start no replicad daemon, their loop
devices, mounts, PostgreSQL (its port from the worker's range) and qemu-storage-daemon are their own,
under their own work directory, and none of them looks at this machine's mounts or loop devices as a
whole (``tests/pgcrash.py``)."""


def _port_range() -> str | None:
    """This test process's share of ``PORTS_LOW`` up to the kernel's ephemeral range as ``LOW-HIGH``
    (worker ``gwN`` of ``PYTEST_XDIST_WORKER_COUNT``; the whole of it without xdist), None when the
    ephemeral range starts too low to share."""
    try:
        eph_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        eph_low = 32768  # Linux's default
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker[:2] == "gw" and worker[2:].isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    width = (eph_low - PORTS_LOW) // count
    if width < 500:
        return None
    low = PORTS_LOW + index * width
    return f"{low}-{low + width - 1}"


def _same_terminal_size_as_the_controller() -> None:
    """A worker process's ``COLUMNS`` and ``LINES`` as the main pytest process had them: a worker
    starts with no terminal and GNU readline (imported with pdb) sets both to 80x24 there, which
    the ``replicad`` commands the tests run would take for the operator's terminal."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        given = json.loads(os.environ.get(_TERM_SIZE_ENV) or "{}")
        for name in ("COLUMNS", "LINES"):
            if name in given:
                os.environ[name] = given[name]
            else:
                os.environ.pop(name, None)
    else:  # read by the workers, started after this
        os.environ[_TERM_SIZE_ENV] = json.dumps({k: os.environ[k] for k in ("COLUMNS", "LINES") if k in os.environ})


def pytest_configure(config: pytest.Config) -> None:
    _same_terminal_size_as_the_controller()
    _PORTS.append(os.environ.get("REPLICAD_LAB_PORTS"))
    ports = _port_range()
    if ports is None:
        os.environ.pop("REPLICAD_LAB_PORTS", None)
    else:
        os.environ["REPLICAD_LAB_PORTS"] = ports
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
        cache = tempfile.mkdtemp(prefix="replicad-tests-pycache-")  # mode 0700: this user's only
        _PYCACHE.append((cache, os.environ.pop("PYTHONDONTWRITEBYTECODE")))  # for child processes: this one's
        os.environ["PYTHONPYCACHEPREFIX"] = cache  # flag was read at its start


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            rel = item.path.resolve().relative_to(tests_dir)
        except ValueError:
            rel = Path()
        if rel.as_posix() in BESIDE_THE_DAEMONS:
            continue
        if (rel.parts[:1] and rel.parts[0] in DAEMON_DIRS) or item.get_closest_marker("integration") is not None:
            item.add_marker(pytest.mark.xdist_group(DAEMON_GROUP))


def pytest_unconfigure(config: pytest.Config) -> None:
    while _PORTS:
        ports = _PORTS.pop()
        if ports is None:
            os.environ.pop("REPLICAD_LAB_PORTS", None)
        else:
            os.environ["REPLICAD_LAB_PORTS"] = ports
    while _PYCACHE:
        cache, dont_write = _PYCACHE.pop()
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ["PYTHONDONTWRITEBYTECODE"] = dont_write
        shutil.rmtree(cache, ignore_errors=True)
