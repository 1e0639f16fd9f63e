"""The flooding Raft leader of ``test_audit_share.py`` (attack review R15, F2): the real replicad
daemon of ONE site, run with one patch: it votes for nobody (so, started first, it leads) and, while
it leads and once the file ``TRIGGER`` exists, it appends ``COUNT`` entries of its own: each a
``veto`` of a request that does not exist, in its OWN name and signed with its own key (so every
state machine checks the signature, refuses the veto and audits it), as fast as its Raft node takes
them. Under rules 1..3 the state kept the last 1,000 audit records of every command: ~2,600 such
entries pushed every other site's records (an approved revocation, a retention request: who signed
what) out of the state at every site. A line ``FLOOD DONE COUNT`` is printed on stderr (the site's
log) once every entry was handed to Raft. Everything else is the honest daemon's.

Run as ``python3 -m tests.security.flooding_leader TRIGGER COUNT run SITE.toml`` (the arguments after
COUNT are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack


def main(argv: list[str]) -> int:
    trigger, count = Path(argv[0]), int(argv[1])
    from replicad.config import load_config, load_signer
    from replicad.consensus import raft

    cfg = load_config(Path(argv[-1]))
    signer = load_signer(cfg)
    started = [False]
    honest = raft._HardenedSyncObj._dispatch_message

    def flood(consumer: Any) -> None:
        for i in range(count):
            veto = signer.sign({"v": 1, "op": "veto", "op_id": uuid.uuid4().hex, "now_ns": time.time_ns(),
                                "request": f"r{900_000_000 + i}"})
            consumer.apply_command(msgpack.packb(veto, use_bin_type=True), callback=lambda *a: None)
            if i % 200 == 199:
                time.sleep(0.05)  # the tick thread takes them from its queue meanwhile
        print(f"FLOOD DONE {count} {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)

    def dispatch(self: Any, node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") in ("request_vote", "pre_vote"):
            return  # votes for nobody: it leads
        if not started[0] and trigger.exists() and self._SyncObj__raftState == raft._RAFT_STATE_LEADER:
            started[0] = True
            consumer = next(x for x in self._SyncObj__consumers if hasattr(x, "apply_command"))
            threading.Thread(target=flood, args=(consumer,), name="flood", daemon=True).start()
        honest(self, node, message)

    raft._HardenedSyncObj._dispatch_message = dispatch
    from replicad.cli import main as replicad_main
    return replicad_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
