"""The attacker of the judging-hostage test (review F1): a real process holding everything of
ONE site, the volume's primary (its config, the cluster's Raft password, its own key), that
runs that site's Raft member itself (the site's daemon must be down) and commits a snapshot
that costs nothing to make and, judged block by block, hours to judge.

Run as ``python3 -m tests.security.judge_attacker --config SITE.toml --work-dir DIR --pages N
--count K``. Each of ``K`` snapshots (seq ``last + 1`` ... at the volume's epoch) is ``N``
copies of one manifest page holding 4,096 copies of one random block (``N`` x 4,096 blocks of
the volume's block size: three chunks to ship; ``N`` within the volume's agreed maximum size,
``K`` of them where that bound keeps one small), shipped over the peer API to every other data
site, their honest signed "stored" acknowledgements collected, then committed in its own name
(signed) with those acknowledgements. Prints JSON lines per snapshot: ``acks`` (who
acknowledged), then ``commit`` with ``error`` (``ok`` or the code the state machine answered)
and ``seq``. Exits 0 whatever happened: the test judges the honest sites.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from replicad.config import load_config, load_signer
from replicad.core.errors import ReplicadError
from replicad.core.manifest import V1_PAGE_ENTRIES as PAGE_ENTRIES, Manifest
from replicad.peer.tls import client_context
from replicad.peer.transport import PeerClient
from replicad.storage.chunkstore import ChunkStore
from tests.security.command_attacker import member_node, out, propose, run_then_close, wait_synced


async def _ship(cfg, volume: str, epoch: int, seq: int, pages: int, block_size: int,
                scratch: Path) -> tuple[Manifest, dict[str, bytes]]:
    """The repeated-page snapshot, shipped to every other data site: ``(manifest, {site: ack})``."""
    store = ChunkStore(scratch / "chunks")
    (block,) = store.put_blocks([os.urandom(block_size)])
    (page,) = store.put_blocks([block * PAGE_ENTRIES])
    m = Manifest(volume=volume, seq=seq, epoch=epoch, parent_seq=seq - 1, created_at_ns=time.time_ns(),
                 size_bytes=pages * PAGE_ENTRIES * block_size, block_size=block_size, pages=(page,) * pages,
                 stats={}, page_entries=PAGE_ENTRIES)  # format 1 (4096 per page): still accepted
    store.put_blocks([m.encode()])
    acks: dict[str, bytes] = {}
    connector = aiohttp.TCPConnector(ssl=client_context(cfg.tls)) if cfg.tls is not None else None
    async with aiohttp.ClientSession(connector=connector) as session:
        client = PeerClient(session, cfg.site_id)
        for site in cfg.sites:
            if site.site_id == cfg.site_id or site.kind != "data":
                continue
            url = str(site.peer_url).rstrip("/")
            try:
                await client.send_chunks(url, volume, epoch, store, [m.root, page, block])
                ok, ack = await client.snapshot_ack(url, volume, epoch, seq, m.root, m.size_bytes)
                if ok and ack is not None:
                    acks[site.site_id] = ack
            except ReplicadError as err:
                out(mode="ship", target=site.site_id, error=err.code, message=str(err)[:300])
    store.close()
    return m, acks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="judge_attacker")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--volume", default="ehr")
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--wait-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    signer = load_signer(cfg)
    assert signer is not None, "the attacker's site signs"
    node = member_node(cfg, signer, args.work_dir)

    async def run() -> None:
        await wait_synced(node, args.volume, args.wait_s)
        vol = node.state()["volumes"][args.volume]
        me, epoch, first = cfg.site_id, vol["epoch"], vol["last_seq"] + 1
        for seq in range(first, first + args.count):
            with tempfile.TemporaryDirectory(prefix="attacker-") as scratch:
                m, acks = await _ship(cfg, args.volume, epoch, seq, args.pages, vol["block_size"], Path(scratch))
            out(mode="acks", seq=seq, acks=sorted(acks), blocks=m.n_blocks, size_bytes=m.size_bytes)
            command = signer.sign({"v": 1, "op": "commit_snapshot", "op_id": uuid.uuid4().hex, "by": me,
                                   "now_ns": time.time_ns(), "volume": args.volume, "seq": seq, "epoch": epoch,
                                   "root": m.root, "parent_seq": seq - 1, "created_at_ns": m.created_at_ns,
                                   "holders": [me, *sorted(acks)], "stats": {}, "verdict": "clean",
                                   "size_bytes": m.size_bytes, "acks": acks})
            out(mode="commit", seq=seq, error=await propose(node, command))

    return run_then_close(node, run())


if __name__ == "__main__":
    raise SystemExit(main())
