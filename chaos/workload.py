"""A workload whose every byte is verifiable.

Block ``b`` of generation ``g`` (``g >= 1``) is :func:`block_bytes` ``(volume, b, g)``: a
header ``RPLCHAOS <volume> <block> <gen>\\n`` and text filler derived only from those three
values (compressible, so the ransomware signal stays quiet). Generation 0 is a zero block.
Generations are unique per block across the whole run (one counter per block, whichever
site writes), so an image is fully described by its generation map ``[gen of block 0, ...]``
and :func:`expected_image` rebuilds it byte for byte.

Every write and snapshot is recorded in the history: ``write`` (site, blocks, gens, the
site's whole generation map after it), ``snapshot`` invoke (site, the generation map at that
instant — the workload never writes a site's image while a snapshot of it is running) and
ok (seq, committed, holders, per peer: ok/error, ``base_seq`` of the delta, chunks ``offered`` and
``sent``, payload ``bytes``) / fail (error code).
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from replicad.errors import ReplicadError

from .harness import VOLUME, Cluster, History

HEADER = b"RPLCHAOS "


def block_bytes(volume: str, block: int, gen: int, block_size_bytes: int) -> bytes:
    """The content of ``block`` at generation ``gen`` (0: zeros), exactly ``block_size_bytes`` long."""
    if gen == 0:
        return bytes(block_size_bytes)
    head = HEADER + f"{volume} {block} {gen}\n".encode()
    filler = f"volume {volume} block {block} generation {gen} / ".encode()
    body = filler * (block_size_bytes // len(filler) + 1)
    return (head + body)[:block_size_bytes]


def parse_block(data: bytes, volume: str, block: int) -> int | None:
    """The generation of a block's bytes if they are exactly a valid block of ``block``; else None."""
    if not any(data):
        return 0
    if not data.startswith(HEADER):
        return None
    try:
        vol, blk, gen = data[len(HEADER):data.index(b"\n")].decode().split(" ")
        gen_i = int(gen)
    except (ValueError, UnicodeDecodeError):
        return None
    if vol != volume or int(blk) != block or gen_i < 1:
        return None
    return gen_i if data == block_bytes(volume, block, gen_i, len(data)) else None


def expected_image(volume: str, gens: list[int], block_size_bytes: int) -> bytes:
    """The image whose block ``i`` is at generation ``gens[i]``."""
    return b"".join(block_bytes(volume, b, g, block_size_bytes) for b, g in enumerate(gens))


def parse_image(path: Path, volume: str, n_blocks: int, block_size_bytes: int) -> list[int | None]:
    """Generation map of an image file (None for a malformed block or one past the end)."""
    out: list[int | None] = []
    with open(path, "rb") as f:
        for b in range(n_blocks):
            data = f.read(block_size_bytes)
            out.append(parse_block(data, volume, b) if len(data) == block_size_bytes else None)
    return out


class Workload:
    """Writes verifiable blocks into sites' volume images and asks for snapshots.

    Args:
        cluster: the cluster (paths, admin API).
        history: where writes and snapshots are recorded.
        rng: the run's seeded random source.
    """

    def __init__(self, cluster: Cluster, history: History, rng: random.Random) -> None:
        self.c = cluster
        self.h = history
        self.rng = rng
        self.n = cluster.n_blocks
        self.bs = cluster.block_size_bytes
        self.next_gen = [1] * self.n
        self.gens: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def init_image(self, site_id: str) -> None:
        """Create a site's image: every block at a fresh generation (nothing zero), fsynced."""
        path = self.c.sites[site_id].volume_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        self.gens[site_id] = [0] * self.n
        self.write(site_id, list(range(self.n)))

    def write(self, site_id: str, blocks: list[int]) -> list[int]:
        """Write new generations of ``blocks`` into ``site_id``'s image (pwrite + fsync). Returns the gens."""
        path = self.c.sites[site_id].volume_path(VOLUME)
        with self._lock:
            gens = []
            for b in blocks:
                gens.append(self.next_gen[b])
                self.next_gen[b] += 1
            self.h.record("invoke", "write", site=site_id, blocks=blocks, gens=gens)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                for b, g in zip(blocks, gens):
                    os.pwrite(fd, block_bytes(VOLUME, b, g, self.bs), b * self.bs)
                os.fsync(fd)
            finally:
                os.close(fd)
            cur = self.gens.setdefault(site_id, [0] * self.n)
            for b, g in zip(blocks, gens):
                cur[b] = g
            self.h.record("ok", "write", site=site_id, blocks=blocks, gens=gens, image=list(cur))
        return gens

    def write_random(self, site_id: str, k: int = 3) -> list[int]:
        """Write ``k`` distinct random blocks of ``site_id``'s image."""
        return self.write(site_id, sorted(self.rng.sample(range(self.n), k)))

    def adopt(self, site_id: str) -> list[int | None]:
        """Read ``site_id``'s image back (after a restore/resync rewrote it) as its generation map."""
        gens = parse_image(self.c.sites[site_id].volume_path(), VOLUME, self.n, self.bs)
        self.h.record("info", "adopt", site=site_id, image=gens)
        with self._lock:
            self.gens[site_id] = [g if g is not None else -1 for g in gens]
        return gens

    def snapshot(self, site_id: str, timeout_s: float = 60) -> dict | None:
        """Ask ``site_id`` for a snapshot now; records invoke with the generation map, then
        ok (seq, committed, holders, per-peer ship report) or fail (error code). Returns the
        report or None."""
        image = list(self.gens.get(site_id, []))
        self.h.record("invoke", "snapshot", site=site_id, image=image)
        try:
            rep = self.c.api(site_id, "POST", f"/v1/volumes/{VOLUME}/snapshot", {}, timeout_s=timeout_s)
        except ReplicadError as err:
            self.h.record("fail", "snapshot", site=site_id, image=image, error=err.code, message=str(err)[:300])
            return None
        self.h.record("ok", "snapshot", site=site_id, image=image, seq=rep.get("seq"),
                      committed=bool(rep.get("committed")), holders=rep.get("holders"), verdict=rep.get("verdict"),
                      peers={p: {k: r.get(k) for k in ("ok", "error", "message", "base_seq", "offered", "sent", "bytes")}
                             for p, r in (rep.get("peers") or {}).items()})
        return rep

    def step(self, site_id: str, k: int = 3) -> dict | None:
        """Write ``k`` random blocks then snapshot."""
        self.write_random(site_id, k)
        return self.snapshot(site_id)
