"""``python -m chaos.run SCENARIO --seed N [--out DIR] [--run-id R]`` — run one campaign,
check its history, print the verdict. Exit code 0: every invariant held; 1: violations;
2: usage or setup error. ``python -m chaos.run --check HISTORY`` re-checks a history offline.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .checker import check
from .harness import ChaosSetupError, read_history
from .scenarios import SCENARIOS, run_scenario


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # unwinds through the harness's finally: everything is torn down


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default /tmp/rpl-chaos/NAME-SEED-TIME)")
    ap.add_argument("--run-id", type=int, default=None, help="1..254: the 10.77.R.0/24 subnet and namespace prefix")
    ap.add_argument("--check", type=Path, default=None, help="only check this history file")
    args = ap.parse_args(argv)
    if args.check is not None:
        hist = args.check
        notes: list[str] = []
    else:
        if args.scenario is None:
            ap.error("a scenario is required (or --check HISTORY)")
        out = args.out or Path("/tmp/rpl-chaos") / f"{args.scenario}-{args.seed}-{int(time.time())}"
        run_id = args.run_id or (os.getpid() % 200) + 20
        signal.signal(signal.SIGTERM, _sigterm)
        t0 = time.monotonic()
        try:
            hist, notes = run_scenario(args.scenario, args.seed, out, run_id)
        except ChaosSetupError as err:
            print(f"setup error: {err}", file=sys.stderr)
            return 2
        print(f"scenario {args.scenario} seed {args.seed}: ran in {time.monotonic() - t0:.1f}s, history {hist}")
    for n in notes:
        print("  " + n)
    violations = check(read_history(hist))
    if not violations:
        print("PASS: every invariant held")
        return 0
    print(f"FAIL: {len(violations)} violation(s)")
    for v in violations:
        print(str(v))
    return 1


if __name__ == "__main__":
    sys.exit(main())
