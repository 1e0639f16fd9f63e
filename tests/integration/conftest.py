"""Shared pieces of the integration tests: volume images with known content, and a
factory of real three-site clusters that stops every process it started."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster

BLOCK = 65536
VOL = "ehr"


def write_image(path: Path, n_blocks: int, rng: random.Random) -> None:
    """A volume image: a third zero blocks, the rest text-like (compressible) or random."""
    with open(path, "wb") as f:
        for i in range(n_blocks):
            if i % 3 == 0:
                f.write(bytes(BLOCK))
            elif i % 3 == 1:
                f.write((f"patient {i} record {rng.random()}\n" * 4000).encode()[:BLOCK])
            else:
                f.write(rng.randbytes(BLOCK))


def overwrite_blocks(path: Path, blocks: list[int], rng: random.Random, *, random_data: bool = False) -> None:
    """Rewrite whole blocks in place (text-like, or random as encryption would), fsynced."""
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(rng.randbytes(BLOCK) if random_data else (f"edit {b} {rng.random()}\n" * 3000).encode()[:BLOCK])
        f.flush()
        os.fsync(f.fileno())


def snapshot(c: LocalCluster, site: str) -> dict:
    """Take, ship and commit a snapshot now at ``site`` (the primary)."""
    return c.api(site, "POST", f"/v1/volumes/{VOL}/snapshot", {})


def start_cluster(root: Path, *, extra_volume_toml: str = "", n_blocks: int = 192, interval: str = "1h",
                  tls: bool = False, extra_site_toml: str = "") -> LocalCluster:
    """A ready three-site cluster under ``root`` whose site-a holds a fresh image of ``n_blocks``;
    the caller stops it (:meth:`LocalCluster.stop_all`, also when this raises)."""
    c = LocalCluster(root, interval=interval, min_copies=2, extra_volume_toml=extra_volume_toml, tls=tls,
                     extra_site_toml=extra_site_toml)
    write_image(c.sites["site-a"].volume_path(VOL), n_blocks, random.Random(1))
    try:
        c.start_all()
        c.wait_ready(60)
    except BaseException:
        c.stop_all()
        raise
    return c


def ready_again(c: LocalCluster, timeout_s: float = 90) -> LocalCluster:
    """A cluster shared by a module's tests, as each test expects a fresh one: every site's daemon
    running (a test before may have stopped one; started again on its data) and the cluster ready."""
    for site in c.sites:
        c.start(site)
    c.wait_ready(timeout_s)
    return c


@pytest.fixture
def cluster_factory(tmp_path: Path):
    """``make(extra_volume_toml="", n_blocks=192, interval="1h", tls=False, extra_site_toml="")`` starts a ready
    three-site cluster whose site-a holds a fresh image (:func:`start_cluster`); every cluster made is stopped
    (by PID) at teardown."""
    made: list[LocalCluster] = []

    def make(extra_volume_toml: str = "", n_blocks: int = 192, interval: str = "1h", tls: bool = False,
             extra_site_toml: str = "") -> LocalCluster:
        c = start_cluster(tmp_path / f"cluster{len(made)}", extra_volume_toml=extra_volume_toml, n_blocks=n_blocks,
                          interval=interval, tls=tls, extra_site_toml=extra_site_toml)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop_all()
