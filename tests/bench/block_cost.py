"""CPU per changed block of a site's judging (issue 15, "RPO at 16 GiB"): what
:meth:`replicad.site.detection.Detection._signals` does per changed 64 KiB block besides the
verified reads (:func:`anomaly.compare_block`, :meth:`anomaly.SnapshotSignals.add_names`, the
ransom-note check with the default policy), per kind of block of the corpus of
``tests/unit/core/test_anomaly_cost.py``, in process CPU time; optionally paired with the code of
another revision (``--against REV``: its ``replicad/core/anomaly.py`` loaded beside this one,
the two alternating per repetition so that the machine's load moves both alike).

    python3 -m tests.bench.block_cost [--reps 7] [--against b44215e]

Prints one row per kind: ms per block, the median of the repetitions (compare_block alone, and
everything)."""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replicad.core import anomaly
from tests.unit.core.test_anomaly_cost import KINDS, PER_KIND, pair

ROOT = Path(__file__).resolve().parents[2]


def _module_at(rev: str, tmp: Path):
    """``replicad/core/anomaly.py`` of ``rev`` as a module of its own."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:replicad/core/anomaly.py"], check=True,
                         capture_output=True).stdout
    path = tmp / "anomaly_at_rev.py"
    path.write_bytes(src)
    spec = importlib.util.spec_from_file_location("anomaly_at_rev", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["anomaly_at_rev"] = mod
    spec.loader.exec_module(mod)
    return mod


def _ms_per_block(mod, blocks: list, everything: bool) -> float:
    policy = mod.with_defaults(mod.POLICY_DEFAULTS)
    notes, minimum, strong = list(policy["ransom_notes"]), int(policy["ransom_note_min"]), list(policy["ransom_note_strong"])
    signals = mod.SnapshotSignals(data_blocks=1000)
    t0 = time.process_time()
    for new, old, rn, ro in blocks:
        finding = mod.compare_block(new, old, rn, ro)
        if everything:
            signals.add(1, finding)
            signals.add_names(new, old, finding)
            mod.ransom_note_matches(new, old, notes, minimum, strong)
    return (time.process_time() - t0) / len(blocks) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--against", help="a git revision to pair with (its anomaly.py)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="block-cost-") as tmp:
        mods = {"now": anomaly}
        if args.against:
            mods = {args.against: _module_at(args.against, Path(tmp)), "now": anomaly}
        heads = " ".join(f"{'compare ' + k:>16s} {'all ' + k:>12s}" for k in mods)
        print(f"{'kind (' + str(PER_KIND) + ' pairs, ms/block)':34s} {heads}")
        for kind in KINDS:
            blocks = [pair(kind, random.Random(f"{kind}-{i}")) for i in range(PER_KIND)]
            times: dict[tuple[str, bool], list[float]] = {(k, e): [] for k in mods for e in (False, True)}
            for _ in range(args.reps):
                for k, mod in mods.items():
                    for e in (False, True):
                        times[(k, e)].append(_ms_per_block(mod, blocks, e))
            row = " ".join(f"{statistics.median(times[(k, False)]):16.2f} {statistics.median(times[(k, True)]):12.2f}"
                           for k in mods)
            print(f"{kind:34s} {row}", flush=True)


if __name__ == "__main__":
    main()
