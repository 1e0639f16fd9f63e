"""The front-running Raft leader of ``test_front_running_leader.py`` (attacker reviews r13, F5, and
r14, A4): the real replicad daemon of ONE site, run with one patch: while it is the Raft leader and
the file ``TRIGGER`` exists, each command of another site whose op is in the environment variable
``FRONTRUN_OPS`` (comma list; default ``request``) that reaches it, forwarded (``apply_command``)
or relayed through a member (``relay_command``, raft point 20), is front-run: before passing the
message on, unchanged, this leader appends a command of ITS OWN, validly signed with its own key,
carrying the member's op id (a re-registration of itself: accepted, harmless). Under rules 1 and 2
the state machine remembers answers by op id alone, so the member's command, appended right after,
is answered with this site's stored answer and never applied; and being appended, it is not
withheld (raft point 19 never fires). When ``TRIGGER`` holds the word ``relayed``, such commands
forwarded by their own site are dropped instead (not front-run), so that they reach this leader
only relayed (their site relays what is not in its log after ``raft.WITHHELD_RESEND_S``), and
those relayed copies are front-run. Each front-run is printed on stderr (``FRONTRUN`` lines with
the message type, in the site's log), each dropped forward too (``DROPPED``). Everything else is
the honest daemon's.

Run as ``python3 -m tests.security.front_running_leader TRIGGER run SITE.toml`` (the arguments
after TRIGGER are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

from replicad.config import load_config, load_signer
from replicad.consensus import checkpoint, raft


def main(argv: list[str]) -> int:
    trigger = Path(argv[0])
    cfg = load_config(Path(argv[-1]))
    signer, me = load_signer(cfg), cfg.site_id
    targets = set(os.environ.get("FRONTRUN_OPS", "request").split(","))
    honest = raft._HardenedSyncObj._dispatch_message

    def front_running(self: Any, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in ("apply_command", "relay_command") and trigger.exists() \
                and self._SyncObj__raftState == raft._RAFT_STATE_LEADER:
            entry = raft.entry_call(message.get("command"))
            cmd = checkpoint.decode_command(entry[1]) if entry is not None else None
            if isinstance(cmd, dict) and cmd.get("by") != me and cmd.get("op") in targets \
                    and isinstance(cmd.get("op_id"), str):
                note = f"{kind} {cmd.get('by')} {cmd.get('op')} op_id={cmd['op_id']}"
                if kind == "apply_command" and "relayed" in trigger.read_text(errors="replace"):
                    print(f"DROPPED {note}", file=sys.stderr, flush=True)
                    return  # its site relays it through the members: front-run there
                mine = signer.sign({"v": cmd.get("v", 1), "op": "register_site", "op_id": cmd["op_id"], "by": me,
                                    "now_ns": time.time_ns(), "site_id": me,
                                    "peer_url": str(cfg.self_ref().peer_url), "kind": "data"})
                consumer = next(x for x in self._SyncObj__consumers if hasattr(x, "apply_command"))
                consumer.apply_command(msgpack.packb(mine, use_bin_type=True), callback=lambda *a: None)
                print(f"FRONTRUN {note}", file=sys.stderr, flush=True)
        honest(self, node, message)

    raft._HardenedSyncObj._dispatch_message = front_running
    from replicad.cli import main as replicad_main
    return replicad_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
