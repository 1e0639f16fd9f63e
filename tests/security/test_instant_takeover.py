"""One site cannot take a volume from an honest site's instant recovery (threat model: one site,
its keys and tokens), with real daemons, a real attacker process and a real NBD client.

site-a is the attacker: a real process holding site-a's config and its own site key that runs
site-a's Raft member (``command_attacker.py take-instant``). site-b took the volume over with
``promote --force --instant``; its image is immutable (``chattr +i``), so the copy cannot finish
and the application's writes live only in the instant overlay. The application (``qemu-io``)
writes and FLUSHes 64 KiB.

Before: the attacker's one forced role change of the hour, a forced promotion of itself, was
granted; site-b was fenced (its export closed under the application) and, when made primary
again for the same snapshot, set its overlay aside because another primary was in between: the
application's acknowledged writes out of service, recoverable by hand only. Now the promotion
that started the instant recovery recorded it in the Raft state, and until site-b's first commit
at that epoch a forced promotion or demotion by another site is refused (``approval_required``,
``instant_recovery``), logged and counted at every site; its request waits for an approval no
honest site gives. site-b keeps serving: the export reads back the snapshot plus the write, byte
for byte; once the copy can finish, the image holds them too, and site-b's first snapshot ends
the hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, snapshot
from tests.security.test_history import metric
from tests.security.test_instant_forced_demote import (REPO, WRITE, _chattr, _env, _instant,  # noqa: F401
                                                       _instant_takeover_with_a_write, pytestmark)

HONEST = ("site-b", "site-c")


def _attacker(c: LocalCluster, work: Path, mode: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "tests.security.command_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), "--work-dir", str(work), "--volume", VOL],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _export_bytes(uri: str, dest: Path) -> bytes:
    """Every byte the instant export serves now, read by a real NBD client (qemu-img)."""
    res = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(dest)], capture_output=True,
                         text=True, env=_env(), timeout=120)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return dest.read_bytes()


def test_one_site_cannot_take_the_volume_from_an_instant_recovery(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "c", interval="1h", min_copies=2, apply_delay="1h")
    held = c.sites["site-b"].volume_path(VOL)
    try:
        res = _instant_takeover_with_a_write(c, held)
        epoch, seq = res["epoch"], res["instant"]["seq"]
        # the snapshot site-b serves is site-a's image when it was taken (site-a's daemon is down since)
        expected = WRITE + c.sites["site-a"].volume_path(VOL).read_bytes()[len(WRITE):]

        lines = _attacker(c, tmp_path / "attacker", "take-instant")
        tries = [(x["attempt"], x["error"], x.get("refusal")) for x in lines]
        assert tries == [("promote_self", "approval_required", "instant_recovery"),
                         ("promote_self_instant", "approval_required", "instant_recovery"),
                         ("demote", "approval_required", "instant_recovery"),
                         ("request", "ok", None)], lines  # before: ("promote_self", "ok", None), site-b fenced
        assert all((x["epoch"], x["primary"]) == (epoch, "site-b") for x in lines[:3]), lines
        assert lines[3]["status"] == "pending" and lines[3]["needed"] == 2, lines

        # site-b still serves the application: not fenced, the snapshot plus its write, byte for byte
        st = _instant(c, "site-b")
        assert st["phase"] in ("serving", "copying") and st["epoch"] == epoch, st
        assert _export_bytes(res["instant"]["uri"], tmp_path / "served.img") == expected
        # what the attacker did: logged and counted at every honest site; its request waits
        for s in HONEST:
            assert metric(c, s, "replicad_command_refused_total", reason="instant_recovery") == 3, s
            log = c.log_tail(s, 3000)
            assert "raft command refused [instant_recovery]: command promote by 'site-a'" in log, (s, log[-3000:])
            req = next(r for r in c.api(s, "GET", "/v1/requests")["requests"] if r["id"] == lines[3]["request"])
            assert req["status"] == "pending" and req["approvals"] == ["site-a"], req
            vol = c.api(s, "GET", "/v1/volumes")["volumes"][VOL]
            assert vol["primary"] == "site-b" and vol["instant"]["site"] == "site-b", vol

        # the copy can finish: the switch-over merges the overlay; the image holds the write
        _chattr("-i", held)
        c.wait_for("site-b switched over and acts as primary", lambda: (s := _instant(c, "site-b"))
                   and s["phase"] == "done" and c.status("site-b")["volumes"][VOL]["role"] == "primary", 180)
        assert held.read_bytes() == expected
        assert not list((c.sites["site-b"].dir / "data" / "instant").glob(f"{VOL}.stale-*"))  # nothing set aside
        # site-b's first snapshot at its epoch holds the writes at two sites: the hold ends
        first = snapshot(c, "site-b")
        assert first["committed"], first
        c.wait_for("the instant recovery's hold ended everywhere", lambda: all(
            "instant" not in c.api(s, "GET", "/v1/volumes")["volumes"][VOL] for s in HONEST), 60)
        assert first["seq"] > seq
    finally:
        if held.exists():
            subprocess.run(["chattr", "-i", str(held)], env=_env(), capture_output=True, timeout=30)
        c.stop_all()
