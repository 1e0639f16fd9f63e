"""What rules 4's per-signer audit (``state.RULES_AUDIT_BY_SIGNER``, ``state.audit_trim``) costs:
the state machine's CPU per command under a flood of one site's refused signed commands, rules 3
(the last ``AUDIT_MAX`` records) against rules 4 (shares cut past ``AUDIT_KEPT_MAX``), paired in one
run and alternated; and the kept audit's size in memory (``tracemalloc`` of a decoded copy, as a
site holds it after a dump) and as msgpack.

Usage::

    python -m tests.bench.audit_share --commands 6000 --rounds 3

Each command is applied as the Raft node applies it (``checkpoint.advance``: decode, signature
check, apply, count). Prints the CPU microseconds per command of each round, their medians, the
kept records, bytes per record and the load average. Results: ``tests/bench/results/audit_share.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

import msgpack

from replicad.consensus.checkpoint import advance
from replicad.core import state as st
from tests.unit.core.test_state_rules3_frozen import SITES, TRUST, founded, signed


def build(rules: int) -> dict:
    """A founded three-site cluster under ``rules`` (3 or 4), as the Raft node holds it."""
    s = st.initial_state(members=list(SITES))
    for command in founded(rules):
        s, _, _ = advance(s, msgpack.packb(command, use_bin_type=True), TRUST)
    assert st.rules(s) == rules
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    flood = [msgpack.packb(signed("veto", "c", request=f"r{9_000_000 + i}"), use_bin_type=True)
             for i in range(args.commands)]
    cpu: dict[int, list[float]] = {3: [], 4: []}
    last: dict[int, dict] = {}
    for _ in range(args.rounds):
        for rules in (3, 4):
            s = build(rules)
            t0 = time.process_time()
            for payload in flood:
                s, _, _ = advance(s, payload, TRUST)
            cpu[rules].append((time.process_time() - t0) / len(flood) * 1e6)
            last[rules] = s
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    for rules, s in last.items():
        audit = s["audit"]
        packed = msgpack.packb(audit, use_bin_type=True)
        tracemalloc.start()
        decoded = msgpack.unpackb(packed, raw=False)
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"rules {rules}: CPU us/command {[round(v, 1) for v in cpu[rules]]} median "
              f"{statistics.median(cpu[rules]):.1f}; kept {len(decoded)} records, {size / len(decoded):.0f} B each in "
              f"memory ({size / 1e6:.2f} MB), msgpack {len(packed) / 1e3:.0f} KB; dropped {s.get(st.AUDIT_DROPPED)}")


if __name__ == "__main__":
    main()
