"""The hostile sites of ``test_full_cluster_registration.py``: a real process holding everything of
ONE site (its config, the Raft password, its own site key) that runs that site's Raft member
itself (the site's daemon must be down) and, in its own name, signed with its own key:

1. as soon as a leader is known and its log caught up: ``add_volume`` of ``--count`` volumes of
   its own (``PREFIX000``..., primary itself, min_copies 1), all within its share
   (``state.VOLUMES_PER_SITE_MAX``): two such sites fill the cluster's ``state.VOLUMES_MAX``;
2. with ``--approve-file``: once that file exists, an ``approve`` of the request id it holds.

Prints one JSON line per step (``filled`` with the answers counted, ``approve``) and runs until
killed (the test stops it by PID).

Run as ``python3 -m tests.security.volume_filler --config SITE.toml --work-dir DIR --prefix P
--count N [--approve-file F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from replicad.config import load_config, load_signer
from tests.security.command_attacker import member_node, out, propose, run_then_close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="volume_filler")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", required=True, type=int)
    parser.add_argument("--approve-file", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    signer = load_signer(cfg)
    assert signer is not None, "the site signs"
    me = cfg.site_id
    node = member_node(cfg, signer, args.work_dir)
    node._signer = None  # the commands below are signed here, each in this site's own name

    def own(op: str, **fields) -> dict:
        return signer.sign({"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": me, "now_ns": time.time_ns(),
                            **fields})

    async def run() -> None:
        while True:  # a leader, and everything it committed applied here (this member starts empty)
            st = node.status()
            if st.get("leader") is not None and st.get("commit_index", 0) > 0 and \
                    st.get("last_applied", 0) >= st.get("commit_index", 0) and me in node.view().get("sites", {}):
                break
            await asyncio.sleep(0.1)
        retention = {k: 3600 for k in ("keep_all_s", "hourly_s", "daily_s", "lock_s")}
        answers: dict[str, int] = {}
        for i in range(args.count):
            answer = await propose(node, own("add_volume", volume=f"{args.prefix}{i:03d}", primary=me,
                                             block_size=65536, size_bytes=0, min_copies=1, retention=retention))
            answers[answer] = answers.get(answer, 0) + 1
        out(step="filled", answers=answers, volumes=len(node.view()["volumes"]))
        if args.approve_file is not None:
            while not args.approve_file.exists():
                await asyncio.sleep(0.1)
            request = args.approve_file.read_text().strip()
            out(step="approve", request=request, answer=await propose(node, own("approve", request=request)))
        while True:
            await asyncio.sleep(1.0)

    return run_then_close(node, run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
