"""Deterministic, seeded simulation of the replicad cluster logic.

The simulation drives the REAL pure modules — :func:`replicad.core.state.apply` (the Raft state
machine), :func:`replicad.core.roles.next_role` (the role table), :func:`replicad.core.retention.plan_prune`
and :func:`replicad.core.anomaly.judge` — from site processes modelled as step functions that
mirror the site's rooms in ``replicad/site/`` (``VolumeLoop._step``, ``Replication.cycle``,
``Promotion.fence``, ``Promotion.become_primary``, ``VolumeLoop._replica_step``,
``Housekeeping.retention_step``, ``Promotion.promote``). Everything else is simulated:

* **Raft**: one totally ordered log. A proposal commits only if the proposer runs in a
  network component that holds a majority of the running sites (what pysyncobj gives us);
  otherwise :class:`~replicad.core.errors.NoQuorumError`. A committed reply may be lost
  (``ambiguous``): the command applied, the proposer is told "no quorum". Each site keeps
  the index of the log it has applied (durable, O6); it advances only while it is
  connected to the majority.
* **Network**: partitions (components), message loss and delay for the chunk ship / ack
  step and for pulls; messages to a SIGSTOPped site wait; a crashed site loses its queue.
* **Disks**: per-site chunk maps ``digest -> intact?``; a crash loses nothing that was
  acknowledged (O1); bit rot corrupts one chunk at one site (never a chunk already corrupt
  at another site: DESIGN §9 "one corrupted chunk at one site").
* **Clock**: true time advances by ``step_s`` per step; each site reads it with its own
  offset, which clock-step faults move by up to two hours. Order never depends on it.
* **Sites**: crash/restart (SIGKILL: volatile state lost, the persisted acting epoch and
  catalog kept), SIGSTOP/SIGCONT (a resumed site may act once on its stale view before
  applying the log, as the daemon's event loop can run before its Raft thread).

Each seed draws a cluster shape (3 data sites; 2 data + 1 witness; 5 data sites), a
retention policy, a cycle interval and a fault mix, runs ``steps`` steps, then heals every
fault and runs quiescent steps. After every step :meth:`Simulation.check_invariants` runs;
some invariants are checked where the event happens (commit, prune, GC, standby apply).
A violation raises :class:`InvariantViolation` whose message starts with
``REPLICAD_SIM_SEED=<seed>``: ``REPLICAD_SIM_SEED=<seed> pytest tests/sim`` replays it exactly.

Deliberate bugs (``bug=``), to prove the checker can fail:

* ``commit_without_min_copies`` — the primary proposes the commit right after sending the
  ships, naming every data site as a holder without waiting for the acks (breaks O2).
* ``produce_after_fence`` — the primary ignores a newer epoch and keeps producing (O3).
* ``prune_in_lock`` — the primary plans with a zero lock window and deletes locally without
  the state machine's check (O4).

Gaps this simulation found in the site daemon (``replicad/site/``), since fixed there as modelled by the
default; ``daemon_gaps=True`` keeps the old behaviour so that tests prove the checker still
catches it:

* ``GAP_STALE_PARENT`` — ``cycle`` updates ``runner.parent`` only when ``commit_snapshot``
  returns. When the commit applied but its reply was lost (NoQuorumError after a leader
  change), the parent stays one snapshot behind; retention prunes it (it is no longer the
  newest), and from then on every ``commit_snapshot`` names a ``parent_seq`` absent from the
  catalog and is refused ``not_found``: the primary never commits again (RPO grows forever).
  Fix modelled: forget the parent after any failed commit (reloaded from the catalog).
* ``GAP_RESTORE_RETRY`` — ``become_primary`` moves ``replica -> primary -> restoring``, then
  ``ensure_snapshot`` may fail (no holder reachable). The runner stays ``restoring``; the
  next step calls ``become_primary`` again, whose ``granted_primary`` from ``restoring`` is
  not in ``roles.TRANSITIONS``: ConflictError at every step, the volume has no acting
  primary until the process restarts. Fix modelled: a retry from ``restoring`` skips the
  two transitions already made.

Model in the style of FoundationDB's and TigerBeetle's deterministic simulators.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from replicad.core import anomaly
from replicad.core import retention
from replicad.core import roles
from replicad.core.errors import ConflictError, NoQuorumError, ReplicadError
from replicad.core.state import apply, initial_state, newest_clean, newest_committed

VOLUME = "vol"
SECOND_NS = 1_000_000_000
START_NS = 1_750_000_000 * SECOND_NS
BLOCKS_PER_VOLUME = 16
BLOCK_SIZE_BYTES = 65536
ACK_TIMEOUT_STEPS = 4
BUGS = ("commit_without_min_copies", "produce_after_fence", "prune_in_lock")
SHAPES = {
    "3-data": (("a", "data"), ("b", "data"), ("c", "data")),
    "2-data+witness": (("a", "data"), ("b", "data"), ("w", "witness")),
    "5-data": (("a", "data"), ("b", "data"), ("c", "data"), ("d", "data"), ("e", "data")),
}


class InvariantViolation(AssertionError):
    """A safety or convergence invariant failed; the message starts with ``REPLICAD_SIM_SEED=``."""


# --------------------------------------------------------------------------- content model


@dataclass(frozen=True)
class SimManifest:
    """A snapshot's content: ``blocks[i] = (version, looks_random)``; ``chunks`` = its block
    digests plus its root (the manifest chunk)."""

    root: bytes
    seq: int
    epoch: int
    blocks: tuple[tuple[int, bool], ...]
    chunks: frozenset
    true_created_ns: int


def block_digest(index: int, block: tuple[int, bool]) -> str:
    """Digest of block ``index`` holding ``block`` (content is unique per write)."""
    return f"b{index}.{block[0]}.{int(block[1])}"


def make_root(volume: str, seq: int, epoch: int, site: str, blocks: tuple) -> bytes:
    """A 32-byte root, a deterministic function of the snapshot's identity and content."""
    return hashlib.blake2b(repr((volume, seq, epoch, site, blocks)).encode(), digest_size=32).digest()


# --------------------------------------------------------------------------- configuration


@dataclass
class FaultMix:
    """Per-step probabilities of each fault / operator action, and network quality."""

    partition: float
    heal: float
    crash: float
    restart: float
    stop: float
    cont: float
    loss: float
    delay_max_steps: int
    bitrot: float
    clock_step: float
    force_promote: float
    switchover: float
    attack: float
    ambiguous: float
    scrub: float

    @classmethod
    def draw(cls, rng: random.Random) -> "FaultMix":
        """A random mix; each fault is absent from some seeds (probability 0)."""
        def p(hi: float) -> float:
            return 0.0 if rng.random() < 0.2 else rng.uniform(0.0, hi)
        return cls(partition=p(0.06), heal=rng.uniform(0.1, 0.4), crash=p(0.03), restart=rng.uniform(0.1, 0.4),
                   stop=p(0.03), cont=rng.uniform(0.05, 0.3), loss=p(0.2), delay_max_steps=rng.randint(0, 3),
                   bitrot=p(0.05), clock_step=p(0.02), force_promote=p(0.03), switchover=p(0.02),
                   attack=p(0.01), ambiguous=p(0.05), scrub=rng.uniform(0.0, 0.1))

    @classmethod
    def quiet(cls) -> "FaultMix":
        """No fault at all (the quiescent phase)."""
        return cls(0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1.0)


@dataclass
class SimConfig:
    """Everything a seed decides before step 0."""

    seed: int
    steps: int
    shape: str
    min_copies: int
    retention: dict
    step_s: int
    interval_steps: int
    retention_every_steps: int
    faults: FaultMix
    bug: str | None = None
    quiescent_steps: int = 40
    daemon_gaps: bool = False

    @classmethod
    def draw(cls, seed: int, steps: int, bug: str | None = None, daemon_gaps: bool = False) -> "SimConfig":
        """The seed's shape, policy and fault mix, drawn from ``random.Random(seed)``."""
        rng = random.Random(seed)
        shape = rng.choice(sorted(SHAPES))
        n_data = sum(1 for _, kind in SHAPES[shape] if kind == "data")
        min_copies = rng.randint(2, min(3, n_data))
        policy = {"keep_all_s": rng.choice([300, 600, 1800]), "hourly_s": rng.choice([3600, 3 * 3600]),
                  "daily_s": rng.choice([0, 86400]), "lock_s": rng.choice([0, 600, 1800, 3600])}
        return cls(seed=seed, steps=steps, shape=shape, min_copies=min_copies, retention=policy,
                   step_s=rng.choice([60, 120, 300]), interval_steps=rng.randint(1, 3),
                   retention_every_steps=rng.randint(2, 6), faults=FaultMix.draw(rng), bug=bug,
                   daemon_gaps=daemon_gaps)


# --------------------------------------------------------------------------- sites


@dataclass
class Record:
    """A local catalog row (``catalog.py``): ``state`` in local|received|committed|divergent."""

    root: bytes
    state: str
    created_at_ns: int


@dataclass
class InFlight:
    """A primary's cycle between ship and commit (volatile: lost on crash)."""

    seq: int
    epoch: int
    root: bytes
    created_at_ns: int
    verdict: str
    stats: dict
    parent_seq: int | None
    started_step: int
    acks: dict = field(default_factory=dict)   # peer -> ok
    enough_at_step: int | None = None
    switchover_to: str | None = None


@dataclass
class Site:
    """One site: persisted parts survive a crash, volatile parts do not."""

    site_id: str
    kind: str
    # persisted (O1, O6, catalog.set_acting_epoch)
    chunks: dict = field(default_factory=dict)          # digest -> intact
    records: dict = field(default_factory=dict)         # (epoch, seq) -> Record
    standby: tuple | None = None                        # (seq, root, "applied" | "captured")
    acting_epoch: int | None = None
    view_index: int = 0
    image: tuple = ()                                   # the volume at its path
    clock_offset_ns: int = 0
    # volatile
    alive: bool = True
    stopped: bool = False
    stale_first: bool = False
    role: str = "replica"
    fence_flag: bool = False
    parent: SimManifest | None = None
    cycle: InFlight | None = None
    last_cycle_step: int = -10**9
    max_view_epoch: int = 0
    max_acting_epoch: int = 0

    @property
    def running(self) -> bool:
        return self.alive and not self.stopped

    def crash(self) -> None:
        """SIGKILL: volatile state lost; disk, catalog, acting epoch and Raft journal kept."""
        self.alive = False
        self.stopped = False
        self.cycle = None
        self.parent = None
        self.fence_flag = False

    def restart(self) -> None:
        """Process start: role from the persisted acting epoch (``SiteDaemon.start``)."""
        self.alive = True
        self.stale_first = False
        self.role = "primary" if self.acting_epoch is not None else "replica"
        self.last_cycle_step = -10**9

    def find_root(self, root: bytes) -> tuple | None:
        for key, rec in self.records.items():
            if rec.root == root:
                return key
        return None

    def holds(self, m: SimManifest) -> bool:
        """Every chunk of ``m`` present (intact or not): what the O2 acknowledgement counts."""
        return all(map(self.chunks.__contains__, m.chunks))

    def holds_intact(self, m: SimManifest) -> bool:
        get = self.chunks.get
        return all(get(c) is True for c in m.chunks)


@dataclass
class Message:
    src: str
    dst: str
    kind: str            # "ship" | "ack"
    deliver_step: int
    body: dict


# --------------------------------------------------------------------------- the simulation


class Simulation:
    """One seeded run. ``Simulation(SimConfig.draw(seed, steps)).run()``; raises InvariantViolation."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed * 7919 + 1)
        self.faults = cfg.faults
        self.sites: dict[str, Site] = {sid: Site(sid, kind) for sid, kind in SHAPES[cfg.shape]}
        self.data_ids = [sid for sid, s in self.sites.items() if s.kind == "data"]
        self.group: dict[str, int] = {sid: 0 for sid in self.sites}
        self.messages: list[Message] = []
        self.step_no = 0
        self.true_ns = START_NS
        self.op_counter = 0
        self.manifests: dict[bytes, SimManifest] = {}
        self.states: list[dict] = []
        self.entries: list[tuple[dict, dict]] = []
        self.acted_by: dict[int, str] = {}                 # epoch -> site that acted as primary
        self.ever_clean_roots: set[bytes] = set()
        self.clock_stepped = False
        self.rotted: dict = {}                              # digest -> the one site whose copy went bad
        self.block_version = 0
        self.trace: list[str] = []
        self.stats = {"commits": 0, "refused_commits": 0, "promotions": 0, "refused_promotions": 0,
                      "no_quorum": 0, "prunes": 0, "pruned_snapshots": 0, "lock_violations_true_time": 0,
                      "fences": 0, "standby_applies": 0, "bitrot": 0, "crashes": 0, "stops": 0,
                      "partitions": 0, "ambiguous": 0, "illegal_role_transitions": 0}
        self._bootstrap()

    # ------------------------------------------------------------------ helpers
    def fail(self, invariant: str, detail: str) -> None:
        """Raise InvariantViolation with the reproduction line first."""
        raise InvariantViolation(
            f"REPLICAD_SIM_SEED={self.cfg.seed} (steps={self.cfg.steps}, bug={self.cfg.bug}) "
            f"invariant {invariant!r} violated at step {self.step_no}: {detail}\n"
            f"shape={self.cfg.shape} min_copies={self.cfg.min_copies} retention={self.cfg.retention}\n"
            f"last events:\n  " + "\n  ".join(self.trace[-25:]))

    def log(self, text: str) -> None:
        self.trace.append(f"[{self.step_no}] {text}")

    def now_ns(self, site: Site) -> int:
        return self.true_ns + site.clock_offset_ns

    @property
    def state(self) -> dict:
        return self.states[-1]

    def view(self, site: Site) -> dict:
        return self.states[site.view_index]

    def vol(self, state: dict) -> dict:
        return state["volumes"][VOLUME]

    def connected(self, a: str, b: str) -> bool:
        return self.group[a] == self.group[b]

    def reachable(self, a: str, b: str) -> bool:
        return self.connected(a, b) and self.sites[b].running

    def has_majority(self, site: Site) -> bool:
        """The site runs in a component holding a majority of ALL sites, each of them running."""
        if not site.running:
            return False
        voters = sum(1 for s in self.sites.values() if s.running and self.connected(site.site_id, s.site_id))
        return voters * 2 > len(self.sites)

    # ------------------------------------------------------------------ raft
    def _bootstrap(self) -> None:
        state = initial_state()
        boot = [{"op": "register_site", "site_id": sid, "peer_url": f"http://{sid}:7000", "kind": s.kind}
                for sid, s in self.sites.items()]
        boot.append({"op": "add_volume", "volume": VOLUME, "primary": self.data_ids[0],
                     "block_size": BLOCK_SIZE_BYTES, "size_bytes": BLOCKS_PER_VOLUME * BLOCK_SIZE_BYTES,
                     "min_copies": self.cfg.min_copies, "retention": dict(self.cfg.retention)})
        for args in boot:
            self.op_counter += 1
            by = args["site_id"] if args["op"] == "register_site" else self.data_ids[0]  # a site registers itself
            state, result = apply(state, {"v": 1, "op_id": f"boot-{self.op_counter}", "by": by,
                                          "now_ns": START_NS, **args})
            if not result["ok"]:
                raise RuntimeError(f"bootstrap refused: {result}")
        self.states.append(state)
        for s in self.sites.values():
            s.image = tuple((0, False) for _ in range(BLOCKS_PER_VOLUME)) if s.kind == "data" else ()

    def propose(self, site: Site, op: str, **args) -> dict:
        """Commit ``op`` through the simulated Raft as ``site``; the state machine result.

        Raises NoQuorumError if the site's component has no majority, or (ambiguous) if the
        reply was lost after the command committed.
        """
        if not self.has_majority(site):
            self.stats["no_quorum"] += 1
            raise NoQuorumError("no quorum", site=site.site_id, op=op)
        self.op_counter += 1
        cmd = {"v": 1, "op": op, "op_id": f"{site.site_id}-{self.op_counter}", "by": site.site_id,
               "now_ns": self.now_ns(site), **args}
        before = self.state
        after, result = apply(before, cmd)
        self.on_committed(site, cmd, result, before, after)
        self.states.append(after)
        self.entries.append((cmd, result))
        self.log(f"{site.site_id} {op} {self._brief(args)} -> "
                 f"{'ok' if result['ok'] else result['error']}")
        if self.rng.random() < self.faults.ambiguous:
            self.stats["ambiguous"] += 1
            self.log(f"{site.site_id} {op}: reply lost after commit")
            raise NoQuorumError("reply lost after commit", site=site.site_id, op=op)
        self.sync(site, force=True)
        return result

    def heartbeat(self, site: Site) -> None:
        """The daemon's clock heartbeat (``SiteDaemon._clock_loop``, every 5 s; here once a
        step): a running site in the majority reports its clock through Raft. Not logged and
        draws no randomness, so a seed's faults and workload are those it had before."""
        if not site.running or not self.has_majority(site):
            return
        self.op_counter += 1
        cmd = {"v": 1, "op": "clock", "op_id": f"{site.site_id}-{self.op_counter}", "by": site.site_id,
               "now_ns": self.now_ns(site)}
        after, result = apply(self.state, cmd)
        self.on_committed(site, cmd, result, self.state, after)
        self.states.append(after)
        self.entries.append((cmd, result))

    @staticmethod
    def _brief(args: dict) -> str:
        keep = ("seq", "epoch", "to", "expected_epoch", "force", "seqs", "holders", "site_id", "verdict")
        return " ".join(f"{k}={args[k]}" for k in keep if k in args)

    def sync(self, site: Site, force: bool = False) -> None:
        """Apply the log up to its head at ``site`` if it reaches the majority (the daemon's
        ``_on_applied`` runs per entry: O3, the fence flag is set on the Raft thread first)."""
        if not force and not self.has_majority(site):
            return
        head = len(self.states) - 1
        for index in range(site.view_index, head):
            cmd, result = self.entries[index]  # entries[i] turned states[i] into states[i + 1]
            self._on_applied(site, cmd, result)
        site.view_index = head
        epoch = self.vol(self.view(site))["epoch"]
        if epoch < site.max_view_epoch:
            self.fail("epochs only grow", f"{site.site_id} view epoch {epoch} < {site.max_view_epoch}")
        site.max_view_epoch = epoch

    def _on_applied(self, site: Site, cmd: dict, result: dict) -> None:
        if not result.get("ok") or cmd["op"] not in ("promote", "demote"):
            return
        new_epoch = result.get("epoch")
        if site.acting_epoch is not None and new_epoch > site.acting_epoch and \
                not (cmd["op"] == "promote" and cmd.get("to") == site.site_id):
            site.fence_flag = True  # O3

    # ------------------------------------------------------------------ commit-time invariants
    def on_committed(self, site: Site, cmd: dict, result: dict, before: dict, after: dict) -> None:
        """Invariants checked on every committed command, against the true cluster."""
        op = cmd["op"]
        old, new = self.vol(before), self.vol(after)
        if new["epoch"] < old["epoch"]:
            self.fail("epochs only grow", f"{op} moved the epoch from {old['epoch']} to {new['epoch']}")
        if not result["ok"]:
            if op == "commit_snapshot":
                self.stats["refused_commits"] += 1
            if op == "promote":
                self.stats["refused_promotions"] += 1
            return
        if op == "commit_snapshot":
            self._check_commit(cmd, old)
        elif op == "promote":
            self.stats["promotions"] += 1
            voters = [s for s in self.sites.values() if s.running and self.connected(site.site_id, s.site_id)]
            if len(voters) * 2 <= len(self.sites):
                self.fail("no promotion without a majority", f"{site.site_id} promoted with {len(voters)} voters")
        elif op == "prune_snapshots":
            self._check_prune(cmd, old)

    def _check_commit(self, cmd: dict, old: dict) -> None:
        self.stats["commits"] += 1
        if cmd["epoch"] != old["epoch"]:
            self.fail("no commit under an older epoch", f"commit of #{cmd['seq']} under epoch {cmd['epoch']}, "
                      f"volume epoch {old['epoch']}")
        m = self.manifests[cmd["root"]]
        # a copy that bit rot destroyed after it was stored (the one bad copy of that chunk) still
        # counts as stored: that is the fault, not a missing acknowledgement
        stored = [sid for sid in self.data_ids
                  if all(c in self.sites[sid].chunks or self.rotted.get(c) == sid for c in m.chunks)]
        if len(stored) < self.cfg.min_copies:  # O2
            self.fail("committed only after min_copies stored (O2)",
                      f"#{cmd['seq']} stored by {stored} < min_copies {self.cfg.min_copies}")
        liars = [h for h in cmd["holders"] if h not in stored]
        if liars:
            self.fail("committed only after min_copies stored (O2)",
                      f"#{cmd['seq']} names holders {liars} that do not store it")
        if cmd["verdict"] == "clean":
            self.ever_clean_roots.add(cmd["root"])

    def _check_prune(self, cmd: dict, old: dict) -> None:
        self.stats["prunes"] += 1
        lock_ns = old["retention"]["lock_s"] * SECOND_NS
        protected = {newest_committed(old), newest_clean(old)}
        for seq in cmd["seqs"]:
            self.stats["pruned_snapshots"] += 1
            snap = old["snapshots"][seq]
            if seq in protected:
                self.fail("newest committed / newest clean never pruned", f"#{seq} pruned")
            if cmd["now_ns"] - snap["created_at_ns"] < lock_ns:  # O4
                self.fail("nothing inside the lock window is pruned",
                          f"#{seq} age {(cmd['now_ns'] - snap['created_at_ns']) / 1e9:.0f}s by the proposer's clock")
            true_age_ns = self.true_ns - self.manifests[snap["root"]].true_created_ns
            if true_age_ns < lock_ns:
                # Ages come from the producer's and the proposer's clocks: a clock step moves them.
                self.stats["lock_violations_true_time"] += 1
                if not self.clock_stepped:
                    self.fail("nothing inside the lock window is pruned",
                              f"#{seq} true age {true_age_ns / 1e9:.0f}s with no clock step")

    # ------------------------------------------------------------------ network
    def send(self, src: str, dst: str, kind: str, body: dict) -> None:
        if self.rng.random() < self.faults.loss:
            return
        delay = self.rng.randint(0, self.faults.delay_max_steps)
        self.messages.append(Message(src, dst, kind, self.step_no + delay, body))

    def deliver(self) -> None:
        keep: list[Message] = []
        due: list[Message] = []
        for msg in self.messages:
            (due if msg.deliver_step <= self.step_no else keep).append(msg)
        self.messages = keep  # replies sent while delivering are appended to it
        for msg in due:
            dst = self.sites[msg.dst]
            if not dst.alive or not self.connected(msg.src, msg.dst):
                continue  # reset by the crash / dropped by the partition
            if dst.stopped:
                keep.append(msg)  # waits in the socket buffer until SIGCONT
                continue
            if msg.kind == "ship":
                self.receive_ship(dst, msg)
            else:
                self.receive_ack(dst, msg)

    def receive_ship(self, site: Site, msg: Message) -> None:
        """``check_write_epoch`` then store (O1) then answer ``stored``."""
        b = msg.body
        self.sync(site)
        vs = self.vol(self.view(site))
        ok = b["epoch"] == vs["epoch"] and vs["primary"] == msg.src
        if ok:
            for digest, intact in b["chunks"].items():
                if digest in site.chunks:
                    continue
                if not intact:  # the receiver re-hashes: IntegrityError, nothing stored
                    ok = False
                    continue
                site.chunks[digest] = True  # O1: durable before "stored"
            if ok and site.find_root(b["root"]) is None:
                site.records[(b["epoch"], b["seq"])] = Record(b["root"], "received", b["created_at_ns"])
        self.send(site.site_id, msg.src, "ack", {"seq": b["seq"], "root": b["root"], "ok": ok})

    def receive_ack(self, site: Site, msg: Message) -> None:
        c = site.cycle
        if c is not None and c.root == msg.body["root"] and msg.src not in c.acks:
            c.acks[msg.src] = msg.body["ok"]

    def fetch(self, site: Site, m: SimManifest, holders: list[str]) -> bool:
        """Pull what ``site`` lacks (or holds corrupt) of ``m`` from reachable holders; True if
        it now holds ``m`` intact."""
        for digest in m.chunks:
            if site.chunks.get(digest) is False:
                del site.chunks[digest]  # found corrupt on read: dropped, re-fetched
        for hid in holders:
            if site.holds_intact(m):
                break
            if hid == site.site_id or not self.reachable(site.site_id, hid) or self.rng.random() < self.faults.loss:
                continue
            peer = self.sites[hid]
            for digest in m.chunks:
                if digest not in site.chunks and peer.chunks.get(digest) is True:
                    site.chunks[digest] = True
        return site.holds_intact(m)

    # ------------------------------------------------------------------ site steps
    def site_step(self, site: Site) -> None:
        """One pass of ``VolumeLoop._step`` for the volume (errors are logged and survived)."""
        if site.kind != "data":
            self.sync(site)
            return
        try:
            if site.stale_first:
                site.stale_first = False
                if site.cycle is not None and self.rng.random() < 0.5:
                    self.advance_cycle(site)  # acts on what it knew before SIGSTOP
            self.sync(site)
            vs = self.vol(self.view(site))
            if not site.fence_flag and not self.has_majority(site):
                return  # no leader known: its view of epochs may be stale
            must_fence = site.fence_flag or (site.acting_epoch is not None and (
                vs["primary"] != site.site_id or vs["epoch"] > site.acting_epoch))
            if must_fence and self.cfg.bug != "produce_after_fence":
                self.fence(site, vs)
                return
            if vs["primary"] == site.site_id or (must_fence and site.acting_epoch is not None):
                if vs["primary"] == site.site_id and site.acting_epoch != vs["epoch"]:
                    self.become_primary(site, vs)
                if site.cycle is not None:
                    self.advance_cycle(site)
                elif self.producing and self.step_no - site.last_cycle_step >= self.cfg.interval_steps:
                    self.start_cycle(site)
            else:
                self.replica_step(site, vs)
        except ConflictError as err:
            if "illegal role transition" in str(err):  # GAP_RESTORE_RETRY when daemon_gaps
                self.stats["illegal_role_transitions"] += 1
            self.log(f"{site.site_id} {err.code}: {err} {err.evidence}")
        except ReplicadError as err:
            self.log(f"{site.site_id} {err.code}: {err}")

    def transition(self, site: Site, event: str) -> None:
        site.role = roles.next_role(site.role, event)

    def set_acting(self, site: Site, epoch: int) -> None:
        owner = self.acted_by.setdefault(epoch, site.site_id)
        if owner != site.site_id:
            self.fail("at most one primary per (volume, epoch)",
                      f"{site.site_id} acts under epoch {epoch}, already held by {owner}")
        if epoch < site.max_acting_epoch:
            self.fail("epochs only grow", f"{site.site_id} acts under {epoch} after {site.max_acting_epoch}")
        site.max_acting_epoch = epoch
        site.acting_epoch = epoch

    def become_primary(self, site: Site, vs: dict) -> None:
        """``Promotion.become_primary``: restore the newest clean snapshot (O5), then act."""
        seq = newest_clean(vs)
        if site.role in ("fenced", "divergent"):
            self.transition(site, "resynced")
        retry = site.role == "restoring" and not self.cfg.daemon_gaps  # GAP_RESTORE_RETRY
        if not retry:
            self.transition(site, "granted_primary")
        if seq is not None:
            if not retry:
                self.transition(site, "restore_started")
            m = self.ensure_snapshot(site, vs, seq)
            site.image = m.blocks
            self.set_standby(site, seq, m.root, "applied")
            site.parent = m
        else:
            site.parent = None
        self.set_acting(site, vs["epoch"])
        site.fence_flag = False
        if site.role == "restoring":
            self.transition(site, "restore_done")
        site.last_cycle_step = -10**9
        self.log(f"{site.site_id} primary at epoch {vs['epoch']} (restored #{seq})")

    def ensure_snapshot(self, site: Site, vs: dict, seq: int) -> SimManifest:
        snap = vs["snapshots"][seq]
        m = self.manifests[snap["root"]]
        if not self.fetch(site, m, snap["holders"]):
            raise NoQuorumError(f"{site.site_id}: no holder of #{seq} reachable", seq=seq)
        key = site.find_root(m.root)
        if key is None:
            site.records[(snap["epoch"], seq)] = Record(m.root, "committed", snap["created_at_ns"])
        elif site.records[key].state in ("local", "received"):
            site.records[key].state = "committed"
        return m

    def set_standby(self, site: Site, seq: int, root: bytes, how: str) -> None:
        if how == "applied":
            self.stats["standby_applies"] += 1
            if root not in self.ever_clean_roots:
                self.fail("standbys only hold clean committed snapshots", f"{site.site_id} applies #{seq}")
        site.standby = (seq, root, how)

    def produced(self, site: Site, epoch: int, what: str) -> None:
        """Record production under ``epoch``; a site that applied a newer epoch must not (O3)."""
        known = self.vol(self.view(site))["epoch"]
        if known > epoch:
            self.fail("a fenced site produces nothing after learning the newer epoch (O3)",
                      f"{site.site_id} {what} under epoch {epoch} after applying epoch {known}")
        owner = self.acted_by.get(epoch)
        if owner != site.site_id:
            self.fail("at most one primary per (volume, epoch)",
                      f"{site.site_id} {what} under epoch {epoch} owned by {owner}")

    @property
    def producing(self) -> bool:
        """Cycles start until the last quarter of the quiescent phase."""
        return self.step_no < self.cfg.steps + 3 * self.cfg.quiescent_steps // 4

    @property
    def writing(self) -> bool:
        """The application writes until the middle of the quiescent phase."""
        return self.step_no < self.cfg.steps + self.cfg.quiescent_steps // 2

    def start_cycle(self, site: Site, switchover_to: str | None = None) -> None:
        """First half of ``Replication.cycle``: capture, store (O1), judge, ship."""
        epoch = site.acting_epoch
        vs = self.vol(self.view(site))
        if epoch is None or vs["primary"] != site.site_id or vs["epoch"] != epoch:
            if self.cfg.bug != "produce_after_fence" or epoch is None:
                return
        site.last_cycle_step = self.step_no
        if site.parent is None and newest_committed(vs) is not None:
            site.parent = self.manifests[vs["snapshots"][newest_committed(vs)]["root"]]
        local_max = max((s for (e, s), r in site.records.items() if r.state == "local" and e == epoch), default=0)
        seq = max(vs["last_seq"], local_max) + 1
        m = self.capture(site, seq, epoch)
        self.produced(site, epoch, f"took snapshot #{seq}")
        created_at_ns = self.now_ns(site)
        site.records[(epoch, seq)] = Record(m.root, "local", created_at_ns)
        stats = self.scan_stats(site.parent, m)
        history = [s["stats"] for _, s in sorted(vs["snapshots"].items()) if s["verdict"] == "clean"]
        verdict = anomaly.judge(stats, history).verdict
        if site.fence_flag and self.cfg.bug != "produce_after_fence":  # O3
            return
        c = InFlight(seq, epoch, m.root, created_at_ns, verdict, stats,
                     site.parent.seq if site.parent else None, self.step_no, switchover_to=switchover_to)
        site.cycle = c
        offered = {d: site.chunks[d] for d in sorted(m.chunks, key=repr)}
        for peer in self.data_ids:
            if peer != site.site_id:
                self.send(site.site_id, peer, "ship", {"epoch": epoch, "seq": seq, "root": m.root,
                                                       "chunks": offered, "created_at_ns": created_at_ns})
        self.log(f"{site.site_id} took #{seq} epoch {epoch} {verdict}")
        if self.cfg.bug == "commit_without_min_copies":
            c.acks = {p: True for p in self.data_ids if p != site.site_id}
            self.finish_cycle(site, c)

    def capture(self, site: Site, seq: int, epoch: int) -> SimManifest:
        blocks = site.image
        chunks = frozenset(block_digest(i, b) for i, b in enumerate(blocks))
        root = make_root(VOLUME, seq, epoch, site.site_id, blocks)
        m = self.manifests.get(root) or SimManifest(root, seq, epoch, blocks, chunks | {root}, self.true_ns)
        self.manifests[root] = m
        for digest in m.chunks:
            site.chunks.setdefault(digest, True)  # O1: stored and fsynced at the primary first
        return m

    @staticmethod
    def scan_stats(parent: SimManifest | None, m: SimManifest) -> dict:
        changed = [i for i, b in enumerate(m.blocks) if parent is None or parent.blocks[i] != b]
        return {"total_blocks": len(m.blocks), "zero_blocks": 0, "changed_blocks": len(changed),
                "random_changed_blocks": sum(1 for i in changed if m.blocks[i][1]),
                "has_parent": 0 if parent is None else 1}

    def advance_cycle(self, site: Site) -> None:
        """Second half of ``cycle``: wait for acks (bounded), then commit (O2, O3)."""
        c = site.cycle
        ok = sum(1 for v in c.acks.values() if v)
        if c.enough_at_step is None and 1 + ok >= self.cfg.min_copies:
            c.enough_at_step = self.step_no
        answered = len(c.acks) == len(self.data_ids) - 1
        grace_over = c.enough_at_step is not None and self.step_no > c.enough_at_step
        if not (answered or grace_over or self.step_no - c.started_step >= ACK_TIMEOUT_STEPS):
            return
        self.finish_cycle(site, c)

    def finish_cycle(self, site: Site, c: InFlight) -> None:
        site.cycle = None
        if site.fence_flag and self.cfg.bug != "produce_after_fence":  # O3: never commit after a newer epoch
            return
        holders = [site.site_id] + [p for p in self.data_ids if c.acks.get(p)]
        if len(holders) < self.cfg.min_copies:  # O2
            self.log(f"{site.site_id} #{c.seq} held by {holders}: not committed")
            return
        self.produced(site, c.epoch, f"proposed commit of #{c.seq}")
        try:
            result = self.propose(site, "commit_snapshot", volume=VOLUME, seq=c.seq, epoch=c.epoch, root=c.root,
                                  parent_seq=c.parent_seq, created_at_ns=c.created_at_ns, holders=holders,
                                  stats=c.stats, verdict=c.verdict)
        except NoQuorumError:
            if not self.cfg.daemon_gaps:  # GAP_STALE_PARENT: the commit may have applied anyway
                site.parent = None
            raise
        if not result["ok"]:
            if not self.cfg.daemon_gaps:  # GAP_STALE_PARENT
                site.parent = None
            return
        site.records[(c.epoch, c.seq)].state = "committed"
        site.parent = self.manifests[c.root]
        if c.switchover_to is not None:
            self.switchover_promote(site, c)

    def switchover_promote(self, site: Site, c: InFlight) -> None:
        """Planned switchover after the final snapshot committed: promote, then step down."""
        result = self.propose(site, "promote", volume=VOLUME, to=c.switchover_to, expected_epoch=c.epoch,
                              force=False)
        if result["ok"]:
            site.acting_epoch = None  # _step_down
            site.parent = None
            if site.role in ("primary", "restoring"):
                self.transition(site, "demoted")
            site.fence_flag = False

    def fence(self, site: Site, vs: dict) -> None:
        """``_fence`` (O3): stop producing first, keep uncommitted work as divergent, resync."""
        self.stats["fences"] += 1
        old_epoch = site.acting_epoch
        site.fence_flag = True
        site.cycle = None
        if site.role in ("primary", "restoring"):
            self.transition(site, "epoch_advanced_elsewhere")
        committed_roots = {s["root"] for s in vs["snapshots"].values()}
        divergent = []
        for key, rec in site.records.items():
            if rec.state == "local" and rec.root not in committed_roots:
                rec.state = "divergent"
                divergent.append(key[1])
        if old_epoch is not None:
            parent = site.parent
            seq = max((s for (e, s) in site.records if e == old_epoch), default=0) + 1
            blocks = site.image
            if parent is None or parent.blocks != blocks or parent.root not in committed_roots:
                chunks = frozenset(block_digest(i, b) for i, b in enumerate(blocks))
                root = make_root(VOLUME, seq, old_epoch, site.site_id + "/divergent", blocks)
                m = self.manifests.get(root) or SimManifest(root, seq, old_epoch, blocks, chunks | {root},
                                                            self.true_ns)
                self.manifests[root] = m
                for digest in m.chunks:
                    site.chunks.setdefault(digest, True)
                site.records[(old_epoch, seq)] = Record(root, "divergent", self.now_ns(site))
                divergent.append(seq)
                site.standby = (seq, root, "captured")
            elif parent is not None:
                site.standby = (parent.seq, parent.root, "captured")
        if divergent and site.role == "fenced":
            self.transition(site, "found_uncommitted_snapshots")
        self.log(f"{site.site_id} fenced (acting {old_epoch}, committed {vs['epoch']}), divergent {divergent}")
        site.acting_epoch = None
        site.parent = None
        site.fence_flag = False
        if site.role == "fenced" and not divergent:
            self.transition(site, "resynced")

    def replica_step(self, site: Site, vs: dict) -> None:
        """``_replica_step``: hold the newest committed and clean snapshots, apply newest clean."""
        for seq in sorted({newest_committed(vs), newest_clean(vs)} - {None}):
            snap = vs["snapshots"][seq]
            if site.site_id not in snap["holders"]:
                self.ensure_snapshot(site, vs, seq)
                self.propose(site, "add_holder", volume=VOLUME, seq=seq, site_id=site.site_id)
        target = newest_clean(vs)
        if target is None:
            return
        snap = vs["snapshots"][target]
        if site.standby is not None and site.standby[1] == snap["root"] and site.standby[2] == "applied":
            if site.role == "divergent":
                self.transition(site, "resynced")
            return
        m = self.ensure_snapshot(site, vs, target)
        site.image = m.blocks
        self.set_standby(site, target, m.root, "applied")
        if site.role == "divergent":
            self.transition(site, "resynced")

    def scrub(self, site: Site) -> None:
        """``verify``: re-read every kept snapshot, re-fetch corrupt chunks from its holders."""
        vs = self.vol(self.view(site))
        for rec in list(site.records.values()):
            m = self.manifests[rec.root]
            if not site.holds_intact(m):
                holders = [h for s in vs["snapshots"].values() if s["root"] == rec.root for h in s["holders"]]
                self.fetch(site, m, holders or self.data_ids)

    def retention_step(self, site: Site) -> None:
        """``retention_step``: the primary proposes a prune; every site forgets and GCs (O4)."""
        if site.kind != "data" or not site.running:
            return
        self.sync(site)
        vs = self.vol(self.view(site))
        now = self.now_ns(site)
        lock_ns = vs["retention"]["lock_s"] * SECOND_NS
        is_primary = vs["primary"] == site.site_id and site.acting_epoch == vs["epoch"]
        if is_primary:
            policy = dict(vs["retention"])
            if self.cfg.bug == "prune_in_lock":
                policy["lock_s"] = 0
            plan = retention.plan_prune(vs["snapshots"], policy, now, self.common_snapshots(site, vs))
            if plan and self.cfg.bug == "prune_in_lock":
                doomed = {vs["snapshots"][s]["root"] for s in plan}
                for key in [k for k, r in site.records.items() if r.root in doomed]:
                    self.forget(site, key, now)  # the bug: no state machine, no lock check
                self.gc(site)
            elif plan:
                try:
                    self.propose(site, "prune_snapshots", volume=VOLUME, seqs=plan)
                except NoQuorumError:
                    pass
                vs = self.vol(self.view(site))
        live_roots = {s["root"] for s in vs["snapshots"].values()}
        forgotten = 0
        for key, rec in list(site.records.items()):
            stale_received = rec.state == "received" and key[1] <= vs["last_seq"]
            if rec.root in live_roots or rec.state not in ("committed", "received") or \
                    (rec.state == "received" and not stale_received):
                continue
            if now - rec.created_at_ns < lock_ns:  # O4, with this site's own clock
                continue
            self.forget(site, key, now)
            forgotten += 1
        if forgotten:
            self.gc(site)

    def forget(self, site: Site, key: tuple, now_ns: int) -> None:
        """Drop a local record; never one inside the lock window by this site's clock (O4)."""
        rec = site.records.pop(key)
        lock = self.vol(self.state)["retention"]["lock_s"] * SECOND_NS
        if now_ns - rec.created_at_ns < lock:
            self.fail("nothing inside the lock window is deleted (O4)",
                      f"{site.site_id} forgot #{key[1]} epoch {key[0]}, age "
                      f"{(now_ns - rec.created_at_ns) / 1e9:.0f}s by its own clock")

    def common_snapshots(self, site: Site, vs: dict) -> set[int]:
        out = set()
        for peer in self.data_ids:
            if peer == site.site_id:
                continue
            both = [s for s, snap in vs["snapshots"].items() if peer in snap["holders"]
                    and site.site_id in snap["holders"]]
            if both:
                out.add(max(both))
        return out

    def gc(self, site: Site) -> None:
        """Delete chunks no kept record references; none of a retained committed snapshot
        this site is a holder of may go (O4)."""
        live: set = set()
        for rec in site.records.values():
            live |= self.manifests[rec.root].chunks
        doomed = [d for d in site.chunks if d not in live]
        if not doomed:
            return
        doomed_set = set(doomed)
        for seq, snap in self.vol(self.state)["snapshots"].items():
            if site.site_id in snap["holders"] and self.manifests[snap["root"]].chunks & doomed_set:
                self.fail("no chunk of a retained committed snapshot is deleted (O4)",
                          f"{site.site_id} GC deletes chunks of retained #{seq}")
        for d in doomed:
            del site.chunks[d]

    # ------------------------------------------------------------------ faults and operators
    def random_faults(self) -> None:
        f, rng = self.faults, self.rng
        ids = sorted(self.sites)
        if rng.random() < f.partition:
            self.stats["partitions"] += 1
            cut = rng.sample(ids, rng.randint(1, len(ids) - 1))
            self.group = {sid: (1 if sid in cut else 0) for sid in ids}
            self.log(f"partition {sorted(cut)} | {sorted(set(ids) - set(cut))}")
        elif rng.random() < f.heal and len(set(self.group.values())) > 1:
            self.group = {sid: 0 for sid in ids}
            self.log("heal")
        for sid in ids:
            s = self.sites[sid]
            if s.alive and rng.random() < f.crash:
                self.stats["crashes"] += 1
                s.crash()
                self.messages = [m for m in self.messages if m.dst != sid]
                self.log(f"SIGKILL {sid}")
            elif not s.alive and rng.random() < f.restart:
                s.restart()
                self.log(f"restart {sid}")
            elif s.running and rng.random() < f.stop:
                self.stats["stops"] += 1
                s.stopped = True
                self.log(f"SIGSTOP {sid}")
            elif s.alive and s.stopped and rng.random() < f.cont:
                s.stopped = False
                s.stale_first = True
                self.log(f"SIGCONT {sid}")
            if rng.random() < f.clock_step:
                s.clock_offset_ns += rng.randint(-7200, 7200) * SECOND_NS
                self.clock_stepped = True
                self.log(f"clock step at {sid}: offset {s.clock_offset_ns // SECOND_NS}s")
        if rng.random() < f.bitrot:
            self.bitrot()
        if rng.random() < f.attack:
            self.attack()
        if rng.random() < f.force_promote:
            self.force_promote(self.sites[rng.choice(self.data_ids)])
        if rng.random() < f.switchover:
            self.switchover()

    def bitrot(self) -> None:
        site = self.sites[self.rng.choice(self.data_ids)]
        # one bad copy per chunk at a time: a copy found corrupt and dropped stays "bad" until healed
        self.rotted = {d: sid for d, sid in self.rotted.items() if self.sites[sid].chunks.get(d) is not True}
        candidates = sorted((d for d, ok in site.chunks.items()
                             if ok and self.rotted.get(d, site.site_id) == site.site_id), key=repr)
        if candidates:
            digest = self.rng.choice(candidates)
            site.chunks[digest] = False
            self.rotted[digest] = site.site_id
            self.stats["bitrot"] += 1
            self.log(f"bit rot at {site.site_id}: {digest!r}"[:80])

    def attack(self) -> None:
        """Ransomware at the acting primary: most blocks rewritten with random-looking data."""
        for s in self.sites.values():
            if s.acting_epoch is not None and s.alive:
                for i in self.rng.sample(range(BLOCKS_PER_VOLUME), BLOCKS_PER_VOLUME // 2):
                    self.block_version += 1
                    s.image = s.image[:i] + ((self.block_version, True),) + s.image[i + 1:]
                self.log(f"attack at {s.site_id}")

    def workload(self) -> None:
        """The application writes a few (non-random) blocks at every acting primary."""
        for s in self.sites.values():
            if s.acting_epoch is not None and s.running and self.writing:
                for _ in range(self.rng.randint(0, 3)):
                    i = self.rng.randrange(BLOCKS_PER_VOLUME)
                    self.block_version += 1
                    s.image = s.image[:i] + ((self.block_version, False),) + s.image[i + 1:]

    def force_promote(self, site: Site) -> None:
        """``promote --force`` run by an operator at ``site``."""
        if not site.running:
            return
        self.sync(site)
        vs = self.vol(self.view(site))
        if vs["primary"] == site.site_id and site.acting_epoch == vs["epoch"]:
            return
        self.log(f"operator: promote --force at {site.site_id}")
        try:
            self.propose(site, "promote", volume=VOLUME, to=site.site_id, expected_epoch=vs["epoch"], force=True)
        except NoQuorumError:
            pass

    def switchover(self) -> None:
        """``promote --to B`` at the acting primary: final snapshot, commit, promote, step down."""
        for s in self.sites.values():
            vs = self.vol(self.view(s))
            if s.running and s.acting_epoch is not None and s.acting_epoch == vs["epoch"] and s.cycle is None \
                    and vs["primary"] == s.site_id:
                to = self.rng.choice([d for d in self.data_ids if d != s.site_id])
                self.log(f"operator: switchover {s.site_id} -> {to}")
                self.start_cycle(s, switchover_to=to)
                return

    # ------------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        """Invariants over the whole cluster, after every step."""
        vol = self.vol(self.state)
        acting: dict[int, list[str]] = {}
        for s in self.sites.values():
            if s.acting_epoch is not None:
                acting.setdefault(s.acting_epoch, []).append(s.site_id)
                if s.acting_epoch > vol["epoch"]:
                    self.fail("epochs only grow", f"{s.site_id} acts under {s.acting_epoch} > {vol['epoch']}")
            if s.standby is not None and s.standby[2] == "applied" and s.standby[1] not in self.ever_clean_roots:
                self.fail("standbys only hold clean committed snapshots", f"{s.site_id} standby {s.standby[0]}")
        for epoch, who in acting.items():
            if len(who) > 1:
                self.fail("at most one primary per (volume, epoch)", f"epoch {epoch} acted by {who}")
        for seq, snap in vol["snapshots"].items():
            m = self.manifests[snap["root"]]
            # a restore fetches each missing chunk from any holder (``_fetch_missing``); holder by holder, most
            # chunks are found at the first (this check runs after every step of every seed)
            lost = list(m.chunks)
            for h in snap["holders"]:
                held = self.sites[h].chunks
                lost = [c for c in lost if held.get(c) is not True]
                if not lost:
                    break
            if lost:
                self.fail("retained committed snapshots are never lost",
                          f"#{seq}: {len(lost)} chunk(s) intact at none of its holders {snap['holders']}")

    def check_converged(self) -> None:
        """After the quiescent phase: one view, the primary acting, standbys at newest clean."""
        head = len(self.states) - 1
        vol = self.vol(self.state)
        for s in self.sites.values():
            self.sync(s)  # the last step's proposals reach everyone within one tick
        lagging = [s.site_id for s in self.sites.values() if s.view_index != head]
        if lagging:
            self.fail("convergence", f"sites {lagging} do not see the whole log")
        primary = vol["primary"]
        p = self.sites[primary]
        if p.acting_epoch != vol["epoch"] or p.role != "primary":
            self.fail("convergence", f"primary {primary} does not act: acting {p.acting_epoch}, role {p.role}, "
                      f"epoch {vol['epoch']}")
        newest = newest_committed(vol)
        if newest is None or self.manifests[vol["snapshots"][newest]["root"]].blocks != p.image:
            self.fail("convergence", f"primary {primary}: its image is not committed (newest #{newest}): "
                      "the RPO does not converge")
        target = newest_clean(vol)
        for sid in self.data_ids:
            s = self.sites[sid]
            if sid == primary:
                continue
            if s.role != "replica":
                self.fail("convergence", f"{sid} role {s.role}")
            if target is not None and (s.standby is None or s.standby[1] != vol["snapshots"][target]["root"]):
                self.fail("convergence", f"{sid} standby {s.standby and s.standby[0]} != newest clean #{target}")
        for seq, snap in vol["snapshots"].items():
            m = self.manifests[snap["root"]]
            for h in snap["holders"]:
                if not self.sites[h].holds_intact(m):
                    self.fail("convergence", f"holder {h} of #{seq} does not hold it intact after scrub")

    # ------------------------------------------------------------------ driver
    def step(self, faults_on: bool) -> None:
        self.step_no += 1
        self.true_ns += self.cfg.step_s * SECOND_NS
        if faults_on:
            self.random_faults()
        self.workload()
        self.deliver()
        for sid in sorted(self.sites):
            self.heartbeat(self.sites[sid])
        order = [self.sites[sid] for sid in sorted(self.sites)]
        self.rng.shuffle(order)
        for site in order:
            if site.running:
                self.site_step(site)
                if self.rng.random() < self.faults.scrub:
                    self.scrub(site)
        for site in order:
            if (self.step_no + ord(site.site_id[0])) % self.cfg.retention_every_steps == 0:
                try:
                    self.retention_step(site)
                except ReplicadError as err:
                    self.log(f"{site.site_id} retention {err.code}: {err}")
        self.check_invariants()

    def heal_all(self) -> None:
        self.group = {sid: 0 for sid in self.sites}
        for s in self.sites.values():
            if not s.alive:
                s.restart()
            if s.stopped:
                s.stopped = False
                s.stale_first = True
        self.faults = FaultMix.quiet()
        self.log("heal everything")

    def run(self) -> dict:
        """Run the faulty steps, heal, run the quiescent steps, check convergence; return stats."""
        for _ in range(self.cfg.steps):
            self.step(faults_on=True)
        self.heal_all()
        for _ in range(self.cfg.quiescent_steps):
            self.step(faults_on=False)
        self.check_converged()
        return dict(self.stats, log_entries=len(self.entries), epoch=self.vol(self.state)["epoch"],
                    retained=len(self.vol(self.state)["snapshots"]))


def run_seed(seed: int, steps: int = 300, bug: str | None = None) -> dict:
    """Run one seed; return its statistics or raise :class:`InvariantViolation`."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}; known: {BUGS}")
    return Simulation(SimConfig.draw(seed, steps, bug)).run()


__all__ = ["BUGS", "InvariantViolation", "SimConfig", "Simulation", "FaultMix", "run_seed"]
