"""The ``reflink`` source gives crash-consistent snapshots of a live PostgreSQL without hooks.

A real PostgreSQL (``initdb --data-checksums``) on ext4 inside an image file on a loop-mounted
XFS (reflink=1) runs pgbench with a CHECKPOINT every second; meanwhile the ``reflink`` source
takes snapshots of the image (no freeze hook, each committed so the next is incremental). Every
snapshot is restored into a fresh image (O5 checked) and PostgreSQL must start on it (crash
recovery), pass ``pg_amcheck --heapallindexed``, keep the pgbench invariant (sum of account
balances = sum of teller balances = sum of branch balances = sum of the history's deltas) and,
after a clean stop, ``pg_checksums --check``. The scenario is :mod:`tests.pgcrash`; the
benchmark (``--pg-snapshots``) runs more snapshots and the ``file`` source beside it (torn
snapshots, counted there, not asserted).
"""

from __future__ import annotations

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
