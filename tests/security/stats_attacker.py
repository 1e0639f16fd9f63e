"""The attacker of ``test_stats_poison.py``: ONE site's own daemon (its config, its key: a real
``replicad run``) changed so that every ``commit_snapshot`` from its ``--from``-th on carries
stats the other daemons read but cannot use (review R10, F1 and F3). The holders' signed
acknowledgements cover volume, epoch, seq, root and size, never the stats, so nothing but the
state machine stands between these stats and every site's Raft state.

Run as ``python3 -m tests.security.stats_attacker --from N run CONFIG`` (the arguments after
``--from N`` are ``replicad``'s). Each poisoned commit takes the next of :data:`POISONS` in
turn (the last one again once they are used up).
"""

from __future__ import annotations

import sys

POISONS = (
    {"random_changed_blocks": "x"},  # int() of it stopped the next primary's every snapshot
    {"total_blocks": None},
    {"zero_blocks": "0"},
    {"has_parent": 2},
    {"changed_blocks": 10**12},  # more blocks than the volume has
    {"changed_blocks": "0\x1b[2K\x1b[1A\x1b[2K\r#1 (epoch 1): clean\n\x1b[32mAUDIT site-b approved r7\x1b[0m"},
    {"note\x1b[2K": 1},  # a key that does not print
)


def main() -> int:
    args = sys.argv[1:]
    if args[:1] != ["--from"] or len(args) < 2:
        print("usage: python3 -m tests.security.stats_attacker --from N run CONFIG", file=sys.stderr)
        return 2
    poison_from = int(args[1])
    sys.argv = [sys.argv[0], *args[2:]]
    from replicad.site import cluster as site_cluster

    original = site_cluster.Cluster.propose
    commits = [0]

    async def propose(self, op, **fields):
        if op == "commit_snapshot" and isinstance(fields.get("stats"), dict):
            commits[0] += 1
            if commits[0] >= poison_from:
                poison = POISONS[min(commits[0] - poison_from, len(POISONS) - 1)]
                fields["stats"] = {**fields["stats"], **poison}
        return await original(self, op, **fields)

    site_cluster.Cluster.propose = propose
    from replicad.cli import main as replicad_main

    return replicad_main()


if __name__ == "__main__":
    sys.exit(main())
