"""A primary's stats cannot stop the next primary (review R10, F1, F3).

site-a, the primary of ``ehr``, runs its own daemon changed to send stats that the daemons read
but cannot use (``tests/security/stats_attacker.py``: a string or None where a count belongs,
``has_parent`` 2, more changed blocks than the volume has, terminal escapes in a value or a key)
from its second commit on. Its holders acknowledge such a snapshot (their acknowledgement covers
no stats). The honest sites' state machine refuses each commit (``bad_request``), so nothing of
them reaches b's or c's state; after site-a is killed and site-b forcibly promoted, site-b's
snapshots commit and its log has no traceback.
"""

from __future__ import annotations

import random
import time

import pytest

from replicad.core import state as st
from replicad.core.errors import ReplicadError, UsageError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, snapshot, write_image
from tests.security.stats_attacker import POISONS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_poisoned_stats_are_refused_and_the_next_primary_keeps_committing(tmp_path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(1))
    try:
        c.start("site-a", module="tests.security.stats_attacker", args=("--from", "2", "run"))
        for site in ("site-b", "site-c"):
            c.start(site)
        c.wait_ready(120)
        assert snapshot(c, "site-a")["seq"] == 1  # the first commit is honest: a clean baseline
        refused = []
        for _ in POISONS:
            try:
                snapshot(c, "site-a")
                refused.append(None)
            except ReplicadError as err:
                refused.append(err)
        assert all(isinstance(e, UsageError) for e in refused), refused
        time.sleep(2)  # b and c applied every refusal
        listed = c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")
        assert [s["seq"] for s in listed["snapshots"]] == [1]
        assert st.stats_problem(listed["snapshots"][0]["stats"]) is None
        c.kill("site-a")
        promoted = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
        assert promoted["primary"] == "site-b"
        seqs = [snapshot(c, "site-b")["seq"] for _ in range(2)]
        assert len(seqs) == 2 and seqs[0] < seqs[1]
        listed = c.api("site-c", "GET", f"/v1/volumes/{VOL}/snapshots")
        committed = {s["seq"] for s in listed["snapshots"]}
        assert set(seqs) <= committed, listed
        log = c.sites["site-b"].log_path.read_text(errors="replace")
        assert "Traceback" not in log and "InternalError" not in log and "invalid literal" not in log
    finally:
        c.stop_all()
