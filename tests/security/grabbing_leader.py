"""The Raft attacker of ``test_leader_grab.py`` (attacker review R7 F1): the real replicad daemon of
ONE site, run with two patches, each active while its trigger file exists:

* GRAB: while it does not lead, on every tick it asks for pre-votes claiming point 7's old isolation
  exception (``needs_leader`` true, no leader heard "for ever"), with its up-to-date log. Before,
  the honest followers granted it despite their leader's lease and it won the election in ~1 s.
* WITHHOLD: as leader, it drops every command of the site VICTIM: the ones VICTIM forwards
  (``apply_command``) and the relays carrying them from any member (``relay_command``, point 20),
  and appends everybody else's as an honest leader does.

Run as ``python3 -m tests.security.grabbing_leader GRAB WITHHOLD VICTIM run SITE.toml`` (the
arguments after VICTIM are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from replicad.consensus import checkpoint, raft


def _by(command: Any) -> Any:
    """The ``by`` of a log entry's command, or None."""
    entry = raft.entry_call(command)
    decoded = None if entry is None else checkpoint.decode_command(entry[1])
    return decoded.get("by") if isinstance(decoded, dict) else None


def main(argv: list[str]) -> int:
    grab, withhold, victim = Path(argv[0]), Path(argv[1]), argv[2]
    honest_dispatch = raft._HardenedSyncObj._dispatch_message
    honest_tick = raft._HardenedSyncObj._onTick
    said = set()

    def selective(self: Any, node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") in ("apply_command", "relay_command") \
                and withhold.exists() and _by(message.get("command")) == victim:
            if "withhold" not in said:
                said.add("withhold")
                print(f"ATTACKER: dropping {victim}'s commands", flush=True)
            return
        honest_dispatch(self, node, message)

    def tick(self: Any, timeToWait: float = 0.0) -> None:
        if grab.exists() and self._SyncObj__raftState != raft._RAFT_STATE_LEADER:
            if "grab" not in said:
                said.add("grab")
                print("ATTACKER: claiming isolation on every tick", flush=True)
            self.needs_leader = lambda: True
            self._leader_contact = float("-inf")
            self._started_at = float("-inf")
            self._SyncObj__raftElectionDeadline = 0
        honest_tick(self, timeToWait)

    raft._HardenedSyncObj._dispatch_message = selective
    raft._HardenedSyncObj._onTick = tick
    from replicad.cli import main as replicad_main
    return replicad_main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
