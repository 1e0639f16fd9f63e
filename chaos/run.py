"""``python -m chaos.run SCENARIO --seed N [--out DIR] [--run-id R]`` — run one campaign,
check its history, print the verdict. Exit code 0: every invariant held; 1: violations;
2: usage or setup error. ``python -m chaos.run --check HISTORY`` re-checks a history offline.

``python -m chaos.run all --seeds 1,2 [--only a,b]`` runs every scenario (or those named) with
each seed, one after the other, and writes a summary table (scenario, seed, faults injected,
invariants checked, outcome, RPO/RTO observed, duration) to stdout and ``summary.md`` in the
campaign directory. Exit code 0 only if every run passed.
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


def summarize(events: list[dict], violations: list) -> dict:
    """One summary row of a checked history: ``{scenario, seed, faults, checks, outcome,
    rpo_s, rto_s}``. ``faults``: nemesis faults applied (``ok``, restarts and heals left
    out); ``checks``: invariants of :mod:`chaos.checker` plus scenario expectations; RPO:
    the largest measured at a site with a true clock (seconds); RTO: the largest reported
    by a promotion (seconds), None without one."""
    from .checker import CHECKS, skewed_sites_at
    sc = next((e for e in events if e.get("op") == "scenario"), {})
    undo = {"start", "heal", "resume", "unblackhole", "unthrottle", "fast_fsync", "unfill", "unmount"}
    faults = [e for e in events if e.get("op") == "nemesis" and e.get("type") == "ok" and e.get("f") not in undo]
    rpos = [e["rpo_s"] for e in events if e.get("op") == "rpo" and e.get("rpo_s") is not None
            and e.get("site") not in skewed_sites_at(events, e["t"])]
    rtos = [e["rto_s"] for e in events if e.get("op") == "promote" and e.get("type") == "ok" and e.get("rto_s")]
    expects = sum(1 for e in events if e.get("op") == "expect")
    return {"scenario": sc.get("name"), "seed": sc.get("seed"), "faults": len(faults),
            "checks": len(CHECKS) + expects, "outcome": "PASS" if not violations else f"FAIL ({len(violations)})",
            "rpo_s": max(rpos) if rpos else None, "rto_s": max(rtos) if rtos else None}


def summary_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`summarize` rows (with ``duration_s``)."""
    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)
    out = ["| scenario | seed | faults injected | invariants checked | outcome | RPO s | RTO s | duration s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['scenario']} | {r['seed']} | {r['faults']} | {r['checks']} | {r['outcome']} | "
                   f"{f(r['rpo_s'])} | {f(r['rto_s'], '{:.2f}')} | {f(r.get('duration_s'), '{:.0f}')} |")
    return "\n".join(out)


def campaign(names: list[str], seeds: list[int], out: Path) -> int:
    """Run ``names`` × ``seeds`` one at a time under ``out``; print and write the summary."""
    rows: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for seed in seeds:
            t0 = time.monotonic()
            try:
                hist, _ = run_scenario(name, seed, out / f"{name}-{seed}", (os.getpid() % 200) + 20)
            except ChaosSetupError as err:
                print(f"setup error: {err}", file=sys.stderr)
                return 2
            events = read_history(hist)
            violations = check(events)
            row = dict(summarize(events, violations), duration_s=time.monotonic() - t0)
            rows.append(row)
            print(f"{name} seed {seed}: {row['outcome']} in {row['duration_s']:.0f}s", flush=True)
            for v in violations:
                print("  " + str(v).replace("\n", "\n  "))
    table = summary_table(rows)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    return 0 if all(r["outcome"] == "PASS" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS) + ["all"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", default=None, help="with 'all': comma-separated seeds (default: --seed)")
    ap.add_argument("--only", default=None, help="with 'all': comma-separated scenario names")
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
        if args.scenario == "all":
            names = args.only.split(",") if args.only else sorted(SCENARIOS)
            unknown = [x for x in names if x not in SCENARIOS]
            if unknown:
                ap.error(f"unknown scenarios {unknown}")
            seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
            signal.signal(signal.SIGTERM, _sigterm)
            return campaign(names, seeds, args.out or Path("/tmp/rpl-chaos") / f"campaign-{int(time.time())}")
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
    events = read_history(hist)
    violations = check(events)
    print(summary_table([summarize(events, violations)]))
    if not violations:
        print("PASS: every invariant held")
        return 0
    print(f"FAIL: {len(violations)} violation(s)")
    for v in violations:
        print(str(v))
    return 1


if __name__ == "__main__":
    sys.exit(main())
