"""How far into the cluster's Raft history this site has seen live (its audit lines' mark).

A site logs a cluster-wide change signed by another site (``AUDIT ... by site-c``) when it applies
it live; the entries it replays at start, or catches up from the leader before it joined, are its
history again and not logged (each restart would log the whole history). An entry committed while
this site was down or still catching up was never seen live anywhere here: without a mark, a
change made then (a hostile site registering volumes while the honest sites start, or changing a
policy during an all-stopped upgrade) would never reach this site's log. The mark is the number of
commands this site's state had applied (``RaftNode.applied_count``) when it last saw the cluster
live; entries beyond it are logged at start as committed while this site was away. The mark is
written within a second of lines logged live (by the event loop, after the line: a crash between
the two logs that entry once more at the next start, never loses it), when the site joins and
when it stops.

A site's first start (a data dir holding neither the mark nor a Raft journal or checkpoint) has
seen nothing yet: what it applies before it first joins the cluster (the founding's
registrations, the rules raise) was committed *before this site first joined*, not while it was
away, and is logged at INFO as such. A data dir that holds a Raft journal or checkpoint but no
mark (deleted to hide what was committed while the site was down, or unreadable) is no first
start: everything it replays is logged at WARNING as possibly committed while it was away, saying
the mark was missing (a data dir of a release before the mark logs its history so once).

Kept in ``data_dir/audit.seen`` (JSON ``{"applied": int}``, written with fsync and rename).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from replicad.core import errors
from replicad.storage.durable import write_durably

log = logging.getLogger(__name__)

SEEN_FILE = "audit.seen"


class SeenMark:
    """The mark of one site's data dir.

    ``mark`` (int or None): the applied count seen live; None while unknown (no mark on a data dir
    with a Raft journal or checkpoint, or an unreadable one: :attr:`missing` says why).
    ``first_start``: True on a data dir without mark nor Raft log, until the first :meth:`save`
    (the site joined and saw the cluster live).
    """

    def __init__(self, data_dir: Path) -> None:
        """Read the mark of ``data_dir`` (never raises: a missing or unreadable mark beside a Raft
        log is logged at WARNING and every entry replayed counts as possibly committed away)."""
        self.path = Path(data_dir) / SEEN_FILE
        self.mark: int | None = None
        self.first_start = False
        self.missing: str | None = None  # why the mark is unknown: "missing", "unreadable (...)"
        self._saved: int | None = None
        self._lock = threading.Lock()  # the tick thread and the event loop both save
        raft = Path(data_dir) / "raft"
        try:
            value = json.loads(self.path.read_text())["applied"]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"applied {value!r} is not a count")
            self.mark = self._saved = value
        except FileNotFoundError:
            if not (raft / "raft.journal").exists() and not (raft / "raft.dump").exists():
                self.mark, self.first_start = 0, True
            else:
                self.missing = "missing"
                log.warning("%s is missing beside a Raft log in %s: every cluster-wide change this site replays is "
                            "logged as possibly committed while it was away (the mark is kept from now on; a "
                            "data dir of a release before it logs its history so once)", self.path, raft)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.missing = f"unreadable ({exc})"
            log.warning("%s unreadable (%s): every cluster-wide change this site replays is logged as possibly "
                        "committed while it was away", self.path, exc)

    def away(self, applied: int) -> bool:
        """True when the entry that made the applied count ``applied`` may have been committed while
        this site was down or catching up: past the mark, or any entry while the mark is missing
        (:attr:`missing`); never on a first start (:meth:`before_first_join`). Pure."""
        if self.mark is None:
            return self.missing is not None
        return not self.first_start and applied > self.mark

    def before_first_join(self) -> bool:
        """True on a site's first start until it first saw the cluster live (the first
        :meth:`save`): an entry applied now was committed before this site first joined. Pure."""
        return self.first_start

    def save(self, applied: int) -> None:
        """Record ``applied`` as seen live (only when past the last write; thread-safe).

        Raises:
            errors.StoreFullError / errors.InternalError: the file cannot be written."""
        with self._lock:
            if self._saved is not None and applied <= self._saved:
                return
            try:
                write_durably(self.path, json.dumps({"applied": applied}).encode())
            except OSError as exc:
                raise errors.from_os_error(exc, f"writing {self.path}") from exc
            self._saved = self.mark = applied
            self.first_start = False
            self.missing = None


# The words of AUDIT lines that differ between a line seen live and one of history (replayed at start,
# caught up, committed while this site was away): a line of history gives no "next step" advice (the
# request it names may have applied or ended since: what became of it is logged after it, as the later
# entries apply) and tells no state as current. Pure; used by ``site.daemon``.

def pending_words(approvals: int, needed: object, req_id: object, live: bool) -> str:
    """What a pending request's AUDIT line ends with: ``1 of 2 approvals`` and, seen
    live, the next step (``an operator of another site approves it at their own site with: replicad
    approve r6``); a line of history says the count was then and where its fate is told instead."""
    count = f"{approvals} of {needed} approvals"
    if live:
        return f"{count}; an operator of another site approves it at their own site with: replicad approve {req_id}"
    return (f"{count} at that command (history: what became of {req_id} is logged after it as the later "
            f"commands apply; now: replicad requests)")


def approved_words(effective_ns: int, req_id: object, live: bool) -> str:
    """What an approved request's AUDIT line ends with: when it takes effect and, seen live, how to
    stop it (``replicad veto r6``); a line of history only when it was to take effect."""
    if live:
        return (f"it takes effect when the cooling-off ends (majority clock {effective_ns} ns) unless a site vetoes "
                f"it: replicad veto {req_id}")
    return (f"it was to take effect when the cooling-off ended (majority clock {effective_ns} ns) unless a site "
            f"vetoed it (history: what became of {req_id} is logged after it; now: replicad requests)")


def unadopted_words(live: bool) -> str:
    """A ``found`` that adopted no membership, for its AUDIT line: seen live, the membership is not
    adopted yet; replayed, that proposal alone adopted none (the cluster may well be founded since:
    a later line says so)."""
    if live:
        return "; its membership is not adopted yet (a majority of identical found proposals adopts one)"
    return ("; this proposal alone adopted no membership (a majority of identical found proposals adopts one: "
            "a later line of this replay says so when it happened)")


HISTORY_FATES_MAX = 200
"""Requests whose status now is told once a site joined after lines of history named them (then a
count of the rest: ``replicad requests``)."""


def fate_words(req_id: object, entry: object) -> str:
    """What became of request ``req_id`` (its record in the state now, ``state.list_requests``
    shape, or None once forgotten), for the line a site logs once it joined after logging the
    request in lines of history: ``request r6 (set_retention, requested by site-b): since applied``;
    still pending it gives the next step (``replicad approve r6``: current now). Pure; never raises."""
    if not isinstance(entry, dict):
        return f"request {req_id}: gone from the state since (finished records are bounded per requester)"
    head = f"request {req_id} ({entry.get('action', '?')}, requested by {entry.get('by', '?')})"
    status, approvals = entry.get("status"), entry.get("approvals")
    count = len(approvals) if isinstance(approvals, list) else 0
    if status == "pending":
        return f"{head}: still pending, {pending_words(count, entry.get('needed'), req_id, live=True)}"
    if status == "approved":
        return f"{head}: approved, {approved_words(entry.get('effective_ns') or 0, req_id, live=True)}"
    if status == "vetoed":
        return f"{head}: since vetoed by {entry.get('vetoed_by', '?')}"
    return f"{head}: since {status}"
