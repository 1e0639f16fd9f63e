"""The ``reflink`` and ``qemu`` sources give crash-consistent snapshots of a live PostgreSQL
without hooks.

A real PostgreSQL (``initdb --data-checksums``) on ext4 inside an image file on a loop-mounted
XFS (reflink=1) runs pgbench with a CHECKPOINT every second; meanwhile the ``reflink`` source
takes snapshots of the image (no freeze hook, each committed so the next is incremental). Every
snapshot is restored into a fresh image (O5 checked) and PostgreSQL must start on it (crash
recovery), pass ``pg_amcheck --heapallindexed``, keep the pgbench invariant (sum of account
balances = sum of teller balances = sum of branch balances = sum of the history's deltas) and,
after a clean stop, ``pg_checksums --check``. The same with the ``qemu`` source: the ext4 in a
qcow2 disk served by a real qemu-storage-daemon, mounted from its FUSE export, snapshots taken
through QMP (dirty bitmap, copy-before-write fleecing). The scenario is :mod:`tests.pgcrash`;
the benchmark (``--pg-snapshots``) runs more snapshots and the ``file`` source beside them
(torn snapshots, counted there, not asserted).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests import pgcrash

N_SNAPSHOTS = 10  # CI: ~1 s apart under load; the benchmark takes more
N_QEMU_SNAPSHOTS = 10


def test_every_reflink_snapshot_of_a_running_postgres_starts_and_is_consistent() -> None:
    try:
        pgcrash.require()
    except pgcrash.PgUnavailable as err:
        pytest.skip(str(err))
    with pgcrash.Scenario(scale=2, clients=4, checkpoint_every_s=1.0) as sc:
        camp = sc.run_load(("reflink",), N_SNAPSHOTS, interval_s=1.0)
        assert camp.transactions > 0 and camp.checkpoints > 0, (camp.transactions, camp.checkpoints)
        manifests = camp.manifests["reflink"]
        assert len(manifests) == N_SNAPSHOTS
        # the load changed the image between snapshots: these are different points in time
        assert len({m.root for m in manifests}) == N_SNAPSHOTS
        verdicts = [sc.judge("reflink", i, m, camp.stores["reflink"]) for i, m in enumerate(manifests)]
    bad = [v for v in verdicts if not v.good]
    assert not bad, [(v.index, v.started, v.amcheck, v.invariant, v.checksums, v.detail) for v in bad]
    assert all(v.sums and v.sums[0] == v.sums[-1] for v in verdicts)
    assert len({v.sums for v in verdicts}) > 1  # the balances moved between snapshots: pgbench ran through them


def test_every_qemu_snapshot_of_a_running_postgres_starts_and_is_consistent() -> None:
    """The same proof with the ``qemu`` source: the ext4 lives in a qcow2 disk served by a real
    qemu-storage-daemon and is mounted from QSD's FUSE export (PostgreSQL's writes go through
    QSD's block layer: its dirty bitmap and copy-before-write fleecing see them); the snapshots
    are the source's fleecing views, tracked by the bitmap after the first."""
    try:
        pgcrash.require()
        pgcrash.require_qemu()
    except pgcrash.PgUnavailable as err:
        pytest.skip(str(err))
    with pgcrash.Scenario(scale=2, clients=4, checkpoint_every_s=1.0) as sc:
        camp = sc.run_load(("qemu",), N_QEMU_SNAPSHOTS, interval_s=1.0)
        assert camp.transactions > 0 and camp.checkpoints > 0, (camp.transactions, camp.checkpoints)
        manifests = camp.manifests["qemu"]
        assert len(manifests) == N_QEMU_SNAPSHOTS
        assert len({m.root for m in manifests}) == N_QEMU_SNAPSHOTS
        assert camp.modes["qemu"][0] == "full" and set(camp.modes["qemu"][1:]) == {"tracked"}, camp.modes
        verdicts = [sc.judge("qemu", i, m, camp.stores["qemu"]) for i, m in enumerate(manifests)]
    bad = [v for v in verdicts if not v.good]
    assert not bad, [(v.index, v.started, v.amcheck, v.invariant, v.checksums, v.detail) for v in bad]
    assert all(v.sums and v.sums[0] == v.sums[-1] for v in verdicts)
    assert len({v.sums for v in verdicts}) > 1


@pytest.mark.parametrize("qsd_dies", [False, True], ids=["qsd-running", "qsd-killed"])
def test_the_qemu_disk_is_stopped_and_unmounted_when_the_scenario_fails(tmp_path: Path, qsd_dies: bool) -> None:
    """qsd_disk's cleanup when what runs on the disk raises: QSD (SIGTERM by its PID) is gone and
    no FUSE mount is left under the directory (its own export, and a second FUSE export added
    over QMP standing for a fleecing view), also when QSD was killed -9 first and left both
    mounts dead; the write made and fsynced through the export is in the qcow2 (QSD wrote it,
    not a cache in front of it)."""
    try:
        pgcrash.require_qemu()
    except pgcrash.PgUnavailable as err:
        pytest.skip(str(err))
    if os.geteuid() != 0:
        pytest.skip("FUSE exports of QSD are mounted as root here")
    image = tmp_path / "disk.qcow2"
    view = tmp_path / "run" / "view"
    pid = None
    with pytest.raises(RuntimeError, match="a check failed"):
        with pgcrash.qsd_disk(image, 4 * 2**20, tmp_path / "run", sweep=tmp_path) as disk:
            pid = disk.pid
            fd = os.open(disk.guest, os.O_WRONLY)
            try:
                os.pwrite(fd, b"written through QSD\n" * 100, 65536)
                os.fsync(fd)
            finally:
                os.close(fd)
            view.touch()
            qmp = subprocess.run(
                ["python3", "-c", QMP_ADD_FUSE, str(disk.qmp), str(view)], capture_output=True, text=True, timeout=60)
            assert qmp.returncode == 0, qmp.stderr
            assert sorted(pgcrash._fuse_mounts_under(tmp_path)) == sorted([str(disk.guest), str(view)])
            if qsd_dies:
                os.kill(disk.pid, signal.SIGKILL)
            raise RuntimeError("a check failed")
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert pgcrash._fuse_mounts_under(tmp_path) == []
    raw = subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(tmp_path / "out.raw")],
                         capture_output=True, text=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    assert (tmp_path / "out.raw").read_bytes()[65536:65536 + 2000] == b"written through QSD\n" * 100


QMP_ADD_FUSE = """
import asyncio, sys
from qemu.qmp import QMPClient
async def main():
    c = QMPClient("test")
    await c.connect(sys.argv[1])
    await c.execute("block-export-add", {"type": "fuse", "id": "view", "node-name": "disk",
                                         "mountpoint": sys.argv[2], "writable": False})
    await c.disconnect()
asyncio.run(main())
"""
