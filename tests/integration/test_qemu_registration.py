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

from replicad.core.errors import NotFoundError, UnavailableError
from replicad.core.state import default_max_size_bytes
from replicad.site.registration import registered_size_bytes
from tests.integration.test_qemu_source import running_qsd, volume_cfg

pytest.importorskip("nbd", reason="python3-libnbd (scripts/setup.sh)")

VIRTUAL = 40 * 2**20  # the guest's disk; its fresh qcow2 file is a few hundred KiB


def test_registered_size_is_the_virtual_size_not_the_qcow2_file(tmp_path: Path) -> None:
    with running_qsd(tmp_path, VIRTUAL) as q:
        assert q.image.stat().st_size < VIRTUAL // 8  # the file's size would be the wrong answer
        assert asyncio.run(registered_size_bytes(volume_cfg(q))) == VIRTUAL
        with pytest.raises(NotFoundError) as refused:  # it answered: no such node, refused at once
            asyncio.run(registered_size_bytes(volume_cfg(q, node="no-such-node"), backoff_s=30.0))
        assert "volume" in str(refused.value) and "not registered" in str(refused.value), refused.value
        assert "no block node 'no-such-node'" in str(refused.value) and refused.value.evidence["volume"], \
            refused.value.evidence


def test_a_qsd_that_never_answers_refuses_the_registration(tmp_path: Path, caplog) -> None:
    """No volume of size 0 (its first snapshot would set any maximum): a QSD that does not answer
    is asked again with a bounded back-off, then the registration is refused with a typed error."""
    with running_qsd(tmp_path, VIRTUAL) as q:
        cfg = volume_cfg(q)
    with caplog.at_level(logging.WARNING, logger="replicad.site.registration"):  # QSD gone: no answer, no hang
        with pytest.raises(UnavailableError) as refused:
            asyncio.run(registered_size_bytes(cfg, attempts=3, backoff_s=0.05))
    err = refused.value
    assert "not registered" in str(err) and "did not answer 3 tries" in str(err), err
    assert "does not answer on its QMP socket" in str(err), err
    assert err.evidence["attempts"] == 3 and err.evidence["qmp_socket"] == str(q.qmp), err.evidence
    tries = [r.getMessage().split("(try ")[1][:6] for r in caplog.records if r.name == "replicad.site.registration"]
    assert tries == ["1 of 3", "2 of 3"], caplog.text


def test_a_qsd_that_answers_on_a_later_try_registers_the_virtual_size(tmp_path: Path, caplog) -> None:
    """The QMP socket is away at the first try (QSD starting after replicad) and back before the
    next: the volume is registered with the virtual size after one WARNING."""
    with running_qsd(tmp_path, VIRTUAL) as q:
        away = q.qmp.with_name("qmp.away")
        q.qmp.rename(away)

        class BackOnFirstRetry(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if away.exists():
                    away.rename(q.qmp)

        handler = BackOnFirstRetry(level=logging.WARNING)
        logging.getLogger("replicad.site.registration").addHandler(handler)
        try:
            with caplog.at_level(logging.WARNING, logger="replicad.site.registration"):
                assert asyncio.run(registered_size_bytes(volume_cfg(q), backoff_s=0.05)) == VIRTUAL
        finally:
            logging.getLogger("replicad.site.registration").removeHandler(handler)
        ours = [r.getMessage() for r in caplog.records if r.name == "replicad.site.registration"]
        assert len(ours) == 1 and "try 1 of 4" in ours[0], caplog.text


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


def test_a_site_whose_qsd_never_answers_registers_itself_but_not_that_volume(tmp_path: Path) -> None:
    """Real daemons, no QSD at all: site-a asks for the virtual size with its back-off, logs the
    refusal at ERROR once and finishes its bootstrap (the site is registered, the volume is not: no
    volume of size 0 whose first snapshot would set any maximum)."""
    from replicad.lab.localcluster import LocalCluster
    from tests.integration.conftest import VOL

    gone = tmp_path / "no-qsd"
    gone.mkdir()
    c = LocalCluster(tmp_path / "cluster", interval="3650d", min_copies=2, extra_volume_toml=(
        f'[volumes.source]\nkind = "qemu"\nqmp_socket = "{gone / "qmp.sock"}"\nnode = "disk"\n'
        f'nbd_socket = "{gone / "nbd.sock"}"\n'))
    try:
        c.start_all()
        c.wait_for("site-a registered in the cluster", lambda: "site site-a registered in the cluster"
                   in c.log_tail("site-a", 400), 120)
        log = c.log_tail("site-a", 400)
        assert log.count(f"volume {VOL}: registration refused: volume {VOL} not registered") == 1, log
        assert "did not answer 4 tries" in log and "try 3 of 4" in log, log
        assert "site-a" in c.status("site-b")["sites"], c.status("site-b")
        assert VOL not in c.api("site-b", "GET", "/v1/volumes")["volumes"]
    finally:
        c.stop_all()
