"""The attacker of the signed-command tests: a real process holding everything of ONE site
(its config, the cluster's Raft password, its own site key) that runs that site's Raft
member itself (the site's daemon must be down) and proposes commands through Raft.

Run as ``python3 -m tests.security.command_attacker MODE --config SITE.toml --work-dir DIR
[options]``. It prints one JSON line per attempt (``op``, ``by``, and ``error``: the code the
replicated state machine answered, or ``ok``) and exits 0 whatever happened: the tests judge
the honest sites.

Modes:

* ``forge``: commands in ``--victim``'s name, each signed with this site's own key (the only
  key it has) and one without any signature: a forced promotion, a verdict, a prune, a
  snapshot commit, a retention change, and an approval and a veto of every pending request.
* ``bogus-commit``: in its OWN name (the primary, its own key), ``commit_snapshot`` of a root
  stored nowhere naming ``--victim`` as a holder: the exact attack (seq 2**63-1, clean, size
  2**50, no acknowledgement), then within the bounds without an acknowledgement, then with
  one signed by the attacker's own key in the victim's name.
* ``claim-clean`` (issue 14): in its OWN name, for every snapshot from ``--from-seq``: a
  ``site_verdict`` "clean" (score 0), a ``mark_verdict`` "clean" without approvals, and a
  ``set_detection`` with every threshold at its weakest (min_score 1.0) without approvals.
* ``policy``: in its OWN name, detection policies it may not set alone: a ``set_detection``, a
  ``request`` of one and an ``add_volume`` of a new volume whose ransom-note pattern backtracks
  catastrophically in Python's ``re`` (look-around: RE2 refuses it); then a ``set_detection`` and
  an ``add_volume`` with every threshold at its strictest (every snapshot suspect everywhere).
* ``replay``: waits for a signed ``clock`` heartbeat of ``--victim`` to reach its Raft log,
  then proposes it again, byte for byte (a captured command sent twice; its node's memory of
  applied bytes cleared first, so that the bytes reach the leader).
* ``flood``: for ``--wait-s`` seconds, forwards without waiting for answers ~2,000 valid
  ``clock`` commands a second in its OWN name and as many forged in ``--victim``'s name; prints
  one line with the count of each answer per kind.
* ``found`` (a cluster being founded: start it before the honest sites): in its OWN name, every
  0.2 s until ``--wait-s`` passed, ``found`` proposals of memberships of its choosing: its
  config's list with an extra key of its own pinned for ``--victim``, and a list naming only
  itself; each answer is printed (``adopted``, ``members``). With ``--stop-file``: it also stops
  after the first round begun once that file exists (the caller saw the cluster founded) in
  which a proposal committed, so its last proposals are judged by the founded cluster.
* ``reregister`` (review R2): in its OWN name (its own key), a ``register_site`` of every other
  site as a witness at a bogus peer address and one of ``--victim`` as a data site at that
  address (it would have cut b's and c's votes from every approval count, promotion and
  revocation), one of itself as a witness (against the agreed membership), then a ``request``
  to shorten the volume's retention to one second; the request's line carries ``needed``.
* ``mark-suspect`` (review R3): in its OWN name (its own key), ``mark_verdict suspect`` of every
  committed snapshot from ``--from-seq`` (no approval is asked for suspect); each line carries the
  cluster's verdict after it (``verdict``), ``flipped`` and ``suspect_sites``. It once flipped
  the cluster's verdict at once: standbys rolled back, later snapshots suspect by descent.
* ``churn``: in its OWN name (its own key), ``--rounds`` rounds of a forced ``demote`` and a forced
  ``promote`` of itself, each at the epoch its state shows then (it once bumped the epoch and
  fenced the primary as often as Raft committed: an honest takeover was fenced again at once);
  each line carries ``op``, ``error``, and the volume's ``epoch`` and ``primary`` after it.
* ``take-instant``: in its OWN name (its own key), while another site serves an instant recovery
  of ``--volume``: a forced ``promote`` of itself, one naming the newest snapshot as an instant
  recovery of its own, a forced ``demote`` (each at the epoch its state shows then; its one
  forced change of the hour once took the volume from the honest site, whose overlay was then
  set aside), then a ``request`` of the forced promotion of itself; each line carries ``attempt``,
  ``error``, ``refusal`` (the evidence's), and the volume's ``epoch`` and ``primary`` after it;
  the request's line ``request``, ``status`` and ``needed``.
* ``raise-max``: in its OWN name (its own key), a ``request`` of ``set_max_size`` of ``--volume`` to
  ``--size-bytes`` (a stolen admin token of another site then approves it); the line carries
  ``request``, ``status``, ``needed`` and ``error``.
* ``veto``: in its OWN name (its own key), a ``veto`` of every pending or approved request (one
  site may veto; the tests judge what the other sites log and count); each line carries
  ``request`` and ``error``.
* ``add-volume``: in its OWN name, a volume of its own (``--new-volume``, a name no honest config
  has; ``--volume``'s block size) of ``--size-bytes``, itself its primary: its chunk budget at every site follows from that
  size. Line: ``error`` of the ``add_volume``.
* ``inflate-commit`` (review F2): in its OWN name, a real one-block snapshot (seq ``last + 1``)
  shipped to every other data site over the peer API (its TLS key), their honest signed
  "stored" acknowledgements collected, then ``commit_snapshot`` with those acknowledgements and
  ``size_bytes`` 2**50 (the exact attack: it once lifted every replica's chunk quota to 1.25
  PiB), then with ``--size-bytes`` (within the volume's bound, still not what they stored).
  Lines: ``acks`` (the sites that acknowledged), then one per ``attempt`` with ``error``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import threading
import time
import uuid
from pathlib import Path

from replicad.config import load_config, load_signer
from replicad.core import identity
from replicad.core.state import DEFAULT_RETENTION


def out(**fields) -> None:
    print(json.dumps(fields, default=str), flush=True)


def forged(signer: identity.Signer, victim: str, op: str, **args) -> dict:
    """``op`` in ``victim``'s name, signed with the attacker's own key."""
    command = {"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": victim, "now_ns": time.time_ns(),
               "cluster": signer.cluster_id, **args}
    command["sig"] = signer.private_key.sign(identity.canonical_bytes(command))
    return command


async def propose(node, command: dict) -> str:
    try:
        await node.propose(command, timeout_s=5.0)
        return "ok"
    except Exception as exc:  # the tests judge the honest sites; record what came back
        if getattr(exc, "evidence", {}).get("reason") == "request_denied":
            return "refused_at_door"  # the honest leader refused to append it (raft point 17)
        return getattr(exc, "code", type(exc).__name__)


def member_node(cfg, signer: identity.Signer, work_dir: Path, on_applied=None):
    """This site's own Raft member (:class:`replicad.consensus.raft.RaftNode`, started) of ``cfg``'s
    cluster, its Raft log under ``work_dir``: the state machine, trust, signer, partners and initial
    members the daemon has, so it applies what every site applies. ``on_applied``: ``(command,
    result)`` called after each applied command (on the node's tick thread)."""
    from replicad.consensus.raft import RaftNode

    node = RaftNode(cfg.self_ref().raft, [s.raft for s in cfg.sites if s.site_id != cfg.site_id], work_dir,
                    cfg.raft_password.get_secret_value(), on_applied=on_applied, trust=cfg.trust(), signer=signer,
                    sites={s.raft: s.site_id for s in cfg.sites},
                    members=[s.site_id for s in cfg.sites])  # as the daemon: the same initial state
    node.start()
    return node


def run_then_close(node, main) -> int:
    """Runs the coroutine ``main`` to its end, then closes ``node`` (also when ``main`` raises):
    the exit status, 0."""
    try:
        asyncio.run(main)
    finally:
        node.close()
    return 0


async def wait_synced(node, volume: str, timeout_s: float) -> None:
    """Until a leader is known and the replicated log (the volume's snapshots included) is applied here."""
    deadline = time.monotonic() + timeout_s
    while node.status().get("leader") is None or node.status().get("last_applied", 0) < \
            node.status().get("commit_index", 1) or not node.view()["volumes"].get(volume, {}).get("snapshots"):
        if time.monotonic() > deadline:
            raise SystemExit("no Raft leader reached")
        await asyncio.sleep(0.1)


class Shipped(dict):
    """``{site: its signed ack or None}`` of one shipped snapshot, with its manifest ``root``."""
    root: bytes = b""


async def _ship_one_block(cfg, volume: str, epoch: int, seq: int) -> Shipped:
    """A real one-block snapshot of ``volume`` (seq ``seq``, ``epoch``) shipped over the peer API
    to every other data site of ``cfg``, with this site's TLS: what each answered (its ack)."""
    import os
    import tempfile

    import aiohttp

    from replicad.core.errors import ReplicadError
    from replicad.core.manifest import Manifest, pages_from_digests
    from replicad.peer.tls import client_context
    from replicad.peer.transport import PeerClient
    from replicad.storage.chunkstore import ChunkStore

    block_size = 65536
    shipped = Shipped()
    with tempfile.TemporaryDirectory(prefix="attacker-") as scratch:
        store = ChunkStore(Path(scratch) / "chunks")
        (digest,) = store.put_blocks([os.urandom(block_size)])
        pages = store.put_blocks(pages_from_digests([digest]))
        m = Manifest(volume=volume, seq=seq, epoch=epoch, parent_seq=None, created_at_ns=time.time_ns(),
                     size_bytes=block_size, block_size=block_size, pages=tuple(pages), stats={})
        store.put_blocks([m.encode()])
        shipped.root = m.root
        connector = aiohttp.TCPConnector(ssl=client_context(cfg.tls)) if cfg.tls is not None else None
        async with aiohttp.ClientSession(connector=connector) as session:
            client = PeerClient(session, cfg.site_id)
            for site in cfg.sites:
                if site.site_id == cfg.site_id or site.kind != "data":
                    continue
                url = str(site.peer_url).rstrip("/")
                try:
                    await client.send_chunks(url, volume, epoch, store, [m.root, *pages, digest])
                    ok, ack = await client.snapshot_ack(url, volume, epoch, seq, m.root, m.size_bytes)
                    shipped[site.site_id] = ack if ok else None
                except ReplicadError as err:
                    out(mode="inflate-commit", ship_error=err.code, target=site.site_id)
                    shipped[site.site_id] = None
        store.close()
    return shipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="command_attacker")
    parser.add_argument("mode", choices=["forge", "replay", "bogus-commit", "claim-clean", "found", "flood", "policy",
                                           "reregister", "mark-suspect", "churn", "veto", "inflate-commit",
                                           "add-volume", "take-instant", "raise-max"])
    parser.add_argument("--size-bytes", type=int, default=512 * 2**20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--from-seq", type=int, default=1)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--victim", default="site-b")
    parser.add_argument("--volume", default="ehr")
    parser.add_argument("--new-volume", default="loot")
    parser.add_argument("--wait-s", type=float, default=30.0)
    parser.add_argument("--stop-file", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    signer = load_signer(cfg)
    assert signer is not None, "the attacker's site signs"

    captured: list[dict] = []
    got = threading.Event()

    def on_applied(command: dict, result: dict) -> None:  # the victim's signed commands, as they commit
        if command.get("by") == args.victim and command.get("op") == "clock" and result.get("ok"):
            captured.append(dict(command))
            got.set()

    node = member_node(cfg, signer, args.work_dir, on_applied)
    node._signer = None  # its Raft connections prove this site; the forged commands carry what the attacker made

    async def found() -> None:
        evil_key = identity.format_public_key(identity.public_key_raw(identity.generate_private_key()))
        members = cfg.membership()
        extra = [{**m, "keys": sorted([*m["keys"], evil_key])} if m["site_id"] == args.victim else m for m in members]
        alone = [m for m in members if m["site_id"] == cfg.site_id]
        out(mode="found", started=True, evil_key=evil_key)
        deadline = time.monotonic() + args.wait_s
        while time.monotonic() < deadline:
            stopping, committed = args.stop_file is not None and args.stop_file.exists(), False
            for label, listed in (("extra_key", extra), ("alone", alone)):
                command = signer.sign({"v": 1, "op": "found", "op_id": uuid.uuid4().hex, "by": cfg.site_id,
                                       "now_ns": time.time_ns(), "incarnation": secrets.token_bytes(16),
                                       "members": listed})
                try:
                    res = await node.propose(command, timeout_s=2.0)
                    out(mode="found", attempt=label, error="ok", adopted=res.get("adopted"),
                        members=res.get("members"))
                    committed = True
                except Exception as exc:  # no leader yet, or refused: the tests judge the honest sites
                    out(mode="found", attempt=label, error=getattr(exc, "code", type(exc).__name__))
            if stopping and committed:
                return
            await asyncio.sleep(0.2)

    async def flood() -> None:
        import msgpack
        from pysyncobj.config import FAIL_REASON
        counts: dict[str, dict[str, int]] = {"own": {}, "forged": {}}
        lock = threading.Lock()

        def record(kind: str):
            def done(result, reason) -> None:  # tick thread
                answer = ("refused_at_door" if reason == FAIL_REASON.REQUEST_DENIED else "ok"
                          if reason == FAIL_REASON.SUCCESS and isinstance(result, dict) and result.get("ok")
                          else str(result.get("error")) if isinstance(result, dict) else f"fail_{reason}")
                with lock:
                    counts[kind][answer] = counts[kind].get(answer, 0) + 1
            return done
        deadline = time.monotonic() + args.wait_s
        while time.monotonic() < deadline:  # fire and forget: ~4,000 commands a second
            for _ in range(20):
                own = signer.sign({"v": 1, "op": "clock", "op_id": uuid.uuid4().hex, "by": cfg.site_id,
                                   "now_ns": time.time_ns()})
                node._consumer.apply_command(msgpack.packb(own, use_bin_type=True), callback=record("own"))
                bad = forged(signer, args.victim, "clock")
                node._consumer.apply_command(msgpack.packb(bad, use_bin_type=True), callback=record("forged"))
            await asyncio.sleep(0.01)
        await asyncio.sleep(3.0)  # the last answers
        with lock:
            out(mode="flood", seconds=args.wait_s, **counts)

    async def run() -> None:
        if args.mode == "found":
            await found()
            return
        if args.mode == "flood":
            await wait_synced(node, args.volume, args.wait_s + 30)
            await flood()
            return
        await wait_synced(node, args.volume, args.wait_s)
        vol = node.state()["volumes"][args.volume]
        seqs = sorted(vol["snapshots"])
        if args.mode == "forge":
            v = args.victim
            attempts = [
                forged(signer, v, "promote", volume=args.volume, to=cfg.site_id, expected_epoch=vol["epoch"],
                       force=True),
                forged(signer, v, "mark_verdict", volume=args.volume, seq=seqs[-1], verdict="suspect",
                       reason="forged"),
                forged(signer, v, "prune_snapshots", volume=args.volume, seqs=seqs[:1]),
                forged(signer, v, "commit_snapshot", volume=args.volume, seq=vol["last_seq"] + 1,
                       epoch=vol["epoch"], root=bytes(32), parent_seq=None, created_at_ns=time.time_ns(),
                       holders=[v, cfg.site_id], stats={}, verdict="clean"),
                forged(signer, v, "set_retention", volume=args.volume,
                       retention={"keep_all_s": 1, "hourly_s": 1, "daily_s": 1, "lock_s": 1}),
            ]
            pending = [r for r, e in (node.state().get("requests") or {}).items() if e["status"] == "pending"]
            attempts += [forged(signer, v, "approve", request=r) for r in pending]
            attempts += [forged(signer, v, "veto", request=r) for r in pending]
            unsigned = forged(signer, v, "promote", volume=args.volume, to=cfg.site_id,
                              expected_epoch=vol["epoch"], force=True)
            del unsigned["sig"]
            attempts.append(unsigned)
            for command in attempts:
                out(mode="forge", op=command["op"], by=command["by"], signed="sig" in command,
                    error=await propose(node, command))
        elif args.mode == "claim-clean":
            me = cfg.site_id

            def own(op: str, **fields) -> dict:
                return signer.sign({"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": me, "now_ns": time.time_ns(),
                                    **fields})
            for seq in (q for q in seqs if q >= args.from_seq):
                for command in (own("site_verdict", volume=args.volume, seq=seq, verdict="clean", score_ppm=0,
                                    cumulative_ppm=0, first_seq=None, reason=""),
                                own("mark_verdict", volume=args.volume, seq=seq, verdict="clean", reason="all fine")):
                    out(mode="claim-clean", op=command["op"], seq=seq, error=await propose(node, command))
            weakest = {"mode": "content", "min_score": 1.0, "factor": 1000.0, "cumulative_max": 1.0, "window_s": 0,
                       "baseline_cap": 1.0, "magic_min": 10**9, "wipe_max": 1.0, "cold_max": 1.0, "cold_age_s": 0,
                       "change_max": 1.0}
            command = own("set_detection", volume=args.volume, policy=weakest)
            out(mode="claim-clean", op="set_detection", error=await propose(node, command))
        elif args.mode == "mark-suspect":
            me = cfg.site_id
            for seq in (q for q in seqs if q >= args.from_seq):
                command = signer.sign({"v": 1, "op": "mark_verdict", "op_id": uuid.uuid4().hex, "by": me,
                                       "now_ns": time.time_ns(), "volume": args.volume, "seq": seq,
                                       "verdict": "suspect", "reason": "ransom note seen here"})
                try:
                    res = await node.propose(command, timeout_s=5.0)
                    out(mode="mark-suspect", seq=seq, error="ok", verdict=res.get("verdict"),
                        flipped=res.get("flipped"), suspect_sites=res.get("suspect_sites"))
                except Exception as exc:  # the tests judge the honest sites
                    out(mode="mark-suspect", seq=seq, error=getattr(exc, "code", type(exc).__name__))
        elif args.mode == "churn":
            me = cfg.site_id
            for _ in range(args.rounds):
                for op, extra in (("demote", {}), ("promote", {"to": me})):
                    await wait_synced(node, args.volume, 30)
                    epoch = node.state()["volumes"][args.volume]["epoch"]
                    command = signer.sign({"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": me,
                                           "now_ns": time.time_ns(), "volume": args.volume, "expected_epoch": epoch,
                                           "force": True, **extra})
                    error = await propose(node, command)
                    after = node.state()["volumes"][args.volume]
                    out(mode="churn", op=op, error=error, epoch=after["epoch"], primary=after["primary"])
        elif args.mode == "take-instant":
            me = cfg.site_id

            def own(fields: dict) -> dict:
                return signer.sign({"v": 1, "op_id": uuid.uuid4().hex, "by": me, "now_ns": time.time_ns(), **fields})
            for label in ("promote_self", "promote_self_instant", "demote"):
                await wait_synced(node, args.volume, 30)
                now = node.state()["volumes"][args.volume]
                fields = {"op": "demote" if label == "demote" else "promote", "volume": args.volume,
                          "expected_epoch": now["epoch"], "force": True}
                if label != "demote":
                    fields["to"] = me
                if label == "promote_self_instant":
                    fields.update(snapshot=max(now["snapshots"]), instant=True)
                try:
                    await node.propose(own(fields), timeout_s=5.0)
                    error, refusal = "ok", None
                except Exception as exc:  # the tests judge the honest sites
                    error, refusal = getattr(exc, "code", type(exc).__name__), \
                        (getattr(exc, "evidence", None) or {}).get("refusal")
                after = node.state()["volumes"][args.volume]
                out(mode="take-instant", attempt=label, op=fields["op"], error=error, refusal=refusal,
                    epoch=after["epoch"], primary=after["primary"])
            now = node.state()["volumes"][args.volume]
            command = own({"op": "request", "action": "promote", "reason": "routine failover test",
                           "args": {"volume": args.volume, "to": me, "expected_epoch": now["epoch"], "force": True}})
            try:
                res = await node.propose(command, timeout_s=5.0)
                out(mode="take-instant", attempt="request", op="request", error="ok", status=res.get("status"),
                    request=res.get("request"), needed=res.get("needed"))
            except Exception as exc:
                out(mode="take-instant", attempt="request", op="request",
                    error=getattr(exc, "code", type(exc).__name__))
        elif args.mode == "raise-max":
            command = signer.sign({"v": 1, "op": "request", "op_id": uuid.uuid4().hex, "by": cfg.site_id,
                                   "now_ns": time.time_ns(), "action": "set_max_size", "reason": "disk resized",
                                   "args": {"volume": args.volume, "max_size_bytes": args.size_bytes}})
            try:
                res = await node.propose(command, timeout_s=5.0)
                out(mode="raise-max", size_bytes=args.size_bytes, error="ok", request=res.get("request"),
                    status=res.get("status"), needed=res.get("needed"))
            except Exception as exc:  # the tests judge the honest sites
                out(mode="raise-max", size_bytes=args.size_bytes, error=getattr(exc, "code", type(exc).__name__))
        elif args.mode == "veto":
            me = cfg.site_id
            open_ = [r for r, e in (node.state().get("requests") or {}).items() if e["status"] in ("pending", "approved")]
            for req in open_:
                command = signer.sign({"v": 1, "op": "veto", "op_id": uuid.uuid4().hex, "by": me,
                                       "now_ns": time.time_ns(), "request": req})
                out(mode="veto", request=req, error=await propose(node, command))
        elif args.mode == "policy":
            me = cfg.site_id
            policy = dict(vol.get("detection") or {})

            def own(op: str, **fields) -> dict:
                return signer.sign({"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": me, "now_ns": time.time_ns(),
                                    **fields})
            from replicad.core.anomaly import POLICY_DEFAULTS
            base = {**POLICY_DEFAULTS, **policy}
            redos = {**base, "ransom_notes": [*base["ransom_notes"], r"(?s)(?=(.+)+\x01Z)"]}
            strictest = {**base, "min_score": 0.0, "cumulative_max": 0.0, "wipe_max": 0.0, "conserve_max": 0.0,
                         "factor": 1.0, "rename_min": 1, "magic_min": 1, "window_s": 366 * 86400}
            new_vol = dict(primary=me, block_size=vol["block_size"], size_bytes=0, min_copies=2,
                           retention=vol["retention"])
            attempts = [
                ("redos_set", own("set_detection", volume=args.volume, policy=redos)),
                ("redos_request", own("request", action="set_detection", args={"volume": args.volume,
                                                                               "policy": redos}, reason="")),
                ("redos_add_volume", own("add_volume", volume="evil", detection=redos, **new_vol)),
                ("strict_set", own("set_detection", volume=args.volume, policy=strictest)),
                ("strict_add_volume", own("add_volume", volume="strict", detection=strictest, **new_vol)),
            ]
            for label, command in attempts:
                out(mode="policy", attempt=label, op=command["op"], error=await propose(node, command))
        elif args.mode == "reregister":
            me, bogus = cfg.site_id, "http://127.0.0.1:9"

            def own(op: str, **fields) -> dict:
                return signer.sign({"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": me, "now_ns": time.time_ns(),
                                    **fields})
            attempts = [(f"{s.site_id}_witness", own("register_site", site_id=s.site_id, peer_url=bogus, kind="witness"))
                        for s in cfg.sites if s.site_id != me]
            attempts += [("victim_data", own("register_site", site_id=args.victim, peer_url=bogus, kind="data")),
                         ("self_witness", own("register_site", site_id=me, peer_url=bogus, kind="witness"))]
            for label, command in attempts:
                deadline, error = time.monotonic() + 20, "no_quorum"
                while error == "no_quorum" and time.monotonic() < deadline:  # the same op id: applied once
                    error = await propose(node, command)
                out(mode="reregister", attempt=label, op=command["op"], site_id=command["site_id"],
                    kind=command["kind"], error=error)
            one_second = {"keep_all_s": 1, "hourly_s": 1, "daily_s": 1, "lock_s": 1}
            command = own("request", action="set_retention", args={"volume": args.volume, "retention": one_second},
                          reason="routine")
            try:
                res = await node.propose(command, timeout_s=5.0)
                out(mode="reregister", attempt="request", op="request", error="ok", status=res.get("status"),
                    needed=res.get("needed"), request=res.get("request"))
            except Exception as exc:
                out(mode="reregister", attempt="request", op="request", error=getattr(exc, "code", type(exc).__name__))
        elif args.mode == "add-volume":
            me = cfg.site_id  # a volume of its own, in its own name, as large as the state lets it claim
            command = signer.sign({"v": 1, "op": "add_volume", "op_id": uuid.uuid4().hex, "by": me,
                                   "now_ns": time.time_ns(), "volume": args.new_volume, "primary": me,
                                   "block_size": vol["block_size"], "size_bytes": args.size_bytes,
                                   "min_copies": 2, "retention": dict(DEFAULT_RETENTION)})
            out(mode="add-volume", volume=args.new_volume, size_bytes=args.size_bytes,
                error=await propose(node, command))
        elif args.mode == "inflate-commit":
            me, epoch, seq = cfg.site_id, vol["epoch"], vol["last_seq"] + 1
            shipped = await _ship_one_block(cfg, args.volume, epoch, seq)
            acked = {site: ack for site, ack in shipped.items() if ack is not None}  # not `got`: run()'s event
            out(mode="inflate-commit", acks=sorted(acked), shipped=sorted(shipped))
            for label, size in (("exact", 2**50), ("within_bound", args.size_bytes)):
                command = signer.sign({"v": 1, "op": "commit_snapshot", "op_id": uuid.uuid4().hex, "by": me,
                                       "now_ns": time.time_ns(), "volume": args.volume, "seq": seq, "epoch": epoch,
                                       "root": shipped.root, "parent_seq": None, "created_at_ns": time.time_ns(),
                                       "holders": [me, *sorted(acked)], "stats": {}, "verdict": "clean",
                                       "size_bytes": size, "acks": acked})
                out(mode="inflate-commit", attempt=label, size_bytes=size, error=await propose(node, command))
        elif args.mode == "bogus-commit":
            root = secrets.token_bytes(32)  # stored nowhere
            me, v, epoch, last = cfg.site_id, args.victim, vol["epoch"], vol["last_seq"]

            def own(**over) -> dict:
                fields = dict(volume=args.volume, seq=last + 1, epoch=epoch, root=root, parent_seq=None,
                              created_at_ns=time.time_ns(), holders=[me, v], stats={}, verdict="clean")
                fields.update(over)
                return signer.sign({"v": 1, "op": "commit_snapshot", "op_id": uuid.uuid4().hex, "by": me,
                                    "now_ns": time.time_ns(), **fields})
            attempts = [
                ("exact", own(seq=2**63 - 1, size_bytes=2**50)),
                ("no_ack", own()),
                ("ack_by_own_key", own(size_bytes=65536, acks={v: signer.sign_ack(args.volume, epoch, last + 1, root,
                                                                                     65536, 1)})),
                ("huge_seq_with_own_ack", own(seq=2**63 - 1, acks={v: signer.sign_ack(args.volume, epoch,
                                                                                        2**63 - 1, root, 0, 0)})),
            ]
            for label, command in attempts:
                out(mode="bogus-commit", attempt=label, op=command["op"], by=command["by"], seq=command["seq"],
                    error=await propose(node, command))
        else:
            deadline = time.monotonic() + args.wait_s
            while not got.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if not captured:
                out(mode="replay", error="nothing captured")
                return
            command = captured[0]
            await asyncio.sleep(1.0)  # the victim's later heartbeats commit first
            # an honest node answers a proposal of bytes it applied already from their kept result,
            # sending nothing; the attacker sends them: its node forgets what it applied
            node._syncobj._own_results.clear()
            out(mode="replay", op=command["op"], by=command["by"], op_id=command["op_id"],
                error=await propose(node, command))

    return run_then_close(node, run())


if __name__ == "__main__":
    sys.exit(main())
