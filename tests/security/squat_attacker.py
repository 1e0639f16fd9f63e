"""The attacker of the volume-registration and retention test: a real process holding everything
of ONE site (its config, the cluster's Raft password, its own site key) that runs that site's
Raft member itself (the site's daemon must be down) and proposes commands in its OWN name,
signed with its own key (review R3).

Run as ``python3 -m tests.security.squat_attacker --config SITE.toml --work-dir DIR --squat VOL
--victim SITE --volume VOL2 [--wait-s S]``. It prints one JSON line per attempt (``attempt``,
``op``, ``error``: the code the replicated state machine answered, or ``ok``, and ``status`` /
``request`` for a request) and exits 0 whatever happened: the test judges the honest sites.

1. As soon as a leader is known: ``add_volume`` of ``--squat`` (a name the honest configs list
   and nobody registered yet) naming ``--victim`` as primary with ``min_copies`` 1 and zero
   retention (``squat_victim``), then the same name in its own name with another block size
   (``squat_own``).
2. Once ``--volume`` has a committed snapshot: ``set_retention`` with ``lock_s`` and
   ``keep_all_s`` at 2**62 and the thinning windows at 0 (``forever``), a lock of 30 days
   within the ceiling (``longer``), a ``request`` of it (``longer_request``), and a
   ``mark_verdict`` suspect of the newest snapshot (``suspect``).

With ``--prefound`` (review R4; start it while the cluster is not founded, its own site being
``--volume``'s initial primary): as soon as a leader is known, in its own name, ``register_site``
of itself and ``add_volume`` of ``--volume`` (``register``, ``add_volume``), then ``request``s of
ten years of retention for every key (``retention_request``) and of a detection policy that
judges nothing (``mode = "encrypted"``, every threshold at its loosest bound, no ransom-note
patterns: ``detection_request``), and an ``approve`` of ``r1`` (``approve``); then it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from replicad.config import load_config, load_signer
from replicad.core import anomaly
from tests.security.command_attacker import member_node, out, propose, run_then_close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squat_attacker")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--squat")
    parser.add_argument("--victim")
    parser.add_argument("--volume", required=True)
    parser.add_argument("--wait-s", type=float, default=90.0)
    parser.add_argument("--prefound", action="store_true")
    args = parser.parse_args(argv)
    if not args.prefound and (args.squat is None or args.victim is None):
        parser.error("--squat and --victim are required without --prefound")
    cfg = load_config(args.config)
    signer = load_signer(cfg)
    assert signer is not None, "the attacker's site signs"
    node = member_node(cfg, signer, args.work_dir)
    node._signer = None  # its Raft connections prove this site; the commands carry its own signature
    me = cfg.site_id

    def own(op: str, **fields) -> dict:
        return signer.sign({"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": me, "now_ns": time.time_ns(), **fields})

    async def until(done, what: str) -> None:
        deadline = time.monotonic() + args.wait_s
        while not done():
            if time.monotonic() > deadline:
                raise SystemExit(f"attacker: no {what} within {args.wait_s} s")
            await asyncio.sleep(0.1)

    def synced() -> bool:
        st = node.status()
        return st.get("leader") is not None and st.get("last_applied", 0) >= st.get("commit_index", 1) and \
            me in (node.view().get("sites") or {})

    async def prefound() -> None:
        await until(lambda: node.status().get("leader") is not None, "leader")
        # after the honest site's found proposal: a found carrying the rules founds a never-founded
        # state anew and drops what was applied before it (state.founding_rules), so commands applied
        # first would vanish under a late found (seen on a loaded machine), not be judged
        await until(lambda: any(site != me for site in node.view().get("founding") or {}), "another site's found")
        v = next(x for x in cfg.volumes if x.name == args.volume)
        ten_years = 10 * 365 * 86400
        loose = dict(anomaly.POLICY_DEFAULTS, mode="encrypted", ransom_notes=[], ransom_note_strong=[])
        for key, (low, high) in anomaly.POLICY_BOUNDS.items():
            if key in anomaly.LOWER_IS_STRICTER:
                loose[key] = high
            elif key in anomaly.HIGHER_IS_STRICTER:
                loose[key] = low
        for label, command in (
                ("register", own("register_site", site_id=me, peer_url=cfg.self_ref().peer_url, kind="data")),
                ("add_volume", own("add_volume", volume=v.name, primary=me, block_size=v.block_size_bytes,
                                   size_bytes=0, min_copies=v.min_copies,
                                   retention={k: 86400 for k in ("keep_all_s", "hourly_s", "daily_s", "lock_s")})),
                ("retention_request", own("request", action="set_retention", reason="keep more",
                                          args={"volume": v.name, "retention": dict.fromkeys(
                                              ("keep_all_s", "hourly_s", "daily_s", "lock_s"), ten_years)})),
                ("detection_request", own("request", action="set_detection", reason="tuning",
                                          args={"volume": v.name, "policy": loose})),
                ("approve", own("approve", request="r1"))):
            out(attempt=label, op=command["op"], error=await propose(node, command),
                founded=node.view().get("incarnation") is not None)

    async def run() -> None:
        if args.prefound:
            return await prefound()
        await until(synced, "leader")
        await propose(node, own("clock"))  # the majority clock knows this site
        zero = {"keep_all_s": 0, "hourly_s": 0, "daily_s": 0, "lock_s": 0}
        for label, command in (
                ("squat_victim", own("add_volume", volume=args.squat, primary=args.victim, block_size=65536,
                                     size_bytes=0, min_copies=1, retention=zero)),
                ("squat_own", own("add_volume", volume=args.squat, primary=me, block_size=4096, size_bytes=0,
                                  min_copies=1, retention=zero))):
            out(attempt=label, op=command["op"], error=await propose(node, command))
        await until(lambda: (node.view()["volumes"].get(args.volume) or {}).get("snapshots"), "snapshot")
        vol = node.view()["volumes"][args.volume]
        forever = {"keep_all_s": 2**62, "hourly_s": 0, "daily_s": 0, "lock_s": 2**62}
        longer = {**vol["retention"], "lock_s": 30 * 86400}
        for label, command in (("forever", own("set_retention", volume=args.volume, retention=forever)),
                               ("longer", own("set_retention", volume=args.volume, retention=longer))):
            out(attempt=label, op=command["op"], error=await propose(node, command))
        command = own("request", action="set_retention", args={"volume": args.volume, "retention": longer},
                      reason="keep more")
        try:
            res = await node.propose(command, timeout_s=5.0)
            out(attempt="longer_request", op="request", error="ok", status=res.get("status"),
                request=res.get("request"))
        except Exception as exc:  # the test judges the honest sites
            out(attempt="longer_request", op="request", error=getattr(exc, "code", type(exc).__name__))
        command = own("mark_verdict", volume=args.volume, seq=max(vol["snapshots"]), verdict="suspect",
                      reason="ransom note seen here")
        out(attempt="suspect", op=command["op"], error=await propose(node, command))

    return run_then_close(node, run())


if __name__ == "__main__":
    sys.exit(main())
