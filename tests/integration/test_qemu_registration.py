"""A ``qemu`` volume is registered with the virtual size of its disk (what qemu-storage-daemon
serves), not the size of its qcow2 file nor 0: its agreed maximum holds from the registration
on, before any commit (``default_max_size_bytes`` of that size), and every site agrees on it.

Every QSD is started by the test and killed by PID; every wait is bounded."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.core.state import default_max_size_bytes
from replicad.site.registration import registered_size_bytes
from tests.integration.test_qemu_source import running_qsd, volume_cfg

pytest.importorskip("nbd", reason="python3-libnbd (scripts/setup.sh)")

VIRTUAL = 40 * 2**20  # the guest's disk; its fresh qcow2 file is a few hundred KiB


def test_registered_size_is_the_virtual_size_not_the_qcow2_file(tmp_path: Path, caplog) -> None:
    with running_qsd(tmp_path, VIRTUAL) as q:
        assert q.image.stat().st_size < VIRTUAL // 8  # the file's size would be the wrong answer
        assert asyncio.run(registered_size_bytes(volume_cfg(q))) == VIRTUAL
        unknown = volume_cfg(q, node="no-such-node")
        with caplog.at_level(logging.WARNING, logger="replicad.site.registration"):
            assert asyncio.run(registered_size_bytes(unknown)) == 0
        assert "no block node 'no-such-node'" in caplog.text and "registered without a size" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="replicad.site.registration"):  # QSD gone: no answer, no hang
        assert asyncio.run(registered_size_bytes(volume_cfg(q))) == 0
    assert "does not answer on its QMP socket" in caplog.text, caplog.text


def test_a_qemu_volume_has_its_agreed_maximum_before_its_first_commit(tmp_path: Path) -> None:
    """Real daemons: site-a registers a QSD disk; before any snapshot every site's Raft state
    holds its virtual size and the default maximum of it, and ``replicad volumes`` shows both."""
    from replicad.lab.localcluster import LocalCluster
    from tests.integration.conftest import VOL

    qroot = tmp_path / "qsd"
    qroot.mkdir()
    with running_qsd(qroot, VIRTUAL, data_dir=tmp_path / "cluster" / "site-a" / "data") as q:
        c = LocalCluster(tmp_path / "cluster", interval="3650d", min_copies=2, extra_volume_toml=(
            f'[volumes.source]\nkind = "qemu"\nqmp_socket = "{q.qmp}"\nnode = "disk"\nnbd_socket = "{q.nbd}"\n'))
        vpath = c.sites["site-a"].volume_path(VOL)
        vpath.unlink(missing_ok=True)
        vpath.symlink_to(q.image)
        try:
            c.start_all()
            c.wait_ready(60)
            for site in ("site-a", "site-b", "site-c"):
                v = c.wait_for(f"{site} sees {VOL} registered",
                               lambda s=site: c.api(s, "GET", "/v1/volumes")["volumes"].get(VOL), 60)
                assert v["snapshots"] == 0 and v["last_seq"] in (None, 0), v  # no commit yet
                assert v["size_bytes"] == VIRTUAL, v
                assert v["max_size_bytes"] == default_max_size_bytes(VIRTUAL) == VIRTUAL + 2**30, v
            token = c.default_token("site-b")
            res = subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites["site-b"].admin_url, "volumes"],
                                 capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
                                 env={"PATH": "/usr/bin:/bin", "COLUMNS": "200",
                                      **({"REPLICAD_TOKEN": token} if token else {})})
            row = next(line for line in res.stdout.splitlines() if VOL in line)
            assert res.returncode == 0 and "40MiB" in row and "1064MiB" in row, res.stdout + res.stderr
        finally:
            c.stop_all()
