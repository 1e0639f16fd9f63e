"""The lab's port picker (:func:`replicad.lab.localcluster.free_ports`) inside a range of its own
(``REPLICAD_LAB_PORTS``, as the test suite gives each worker process one)."""

from __future__ import annotations

import socket

import pytest

from replicad.lab import localcluster
from replicad.lab.localcluster import LAB_PORTS_ENV, free_port, free_ports


@pytest.fixture
def own_range(monkeypatch: pytest.MonkeyPatch):
    """The first 16 ports of this process's range (tests/conftest.py sets one), probed from their start."""
    low = int((localcluster.os.environ.get(LAB_PORTS_ENV) or "20000-").split("-")[0])
    monkeypatch.setenv(LAB_PORTS_ENV, f"{low}-{low + 15}")
    monkeypatch.setattr(localcluster, "_next_port", [0])
    return low, low + 15


def test_ports_come_from_the_range_distinct_and_in_turn(own_range) -> None:
    low, high = own_range
    first = free_ports(5)
    second = free_ports(5)
    assert len(set(first + second)) == 10 and all(low <= p <= high for p in first + second)
    assert second[0] > first[-1]  # on from where the last pick stopped, not from the start again


def test_a_bound_port_is_skipped_and_a_full_range_is_an_error(own_range) -> None:
    low, high = own_range
    held = []
    try:
        for port in range(low, high + 1):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        free = held.pop()  # one port of the range left free
        port = free.getsockname()[1]
        free.close()
        assert free_port() == port
        with pytest.raises(OSError, match=LAB_PORTS_ENV):
            free_ports(2)
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("bad", ["20000", "30000-20000", "0-10", "20000-70000", "a-b"])
def test_a_malformed_range_is_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(LAB_PORTS_ENV, bad)
    with pytest.raises(ValueError):
        free_port()


def test_unset_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LAB_PORTS_ENV, raising=False)
    ports = free_ports(3)
    assert len(set(ports)) == 3
