"""A primary cannot claim copies nobody stored, and a takeover never wedges on a snapshot no
holder can supply.

1. The attacker is site-a, the volume's primary, holding its own config and key: a real
   process (``command_attacker.py bogus-commit``) runs site-a's Raft member in place of its
   daemon and proposes, in its own name, a ``commit_snapshot`` of a root stored nowhere naming
   site-b as holder (seq 2**63-1, clean, 2**50 bytes). Every variant is refused at the honest
   sites (``bad_ack``: site-b never signed that it stored it; ``out_of_range`` for the seq),
   logged, counted, audited; their catalog is unchanged, and a forced promotion at site-b
   restores the newest real snapshot and commits the next one.
2. Without the acknowledgement check (a real snapshot whose chunks every holder lost, deleted
   from the stores on disk while the sites were stopped), a forced promotion at site-b skips
   it (ERROR line, ``replicad_restore_skipped_total``) and restores the newest older clean one.
"""

from __future__ import annotations

import random
import time
import urllib.request
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from replicad.storage.chunkstore import ChunkStore
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_signed_commands import attack, refused, view

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HONEST = ("site-b", "site-c")


def metric(c: LocalCluster, site: str, name: str) -> float:
    """Sum of the samples of ``name`` on ``site``'s /metrics (0 when none)."""
    text = urllib.request.urlopen(urllib.request.Request(c.sites[site].admin_url + "/metrics"), timeout=10).read()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def make_cluster(root: Path, snapshots: int) -> LocalCluster:
    c = LocalCluster(root, interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 48, random.Random(11))
    c.start_all()
    c.wait_ready(60)
    img = c.sites["site-a"].volume_path(VOL)
    for i in range(snapshots):
        overwrite_blocks(img, [i + 1, 20 + i], random.Random(i))
        snapshot(c, "site-a")
    return c


def promote_at_b(c: LocalCluster) -> dict:
    return c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 90}, timeout_s=120)


def test_a_primary_cannot_commit_a_snapshot_its_holders_never_stored(tmp_path: Path) -> None:
    c = make_cluster(tmp_path / "cluster", snapshots=2)
    try:
        for s in HONEST:
            assert refused(c, s, "bad_ack") == 0 and refused(c, s, "out_of_range") == 0
        before = {s: view(c, s) for s in HONEST}
        assert sorted(before["site-b"]["catalog"]) == [1, 2]
        c.kill("site-a")
        results = attack(c, "bogus-commit", tmp_path / "attacker")
        got = {r["attempt"]: r["error"] for r in results}
        assert got == {"exact": "out_of_range", "no_ack": "bad_ack", "ack_by_own_key": "bad_ack",
                       "huge_seq_with_own_ack": "out_of_range"}, results
        time.sleep(1.0)
        for s in HONEST:
            assert view(c, s) == before[s], s  # no bogus record, no seq moved
            assert refused(c, s, "bad_ack") >= 2 and refused(c, s, "out_of_range") >= 2, s
            log = c.log_tail(s, 800)
            assert "raft command refused [bad_ack]" in log and "raft command refused [out_of_range]" in log, s
            audit = c.api(s, "GET", "/v1/audit")["audit"]
            assert sum(1 for a in audit if a["op"] == "commit_snapshot" and a["by"] == "site-a"
                       and a["error"] in ("bad_ack", "out_of_range")) >= 4, s
        # the honest pair fails over onto the newest real snapshot and goes on committing
        res = promote_at_b(c)
        assert res["restored_seq"] == 2 and res["restore"]["skipped_seqs"] == [], res
        overwrite_blocks(c.sites["site-b"].volume_path(VOL), [5], random.Random(99))
        nxt = snapshot(c, "site-b")
        assert nxt["committed"] is True and nxt["seq"] == 3 and "site-c" in nxt["holders"], nxt
        assert "Traceback" not in c.log_tail("site-b", 2000)
    finally:
        c.stop_all()


def test_a_forced_promotion_skips_a_snapshot_no_holder_can_supply(tmp_path: Path) -> None:
    c = make_cluster(tmp_path / "cluster", snapshots=3)
    try:
        snaps = {s["seq"]: s for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}
        assert sorted(snaps) == [1, 2, 3] and all(s["verdict"] == "clean" for s in snaps.values()), snaps
        lost = snaps[3]
        c.stop_all()
        root = bytes.fromhex(lost["root"])
        for site in c.sites.values():  # every holder loses snapshot 3's manifest (and so the snapshot)
            chunks = site.dir / "data" / "chunks"
            if chunks.exists():
                with ChunkStore(chunks) as store:
                    kept = {bytes(r[0]) for r in store._db.execute("SELECT digest FROM chunks")} - {root}
                    store.gc(kept, grace_ns=0)  # the manifest's bytes leave the packs too
                    assert not store.has(root)
                with ChunkStore(chunks) as store:
                    assert not store.has(root)
        for s in HONEST:  # site-a, the old primary, stays down
            c.start(s)
        c.wait_for("b and c up", lambda: all(c.status(s).get("raft", {}).get("has_quorum") for s in HONEST), 60, 0.5)
        res = promote_at_b(c)
        assert res["restored_seq"] == 2 and res["restore"]["skipped_seqs"] == [3], res
        log = c.log_tail("site-b", 2000)
        assert "ERROR" in log and "SKIPPED clean snapshot #3" in log, log[-3000:]
        assert metric(c, "site-b", "replicad_restore_skipped_total") == 1
        assert c.status("site-b")["volumes"][VOL]["role"] == "primary"
        overwrite_blocks(c.sites["site-b"].volume_path(VOL), [7], random.Random(98))
        nxt = snapshot(c, "site-b")
        assert nxt["committed"] is True and nxt["seq"] == 4 and "site-c" in nxt["holders"], nxt
        assert metric(c, "site-b", "replicad_restore_skipped_total") == 1  # never retried once primary
        assert "Traceback" not in c.log_tail("site-b", 2000)
    finally:
        c.stop_all()


def test_unsigned_lab_mode_still_commits_without_acknowledgements(tmp_path: Path) -> None:
    """``unsafe_unsigned``: receivers send no signed acknowledgement and none is checked (like
    command signatures); the primary still counts its peers as holders and commits."""
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, unsigned=True)
    write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(12))
    try:
        c.start_all()
        c.wait_ready(60)
        assert c.status("site-a")["identity"]["signed"] is False
        overwrite_blocks(c.sites["site-a"].volume_path(VOL), [1], random.Random(1))
        rep = snapshot(c, "site-a")
        assert rep["committed"] is True and set(rep["holders"]) == {"site-a", "site-b", "site-c"}, rep
    finally:
        c.stop_all()
