"""The founding forger of ``test_forged_found.py`` (attacker review r14, A1): the real replicad daemon
of ONE site, run with three patches, until the cluster is founded:

* LEAD: until its forged founds are in its log it grants no vote and no pre-vote to another member
  (drops their ``request_vote`` and ``pre_vote``), so, every log being empty, it leads first.
* FORGE: leading, before anything else it appends a ``found`` in the name of VICTIM, signed with an
  Ed25519 key this process made, whose ``members`` list that key for VICTIM (every other entry is
  its own config's), then a ``found`` of its own (its real key) with the same list: two identical
  lists of three configured sites, which a self-certifying state machine adopts. KIND ``plain``:
  no ``rules`` (a state under rules 1 hands it to the frozen rules-1 machine); ``rules``: carrying
  this release's ``RULES_MAX`` (the founding under rules).
* OWN: its daemon's own ``found`` proposals list that key for VICTIM too (KIND ``plain``: without
  ``rules``), so they never agree with the honest sites' lists; and it does not stop when the
  cluster adopts its forged list (its config is the true one).

Each forged command is printed on stderr (``FORGED`` lines, in the site's log). Everything else is
the honest daemon's.

Run as ``python3 -m tests.security.forging_founder VICTIM KIND run SITE.toml`` (the arguments after
KIND are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack

from replicad.config import load_config, load_signer
from replicad.consensus import raft
from replicad.core import identity
from replicad.core import state as cluster_state
from replicad.site import cluster as site_cluster


def main(argv: list[str]) -> int:
    victim, kind = argv[0], argv[1]
    cfg = load_config(Path(argv[-1]))
    signer = load_signer(cfg)
    fake = identity.generate_private_key()
    fake_text = identity.format_public_key(identity.public_key_raw(fake))
    forged_members = [{**m, "keys": [fake_text]} if m["site_id"] == victim else m for m in cfg.membership()]
    extra = {cluster_state.RULES: cluster_state.RULES_MAX} if kind == "rules" else {}
    done = {"forged": False}

    def forged_founds() -> list[dict]:
        base = {"v": 1, "op": "found", "members": forged_members, **extra}
        in_its_name = identity.Signer(victim, fake, cfg.cluster_id).sign(
            {**base, "op_id": uuid.uuid4().hex, "now_ns": time.time_ns(), "incarnation": os.urandom(16)})
        own = signer.sign({**base, "op_id": uuid.uuid4().hex, "now_ns": time.time_ns(), "incarnation": os.urandom(16)})
        return [in_its_name, own]

    honest_dispatch = raft._HardenedSyncObj._dispatch_message

    def forging(self: Any, node: Any, message: Any) -> None:
        if not done["forged"]:
            if isinstance(message, dict) and message.get("type") in ("request_vote", "pre_vote"):
                return  # LEAD: no vote for anyone else until the forged founds are appended
            if self._SyncObj__raftState == raft._RAFT_STATE_LEADER:
                done["forged"] = True
                consumer = next(x for x in self._SyncObj__consumers if hasattr(x, "apply_command"))
                for cmd in forged_founds():
                    consumer.apply_command(msgpack.packb(cmd, use_bin_type=True), callback=lambda *a: None)
                    print(f"FORGED found by={cmd['by']} kind={kind} op_id={cmd['op_id']} key_for_{victim}={fake_text}",
                          file=sys.stderr, flush=True)
        honest_dispatch(self, node, message)

    honest_propose = site_cluster.Cluster.propose

    async def propose(self: Any, op: str, **args: Any) -> dict:
        if op == "found":  # OWN: the attacker's own proposals list its key for the victim
            args = {**args, "members": forged_members}
            if kind == "plain":
                args.pop(cluster_state.RULES, None)
        return await honest_propose(self, op, **args)

    from replicad.site import daemon as site_daemon
    honest_agreed = site_daemon.SiteDaemon._membership_agreed

    def agreed(self: Any, members: list[dict], decisive: bool = False) -> None:
        if members != forged_members:  # the attacker is content with its own founding
            honest_agreed(self, members, decisive)

    raft._HardenedSyncObj._dispatch_message = forging
    site_cluster.Cluster.propose = propose
    site_daemon.SiteDaemon._membership_agreed = agreed
    from replicad.cli import main as replicad_main
    return replicad_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
