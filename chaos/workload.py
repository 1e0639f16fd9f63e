"""A workload whose every byte is verifiable.

Block ``b`` of generation ``g`` (``g >= 1``) comes in two kinds, both derived only from
``(volume, b, g)`` by :func:`block_bytes`:

* text (the default): a header ``RPLCHAOS <volume> <block> <gen>\\n`` and text filler
  (compressible, so the ransomware signal stays quiet);
* ciphertext (``crypt=True``, what a ransomware overwrite leaves): a header
  ``RPLCRYPT <volume> <block> <gen>\\n`` and pseudo-random bytes, the BLAKE3 XOF of
  ``"rplcrypt <volume> <block> <gen>"`` (lz4 cannot shrink them, ~8 bits/byte of entropy).

Generation 0 is a zero block. Generations are unique per block across the whole run (one
counter per block, whichever site writes, whichever kind), so an image is fully described
by its generation map ``[gen of block 0, ...]`` plus the set of ``(block, gen)`` written as
ciphertext (:func:`crypt_gens` of the history), and :func:`expected_image` rebuilds it byte
for byte.

Every write and snapshot is recorded in the history: ``write`` (site, blocks, gens,
``crypt: true`` for a ciphertext write, the site's whole generation map after it),
``snapshot`` invoke (site, the generation map at that instant — the workload never writes a
site's image while a snapshot of it is running) and ok (seq, committed, holders, verdict,
score, per peer: ok/error, ``base_seq`` of the delta, chunks ``offered`` and ``sent``,
payload ``bytes``) / fail (error code).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Collection, Iterable
from pathlib import Path

import blake3

from replicad.core.errors import ReplicadError

from .harness import VOLUME, Cluster, History

HEADER = b"RPLCHAOS "
CRYPT_HEADER = b"RPLCRYPT "


def block_bytes(volume: str, block: int, gen: int, block_size_bytes: int, crypt: bool = False) -> bytes:
    """The content of ``block`` at generation ``gen`` (0: zeros), exactly ``block_size_bytes`` long.

    ``crypt``: the ciphertext kind (header ``RPLCRYPT``, then pseudo-random bytes) instead of
    the text kind; ignored for generation 0."""
    if gen == 0:
        return bytes(block_size_bytes)
    if crypt:
        head = CRYPT_HEADER + f"{volume} {block} {gen}\n".encode()
        n = max(0, block_size_bytes - len(head))
        return (head + blake3.blake3(f"rplcrypt {volume} {block} {gen}".encode()).digest(length=n))[:block_size_bytes]
    head = HEADER + f"{volume} {block} {gen}\n".encode()
    filler = f"volume {volume} block {block} generation {gen} / ".encode()
    body = filler * (block_size_bytes // len(filler) + 1)
    return (head + body)[:block_size_bytes]


def parse_block_kind(data: bytes, volume: str, block: int) -> tuple[int, bool] | None:
    """``(generation, crypt)`` if ``data`` is exactly a valid block of ``block`` of either kind
    (``(0, False)`` for zeros); None if it is anything else (torn, misplaced, tampered)."""
    if not any(data):
        return 0, False
    if data.startswith(HEADER):
        crypt = False
    elif data.startswith(CRYPT_HEADER):
        crypt = True
    else:
        return None
    try:
        end = data.index(b"\n", 0, 128)
        vol, blk, gen = data[len(HEADER):end].decode().split(" ")
        blk_i, gen_i = int(blk), int(gen)
    except (ValueError, UnicodeDecodeError):
        return None
    if vol != volume or blk_i != block or gen_i < 1:
        return None
    return (gen_i, crypt) if data == block_bytes(volume, block, gen_i, len(data), crypt) else None


def parse_block(data: bytes, volume: str, block: int) -> int | None:
    """The generation of a block's bytes if they are exactly a valid block of ``block`` (text
    or ciphertext kind, see :func:`parse_block_kind`); else None."""
    got = parse_block_kind(data, volume, block)
    return None if got is None else got[0]


def crypt_gens(events: Iterable[dict]) -> set[tuple[int, int]]:
    """``{(block, gen)}`` written as ciphertext, from the history's ``write`` events (invoke
    and ok: a write cut short still names its generations)."""
    out: set[tuple[int, int]] = set()
    for e in events:
        if e.get("op") == "write" and e.get("crypt"):
            out |= {(int(b), int(g)) for b, g in zip(e["blocks"], e["gens"])}
    return out


def expected_image(volume: str, gens: list[int], block_size_bytes: int,
                   crypt: Collection[tuple[int, int]] = ()) -> bytes:
    """The image whose block ``i`` is at generation ``gens[i]``; ``(i, gens[i])`` in ``crypt``
    means that generation is of the ciphertext kind. ``len(gens) * block_size_bytes`` bytes."""
    return b"".join(block_bytes(volume, b, g, block_size_bytes, (b, g) in crypt) for b, g in enumerate(gens))


def parse_image(path: Path, volume: str, n_blocks: int, block_size_bytes: int) -> list[int | None]:
    """Generation map of an image file (None for a malformed block or one past the end).
    Raises OSError if the file cannot be read."""
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
        self.crypt: set[tuple[int, int]] = set()  # (block, gen) written as ciphertext
        self._lock = threading.Lock()

    def init_image(self, site_id: str) -> None:
        """Create a site's image: every block at a fresh generation (nothing zero), fsynced."""
        path = self.c.sites[site_id].volume_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        self.gens[site_id] = [0] * self.n
        self.write(site_id, list(range(self.n)))

    def write(self, site_id: str, blocks: list[int], crypt: bool = False) -> list[int]:
        """Write new generations of ``blocks`` into ``site_id``'s image (pwrite + fsync), of the
        ciphertext kind if ``crypt``. Returns the gens (one per block, in order)."""
        path = self.c.sites[site_id].volume_path(VOLUME)
        kind = {"crypt": True} if crypt else {}
        with self._lock:
            gens = []
            for b in blocks:
                gens.append(self.next_gen[b])
                self.next_gen[b] += 1
            if crypt:
                self.crypt |= set(zip(blocks, gens))
            self.h.record("invoke", "write", site=site_id, blocks=blocks, gens=gens, **kind)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                for b, g in zip(blocks, gens):
                    os.pwrite(fd, block_bytes(VOLUME, b, g, self.bs, crypt), b * self.bs)
                os.fsync(fd)
            finally:
                os.close(fd)
            cur = self.gens.setdefault(site_id, [0] * self.n)
            for b, g in zip(blocks, gens):
                cur[b] = g
            self.h.record("ok", "write", site=site_id, blocks=blocks, gens=gens, image=list(cur), **kind)
        return gens

    def encrypt(self, site_id: str, blocks: list[int]) -> list[int]:
        """A ransomware overwrite: new ciphertext generations of ``blocks`` (see :meth:`write`)."""
        return self.write(site_id, blocks, crypt=True)

    def expected(self, gens: list[int]) -> bytes:
        """The exact bytes of an image with generation map ``gens`` (either block kind)."""
        return expected_image(VOLUME, gens, self.bs, self.crypt)

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
                      score=rep.get("score"), baseline=rep.get("baseline"),
                      peers={p: {k: r.get(k) for k in ("ok", "error", "message", "base_seq", "offered", "sent", "bytes")}
                             for p, r in (rep.get("peers") or {}).items()})
        return rep

    def step(self, site_id: str, k: int = 3) -> dict | None:
        """Write ``k`` random blocks then snapshot."""
        self.write_random(site_id, k)
        return self.snapshot(site_id)
