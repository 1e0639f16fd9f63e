"""The honest site of ``test_full_cluster_registration.py``: the real replicad daemon of ONE site,
run with one setting changed: the backoff between its tries to register a volume the cluster
refused as full (:data:`replicad.site.daemon.VOLUME_ROOM_BACKOFF_S`, 60 s growing to 15 min) is
``(1 s, 2 s)``, so that the test waits seconds, not minutes (the mechanism is under test, not the
constant). Everything else is the honest daemon's.

Run as ``python3 -m tests.security.quick_room_site run SITE.toml`` (the ``replicad`` command's
arguments), in the site's directory like the daemon.
"""

from __future__ import annotations

import sys

from replicad.site import daemon


def main(argv: list[str]) -> int:
    daemon.VOLUME_ROOM_BACKOFF_S = (1.0, 2.0)  # read at each full-cluster retry's start
    from replicad.cli import main as replicad_main
    return replicad_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
