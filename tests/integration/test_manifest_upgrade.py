"""An upgrade across the manifest format: a real three-site cluster runs the previous release
(format-1 manifests: 4096 entries per page) for its first snapshots, is stopped and started on
this checkout (format 2: 512 entries per page), and goes on with the same volume. The first
snapshot after the upgrade is diffed against a format-1 parent at the primary, shipped against
it, checked for completeness against it at the replicas and applied over a standby whose record
is format 1; every snapshot of the chain, of both formats, restores byte-exact at the primary
and at a replica afterwards, and the standby image equals the newest."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from replicad.core.manifest import DEFAULT_PAGE_ENTRIES, V1_PAGE_ENTRIES, Manifest
from replicad.lab.localcluster import LocalCluster
from replicad.storage.chunkstore import ChunkStore
from tests.integration.conftest import VOL, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BS = 4096
N_BLOCKS = 2 * V1_PAGE_ENTRIES + 900  # 36 MiB: three format-1 pages, 18 format-2 pages
REPO = Path(__file__).resolve().parents[2]


def previous_release(dest: Path) -> Path:
    """The ``replicad`` package of the commit before format 2 (the parent of the commit that
    introduced ``V1_PAGE_ENTRIES``; HEAD while that commit is not made), exported from git."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout to export the previous release from")
    intro = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "-S", "V1_PAGE_ENTRIES = 4096", "--",
                            "replicad/core/manifest.py"], capture_output=True, text=True, check=True).stdout.split()
    commit = f"{intro[-1]}^" if intro else "HEAD"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "replicad"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    assert "V1_PAGE_ENTRIES" not in (dest / "replicad/core/manifest.py").read_text()
    return dest


def write_blocks(path: Path, blocks: list[int], rng: random.Random, zeroed: tuple[int, ...] = ()) -> None:
    """Rewrite ``blocks`` (random or text-like), the ``zeroed`` ones with zeros."""
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BS)
            f.write(bytes(BS) if b in zeroed else rng.randbytes(BS) if b % 2 else (f"edit {b} {rng.random()}\n" * 400).encode()[:BS])


def restore_bytes(c: LocalCluster, site: str, seq: int, target: Path) -> bytes:
    c.api(site, "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": seq})
    data = target.read_bytes()
    target.unlink()
    return data


def snapshots(c: LocalCluster, site: str) -> dict[int, bytes]:
    return {s["seq"]: bytes.fromhex(s["root"]) for s in c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}


def test_a_chain_of_format_1_manifests_continues_in_format_2_and_every_snapshot_restores(tmp_path: Path) -> None:
    rng = random.Random(15)
    old_code = previous_release(tmp_path / "previous")
    # the standby check proves each standby soon after a start, so the first apply after the
    # upgrade trusts its format-1 record as the base (only then are the bases' pages compared)
    c = LocalCluster(tmp_path / "cluster", interval="3650d", min_copies=2, block_size="4KiB",
                     extra_site_toml='[scrub]\nstandby_every = "1s"\n')
    image = c.sites["site-a"].volume_path(VOL)
    with open(image, "wb") as f:
        for i in range(N_BLOCKS):
            f.write(bytes(BS) if i % 3 == 0 else rng.randbytes(BS) if i % 3 == 1 else (f"patient {i}\n" * 600).encode()[:BS])
    assert image.stat().st_size == N_BLOCKS * BS
    truth: dict[int, bytes] = {}

    def take(expect_changed: int | None) -> int:
        rep = snapshot(c, "site-a")
        assert rep["committed"], rep
        if expect_changed is not None:
            assert rep["changed_blocks"] == expect_changed, rep
        truth[rep["seq"]] = image.read_bytes()
        c.wait_for("b and c hold it as standby", lambda: all(
            c.status(s)["volumes"][VOL]["standby_seq"] == rep["seq"] for s in ("site-b", "site-c")), 90)
        return rep["seq"]

    try:
        c.code_dir = old_code  # the previous release writes the first snapshots
        c.start_all()
        c.wait_ready(90)
        old_seqs = [take(None)]
        write_blocks(image, [1, 2, 4097, 8000], rng)
        old_seqs.append(take(4))
        c.stop_all()

        c.code_dir = REPO  # the upgrade: same data directories, this checkout's code
        c.start_all()
        c.wait_ready(90)
        c.wait_for("the standbys verified", lambda: all(
            c.status(s)["volumes"][VOL]["standby"]["verified"] for s in ("site-b", "site-c")), 90)
        # changes in every format-1 page and at format-2 page edges; block 514 (data) zeroed: the
        # base's entry 2 of its page 1 is block 4098 (zero), the new page 1's entry 2 is block 514
        changed = [7, 511, 512, 514, 1023, 4095, 4096, 6000, N_BLOCKS - 1]
        write_blocks(image, changed, rng, zeroed=(514,))
        new_seqs = [take(len(changed))]
        write_blocks(image, [513, 5000], rng)
        new_seqs.append(take(2))

        for seq in old_seqs + new_seqs:
            for site in ("site-a", "site-b"):
                assert restore_bytes(c, site, seq, tmp_path / f"r-{site}-{seq}.img") == truth[seq], (site, seq)
        for site in ("site-b", "site-c"):
            assert c.sites[site].volume_path(VOL).read_bytes() == truth[new_seqs[-1]], site
            # right as applied: the standby check (every second here) found nothing to repair
            assert "STANDBY DAMAGED" not in c.sites[site].log_path.read_text(errors="replace"), site
        roots = snapshots(c, "site-a")
    finally:
        c.stop_all()

    for site in ("site-a", "site-b", "site-c"):
        with ChunkStore(c.sites[site].dir / "data" / "chunks") as store:
            for seq in old_seqs + new_seqs:
                m = Manifest.decode(store.get(roots[seq]))
                want = V1_PAGE_ENTRIES if seq in old_seqs else DEFAULT_PAGE_ENTRIES
                assert m.page_entries == want and len(m.pages) == -(-N_BLOCKS // want), (site, seq)
