"""The forging Raft leader of ``test_vanished_revocation.py`` (attack review R15, F3): the real
replicad daemon of ONE site, run with one patch: it votes for nobody (so, started first, it leads)
and, while it leads and once the file ``TRIGGER`` exists, it appends ONE entry of its own making: a
``revoke_site`` command in site-a's name, signed with this site's own key (so every state machine
refuses it, ``bad_request``, and audits it with the ``op``, ``by`` and ``now_ns`` it claims),
stamped 2^62 ns. Before, that one refused record passed for the run of site-a's approved
revocation at a site catching up from a full state, which then did not report it VANISHED. The
entry is printed on stderr (``FORGED RECORD``, in the site's log). Everything else is the honest
daemon's.

Run as ``python3 -m tests.security.forging_record_leader TRIGGER run SITE.toml`` (the arguments
after TRIGGER are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack


def main(argv: list[str]) -> int:
    trigger = Path(argv[0])
    from replicad.config import load_config, load_signer
    from replicad.consensus import raft
    from replicad.core import identity

    cfg = load_config(Path(argv[-1]))
    signer = load_signer(cfg)
    done = [False]
    honest = raft._HardenedSyncObj._dispatch_message

    def dispatch(self: Any, node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") in ("request_vote", "pre_vote"):
            return  # votes for nobody: it leads
        if not done[0] and trigger.exists() and self._SyncObj__raftState == raft._RAFT_STATE_LEADER:
            done[0] = True
            forged = identity.Signer("site-a", signer.private_key, cfg.cluster_id).sign(
                {"v": 1, "op": "revoke_site", "op_id": uuid.uuid4().hex, "now_ns": 2**62})
            consumer = next(x for x in self._SyncObj__consumers if hasattr(x, "apply_command"))
            consumer.apply_command(msgpack.packb(forged, use_bin_type=True), callback=lambda *a: None)
            print(f"FORGED RECORD appended {forged['op_id']} {time.strftime('%H:%M:%S')}", file=sys.stderr,
                  flush=True)
        honest(self, node, message)

    raft._HardenedSyncObj._dispatch_message = dispatch
    from replicad.cli import main as replicad_main
    return replicad_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
