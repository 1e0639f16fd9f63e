"""A compromised holder cannot stall an honest site's forced promotion (security review: the
tarpit holder).

site-c was down while snapshot #2 was committed, so its only holders are site-a and site-b.
Then the attacker takes site-a's host: its daemon is restarted as
:mod:`tests.security.tarpit_site` (replicad's daemon answering every ``/v1/peer/fetch`` with
its head at once and then one byte every 20 s: no read ever hits the client's 30 s sock_read
timeout). site-a comes first in the snapshot's holders, so site-c's restore asks it first.
site-c restarts and its operators force-promote it.

Before the progress rule (:class:`replicad.peer.transport.FetchProgress`) the promotion's
restore waited on site-a forever, silently (no log line, no metric), and honest site-b was
never asked. Now the fetch from site-a fails within FETCH_PROGRESS_S with a PeerStalledError,
logged at WARNING under site-a's name and counted in ``replicad_fetch_stalled_total``, and #2
comes from site-b: the promotion answers with #2 restored, the stall named in its report, and
site-c's image is #2 byte for byte.

The looping holder (``--loop``: its answer's first real frame replayed at ~256 KiB/s, 2.5x the
rule, for ever) kept the fetch alive before answers were bounded to the digests asked, each
once (:class:`replicad.peer.transport.FetchAnswer`); now its second copy of a frame ends the
fetch with a RemoteProtocolError, logged at WARNING under site-a's name and counted the same
way, and #2 comes from site-b (whether during site-c's catch-up or the promotion's restore,
so the promotion's report may not name it).

Then (the trickle case) site-c, the new primary, ships to site-a, which also trickles the
replies of a ship's requests (``/v1/peer/missing``, ``chunks``, ``snapshot``) a byte per 20 s,
and to honest site-b. Before the ship deadlines every ship to site-a waited for ever (each
cycle one more, each holding a connection and the chunks read for it) and no one said so; now
every snapshot commits with site-b, a ship to site-a still running is not started again, and
it is cut at its deadline (:data:`replicad.peer.transport.SHIP_DOC_S`), site-a named in a
WARNING and in ``replicad_ship_stalled_total``.
"""

from __future__ import annotations

import hashlib
import random
import signal
import urllib.request
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.tarpit_site import restart_as_tarpit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def stalled_count(c: LocalCluster, site: str, holder: str) -> float:
    """``replicad_fetch_stalled_total`` of ``holder`` on ``site``'s /metrics (0 when none)."""
    text = urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("replicad_fetch_stalled_total{") and f'holder="{holder}"' in line)


def ship_stalled_count(c: LocalCluster, site: str, peer: str) -> float:
    """``replicad_ship_stalled_total`` of ``peer`` on ``site``'s /metrics (0 when none)."""
    text = urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("replicad_ship_stalled_total{") and f'peer="{peer}"' in line)


def a_tarpit_replica_does_not_hold_up_shipping(c: LocalCluster) -> None:
    """site-c, now the primary, ships to tarpit site-a (the replies of missing, chunks and
    snapshot one byte per 20 s) and honest site-b: every snapshot commits with site-b, a ship
    to site-a still running is not started again ("busy"), the ship is cut at its deadline and
    site-a named in a WARNING and in replicad_ship_stalled_total."""
    reports = [snapshot(c, "site-c"), snapshot(c, "site-c")]
    for rep in reports:
        assert rep["committed"] and "site-b" in rep["holders"] and "site-a" not in rep["holders"], rep
        assert rep["peers"]["site-b"]["ok"], rep["peers"]
    # the second finds the first's ship to site-a running (unless it was cut in between)
    assert reports[1]["peers"]["site-a"]["error"] in ("busy", "peer_stalled"), reports[1]["peers"]
    c.wait_for("site-c cut a ship to site-a", lambda: ship_stalled_count(c, "site-c", "site-a") >= 1, 60)
    assert ship_stalled_count(c, "site-c", "site-b") == 0
    log = c.sites["site-c"].log_path.read_text(errors="replace")
    assert any(" WARNING " in line and f"replica site-a stalled the ship of {VOL}#" in line
               and "did not answer /v1/peer/" in line for line in log.splitlines()), "named at WARNING"
    rep = snapshot(c, "site-c")  # site-a stalled lately: shipped to, not waited for
    assert rep["committed"] and "site-b" in rep["holders"] and "site-a" not in rep["holders"], rep


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["trickle", "loop"])
def test_a_tarpit_holder_cannot_stall_a_forced_promotion(tmp_path: Path, mode: str) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, 64, random.Random(3))  # 4 MiB
        c.start_all()
        c.wait_ready(90)
        snapshot(c, "site-a")
        c.kill("site-c", signal.SIGTERM)
        overwrite_blocks(img, list(range(1, 60, 3)), random.Random(4))
        s2 = snapshot(c, "site-a")
        seq = s2["seq"]
        image_2 = sha(img)
        holders = {s["seq"]: s["holders"] for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}
        assert holders[seq] == ["site-a", "site-b"], holders  # site-a is asked first

        restart_as_tarpit(c, "site-a", mode)
        c.wait_for("the tarpit site-a serving", lambda: c.status("site-a"), 60)
        c.start("site-c")
        c.wait_for("site-c up", lambda: c.status("site-c"), 90)

        res = c.api("site-c", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 150}, timeout_s=170)
        assert res["restored_seq"] == seq, res
        if mode == "trickle":  # the loop is cut at once: maybe by the catch-up, before the promotion
            assert "site-a" in res["restore"].get("stalled_holders", {}), res["restore"]
        assert "site-b" not in res["restore"].get("stalled_holders", {}), res["restore"]
        assert sha(c.sites["site-c"].volume_path(VOL)) == image_2, "site-c's image is #2 (from honest site-b)"

        log = c.sites["site-c"].log_path.read_text(errors="replace")
        said = "holder site-a stalled a fetch" if mode == "trickle" else \
            "holder site-a answered a fetch with bad frames (remote_protocol)"
        assert any(" WARNING " in line and said in line for line in log.splitlines())
        assert stalled_count(c, "site-c", "site-a") >= 1
        assert stalled_count(c, "site-c", "site-b") == 0
        st = c.status("site-c")["volumes"][VOL]
        assert st["role"] == "primary" and st["standby_seq"] == seq, st
        if mode == "trickle":
            a_tarpit_replica_does_not_hold_up_shipping(c)
    finally:
        # the tarpit first (SIGKILL, by PID): a clean stop of it waits out its trickling answers for
        # replicad.site.daemon.SHUTDOWN_GRACE_S (10 s); the honest sites stop as usual
        c.kill("site-a")
        c.stop_all()
