"""Damaged standbys, damaged stores and damaged sources, with real site processes on loopback
(issue 13 items 5, 11 and 13).

* a flipped bit in a replica's standby image is found by the scheduled standby check,
  reported and repaired; ``verify`` reads the standby too; a forced promotion onto a
  standby damaged after it was verified falls back to one full rewrite from the store;
* a standby record that lies about the image (changed behind the daemon's back) is not
  believed after a restart: the next apply compares every block;
* a failing resync backs off exponentially instead of retrying on every tick;
* a restore heals any number of corrupt local chunks from the peers that hold them;
* a source truncated to 0 bytes is refused: nothing committed, standbys untouched.
"""

from __future__ import annotations

import os
import random
import re
import signal
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError

from .conftest import BLOCK, VOL, overwrite_blocks, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FAST_CHECK = '[scrub]\nstandby_every = "1s"\nstandby_bytes = "4MiB"\n'  # 12 MiB standby: 3 passes
NO_CHECK = '[scrub]\nstandby_every = "0s"\n'


def flip_bit(path: Path, block: int, offset: int = 1000) -> None:
    """Flip one bit of ``block`` of the image at ``path`` in place (fsynced), as bit rot would."""
    with open(path, "r+b") as f:
        f.seek(block * BLOCK + offset)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
        f.flush()
        os.fsync(f.fileno())


def standby(c, site: str) -> dict:
    return c.status(site)["volumes"][VOL]


def metric(c, site: str, name: str, having: str = "") -> float:
    """The sum of the samples of metric ``name`` at ``site`` (GET /metrics) whose line holds ``having``."""
    import urllib.request

    with urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if (line.startswith(name + "{") or line.startswith(name + " ")) and having in line)


def test_the_scheduled_check_finds_a_flipped_bit_in_a_standby_and_repairs_it(cluster_factory) -> None:
    c = cluster_factory(extra_site_toml=FAST_CHECK)
    first = snapshot(c, "site-a")
    assert first["committed"]
    c.wait_for("standby b verified", lambda: standby(c, "site-b")["standby"]["state"] == "verified"
               and standby(c, "site-b")["standby_seq"] == first["seq"], 30)
    expected = c.sites["site-a"].volume_path(VOL).read_bytes()
    flip_bit(c.sites["site-b"].volume_path(VOL), block=1)  # a data block: no trusted base would rewrite it
    c.wait_for("the damage counted", lambda: metric(c, "site-b", "replicad_standby_damage_found_total") >= 1, 60)
    c.wait_for("standby b repaired", lambda: standby(c, "site-b")["standby"]["state"] == "verified", 60)
    entry = standby(c, "site-b")["standby"]
    assert entry["damaged_blocks"] == 1 and entry["seq"] == first["seq"], entry
    assert c.sites["site-b"].volume_path(VOL).read_bytes() == expected
    log = c.sites["site-b"].log_path.read_text()
    assert "STANDBY DAMAGED" in log and "standby ehr at site-b repaired" in log
    assert metric(c, "site-b", "replicad_standby_checked_bytes_total") > 0


def test_verify_reads_the_standby_and_a_promotion_onto_a_damaged_standby_rewrites_it_once(cluster_factory) -> None:
    c = cluster_factory(extra_site_toml=NO_CHECK)
    first = snapshot(c, "site-a")
    for site in ("site-b", "site-c"):
        c.wait_for(f"standby {site}", lambda s=site: standby(c, s)["standby_seq"] == first["seq"], 30)
    expected = c.sites["site-a"].volume_path(VOL).read_bytes()
    # verify covers the standby: a flipped bit at site-c is found and repaired
    flip_bit(c.sites["site-c"].volume_path(VOL), block=4)
    rep = c.api("site-c", "POST", f"/v1/volumes/{VOL}/verify", {})
    assert rep["corrupt"] == [] and rep["standby"]["bad_blocks"] == 1 and rep["standby"]["repaired"], rep
    assert rep["standby"]["damaged_blocks"] == [4]
    assert c.sites["site-c"].volume_path(VOL).read_bytes() == expected
    # site-b's standby is verified (trusted), then a bit flips in it; site-a dies; b is promoted
    rep = c.api("site-b", "POST", f"/v1/volumes/{VOL}/verify", {})
    assert rep["standby"]["bad_blocks"] == 0 and rep["standby"]["state"] == "verified", rep
    flip_bit(c.sites["site-b"].volume_path(VOL), block=7)
    c.kill("site-a", signal.SIGKILL)
    res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
    restore = res["restore"]
    assert res["restored_seq"] == first["seq"] and restore["standby_trusted"] and restore["full_rewrite"], res
    assert c.sites["site-b"].volume_path(VOL).read_bytes() == expected
    log = c.sites["site-b"].log_path.read_text()
    assert len(re.findall(r"failed its O5 check", log)) == 1, "one O5 failure, one full rewrite, no loop"
    assert "full rewrite of #%d from the store verified" % first["seq"] in log
    assert metric(c, "site-b", "replicad_takeover_full_rewrites_total", 'outcome="verified"') == 1
    assert snapshot(c, "site-b")["committed"]  # a working primary


def test_a_standby_record_that_lies_is_not_believed_after_a_restart(cluster_factory) -> None:
    c = cluster_factory()
    rng = random.Random(11)
    first = snapshot(c, "site-a")
    c.wait_for("standby c", lambda: standby(c, "site-c")["standby_seq"] == first["seq"], 30)
    c.kill("site-c", signal.SIGTERM)
    # behind the daemon's back: the image no longer holds #1, the record still says it does
    overwrite_blocks(c.sites["site-c"].volume_path(VOL), [1, 2, 4], rng)
    c.start("site-c")
    c.wait_ready(60)
    assert standby(c, "site-c")["standby"]["state"] == "unverified"
    overwrite_blocks(c.sites["site-a"].volume_path(VOL), [100], rng)
    second = snapshot(c, "site-a")
    assert second["committed"]
    c.wait_for("standby c at #2", lambda: standby(c, "site-c")["standby_seq"] == second["seq"], 60)
    assert c.sites["site-c"].volume_path(VOL).read_bytes() == c.sites["site-a"].volume_path(VOL).read_bytes()
    assert "every block compared: the standby record was not verified" in c.sites["site-c"].log_path.read_text()


def test_a_failing_resync_backs_off_exponentially(cluster_factory) -> None:
    c = cluster_factory()
    img = c.sites["site-c"].volume_path(VOL)
    img.unlink(missing_ok=True)
    img.mkdir()  # site-c's standby cannot be written: every resync fails (bad_request: is a directory)
    try:
        first = snapshot(c, "site-a")
        assert first["committed"]
        c.wait_for("five failures in a row", lambda: standby(c, "site-c")["retry"]["failures"] >= 5, 90)
        log = c.sites["site-c"].log_path.read_text()
        lines = re.findall(r"volume ehr: .*[(;] ?failure (\d+) in a row; next try in ([0-9.]+)s\)", log)
        failures = [int(n) for n, _ in lines]
        assert failures[:5] == [1, 2, 3, 4, 5], lines  # one line per failed try, never a burst of them
        for n, delay in lines[:5]:
            bound = min(300.0, 2.0 ** (int(n) - 1))
            assert bound / 2 <= float(delay) <= bound, lines
        assert "Is a directory" in standby(c, "site-c")["last_error"]
    finally:
        img.rmdir()


def _flip_pack_bytes(pack: Path, n: int) -> None:
    size = pack.stat().st_size
    with open(pack, "r+b") as f:
        for i in range(1, n + 1):
            f.seek(size * i // (n + 1))
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


def test_a_restore_heals_every_corrupt_local_chunk_from_the_peers(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory()
    first = snapshot(c, "site-a")
    c.wait_for("standby b", lambda: standby(c, "site-b")["standby_seq"] == first["seq"], 30)
    for pack in (c.sites["site-b"].dir / "data" / "chunks").rglob("*.pack"):
        _flip_pack_bytes(pack, 40)  # dozens of corrupt chunks at site-b; a and c hold good copies
    target = tmp_path / "restored.img"
    rest = c.api("site-b", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)})
    assert rest["verified"] and target.read_bytes() == c.sites["site-a"].volume_path(VOL).read_bytes()
    healed = sum(int(n) for n in re.findall(r"healed (\d+) chunks of ehr", c.sites["site-b"].log_path.read_text()))
    assert healed > 8, f"only {healed} chunks healed"  # more than the old limit of attempts
    again = c.api("site-b", "POST", f"/v1/volumes/{VOL}/verify", {"seq": first["seq"]})
    assert again["corrupt"] == [], again  # the local copies were repaired


def test_a_source_truncated_to_zero_bytes_is_refused_and_standbys_stay(cluster_factory) -> None:
    c = cluster_factory()
    first = snapshot(c, "site-a")
    c.wait_for("standby b", lambda: standby(c, "site-b")["standby_seq"] == first["seq"], 30)
    live = c.sites["site-a"].volume_path(VOL)
    content = live.read_bytes()
    standby_before = c.sites["site-b"].volume_path(VOL).read_bytes()
    os.truncate(live, 0)
    with pytest.raises(ReplicadError) as err:
        snapshot(c, "site-a")
    assert err.value.code == "source_shrunk", err.value
    assert err.value.evidence["size_bytes"] == 0 and err.value.evidence["parent_size_bytes"] == len(content)
    snaps = c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
    assert [s["seq"] for s in snaps] == [first["seq"]]  # nothing committed
    assert c.sites["site-b"].volume_path(VOL).read_bytes() == standby_before
    assert standby(c, "site-b")["standby_seq"] == first["seq"]
    live.write_bytes(content)  # the operator puts the image back: snapshots commit again
    assert snapshot(c, "site-a")["committed"]
