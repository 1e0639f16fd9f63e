"""The honest holder of ``test_fetch_flood.py``: the real replicad daemon of ONE site, run with
one setting changed: the window within which a fetch's client must take each batch it is sent
(:data:`replicad.peer.transport.FETCH_SEND_STALL_S`, 30 s) is ``SECONDS``, so that the test of
the cut waits ``SECONDS`` for it, not 30 s (the mechanism is under test, not the constant; it must
stay above :data:`replicad.peer.transport.FETCH_WAIT_S`). Everything else is the honest daemon's.

Run as ``python3 -m tests.security.short_stall_site SECONDS run SITE.toml`` (the arguments after
SECONDS are the ``replicad`` command's), in the site's directory like the daemon.
"""

from __future__ import annotations

import sys

from replicad.peer import transport


def main(argv: list[str]) -> int:
    seconds = float(argv[0])
    if not transport.FETCH_WAIT_S < seconds <= transport.FETCH_SEND_STALL_S:
        raise SystemExit(f"the stall window must be above FETCH_WAIT_S ({transport.FETCH_WAIT_S}s) and at most "
                         f"FETCH_SEND_STALL_S ({transport.FETCH_SEND_STALL_S}s), not {seconds}s")
    transport.FETCH_SEND_STALL_S = seconds  # read by the fetch route at each batch it sends
    from replicad.cli import main as replicad_main
    return replicad_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
