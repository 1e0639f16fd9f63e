"""A site of ``test_registration_retry.py``: the real replicad daemon of ONE site, run with one
change: its first ``register_site`` proposal waits until the file GATE exists (the test takes the
other sites' quorum away meanwhile: the real window between joining and registering lasts a few
milliseconds). Everything else is the honest daemon's.

Run as ``python3 -m tests.integration.gated_registration_site GATE run SITE.toml`` (the arguments
after GATE are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from replicad.site import cluster


def main(argv: list[str]) -> int:
    gate = Path(argv[0])
    propose = cluster.Cluster.propose
    waited = []

    async def gated(self, op: str, **kw):  # type: ignore[no-untyped-def]
        if op == "register_site" and not waited:
            waited.append(True)
            logging.getLogger("replicad.site.daemon").info("gated: register_site waits for %s", gate)
            while not gate.exists():
                await asyncio.sleep(0.1)
        return await propose(self, op, **kw)

    cluster.Cluster.propose = gated  # type: ignore[method-assign]
    from replicad.cli import main as replicad_main
    return replicad_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
