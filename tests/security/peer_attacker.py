"""The attacker of the security tests on the peer API: a real process holding everything of
ONE site (its config, its TLS key and certificate when ``[tls]`` is set, its data dir) that
speaks the peer API in that site's name with code of its own.

Run as ``python3 -m tests.security.peer_attacker MODE --config SITE.toml [options]``; it
prints one JSON line per target with what each honest site answered, and exits 0 whatever
the targets answered (the tests judge the honest sites, not the attacker's view).

Modes:

* ``forge-manifests``: for every ``--seq``, a valid-looking one-block manifest of
  ``--volume`` under ``--epoch`` with that seq and ``created_at_ns = 0`` (56 years old by
  any clock), its block and page shipped first, then announced as a stored snapshot. The
  root differs from the real snapshot of the same ``(volume, epoch, seq)``.
* ``chunk-flood``: ``--mib`` MiB of random, unreferenced chunks streamed to each target
  under ``--volume``/``--epoch``, without any snapshot ever naming them.
* ``inflate-then-flood``: first announce, at ``--seq``, a manifest claiming a volume of
  ``--claim-gib`` GiB (one page repeated, so it costs nothing to ship) with block size
  ``--block-size``, then flood as ``chunk-flood`` does: a budget taken from sizes the
  sender claims would let the flood through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import aiohttp

from replicad.config import load_config
from replicad.core.errors import ReplicadError
from replicad.core.manifest import V1_PAGE_ENTRIES as PAGE_ENTRIES, Manifest, iter_block_digests, pages_from_digests
from replicad.peer.tls import client_context
from replicad.peer.transport import PeerClient
from replicad.storage.chunkstore import ChunkStore


def _forged(volume: str, epoch: int, seq: int, block_size: int, store: ChunkStore) -> Manifest:
    block = os.urandom(block_size)
    (digest,) = store.put_blocks([block])
    pages = pages_from_digests([digest])
    m = Manifest(volume=volume, seq=seq, epoch=epoch, parent_seq=None, created_at_ns=0,
                 size_bytes=block_size, block_size=block_size, pages=tuple(store.put_blocks(pages)), stats={})
    store.put_blocks([m.encode()])
    return m


async def _run(args: argparse.Namespace) -> list[dict]:
    cfg = load_config(Path(args.config))
    targets = [s for s in cfg.sites if s.site_id != cfg.site_id and s.kind == "data"]
    if args.target:
        targets = [s for s in targets if s.site_id in args.target]
    with tempfile.TemporaryDirectory(prefix="attacker-") as scratch:  # its forged chunks: up to ~60 MB a run
        return await _attack(args, cfg, targets, ChunkStore(Path(scratch) / "chunks"))


async def _attack(args: argparse.Namespace, cfg, targets: list, store: ChunkStore) -> list[dict]:
    connector = aiohttp.TCPConnector(ssl=client_context(cfg.tls)) if cfg.tls is not None else None
    out: list[dict] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        client = PeerClient(session, cfg.site_id)
        for site in targets:
            url = str(site.peer_url).rstrip("/")
            if args.mode == "forge-manifests":
                for seq in args.seq:
                    m = _forged(args.volume, args.epoch, seq, args.block_size, store)
                    digests = [m.root, *m.pages, *_block_digests(m, store)]
                    result: dict = {"target": site.site_id, "seq": seq, "root": m.root.hex()}
                    try:
                        await client.send_chunks(url, args.volume, args.epoch, store, digests)
                        result["stored"] = await client.snapshot_stored(url, args.volume, args.epoch, seq, m.root)
                    except ReplicadError as err:
                        result["error"] = err.code
                    out.append(result)
            elif args.mode == "inflate-then-flood":
                m, block = _inflated(args.volume, args.epoch, args.seq[0], args.block_size, args.claim_gib, store)
                result = {"target": site.site_id, "seq": args.seq[0]}
                try:
                    await client.send_chunks(url, args.volume, args.epoch, store, [m.root, m.pages[0], block])
                    result["announced"] = await client.snapshot_stored(url, args.volume, args.epoch, args.seq[0],
                                                                       m.root)
                except ReplicadError as err:
                    result["announce_error"] = err.code
                out.append(result)
            if args.mode in ("chunk-flood", "inflate-then-flood"):
                result = {"target": site.site_id, "sent_chunks": 0, "flood": True}
                chunk = 1 << 20
                for i in range(args.mib):
                    digests = store.put_blocks([os.urandom(args.block_size) for _ in range(chunk // args.block_size)])
                    try:
                        stored, _ = await client.send_chunks(url, args.volume, args.epoch, store, digests)
                        result["sent_chunks"] += stored
                    except ReplicadError as err:
                        result["error"] = err.code
                        break
                out.append(result)
    return out


def _inflated(volume: str, epoch: int, seq: int, block_size: int, claim_gib: int,
              store: ChunkStore) -> tuple[Manifest, bytes]:
    """A manifest claiming ``claim_gib`` GiB whose every block is the same stored block; and that block's digest."""
    (digest,) = store.put_blocks([os.urandom(1)])  # its length is never checked before an apply
    n_blocks = claim_gib * 2**30 // block_size
    (page,) = pages_from_digests([digest] * PAGE_ENTRIES, PAGE_ENTRIES)  # format 1: still accepted
    (page_digest,) = store.put_blocks([page])
    m = Manifest(volume=volume, seq=seq, epoch=epoch, parent_seq=None, created_at_ns=0,
                 size_bytes=n_blocks * block_size, block_size=block_size,
                 pages=(page_digest,) * (-(-n_blocks // PAGE_ENTRIES)), stats={}, page_entries=PAGE_ENTRIES)
    store.put_blocks([m.encode()])
    return m, digest


def _block_digests(m: Manifest, store: ChunkStore) -> list[bytes]:
    return list(iter_block_digests(m, store.get))


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the attack; prints one JSON document per line of results."""
    p = argparse.ArgumentParser(prog="peer_attacker")
    p.add_argument("mode", choices=("forge-manifests", "chunk-flood", "inflate-then-flood"))
    p.add_argument("--claim-gib", type=int, default=4096)
    p.add_argument("--config", required=True)
    p.add_argument("--volume", required=True)
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--seq", type=int, action="append", default=[])
    p.add_argument("--target", action="append", default=[])
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--block-size", type=int, default=65536)
    args = p.parse_args(argv)
    for line in asyncio.run(_run(args)):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
