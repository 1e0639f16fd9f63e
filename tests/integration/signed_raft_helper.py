"""One signed RaftNode process for the checkpoint tests (``tests/integration/test_checkpoints.py``,
``tests/security/test_dump_forgery.py``), driven like ``test_consensus.HELPER`` by JSON lines.

``python -m tests.integration.signed_raft_helper SPEC.json`` where SPEC is
``{"addr", "partners": [...], "data_dir", "compaction", "every", "site_id", "key_pem",
"keys": {site: hex public key}, "sites": {addr: site}, "cluster", "attacker": bool}``.

Requests: ``{"id", "cmd": "propose" | "state" | "status" | "journal", ...}``; a ``propose``
is signed by this site (``by`` filled in). ``start()`` raising a :class:`ReplicadError`
prints ``{"start_error": code, "message"}`` and exits with its exit code (a daemon does the
same).

With ``attacker`` (the security test: this process holds site-a's key, password and data dir
and runs code of its own) the node campaigns at once (a short election timeout) and every
dump it writes, hence ships to a follower behind its compacted log, is forged: its own state
with the volume ``ehr`` made primary at this site at epoch + 100 and every revocation
dropped, as a base that claims to be the current count with no suffix. Its ``forge`` request
(``{"seconds", "victim"}``, answered at once) appends ~1,000 ``clock`` commands a second in the
victim's name, signed with this site's own key, straight into its own log for ``seconds``
(proposed locally: a leader's own proposals pass no door; a follower forwards them to the leader);
``forged`` answers how many it submitted so far.

``depose_grace`` (optional): the entries after a change of the agreed membership whose refusals a
follower does not count against the leader (``replicad.consensus.raft.DEPOSE_GRACE_ENTRIES``,
4,096), for a test of the deposing that is not a test of the grace.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import threading
from pathlib import Path

import msgpack


def to_json(v):
    if isinstance(v, bytes):
        return {"__bytes__": v.hex()}
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    return v


def from_json(v):
    if isinstance(v, dict):
        if set(v) == {"__bytes__"}:
            return bytes.fromhex(v["__bytes__"])
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def forge(node, spec: dict) -> None:
    """Make ``node`` write forged dumps (see the module docstring)."""

    def forged_dump(tmp_file: str, raft_data: tuple) -> None:
        last, prev, cluster = raft_data
        with node._consumer.lock:
            state = node._consumer.cluster
        vols = dict(state.get("volumes", {}))
        if "ehr" in vols:
            vols["ehr"] = {**vols["ehr"], "primary": spec["site_id"], "epoch": vols["ehr"]["epoch"] + 100}
        forged = {**state, "volumes": vols, "revoked": {}}
        document = {"v": 2, "base_n": forged.get("applied", 0), "base": forged, "suffix": [], "last": list(last),
                    "prev": list(prev), "cluster": sorted(str(getattr(n, "id", n)) for n in cluster)}
        with open(tmp_file, "wb") as f:
            f.write(msgpack.packb(document, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())

    node._serialize_dump = forged_dump


def forge_flood(node, spec: dict, key, victim: str, seconds: float, counter: list) -> None:
    """The attacker's ``forge`` (see the module docstring): a thread, fire and forget."""
    import time
    import uuid

    from replicad.core import identity

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            command = {"v": 1, "op": "clock", "op_id": uuid.uuid4().hex, "by": victim, "now_ns": time.time_ns(),
                       "cluster": spec["cluster"]}
            command["sig"] = key.sign(identity.canonical_bytes(command))
            node._consumer.apply_command(msgpack.packb(command, use_bin_type=True))
            counter[0] += 1
        time.sleep(0.02)


async def main(spec: dict) -> int:
    from replicad.consensus import raft
    from replicad.consensus.raft import RaftNode
    from replicad.core import errors
    from replicad.core.identity import Signer, Trust, load_private_key_pem

    if "depose_grace" in spec:  # point 18's grace after a membership change (raft.DEPOSE_GRACE_ENTRIES)
        raft.DEPOSE_GRACE_ENTRIES = spec["depose_grace"]
    if spec.get("attacker"):
        import pysyncobj.syncobj
        pysyncobj.syncobj.SyncObj._SyncObj__generateRaftTimeout = lambda self: 0.05  # campaign first
    key = load_private_key_pem(Path(spec["key_pem"]).read_bytes())
    trust = Trust(cluster_id=spec["cluster"], keys={s: (bytes.fromhex(k),) for s, k in spec["keys"].items()})
    kwargs = dict(compaction_min_entries=spec["compaction"], members=sorted(spec["keys"]), trust=trust,
                  signer=Signer(spec["site_id"], key, spec["cluster"]))
    if "sites" in inspect.signature(RaftNode.__init__).parameters:
        kwargs["sites"] = spec["sites"]  # the signed channel handshake, where present
    node = RaftNode(spec["addr"], spec["partners"], Path(spec["data_dir"]), spec["password"], **kwargs)
    node.set_checkpoint_interval(spec["every"])
    if spec.get("attacker"):
        forge(node, spec)
    try:
        node.start()
    except errors.ReplicadError as err:
        print(json.dumps({"start_error": err.code, "message": err.message}), flush=True)
        return err.exit_code
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)

    forged = [0]

    async def handle(req: dict) -> None:
        try:
            if req["cmd"] == "forge" and spec.get("attacker"):
                threading.Thread(target=forge_flood, args=(node, spec, key, req["victim"], req["seconds"], forged),
                                 daemon=True).start()
                out = {"ok": True, "result": {"started": True}}
            elif req["cmd"] == "forged":
                out = {"ok": True, "result": {"forged": forged[0]}}
            elif req["cmd"] == "propose":
                res = await node.propose(from_json(req["command"]), timeout_s=req.get("timeout_s", 5.0))
                out = {"ok": True, "result": to_json(res)}
            elif req["cmd"] == "state":
                out = {"ok": True, "result": to_json(node.state())}
            elif req["cmd"] == "journal":
                entries = [[e[1], e[2]] for e in list(node._syncobj._SyncObj__raftLog)]
                out = {"ok": True, "result": {"entries": entries, "deleted": []}}
            else:
                out = {"ok": True, "result": to_json(node.status())}
        except errors.ReplicadError as exc:
            out = {"ok": False, "error": exc.code, "evidence": to_json(exc.evidence)}
        print(json.dumps({"id": req["id"], **out}), flush=True)

    while (line := await lines.get()) is not None:
        asyncio.ensure_future(handle(json.loads(line)))
    node.close()
    return 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()))))
