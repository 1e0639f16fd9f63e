"""The log-growing member of ``test_log_growth.py`` (attack review R16, F3): the real replicad daemon
of ONE site, run with two patches: it never vouches for a checkpoint (raft point 14: the log compacts
only at a checkpoint a majority vouched, so while another site is down nobody compacts), and once the
file ``TRIGGER`` exists ``WORKERS`` tasks propose, through the daemon's own Raft node, signed commands
in its own name carrying a ``PAD``-byte field: a ``veto`` of a request that does not exist, refused by
every state machine once applied, journaled by every site first. Leading, its own entries passed no
door; following, it stays within its forwarding budget (raft point 17). A line ``GROW HH:MM:SS
{outcome: count}`` is printed on stderr (the site's log) every 5 s. Everything else is the honest
daemon's.

Run as ``python3 -m tests.security.growing_site TRIGGER WORKERS PAD run SITE.toml`` (the arguments
after PAD are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    trigger, workers, pad = Path(argv[0]), int(argv[1]), int(argv[2])
    from replicad.consensus import raft
    from replicad.site import daemon

    raft.RaftNode._vouch_step = lambda self, syncobj: None  # never vouches
    honest = daemon.SiteDaemon._clock_loop

    async def loop(self: Any) -> None:
        await self.volumes.joined.wait()
        counts: dict[str, int] = {}

        async def one() -> None:
            while not trigger.exists():
                await asyncio.sleep(0.2)
            while True:
                try:
                    await self.cluster.propose("veto", request="r999999", pad="x" * pad, deadline_s=10)
                    counts["ok"] = counts.get("ok", 0) + 1
                except Exception as err:  # refused by the state machine (bad_request) or by Raft
                    key = str(getattr(err, "code", type(err).__name__))
                    counts[key] = counts.get(key, 0) + 1
                    await asyncio.sleep(0.02)

        async def report() -> None:
            while True:
                await asyncio.sleep(5)
                print(f"GROW {time.strftime('%H:%M:%S')} {counts}", file=sys.stderr, flush=True)

        for _ in range(workers):
            asyncio.ensure_future(one())
        asyncio.ensure_future(report())
        await honest(self)

    daemon.SiteDaemon._clock_loop = loop
    from replicad.cli import main as replicad_main
    return replicad_main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
