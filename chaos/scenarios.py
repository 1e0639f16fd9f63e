"""Named, seeded, bounded campaigns, each with an expected outcome.

A scenario is a function ``fn(ctx)`` that drives the workload and the nemesis and records
``expect`` events for its own expected outcome; :func:`run_scenario` sets the cluster up,
runs it, heals everything, then :func:`finish` measures convergence, records the final
catalogs, final images, RPO, and restores every committed snapshot at every holder so the
offline checker (:mod:`chaos.checker`) can judge the run. Every wait is bounded.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from replicad.errors import ReplicadError

from .harness import VOLUME, Cluster, History
from .nemesis import Nemesis
from .workload import Workload

CONVERGE_BOUND_S = 90.0
RPO_TARGET_S = 30.0


@dataclass
class Ctx:
    """What a scenario works with."""

    cluster: Cluster
    workload: Workload
    nemesis: Nemesis
    history: History
    rng: random.Random
    primary: str = "site-a"
    notes: list[str] = field(default_factory=list)

    def expect(self, name: str, passed: bool, detail: str = "", **fields: Any) -> bool:
        """Record a scenario expectation (the checker reports the failed ones)."""
        self.history.record("info", "expect", name=name, passed=bool(passed), detail=detail, **fields)
        self.notes.append(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")
        return passed

    def promote(self, site: str, timeout_s: float = 90) -> dict | None:
        """Forced promotion at ``site``; on success the workload adopts its restored image and
        a first snapshot is taken there (after the daemon's own post-promotion cycle)."""
        self.history.record("invoke", "promote", site=site, force=True)
        try:
            res = self.cluster.api(site, "POST", f"/v1/volumes/{VOLUME}/promote", {"force": True}, timeout_s=timeout_s)
        except ReplicadError as err:
            self.history.record("fail", "promote", site=site, error=err.code, message=str(err)[:300])
            return None
        self.history.record("ok", "promote", site=site, primary=site, epoch=res.get("epoch"),
                            restored_seq=res.get("restored_seq"), rto_s=res.get("rto_s"))
        self.primary = site
        self.workload.adopt(site)
        return res

    def steps(self, site: str, n: int, k: int = 3) -> list[dict | None]:
        return [self.workload.step(site, k) for _ in range(n)]


def current_primary(c: Cluster) -> tuple[str | None, int | None]:
    """(primary, epoch) as the first answering data site sees it."""
    for sid in c.data_sites:
        try:
            v = c.status(sid)["volumes"][VOLUME]
            return v.get("primary"), v.get("epoch")
        except ReplicadError:
            continue
    return None, None


def _converged(c: Cluster) -> str | None:
    """None when converged, else why not (catalogs equal, primary acting, standbys at newest clean)."""
    views, sts = {}, {}
    for sid in c.sites:
        sts[sid] = c.status(sid, timeout_s=5)
        views[sid] = tuple(sorted((s["seq"], s["root"]) for s in c.snapshots(sid)["snapshots"]))
    if len(set(views.values())) > 1:
        return "catalogs differ: " + ", ".join(f"{s}:{len(v)}" for s, v in views.items())
    for sid in c.data_sites:
        v = sts[sid]["volumes"][VOLUME]
        if v["primary"] == sid:
            if v["acting_epoch"] != v["epoch"] or v["role"] != "primary":
                return f"{sid} is primary but acts as {v['role']}/{v['acting_epoch']}"
        elif v["role"] != "replica" or v["standby_seq"] != v["newest_clean"]:
            return f"{sid}: role {v['role']}, standby #{v['standby_seq']} vs newest clean #{v['newest_clean']}"
    return None


def finish(ctx: Ctx, bound_s: float = CONVERGE_BOUND_S) -> None:
    """Heal, converge (bounded), record the final state and restore everything for the checker."""
    c, h, w = ctx.cluster, ctx.history, ctx.workload
    ctx.nemesis.heal_all()
    t0 = time.monotonic()
    try:
        c.wait_ready(bound_s)
        primary, _ = c.wait_for("a primary", lambda: (lambda p: p if p[0] else None)(current_primary(c)), 30)
        ctx.primary = primary
        c.wait_for("primary acting", lambda: (lambda v: v["acting_epoch"] == v["epoch"])(
            c.status(primary)["volumes"][VOLUME]), bound_s)
        if w.gens.get(primary) is None or -1 in w.gens[primary]:
            w.adopt(primary)
        final = None
        for _ in range(5):
            final = w.snapshot(primary)
            if final and final.get("committed"):
                break
            time.sleep(2)
        reason = None
        try:
            c.wait_for("convergence", lambda: _converged(c) is None, max(5.0, bound_s - (time.monotonic() - t0)), 0.5)
        except ReplicadError:
            try:
                reason = _converged(c)
            except ReplicadError as err:
                reason = str(err)
            reason = reason or "timed out"
        elapsed = time.monotonic() - t0
        h.record("fail" if reason else "ok", "converge", elapsed_s=elapsed, bound_s=bound_s, reason=reason)
    except ReplicadError as err:
        h.record("fail", "converge", elapsed_s=time.monotonic() - t0, bound_s=bound_s, reason=str(err)[:300])
    c.stop_polling()
    c.poll_once()
    finals = {}
    for sid in c.sites:
        try:
            snaps = c.snapshots(sid)
        except ReplicadError:
            continue
        finals[sid] = snaps
        h.record("info", "catalog", site=sid, final=True, epoch=snaps["epoch"], primary=snaps["primary"],
                 snapshots={str(s["seq"]): {"root": s["root"], "epoch": s["epoch"], "holders": sorted(s["holders"]),
                                            "verdict": s["verdict"]} for s in snaps["snapshots"]},
                 divergent=[{"epoch": d["epoch"], "seq": d["seq"], "root": d["root"]} for d in snaps["divergent"]])
    for sid in c.data_sites:
        try:
            v = c.status(sid)["volumes"][VOLUME]
        except ReplicadError:
            continue
        seq = v["newest_committed"] if v["primary"] == sid else v["standby_seq"]
        h.record("info", "final_image", site=sid, role=v["role"], seq=seq, path=str(c.sites[sid].volume_path()))
        if v["primary"] == sid and v.get("rpo_s") is not None:
            h.record("info", "rpo", site=sid, rpo_s=v["rpo_s"], target_s=RPO_TARGET_S)
    restore_all(ctx, finals)
    c.record_log_events()


def restore_all(ctx: Ctx, finals: dict[str, dict]) -> None:
    """Restore every committed snapshot at each of its holders into ``root/restores/``."""
    c, h = ctx.cluster, ctx.history
    if not finals:
        return
    catalog = max(finals.values(), key=lambda s: len(s["snapshots"]))["snapshots"]
    out = c.root / "restores"
    out.mkdir(exist_ok=True)
    for snap in catalog:
        for holder in snap["holders"]:
            target = out / f"{holder}-{snap['seq']}.img"
            target.unlink(missing_ok=True)
            h.record("invoke", "restore", site=holder, seq=snap["seq"], target=str(target))
            try:
                rep = c.api(holder, "POST", f"/v1/volumes/{VOLUME}/restore",
                            {"target": str(target), "seq": snap["seq"]}, timeout_s=120)
                h.record("ok", "restore", site=holder, seq=snap["seq"], target=str(target), root=rep.get("root"),
                         verified=rep.get("verified"))
            except ReplicadError as err:
                h.record("fail", "restore", site=holder, seq=snap["seq"], target=str(target), error=err.code,
                         message=str(err)[:300])


# ---------------------------------------------------------------------- scenarios
def partition_primary(ctx: Ctx) -> None:
    """(a) The primary is cut off, keeps being written; another site is promoted (--force)
    and written; heal: the old primary fences itself, keeps its post-cut snapshots as
    divergent, resyncs, and ends byte-identical to the new line."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    old, new = c.data_sites[0], c.data_sites[1]
    ctx.steps(old, 3)
    n.isolate(old)
    cut = [w.step(old, 2) for _ in range(2)]
    ctx.expect("post-cut snapshots not committed", all(r is None or not r.get("committed") for r in cut),
               str([((r or {}).get("seq"), (r or {}).get("committed")) for r in cut]))
    promo = ctx.promote(new)
    ctx.expect("majority side promotes", promo is not None, str(promo)[:200])
    if promo is None:
        return
    w.snapshot(new)
    for i in range(3):
        w.step(new, 3)
        w.write_random(old, 2)  # the old primary's application keeps writing
    w.snapshot(old)
    n.heal(old)
    try:
        st = c.wait_for("old primary fenced and resynced", lambda: (
            lambda v: v if v["role"] == "replica" and v["standby_seq"] == v["newest_clean"] and v["divergent"]
            else None)(c.status(old)["volumes"][VOLUME]), 60)
        div_epochs = {d["epoch"] for d in st["divergent"]}
        ctx.expect("old primary keeps divergent snapshots of its old epoch", div_epochs == {1}, str(st["divergent"]))
        ctx.expect("old primary acts under no epoch", st["acting_epoch"] is None and st["epoch"] == promo["epoch"],
                   f"acting {st['acting_epoch']} epoch {st['epoch']}")
        others = set()
        for sid in c.sites:
            if sid != old:
                others |= {s["root"] for s in c.snapshots(sid)["snapshots"]}
        ctx.expect("divergent snapshots never shipped", not others & {d["root"] for d in st["divergent"]})
    except ReplicadError as err:
        ctx.expect("old primary fenced and resynced", False, str(err)[:300])
    w.adopt(old)


def stop_primary(ctx: Ctx) -> None:
    """(b) The primary is SIGSTOPped in the middle of shipping (slow link), a forced
    failover happens, then SIGCONT: its late messages are refused (stale epoch), its late
    snapshot is never committed, and nothing is re-initialised (its store keeps its chunks)."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    old, new = c.data_sites[0], c.data_sites[1]
    ctx.steps(old, 3)
    chunks_before = c.status(old)["store"].get("chunks")
    n.throttle(old, "16kbit")
    w.write(old, list(range(0, c.n_blocks, 2)))  # half the volume: several seconds to ship at 256 kbit/s
    late: dict[str, Any] = {}
    th = threading.Thread(target=lambda: late.update(rep=w.snapshot(old, timeout_s=120)), daemon=True)
    th.start()
    time.sleep(1.0 + ctx.rng.random())
    n.pause(old)
    n.unthrottle(old)
    promo = ctx.promote(new)
    ctx.expect("failover while the primary is stopped", promo is not None, str(promo)[:200])
    if promo is None:
        return
    w.snapshot(new)
    ctx.steps(new, 2)
    n.resume(old)
    th.join(timeout=150)
    rep = late.get("rep")
    ctx.expect("late snapshot of the stopped primary not committed after the failover",
               rep is None or not rep.get("committed") or rep["seq"] <= (promo.get("restored_seq") or 0),
               str({k: (rep or {}).get(k) for k in ("seq", "committed", "holders")})
               + f", promotion restored #{promo.get('restored_seq')}")
    ctx.steps(new, 2)
    try:
        st = c.wait_for("old primary resynced", lambda: (
            lambda v: v if v["role"] == "replica" and v["standby_seq"] == v["newest_clean"] else None)(
            c.status(old)["volumes"][VOLUME]), 60)
        chunks_after = c.status(old)["store"].get("chunks")
        ctx.expect("old primary not re-initialised (store kept)",
                   chunks_before is None or (chunks_after or 0) >= chunks_before,
                   f"chunks {chunks_before} -> {chunks_after}; divergent {st['divergent']}")
    except ReplicadError as err:
        ctx.expect("old primary resynced", False, str(err)[:300])
    logs = "".join(c.sites[s].log_path.read_text(errors="replace") for s in c.data_sites)
    found = [w_ for w_ in ("stale_epoch", "StaleEpoch", "fenced") if w_ in logs]
    ctx.expect("late messages refused with a stale epoch / fenced", bool(found), f"log evidence: {found}")
    w.adopt(old)


def bit_rot(ctx: Ctx) -> None:
    """(c) One flipped byte in one site's pack at a time: found by verify (or restore) and
    re-fetched from a peer; every restore stays byte-exact."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    p = c.data_sites[0]
    ctx.steps(p, 4, k=4)
    c.wait_for("standbys caught up", lambda: _converged(c) is None, 60)
    for victim in c.data_sites:
        where = n.corrupt(victim)
        snaps = c.snapshots(victim)["snapshots"]
        corrupt = healed = lost = 0
        for s in snaps:
            if victim not in s["holders"]:
                continue
            ctx.history.record("invoke", "verify", site=victim, seq=s["seq"])
            try:
                rep = c.api(victim, "POST", f"/v1/volumes/{VOLUME}/verify", {"seq": s["seq"]}, timeout_s=60)
            except ReplicadError as err:
                ctx.history.record("fail", "verify", site=victim, seq=s["seq"], error=err.code, message=str(err))
                lost += 1
                continue
            ctx.history.record("ok", "verify", site=victim, seq=s["seq"], corrupt=len(rep["corrupt"]),
                               healed=rep["healed"], lost=rep["lost"])
            corrupt += len(rep["corrupt"])
            healed += rep["healed"]
            lost += rep["lost"]
        ctx.expect(f"flipped byte at {victim} found and healed", corrupt >= 1 and healed == corrupt and lost == 0,
                   f"{where}: corrupt {corrupt} healed {healed} lost {lost}")
        w.step(p, 2)


def crash_all(ctx: Ctx, rounds: int = 5) -> None:
    """(d) Every site SIGKILLed at once (sometimes in the middle of a snapshot) and
    restarted, ``rounds`` times, with a forced promotion now and then: no committed snapshot
    and no epoch is lost or rolled back."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    for r in range(rounds):
        ctx.steps(ctx.primary, 2)
        before = {sid: c.record_catalog(sid) for sid in c.sites}
        w.write_random(ctx.primary, 4)
        th = None
        if ctx.rng.random() < 0.6:
            th = threading.Thread(target=w.snapshot, args=(ctx.primary, 30), daemon=True)
            th.start()
            time.sleep(ctx.rng.uniform(0.0, 0.15))
        for sid in c.sites:
            n.kill(sid)
        if th is not None:
            th.join(timeout=40)
        for sid in c.sites:
            n.start(sid)
        # right after the restart, ask every data site for a snapshot: only the primary of
        # the newest epoch may take one, whatever a site's not yet replayed Raft view says
        probe_until = time.monotonic() + 4.0
        while time.monotonic() < probe_until:
            for sid in c.data_sites:
                if sid != ctx.primary:
                    w.snapshot(sid, timeout_s=10)
            c.poll_once()
            time.sleep(0.2)
        c.wait_ready(60)
        primary, epoch = current_primary(c)
        after = {sid: c.record_catalog(sid) for sid in c.sites}
        for sid in c.sites:
            b, a = before.get(sid), after.get(sid)
            if b and a:
                lost = {s["seq"] for s in b["snapshots"]} - {s["seq"] for s in a["snapshots"]}
                ctx.expect(f"round {r}: nothing lost at {sid}", not lost and a["epoch"] >= b["epoch"],
                           f"lost {sorted(lost)}, epoch {b['epoch']} -> {a['epoch']}")
        c.wait_for("primary acting after restart", lambda: (lambda v: v["acting_epoch"] == v["epoch"])(
            c.status(primary)["volumes"][VOLUME]), 60)
        ctx.primary = primary
        w.adopt(primary)
        if r % 2 == 1:
            target = ctx.rng.choice([s for s in c.data_sites if s != primary])
            ctx.promote(target)
            w.snapshot(target)


def one_way_and_slow(ctx: Ctx) -> None:
    """(e) One-way cut from the primary to one replica plus a slow link at another: commits
    continue through the reachable replica (min_copies), the cut replica catches up after."""
    c, n = ctx.cluster, ctx.nemesis
    p = c.data_sites[0]
    others = [s for s in c.data_sites if s != p]
    ctx.steps(p, 2)
    n.blackhole(p, others[0])
    if len(others) > 1:
        n.throttle(others[1], "1mbit")
    reps = ctx.steps(p, 3)
    ctx.expect("commits continue with one replica unreachable", any(r and r.get("committed") for r in reps),
               str([(r or {}).get("holders") for r in reps]))
    n.heal_all()
    ctx.steps(p, 2)


def random_faults(ctx: Ctx, steps: int = 12) -> None:
    """(f) A seeded mix of faults (kill/restart, pause/resume, isolate/heal, one-way cut,
    slow link, forced promotion when the primary is unreachable) interleaved with writes."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    ctx.steps(ctx.primary, 2)
    for _ in range(steps):
        f = ctx.rng.choice(["kill", "pause", "isolate", "blackhole", "throttle", "promote", "write", "write"])
        victim = ctx.rng.choice(list(c.sites))
        if f == "kill" and victim not in n.killed:
            n.kill(victim)
        elif f == "pause" and victim not in n.paused and victim not in n.killed:
            n.pause(victim)
        elif f == "isolate" and victim not in n.isolated:
            n.isolate(victim)
        elif f == "blackhole":
            peer = ctx.rng.choice([s for s in c.sites if s != victim])
            if (victim, peer) not in n.blackholes:
                n.blackhole(victim, peer)
        elif f == "throttle" and victim not in n.throttled:
            n.throttle(victim, "1mbit")
        elif f == "promote":
            cand = [s for s in c.data_sites if s != ctx.primary and s not in n.killed | n.paused | n.isolated]
            if cand:
                ctx.promote(ctx.rng.choice(cand), timeout_s=40)
        if ctx.primary not in n.killed | n.paused:
            w.step(ctx.primary, 2)
        if len(n.killed | n.paused | n.isolated) >= 2 or ctx.rng.random() < 0.3:
            n.heal_all()
            try:
                c.wait_ready(30)
            except ReplicadError:
                pass
        time.sleep(ctx.rng.uniform(0.0, 1.0))


@dataclass(frozen=True)
class Scenario:
    """A named campaign: its function, cluster shape and expected outcome."""

    name: str
    fn: Callable[[Ctx], None]
    n_data: int = 3
    n_witness: int = 0
    expected: str = ""


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("partition-primary", partition_primary,
             expected="old primary fenced, divergent kept, resynced; every check passes"),
    Scenario("stop-primary", stop_primary, expected="late ship refused, late snapshot uncommitted; checks pass"),
    Scenario("bit-rot", bit_rot, expected="each flipped byte found by verify and healed from a peer"),
    Scenario("crash-all", crash_all, expected="5 full crashes: nothing committed or epoch lost"),
    Scenario("one-way", one_way_and_slow, expected="commits continue via the reachable replica"),
    Scenario("random", random_faults, expected="every invariant holds"),
    Scenario("random-witness", random_faults, n_data=2, n_witness=1, expected="every invariant holds"),
    Scenario("random-5", random_faults, n_data=5, expected="every invariant holds"),
    Scenario("partition-primary-witness", partition_primary, n_data=2, n_witness=1,
             expected="as partition-primary, with 2 data sites + witness"),
)}


def run_scenario(name: str, seed: int, root: Path, run_id: int, *, n_blocks: int = 32) -> tuple[Path, list[str]]:
    """Run scenario ``name`` with ``seed`` under ``root``; returns (history path, notes).

    Everything created (processes, namespaces) is removed before returning, also on errors
    and KeyboardInterrupt. Raises KeyError for an unknown scenario, ChaosSetupError when the
    machine cannot host it.
    """
    sc = SCENARIOS[name]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    hist_path = root / "history.jsonl"
    h = History(hist_path)
    rng = random.Random(seed)
    c = Cluster(root, run_id, h, n_data=sc.n_data, n_witness=sc.n_witness, n_blocks=n_blocks)
    ctx = Ctx(c, Workload(c, h, rng), Nemesis(c, h, rng), h, rng, primary=c.data_sites[0])
    h.record("info", "scenario", name=name, seed=seed, expected=sc.expected)
    try:
        c.setup()
        ctx.workload.init_image(ctx.primary)
        for sid in c.sites:
            c.start(sid)
        c.wait_ready(60)
        c.start_polling()
        try:
            sc.fn(ctx)
        except ReplicadError as err:
            ctx.expect("scenario ran to its end", False, f"{err.code}: {err}")
        finish(ctx)
    finally:
        c.teardown()
        h.close()
    return hist_path, ctx.notes
