"""The withholding Raft leader of ``test_withholding_leader.py`` (attacker review F3): the real
replicad daemon of ONE site, run with one patch: while the file ``TRIGGER`` exists, its Raft node
drops every ``apply_command`` a member forwards and every ``relay_command`` (raft point 20: a
member's command relayed by itself or another member; no answer, nothing appended). Everything else,
its own proposals, heartbeats and commits, is the honest daemon's.

Run as ``python3 -m tests.security.withholding_leader TRIGGER run SITE.toml`` (the arguments
after TRIGGER are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from replicad.consensus import raft


def main(argv: list[str]) -> int:
    trigger = Path(argv[0])
    honest = raft._HardenedSyncObj._dispatch_message

    def withholding(self: Any, node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") in ("apply_command", "relay_command") \
                and trigger.exists():
            return  # dropped: the member hears nothing back and nothing reaches the log
        honest(self, node, message)

    raft._HardenedSyncObj._dispatch_message = withholding
    from replicad.cli import main as replicad_main
    return replicad_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
