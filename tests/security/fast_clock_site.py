"""The attacker of ``test_catchup_audit.py``'s clock flood (attacker review r13, F3): the real
replicad daemon of ONE site with one setting changed: its clock heartbeat (``site.daemon.
CLOCK_HEARTBEAT_S``, 5 s) every ``SECONDS`` instead, so it proposes signed ``clock`` commands in its
own name as fast as they commit, which once forced every site to compact its Raft log within
seconds (6,000 in ~17 s). Everything else is the honest daemon's.

Run as ``python3 -m tests.security.fast_clock_site SECONDS run SITE.toml`` (the arguments after
SECONDS are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import sys

from replicad.site import daemon


def main(argv: list[str]) -> int:
    seconds = float(argv[0])
    if not 0 < seconds < daemon.CLOCK_HEARTBEAT_S:
        raise SystemExit(f"the heartbeat must be faster than the honest {daemon.CLOCK_HEARTBEAT_S} s, not {seconds} s")
    daemon.CLOCK_HEARTBEAT_S = seconds  # read by the clock loop at each heartbeat
    from replicad.cli import main as replicad_main
    return replicad_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
