"""The ``qemu`` snapshot source against a running QEMU (``qemu-system-x86_64``), not only
qemu-storage-daemon: the disk is a qcow2 node attached to the VM as a virtio-blk device, and
the "guest" writes go through that device's own block backend (HMP ``qemu-io -d`` over a second
QMP monitor of the VM: writes, ``write -z``, ``discard``), so they take the path a guest's
writes take below the device. No guest OS is needed: the VM is created paused (``-S``); the
block layer, its jobs and exports run all the same.

* tracked manifests equal a full scan of the disk while writes go on during the cycles, and a
  restore of the last snapshot is byte-exact;
* QEMU killed -9 and started again: tracking lost, one full rescan (right), tracking again.

The VM gets two QMP monitors: one for replicad (``qmp_socket``), one for the test's writes (a
QMP monitor serves one client at a time). replicad starts the VM's NBD server itself (the VM
runs none). Every QEMU is started by the test and killed by PID; every wait is bounded."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from replicad.sources.tracked import same_blocks
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.image import apply_snapshot

pytest.importorskip("nbd", reason="python3-libnbd (scripts/setup.sh)")
from tests.integration.test_qemu_source import BS, Driver, spawn_until, stop_pid  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 (Debian qemu-system-x86; scripts/setup.sh)")

SIZE = 64 * 2**20
DEVICE = "/machine/peripheral/vd0/virtio-backend"  # the virtio-blk device's block backend (qemu-io -d)


class Monitor:
    """A minimal synchronous QMP client (JSON lines on a unix socket), one per thread."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")
        self._answer()  # greeting
        self.run("qmp_capabilities")

    def _answer(self) -> dict[str, Any]:
        while True:
            line = self.reader.readline()
            assert line, "QEMU closed its monitor"
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def run(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self.sock.sendall(json.dumps({"execute": cmd, **({"arguments": args} if args else {})}).encode() + b"\n")
        msg = self._answer()
        assert "error" not in msg, (cmd, msg)
        return msg.get("return")

    def io(self, command: str) -> None:
        """One qemu-io command on the disk device (HMP ``qemu-io -d``); fails on its error text."""
        out = self.run("human-monitor-command", {"command-line": f'qemu-io -d {DEVICE} "{command}"'})
        assert "error" not in out.lower() and "failed" not in out.lower(), (command, out)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Vm:
    """One paused QEMU with ``disk.qcow2`` as node ``disk`` behind a virtio-blk device; the
    attributes the qemu source tests' :class:`Driver` uses (root, size, image, qmp, nbd)."""

    def __init__(self, root: Path, size: int = SIZE) -> None:
        self.root = root
        self.size = size
        self.image = root / "disk.qcow2"
        self.qmp = root / "qmp.sock"        # replicad's monitor
        self.test_qmp = root / "test.sock"  # the test's writes
        self.nbd = root / "nbd.sock"        # the NBD server replicad starts in the VM
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.nbd.unlink(missing_ok=True)
        accel = "kvm:tcg" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
        self.proc = spawn_until(self.root / "qemu.log", (self.qmp, self.test_qmp), [
            QEMU, "-machine", f"q35,accel={accel}", "-nodefaults", "-display", "none", "-S", "-m", "64",
             "-blockdev", f"driver=file,node-name=disk-file,filename={self.image}",
             "-blockdev", "driver=qcow2,node-name=disk,file=disk-file",
             "-device", "virtio-blk-pci,drive=disk,id=vd0",
             "-qmp", f"unix:{self.qmp},server=on,wait=off", "-qmp", f"unix:{self.test_qmp},server=on,wait=off"])

    def stop(self, sig: int = signal.SIGKILL) -> None:
        stop_pid(self.proc, sig)
        self.proc = None

    def disk_bytes(self) -> bytes:
        """The disk as the guest sees it: flushed through the device, then read from the image
        with ``qemu-img convert -U`` (QEMU holds the image's lock; nothing writes meanwhile)."""
        m = Monitor(self.test_qmp)
        try:
            m.io("flush")
        finally:
            m.close()
        out = self.root / "disk-now.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(self.image), str(out)],
                       check=True, timeout=60)
        try:
            return out.read_bytes()
        finally:
            out.unlink()


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Vm]:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"), str(SIZE)], check=True,
                   timeout=60)
    v = Vm(tmp_path)
    v.start()
    try:
        yield v
    finally:
        v.stop()
        subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "data" / "qemu-source" / "ehr.view")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore(tmp_path / "store")
    yield s
    s.close()


def guest_writes(m: Monitor, rng: random.Random, n: int) -> None:
    """``n`` guest-like requests on the device: pattern writes of random lengths (some not
    block-aligned), zero writes and discards (whole 64 KiB clusters)."""
    for _ in range(n):
        kind = rng.random()
        if kind < 0.2:
            off = rng.randrange(SIZE // BS) * BS
            m.io(f"write -z {off} {min(SIZE - off, rng.choice([1, 3]) * BS)}")
        elif kind < 0.3:
            off = rng.randrange(SIZE // BS) * BS
            m.io(f"discard {off} {min(SIZE - off, rng.choice([1, 2]) * BS)}")
        else:
            off = rng.randrange(SIZE // 512) * 512
            length = min(SIZE - off, rng.choice([512, 4096, BS, 3 * BS + 512]))
            m.io(f"write -P {rng.randrange(1, 256)} {off} {length}")


def restored(store: ChunkStore, snap_manifest: Any, target: Path) -> bytes:
    apply_snapshot(target, snap_manifest, store, direct=False)
    try:
        return target.read_bytes()
    finally:
        target.unlink()


def writes(vm: Vm, rng: random.Random, n: int) -> None:
    """``n`` guest-like requests (:func:`guest_writes`) on a monitor connection of their own."""
    m = Monitor(vm.test_qmp)
    try:
        guest_writes(m, rng, n)
    finally:
        m.close()


def test_running_qemu_tracks_writes_made_during_cycles(tmp_path: Path, vm: Vm, store: ChunkStore) -> None:
    rng = random.Random(11)
    writes(vm, rng, 20)
    d = Driver(vm, store)
    first = d.cycle()
    assert first.mode == "full" and d.source.status()["state"] == "tracking"
    assert same_blocks(first.result.manifest, d.truth(first, None))
    for _ in range(3):  # quiet cycles: each tracked manifest is the disk
        writes(vm, rng, rng.randrange(1, 12))
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "tracked", snap.info
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))

    # a writer on the device during cycles: what it writes after a cycle's transaction goes
    # into the next cycle's bitmap, none of it is lost
    stop = threading.Event()
    wrote = [0]
    errors: list[BaseException] = []

    def writer() -> None:
        wm, wrng = Monitor(vm.test_qmp), random.Random(12)
        try:
            while not stop.is_set():
                guest_writes(wm, wrng, 1)
                wrote[0] += 1
        except BaseException as err:  # noqa: BLE001 — reported below
            errors.append(err)
        finally:
            wm.close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        for _ in range(4):
            assert d.cycle().mode == "tracked"
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive() and not errors, errors
    assert wrote[0] > 0
    parent = d.parent
    last = d.cycle()
    assert last.mode == "tracked"
    assert same_blocks(last.result.manifest, d.truth(last, parent))
    assert restored(store, last.result.manifest, tmp_path / "restored.img") == vm.disk_bytes()
    status = d.source.status()
    assert status["state"] == "tracking" and status["node"] == "disk"


def test_running_qemu_killed_rescans_then_tracks(tmp_path: Path, vm: Vm, store: ChunkStore) -> None:
    rng = random.Random(21)
    writes(vm, rng, 10)
    d = Driver(vm, store)
    d.cycle()
    writes(vm, rng, 8)
    assert d.cycle().mode == "tracked"
    writes(vm, rng, 8)
    vm.stop(signal.SIGKILL)  # the bitmap was in use: inconsistent or never written; the FUSE view died too
    vm.start()
    writes(vm, rng, 6)
    parent = d.parent
    snap = d.cycle()
    lost = d.source.status()["lost_total"]
    assert snap.mode == "rescan" and lost["bitmap_missing"] + lost["bitmap_inconsistent"] == 1, lost
    assert same_blocks(snap.result.manifest, d.truth(snap, parent))
    assert restored(store, snap.result.manifest, tmp_path / "restored.img") == vm.disk_bytes()
    writes(vm, rng, 6)
    parent = d.parent
    snap = d.cycle()
    assert snap.mode == "tracked" and d.source.status()["state"] == "tracking"
    assert same_blocks(snap.result.manifest, d.truth(snap, parent))
    assert restored(store, snap.result.manifest, tmp_path / "restored.img") == vm.disk_bytes()
