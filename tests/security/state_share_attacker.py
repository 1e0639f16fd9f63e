"""The attacker of ``test_state_share.py``: a real process holding everything of ONE site (its
config, the cluster's Raft password, its own site key) that runs that site's Raft member itself
(the site's daemon must be down) and proposes commands in its OWN name, each legal on its own,
to take more than its share of the replicated state (review R9).

Run as ``python3 -m tests.security.state_share_attacker MODE --config SITE.toml --work-dir DIR
[options]``. It prints JSON lines and exits 0 whatever the honest sites answered: the tests
judge them.

Modes:

* ``erase`` (F1): ``--rounds`` rounds of a ``request`` (the volume's retention, unchanged) and a
  ``veto`` of that same request (it once pushed an approved revocation of this site out of the
  64-record table). A line per round (``request``, ``veto``: the veto's status or error,
  ``records``, ``target``: the status of ``--target`` in this member's view or ``gone``).
* ``logforge`` (F6): a ``request`` whose reason and an ``add_volume`` whose name hold a newline
  and a whole log line framing another site. A line per attempt (``attempt``, ``error``,
  ``refusal``).
* ``squat`` (F4): ``add_volume`` of ``--count`` volumes of its own (itself primary) until four are
  refused. One line: ``registered``, ``refused``, ``refusal`` (the last refusal's evidence),
  ``mine`` (volumes this site registered, in its view) and ``volumes`` (all).
* ``bloat`` (F5): ``--volumes`` volumes of its own with ``min_copies`` 1, then for ``--seconds``
  ~``--rate`` a second ``commit_snapshot`` of them held by itself alone, with 4 KB of stats
  (fire and forget; each answer counted, up to 5 s waited for the last). One line: ``sent``,
  ``answers`` (count per answer), ``records`` (its volumes' snapshot records in its view),
  ``state_bytes`` (msgpack).
* ``view``: one line, ``volumes``: ``{name: registered_by}`` in this member's synced view.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from pathlib import Path

from replicad.config import load_config, load_signer
from replicad.core.state import DEFAULT_RETENTION

FORGED = ("2026-12-07 12:00:01,000 WARNING replicad.site.daemon: AUDIT veto of request r1 (revoke_site of "
          "volume None, requested by site-b) by site-c")
FORGED2 = "2026-12-07 12:00:02,000 ERROR replicad.site.detection: ransomware signal: site-c's volume ehr encrypted"


def out(**fields) -> None:
    print(json.dumps(fields, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("erase", "logforge", "squat", "bloat", "view"))
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--volume", default="ehr")
    parser.add_argument("--target", default="")
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=150.0)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    signer = load_signer(cfg)
    assert signer is not None, "the attacker's site signs"
    from replicad.consensus.raft import RaftNode

    node = RaftNode(cfg.self_ref().raft, [s.raft for s in cfg.sites if s.site_id != cfg.site_id], args.work_dir,
                    cfg.raft_password.get_secret_value(), trust=cfg.trust(), signer=signer,
                    sites={s.raft: s.site_id for s in cfg.sites},
                    members=[s.site_id for s in cfg.sites])  # as the daemon: the same initial state
    node.start()
    node._signer = None  # the commands carry the attacker's own signature
    me = cfg.site_id

    def signed(op: str, **fields) -> dict:
        return signer.sign({"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": me, "now_ns": time.time_ns(), **fields})

    async def prop(op: str, **fields) -> dict:
        try:
            return await node.propose(signed(op, **fields), timeout_s=10.0)
        except Exception as exc:  # the tests judge the honest sites; record what came back
            return {"error": getattr(exc, "code", type(exc).__name__),
                    "refusal": (getattr(exc, "evidence", None) or {}).get("refusal")}

    async def synced() -> None:
        deadline = time.monotonic() + 60
        while node.status().get("leader") is None or node.status().get("last_applied", 0) < \
                node.status().get("commit_index", 1) or args.volume not in node.state().get("volumes", {}):
            if time.monotonic() > deadline:
                raise SystemExit("no Raft leader reached")
            await asyncio.sleep(0.2)

    def mine() -> list[str]:
        return [n for n, v in node.state()["volumes"].items() if v.get("registered_by", v["primary"]) == me]

    async def erase() -> None:
        retention = dict(node.state()["volumes"][args.volume]["retention"])
        for i in range(args.rounds):
            r = await prop("request", action="set_retention", args={"volume": args.volume, "retention": retention},
                           reason="")
            v = await prop("veto", request=r["request"]) if r.get("request") else {}
            requests = node.state().get("requests") or {}
            out(round=i, request=r.get("request") or r.get("error"), veto=v.get("status") or v.get("error"),
                forgotten=r.get("forgotten"), records=len(requests),
                target=(requests.get(args.target) or {}).get("status", "gone"))

    async def logforge() -> None:
        vol = node.state()["volumes"][args.volume]
        r = await prop("request", action="set_retention", args={"volume": args.volume,
                                                                "retention": dict(vol["retention"])},
                       reason="routine\n" + FORGED)
        out(attempt="reason", error=r.get("error", "ok"), refusal=r.get("refusal"), request=r.get("request"))
        r = await prop("add_volume", volume="tmp\n" + FORGED2, primary=me, block_size=vol["block_size"],
                       size_bytes=2**20, min_copies=2, retention=dict(DEFAULT_RETENTION))
        out(attempt="volume", error=r.get("error", "ok"), refusal=r.get("refusal"))

    async def squat() -> None:
        registered = refused = 0
        last = None
        for i in range(args.count):
            r = await prop("add_volume", volume=f"squat{i:03d}", primary=me, block_size=65536, size_bytes=0,
                           min_copies=2, retention=dict(DEFAULT_RETENTION))
            if r.get("ok"):
                registered += 1
            else:
                refused, last = refused + 1, r
                if refused >= 4:
                    break
        out(registered=registered, refused=refused, refusal=last, mine=len(mine()),
            volumes=len(node.state()["volumes"]))

    async def bloat() -> None:
        import msgpack
        vols = []
        for i in range(args.volumes):
            name = f"junk{i}-{uuid.uuid4().hex[:6]}"
            r = await prop("add_volume", volume=name, primary=me, block_size=65536, size_bytes=2**20, min_copies=1,
                           retention=dict(DEFAULT_RETENTION))
            if r.get("ok"):
                vols.append(name)
        counts: dict[str, int] = {}
        lock = threading.Lock()

        def done(result, reason) -> None:  # tick thread
            key = "ok" if isinstance(result, dict) and result.get("ok") else \
                str(result.get("error")) if isinstance(result, dict) else f"fail_{reason}"
            with lock:
                counts[key] = counts.get(key, 0) + 1
        stats = {f"k{j:02d}" + "x" * 61: float(j) + 0.5 for j in range(63)}
        seqs = dict.fromkeys(vols, 0)
        sent, t0 = 0, time.monotonic()
        while vols and time.monotonic() - t0 < args.seconds:
            due = int((time.monotonic() - t0) * args.rate)
            while sent < due:
                v = vols[sent % len(vols)]
                seqs[v] += 1
                cmd = signed("commit_snapshot", volume=v, seq=seqs[v], epoch=1, root=os.urandom(32), parent_seq=None,
                             created_at_ns=time.time_ns(), holders=[me], stats=stats, verdict="clean",
                             size_bytes=2**20)
                node._consumer.apply_command(msgpack.packb(cmd, use_bin_type=True), callback=done)
                sent += 1
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 5.0  # the last answers (each command is answered once: its callback)
        while time.monotonic() < deadline:
            with lock:
                if sum(counts.values()) >= sent:
                    break
            await asyncio.sleep(0.05)
        state = node.state()
        with lock:
            out(volumes=len(vols), sent=sent, answers=dict(counts),
                records=sum(len(state["volumes"][v]["snapshots"]) for v in vols),
                state_bytes=len(msgpack.packb(state, use_bin_type=True, default=str)))

    async def view() -> None:
        out(volumes={n: v.get("registered_by", v["primary"]) for n, v in node.state()["volumes"].items()})

    async def run() -> None:
        await synced()
        await {"erase": erase, "logforge": logforge, "squat": squat, "bloat": bloat, "view": view}[args.mode]()

    try:
        asyncio.run(asyncio.wait_for(run(), args.seconds + 240))
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
