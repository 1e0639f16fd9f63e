"""The operator's plain attack with real daemons (issue 14): an ``openssl enc`` loop rewriting every
letter in place, straddling a snapshot, on a volume the daemon reads while it is mounted.

Three real sites (:class:`replicad.lab.localcluster.LocalCluster`); site-a's volume is a 64 MiB ext4 of
1 KiB blocks in its image file, loop-mounted for the whole test (as an application keeps it), holding
230 letters. One clean snapshot is committed and applied at both standbys. Then the loop runs over every
letter and a snapshot is taken at once (nothing synced: the ciphertext is data in free space, the
metadata mapping it not yet committed, so every letter still starts with its text), then ``sync``
and a snapshot that writes nothing random, only the metadata. Before the fixes of
``tests/unit/core/test_anomaly_boundary.py`` both could be judged clean at every site (the operator's
run: #9 and #10 clean at all three; here, when ext4 reused none of the letters' blocks within the
loop) and the standbys applied files starting with ``Salted__``. Now each honest replica judges one of them
suspect, names a restore point before the attack, and its standby (the newest snapshot it applied)
mounts with every letter intact.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.bench.detection import letter, make_ext4, mounted
from tests.integration.conftest import VOL, snapshot
from tests.security.test_detection import opinion, snaps, standby_seq
from tests.unit.core.test_anomaly_boundary import LOOP

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

REPLICAS = ("site-b", "site-c")


def test_an_in_place_openssl_loop_straddling_a_snapshot_is_held_at_the_replicas(tmp_path: Path) -> None:
    missing = [t for t in ("mkfs.ext4", "losetup", "mount", "umount", "openssl") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("loop-mounting the volume's ext4 file system needs root")
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    mnt = tmp_path / "mnt"
    r = random.Random(41)
    letters: dict[str, bytes] = {}
    try:
        img = c.sites["site-a"].volume_path(VOL)
        make_ext4(img, 64, block_size=1024)
        with mounted(img, mnt):
            for i in range(230):
                letters[f"doc{i:03d}.txt"] = data = letter(r, r.randint(300, 4000)).encode()
                (mnt / f"doc{i:03d}.txt").write_bytes(data)
            subprocess.run(["sync", "-f", str(mnt)], check=True, timeout=60)
            c.start_all()
            c.wait_ready(60)
            first = snapshot(c, "site-a")
            clean_seq = first["seq"]
            assert first["committed"], first
            for s in REPLICAS:
                c.wait_for(f"{s} judged #{clean_seq} clean and applied it",
                           lambda s=s: opinion(c, s, clean_seq, s) == "clean" and standby_seq(c, s) == clean_seq, 90)
            files = sorted(str(mnt / n) for n in letters)
            subprocess.run(["bash", "-c", LOOP, "loop", *files], check=True, timeout=120)
            seqs = [snapshot(c, "site-a")["seq"]]  # at once, nothing synced: the ciphertext in free space
            subprocess.run(["sync", "-f", str(mnt)], check=True, timeout=60)
            seqs.append(snapshot(c, "site-a")["seq"])  # the metadata mapping it: nothing random written
            assert all((mnt / n).read_bytes().startswith(b"Salted__") for n in letters)
        for s in REPLICAS:
            c.wait_for(f"{s} judged #{seqs[-1]}", lambda s=s: opinion(c, s, seqs[-1], s) is not None, 120)
        for s in REPLICAS:
            catalog = snaps(c, s)
            mine = {q: catalog[q]["opinions"][s] for q in seqs}
            suspect = [q for q in seqs if mine[q]["verdict"] == "suspect"]
            assert suspect, (s, mine)
            here = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{suspect[0]}/evidence")["here"]
            restore = here["restore_seq"]
            assert restore is not None and restore < suspect[0], (s, here)
            applied = standby_seq(c, s)
            assert applied is not None and applied <= restore, (s, applied, restore)
            copy = tmp_path / f"{s}-standby.img"
            shutil.copy(c.sites[s].volume_path(VOL), copy)
            with mounted(copy, tmp_path / f"mnt-{s}") as m:  # a mount replays the journal, as a restore's would
                broken = [n for n, data in letters.items() if (m / n).read_bytes() != data]
            assert not broken, f"{s}'s standby (#{applied}) holds {len(broken)} letters that are not the originals"
    finally:
        c.stop_all()
        with contextlib.suppress(OSError):
            mnt.rmdir()
