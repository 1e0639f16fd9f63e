"""One signed RaftNode process for the Raft-layer history (:mod:`chaos.raftjepsen`).

``python -m chaos.raftnode SPEC.json`` where SPEC is ``{"addr", "partners": [...],
"data_dir", "compaction", "every", "site_id", "key_pem", "keys": {site: hex public key},
"sites": {addr: site}, "cluster", "password", "applied_log"}``: a RaftNode configured as a
daemon's (signed commands, pinned keys, vouched checkpoints, the signed channel), with a
small compaction threshold and checkpoint interval so dumps exist within a short run.

Every command the state machine applies (also the ones replayed from the journal or a dump's
suffix after a restart) is appended to ``applied_log`` as one JSON line ``{"n": applied
count after it, "op", "op_id", "by", "ok", "error"}`` with a single ``write(2)`` (a SIGKILL
loses nothing written; a line is never torn by a kill). ``n`` is the command's position in
the replicated command sequence since genesis, so a replay writes the same ``(n, op_id)``
again and a command present twice in the log shows as one ``op_id`` at two ``n``.

Driven by JSON lines on stdin like ``tests/integration/signed_raft_helper.py``:
``{"id", "cmd": "propose" | "state" | "status", ...}`` answered on stdout. A refusal to
start (:class:`~replicad.core.errors.ReplicadError` from ``start()``, e.g. a damaged
journal or dump) prints ``{"start_error": code, "message"}`` and exits with the error's
exit code, as the daemon does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from pathlib import Path


def main(spec: dict) -> int:
    """Run the node described by ``spec`` until stdin closes. Returns the exit code."""
    from replicad.consensus.raft import RaftNode
    from replicad.core import errors
    from replicad.core.identity import Signer, Trust, load_private_key_pem

    key = load_private_key_pem(Path(spec["key_pem"]).read_bytes())
    trust = Trust(cluster_id=spec["cluster"], keys={s: (bytes.fromhex(k),) for s, k in spec["keys"].items()})
    fd = os.open(spec["applied_log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    holder: list = []

    def on_applied(command: dict, result: dict) -> None:  # tick thread
        node = holder[0] if holder else None
        n = node._consumer.cluster.get("applied") if node is not None else None
        line = {"n": n, "op": command.get("op"), "op_id": command.get("op_id"), "by": command.get("by"),
                "ok": bool(result.get("ok")), "error": result.get("error")}
        os.write(fd, (json.dumps(line) + "\n").encode())

    node = RaftNode(spec["addr"], spec["partners"], Path(spec["data_dir"]), spec["password"],
                    compaction_min_entries=spec["compaction"], members=sorted(spec["keys"]), trust=trust,
                    signer=Signer(spec["site_id"], key, spec["cluster"]), sites=spec["sites"],
                    on_applied=on_applied)
    holder.append(node)
    node.set_checkpoint_interval(spec["every"])
    try:
        node.start()
    except errors.ReplicadError as err:
        print(json.dumps({"start_error": err.code, "message": err.message[:2000]}), flush=True)
        return err.exit_code
    return asyncio.run(_serve(node))


async def _serve(node) -> int:
    from replicad.core import errors

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)

    async def handle(req: dict) -> None:
        try:
            if req["cmd"] == "propose":
                res = await node.propose(req["command"], timeout_s=req.get("timeout_s", 5.0))
                out = {"ok": True, "result": {k: v for k, v in res.items() if isinstance(v, (str, int, bool))}}
            elif req["cmd"] == "state":
                st = node.state()
                out = {"ok": True, "result": {"applied": st.get("applied"), "sites": sorted(st.get("sites", {})),
                                              "digest": _digest(st)}}
            else:
                out = {"ok": True, "result": node.status()}
        except errors.ReplicadError as exc:
            out = {"ok": False, "error": exc.code, "evidence": {k: str(v)[:200] for k, v in exc.evidence.items()}}
        print(json.dumps({"id": req["id"], **out}, default=str), flush=True)

    while (line := await lines.get()) is not None:
        asyncio.ensure_future(handle(json.loads(line)))
    node.close()
    return 0


def _digest(state: dict) -> str:
    """Hex state digest (:func:`replicad.consensus.checkpoint.state_digest`) of ``state``."""
    from replicad.consensus.checkpoint import state_digest
    return state_digest(state).hex()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(json.loads(Path(sys.argv[1]).read_text())))
