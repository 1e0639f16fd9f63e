"""The founding withholder of ``test_founding_withheld.py`` (attacker review r15, F1): the real
replicad daemon of ONE site, run with these patches:

* LEAD: it grants no vote and no pre-vote to another member (drops their ``request_vote`` and
  ``pre_vote``), so, started first, it leads.
* WITHHOLD: to VICTIM's Raft node it sends no entry past the first entry of its own term (its
  no-op) and reports at most that entry as the commit index, so VICTIM counts itself caught up (it
  applied the leader's commit index, an entry of the current term) while every ``found`` of the
  founding is withheld; no full state either. VICTIM's forwarded commands (``apply_command``) are
  answered ``REQUEST_DENIED`` at once, as the door answers a refusal; every ``relay_command`` of
  any member is dropped (VICTIM's ``found`` never arrives relayed).
* SYNC DELAY: for ``FW_DELAY_S`` (6 s) after it would first send VICTIM anything, and again after
  VICTIM was away for 3 s, nothing: the others' membership reports reach VICTIM before its first
  bootstrap round.

Every withheld forward is counted on stderr (``WITHHELD`` lines, every 20th, in the site's log).
Everything else is the honest daemon's.

Run as ``python3 -m tests.security.founding_withholder VICTIM run SITE.toml`` (the arguments after
VICTIM are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from pysyncobj.config import FAIL_REASON

from replicad.config import load_config
from replicad.consensus import channel, raft

DELAY_S = float(os.environ.get("FW_DELAY_S", "6"))
"""SYNC DELAY: seconds VICTIM hears nothing from this leader when it (re)appears."""


def main(argv: list[str]) -> int:
    """``argv``: VICTIM's site id, then the ``replicad`` command's arguments (the config last).
    Returns the daemon's exit code."""
    victim = argv[0]
    cfg = load_config(Path(argv[-1]))
    vaddr = next(str(s.raft) for s in cfg.sites if s.site_id == victim)
    print(f"WITHHOLDER victim={victim} addr={vaddr}", file=sys.stderr, flush=True)
    state: dict[str, Any] = {"obj": None, "n": 0}
    honest_dispatch = raft._HardenedSyncObj._dispatch_message

    def dispatch(self: Any, node: Any, message: Any) -> None:
        state["obj"] = self
        if isinstance(message, dict):
            if message.get("type") in ("request_vote", "pre_vote", "relay_command"):
                return  # LEAD; no member's relay (VICTIM's found must not arrive relayed)
            if message.get("type") == "apply_command" and str(getattr(node, "id", node)) == vaddr:
                state["n"] += 1
                if "request_id" in message:  # denied at once, as the door denies a refused command
                    self._SyncObj__transport.send(node, {"type": "apply_command_response",
                                                         "request_id": message["request_id"],
                                                         "error": FAIL_REASON.REQUEST_DENIED})
                if state["n"] % 20 == 1:
                    print(f"WITHHELD {message.get('type')} from {vaddr} (#{state['n']})", file=sys.stderr, flush=True)
                return
        honest_dispatch(self, node, message)

    honest_send = channel.MemberOnlyTransport.send

    def send(self: Any, node: Any, message: Any) -> bool:
        obj = state["obj"]
        if obj is None or not isinstance(message, dict) or message.get("type") != "append_entries" \
                or str(getattr(node, "id", node)) != vaddr:
            return honest_send(self, node, message)
        term = obj._SyncObj__raftCurrentTerm
        cap = next((e[1] for e in obj._SyncObj__raftLog if e[2] == term), None)
        if cap is None:
            return honest_send(self, node, message)
        now = time.monotonic()
        if now - state.get("last", now) > 3.0:
            state.pop("first", None)  # VICTIM was away (restarted): delay again
        state["last"] = now
        if now - state.setdefault("first", now) < DELAY_S:
            return True  # SYNC DELAY
        if "transmission" in message or "serialized" in message:
            return True  # no full state
        message = dict(message)
        entries = [e for e in message.get("entries") or [] if e[1] <= cap]
        if message.get("prevLogIdx", 0) >= cap:
            message["prevLogIdx"], message["prevLogTerm"] = cap, term
            entries = []
        message["entries"] = entries
        message["commit_index"] = min(message.get("commit_index") or 0, cap)
        return honest_send(self, node, message)

    raft._HardenedSyncObj._dispatch_message = dispatch
    channel.MemberOnlyTransport.send = send
    from replicad.cli import main as replicad_main
    return replicad_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
