"""Daemon-campaign scenarios with disk faults on the Raft storage (issue 13, items 2, 3, 6),
registered in :data:`chaos.scenarios.SCENARIOS`; the dump faults (items 6 and 8) need a
compacted log, which a daemon reaches only after 5,000 entries: they run in the Raft-layer
history (:mod:`chaos.raftjepsen`) instead.

* ``raft-journal-damage``: a replica is SIGKILLed, one bit of its Raft storage is flipped
  (class by seed: journal header / middle record / tail record, meta file), **one more site
  is SIGKILLed**, and the damaged site restarts next to the primary. It must refuse to start
  with a typed damage error (``start_refused``: exit code, error code, no traceback) where
  the class calls for it (:data:`chaos.raftdisk.EXPECTED`), or start and vote for nobody until
  caught up (a damaged last record: it may have been acknowledged). A refused site is
  brought back by the README's way out (the damaged file moved aside, the rest kept).
* ``raft-leader-full``: every site's Raft directory is its own 4 MiB tmpfs; the Raft
  leader's is filled (a few hundred bytes to a few KiB left: the next append is a short
  write, then ENOSPC), or, by seed, every journal ``pwrite64`` of the leader fails with ENOSPC
  (strace inject), while the primary keeps snapshotting. The full leader must step down,
  the others go on committing, the full site answers ``store_full`` rather than a
  ``no_quorum`` timeout, and after the fault and a SIGKILL it reopens its journal whole.

A site that refuses to start on purpose is judged by the history, not by a catalog: the
checker's ``typed_refusal`` requires the refusal be a typed damage error (no traceback); the
site then has no final catalog until the runbook restarts it, and ``no_committed_loss``
judges every site that answered at the end (at least a majority must).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from replicad.core.errors import ReplicadError

from . import raftdisk
from .harness import VOLUME, sh

JOURNAL_CLASSES = ("journal-header", "journal-middle", "journal-tail", "meta")
RAFT_TMPFS = "4m"


def raft_dir(ctx, site: str) -> Path:
    return ctx.cluster.sites[site].data_dir / "raft"


def start_or_refusal(ctx, site: str, timeout_s: float = 45.0) -> bool:
    """Start ``site``'s daemon and tell (bounded) whether it runs or refused on purpose.

    Records ``nemesis start`` ok (it answers its admin API) or ``nemesis start_refused``
    ``{site, exit, code, traceback}`` (the daemon exited; ``code`` = the first damage code of
    :data:`chaos.raftdisk.DAMAGE_CODES` in the log since this start). Returns True if it runs.
    """
    c, h = ctx.cluster, ctx.history
    s = c.sites[site]
    log_before = s.log_path.stat().st_size if s.log_path.exists() else 0
    h.record("invoke", "nemesis", f="start", site=site)
    c.start(site)
    ctx.nemesis.killed.discard(site)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            with open(s.log_path, "rb") as f:
                f.seek(log_before)
                text = f.read().decode(errors="replace")
            code = next((k for k in sorted(raftdisk.DAMAGE_CODES) if k in text), None)
            line = next((ln for ln in text.splitlines() if code and code in ln), "")
            h.record("info", "nemesis", f="start_refused", site=site, exit=s.proc.returncode, code=code,
                     traceback="Traceback" in text, message=line[:400])
            ctx.nemesis.killed.add(site)
            return False
        try:
            c.status(site, timeout_s=2)
            h.record("ok", "nemesis", f="start", site=site)
            return True
        except ReplicadError:
            time.sleep(0.5)
    h.record("ok", "nemesis", f="start", site=site, note="not answering yet")
    return True


def runbook(ctx, site: str, where: str) -> bool:
    """README "Raft journal damaged": the damaged file moved aside (journal, or meta), the rest
    kept; start again. Returns True if the site runs."""
    names = ("raft.journal.meta",) if where == "meta" else ("raft.journal",)
    moved = raftdisk.move_aside(raft_dir(ctx, site), names, str(int(time.time())))
    ctx.history.record("ok", "nemesis", f="move_aside", site=site, moved=moved)
    return start_or_refusal(ctx, site)


def raft_journal_damage(ctx) -> None:
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    p = ctx.primary
    victim, other = [s for s in c.data_sites if s != p][-1], [s for s in c.data_sites if s != p][0]
    where = JOURNAL_CLASSES[ctx.rng.randrange(len(JOURNAL_CLASSES))]
    ctx.history.record("info", "note", text=f"position class {where}")
    ctx.steps(p, 3)
    n.kill(victim)
    try:
        info = raftdisk.flip(raft_dir(ctx, victim), where, ctx.rng)
    except (OSError, ValueError) as err:
        ctx.expect("a flip of the drawn class is possible", False, str(err))
        n.start(victim)
        return
    ctx.history.record("ok", "nemesis", f="flip", site=victim, expected=raftdisk.EXPECTED[where], **info)
    n.kill(other)  # one more site down: the damaged site is needed for the majority
    ran = start_or_refusal(ctx, victim)
    if not ran:
        ran = runbook(ctx, victim, where)
    acked = [w.step(p, 2) for _ in range(2)]  # while `other` is down: commits need the damaged site
    ctx.history.record("info", "note", text=f"with {other} down: {[(r or {}).get('committed') for r in acked]}")
    n.start(other)
    c.wait_ready(90)
    ctx.steps(ctx.primary, 2)
    ctx.expect("damaged site runs again (itself or after the runbook)", ran and c.sites[victim].running(),
               c.log_tail(victim, 5))


def _prepare_raft_tmpfs(ctx) -> None:
    for site in ctx.cluster.sites:
        d = raft_dir(ctx, site)
        d.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", f"size={RAFT_TMPFS},mode=0750", f"rpl-chaos-raft-{site}", str(d))
        ctx.history.record("ok", "nemesis", f="small_disk", site=site, size=RAFT_TMPFS, path=str(d))
        ctx.nemesis.mounts[f"{site}-raft"] = d  # unmounted by unmount_all after teardown


def _leader(ctx) -> str | None:
    c = ctx.cluster
    for sid in c.sites:
        try:
            st = c.status(sid, timeout_s=3)
        except ReplicadError:
            continue
        lead = st["raft_sites"].get(st["raft"].get("leader"))
        if lead:
            return lead
    return None


def raft_leader_full(ctx) -> None:
    from .scenarios import _raft_poller, current_primary
    c, w, n = ctx.cluster, ctx.workload, ctx.nemesis
    stop = threading.Event()
    poller = _raft_poller(ctx, stop)
    try:
        ctx.steps(ctx.primary, 2)
        leader = _leader(ctx)
        if leader is None:
            ctx.expect("a Raft leader before the fault", False)
            return
        mode = ctx.rng.choice(["fill", "strace"])
        d = raft_dir(ctx, leader)
        filler = d / "chaos-filler.bin"
        tracer = None
        if mode == "fill":
            leave = ctx.rng.choice([300, 1200, 3000])
            st = os.statvfs(d)
            room = st.f_bavail * st.f_frsize - leave
            ctx.history.record("invoke", "nemesis", f="raft_fill", site=leader, leave_bytes=leave)
            with open(filler, "wb") as f:
                while room > 0:
                    k = min(room, 1 << 20)
                    try:
                        f.write(b"\xa5" * k)
                        f.flush()
                    except OSError:
                        break
                    room -= k
            ctx.history.record("ok", "nemesis", f="raft_fill", site=leader, leave_bytes=leave)
        else:
            tracer = raftdisk.WriteErrors(c.sites[leader].proc.pid)
            tracer.attach()
            ctx.history.record("ok", "nemesis", f="raft_enospc", site=leader, pid=c.sites[leader].proc.pid)
        t_fault = time.monotonic()
        during = []
        answers = []
        while time.monotonic() - t_fault < 20:
            w.write_random(ctx.primary, 2)
            during.append(w.snapshot(ctx.primary, timeout_s=30))
            if leader != ctx.primary:  # the full site asked directly: store_full, not a timeout
                ctx.history.record("invoke", "snapshot_at_full", site=leader)
                try:
                    c.api(leader, "POST", f"/v1/volumes/{VOLUME}/snapshot", {}, timeout_s=15)
                    answers.append("answered")
                except ReplicadError as err:
                    answers.append(err.code)
                ctx.history.record("ok", "snapshot_at_full", site=leader, answer=answers[-1])
            time.sleep(ctx.rng.uniform(0.2, 1.0))
        new_leader = _leader(ctx)
        if tracer is not None:
            tracer.detach()
            ctx.history.record("ok", "nemesis", f="raft_enospc_end", site=leader)
        else:
            filler.unlink(missing_ok=True)
            ctx.history.record("ok", "nemesis", f="raft_unfill", site=leader)
        ctx.expect("the full leader stepped down", new_leader is not None and new_leader != leader,
                   f"leader {leader} -> {new_leader} ({mode})")
        if leader != ctx.primary:  # a primary whose own Raft disk is full cannot commit (507) until space is back
            ctx.expect("commits continue while the leader's disk is full",
                       any(r and r.get("committed") for r in during),
                       str([(r or {}).get("committed") for r in during]))
        else:
            ctx.history.record("info", "note", text="the full leader is the primary: its snapshots during the fault "
                               f"{[(r or {}).get('committed') for r in during]}")
        ctx.history.record("info", "note", text=f"{mode}: snapshot requests at the full site answered {answers}")
        n.kill(leader)  # its journal must reopen whole: no torn record before valid ones
        ran = start_or_refusal(ctx, leader)
        ctx.expect("the full site reopens its journal after the fault", ran, c.log_tail(leader, 5))
        torn = sorted(p.name for p in d.glob("raft.journal.torn-*"))
        ctx.history.record("info", "note", text=f"torn tails kept aside at {leader}: {torn}")
        c.wait_ready(90)
        primary, _ = current_primary(c)
        ctx.primary = primary or ctx.primary
        after = ctx.steps(ctx.primary, 2)
        ctx.expect("commits after the fault", any(r and r.get("committed") for r in after))
    finally:
        stop.set()
        poller.join(timeout=10)
