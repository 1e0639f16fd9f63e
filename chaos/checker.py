"""Offline checker: invariants over a campaign's history (JSONL) and the files it names.

:func:`check` takes the events (see :mod:`chaos.harness`, :mod:`chaos.workload`,
:mod:`chaos.nemesis`, :mod:`chaos.scenarios`) and returns a list of :class:`Violation`;
an empty list means the run upheld every invariant below. It reads only the history and
the image files the history names (restore targets, final volume images).

Invariants:

* ``restorable``: every snapshot in the final catalog restored at each of its holders,
  byte-exact: equal to :func:`chaos.workload.expected_image` of the generation map the
  workload recorded when it asked for that snapshot (a generation written as ciphertext,
  :func:`chaos.workload.crypt_gens`, is expected as ciphertext); a snapshot taken by the daemon on its
  own (no workload record) must consist of well-formed blocks no newer than written so
  far; all holders of a snapshot restore the same bytes.
* ``one_primary_per_epoch``: no two sites ever reported acting as primary under one epoch.
* ``epoch_monotonic``: no site's view of the epoch or of the newest committed snapshot
  goes backwards while it knows a Raft leader (also across restarts: Raft state is
  durable, O6). A restarted site reports its pre-replay state until the log is applied;
  views with no leader known are left out.
* ``no_stale_primary``: a site never *starts* acting as primary (role becomes
  ``primary``) under an epoch older than one already seen committed anywhere.
* ``promotion_needs_majority``: no promotion succeeded while the promoting site was in a
  minority (from the nemesis events: killed, paused, isolated, one-way cut sites).
* ``fenced_produces_nothing``: once a promotion to another site returned, a snapshot the
  old primary was asked for afterwards is never committed; committed epochs never go
  down along the sequence numbers (O3).
* ``no_committed_loss``: every snapshot reported committed, and every (seq, root) seen in
  any catalog, is in the final catalog with the same root, unless retention pruned it
  (:func:`pruned_seqs`); the final epoch is the largest seen.
* ``converged``: after the faults stopped, every site reached the same catalog and every
  data site's image equals the newest clean snapshot, within the scenario's bound.
* ``rpo``: the RPO measured after convergence is under the scenario's target, read at the
  data sites whose clock is true at that instant (:func:`skewed_sites_at`: a site under
  libfaketime measures ages with its stepped clock and is left out).
* ``expectation``: every scenario-specific expectation recorded as ``expect`` held.
* ``promotion_restores_one_snapshot``: after a forced promotion the promoted site's image
  (read back by the workload right after) is exactly the committed snapshot it reports
  restoring, never a mix of two.
* ``store_intact``: every chunk of a site's store read back after the run (``store_audit``)
  verifies.
* ``no_election_storm``: while an fsync is slowed (``slow_fsync`` .. ``fast_fsync`` + 15 s),
  no healthy site sees more than the fault's ``max_terms`` leader changes or term increases.
* ``typed_refusal``: a site refused to start only with a typed damage error (no traceback)
  where its Raft-storage fault calls for one, never started on storage that must be refused,
  and the sites answering at the end are a majority (:func:`check_typed_refusal`).
* ``leader_after_faults``: once the faults stopped and every site answers, a majority
  agrees on one Raft leader within 20 election timeouts (:func:`check_leader_after_faults`).
* ``lock_window``: with a ``retention_policy`` recorded, no snapshot leaves the catalog
  before ``lock_s`` has passed since it was asked for, by the campaign's own clock (the
  clock of the majority of sites in the clock scenarios).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .workload import crypt_gens, expected_image, parse_block_kind


@dataclass
class Violation:
    """One broken invariant: its name, a sentence, and the history events that show it."""

    invariant: str
    detail: str
    events: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        ex = "\n".join("    " + _brief(e) for e in self.events[:6])
        return f"[{self.invariant}] {self.detail}" + (f"\n{ex}" if ex else "")


def _brief(e: dict) -> str:
    keep = {k: v for k, v in e.items() if k not in ("image", "snapshots")}
    return str(keep)[:300]


# ---------------------------------------------------------------------- connectivity
class Topology:
    """Which sites could talk at a given instant, rebuilt from the nemesis ``ok`` events."""

    def __init__(self, sites: Iterable[str]) -> None:
        self.sites = list(sites)
        self.dead: set[str] = set()
        self.paused: set[str] = set()
        self.isolated: set[str] = set()
        self.cuts: set[tuple[str, str]] = set()

    def apply(self, e: dict) -> None:
        f, s = e.get("f"), e.get("site")
        if f == "kill":
            self.dead.add(s)
            self.paused.discard(s)
        elif f == "start":
            self.dead.discard(s)
        elif f == "pause":
            self.paused.add(s)
        elif f == "resume":
            self.paused.discard(s)
        elif f == "isolate":
            self.isolated.add(s)
        elif f == "heal":
            self.isolated.discard(s)
        elif f == "blackhole":
            self.cuts.add((s, e.get("peer")))
        elif f == "unblackhole":
            self.cuts.discard((s, e.get("peer")))

    def _up(self, s: str) -> bool:
        return s not in self.dead and s not in self.paused and s not in self.isolated

    def component(self, s: str) -> set[str]:
        """The sites ``s`` can reach both ways (empty if ``s`` itself is down)."""
        if not self._up(s):
            return set()
        seen, todo = {s}, [s]
        while todo:
            a = todo.pop()
            for b in self.sites:
                if b not in seen and self._up(b) and (a, b) not in self.cuts and (b, a) not in self.cuts:
                    seen.add(b)
                    todo.append(b)
        return seen

    def in_majority(self, s: str) -> bool:
        return len(self.component(s)) > len(self.sites) // 2


def topology_at(events: list[dict], sites: list[str], t: float) -> Topology:
    topo = Topology(sites)
    for e in events:
        if e["t"] > t:
            break
        if e.get("op") == "nemesis" and e.get("type") == "ok":
            topo.apply(e)
    return topo


# ---------------------------------------------------------------------- helpers
def _setup(events: list[dict]) -> dict:
    for e in events:
        if e.get("op") == "setup":
            return e
    raise ValueError("history has no setup event")


def _final_catalogs(events: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in events:
        if e.get("op") == "catalog" and e.get("final"):
            out[e["site"]] = e
    return out


def _attributed(events: list[dict]) -> dict[int, list[dict]]:
    """seq -> snapshot ok events (with the generation map at invoke) that reported it committed.

    Uncommitted reports are left out: their numbers are reused by the line that wins."""
    out: dict[int, list[dict]] = {}
    for e in events:
        if e.get("op") == "snapshot" and e.get("type") == "ok" and e.get("seq") is not None and e.get("committed"):
            out.setdefault(int(e["seq"]), []).append(e)
    return out


def _max_gens(events: list[dict], n_blocks: int) -> list[int]:
    top = [0] * n_blocks
    for e in events:
        if e.get("op") == "write" and e.get("type") == "ok":
            for b, g in zip(e["blocks"], e["gens"]):
                top[b] = max(top[b], g)
    return top


def _digest(path: Path) -> str | None:
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None


def _kind(data: bytes, vol: str, block: int) -> str:
    got = parse_block_kind(data, vol, block)
    return "?" if got is None else f"{got[0]}{'c' if got[1] else ''}"


def _image_problem(path: Path, seq: int, setup: dict, attributed: dict[int, list[dict]],
                   max_gens: list[int], crypt: set[tuple[int, int]] | frozenset = frozenset()) -> str | None:
    """None if ``path`` holds what snapshot ``seq`` must hold, else what is wrong. ``crypt``:
    the ``(block, gen)`` written as ciphertext (:func:`chaos.workload.crypt_gens`)."""
    vol, n, bs = setup["volume"], setup["n_blocks"], setup["block_size"]
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return f"cannot read {path}: {err}"
    images = {tuple(r["image"]) for r in attributed.get(seq, []) if r.get("image")}
    if len(images) > 1:
        return f"the workload recorded {len(images)} different images for #{seq}"
    if images:
        gens = list(next(iter(images)))
        if -1 in gens:
            images = set()  # the site's image was unknown when the snapshot was asked: weaker check
        else:
            want = expected_image(vol, gens, bs, crypt)
            if data == want:
                return None
            bad = [b for b in range(n) if data[b * bs:(b + 1) * bs] != want[b * bs:(b + 1) * bs]]
            return (f"#{seq} differs from the workload's image in {len(bad)} block(s), e.g. block {bad[:5]}: "
                    f"got gens {[_kind(data[b * bs:(b + 1) * bs], vol, b) for b in bad[:5]]}, expected "
                    f"{[f'{gens[b]}' + ('c' if (b, gens[b]) in crypt else '') for b in bad[:5]]} (c: ciphertext)"
                    + ("" if len(data) == len(want) else f"; size {len(data)} != {len(want)}"))
    if len(data) != n * bs:
        return f"#{seq} (unattributed) has size {len(data)}, expected {n * bs}"
    got = [parse_block_kind(data[b * bs:(b + 1) * bs], vol, b) for b in range(n)]
    bad = [b for b in range(n) if got[b] is None or got[b][0] > max_gens[b]
           or (got[b][0] > 0 and got[b][1] != ((b, got[b][0]) in crypt))]
    return None if not bad else f"#{seq} (unattributed) has malformed/unknown blocks {bad[:8]}"


# ---------------------------------------------------------------------- invariants
def check_restorable(events: list[dict]) -> list[Violation]:
    setup = _setup(events)
    finals = _final_catalogs(events)
    attributed = _attributed(events)
    max_gens = _max_gens(events, setup["n_blocks"])
    crypt = crypt_gens(events)
    restores: dict[tuple[str, int], dict] = {}
    for e in events:
        if e.get("op") == "restore" and e.get("type") in ("ok", "fail"):
            restores[(e["site"], int(e["seq"]))] = e
    out: list[Violation] = []
    if not finals:
        return [Violation("restorable", "no final catalog recorded: nothing could be checked")]
    catalog = max(finals.values(), key=lambda e: len(e["snapshots"]))["snapshots"]
    for seq_s, snap in sorted(catalog.items(), key=lambda kv: int(kv[0])):
        seq = int(seq_s)
        digests: dict[str, str | None] = {}
        for holder in snap["holders"]:
            r = restores.get((holder, seq))
            if r is None:
                out.append(Violation("restorable", f"#{seq} held by {holder} was never restored there"))
                continue
            if r["type"] == "fail":
                out.append(Violation("restorable", f"#{seq} could not be restored at its holder {holder}: "
                                                   f"{r.get('error')} {r.get('message', '')[:200]}", [r]))
                continue
            problem = _image_problem(Path(r["target"]), seq, setup, attributed, max_gens, crypt)
            if problem:
                out.append(Violation("restorable", f"restore of {problem} (at {holder})",
                                     [r, *attributed.get(seq, [])]))
            digests[holder] = _digest(Path(r["target"]))
        if len(set(digests.values())) > 1:
            out.append(Violation("restorable", f"holders of #{seq} restore different bytes: {digests}"))
    return out


def check_one_primary(events: list[dict]) -> list[Violation]:
    acting: dict[int, dict[str, dict]] = {}
    for e in events:
        if e.get("op") == "status" and e.get("role") == "primary" and e.get("acting_epoch") is not None:
            acting.setdefault(int(e["acting_epoch"]), {}).setdefault(e["site"], e)
    return [Violation("one_primary_per_epoch", f"sites {sorted(by)} all acted as primary under epoch {ep}",
                      list(by.values()))
            for ep, by in sorted(acting.items()) if len(by) > 1]


def check_monotonic(events: list[dict]) -> list[Violation]:
    """Each site's epoch and newest committed seq never go back, in the status reads whose
    view was current (a restarted site replaying its log says its view is not current, issue 13
    item 10, and is not held to it; histories from before ``current`` was recorded: every read
    with a leader)."""
    out: list[Violation] = []
    last: dict[tuple[str, str], dict] = {}
    for e in events:
        if e.get("op") != "status" or e.get("leader") is None or e.get("current") is False:
            continue
        for key in ("epoch", "newest_committed"):
            v = e.get(key)
            if v is None:
                continue
            prev = last.get((e["site"], key))
            if prev is not None and v < prev[key]:
                out.append(Violation("epoch_monotonic", f"{e['site']} saw {key} go back from {prev[key]} to {v}",
                                     [prev, e]))
            last[(e["site"], key)] = e
    return out


def check_stale_primary(events: list[dict]) -> list[Violation]:
    out: list[Violation] = []
    known = sorted([(e["t"], e["epoch"], e) for e in events if e.get("epoch") is not None and (
        (e.get("op") == "status" and e.get("leader") is not None) or (e.get("op") == "promote" and e["type"] == "ok"))],
        key=lambda x: x[0])
    for e in events:
        if e.get("op") != "acted_primary":
            continue
        seen = [(t, ep, ev) for t, ep, ev in known if t < e["log_t"] - 0.05]
        top = max(seen, key=lambda x: x[1], default=None)
        if top is not None and top[1] > e["epoch"]:
            out.append(Violation("no_stale_primary", f"{e['site']} started acting as primary under epoch {e['epoch']} "
                                                     f"after epoch {top[1]} was committed", [top[2], e]))
    max_epoch = 0
    was_primary: dict[str, bool] = {}
    for e in events:
        if e.get("op") != "status":
            continue
        primary_now = e.get("role") == "primary" and e.get("acting_epoch") is not None
        if primary_now and not was_primary.get(e["site"], True) and e["acting_epoch"] < max_epoch:
            out.append(Violation("no_stale_primary", f"{e['site']} started acting as primary under epoch "
                                                     f"{e['acting_epoch']} after epoch {max_epoch} was seen", [e]))
        was_primary[e["site"]] = primary_now
        if e.get("leader") is not None and e.get("epoch") is not None:
            max_epoch = max(max_epoch, e["epoch"])
    return out


def check_promotions(events: list[dict]) -> list[Violation]:
    sites = list(_setup(events)["sites"])
    invokes: dict[str, dict] = {}
    out: list[Violation] = []
    for e in events:
        if e.get("op") != "promote":
            continue
        if e["type"] == "invoke":
            invokes[e["site"]] = e
        elif e["type"] == "ok":
            inv = invokes.get(e["site"], e)
            if not topology_at(events, sites, inv["t"]).in_majority(e["site"]) and \
                    not topology_at(events, sites, e["t"]).in_majority(e["site"]):
                out.append(Violation("promotion_needs_majority",
                                     f"{e['site']} was promoted (epoch {e.get('epoch')}) while in a minority",
                                     [inv, e]))
    return out


def check_fencing(events: list[dict]) -> list[Violation]:
    out: list[Violation] = []
    promos = [e for e in events if e.get("op") == "promote" and e.get("type") == "ok"]
    invokes: dict[str, dict] = {}
    for e in events:
        if e.get("op") != "snapshot":
            continue
        if e["type"] == "invoke":
            invokes[e["site"]] = e
            continue
        if e["type"] != "ok" or not e.get("committed"):
            continue
        inv = invokes.get(e["site"], e)
        before = [p for p in promos if p["t"] < inv["t"]]
        if before and before[-1]["primary"] != e["site"]:
            p = before[-1]
            out.append(Violation("fenced_produces_nothing",
                                 f"{e['site']} committed #{e.get('seq')} after {p['primary']} was promoted at "
                                 f"epoch {p.get('epoch')}", [p, inv, e]))
    finals = _final_catalogs(events)
    for site, cat in finals.items():
        seqs = sorted(cat["snapshots"].items(), key=lambda kv: int(kv[0]))
        for (s1, a), (s2, b) in zip(seqs, seqs[1:]):
            if b["epoch"] < a["epoch"]:
                out.append(Violation("fenced_produces_nothing",
                                     f"catalog at {site}: #{s2} committed under epoch {b['epoch']} after #{s1} "
                                     f"under epoch {a['epoch']}", [cat]))
    return out


def pruned_seqs(events: list[dict]) -> set[str]:
    """Seqs (as strings) that left the catalog through retention: ``pruned`` events (from the
    daemons' logs), ``retention_run`` reports and ``prune`` answers. When they left is
    ``lock_window``'s business; that they never come back is ``no_committed_loss``'s."""
    out: set[str] = set()
    for e in events:
        if e.get("op") == "pruned":
            out |= {str(s) for s in e.get("seqs") or ()}
        elif e.get("op") == "retention_run" and e.get("type") == "ok":
            out |= {str(s) for s in (e.get("report") or {}).get("pruned") or ()}
        elif e.get("op") == "prune" and e.get("type") == "ok":
            out |= {str(s) for s in e.get("pruned") or ()}
    return out


def check_no_loss(events: list[dict]) -> list[Violation]:
    finals = _final_catalogs(events)
    out: list[Violation] = []
    if not finals:
        return out
    pruned = pruned_seqs(events)
    seen: dict[str, dict] = {}
    max_epoch = 0
    for e in events:
        if e.get("op") == "catalog" and not e.get("final"):
            for seq, snap in e["snapshots"].items():
                seen.setdefault(seq, {"root": snap["root"], "ev": e})
            max_epoch = max(max_epoch, e.get("epoch") or 0)
        if e.get("op") == "status" and e.get("epoch") is not None:
            max_epoch = max(max_epoch, e["epoch"])
    for site, fin in finals.items():
        cat = fin["snapshots"]
        for e in events:
            if e.get("op") == "snapshot" and e.get("type") == "ok" and e.get("committed") \
                    and str(e["seq"]) not in cat and str(e["seq"]) not in pruned:
                out.append(Violation("no_committed_loss", f"#{e['seq']} was reported committed but is missing "
                                                          f"from the final catalog at {site}", [e]))
        for seq, s in seen.items():
            if seq not in cat:
                if seq not in pruned:
                    out.append(Violation("no_committed_loss", f"#{seq} seen committed earlier is missing at {site}",
                                         [s["ev"]]))
            elif cat[seq]["root"] != s["root"]:
                out.append(Violation("no_committed_loss", f"#{seq} changed root at {site}: "
                                                          f"{s['root'][:16]} -> {cat[seq]['root'][:16]}", [s["ev"]]))
        if (fin.get("epoch") or 0) < max_epoch:
            out.append(Violation("no_committed_loss", f"final epoch at {site} is {fin.get('epoch')}, "
                                                      f"but epoch {max_epoch} was seen", [fin]))
    return out


def check_convergence(events: list[dict]) -> list[Violation]:
    setup = _setup(events)
    out: list[Violation] = []
    conv = [e for e in events if e.get("op") == "converge" and e.get("type") in ("ok", "fail")]
    if not conv:
        return [Violation("converged", "no convergence result recorded")]
    for e in conv:
        if e["type"] == "fail":
            out.append(Violation("converged", f"no convergence within {e.get('bound_s')}s: {e.get('reason')}", [e]))
    finals = _final_catalogs(events)
    views = {site: {k: v["root"] for k, v in cat["snapshots"].items()} for site, cat in finals.items()}
    if len({tuple(sorted(v.items())) for v in views.values()}) > 1:
        out.append(Violation("converged", "final catalogs differ: " +
                             ", ".join(f"{s}: {sorted(int(k) for k in v)}" for s, v in views.items())))
    attributed = _attributed(events)
    max_gens = _max_gens(events, setup["n_blocks"])
    crypt = crypt_gens(events)
    for e in events:
        if e.get("op") == "final_image":
            if e.get("seq") is None:
                out.append(Violation("converged", f"{e['site']} has no known image at the end", [e]))
                continue
            problem = _image_problem(Path(e["path"]), int(e["seq"]), setup, attributed, max_gens, crypt)
            if problem:
                out.append(Violation("converged", f"volume image of {e['site']} ({e.get('role')}): {problem}", [e]))
    return out


def offset_s(offset: str | None) -> float | None:
    """Seconds of a libfaketime offset such as ``"+45"``, ``"-2h"``, ``"+1.5m"``, ``"+0"``;
    None if it cannot be read (the clock is then treated as stepped)."""
    if offset is None:
        return None
    text = str(offset).strip()
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:], None)
    try:
        return float(text[:-1]) * mult if mult is not None else float(text)
    except ValueError:
        return None


def skewed_sites_at(events: list[dict], t: float) -> dict[str, str | None]:
    """Sites whose wall clock is not the true clock at instant ``t``: ``{site: offset}``.

    Rebuilt from the nemesis ``ok`` events: a ``start`` whose ``env`` names
    ``FAKETIME_TIMESTAMP_FILE`` runs the site under libfaketime with the event's
    ``clock_offset`` (None when the history does not say: unknown, so stepped); ``clock``
    steps the offset; a ``start`` without it is a true clock. Offsets of 0 s are true clocks."""
    faked: dict[str, str | None] = {}
    for e in events:
        if e["t"] > t:
            break
        if e.get("op") != "nemesis" or e.get("type") != "ok":
            continue
        f, site = e.get("f"), e.get("site")
        if f == "start":
            if "FAKETIME_TIMESTAMP_FILE" in (e.get("env") or ()):
                faked[site] = e.get("clock_offset", faked.get(site))
            else:
                faked.pop(site, None)
        elif f == "clock" and site in faked:
            faked[site] = e.get("offset")
    return {s: off for s, off in faked.items() if offset_s(off) != 0}


def check_rpo(events: list[dict]) -> list[Violation]:
    """RPO (age of the newest committed snapshot) against its target, read only at sites
    whose clock is true when measured: a site under libfaketime measures the age with its
    own stepped clock (the clock-step scenario). RPO measured only at stepped sites is a
    violation too: nothing could be judged."""
    out: list[Violation] = []
    rpos = [e for e in events if e.get("op") == "rpo"]
    judged = 0
    for e in rpos:
        skewed = skewed_sites_at(events, e["t"])
        if e.get("site") in skewed:
            continue
        judged += 1
        if e.get("rpo_s") is None or e["rpo_s"] > e["target_s"]:
            out.append(Violation("rpo", f"RPO {e.get('rpo_s')}s at {e.get('site')} above target "
                                        f"{e.get('target_s')}s", [e]))
    if rpos and not judged:
        out.append(Violation("rpo", "RPO was measured only at sites with a stepped clock "
                                    f"({sorted({e.get('site') for e in rpos})}): nothing to judge", rpos))
    return out


def check_expectations(events: list[dict]) -> list[Violation]:
    return [Violation("expectation", f"{e.get('name')}: {e.get('detail')}", [e])
            for e in events if e.get("op") == "expect" and not e.get("passed")]


def check_promotion_image(events: list[dict]) -> list[Violation]:
    setup = _setup(events)
    attributed = _attributed(events)
    out: list[Violation] = []
    for i, e in enumerate(events):
        if e.get("op") != "promote" or e.get("type") != "ok" or e.get("restored_seq") is None:
            continue
        adopt = next((a for a in events[i + 1:] if a.get("op") == "adopt" and a.get("site") == e["site"]), None)
        if adopt is None:
            continue
        images = {tuple(r["image"]) for r in attributed.get(int(e["restored_seq"]), []) if r.get("image")}
        if len(images) != 1 or -1 in next(iter(images)):
            continue  # no exact record of that snapshot's image: restorable judges it
        want = list(next(iter(images)))
        got = adopt["image"]
        if got != want:
            bad = [b for b in range(setup["n_blocks"]) if got[b] != want[b]]
            others = {int(s) for s, rs in attributed.items() for r in rs if r.get("image")
                      and all(got[b] == r["image"][b] for b in bad)}
            out.append(Violation("promotion_restores_one_snapshot",
                                 f"{e['site']} restored #{e['restored_seq']} but its image differs in {len(bad)} "
                                 f"block(s) {bad[:6]} (those blocks match #{sorted(others)[:4]})", [e, adopt]))
    return out


def check_store_audit(events: list[dict]) -> list[Violation]:
    return [Violation("store_intact", f"{e['site']}: {len(e['bad'])} of {e.get('chunks')} chunks fail to read back: "
                                      f"{e['bad'][:4]}", [e])
            for e in events if e.get("op") == "store_audit" and e.get("bad")]


def check_election_storm(events: list[dict]) -> list[Violation]:
    out: list[Violation] = []
    for start in [e for e in events if e.get("op") == "nemesis" and e.get("f") == "slow_fsync" and e.get("type") == "ok"]:
        end = next((e for e in events if e.get("op") == "nemesis" and e.get("f") == "fast_fsync"
                    and e.get("site") == start["site"] and e.get("type") == "ok" and e["t"] > start["t"]), None)
        t1 = (end["t"] if end else events[-1]["t"]) + 15.0
        seen: dict[str, list[tuple]] = {}
        for e in events:  # (leader, term) changes seen by the sites whose disk is healthy
            if e.get("op") == "raft" and e.get("site") != start["site"] and start["t"] - 1 <= e["t"] <= t1 \
                    and e.get("term") is not None:
                v = seen.setdefault(e["site"], [])
                if not v or v[-1] != (e.get("leader"), e["term"]):
                    v.append((e.get("leader"), e["term"]))
        bound = start.get("max_terms", 3)
        for site, v in sorted(seen.items()):
            leaders = [x[0] for x in v if x[0]]
            changes = sum(1 for a, b in zip(leaders, leaders[1:]) if a != b)
            if changes > bound:
                out.append(Violation("no_election_storm", f"{site}: {changes} leader changes while fsync was slow at "
                                                          f"{start['site']}: {v[:8]}", [start]))
            if v[-1][1] - v[0][1] > bound:
                out.append(Violation("no_election_storm", f"{site}: Raft term {v[0][1]} -> {v[-1][1]} while fsync was "
                                                          f"slow at {start['site']} (leader, term: {v[:8]})", [start]))
    return out


def check_lock_window(events: list[dict]) -> list[Violation]:
    pol = next((e for e in events if e.get("op") == "retention_policy"), None)
    if pol is None:
        return []
    lock_s = pol["lock_s"]
    asked: dict[str, float] = {}
    for e in events:
        if e.get("op") == "snapshot" and e.get("type") == "ok" and e.get("committed"):
            inv = next((i for i in reversed(events) if i.get("op") == "snapshot" and i.get("type") == "invoke"
                        and i.get("site") == e["site"] and i["t"] <= e["t"]), e)
            asked.setdefault(str(e["seq"]), inv["t"])
    out: list[Violation] = []
    present: dict[tuple[str, str], dict] = {}
    reported: set[str] = set()
    for e in events:
        if e.get("op") != "catalog":
            continue
        for seq in e["snapshots"]:
            present[(e["site"], seq)] = e
            asked.setdefault(seq, e["t"])
        for (site, seq), was in list(present.items()):
            if site == e["site"] and seq not in e["snapshots"] and seq not in reported:
                age = e["t"] - asked.get(seq, was["t"])
                if age < lock_s:
                    reported.add(seq)
                    out.append(Violation("lock_window", f"#{seq} left the catalog at {site} {age:.0f}s after it "
                                                        f"was taken, inside the {lock_s}s lock window", [was, e]))
    return out


def check_typed_refusal(events: list[dict]) -> list[Violation]:
    """A site refused to start only with a typed damage error where its fault calls for one
    (:func:`chaos.raftdisk.refusal_problems`); and sites that answered at the end (final
    catalogs) are a majority: a site that refused on purpose and stayed down is absent, not
    a loss, but the others must hold everything (``no_committed_loss``)."""
    from .raftdisk import refusal_problems
    out = [Violation("typed_refusal", x) for x in refusal_problems(events, "site")]
    setup = _setup(events)
    finals = _final_catalogs(events)
    n = len(setup.get("sites") or [])
    if finals and n and len(finals) <= n // 2:
        out.append(Violation("typed_refusal", f"only {sorted(finals)} answered at the end, not a majority of {n}"))
    return out


def check_leader_after_faults(events: list[dict]) -> list[Violation]:
    """Once faults stopped and every site answers, a majority names one Raft leader within
    ``bound_s`` (``leader_after_faults``, recorded by :func:`chaos.scenarios.time_leader`)."""
    return [Violation("leader_after_faults", f"no Raft leader agreed by a majority within {e['bound_s']:.0f}s "
                                             f"once faults stopped (elapsed {e['elapsed_s']:.1f}s, leader "
                                             f"{e.get('leader')})", [e])
            for e in events if e.get("op") == "leader_after_faults"
            and (e.get("leader") is None or e["elapsed_s"] > e["bound_s"])]


CHECKS = (check_restorable, check_one_primary, check_monotonic, check_stale_primary, check_promotions, check_fencing, check_no_loss,
          check_convergence, check_rpo, check_expectations, check_promotion_image, check_store_audit,
          check_election_storm, check_lock_window, check_typed_refusal, check_leader_after_faults)


def check(events: list[dict[str, Any]]) -> list[Violation]:
    """Every invariant of this module over ``events`` (sorted by ``t``). Returns the violations."""
    events = sorted(events, key=lambda e: e["t"])
    out: list[Violation] = []
    for fn in CHECKS:
        out.extend(fn(events))
    return out
