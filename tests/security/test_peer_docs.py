"""One compromised site holds an honest site's peer API with request documents it never finishes
(real daemons, mutual TLS, real processes; review F4).

Before: a process with site-c's certificate opened 128 connections to site-b, each a
``/v1/peer/fetch`` declaring 8 MiB (then ``wire.MAX_DOC_BYTES``) and sending all but the last byte:
site-b kept each partial body up to 30 s with no bound on their number, 90 -> 1207 MiB (256
connections: 2157 MiB), never given back, and logged the refusal as "by unknown site '?'". Now a
document larger than any honest one is refused before its body is read, at most DOC_PER_SITE of
one certificate's site are received at once (the rest refused at once, ``peer_busy``), a body
must arrive within DOC_RECEIVE_S, and each refusal is logged once a minute naming site-c and
counted. Meanwhile site-a's ship to site-b (missing, chunks, snapshot) commits and its fetch from
site-b is served.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import blake3
import pytest

from replicad.config import load_config
from replicad.lab.localcluster import LocalCluster
from replicad.peer.tls import client_context
from replicad.peer.transport import DOC_LIMITS, DOC_PER_SITE, DOC_RECEIVE_S, PeerClient
from tests.security.test_fetch_flood import metric, status_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20
CONNECTIONS = 128
# What site-b may grow by while site-c keeps CONNECTIONS connections open, each an unfinished
# document: the bodies of its DOC_PER_SITE places (DOC_LIMITS["fetch"] each, as much again in
# aiohttp's buffer), and per TLS connection open at once the buffers asyncio and OpenSSL fill
# before any handler runs (a 256 KiB read buffer, an incoming BIO up to 256 KiB, aiohttp's
# 128 KiB and the allocator's slack; measured: peaks of 97-150 MiB for 128 connections that
# reconnect at once when refused, at load 6-8), and a margin for the honest ship and fetch
# meanwhile. Before: ~8 MiB per connection and growing while held (+553 MiB after 5 s here).
BOUND = DOC_PER_SITE * 2 * DOC_LIMITS["fetch"] + CONNECTIONS * 5 * 2**18 + 48 * MIB


def attack(c: LocalCluster, declared: int, hold_s: float) -> subprocess.Popen:
    """Start the document attacker with site-c's config (its certificate) against site-b."""
    return subprocess.Popen([sys.executable, "-m", "tests.security.doc_attacker", "--config",
                             str(c.sites["site-c"].config_path), "--target", "site-b", "--route", "fetch",
                             "--declared", str(declared), "--connections", str(CONNECTIONS), "--hold-s", str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def finished(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def honest_fetch(c: LocalCluster, digest: bytes) -> int:
    """site-a's own client (its certificate) fetches ``digest`` of ehr from site-b: chunks received."""
    cfg = load_config(c.sites["site-a"].config_path)
    (b,) = [s for s in cfg.sites if s.site_id == "site-b"]

    async def run() -> int:
        assert cfg.tls is not None
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(cfg.tls))) as session:
            client = PeerClient(session, "site-a")
            return sum([len(f) async for f in client.fetch_frames(str(b.peer_url).rstrip("/"), "ehr", 0, [digest])])
    return asyncio.run(run())


def test_unfinished_documents_of_one_site_cost_bounded_memory_and_honest_traffic_passes(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, tls=True)
    img = c.sites["site-a"].volume_path("ehr")
    img.write_bytes(random.Random(3).randbytes(4 * MIB))
    try:
        c.start_all()
        c.wait_ready(90)
        c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {})  # the ship's own memory before the baseline
        c.kill("site-c")  # the attacker holds site-c now: its certificate, key and config
        time.sleep(1.0)
        pid = c.sites["site-b"].proc.pid
        before = status_of(pid)["VmRSS"]
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on

        # the attack of the review: 8 MiB declared, refused before any body byte is read
        large = finished(attack(c, 8 * MIB, 3.0))
        assert not [k for k in large if k.startswith("200")], large  # refused (and cut) while still sending
        grown = status_of(pid)["VmHWM"] - before
        assert grown <= BOUND, f"site-b grew {grown / MIB:.0f} MiB under 8 MiB documents; bound {BOUND / MIB:.0f} MiB"
        assert metric(c, "site-b", "replicad_peer_doc_refused_total", peer="site-c", route="fetch",
                      reason="doc_too_large") >= 1

        # the most an attacker can hold now: bodies of the largest honest size, one byte short
        proc = attack(c, DOC_LIMITS["fetch"], DOC_RECEIVE_S + 3)
        peak_during = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak_during[0] = max(peak_during[0], status_of(pid)["VmRSS"])
                time.sleep(0.2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(3.0)  # the attacker holds its places, the rest of its connections are refused
        assert proc.poll() is None
        # honest traffic meanwhile: site-a's snapshot needs site-b's "stored" (site-c is down) ...
        with open(img, "r+b") as f:
            f.write(random.Random(4).randbytes(MIB))
        c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {})
        snaps = c.api("site-a", "GET", "/v1/volumes/ehr/snapshots")["snapshots"]
        assert len(snaps) == 2 and "site-b" in snaps[-1]["holders"], snaps
        # ... and site-a's fetch from site-b is served
        block = blake3.blake3(img.read_bytes()[:65536]).digest()
        assert honest_fetch(c, block) == 1
        held = finished(proc)
        stop.set()
        sampler.join()
        peak = max(peak_during[0], status_of(pid)["VmHWM"])
        time.sleep(2.0)
        after = status_of(pid)["VmRSS"]
        print(f"site-b RSS: {before / MIB:.0f} MiB before, peak {peak / MIB:.0f} MiB while site-c held "
              f"{CONNECTIONS} unfinished documents, {after / MIB:.0f} MiB after (bound {BOUND / MIB:.0f} MiB of "
              f"growth); attacker: {held}")
        assert not [k for k in held if k.startswith("200")], held
        assert held.get("503:doc_busy", 0) >= 1 and held.get("400:doc_too_slow", 0) >= 1, held
        assert peak - before <= BOUND, f"site-b grew {(peak - before) / MIB:.0f} MiB; bound {BOUND / MIB:.0f} MiB"
        assert after - before <= BOUND  # what stays is the allocator's, not documents'

        assert honest_fetch(c, block) == 1  # and after
        log = c.sites["site-b"].log_path.read_text(errors="replace")
        assert "Traceback" not in log
        assert "unknown site '?'" not in log
        for reason in ("doc_too_large", "doc_busy_per_site", "doc_too_slow"):
            lines = [l for l in log.splitlines() if "AUDIT refused fetch documents of site 'site-c'" in l and
                     reason in l]
            refused = metric(c, "site-b", "replicad_peer_doc_refused_total", peer="site-c", route="fetch",
                             reason=reason)
            assert 1 <= len(lines) <= 2 and refused >= len(lines), (reason, refused, lines)  # once a minute
        assert metric(c, "site-b", "replicad_peer_doc_refused_total", peer="site-c", route="fetch",
                      reason="doc_busy_per_site") >= max(held["503:doc_busy"], 100)  # not a line per refusal
        assert metric(c, "site-b", "replicad_peer_doc_refused_total", peer="site-a") == 0
    finally:
        c.stop_all()
