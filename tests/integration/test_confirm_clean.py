"""Confirming a clean snapshot (a tryout's finding): ``replicad verdict VOL SEQ clean`` on a clean
snapshot no site marked is a person's confirmation, a request another site approves; approved,
the snapshot is confirmed and the next snapshot's slow windows measure from it; asked again it
says it is confirmed already and changes nothing; a site withdrawing its own mark is told so, and
the "newest clean snapshot" warning is given only when no newer clean snapshot exists (real
daemons, the real CLI)."""

from __future__ import annotations

import random
import re

import pytest

from replicad.lab.localcluster import NO_FLOOR_TOML

from .conftest import VOL, overwrite_blocks
from .test_operator_cli import cli, flat

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_confirming_a_clean_snapshot_moves_the_slow_windows_anchor(cluster_factory) -> None:
    c = cluster_factory(n_blocks=64, interval="3650d", extra_site_toml=NO_FLOOR_TOML)
    img = c.sites["site-a"].volume_path(VOL)
    rng = random.Random(3)
    for seq in (1, 2):
        if seq > 1:
            overwrite_blocks(img, [seq], rng)
        assert cli(c, "site-a", "snapshot", VOL).returncode == 0

    res = cli(c, "site-a", "verdict", VOL, "2", "clean", "--reason", "reviewed the archive job")
    m = re.search(r"request (r\d+) is pending \(mark_verdict ehr\)", flat(res))
    assert res.returncode == 0 and m and "#2 confirmed by a person: false -> true" in flat(res), flat(res)
    assert "is now clean" not in flat(res)
    res = cli(c, "site-b", "approve", m.group(1))
    assert res.returncode == 0 and "applied" in flat(res), flat(res)
    c.wait_for("#2 confirmed", lambda: c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots/2/evidence")
               .get("confirmed"), 30)

    # asked again: said as a no-op, no request
    res = cli(c, "site-a", "verdict", VOL, "2", "clean")
    assert res.returncode == 0 and "ehr#2 is already confirmed clean by a person" in flat(res) \
        and "nothing changed" in flat(res) and "request" not in res.stdout, flat(res)

    # the next snapshot's slow windows measure from #2
    overwrite_blocks(img, [7], rng)
    assert cli(c, "site-a", "snapshot", VOL).returncode == 0
    slow = c.wait_for("#3 judged at site-a", lambda: (c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots/3/evidence")
                                                      .get("here") or {}).get("slow"), 60)
    assert slow.get("anchor") == 2, slow

    # a site's own mark withdrawn; #3 suspect by three sites' marks; #2 is newer than #1 and clean
    assert cli(c, "site-a", "verdict", VOL, "1", "suspect", "--reason", "checking").returncode == 0
    for site in ("site-a", "site-b", "site-c"):
        assert cli(c, site, "verdict", VOL, "3", "suspect", "--reason", "odd writes").returncode == 0
    c.wait_for("#3 suspect at site-a", lambda: next(s for s in c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")
                                                     ["snapshots"] if s["seq"] == 3)["verdict"] == "suspect", 30)
    res = cli(c, "site-a", "verdict", VOL, "1", "clean")
    out = flat(res)
    assert res.returncode == 0 and "ehr#1: this site's suspect mark withdrawn" in out, out
    assert "newer suspect snapshots remain (3)" in out and "newest clean snapshot" not in out, out
