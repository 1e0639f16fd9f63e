"""How often refused Raft traffic is logged: ``revoked_site`` at most once a minute per revoked
site, with the count of refusals not logged since (a revoked site still running redials every
second: a line a second per honest site flooded the logs, operator try-out 2, item 8); other
reasons keep their own pace. Every refusal is counted whatever is logged."""

from __future__ import annotations

import logging

import pytest

from replicad.consensus import channel
from replicad.consensus.channel import REVOKED_LOG_EVERY_S, RefusalLog, _revoked_rate


def test_revoked_site_lines_once_a_minute_per_site_with_a_count(monkeypatch, caplog) -> None:
    now = [1000.0]
    monkeypatch.setattr(channel.time, "monotonic", lambda: now[0])
    refusals = RefusalLog()
    caplog.set_level(logging.WARNING, logger=channel.log.name)

    def refuse(site: str) -> None:
        refusals.refuse("revoked_site", "a connection named %s (site %s), revoked through Raft", "127.0.0.1:1", site,
                        **_revoked_rate("revoked_site", site))

    for _ in range(30):  # one a second for 30 s from site-a, and one from site-c
        refuse("site-a")
        now[0] += 1.0
    refuse("site-c")
    lines = [r.getMessage() for r in caplog.records if "[revoked_site]" in r.getMessage()]
    assert len(lines) == 2 and "(site site-a)" in lines[0] and "(site site-c)" in lines[1], lines
    assert refusals.counts()["revoked_site"] == 31
    now[0] += REVOKED_LOG_EVERY_S
    refuse("site-a")
    lines = [r.getMessage() for r in caplog.records if "[revoked_site]" in r.getMessage()]
    assert len(lines) == 3 and "(29 more refused for this reason since the last line)" in lines[2], lines
    assert _revoked_rate("bad_identity", "site-a") == {}  # other reasons: once a second per reason, as before


@pytest.mark.parametrize("reason", ["unknown_node"])
def test_other_reasons_keep_one_line_a_second(monkeypatch, caplog, reason: str) -> None:
    now = [50.0]
    monkeypatch.setattr(channel.time, "monotonic", lambda: now[0])
    refusals = RefusalLog()
    caplog.set_level(logging.WARNING, logger=channel.log.name)
    for _ in range(3):
        refusals.refuse(reason, "x")
        now[0] += 1.0
    assert len([r for r in caplog.records if f"[{reason}]" in r.getMessage()]) == 3
