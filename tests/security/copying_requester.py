"""A site whose operator copies other sites' pending requests (attack review R16, F1): the real
replicad daemon with one change, its admin API never answers a request with another site's
identical pending one, so the holder of this site's admin token files a request identical to an
honest site's pending request as its own (an honest daemon answers with the honest site's and
proposes nothing). Everything else is the honest daemon: its withdrawal is the state machine's
own (the requester's veto of its own request).

Run as a site: ``python -m tests.security.copying_requester run SITE.toml``."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Patch :meth:`Cluster.identical_pending_request` to answer nothing, then run the daemon's CLI
    with ``argv``; returns its exit code."""
    from replicad.site import cluster

    cluster.Cluster.identical_pending_request = lambda self, action, args: None
    from replicad.cli import main as replicad_main

    return replicad_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
