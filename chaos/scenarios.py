"""Named, seeded, bounded campaigns, each with an expected outcome.

A scenario is a function ``fn(ctx)`` that drives the workload and the nemesis and records
``expect`` events for its own expected outcome; :func:`run_scenario` sets the cluster up,
runs it, heals everything, then :func:`finish` measures convergence, records the final
catalogs, final images, RPO, and restores every committed snapshot at every holder so the
offline checker (:mod:`chaos.checker`) can judge the run. Every wait is bounded.
"""

from __future__ import annotations

import filecmp
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from replicad.core.errors import ReplicadError

from . import raftfaults
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
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # after teardown, before the history closes
    launch_env: dict[str, dict[str, str]] = field(default_factory=dict)  # extra env of a site's first start

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


LEADER_BOUND_S = 20 * 1.4
"""``leader_after_faults``: 20 election timeouts (pysyncobj ``raftMaxTimeout`` 1.4 s), counted
from the moment every site's daemon answers again after the heal (a restarted daemon needs
a few seconds to start; that is not the election's time)."""


def time_leader(ctx: Ctx, timeout_s: float = 90.0) -> None:
    """Once faults stopped: wait (bounded) until every site answers, then time until a
    majority of sites name one Raft leader. Records ``leader_after_faults`` {elapsed_s,
    bound_s, leader, answering_s}."""
    c, h = ctx.cluster, ctx.history
    t0 = time.monotonic()
    answering = None
    while time.monotonic() - t0 < timeout_s:
        named = []
        for sid in c.sites:
            try:
                st = c.status(sid, timeout_s=2)
            except ReplicadError:
                named.append(False)
                continue
            named.append(st["raft_sites"].get(st["raft"].get("leader")))
        if answering is None and all(x is not False for x in named):
            answering = time.monotonic()
        if answering is not None:
            lead = next((x for x in named if x and named.count(x) > len(named) // 2), None)
            if lead:
                h.record("info", "leader_after_faults", leader=lead, elapsed_s=time.monotonic() - answering,
                         bound_s=LEADER_BOUND_S, answering_s=answering - t0)
                return
        time.sleep(0.2)
    h.record("info", "leader_after_faults", leader=None, elapsed_s=time.monotonic() - (answering or t0),
             bound_s=LEADER_BOUND_S, answering_s=None if answering is None else answering - t0)


def finish(ctx: Ctx, bound_s: float = CONVERGE_BOUND_S) -> None:
    """Heal, converge (bounded), record the final state and restore everything for the checker."""
    c, h, w = ctx.cluster, ctx.history, ctx.workload
    ctx.nemesis.heal_all()
    h.record("info", "faults_stopped")
    time_leader(ctx)
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
        if v.get("rpo_s") is not None:  # at every data site: the checker reads it where the clock is true
            h.record("info", "rpo", site=sid, rpo_s=v["rpo_s"], target_s=RPO_TARGET_S, primary=v["primary"] == sid)
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


# ---------------------------------------------------------------------- disk, fsync, clock, promotion races
def _raft_poller(ctx: Ctx, stop: threading.Event, interval_s: float = 0.5) -> threading.Thread:
    """Record ``raft`` events (site, leader site, term, commit index) until ``stop`` is set."""
    c = ctx.cluster

    def loop() -> None:
        while not stop.wait(interval_s):
            for sid in c.sites:
                if not c.sites[sid].running():
                    continue
                try:
                    st = c.status(sid, timeout_s=2)
                except ReplicadError:
                    continue
                r = st["raft"]
                ctx.history.record("info", "raft", site=sid, leader=st["raft_sites"].get(r.get("leader")),
                                   term=r.get("term"), commit_index=r.get("commit_index"))

    th = threading.Thread(target=loop, name="raft-poller", daemon=True)
    th.start()
    return th


def _holds_newest(c: Cluster, site: str) -> dict | None:
    v = c.status(site)["volumes"][VOLUME]
    snaps = {s["seq"]: s for s in c.snapshots(site)["snapshots"]}
    nc = v["newest_committed"]
    if nc is not None and site in snaps[nc]["holders"] and v["standby_seq"] == v["newest_clean"]:
        return v
    return None


def _audit_store(ctx: Ctx, site: str) -> None:
    """Read back every indexed chunk of ``site``'s store (BLAKE3-verified by ``get``); the
    daemon must be stopped. Records ``store_audit`` {site, chunks, bad: [digest hex]}."""
    import sqlite3

    from replicad.storage.chunkstore import ChunkStore
    root = ctx.cluster.sites[site].data_dir / "chunks"
    bad: list[str] = []
    n = 0
    try:
        db = sqlite3.connect(f"file:{root / 'index.sqlite3'}?mode=ro", uri=True)
        digests = [bytes(r[0]) for r in db.execute("SELECT digest FROM chunks")]
        db.close()
        store = ChunkStore(root)
        try:
            for d in digests:
                n += 1
                try:
                    store.get(d)
                except ReplicadError as err:
                    bad.append(f"{d.hex()[:16]}:{err.code}")
        finally:
            store.close()
    except (OSError, sqlite3.Error, ReplicadError) as err:
        ctx.history.record("info", "store_audit", site=site, chunks=n, bad=[f"audit failed: {err!r}"[:200]])
        return
    ctx.history.record("info", "store_audit", site=site, chunks=n, bad=bad)


def _prepare_disk_full(ctx: Ctx) -> None:
    victim = ctx.cluster.data_sites[-1]
    ctx.nemesis.small_disk(victim, "24m")
    ctx.cleanups.append(lambda: _audit_store(ctx, victim))
    ctx.cleanups.append(ctx.nemesis.unmount_all)


def disk_full(ctx: Ctx) -> None:
    """A replica's data dir is a 24 MiB tmpfs; it is filled (a filler file leaves ~8 KiB)
    and the primary rewrites the whole volume: the ship to that replica aborts with
    ``store_full``, the snapshot still commits via the other replica (min_copies 2),
    nothing already stored there is damaged (``verify`` of every snapshot it holds, and an
    offline read-back of every chunk after the run), and once the filler is deleted the
    replica catches up by itself to the newest snapshot."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    p, victim = c.data_sites[0], c.data_sites[-1]
    ctx.steps(p, 3)
    c.wait_for("standbys caught up", lambda: _converged(c) is None, 60)
    n.fill(victim, leave_bytes=ctx.rng.choice([4096, 8192, 16384]))
    reports = []
    for _ in range(2):
        w.write(p, list(range(c.n_blocks)))
        reports.append(ctx.workload.snapshot(p, timeout_s=90))
    errs = [((r or {}).get("peers") or {}).get(victim, {}) for r in reports]
    ctx.expect("ship to the full replica aborts with store_full",
               any(e.get("error") == "store_full" for e in errs), str(errs)[:300])
    ctx.expect("commits continue through the other replica", any(r and r.get("committed") for r in reports),
               str([(r or {}).get("holders") for r in reports]))
    plog = c.sites[p].log_path.read_text(errors="replace")
    ctx.expect("the primary logs the ship failure", "no space left" in plog or "store_full" in plog)
    vlog = c.sites[victim].log_path.read_text(errors="replace")
    ctx.history.record("info", "note", text="full replica's log mentions the full disk: "
                       f"{'store_full' in vlog or 'no space left' in vlog}")
    ctx.expect("full replica still running", c.sites[victim].running(), c.log_tail(victim, 5))
    for s in c.snapshots(victim)["snapshots"]:
        if victim not in s["holders"]:
            continue
        ctx.history.record("invoke", "verify", site=victim, seq=s["seq"])
        try:
            rep = c.api(victim, "POST", f"/v1/volumes/{VOLUME}/verify", {"seq": s["seq"]}, timeout_s=60)
            ctx.history.record("ok", "verify", site=victim, seq=s["seq"], corrupt=len(rep["corrupt"]),
                               healed=rep["healed"], lost=rep["lost"])
            ctx.expect(f"stored #{s['seq']} intact at the full replica", not rep["corrupt"] and not rep["lost"],
                       str({k: rep[k] for k in ("corrupt", "healed", "lost")})[:200])
        except ReplicadError as err:
            ctx.history.record("fail", "verify", site=victim, seq=s["seq"], error=err.code, message=str(err)[:200])
    n.unfill(victim)
    ctx.steps(p, 1)
    try:
        c.wait_for("full replica caught up after space was freed", lambda: _holds_newest(c, victim), 90)
        ctx.expect("replica resumes by itself once space is freed", True)
    except ReplicadError as err:
        ctx.expect("replica resumes by itself once space is freed", False,
                   f"{err}; status {c.status(victim)['volumes'][VOLUME]}"[:400])


def slow_fsync(ctx: Ctx, fault_s: float = 30.0) -> None:
    """Every fsync/fdatasync of the Raft leader's process takes 3 s for ``fault_s`` while
    the primary keeps writing and snapshotting: a few leader changes at most (checked by
    ``no_election_storm`` over the fault + 15 s), commits resume after, nothing committed is
    lost. Without PreVote the term rose every ~4-6 s at the healthy sites (README), so 15 s of
    fault (the test suite's default) already shows a storm as more than 3 changes."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    stop = threading.Event()
    poller = _raft_poller(ctx, stop)
    try:
        ctx.steps(ctx.primary, 2)
        st = c.status(ctx.primary)
        leader = st["raft_sites"].get(st["raft"].get("leader"))
        if ctx.rng.random() < 0.5 and leader == ctx.primary:  # also: a slow leader that is not the primary
            ctx.promote(next(s for s in c.data_sites if s != leader))
            ctx.steps(ctx.primary, 1)
        ctx.history.record("info", "note", text=f"raft leader {leader}, primary {ctx.primary}")
        n.slow_fsync(leader, 3.0, max_terms=3)
        t_end = time.monotonic() + fault_s
        during = []
        while time.monotonic() < t_end:
            w.write_random(ctx.primary, 3)
            during.append(w.snapshot(ctx.primary, timeout_s=45))
            time.sleep(ctx.rng.uniform(0.0, 2.0))
        n.fast_fsync(leader)
        ctx.history.record("info", "note", text=f"during slow fsync: {[(r or {}).get('committed') for r in during]}")
        c.wait_ready(60)
        primary, _ = current_primary(c)
        ctx.primary = primary or ctx.primary
        after = ctx.steps(ctx.primary, 3)
        ctx.expect("commits resume after the slow fsync", any(r and r.get("committed") for r in after),
                   str([(r or {}).get("committed") for r in after]))
        time.sleep(5)
    finally:
        stop.set()
        poller.join(timeout=10)


def promote_mid_ship(ctx: Ctx) -> None:
    """A forced promotion at a replica while the primary (rate-limited) is half way through
    shipping a whole-volume snapshot to it: the promoted site restores exactly one committed
    snapshot, root verified (``promotion_restores_one_snapshot``), never a mix of two."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    old, new = c.data_sites[0], c.data_sites[1]
    ctx.steps(old, 3)
    c.wait_for("standbys caught up", lambda: _converged(c) is None, 60)
    n.throttle(old, ctx.rng.choice(["16kbit", "32kbit"]))
    w.write(old, list(range(c.n_blocks)))
    late: dict[str, Any] = {}
    th = threading.Thread(target=lambda: late.update(rep=ctx.workload.snapshot(old, timeout_s=120)), daemon=True)
    chunks0 = c.status(new)["store"].get("chunks") or 0
    th.start()
    time.sleep(ctx.rng.uniform(0.5, 2.0))
    try:  # half-shipped: the replica has stored part of the new snapshot's chunks
        got = c.wait_for("part of the snapshot at the replica",
                         lambda: (lambda k: k if k > chunks0 else None)(c.status(new)["store"].get("chunks") or 0), 30)
        ctx.history.record("info", "note", text=f"{new} stored {got - chunks0} new chunks before the promotion")
    except ReplicadError as err:
        ctx.history.record("info", "note", text=f"no chunk reached {new} before the promotion: {err}")
    promo = ctx.promote(new)
    ctx.expect("promotion mid-ship succeeds", promo is not None, str(promo)[:200])
    n.unthrottle(old)
    th.join(timeout=150)
    rep = late.get("rep")
    ctx.history.record("info", "note", text=f"mid-ship snapshot: {str({k: (rep or {}).get(k) for k in ('seq', 'committed', 'holders')})}")
    if promo is None:
        return
    snaps = {s["seq"]: s for s in c.snapshots(new)["snapshots"]}
    rs = promo.get("restored_seq")
    ctx.expect("promoted site restored a committed snapshot", rs in snaps, f"restored #{rs}, catalog {sorted(snaps)}")
    w.snapshot(new)
    ctx.steps(new, 2)
    try:
        c.wait_for("old primary resynced", lambda: (
            lambda v: v if v["role"] == "replica" and v["standby_seq"] == v["newest_clean"] else None)(
            c.status(old)["volumes"][VOLUME]), 60)
    except ReplicadError as err:
        ctx.expect("old primary resynced", False, str(err)[:300])
    w.adopt(old)


def set_retention(c, site: str, approver: str, pol: dict) -> dict:
    """Set the cluster's retention at ``site``; a shortening is a request that ``approver``'s
    operator approves at ``approver`` (with its own admin token)."""
    res = c.api(site, "PUT", f"/v1/volumes/{VOLUME}/retention", {"retention": pol, "reason": "chaos scenario"})
    if res.get("status") == "pending":
        res = c.api(approver, "POST", f"/v1/requests/{res['request']}/approve", {})
    return res


LOCK_S = 30  # below the primary's skew: a -50 s stamp looks out of the lock to true clocks


def _prepare_clock(ctx: Ctx) -> None:
    p = ctx.cluster.data_sites[0]
    # > 60 s of skew cuts the site off from Raft (Fernet tokens of pysyncobj's encryption
    # are refused beyond 60 s of clock skew): the offsets stay inside that
    ctx.launch_env[p] = ctx.nemesis.faketime_env(p, ctx.rng.choice(["-50", "-45"]))


def clock_step(ctx: Ctx) -> None:
    """The primary runs under libfaketime: first 2-3 h behind, then (restarted) on time,
    then (restarted) 2-3 h ahead, taking snapshots and running retention at every site with
    a 1 h lock window and nothing else kept. Order (epochs, commits) is unaffected, and
    nothing younger than the lock window by the campaign's clock — the clock of the two
    sites with a true clock, a majority — is ever pruned (``lock_window``).

    libfaketime 0.9.10 cannot leave the monotonic clock alone under Python 3.11
    (``time.sleep`` fails with EINVAL when ``FAKETIME_DONT_FAKE_MONOTONIC=1``), so the
    offset shifts both clocks and is only stepped while the site is down."""
    c, n = ctx.cluster, ctx.nemesis
    p, other = c.data_sites[0], c.data_sites[1]
    env = ctx.launch_env[p]
    pol = {"keep_all_s": 0, "hourly_s": 0, "daily_s": 0, "lock_s": LOCK_S}
    try:
        set_retention(c, p, other, pol)
        ctx.history.record("info", "retention_policy", **pol)
    except ReplicadError as err:
        ctx.expect("retention policy set", False, f"{err.code}: {err}"[:300])
        return

    def retention_everywhere() -> list[int]:
        time.sleep(CLOCK_SETTLE_S)  # every site has reported its clock through Raft once more
        pruned: list[int] = []
        for site in c.data_sites:
            ctx.history.record("invoke", "retention_run", site=site)
            try:
                rep = c.api(site, "POST", f"/v1/volumes/{VOLUME}/retention/run", {}, timeout_s=30)
                ctx.history.record("ok", "retention_run", site=site, report=rep)
                pruned += rep.get("pruned") or []
            except ReplicadError as err:
                ctx.history.record("fail", "retention_run", site=site, error=err.code, message=str(err)[:300])
            for sid in c.sites:
                c.record_catalog(sid)
        return pruned

    offset = n.clock_files[p].read_text().strip()
    for step in range(3):
        if step:
            offset = "+0" if step == 1 else ctx.rng.choice(["+50", "+45"])
            n.kill(p)
            n.clock(p, offset)
            n.start_with_env(p, env)
            c.wait_ready(60)
            c.wait_for("primary acting", lambda: (lambda v: v["acting_epoch"] == v["epoch"])(
                c.status(p)["volumes"][VOLUME]), 60)
        reps = ctx.steps(p, 3)
        ctx.expect(f"commits continue with the primary's clock at {offset}",
                   all(r and r.get("committed") for r in reps), str([(r or {}).get("committed") for r in reps]))
        retention_everywhere()
    # once the first snapshots are past the lock by every clock (plus the state machine's
    # margin for late clock reports), retention does prune: the lock delays, never blocks
    time.sleep(LOCK_S / 2)
    pruned = retention_everywhere()
    ctx.expect("retention prunes once the lock window has passed", bool(pruned), f"pruned {pruned}")
    _, epoch = current_primary(c)
    ctx.expect("no epoch change from clock steps", epoch == 1, f"epoch {epoch}")


CLOCK_SETTLE_S = 6.0  # > CLOCK_HEARTBEAT_S: every site has reported its clock once more


# ---------------------------------------------------------------------- retention racing replication
RACE_LOCK_S = 8  # short enough for several prunes per run, long enough for a cycle


def held_audit(ctx: Ctx, site: str, snapshots: list[dict]) -> dict:
    """Check, read-only and while the daemon runs, that ``site``'s chunk store has every chunk
    (manifest, pages, non-zero blocks) of each snapshot of ``snapshots`` (the catalog's
    entries) that names ``site`` as a holder. Records ``held_audit`` {site, checked: [seq],
    missing: {seq: count}} and returns it. Reads the SQLite index (WAL, read-only) and the
    append-only packs directly: nothing is healed from peers, unlike ``verify``/``restore``."""
    import sqlite3

    from replicad.storage.chunkstore import RECORD_HEADER_SIZE, decode_chunk
    from replicad.core.manifest import Manifest, chunk_digests

    root = ctx.cluster.sites[site].data_dir / "chunks"
    out: dict[str, Any] = {"site": site, "checked": [], "missing": {}}
    try:
        db = sqlite3.connect(f"file:{root / 'index.sqlite3'}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as err:
        out["error"] = repr(err)[:200]
        ctx.history.record("info", "held_audit", **out)
        return out

    def row(d: bytes):
        return db.execute("SELECT pack, offset, length, codec FROM chunks WHERE digest=?", (d,)).fetchone()

    def get(d: bytes) -> bytes:
        for _ in range(3):  # a gc may move the chunk between the index read and the pack read
            r = row(d)
            if r is None:
                raise KeyError(d.hex())
            try:
                with open(root / "packs" / f"{r[0]:08d}.pack", "rb") as f:
                    f.seek(r[1] + RECORD_HEADER_SIZE)
                    return decode_chunk(r[3], f.read(r[2]))
            except OSError:
                time.sleep(0.2)
        raise KeyError(d.hex())

    try:
        for snap in snapshots:
            if site not in snap["holders"]:
                continue
            seq = snap["seq"]
            try:
                m = Manifest.decode(get(bytes.fromhex(snap["root"])))
                digests = chunk_digests(m, get)
            except (KeyError, ReplicadError, ValueError) as err:
                out["missing"][str(seq)] = f"manifest or page unreadable: {err!r}"[:200]
                continue
            lacking = [d for d in digests if row(d) is None]
            out["checked"].append(seq)
            if lacking:
                out["missing"][str(seq)] = len(lacking)
    finally:
        db.close()
    ctx.history.record("info", "held_audit", **out)
    return out


def _prepare_retention_race(ctx: Ctx) -> None:
    """Give two sites different retention in their own config files (the Raft-agreed policy
    is the initial primary's, which alone registers the volume; the others' files are not consulted)."""
    for sid, pol in zip(ctx.cluster.data_sites[:2], (('2h', '4h', '8h', '1h'), ('30m', '1h', '2h', '20m'))):
        cfg = ctx.cluster.sites[sid].config_path
        cfg.write_text(cfg.read_text() + '\n[volumes.retention]\nkeep_all = "%s"\nhourly = "%s"\n'
                       'daily = "%s"\nlock = "%s"\n' % pol)
        ctx.history.record("info", "note", text=f"{sid} config retention keep_all/hourly/daily/lock = {pol}")


def _changed_blocks(a: list[int] | None, b: list[int] | None) -> int | None:
    if not a or not b or -1 in a or -1 in b:
        return None
    return sum(1 for x, y in zip(a, b) if x != y)


def retention_race(ctx: Ctx, rounds: int = 10) -> None:
    """Different retention in two sites' config files, then a short Raft-agreed policy
    (keep nothing, ``RACE_LOCK_S`` lock) while one replica (site-c) lags, cut off,
    and retention runs, and operator prunes are asked, at random sites concurrently with
    the cycles. Expected: one policy everywhere; the newest snapshot the primary shares with
    each replica is never pruned and an explicit prune of it is refused with
    ``retention_locked``; ship reports stay incremental (chunks sent ~ blocks changed since
    the base, never the whole volume), also to the lagging replica once the cut heals; every
    held snapshot keeps every chunk at each holder (``held_audit``, nothing healed)."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    p = c.data_sites[0]
    lag = c.data_sites[-1]
    pols = {}
    for sid in c.data_sites:
        pols[sid] = c.api(sid, "GET", f"/v1/volumes/{VOLUME}/retention")["retention"]
    ctx.expect("one retention policy at every site despite different config files",
               len({tuple(sorted(v.items())) for v in pols.values()}) == 1, str(pols)[:300])
    pol = {"keep_all_s": 0, "hourly_s": 0, "daily_s": 0, "lock_s": RACE_LOCK_S}
    set_retention(c, p, c.data_sites[1], pol)
    ctx.history.record("info", "retention_policy", **pol)
    images: dict[int, list[int]] = {}
    committed_at: dict[int, float] = {}
    reports: list[dict] = []

    def step(k: int = 3) -> dict | None:
        w.write_random(p, k)
        image = list(w.gens[p])
        rep = w.snapshot(p)
        if rep and rep.get("committed"):
            images[rep["seq"]] = image
            committed_at[rep["seq"]] = time.monotonic()
            reports.append(rep)
        return rep

    for _ in range(3):
        step()
    c.wait_for("every site holds the newest", lambda: _converged(c) is None, 60)
    # cut off completely: a one-way cut would let its Raft elections disturb the others
    # (no pre-vote in pysyncobj), which is the one-way scenario's business, not this one's
    n.isolate(lag)
    for _ in range(2):
        step()

    def common_with(site: str) -> int | None:
        snaps = c.snapshots(p)["snapshots"]
        both = [s["seq"] for s in snaps if p in s["holders"] and site in s["holders"]]
        return max(both) if both else None

    base_lag = common_with(lag)
    ctx.history.record("info", "note", text=f"newest common snapshot of {p} and {lag}: #{base_lag}")
    stop = threading.Event()
    racer_log: list[tuple[str, str, Any]] = []

    def prune(site: str, seqs: list[int]) -> tuple[bool, str | None, dict]:
        ctx.history.record("invoke", "prune", site=site, seqs=seqs)
        try:
            rep = c.api(site, "POST", f"/v1/volumes/{VOLUME}/prune", {"seqs": seqs}, timeout_s=30)
            ctx.history.record("ok", "prune", site=site, seqs=seqs, pruned=rep.get("pruned"))
            return True, None, {}
        except ReplicadError as err:
            ev = {k: v for k, v in (err.evidence or {}).items() if k in ("seq", "replica", "primary")}
            ctx.history.record("fail", "prune", site=site, seqs=seqs, error=err.code, message=str(err)[:300],
                               evidence=ev)
            return False, err.code, ev

    def prune_common(who: str, replica: str) -> None:
        """Explicitly prune the newest common snapshot of the primary and ``replica`` once it
        is older than the lock (so the lock is not why it is refused): must be refused."""
        target = common_with(replica)
        if target is None:
            return
        wait = committed_at.get(target, 0) + RACE_LOCK_S + 2 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        target = common_with(replica)
        done, code, ev = prune(who, [target])
        for _ in range(3):  # a site that just got its link back may not reach the leader yet
            if code != "no_quorum":
                break
            time.sleep(3)
            done, code, ev = prune(who, [target])
        now = common_with(replica)
        moved_on = done and now is not None and now > target  # the replica caught up meanwhile: a plain prune
        ctx.expect(f"prune of #{target} (newest common of {p} and {replica} when asked) at {who} refused"
                   + (" (or the replica moved on)" if moved_on else ""),
                   moved_on or (not done and code == "retention_locked" and ev.get("seq") == target
                                and ev.get("replica") in (replica, None)),
                   f"answer: {'pruned' if done else code} {ev}; newest common now #{now}")

    def racer() -> None:  # retention and operator prunes at random sites, racing the cycles
        rng = random.Random(ctx.rng.random())
        while not stop.is_set():
            site = rng.choice(c.data_sites)
            try:
                if rng.random() < 0.5 or site in n.isolated:
                    ctx.history.record("invoke", "retention_run", site=site)
                    rep = c.api(site, "POST", f"/v1/volumes/{VOLUME}/retention/run", {}, timeout_s=30)
                    ctx.history.record("ok", "retention_run", site=site, report=rep)
                    racer_log.append(("retention_run", site, rep.get("pruned")))
                else:
                    seqs = [s["seq"] for s in c.snapshots(site)["snapshots"]][:-1]
                    if seqs:
                        pick = sorted(rng.sample(seqs, min(len(seqs), rng.randint(1, 2))))
                        racer_log.append(("prune", site, (pick, prune(site, pick))))
            except ReplicadError as err:
                ctx.history.record("fail", "retention_run", site=site, error=err.code, message=str(err)[:200])
            stop.wait(rng.uniform(0.1, 0.4))

    th = threading.Thread(target=racer, name="retention-racer", daemon=True)
    th.start()
    try:
        for r in range(rounds):
            step(ctx.rng.randint(1, 4))
            time.sleep(ctx.rng.uniform(0.5, 2.0))
            if r % 4 == 3:  # explicitly delete the newest common snapshot of the primary and the lagging replica
                prune_common(ctx.rng.choice([s for s in c.data_sites if s != lag]), lag)
    finally:
        stop.set()
        th.join(timeout=60)
    seqs = [s["seq"] for s in c.snapshots(p)["snapshots"]]
    base_now = common_with(lag)
    ctx.expect(f"{p} and {lag} still share a snapshot after the race (#{base_lag} at the cut)",
               base_now is not None and base_now >= (base_lag or 0), f"now #{base_now}, catalog {seqs}")
    pruned_any = sorted({x for kind, _, v in racer_log if kind == "retention_run" for x in (v or [])}
                        | {x for kind, _, v in racer_log if kind == "prune" and v[1][0] for x in v[0]})
    ctx.expect("retention pruned while replication went on", bool(pruned_any), f"pruned {pruned_any}")
    ctx.history.record("info", "note", text=f"racer: {len(racer_log)} actions, pruned {pruned_any}")
    # incremental ships to the replica that kept up, all along
    bad = []
    for rep in reports[3:]:
        peer = (rep.get("peers") or {}).get(c.data_sites[1]) or {}
        if not peer.get("ok"):
            continue
        base = peer.get("base_seq")
        changed = _changed_blocks(images.get(base), images.get(rep["seq"])) if base is not None else None
        if base is None or changed is None or peer.get("sent", 0) > changed + 3:
            bad.append((rep["seq"], base, peer.get("sent"), changed))
    ctx.expect(f"ships to {c.data_sites[1]} stay incremental while pruning", not bad,
               f"(seq, base, chunks sent, blocks changed since base): {bad}")
    for sid in c.data_sites:
        a = held_audit(ctx, sid, c.snapshots(sid)["snapshots"])
        ctx.expect(f"every held snapshot complete at {sid} after the race", not a["missing"] and "error" not in a,
                   f"checked {a['checked']}, missing {a['missing']}")
    # the lagging replica catches up incrementally from its kept base
    log_from = c.sites[lag].log_path.stat().st_size
    n.heal(lag)
    prune_common(lag, lag)  # asked at the lagging replica itself, once it reaches the leader again
    base_lag = common_with(lag)
    rep = step()
    peer = ((rep or {}).get("peers") or {}).get(lag) or {}
    base = peer.get("base_seq")
    changed = _changed_blocks(images.get(base), images.get((rep or {}).get("seq"))) if base is not None else None
    ctx.expect(f"catch-up ship to {lag} is incremental from #{base_lag}",
               bool(peer.get("ok")) and base is not None and base >= (base_lag or 0) and changed is not None
               and peer.get("sent", 0) <= changed + 3 and changed < c.n_blocks,
               f"report {peer}, blocks changed since base {changed} of {c.n_blocks}")
    for _ in range(2):
        step()
    c.wait_for("every site holds the newest", lambda: _converged(c) is None, 60)
    # what the lagging replica pulled by itself from the holders (replica step) after the heal
    import re
    with open(c.sites[lag].log_path, "rb") as f:
        f.seek(log_from)
        text = f.read().decode(errors="replace")
    pulls = [(int(m.group(1)), int(m.group(2))) for m in
             re.finditer(r"pulled \S+#(\d+) from .*?: (\d+) block chunks were missing here", text)]
    bound = {seq: _changed_blocks(images.get(base_now), images.get(seq)) for seq, _ in pulls}
    whole = [(seq, k, bound[seq]) for seq, k in pulls if bound[seq] is None or k > bound[seq]]
    ctx.expect(f"pulls by {lag} after the heal are incremental from #{base_now}", not whole,
               f"(seq, block chunks pulled): {pulls}; blocks changed since #{base_now}: {bound}; "
               f"volume {c.n_blocks} blocks")
    for sid in c.data_sites:
        held_audit(ctx, sid, c.snapshots(sid)["snapshots"])


# ---------------------------------------------------------------------- SIGKILL in the middle of writes
LEFTOVER_SUFFIXES = (".tmp", ".partial")  # fingerprints/Raft meta tmp files; any partial file


def leftovers(ctx: Ctx, site: str) -> list[str]:
    """Files under ``site``'s data dir that a crash may leave behind and that a clean open
    must have removed or replaced: ``*.tmp``/``*.partial`` names, and pack files shorter
    than a pack header (torn at creation)."""
    d = ctx.cluster.sites[site].data_dir
    out = [str(f.relative_to(d)) for f in d.rglob("*") if f.is_file() and f.name.endswith(LEFTOVER_SUFFIXES)]
    out += [str(f.relative_to(d)) for f in d.rglob("*.pack") if f.stat().st_size < 16]
    return sorted(out)


def kill_mid_write(ctx: Ctx, rounds: int = 3) -> None:
    """SIGKILL a site while it writes: a replica receiving a whole-volume ship (packs and
    index), the primary in the middle of a cycle (chunks, pages, manifest, catalog), a site
    in the middle of a restore (``wait: false``; its target image). Each time: restart,
    expect a clean open (ready, the primary acting), no ``*.tmp``/``*.partial`` or torn pack
    left in the data dir, and the run goes on. The seed picks the order and the timing;
    :func:`finish` then restores every committed snapshot at every holder byte-exact."""
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    p = c.data_sites[0]
    ctx.steps(p, 2)
    c.wait_for("standbys caught up", lambda: _converged(c) is None, 60)
    kinds = ["receive", "cycle", "restore"]
    ctx.rng.shuffle(kinds)
    kinds = (kinds * ((rounds + 2) // 3))[:rounds]
    rdir = c.root / "kill-restores"
    rdir.mkdir(exist_ok=True)
    for r, kind in enumerate(kinds):
        victim = p if kind == "cycle" else ctx.rng.choice([s for s in c.data_sites if s != p])
        th = None
        note = ""
        if kind == "receive":
            n.throttle(p, "8mbit")
            w.write(p, list(range(c.n_blocks)))
            th = threading.Thread(target=w.snapshot, args=(p, 120), daemon=True)
            chunks0 = c.status(victim)["store"].get("chunks") or 0
            th.start()
            try:
                got = c.wait_for("part of the ship at the replica", lambda: (
                    lambda k: k if k > chunks0 + ctx.rng.randint(1, max(2, c.n_blocks // 2)) else None)(
                    c.status(victim)["store"].get("chunks") or 0), 30, 0.05)
                note = f"{got - chunks0} chunks stored"
            except ReplicadError as err:
                note = f"no chunk stored yet: {err}"[:200]
        elif kind == "cycle":
            w.write_random(p, ctx.rng.randint(2, 8))
            th = threading.Thread(target=w.snapshot, args=(p, 60), daemon=True)
            th.start()
            time.sleep(ctx.rng.uniform(0.0, 0.2))
        else:
            seq = ctx.rng.choice([s["seq"] for s in c.snapshots(victim)["snapshots"] if victim in s["holders"]])
            target = rdir / f"{victim}-{seq}-round{r}.img"
            ctx.history.record("invoke", "restore_killed", site=victim, seq=seq, target=str(target))
            op = c.api(victim, "POST", f"/v1/volumes/{VOLUME}/restore",
                       {"target": str(target), "seq": seq, "wait": False}, timeout_s=30)
            time.sleep(ctx.rng.uniform(0.0, 0.1))  # a 16 MiB restore takes ~0.1 s
            note = f"restore #{seq} into {target.name}, operation {op}"[:200]
        n.kill(victim)
        ctx.history.record("info", "note", text=f"round {r}: killed {victim} mid-{kind}: {note}")
        if kind == "receive":
            n.unthrottle(p)
        if th is not None:
            th.join(timeout=150)
        n.start(victim)
        try:
            c.wait_ready(60)
            c.wait_for("primary acting", lambda: (lambda v: v["acting_epoch"] == v["epoch"])(
                c.status(p)["volumes"][VOLUME]), 60)
            ctx.expect(f"round {r}: {victim} opens cleanly after a kill mid-{kind}", c.sites[victim].running(),
                       c.log_tail(victim, 3)[-300:])
        except ReplicadError as err:
            ctx.expect(f"round {r}: {victim} opens cleanly after a kill mid-{kind}", False,
                       f"{err}; {c.log_tail(victim, 5)}"[-400:])
            continue
        first = leftovers(ctx, victim)
        time.sleep(1.5 if first else 0)
        left = sorted(set(first) & set(leftovers(ctx, victim)))  # a tmp file being written right now is no leftover
        ctx.expect(f"round {r}: nothing partial left in {victim}'s data dir", not left, str(left[:8]))
        if kind == "restore":
            files = [str(f) for f in rdir.glob(f"*{victim}-*-round{r}.img*")]  # also .NAME.RANDOM.partial
            ctx.history.record("info", "note", text=f"round {r}: files at the killed restore's target: {files}")
            ctx.expect(f"round {r}: the killed restore left no partial image", target.exists() or not files,
                       str(files))
            if target.exists():  # it finished before the kill: then it is the whole snapshot
                again = rdir / f"{victim}-{seq}-again{r}.img"
                c.api(victim, "POST", f"/v1/volumes/{VOLUME}/restore", {"target": str(again), "seq": seq},
                      timeout_s=120)
                ctx.expect(f"round {r}: the restore finished before the kill left exactly #{seq}",
                           files == [str(target)] and filecmp.cmp(target, again, shallow=False), str(files))
        w.adopt(p)
        ctx.steps(p, 2)


# ---------------------------------------------------------------------- ransomware signal
def _brief_reports(reps: list[dict | None]) -> str:
    return str([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in (r or {}).items()
                 if k in ("seq", "committed", "verdict", "score", "baseline")} for r in reps])


def _standbys_hold(ctx: Ctx, replicas: list[str], seq: int, image: bytes, watch_s: float) -> list[str]:
    """Watch ``replicas`` for ``watch_s`` (status every 0.5 s, i.e. each replica step): their
    standby stays at ``seq`` and is not being rewritten; at the end each image file is
    exactly ``image``. Returns what was wrong (empty: all held)."""
    c = ctx.cluster
    wrong: list[str] = []
    until = time.monotonic() + watch_s
    while True:
        for sid in replicas:
            try:
                v = c.status(sid)["volumes"][VOLUME]
            except ReplicadError as err:
                wrong.append(f"{sid}: status {err.code}")
                continue
            if v["standby_seq"] != seq or v["standby_applying"]:
                wrong.append(f"{sid}: standby #{v['standby_seq']} applying={v['standby_applying']}, newest clean "
                             f"#{v.get('newest_clean')}")
        if time.monotonic() >= until:
            break
        time.sleep(0.5)
    for sid in replicas:
        path = c.sites[sid].volume_path()
        data = path.read_bytes() if path.exists() else b""
        if data != image:
            got = ctx.workload.adopt(sid)
            wrong.append(f"{sid}: image is not #{seq}'s: gens {got}")
    return sorted(set(wrong))


def ransomware(ctx: Ctx) -> None:
    """The ransomware signal on real processes. A few ordinary cycles make the baseline; a
    large compressible rewrite (50-70 % of the blocks rewritten as new text generations: a
    log rotation, a database vacuum) commits ``clean`` and the standbys apply it; then a
    random-byte overwrite of 40-60 % of the blocks (ciphertext generations) is flagged
    ``suspect`` by the very next snapshot (the workload's snapshot call, well inside the 1 h
    interval), is replicated (held) but never applied: every replica's standby stays at the
    clean rewrite, byte for byte. The following cycle stays ``suspect`` (taint) although it
    changes nothing random. A forced promotion at a replica restores the clean rewrite (not
    the newer suspect snapshots), its new line commits ``clean``, and the attacked old
    primary, fenced, has its image rewritten to the new line's clean state."""
    c, w = ctx.cluster, ctx.workload
    p = c.data_sites[0]
    replicas = [s for s in c.data_sites if s != p]
    n = c.n_blocks
    base = ctx.steps(p, 3)
    ctx.expect("baseline cycles commit clean", all(r and r.get("committed") and r.get("verdict") == "clean"
                                                    for r in base), _brief_reports(base))
    # a large, compressible rewrite: changes most of the volume, nothing of it looks random
    k = ctx.rng.randint(n // 2, n * 7 // 10)
    w.write(p, sorted(ctx.rng.sample(range(n), k)))
    clean_img = list(w.gens[p])
    rep = w.snapshot(p)
    ctx.expect(f"compressible rewrite of {k}/{n} blocks committed clean",
               bool(rep and rep.get("committed") and rep.get("verdict") == "clean"), _brief_reports([rep]))
    if not (rep and rep.get("committed")):
        return
    clean_seq = rep["seq"]
    try:
        c.wait_for(f"standbys at #{clean_seq}", lambda: all(
            c.status(s)["volumes"][VOLUME]["standby_seq"] == clean_seq for s in replicas), 60)
    except ReplicadError as err:
        ctx.expect(f"standbys apply the clean rewrite #{clean_seq}", False, str(err)[:300])
        return
    # the attack: ciphertext over 40-60 % of the blocks, then the next snapshot
    k = ctx.rng.randint(n * 2 // 5, n * 3 // 5)
    w.encrypt(p, sorted(ctx.rng.sample(range(n), k)))
    rep = w.snapshot(p)
    score = (rep or {}).get("score") or 0.0
    ctx.expect(f"random-byte overwrite of {k}/{n} blocks flagged suspect by the next snapshot",
               bool(rep and rep.get("committed") and rep.get("verdict") == "suspect" and score >= 0.9 * k / n),
               _brief_reports([rep]) + f"; expected score ~{k / n:.3f}")
    if not (rep and rep.get("committed")):
        return
    attack_seq = rep["seq"]
    ctx.history.record("info", "note", text=f"suspect #{attack_seq} held by {rep.get('holders')}")
    v = c.status(p)["volumes"][VOLUME]
    ctx.expect(f"newest clean stays #{clean_seq} after the attack",
               v["newest_clean"] == clean_seq and attack_seq in v["suspect"],
               f"newest clean #{v['newest_clean']}, suspect {v['suspect']}")
    wrong = _standbys_hold(ctx, replicas, clean_seq, w.expected(clean_img), 4.0)
    ctx.expect(f"standbys keep the clean image #{clean_seq} after suspect #{attack_seq}", not wrong, str(wrong)[:400])
    # taint: the next cycle scores ~0 (nothing newly random) but descends from a suspect state
    k = ctx.rng.choice([0, 2])
    if k:
        w.write_random(p, k)
    rep = w.snapshot(p)
    ctx.expect(f"the cycle after the attack ({k} text blocks written) stays suspect",
               bool(rep and rep.get("committed") and rep.get("verdict") == "suspect"), _brief_reports([rep]))
    taint_seq = (rep or {}).get("seq")
    wrong = _standbys_hold(ctx, replicas, clean_seq, w.expected(clean_img), 2.0)
    ctx.expect(f"standbys still at the clean image #{clean_seq} after the tainted cycle", not wrong, str(wrong)[:400])
    # recovery: forced promotion at a replica restores the newest clean snapshot
    new = ctx.rng.choice(replicas)
    promo = ctx.promote(new)
    ctx.expect(f"forced promotion at {new} restores the clean #{clean_seq}",
               promo is not None and promo.get("restored_seq") == clean_seq and w.gens.get(new) == clean_img,
               f"{str(promo)[:200]}; image {'=' if w.gens.get(new) == clean_img else '!='} #{clean_seq}")
    if promo is None:
        return
    path = c.sites[new].volume_path()
    ctx.expect(f"{new}'s image is #{clean_seq} byte for byte after the promotion",
               path.read_bytes() == w.expected(clean_img))
    reps = ctx.steps(new, 2)
    ctx.expect("the new line commits clean", all(r and r.get("committed") and r.get("verdict") == "clean"
                                                  for r in reps), _brief_reports(reps))
    last = w.gens[new]
    try:
        c.wait_for(f"{p} fenced and its image rewritten to the new line", lambda: (
            lambda v: v if v["role"] == "replica" and v["standby_seq"] == v["newest_clean"] else None)(
            c.status(p)["volumes"][VOLUME]), 60)
        got = w.adopt(p)
        ctx.expect(f"the attacked {p} holds the new line's clean image", got == last,
                   f"gens {got} vs {last}")
    except ReplicadError as err:
        ctx.expect(f"{p} fenced and resynced", False, str(err)[:300])
        w.adopt(p)
    verdicts = {s["seq"]: s["verdict"] for s in c.snapshots(new)["snapshots"]}
    ctx.expect("the attack's snapshots stay in the catalog as suspect",
               verdicts.get(attack_seq) == "suspect" and (taint_seq is None or verdicts.get(taint_seq) == "suspect"),
               f"#{attack_seq}: {verdicts.get(attack_seq)}, #{taint_seq}: {verdicts.get(taint_seq)}")


@dataclass(frozen=True)
class Scenario:
    """A named campaign: its function, cluster shape and expected outcome."""

    name: str
    fn: Callable[[Ctx], None]
    n_data: int = 3
    n_witness: int = 0
    expected: str = ""
    prepare: Callable[[Ctx], None] | None = None  # after setup, before the daemons start
    n_blocks: int = 32


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
    Scenario("disk-full", disk_full, prepare=_prepare_disk_full,
             expected="ship aborts with store_full, stored chunks intact, replica catches up once space is freed"),
    Scenario("slow-fsync", slow_fsync, expected="few leader changes, commits resume, nothing committed lost"),
    Scenario("promote-mid-ship", promote_mid_ship, n_blocks=128,
             expected="the promoted site restores exactly one committed snapshot, root verified"),
    Scenario("retention-race", retention_race, prepare=_prepare_retention_race, n_blocks=64,
             expected="one policy; newest common snapshot of primary and each replica never pruned, its prune "
                      "refused; ships stay incremental; held snapshots keep every chunk"),
    Scenario("kill-mid-write", kill_mid_write, n_blocks=256,
             expected="clean open after SIGKILL mid-receive/cycle/restore; no partial file left or served"),
    Scenario("ransomware", ransomware,
             expected="compressible rewrite clean; random overwrite suspect at the next snapshot, standbys keep "
                      "the clean image; taint; forced promotion restores the clean snapshot"),
    Scenario("clock-step", clock_step, prepare=_prepare_clock,
             expected="epochs and commits unaffected; nothing pruned inside the lock window by majority clocks"),
    Scenario("raft-journal-damage", raftfaults.raft_journal_damage,
             expected="one flipped bit in a replica's journal/meta with one more site down: a typed refusal "
                      "(header, middle record, meta) or a start that votes for nobody until caught up (tail); "
                      "the runbook brings it back; no acknowledged commit lost"),
    Scenario("raft-leader-full", raftfaults.raft_leader_full, prepare=raftfaults._prepare_raft_tmpfs,
             expected="the Raft leader's disk full (short write then ENOSPC, or strace ENOSPC): it steps down, "
                      "the others commit, its journal reopens whole; nothing acknowledged lost"),
)}


def run_scenario(name: str, seed: int, root: Path, run_id: int, *, n_blocks: int | None = None,
                 params: dict[str, Any] | None = None) -> tuple[Path, list[str]]:
    """Run scenario ``name`` with ``seed`` under ``root``; returns (history path, notes).

    ``params``: keyword arguments of the scenario's function (e.g. ``{"fault_s": 15.0}`` for
    ``slow-fsync``); None runs the campaign as ``python -m chaos.run`` does.

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
    c = Cluster(root, run_id, h, n_data=sc.n_data, n_witness=sc.n_witness,
                n_blocks=sc.n_blocks if n_blocks is None else n_blocks)
    ctx = Ctx(c, Workload(c, h, rng), Nemesis(c, h, rng), h, rng, primary=c.data_sites[0])
    h.record("info", "scenario", name=name, seed=seed, expected=sc.expected)
    try:
        c.setup()
        ctx.workload.init_image(ctx.primary)
        if sc.prepare is not None:
            sc.prepare(ctx)
        for sid in c.sites:
            if sid in ctx.launch_env:
                ctx.nemesis.start_with_env(sid, ctx.launch_env[sid])
            else:
                c.start(sid)
        c.wait_ready(60)
        c.start_polling()
        try:
            sc.fn(ctx, **(params or {}))
        except ReplicadError as err:
            ctx.expect("scenario ran to its end", False, f"{err.code}: {err}")
        finish(ctx)
    finally:
        c.teardown()
        for fn in ctx.cleanups:
            try:
                fn()
            except Exception as err:  # noqa: BLE001 — a cleanup failure must not skip the others
                h.record("info", "cleanup_failed", error=repr(err)[:300])
        ctx.nemesis.unmount_all()
        h.close()
    return hist_path, ctx.notes
