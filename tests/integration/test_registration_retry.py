"""A site whose registration fails for a transient reason tries again with backoff, and says so
(review R13, F1 residual): real daemons; site-c runs the honest daemon with its first
``register_site`` held until the test has stopped the two other sites (SIGSTOP: no leader, no
quorum), so that the proposal fails for real, as it does when the quorum goes in the
milliseconds between joining and registering.

The retry used to be a fixed second with an INFO line each time; a permanent refusal was retried
the same way for ever under "waiting for a quorum". Now: WARNING lines naming the try and the
delay, the delays growing (equal jitter: each at least the one before), then a WARNING once it
registered after them.
"""

from __future__ import annotations

import random
import re
import signal
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, write_image

pytestmark = pytest.mark.integration

TRY = re.compile(r"site site-c: registration not committed \((.*)\); try (\d+) in ([0-9.]+) s")


def lines(c: LocalCluster, site: str) -> list[str]:
    return c.sites[site].log_path.read_text(errors="replace").splitlines()


@pytest.mark.timeout(300)
def test_a_registration_failing_for_want_of_a_quorum_is_tried_again_with_backoff(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(7))
    gate = tmp_path / "gate"
    try:
        c.start("site-a")
        c.start("site-b")
        c.start("site-c", module="tests.integration.gated_registration_site", args=(str(gate), "run"))
        c.wait_for("site-c joined and holds its registration", lambda: any(
            "gated: register_site waits" in line for line in lines(c, "site-c")) and any(
            "joined cluster incarnation" in line for line in lines(c, "site-c")), 90)
        c.wait_for("site-a and site-b registered", lambda: {"site-a", "site-b"} <= set(
            c.status("site-a")["sites"]), 60)
        for site in ("site-a", "site-b"):
            c.kill(site, signal.SIGSTOP)
        gate.touch()
        tries = c.wait_for("two failed tries of site-c", lambda: (lambda found: found if len(found) >= 2 else None)(
            [m for m in map(TRY.search, lines(c, "site-c")) if m]), 120, interval_s=1.0)
        for site in ("site-a", "site-b"):
            c.kill(site, signal.SIGCONT)
        c.wait_for("site-c registered", lambda: "site-c" in c.status("site-c")["sites"], 90)
        c.wait_for("site-c says it registered after failed tries", lambda: any(
            re.search(r"site site-c registered in the cluster after \d+ failed tries", line)
            for line in lines(c, "site-c")), 30)
        assert [int(m.group(2)) for m in tries[:2]] == [2, 3]
        delays = [float(m.group(3)) for m in tries]
        assert delays == sorted(delays) and 0.5 <= delays[0] <= 1.0, delays
        assert not any("registration refused, not tried again" in line for line in lines(c, "site-c"))
        assert not any("bootstrap waiting for a quorum" in line for line in lines(c, "site-c"))
    finally:
        for site in ("site-a", "site-b"):
            c.kill(site, signal.SIGCONT)
        c.stop_all()
