"""One compromised site against an honest holder's ``/v1/peer/fetch`` (real daemons, real processes).

* Memory: a process in site-a's name (its config, its data dir) opened fetches at site-b asking
  a volume's 1 MiB blocks and never read the answers: site-b grew by ~17 MiB per connection of
  64 KiB blocks and ~257 MiB per connection of 1 MiB blocks (3 batches of 64 chunks each, no
  limit), 88 -> 1633 MiB for 6 connections. Now a fetch holds at most (1 + FETCH_READ_AHEAD)
  batches of FETCH_BATCH_BYTES, at most FETCH_PER_SITE of one site are served, the rest wait
  briefly and are refused ``peer_busy``; a client that takes nothing for FETCH_SEND_STALL_S is
  cut (here 10 s: site-b runs as ``short_stall_site.py``); each refusal and cut is logged once
  naming site-a, counted, and no traceback is logged.
* A fetch asking one digest 4,096 times is refused (``duplicate_digests``).
* Confidentiality: volume ``hr`` is held only at site-b (primary) and site-c; site-a rebuilt it
  byte for byte from site-b by fetching its manifest, pages and blocks under any volume name.
  Now site-b serves a volume only to its primary and its holders in Raft, and no manifest or
  page of another volume under a volume's name (``fetch_refused``: not_holder, other_volume).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import blake3
import pytest

from replicad.lab.localcluster import LocalCluster
from replicad.peer.transport import (FETCH_BATCH_BYTES, FETCH_PER_SITE, FETCH_READ_AHEAD, FETCH_SEND_STALL_S,
                                     FETCH_WAIT_S)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20
# What site-b may grow by while site-a holds its fetches: the chunk data of FETCH_PER_SITE fetches
# (the batch being sent twice, aiohttp's buffer and ours, and FETCH_READ_AHEAD read ahead), plus a
# margin for the worker threads' read buffers and the allocator (measured: ~20 MiB with no fetch).
BOUND = FETCH_PER_SITE * (2 + FETCH_READ_AHEAD) * FETCH_BATCH_BYTES + 48 * MIB
STALL_S = 10.0
"""site-b's FETCH_SEND_STALL_S in the first test (``short_stall_site.py``; production: 30 s)."""


def status_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def metric(c: LocalCluster, site: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on ``site``'s /metrics whose labels include ``labels``."""
    text = urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def attacker(c: LocalCluster, mode: str, *args: str, timeout: float = 120) -> list[dict]:
    """Run the fetch attacker with site-a's config; its JSON lines."""
    out = subprocess.run([sys.executable, "-m", "tests.security.fetch_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), "--target", "site-b", *args],
                         capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_unread_fetches_cost_a_holder_bounded_memory_and_are_refused_by_name(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, block_size="1MiB")
    img = c.sites["site-a"].volume_path("ehr")
    img.write_bytes(random.Random(5).randbytes(48 * MIB))  # incompressible: 48 chunks of 1 MiB
    try:
        for site in c.sites:
            if site == "site-b":
                c.start(site, module="tests.security.short_stall_site", args=(str(STALL_S), "run"))
            else:
                c.start(site)
        c.wait_ready(60)
        c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {})
        c.kill("site-a")  # the attacker holds site-a now
        pid = c.sites["site-b"].proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
        before = status_of(pid)["VmRSS"]

        dup = attacker(c, "hold", "--volume", "ehr", "--image", str(img), "--connections", "1", "--hold-s", "1",
                       "--duplicates")
        assert dup[1]["status"].startswith("HTTP/1.1 400"), dup

        held = attacker(c, "hold", "--volume", "ehr", "--image", str(img), "--connections", "20",
                        "--hold-s", str(STALL_S + 5))
        assert held[0] == {"opened": 20, "digests": 48}
        served = [r for r in held[1:] if r["status"].startswith("HTTP/1.1 200")]
        busy = [r for r in held[1:] if r["busy"]]
        assert len(served) <= FETCH_PER_SITE and len(served) + len(busy) == 20, held
        peak = status_of(pid)["VmHWM"]
        print(f"site-b: RSS {before / MIB:.0f} MiB before, peak {peak / MIB:.0f} MiB while site-a held 20 fetches "
              f"(bound {BOUND / MIB:.0f} MiB of growth); {len(served)} served, {len(busy)} peer_busy")
        # before: each unread fetch held its whole 48 MiB answer (one batch of 48 chunks): ~1 GiB for 20
        assert peak - before <= BOUND, (f"site-b grew {(peak - before) / MIB:.0f} MiB while site-a held 20 fetches; "
                                        f"bound {BOUND / MIB:.0f} MiB")

        time.sleep(1.0)  # the resets of the attacker's connections are handled
        log = c.sites["site-b"].log_path.read_text(errors="replace")
        assert "Traceback" not in log
        for reason in ("duplicate_digests", "busy", "client_stalled"):
            lines = [l for l in log.splitlines() if "AUDIT" in l and "by site-a" in l and reason in l]
            assert len(lines) == 1, (reason, lines)  # once per window, not once per request
            assert metric(c, "site-b", "replicad_fetch_refused_total", requester="site-a", reason=reason) >= 1
        assert metric(c, "site-b", "replicad_fetch_refused_total", requester="site-a", reason="busy") >= \
            20 - FETCH_PER_SITE - 4  # those past the waiting places at once, the others after FETCH_WAIT_S
        assert FETCH_WAIT_S < STALL_S < FETCH_SEND_STALL_S
    finally:
        c.stop_all()


def _hr_cluster(root: Path) -> LocalCluster:
    """Volumes ehr (primary site-a, at every site) and hr (primary site-b, configured at b and c only)."""
    c = LocalCluster(root, interval="1h", min_copies=2, volumes=("ehr", "hr"))
    cfg_a = c.sites["site-a"].config_path
    cfg_a.write_text(re.sub(r'\n\[\[volumes\]\]\nname = "hr"\n.*?(?=\n\[\[volumes\]\]|\Z)', "", cfg_a.read_text(),
                            flags=re.S))
    assert 'name = "hr"' not in cfg_a.read_text()
    for s in ("site-b", "site-c"):
        p = c.sites[s].config_path
        p.write_text(re.sub(r'(name = "hr"\n(?:.*\n)*?initial_primary = )"site-a"', r'\1"site-b"', p.read_text()))
    return c


def test_a_site_cannot_read_a_volume_it_does_not_hold(tmp_path: Path) -> None:
    c = _hr_cluster(tmp_path / "cluster")
    try:
        rng = random.Random(7)
        c.sites["site-a"].volume_path("ehr").write_bytes(rng.randbytes(16 * 65536))
        hr = rng.randbytes(48 * 65536)  # the patient data only b and c may hold
        c.sites["site-b"].volume_path("hr").write_bytes(hr)
        c.start_all()
        c.wait_for("hr registered", lambda: c.status("site-c")["volumes"].get("hr", {}).get("epoch") is not None,
                   120)
        c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {})
        c.api("site-b", "POST", "/v1/volumes/hr/snapshot", {})
        (snap,) = c.api("site-b", "GET", "/v1/volumes/hr/snapshots")["snapshots"]
        hr_root = snap["root"]  # in Raft's catalog, which every member reads
        c.kill("site-a")

        img = c.sites["site-a"].volume_path("ehr")
        ehr_block = blake3.blake3(img.read_bytes()[:65536]).hexdigest()
        hr_block = blake3.blake3(hr[:65536]).hexdigest()
        own = attacker(c, "read", "--volume", "ehr", "--digest", ehr_block)  # its own volume: served
        assert own == [{"volume": "ehr", "error": None, "chunks": 1}]
        for volume, digest, reason in (("hr", hr_root, "not_holder"), ("hr", hr_block, "not_holder"),
                                       ("ehr", hr_root, "other_volume")):
            (got,) = attacker(c, "read", "--volume", volume, "--digest", digest)
            assert got == {"volume": volume, "error": "fetch_refused", "reason": reason, "chunks": 0}, got

        log = c.sites["site-b"].log_path.read_text(errors="replace")
        assert "Traceback" not in log
        for volume, reason in (("hr", "not_holder"), ("ehr", "other_volume")):
            assert any("AUDIT refused fetch of volume " + volume + " by site-a" in l and reason in l
                       for l in log.splitlines()), reason
            assert metric(c, "site-b", "replicad_fetch_refused_total", requester="site-a", reason=reason) >= 1
        assert metric(c, "site-b", "replicad_fetch_served_bytes_total", requester="site-a", volume="hr") == 0
    finally:
        c.stop_all()
