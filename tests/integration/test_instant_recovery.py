"""``replicad promote VOL --force --instant`` with real daemons and real NBD clients (issue 16, item 1).

A three-site cluster (real processes on loopback) loses its primary. site-b is promoted with
``--instant``: the command returns as soon as site-b serves the snapshot as a writable NBD
export on a unix socket, while the volume's image is written in the background.

The background copy is held deterministically by the file system itself: site-b's image file
is made immutable (``chattr +i``: even root's writes fail with EPERM), so the takeover's
restore fails and is retried while the export serves. Meanwhile: ``qemu-img compare`` of the
export against the snapshot's bytes; ``qemu-io`` writes (whole and partial blocks, a FLUSH);
the export refuses to close; ``kill -9`` of site-b; restart; the overlay is re-attached from
the durable record and the flushed writes read back; more writes. Then the image is released
(``chattr -i``): the copy completes (O5), the switch-over copies the overlay into the image,
the same export serves the image; the image holds snapshot + every write; the first snapshot
the new primary takes holds them too.
"""

from __future__ import annotations

import json
import os
import re
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from replicad.core.errors import ApprovalRequiredError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import BLOCK, VOL, snapshot, write_image

TOOLS = ("qemu-img", "qemu-io", "chattr")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420),
              pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root"),
              pytest.mark.skipif(any(shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
                                     for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (scripts/setup.sh)")]

N_BLOCKS = 160  # 10 MiB


def _env() -> dict:
    return dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin", PYTHONPATH=str(Path.cwd()))


def _qemu_io(uri: str, *commands: str, readonly: bool = False) -> subprocess.CompletedProcess:
    cmd = ["qemu-io", "-f", "raw"] + (["-r"] if readonly else [])
    for c in commands:
        cmd += ["-c", c]
    return subprocess.run(cmd + [uri], capture_output=True, text=True, env=_env(), timeout=60)


def _compare(a: str, b: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", a, b], capture_output=True, text=True,
                          env=_env(), timeout=120)


def _instant(c: LocalCluster, site: str) -> dict | None:
    return c.status(site)["volumes"][VOL].get("instant")


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, env=_env(), capture_output=True, timeout=30)


def test_instant_promotion_serves_at_once_and_keeps_every_flushed_write(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="ri", dir="/tmp"))  # short: unix socket paths stay under 108 bytes
    c = LocalCluster(root / "c", interval="1h", min_copies=2, apply_delay="1h")  # replicas keep no standby image
    held = c.sites["site-b"].volume_path(VOL)
    try:
        write_image(c.sites["site-a"].volume_path(VOL), N_BLOCKS, random.Random(7))
        c.start_all()
        c.wait_ready(60)
        snap = snapshot(c, "site-a")
        assert snap["committed"] and snap["verdict"] == "clean", snap
        ref = root / "snapshot.img"  # the snapshot's bytes, as the primary had them
        shutil.copyfile(c.sites["site-a"].volume_path(VOL), ref)
        expected = bytearray(ref.read_bytes())
        c.wait_for("site-b holds the snapshot", lambda: any(
            s["seq"] == snap["seq"] and "site-b" in s["holders"]
            for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 60)
        c.kill("site-a")
        held.write_bytes(b"")
        _chattr("+i", held)  # the background copy cannot write the image until released

        p = subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites["site-b"].admin_url, "--json",
                            "promote", VOL, "--force", "--instant"], capture_output=True, text=True, env=_env(),
                           timeout=180)
        assert p.returncode == 0, (p.stdout, p.stderr)
        res = json.loads(p.stdout)
        inst = res["instant"]
        assert res["primary"] == "site-b" and res["ready"] is True and res["restored_seq"] == snap["seq"], res
        assert inst["phase"] == "copying" and inst["seq"] == snap["seq"], inst
        uri, sock = inst["uri"], inst["socket"]

        # reads: the snapshot's bytes, verified chunks from the store
        cmp = _compare(str(ref), uri)
        assert cmp.returncode == 0, (cmp.stdout, cmp.stderr)
        st = _instant(c, "site-b")
        assert st["phase"] == "copying" and st["first_read_after_s"] is not None, st
        assert c.status("site-b")["volumes"][VOL]["role"] == "restoring"  # not the plain image yet: no snapshot

        # writes during the copy: a whole block, a partial one across a block boundary, then FLUSH
        w = _qemu_io(uri, "write -P 0xab 131072 65536", "write -P 0xcd 200000 70000", "flush")
        assert w.returncode == 0 and "error" not in w.stdout.lower(), (w.stdout, w.stderr)
        expected[131072:131072 + 65536] = b"\xab" * 65536
        expected[200000:200000 + 70000] = b"\xcd" * 70000
        with pytest.raises(Exception) as refused:  # the overlay is the only copy of those writes
            c.api("site-b", "DELETE", f"/v1/exports/{inst['export_id']}")
        assert "instant recovery" in str(refused.value), refused.value
        # an operator's retry of the promotion: refused, the epoch stays, the export keeps serving
        # (a second grant fenced the first and tore the export down)
        again = subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites["site-b"].admin_url, "promote",
                                VOL, "--force", "--instant"], capture_output=True, text=True, env=_env(), timeout=180)
        assert again.returncode == 4 and "already the primary" in again.stderr \
            and "instant export serves it" in again.stderr, (again.stdout, again.stderr)
        assert c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["epoch"] == res["epoch"]
        r = _qemu_io(uri, "read -P 0xab 131072 65536", readonly=True)
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, (r.stdout, r.stderr)

        # kill -9 during the background copy; the restart re-attaches the overlay from its record
        c.kill("site-b")
        c.start("site-b")
        st = c.wait_for("the instant export re-attached", lambda: (s := _instant(c, "site-b")) and s["resumed"]
                        and s["phase"] == "copying" and os.path.exists(sock) and s, 120)
        assert st["socket"] == sock and st["overlay_blocks"] == 3, st  # blocks 2, 3, 4 written
        r = _qemu_io(uri, "read -P 0xab 131072 65536", "read -P 0xcd 200000 70000", readonly=True)
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, (r.stdout, r.stderr)
        w = _qemu_io(uri, "write -P 0x5e 1048576 4096", "flush")  # a write after the restart
        assert w.returncode == 0, (w.stdout, w.stderr)
        expected[1048576:1048576 + 4096] = b"\x5e" * 4096
        (root / "expected.img").write_bytes(expected)
        cmp = _compare(str(root / "expected.img"), uri)
        assert cmp.returncode == 0, (cmp.stdout, cmp.stderr)

        # release the image: the copy completes (O5), the switch-over writes the overlay into it
        _chattr("-i", held)
        st = c.wait_for("the switch-over", lambda: (s := _instant(c, "site-b")) and s["phase"] == "done" and s, 180)
        assert st["overlay_blocks"] == 4 and st["switched_after_s"] is not None, st
        vol = c.wait_for("site-b primary", lambda: (v := c.status("site-b")["volumes"][VOL])["role"] == "primary"
                         and v, 60)
        assert vol["acting_epoch"] == res["epoch"], vol
        assert held.read_bytes() == bytes(expected)  # snapshot + every flushed write, in the plain image
        # the record stays, in done: the export is served (after a restart too) until released
        assert json.loads((c.sites["site-b"].dir / "data" / "instant" / VOL / "record.json").read_text())["phase"] \
            == "done"
        assert not (c.sites["site-b"].dir / "data" / "instant" / VOL / "overlay").exists()  # applied, removed

        # the same export serves the image now: a write through it lands in the image file
        w = _qemu_io(uri, "write -P 0x77 0 65536", "flush")
        assert w.returncode == 0, (w.stdout, w.stderr)
        expected[0:65536] = b"\x77" * 65536
        assert held.read_bytes() == bytes(expected)

        # the new primary's first snapshot holds the application's writes
        after = snapshot(c, "site-b")
        assert after["committed"], after
        e = c.api("site-b", "POST", f"/v1/volumes/{VOL}/exports", {"snapshot": after["seq"]})
        try:
            (root / "expected.img").write_bytes(expected)
            cmp = _compare(str(root / "expected.img"), e["uri"])
            assert cmp.returncode == 0, (cmp.stdout, cmp.stderr)
        finally:
            c.api("site-b", "DELETE", f"/v1/exports/{e['export_id']}")
        closed = c.api("site-b", "DELETE", f"/v1/exports/{inst['export_id']}")  # done: it may close now
        assert closed["closed"] is True
        assert not (c.sites["site-b"].dir / "data" / "instant" / VOL).exists()  # released: the record went
        with urllib.request.urlopen(c.sites["site-b"].admin_url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert 'replicad_instant_recovery_phase{phase="done",site="site-b",volume="ehr"} 1.0' in metrics, \
            [m for m in metrics.splitlines() if "instant" in m]
        assert 'replicad_instant_recovery_progress_ratio{site="site-b",volume="ehr"} 1.0' in metrics
        assert re.search(r'replicad_instant_recovery_first_read_seconds\{site="site-b",volume="ehr"\} [0-9.]+', metrics)
    finally:
        if held.exists():
            subprocess.run(["chattr", "-i", str(held)], env=_env(), capture_output=True, timeout=30)
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)


FS_TOOLS = ("nbdfuse", "fusermount3", "losetup", "mount", "umount", "mke2fs", "debugfs", "e2fsck")


@pytest.mark.skipif(any(shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
                        for t in FS_TOOLS), reason=f"needs {', '.join(FS_TOOLS)} (scripts/setup.sh)")
def test_ext4_on_the_instant_export_is_mounted_written_and_kept_through_the_switch_over(tmp_path: Path) -> None:
    """How an application attaches: nbdfuse makes the export a file, a loop device a block device,
    the kernel's ext4 mounts it read-write. A file written (fsync) during the copy and one written
    after the switch-over are in the volume's image afterwards; the mount never noticed."""
    root = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))
    c = LocalCluster(root / "c", interval="1h", min_copies=2, apply_delay="1h")
    held = c.sites["site-b"].volume_path(VOL)
    fuse, mnt, pidfile = root / "fuse", root / "mnt", root / "nbdfuse.pid"
    nbdfuse: subprocess.Popen | None = None
    loop = None
    try:
        tree = root / "tree"
        tree.mkdir()
        (tree / "chart.txt").write_bytes(b"patient 7: stable\n" * 500)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(tree),
                        str(c.sites["site-a"].volume_path(VOL)), "16M"], check=True, env=_env(), capture_output=True)
        c.start_all()
        c.wait_ready(60)
        snap = snapshot(c, "site-a")
        assert snap["committed"], snap
        c.wait_for("site-b holds the snapshot", lambda: any(
            s["seq"] == snap["seq"] and "site-b" in s["holders"]
            for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 60)
        c.kill("site-a")
        held.write_bytes(b"")
        _chattr("+i", held)  # hold the background copy while the application works on the export
        res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "instant": True})
        uri = res["instant"]["uri"]

        fuse.mkdir()
        mnt.mkdir()
        nbdfuse = subprocess.Popen(["nbdfuse", "-P", str(pidfile), str(fuse / "image"), uri], env=_env(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        c.wait_for("nbdfuse serving", lambda: pidfile.exists() or nbdfuse.poll() is not None, 30)
        assert nbdfuse.poll() is None, nbdfuse.stderr.read() if nbdfuse.stderr else ""
        loop = subprocess.run(["losetup", "--find", "--show", str(fuse / "image")], check=True, env=_env(),
                              capture_output=True, text=True, timeout=60).stdout.strip()
        subprocess.run(["mount", "-t", "ext4", loop, str(mnt)], check=True, env=_env(), capture_output=True,
                       timeout=60)
        assert (mnt / "chart.txt").read_bytes() == b"patient 7: stable\n" * 500
        during = b"admitted during the copy\n" * 3000
        with open(mnt / "during.txt", "wb") as f:
            f.write(during)
            f.flush()
            os.fsync(f.fileno())  # ext4 journal commit -> loop flush -> FUSE fsync -> NBD FLUSH
        os.sync()
        assert _instant(c, "site-b")["phase"] == "copying"

        _chattr("-i", held)
        c.wait_for("the switch-over", lambda: (s := _instant(c, "site-b")) and s["phase"] == "done", 180)
        after = b"written after the switch-over\n" * 2000
        with open(mnt / "after.txt", "wb") as f:  # the same mount, the same export: now the image itself
            f.write(after)
            f.flush()
            os.fsync(f.fileno())
        assert (mnt / "during.txt").read_bytes() == during
        subprocess.run(["umount", str(mnt)], check=True, env=_env(), capture_output=True, timeout=60)
        subprocess.run(["losetup", "-d", loop], check=True, env=_env(), capture_output=True, timeout=60)
        loop = None
        # the loop device lets go of its backing file asynchronously: fusermount3 may find it busy first
        c.wait_for("the FUSE file released", lambda: subprocess.run(
            ["fusermount3", "-u", str(fuse)], env=_env(), capture_output=True, timeout=60).returncode == 0, 60,
            interval_s=0.5)
        nbdfuse.wait(timeout=30)

        # the plain image holds the file system with both files, consistent
        fsck = subprocess.run(["e2fsck", "-fn", str(held)], env=_env(), capture_output=True, text=True, timeout=60)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        for name, data in (("during.txt", during), ("after.txt", after), ("chart.txt", b"patient 7: stable\n" * 500)):
            cat = subprocess.run(["debugfs", "-R", f"cat /{name}", str(held)], env=_env(), capture_output=True,
                                 timeout=60)
            assert cat.stdout == data, (name, cat.stderr[-300:])
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], env=_env(), capture_output=True, timeout=60)
        if loop:
            subprocess.run(["losetup", "-d", loop], env=_env(), capture_output=True, timeout=60)
        if nbdfuse is not None and nbdfuse.poll() is None:
            subprocess.run(["fusermount3", "-u", str(fuse)], env=_env(), capture_output=True, timeout=60)
            try:
                nbdfuse.wait(timeout=20)
            except subprocess.TimeoutExpired:
                nbdfuse.kill()  # by PID: the process this test started
                nbdfuse.wait(timeout=10)
        if held.exists():
            subprocess.run(["chattr", "-i", str(held)], env=_env(), capture_output=True, timeout=30)
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _promote_c_over_an_instant_b(c: LocalCluster) -> dict:
    """site-c's forced promotion while site-b's instant recovery holds the volume (until site-b's
    first commit at its epoch, ``state.instant_recovery``): a request, approved at site-b. Returns
    the promotion's result."""
    with pytest.raises(ApprovalRequiredError) as err:
        c.api("site-c", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 5}, timeout_s=60)
    assert err.value.evidence["refusal"] == "instant_recovery", err.value.evidence
    done = c.api("site-b", "POST", f"/v1/requests/{err.value.evidence['request']}/approve", {})
    assert done["status"] == "applied", done
    return done["result"]


def test_a_site_fenced_during_its_instant_recovery_stops_serving_and_keeps_the_writes(tmp_path: Path) -> None:
    """site-b serves an instant recovery whose copy cannot finish; the operators then promote
    site-c by force (a request site-b's operator approves: the instant recovery holds the volume
    otherwise). site-b never acted at its epoch (the volume loop has nothing to fence),
    yet its export must stop taking writes for a volume it no longer owns: it closes, the
    overlay and its record stay on disk (never applied), status says ``fenced``."""
    root = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    c = LocalCluster(root / "c", interval="1h", min_copies=2, apply_delay="1h")
    held = c.sites["site-b"].volume_path(VOL)
    try:
        write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(9))
        c.start_all()
        c.wait_ready(60)
        snap = snapshot(c, "site-a")
        assert snap["committed"], snap
        c.wait_for("site-b and site-c hold the snapshot", lambda: any(
            s["seq"] == snap["seq"] and {"site-b", "site-c"} <= set(s["holders"])
            for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 60)
        c.kill("site-a")
        held.write_bytes(b"")
        _chattr("+i", held)
        res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "instant": True})
        uri, sock = res["instant"]["uri"], res["instant"]["socket"]
        w = _qemu_io(uri, "write -P 0x42 0 65536", "flush")
        assert w.returncode == 0, (w.stdout, w.stderr)

        done = _promote_c_over_an_instant_b(c)
        assert done["primary"] == "site-c" and done["epoch"] > res["epoch"], done
        st = c.wait_for("site-b's instant export fenced", lambda: (s := _instant(c, "site-b")) and
                        s["phase"] == "fenced" and s, 60)
        assert not os.path.exists(sock), st
        r = _qemu_io(uri, "read 0 4096", readonly=True)
        assert r.returncode != 0  # nothing listens any more
        overlay = c.sites["site-b"].dir / "data" / "instant" / VOL
        assert json.loads((overlay / "record.json").read_text())["epoch"] == res["epoch"]
        assert (overlay / "overlay" / "overlay.img").read_bytes()[:65536] == b"\x42" * 65536  # kept, not applied
        assert c.status("site-c")["volumes"][VOL]["role"] == "primary"
    finally:
        if held.exists():
            subprocess.run(["chattr", "-i", str(held)], env=_env(), capture_output=True, timeout=30)
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def test_after_the_switch_over_the_export_is_served_again_after_a_restart_until_released(tmp_path: Path) -> None:
    """After the switch-over the instant export is the application's disk: a clean stop of the
    site (SIGTERM, as systemctl restart) with a client connected is logged at WARNING; the start
    serves the export again on the same socket, on the image, with a write made before the stop
    in it; the client (qemu's, with reconnect-delay) reconnects and goes on in the same process.
    ``replicad export --close instant-VOL`` releases it: the next start does not serve it."""
    root = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    c = LocalCluster(root / "c", interval="1h", min_copies=2, apply_delay="1h")
    held = c.sites["site-b"].volume_path(VOL)
    client: subprocess.Popen | None = None
    try:
        write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(11))
        c.start_all()
        c.wait_ready(60)
        snap = snapshot(c, "site-a")
        assert snap["committed"], snap
        c.wait_for("site-b holds the snapshot", lambda: any(
            s["seq"] == snap["seq"] and "site-b" in s["holders"]
            for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 60)
        expected = bytearray(c.sites["site-a"].volume_path(VOL).read_bytes())
        c.kill("site-a")
        res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "instant": True})
        uri, sock, export_id = res["instant"]["uri"], res["instant"]["socket"], res["instant"]["export_id"]
        c.wait_for("the switch-over", lambda: (s := _instant(c, "site-b")) and s["phase"] == "done", 180)
        c.wait_for("site-b primary", lambda: c.status("site-b")["volumes"][VOL]["role"] == "primary", 60)
        w = _qemu_io(uri, "write -P 0x3c 65536 65536", "flush")  # through the export, into the image
        assert w.returncode == 0, (w.stdout, w.stderr)
        expected[65536:131072] = b"\x3c" * 65536
        record = c.sites["site-b"].dir / "data" / "instant" / VOL / "record.json"
        assert json.loads(record.read_text())["phase"] == "done"  # kept: the export is served until released

        # an application's NBD client made to reconnect (qemu's reconnect-delay), connected at the stop
        client = subprocess.Popen(["qemu-io", "--image-opts", f"driver=raw,file.driver=nbd,file.server.type=unix,"
                                   f"file.server.path={sock},file.reconnect-delay=120"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=_env())
        client.stdin.write("read -P 0x3c 65536 65536\n")
        client.stdin.flush()
        c.wait_for("the client connected", lambda: any(e["connections"] for e in c.api(
            "site-b", "GET", "/v1/exports")["exports"] if e["export_id"] == export_id), 60)
        c.kill("site-b", signal.SIGTERM)
        log_text = c.sites["site-b"].log_path.read_text(errors="replace")
        assert re.search(r"WARNING .*stops while 1 NBD client\(s\) are connected to " + export_id, log_text), \
            c.log_tail("site-b")

        c.start("site-b")
        st = c.wait_for("the instant export served again", lambda: (s := _instant(c, "site-b")) and s["resumed"]
                        and s["phase"] == "done" and s["socket"] == sock and os.path.exists(sock) and s, 120)
        # the same client process, reconnected: a write and a read through it
        out, _ = client.communicate("write -P 0x3e 8192 4096\nflush\nread -P 0x3e 8192 4096\nquit\n", timeout=180)
        client = None
        assert "Pattern verification failed" not in out and "error" not in out.lower(), out
        assert out.count("read 65536/65536") == 1 and "wrote 4096/4096" in out and "read 4096/4096" in out, out
        expected[8192:12288] = b"\x3e" * 4096
        (root / "expected.img").write_bytes(expected)
        cmp = _compare(str(root / "expected.img"), uri)  # the image, with the writes before and after the stop
        assert cmp.returncode == 0, (cmp.stdout, cmp.stderr)
        w = _qemu_io(uri, "write -P 0x3d 0 4096", "flush")  # and it takes writes into the image
        assert w.returncode == 0, (w.stdout, w.stderr)
        expected[0:4096] = b"\x3d" * 4096
        assert held.read_bytes() == bytes(expected)
        listed = {e["export_id"]: e for e in c.api("site-b", "GET", "/v1/exports")["exports"]}
        assert listed[export_id]["serves"] == "image", listed

        p = subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites["site-b"].admin_url, "export",
                            "--close", export_id], capture_output=True, text=True, env=_env(), timeout=60)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert not record.exists() and not os.path.exists(sock)
        c.kill("site-b", signal.SIGTERM)
        c.start("site-b")
        c.wait_for("site-b primary again", lambda: c.status("site-b")["volumes"][VOL]["role"] == "primary", 120)
        assert export_id not in {e["export_id"] for e in c.api("site-b", "GET", "/v1/exports")["exports"]}
        assert not os.path.exists(sock) and held.read_bytes() == bytes(expected)
    finally:
        if client is not None and client.poll() is None:
            client.kill()  # by PID: the qemu-io this test started
            client.wait(timeout=10)
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def test_a_site_fenced_after_its_switch_over_stops_serving_and_does_not_serve_again(tmp_path: Path) -> None:
    """site-b switched over and serves the image on the instant export; site-c is then promoted
    by force (a request site-b approves: no commit at site-b's epoch yet): site-b's export closes (the image is no longer the volume's), its record goes, and
    a restart of site-b does not serve the export again."""
    root = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    c = LocalCluster(root / "c", interval="1h", min_copies=2, apply_delay="1h")
    try:
        write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(13))
        c.start_all()
        c.wait_ready(60)
        snap = snapshot(c, "site-a")
        assert snap["committed"], snap
        c.wait_for("site-b and site-c hold the snapshot", lambda: any(
            s["seq"] == snap["seq"] and {"site-b", "site-c"} <= set(s["holders"])
            for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 60)
        c.kill("site-a")
        res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "instant": True})
        sock = res["instant"]["socket"]
        c.wait_for("the switch-over", lambda: (s := _instant(c, "site-b")) and s["phase"] == "done", 180)
        c.wait_for("site-b primary", lambda: c.status("site-b")["volumes"][VOL]["role"] == "primary", 60)
        record = c.sites["site-b"].dir / "data" / "instant" / VOL
        assert (record / "record.json").exists()

        done = _promote_c_over_an_instant_b(c)
        assert done["primary"] == "site-c" and done["epoch"] > res["epoch"], done
        c.wait_for("site-b's instant export closed", lambda: not os.path.exists(sock) and "instant-" + VOL not in {
            e["export_id"] for e in c.api("site-b", "GET", "/v1/exports")["exports"]}, 60)
        c.wait_for("the record removed", lambda: not record.exists(), 30)
        c.kill("site-b", signal.SIGTERM)
        c.start("site-b")
        c.wait_for("site-b a replica", lambda: c.status("site-b")["volumes"][VOL]["role"] in
                   ("replica", "fenced", "divergent"), 120)
        assert not os.path.exists(sock) and not record.exists()
        assert "instant-" + VOL not in {e["export_id"] for e in c.api("site-b", "GET", "/v1/exports")["exports"]}
    finally:
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)
