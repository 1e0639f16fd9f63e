"""The default restore uses the takeover's filter (review R7, F1): a snapshot the cluster calls
clean but a person at this site marked suspect is passed over here, and the snapshot before it
is restored (real daemons, real files). Before, the default took the cluster's newest clean one.
The same filter refuses the marked snapshot as a named restore point of a forced promotion here
(before: only this site's opinion was checked) and picks the one before as the default point of
``promote --instant``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from replicad.core.errors import SnapshotSuspectError
from tests.integration.conftest import VOL, overwrite_blocks, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_mark_here_makes_the_default_restore_take_the_snapshot_before(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory(n_blocks=48)
    img = c.sites["site-a"].volume_path(VOL)
    first = snapshot(c, "site-a")
    assert first["committed"], first
    before = img.read_bytes()
    overwrite_blocks(img, [4, 7], random.Random(2))  # a benign edit: the cluster calls the next one clean
    second = snapshot(c, "site-a")
    assert second["committed"] and second["seq"] > first["seq"], second
    assert img.read_bytes() != before
    res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/snapshots/{second['seq']}/verdict",
                {"verdict": "suspect", "reason": "ransom note seen here"})
    assert res["cluster_verdict"] == "clean" and res["suspect_sites"] == ["site-b"], res
    listed = {s: c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots") for s in ("site-b", "site-c")}
    shown = {s: {x["seq"]: x.get("held_here") for x in doc["snapshots"]} for s, doc in listed.items()}
    assert "marked" in shown["site-b"][second["seq"]] and shown["site-b"][first["seq"]] is None, shown
    assert listed["site-b"]["restore_default_here"] == first["seq"], listed["site-b"]  # what the operator sees
    assert not any(shown["site-c"].values()) and listed["site-c"]["restore_default_here"] == second["seq"], shown

    at_b = c.api("site-b", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(tmp_path / "b.img")})
    assert at_b["seq"] == first["seq"] and at_b["verified"], at_b
    assert list(at_b["held_here"]) == [str(second["seq"])] and "marked" in at_b["held_here"][str(second["seq"])]
    assert (tmp_path / "b.img").read_bytes() == before
    assert "the default restore passes over" in c.log_tail("site-b", 400)
    at_c = c.api("site-c", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(tmp_path / "c.img")})
    assert at_c["seq"] == second["seq"] and "held_here" not in at_c, at_c  # no mark at site-c
    assert (tmp_path / "c.img").read_bytes() == img.read_bytes()

    c.kill("site-a")  # the primary is gone: site-b takes the volume over
    epoch = c.api("site-b", "GET", "/v1/volumes")["volumes"][VOL]["epoch"]
    with pytest.raises(SnapshotSuspectError) as named:
        c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "snapshot": second["seq"]})
    assert "marked" in str(named.value), named.value
    assert c.api("site-b", "GET", "/v1/volumes")["volumes"][VOL]["epoch"] == epoch  # refused before proposing
    res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "instant": True})
    assert res["epoch"] == epoch + 1 and res["instant"]["seq"] == first["seq"], res
