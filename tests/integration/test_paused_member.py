"""A paused site is not reachable (a tryout's finding): SIGSTOP keeps its TCP connections open,
so its Raft connection still read ``connected`` and ``status``/``members`` said ``reachable:
true`` for minutes. A member whose clock reports (every 5 s through Raft) trail the majority's
clock by more than 25 s is now unreachable, with ``silent_s``; after SIGCONT it is reachable
again (real daemons, the real CLI)."""

from __future__ import annotations

import signal

import pytest

from .test_operator_cli import cli, flat

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _member(c, at: str, site: str) -> dict:
    return next(m for m in c.api(at, "GET", "/v1/members")["members"] if m["site_id"] == site)


def test_a_paused_site_is_unreachable_in_members_and_status(cluster_factory) -> None:
    c = cluster_factory(n_blocks=32, interval="3650d")
    c.wait_for("site-b reported its clock", lambda: _member(c, "site-a", "site-b")["reachable"], 30)
    c.kill("site-b", signal.SIGSTOP)
    try:
        for at in ("site-a", "site-c"):  # silent whether its Raft connection to it is still open or not
            m = c.wait_for(f"site-b silent at {at}", lambda a=at: (lambda m: m if "silent_s" in m else None)(
                _member(c, a, "site-b")), 90, interval_s=1.0)
            assert m["silent_s"] >= 25 and not m["reachable"], m
        status = c.status("site-a")
        assert status["degraded"] and any(r["reason"] == "member_unreachable" and r.get("site") == "site-b"
                                          and "clock reports stopped" in r["message"]
                                          for r in status["degraded_reasons"]), status["degraded_reasons"]
        res = cli(c, "site-c", "members")
        assert "NO (silent" in flat(res), flat(res)
        res = cli(c, "site-a", "status")
        assert res.returncode == 1 and "site site-b unreachable (its Raft connection is open" in flat(res), flat(res)
    finally:
        c.kill("site-b", signal.SIGCONT)
    c.wait_for("site-b reachable again", lambda: _member(c, "site-a", "site-b")["reachable"], 60)
    assert "silent_s" not in _member(c, "site-a", "site-b")
