"""Upgrade campaign (outside CI): release b976d0a -> this checkout, on real daemons.

One command, bounded (``--budget``, default 900 s), every daemon stopped by PID at the end::

    python3 -m chaos.upgrade [--root /tmp/upgrade/run] [--out tests/bench/results/upgrade.md]

Release b976d0a runs from a git worktree (``git worktree add /tmp/upgrade/old b976d0a``, made
when missing, kept for the next run). Each phase starts a three-site cluster (real image files,
real snapshots shipped and committed, checkpoints every 8 commands through
``REPLICAD_LAB_CHECKPOINT_EVERY`` on ``lab = true`` configs) on b976d0a, takes snapshots, then:

* **all-stopped**: every site stopped, then started on this checkout;
* **rolling**: one site at a time (site-c, site-b, then the primary site-a) stopped and started on
  this checkout, a snapshot committed after each step;
* **primary-first**: the primary site-a upgraded first beside a b976d0a leader, then site-b, each
  held up (SIGSTOP 1.0-1.6 s, five times) while it starts, every site then checked to follow one
  leader in one term (a site stranded above its leader's term never syncs: raft point 7); site-c last;
* **new-cluster**: a new cluster founded by site-a and site-b on this checkout (under its rules)
  with site-c on b976d0a, which must stay out (never joined); then site-c upgraded, states compared.

After each step: every running site's Raft view current, a snapshot committed, the rules version
(this checkout's status ``rules``; b976d0a has none), and the sites' states compared: every
checkpoint after the step vouched by all three sites with one digest (the vouches in the Raft
state, read from an upgraded site's ``rules.vouches``) and no site counting
``checkpoint_divergent``. After each phase: ``snapshots`` at every site, a forced promotion of
site-b with site-a killed (its restore verified), a snapshot committed by the new primary, site-a
back (fenced), states compared again. Results with timings and the load average go to ``--out``
(Markdown) and stdout; the exit code is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from replicad.core.state import RULES_MAX
from replicad.lab.localcluster import LocalCluster

OLD = "b976d0a"
NEW = Path(__file__).resolve().parents[1]
"""The code the sites are upgraded to: this checkout (``--new`` another, e.g. a release to compare)."""
VOL = "ehr"
SITES = ("site-a", "site-b", "site-c")
EVERY = 8
BLOCK = 64 * 1024
STALLS = 5
"""How often a site is held up while it starts in the primary-first phase (:meth:`Campaign.stalls`)."""


class Failed(Exception):
    """A campaign check failed."""


def ensure_worktree(path: Path) -> Path:
    """The worktree of release :data:`OLD` at ``path`` (``git worktree add``, made when missing)."""
    if not (path / "replicad" / "site" / "daemon.py").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(NEW), "worktree", "add", "--detach", str(path), OLD], check=True,
                       capture_output=True)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    if not OLD.startswith(head[:7]) and not head.startswith(OLD):
        raise Failed(f"{path} is at {head}, not {OLD}")
    return path


def write_image(path: Path, n_blocks: int, rng: random.Random) -> None:
    """A volume image: text-like blocks (compressible), fsynced."""
    with open(path, "wb") as f:
        for _ in range(n_blocks):
            f.write(bytes(rng.choice(b"abcdefgh \n") for _ in range(256)) * (BLOCK // 256))
        f.flush()
        os.fsync(f.fileno())


def touch_blocks(path: Path, rng: random.Random, n: int = 3) -> None:
    """Rewrite ``n`` random blocks in place (text-like), fsynced: something for the next snapshot."""
    size = path.stat().st_size // BLOCK
    with open(path, "r+b") as f:
        for b in rng.sample(range(size), n):
            f.seek(b * BLOCK)
            f.write(bytes(rng.choice(b"ijklmnop \n") for _ in range(256)) * (BLOCK // 256))
        f.flush()
        os.fsync(f.fileno())


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Campaign:
    """One phase's cluster and its checks; rows of results in :attr:`rows`."""

    def __init__(self, root: Path, old: Path, phase: str, rows: list[dict]) -> None:
        self.phase, self.rows, self.old = phase, rows, old
        self.c = LocalCluster(root, n_data=3, interval="1h", min_copies=2)
        for s in SITES:
            cfg = self.c.sites[s].config_path
            cfg.write_text(cfg.read_text().replace('log_level = "info"\n', 'log_level = "info"\nlab = true\n', 1))
        self.code = dict.fromkeys(SITES, old)
        self.rng = random.Random(sum(map(ord, phase)))
        write_image(self.c.sites["site-a"].volume_path(VOL), 128, self.rng)
        self.seen: dict[int, dict[str, str]] = {}
        self.cpu: dict[str, float] = dict.fromkeys(SITES, 0.0)
        self.primary = "site-a"
        self.started_at = 0.0  # time.time() of the last step's starts
        self.log_from: dict[str, int] = dict.fromkeys(SITES, 0)  # each site's log offset at its last start

    # ---------------------------------------------------------------- processes
    def start(self, site: str, code: Path) -> None:
        self.code[site] = code
        self.c.code_dir = code
        log_path = self.c.sites[site].log_path
        self.log_from[site] = log_path.stat().st_size if log_path.exists() else 0  # this run's lines only
        self.c.start(site)

    def stop(self, site: str, sig: int = signal.SIGTERM) -> None:
        proc = self.c.sites[site].proc
        if proc is not None and proc.poll() is None:
            self.cpu[site] += cpu_s(proc.pid)
        self.c.kill(site, sig)

    def release(self, site: str) -> str:
        return "new" if self.code[site] == NEW else OLD

    # ---------------------------------------------------------------- checks
    def ready(self, timeout_s: float = 120) -> None:
        self.c.wait_ready(timeout_s)

    def snapshot(self, site: str | None = None) -> dict:
        site = site or self.primary
        touch_blocks(self.c.sites[site].volume_path(VOL), self.rng)
        t0 = time.monotonic()
        res = self.c.wait_for(f"a snapshot committed at {site}", lambda: self._snap(site), 120, interval_s=1.0)
        res["_s"] = time.monotonic() - t0
        return res

    def _snap(self, site: str) -> dict | None:
        res = self.c.api(site, "POST", f"/v1/volumes/{VOL}/snapshot", {})
        return res if res.get("committed") else None

    def rules(self) -> dict[str, Any]:
        """``{site: rules version}`` (None: a site on b976d0a, whose status has none)."""
        return {s: (self.c.status(s).get("rules") or {}).get("version") for s in SITES
                if self.c.sites[s].proc is not None and self.c.sites[s].proc.poll() is None}

    def _vouches(self) -> None:
        upgraded = [s for s in self.running() if self.code[s] == NEW]
        for reader in upgraded[:1]:
            for site, kept in ((self.c.status(reader).get("rules") or {}).get("vouches") or {}).items():
                for n, digest in kept.items():
                    self.seen.setdefault(int(n), {})[site] = digest

    def agreed(self, after: int, timeout_s: float = 150) -> tuple[int | None, float]:
        """Wait until a checkpoint after ``after`` (commands applied) was vouched by all three sites
        (read from an upgraded site's ``rules.vouches``); ``(n, seconds)``. Without such a site (all
        on b976d0a, or ``--new`` a release without them): until every site made two checkpoints
        more, ``n`` None. Failed at once when two sites vouched different digests for one ``n``,
        or a site counts or logs ``checkpoint_divergent``."""
        t0 = time.monotonic()
        ticks = iter(range(10**6))
        base: dict[str, int] = {}

        def done() -> int | bool | None:
            self._divergence()
            self._vouches()
            for n, by_site in self.seen.items():
                if len(set(by_site.values())) > 1:
                    raise Failed(f"{self.phase}: checkpoint {n} vouched with different digests: {by_site}")
            if self.seen:
                common = sorted(n for n, d in self.seen.items() if n > after and set(d) == set(SITES))
                found = common[0] if common else None
            else:  # nobody shows the vouches: each site's own checkpoints must move on, undivergent
                now = {s: int(((self.c.status(s).get("raft") or {}).get("checkpoint") or {}).get("n") or 0)
                       for s in self.running()}
                for s, n in now.items():
                    base.setdefault(s, n)
                found = True if all(n >= base[s] + 2 * EVERY for s, n in now.items()) else None
            if not found and next(ticks) % 15 == 14:
                self.snapshot()  # commands for the checkpoints to cover, beside the clock reports
            return found
        found = self.c.wait_for("a checkpoint vouched alike by every site", done, timeout_s, interval_s=1.0)
        self._divergence()
        return (None if found is True else found), time.monotonic() - t0

    def running(self) -> list[str]:
        return [s for s in SITES if self.c.sites[s].proc is not None and self.c.sites[s].proc.poll() is None]

    def _divergence(self) -> None:
        for s in self.running():
            refused = (self.c.status(s).get("raft") or {}).get("refused") or {}
            if refused.get("checkpoint_divergent"):
                raise Failed(f"{self.phase}: {s} counts checkpoint_divergent {refused['checkpoint_divergent']}")
            with open(self.c.sites[s].log_path, "rb") as f:  # since its last start (new-cluster: site-c
                f.seek(self.log_from[s])                     # on b976d0a diverged, as it must)
                if b"its state differs from the majority" in f.read():
                    raise Failed(f"{self.phase}: {s} logged a divergent checkpoint")

    def applied(self) -> int:
        for s in self.running():
            if self.code[s] == NEW and "rules" in self.c.status(s):
                return int(self.c.status(s)["rules"]["applied"])
        return 0

    def row(self, step: str, wall_s: float, **fields: Any) -> None:
        row = {"phase": self.phase, "step": step, "wall_s": round(wall_s, 1),
               "load1": round(os.getloadavg()[0], 1),
               "releases": " ".join(f"{s[-1]}={self.release(s)}" for s in SITES), **fields}
        self.rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    # ---------------------------------------------------------------- phases
    def on_old(self) -> None:
        t0 = time.monotonic()
        for s in SITES:
            self.start(s, self.old)
        self.ready()
        self.row("start 3 sites on b976d0a", time.monotonic() - t0)
        t0 = time.monotonic()
        for _ in range(3):
            snap = self.snapshot()
        self.agreed(0)
        self.row("3 snapshots on b976d0a", time.monotonic() - t0, seq=snap["seq"], commit_s=round(snap["_s"], 1),
                 divergent=0)

    def stalls(self, site: str, n: int = STALLS) -> None:
        """Hold ``site``'s process up ``n`` times (SIGSTOP 1.0-1.6 s, SIGCONT, 0.3-0.8 s running), by
        PID: a starved tick thread on a busy machine, where a site upgraded beside a b976d0a leader was
        seen one term above the leader's, never in sync again (raft point 7)."""
        proc = self.c.sites[site].proc
        for _ in range(n):
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(self.rng.uniform(1.0, 1.6))
            finally:
                proc.send_signal(signal.SIGCONT)
            time.sleep(self.rng.uniform(0.3, 0.8))

    def one_term(self, timeout_s: float = 60) -> dict[str, int]:
        """Wait until every running site follows one leader in one term, synced; ``{site: term}``.
        Failed when it does not come (a site stranded above its leader's term)."""
        def same() -> dict[str, int] | None:
            views = {s: (self.c.status(s).get("raft") or {}) for s in self.running()}
            ok = (len({v.get("term") for v in views.values()}) == 1
                  and len({v.get("leader") for v in views.values()}) == 1
                  and all(v.get("leader") and v.get("synced") is not False for v in views.values()))
            return {s: v.get("term") for s, v in views.items()} if ok else None
        try:
            return self.c.wait_for("one leader and one term at every site", same, timeout_s, interval_s=0.5)
        except Exception as exc:
            views = {s: {k: (self.c.status(s).get("raft") or {}).get(k) for k in ("leader", "term", "commit_index")}
                     for s in self.running()}
            raise Failed(f"{self.phase}: the sites do not follow one leader in one term: {views}") from exc

    def step(self, label: str, sites: tuple[str, ...], stalled: bool = False) -> None:
        """Stop ``sites`` (all, then start all: an all-stopped upgrade) and start them on this checkout
        (``stalled``: each held up :data:`STALLS` times while it starts, :meth:`stalls`)."""
        t0 = time.monotonic()
        for s in sites:
            self.stop(s)
        for s in sites:
            self.start(s, NEW)
        self.started_at = time.time()
        if stalled:
            for s in sites:
                self.c.wait_for(f"{s} serving its status", lambda: self.c.status(s), 60, interval_s=0.2)
                self.stalls(s)
        self.ready()
        terms = self.one_term() if stalled else None
        ready_s = time.monotonic() - t0
        before = self.applied()
        snap = self.snapshot()
        rules = self.rules()
        n, agree_s = self.agreed(before)
        self.row(label, ready_s, seq=snap["seq"], commit_s=round(snap["_s"], 1), rules=rules, agreed_n=n,
                 agree_s=round(agree_s, 1), divergent=0, **({"terms": terms} if stalled else {}))

    def raised(self, since: float) -> tuple[float, str]:
        """Wait until every site's rules are this checkout's (``RULES_MAX``); ``(seconds from the
        wall-clock time ``since`` to the raising site's AUDIT line, that site)``. Failed unless exactly one site
        proposed the raise (``AUDIT site ...: the cluster's rules raised``) and every site logged it
        once (``AUDIT [(replayed ...)] the cluster's rules raised 1 -> RULES_MAX by ...``)."""
        self.c.wait_for("rules raised at every site", lambda: set(self.rules().values()) == {RULES_MAX}, 120,
                        interval_s=0.5)
        logs = {s: self.c.sites[s].log_path.read_text(errors="replace").splitlines() for s in SITES}
        lines = [(s, line) for s in SITES for line in logs[s]
                 if "AUDIT site " in line and f"the cluster's rules raised 1 -> {RULES_MAX}" in line]
        if len(lines) != 1:
            raise Failed(f"{self.phase}: {len(lines)} sites proposed the raise: {lines}")
        seen = {s: sum(1 for line in logs[s] if "AUDIT" in line and f"the cluster's rules raised 1 -> {RULES_MAX} by "
                       in line)
                for s in SITES}  # live, replayed at start or committed while away: once
        if set(seen.values()) != {1}:
            raise Failed(f"{self.phase}: the raise is not logged once at every site: {seen}")
        site, line = lines[0]
        # the log's time is local time, to the millisecond
        stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1e3
        return stamp - since, site

    def after(self) -> None:
        """snapshots at every site; a forced promotion of site-b with site-a killed; a commit by
        site-b; site-a back, fenced; states compared."""
        counts = {s: len(self.c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]) for s in SITES}
        if len(set(counts.values())) != 1 or not counts["site-a"]:
            raise Failed(f"{self.phase}: the sites list different committed snapshots: {counts}")
        t0 = time.monotonic()
        self.stop("site-a", signal.SIGKILL)
        promo = self.c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
        promote_s = time.monotonic() - t0
        if promo.get("epoch") is None or promo.get("restored_seq") is None:
            raise Failed(f"{self.phase}: promote answered {promo}")
        self.primary = "site-b"
        snap = self.snapshot("site-b")
        if set(snap.get("holders") or ()) != {"site-b", "site-c"}:
            raise Failed(f"{self.phase}: the new primary's commit has holders {snap.get('holders')}")
        self.start("site-a", NEW)
        self.ready()
        def fenced() -> dict | None:
            st = self.c.status("site-a")["volumes"][VOL]
            return st if st["primary"] == "site-b" and st["role"] not in ("primary", "restoring") else None
        try:
            self.c.wait_for("site-a back as a replica of site-b", fenced, 90, interval_s=0.5)
        except Exception as exc:
            raise Failed(f"{self.phase}: site-a back is not a replica of site-b: "
                         f"{self.c.status('site-a')['volumes'][VOL]}") from exc
        before = self.applied()
        snap2 = self.snapshot("site-b")
        n, agree_s = self.agreed(before)
        self.row("snapshots, promote site-b (site-a killed), site-a back", promote_s, snapshots=counts,
                 restored_seq=promo["restored_seq"], epoch=promo["epoch"], seq=snap2["seq"], rules=self.rules(),
                 agreed_n=n, agree_s=round(agree_s, 1), divergent=0)

    def close(self) -> None:
        for s in SITES:
            proc = self.c.sites[s].proc
            if proc is not None and proc.poll() is None:
                self.cpu[s] += cpu_s(proc.pid)
        self.c.stop_all()


def all_stopped(root: Path, old: Path, rows: list[dict]) -> dict[str, float]:
    camp = Campaign(root / "all-stopped", old, "all-stopped", rows)
    try:
        camp.on_old()
        camp.step("all stopped, all started on this checkout", SITES)
        delay, by = camp.raised(camp.started_at)
        camp.row(f"rules raised 1 -> {RULES_MAX}: from the starts to the raise's AUDIT line", delay, by=by,
                 rules=camp.rules())
        camp.after()
        return camp.cpu
    finally:
        camp.close()


def rolling(root: Path, old: Path, rows: list[dict]) -> dict[str, float]:
    camp = Campaign(root / "rolling", old, "rolling", rows)
    try:
        camp.on_old()
        for s in ("site-c", "site-b"):
            camp.step(f"{s} upgraded (others running)", (s,))
            if set(v for v in camp.rules().values() if v is not None) != {1}:
                raise Failed(f"rolling: rules raised while a site still runs {OLD}: {camp.rules()}")
        camp.step("site-a (primary) upgraded: last", ("site-a",))
        delay, by = camp.raised(camp.started_at)
        camp.row(f"rules raised 1 -> {RULES_MAX}: from the last start to the raise's AUDIT line", delay, by=by,
                 rules=camp.rules())
        before = camp.applied()
        snap = camp.snapshot()
        n, agree_s = camp.agreed(before)
        camp.row("after the raise", agree_s, seq=snap["seq"], agreed_n=n, divergent=0)
        camp.after()
        return camp.cpu
    finally:
        camp.close()


def primary_first(root: Path, old: Path, rows: list[dict]) -> dict[str, float]:
    """The order of the observation (raft point 7): the primary site-a upgraded first, beside a
    b976d0a leader, its process held up while it starts; then site-b and site-c."""
    camp = Campaign(root / "primary-first", old, "primary-first", rows)
    try:
        camp.on_old()
        camp.step("site-a (primary) upgraded first, held up 5 x 1.0-1.6 s while it starts", ("site-a",),
                  stalled=True)
        camp.step("site-b upgraded, held up likewise", ("site-b",), stalled=True)
        if set(v for v in camp.rules().values() if v is not None) != {1}:
            raise Failed(f"primary-first: rules raised while a site still runs {OLD}: {camp.rules()}")
        camp.step("site-c upgraded: last", ("site-c",))
        delay, by = camp.raised(camp.started_at)
        camp.row(f"rules raised 1 -> {RULES_MAX}: from the last start to the raise's AUDIT line", delay, by=by,
                 rules=camp.rules())
        return camp.cpu
    finally:
        camp.close()


def new_cluster(root: Path, old: Path, rows: list[dict]) -> dict[str, float]:
    """A new cluster founded by this checkout (site-a, site-b) with site-c still on b976d0a: a, b
    found it under this checkout's rules (their found proposals carry them); b976d0a refuses those
    proposals (a key it does not know) and never sees the cluster founded: site-c must stay out
    (never joined, never acting), not act on a state decided under other rules, and site-a and
    site-b must name it (ERROR: no release report, upgrade it). Then site-c is upgraded: it
    replays its log under this checkout and agrees with the others."""
    camp = Campaign(root / "new-cluster", old, "new-cluster", rows)
    try:
        t0 = time.monotonic()
        camp.start("site-a", NEW)
        camp.start("site-b", NEW)
        camp.start("site-c", old)

        def founded() -> bool:
            return all(camp.c.status(s).get("joined")
                       and (camp.c.status(s).get("rules") or {}).get("version") == RULES_MAX
                       and (camp.c.status(s)["volumes"].get(VOL) or {}).get("epoch") is not None
                       for s in ("site-a", "site-b"))
        camp.c.wait_for(f"site-a and site-b founded under rules {RULES_MAX}", founded, 120, interval_s=0.5)
        ready_s = time.monotonic() - t0
        snap = camp.snapshot()
        time.sleep(10)  # site-c's chances to join, were it to
        c_status = camp.c.status("site-c")
        c_log = camp.c.sites["site-c"].log_path.read_text(errors="replace")
        divergent = {s: ((camp.c.status(s).get("raft") or {}).get("refused") or {}).get("checkpoint_divergent")
                     for s in ("site-a", "site-b")}
        if c_status.get("joined") is not False or "registered in the cluster" in c_log:
            raise Failed(f"new-cluster: site-c (b976d0a) joined a cluster founded under rules {RULES_MAX}: "
                         f"{c_status.get('joined')}")
        if any(divergent.values()):
            raise Failed(f"new-cluster: the sites of this checkout count checkpoint_divergent: {divergent}")
        logs = {s: camp.c.sites[s].log_path.read_text(errors="replace").splitlines() for s in ("site-a", "site-b")}
        founded_lines = {s: sum(1 for line in lines if f"the cluster is founded under rules {RULES_MAX}" in line)
                         for s, lines in logs.items()}
        named = {s: sum(1 for line in lines if "site-c: no release report" in line and "upgrade it" in line)
                 for s, lines in logs.items()}
        if not all(named.values()):
            raise Failed(f"new-cluster: the sites of this checkout do not name site-c as an older release: {named}")
        camp.row("site-a, site-b on this checkout and site-c on b976d0a found a new cluster", ready_s,
                 seq=snap["seq"], commit_s=round(snap["_s"], 1), rules=camp.rules(), founded_lines=founded_lines,
                 c_named_at=named,
                 c_joined=c_status.get("joined"), c_waiting_lines=c_log.count("propose this config's membership"),
                 c_divergent=((c_status.get("raft") or {}).get("refused") or {}).get("checkpoint_divergent"),
                 divergent=divergent)
        camp.step("site-c upgraded: its log replayed under this checkout", ("site-c",))
        if "registered in the cluster" not in camp.c.sites["site-c"].log_path.read_text(errors="replace"):
            raise Failed("new-cluster: site-c upgraded did not join")
        return camp.cpu
    finally:
        camp.close()


def write_results(out: Path, rows: list[dict], cpu: dict[str, dict[str, float]], total_s: float, ok: bool,
                  failure: str | None) -> None:
    head = subprocess.run(["git", "-C", str(NEW), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(NEW), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    lines = [f"# Upgrade campaign: {OLD} -> {head}{' + working-tree changes' if dirty else ''} "
             f"(`python3 -m chaos.upgrade`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores shared with other "
             f"work; total {total_s:.0f} s; result: **{'passed' if ok else 'FAILED: ' + str(failure)}**.",
             "Each phase: a fresh three-site cluster (real image files, snapshots shipped and committed, checkpoints "
             f"every {EVERY} commands) on {OLD}, then upgraded (new-cluster: two sites on this checkout and one on "
             f"{OLD} found it). `wall_s`: the step's stop-to-ready time (rows of "
             "checks: their own time); `load1`: the 1-minute load average then; `agreed_n`: the first checkpoint "
             "after the step that all three sites vouched with one digest (None: no site on this checkout yet, "
             "divergence counts checked only); `rules`: each site's rules version (None: b976d0a).", "",
             "| phase | step | releases | wall_s | load1 | details |", "|---|---|---|---|---|---|"]
    for r in rows:
        details = ", ".join(f"{k}={v}" for k, v in r.items()
                            if k not in ("phase", "step", "releases", "wall_s", "load1"))
        lines.append(f"| {r['phase']} | {r['step']} | {r['releases']} | {r['wall_s']} | {r['load1']} | {details} |")
    lines += ["", "Daemon CPU seconds over each phase (all three sites' processes, summed at each stop):", ""]
    for phase, per_site in cpu.items():
        lines.append(f"* {phase}: " + ", ".join(f"{s} {v:.1f} s" for s, v in per_site.items())
                     + f"; total {sum(per_site.values()):.1f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    global NEW
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/upgrade/run"))
    p.add_argument("--old", type=Path, default=Path("/tmp/upgrade/old"), help=f"worktree of {OLD}")
    p.add_argument("--out", type=Path, default=NEW / "tests" / "bench" / "results" / "upgrade.md")
    p.add_argument("--budget", type=float, default=900.0, help="seconds before the campaign gives up")
    p.add_argument("--phase", choices=("all-stopped", "rolling", "primary-first", "new-cluster", "both", "all"),
                   default="all", help="both: all-stopped and rolling; all: and primary-first, new-cluster")
    p.add_argument("--new", type=Path, default=None,
                   help="the code to upgrade to (a checkout; default this one): to check that the campaign "
                        "sees a release that raises the rules while a site still runs b976d0a")
    args = p.parse_args(argv)
    if args.new is not None:
        NEW = args.new.resolve()
    old = ensure_worktree(args.old)
    if args.root.exists():
        shutil.rmtree(args.root)  # our own directory only (default /tmp/upgrade/run)
    os.environ["REPLICAD_LAB_CHECKPOINT_EVERY"] = str(EVERY)

    def out_of_time(signum: int, frame: Any) -> None:
        raise Failed(f"out of the {args.budget:.0f} s budget")
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.budget))
    rows: list[dict] = []
    cpu: dict[str, dict[str, float]] = {}
    t0 = time.monotonic()
    ok, failure = True, None
    try:
        if args.phase in ("all-stopped", "both", "all"):
            cpu["all-stopped"] = all_stopped(args.root, old, rows)
        if args.phase in ("rolling", "both", "all"):
            cpu["rolling"] = rolling(args.root, old, rows)
        if args.phase in ("primary-first", "all"):
            cpu["primary-first"] = primary_first(args.root, old, rows)
        if args.phase in ("new-cluster", "all"):
            cpu["new-cluster"] = new_cluster(args.root, old, rows)
    except Exception as exc:  # noqa: BLE001 — the campaign reports any failure in its results
        ok, failure = False, f"{type(exc).__name__}: {exc}"
        print(f"FAILED: {failure}", file=sys.stderr)
    finally:
        signal.alarm(0)
    write_results(args.out, rows, cpu, time.monotonic() - t0, ok, failure)
    print(f"results: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
