"""The approved requests this site watches until they end (review R13, F6).

A request that collected its approvals and waits for its cooling-off (status ``approved``: a
revocation, a membership change, a weakening) ends in the state as ``applied``, ``failed`` (its
action refused when it ran, or its volume removed) or ``vetoed`` (by a site, or by the revocation
of its requester); under rules 2 and later also as a withdrawal by its requester (the record goes,
the withdrawal's result says ``withdrawn``). A pending request may end ``expired``; an approved one
never expires. Under rules 1 (release b976d0a's machine, :mod:`replicad.core.state_rules1`, frozen)
the request table keeps :data:`~replicad.core.state_rules1.REQUESTS_MAX` (64) records in all and
forgets finished ones oldest first, ``approved`` counting as finished: a site that makes requests
and vetoes each itself pushes an approved revocation of itself out of the table, and the state
keeps no trace of it (no status, no result, no AUDIT line at any site). Rules 2 keep approved
records (:func:`replicad.core.state._bounded_requests`); a cluster founded by b976d0a stays at
rules 1 until it is raised (README "Upgrades").

:class:`RequestWatch` reads the state after each applied entry (and so after a full state installed
from the leader, at the next entry applied) and remembers every ``approved`` record. When one is no
longer in the state and the state records no end of it, it logs at ERROR (``AUDIT request r1 (...)
vanished``: the request, its approvals, its cooling-off, who pushed it out, and what to do) and
counts it (``replicad_request_vanished_total{action}``, alert ``ReplicadRequestVanished``).

How an end is told from a vanishing, by what the state records:

* one entry applied since the last look (the applied count grew by one): the record is gone and
  that entry's result is not its withdrawal (nor names it ``forgotten``, which only a finished record
  can be): vanished. Under rules 1 the only way a record leaves is the table bound of a new request,
  which runs before the due requests apply in the same entry: an approved record pushed out never
  applied;
* more entries at once (a full state installed): the record may have ended and been forgotten
  since. It counts as ended when the state shows it ran: a ``revoke_site`` whose target's
  ``revoked`` entry is not older than the approval, or an audit record of its action by its
  requester, *accepted* (``ok``), stamped at or after its ``effective_ns`` and not past the
  state's majority clock (the record a due request leaves; the state's ``audit`` keeps the last
  1,000); or when the state was under rules 2 or later both before and after (approved records
  are kept there: it was withdrawn or finished and forgotten; INFO). A refused record proves
  nothing: the state machine audits a refused command with the ``op``, ``by`` and ``now_ns`` it
  claims, unsigned, so one entry a leader forges in the requester's name would otherwise pass for
  the run (attack review R15, F3); a due request whose action failed is audited refused too, and
  is reported like one that vanished (it did not take effect either). When no accepted record
  shows it ran and the kept records do not reach back to this site's last look (the ``audit``
  list was full and none of the records it held then is still there: more than 1,000 records
  since, a flood of refused commands among them), whether it ran cannot be told from the state:
  a WARNING says so (``not known whether it ran``), not counted as vanished (attack review R15,
  F4). Otherwise vanished.

Not re-proposed (ARCHITECTURE, Choices, "An approved request that vanished"): a request proposed
again by the daemon would be signed by this site without its operator and need the other
operators' approvals again, and under rules 1 the same flood erases it again; the operator raises
the rules first (``replicad raise-rules``) and requests it again.

Runs on the Raft tick thread only (``on_applied``); not thread-safe otherwise.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from replicad.core.errors import facts_text
from replicad.core.state import AUDIT_MAX, audit_kept_since, quorum_now_ns, rules
from replicad.core.state_rules1 import REQUESTS_MAX as REQUESTS_MAX_RULES1

log = logging.getLogger("replicad.site.daemon")

RULES1_REQUESTS_MAX = REQUESTS_MAX_RULES1
"""The request records release b976d0a's machine keeps in all, named in the ERROR line."""


def _number(req_id: Any) -> int:
    """``7`` for ``"r7"``; -1 for anything else."""
    if isinstance(req_id, str) and req_id[:1] == "r" and req_id[1:].isdigit():
        return int(req_id[1:])
    return -1


def request_words(entry: dict) -> str:
    """``revoke_site site_id=site-c`` for a request record (the keys it revokes left out: long
    and the same at every site)."""
    args = entry.get("args") if isinstance(entry.get("args"), dict) else {}
    shown = {k: v for k, v in args.items() if not (entry.get("action") == "revoke_site" and k == "keys")}
    return f"{entry.get('action', '?')}" + (f" {facts_text(shown)}" if shown else "")


def next_step(entry: dict) -> str:
    """What the operator does about a vanished ``entry`` (the raise first, then the request again)."""
    action, args = entry.get("action"), entry.get("args") if isinstance(entry.get("args"), dict) else {}
    if action == "revoke_site" and isinstance(args.get("site_id"), str):
        target = args["site_id"]
        again = f"replicad revoke {target} --reason ..."
        behind = f"--leave-behind {target}"
    else:
        again = "the same request again (replicad requests shows the others)"
        behind = "--leave-behind SITE"
    return (f"Raise the cluster's rules first: the operators of a majority of the sites each run at their own "
            f"site 'replicad raise-rules {behind} --reason ...' (naming every member replicad status shows "
            f"behind); once replicad status shows rules 2 or more, make {again}")


class RequestWatch:
    """The approved requests of one site's Raft state, watched until their record shows an end.

    Args:
        site_id: this site (for the log line).
        counted: called with a vanished request's action (``SiteMetrics.request_vanished``);
            None: not counted.
        audit_prefix: ``() -> (level, prefix)`` of the entry just applied (``SiteDaemon._audit_prefix``:
            WARNING ``AUDIT`` seen live or committed while away, INFO for history replayed);
            None: always ``(WARNING, "AUDIT")``.
        logged_live: called after a line logged at ERROR (``SiteDaemon._logged_live``); may be None.
    """

    def __init__(self, site_id: str, counted: Callable[[str], None] | None = None,
                 audit_prefix: Callable[[], tuple[int, str]] | None = None,
                 logged_live: Callable[[], None] | None = None) -> None:
        self.site_id = site_id
        self._counted = counted
        self._audit_prefix = audit_prefix
        self._logged_live = logged_live
        self.watched: dict[str, dict] = {}  # request id -> its approved record, as last seen
        self.vanished: list[dict] = []  # what observe reported, newest last (at most 64 kept)
        self._requests: Any = None  # the state's "requests" map as last seen (states are copy on write)
        self._count: int | None = None
        self._looked = False  # observe ran once: what is approved then is the start
        self._rules: int | None = None
        self._seq = 0  # the state's request_seq as last seen
        self._audit: Any = None  # the state's "audit" list as last seen
        self.unknown: list[dict] = []  # requests whose end the state cannot tell (WARNING), newest last (64 kept)

    def observe(self, state: Any, count: int | None, command: Any = None, result: Any = None) -> list[dict]:
        """Look at ``state`` (the applied cluster state, read only), whose applied count is ``count``
        (``RaftNode.applied_count``), after ``command`` gave ``result`` (the entry just applied;
        None after a full state installed). Logs and counts each approved request that vanished
        and returns them: ``[{"request", "action", "args", "by", "approvals", "effective_ns",
        "pushed_out_by": {site: requests made since, still in the table}, "pushed_out_by_request":
        id | None, "pushed_out_by_site": site | None, "rules", "one_entry": bool, "entry": the
        record as last seen}]``. The first look only records what is approved. Never raises
        for any state shape."""
        if not isinstance(state, dict):
            return []
        requests = state.get("requests")
        one_entry = self._count is not None and isinstance(count, int) and count == self._count + 1
        first, self._looked = not self._looked, True
        previous_rules, now_rules = self._rules, rules(state)
        previous_seq, previous_audit, previous_count = self._seq, self._audit, self._count
        self._count, self._rules, self._audit = count, now_rules, state.get("audit")
        seq = state.get("request_seq")
        self._seq = seq if isinstance(seq, int) else previous_seq
        if requests is self._requests and not first:
            return []
        self._requests = requests
        records = requests if isinstance(requests, dict) else {}
        gone, unknown = [], []
        for req_id, old in list(self.watched.items()):
            entry = records.get(req_id)
            if isinstance(entry, dict) and entry.get("status") == "approved":
                self.watched[req_id] = entry
                continue
            del self.watched[req_id]
            if isinstance(entry, dict):
                continue  # the state records its end (applied, failed, vetoed)
            if one_entry and self._ended_by(req_id, result):
                continue
            if not one_entry and (self._ran(state, old) or
                                  (previous_rules is not None and previous_rules >= 2 and now_rules >= 2)):
                if not self._ran(state, old):
                    log.info("AUDIT request %s (%s, requested by %s, approved) ended while this site caught up from "
                             "a full state; its record is gone under rules %d (withdrawn by its requester, or "
                             "finished and forgotten since)", req_id, request_words(old), old.get("by", "?"),
                             now_rules)
                continue
            report = self._report(req_id, old, records, previous_seq, now_rules, one_entry, command, result)
            # rules 4: the records carry their command's count and the state says what its shares dropped
            kept = audit_kept_since(state, previous_count) if isinstance(previous_count, int) else None
            if not one_entry and not (self._covers(previous_audit, state.get("audit")) if kept is None else kept):
                unknown.append(report)
                continue
            gone.append(report)
        for req_id, entry in records.items():
            if isinstance(entry, dict) and entry.get("status") == "approved":
                self.watched[req_id] = entry
        for report in gone:
            self._log(report)
        for report in unknown:
            self._log_unknown(report, state.get("audit"))
        self.vanished = (self.vanished + gone)[-64:]
        self.unknown = (self.unknown + unknown)[-64:]
        return gone

    @staticmethod
    def _covers(before: Any, after: Any) -> bool:
        """True when the ``audit`` list ``after`` holds every record appended since ``before`` (the
        list as this site last looked): it never dropped one (shorter than ``AUDIT_MAX``), or it
        still holds ``before``'s newest records, in order, at its start. A false match (identical
        records) says covered: the safe side (vanished is reported, not hidden)."""
        now = after if isinstance(after, list) else []
        if len(now) < AUDIT_MAX:
            return True
        was = before if isinstance(before, list) else []
        for overlap in range(min(len(was), len(now)), 0, -1):
            if now[0] == was[-overlap] and now[:overlap] == was[-overlap:]:
                return True
        return False

    @staticmethod
    def _ended_by(req_id: str, result: Any) -> bool:
        """True when the one entry just applied ended ``req_id`` on the record: its withdrawal by
        its requester (rules 2 and later), or a forgetting that names it (only a finished record)."""
        if not isinstance(result, dict) or not result.get("ok"):
            return False
        if result.get("request") == req_id and result.get("status") == "withdrawn":
            return True
        return any(isinstance(f, dict) and f.get("request") == req_id and f.get("status") != "approved"
                   for f in result.get("forgotten") or ())

    @staticmethod
    def _ran(state: dict, entry: dict) -> bool:
        """True when ``state`` shows ``entry`` (an approved request whose record is gone) ran: a
        revocation in ``revoked`` since its approval, or an accepted audit record of its action by
        its requester (and volume) stamped from its ``effective_ns`` to the state's majority clock
        (a refused record is an unsigned claim: module docstring)."""
        args = entry.get("args") if isinstance(entry.get("args"), dict) else {}
        approved_ns = entry.get("approved_ns") if isinstance(entry.get("approved_ns"), int) else 0
        if entry.get("action") == "revoke_site":
            revoked = (state.get("revoked") or {}).get(args.get("site_id"))
            if isinstance(revoked, dict) and isinstance(revoked.get("at_ns"), int) and revoked["at_ns"] >= approved_ns:
                return True
        effective = entry.get("effective_ns") if isinstance(entry.get("effective_ns"), int) else approved_ns
        audit = state.get("audit")
        try:
            clock = quorum_now_ns(state)
        except Exception:  # a malformed state: no majority clock to bound the stamps by
            clock = None
        for record in reversed(audit if isinstance(audit, list) else []):
            if isinstance(record, dict) and record.get("ok") is True and record.get("op") == entry.get("action") and \
                    record.get("by") == entry.get("by") and record.get("volume") == args.get("volume") and \
                    isinstance(record.get("at_ns"), int) and record["at_ns"] >= effective and \
                    (clock is None or record["at_ns"] <= clock):
                return True
        return False

    def _report(self, req_id: str, entry: dict, records: dict, previous_seq: int, now_rules: int, one_entry: bool,
                command: Any, result: Any) -> dict:
        """The facts of a vanished request: who made the requests since the last look (those still
        in the table) and, for one entry, the request that pushed it out."""
        since: dict[str, int] = {}
        for other_id, other in records.items():
            if _number(other_id) > previous_seq and isinstance(other, dict):
                by = str(other.get("by", "?"))
                since[by] = since.get(by, 0) + 1
        pushed = None
        if one_entry and isinstance(command, dict) and command.get("op") == "request" and isinstance(result, dict):
            pushed = result.get("request") if isinstance(result.get("request"), str) else None
            if pushed is not None and not since:
                since = {str(command.get("by", "?")): 1}
        return {"request": req_id, "action": entry.get("action"), "args": entry.get("args"),
                "by": entry.get("by"), "approvals": list(entry.get("approvals") or []),
                "effective_ns": entry.get("effective_ns"), "pushed_out_by": dict(sorted(since.items())),
                "pushed_out_by_request": pushed,
                "pushed_out_by_site": str(command.get("by", "?")) if pushed is not None else None,
                "rules": now_rules, "one_entry": one_entry, "entry": entry}

    def _log_unknown(self, report: dict, audit: Any) -> None:
        """The WARNING line (INFO for history replayed at start) of an approved request gone while this
        site caught up from a full state whose kept audit records do not reach back to this site's last
        look: it may have run, or vanished; not counted."""
        level, prefix = self._audit_prefix() if self._audit_prefix is not None else (logging.WARNING, "AUDIT")
        entry = report["entry"]
        refused: dict[str, int] = {}
        for record in audit if isinstance(audit, list) else ():
            if isinstance(record, dict) and not record.get("ok"):
                refused[str(record.get("by"))] = refused.get(str(record.get("by")), 0) + 1
        made = ", ".join(f"{site} {n}" for site, n in report["pushed_out_by"].items())
        log.log(logging.WARNING if level >= logging.WARNING else logging.INFO,
                "%s request %s (%s, requested by %s, approved by %s, cooling off until majority clock %s ns) is gone "
                "from the cluster state, installed whole while this site caught up: not known whether it ran. The "
                "state keeps the last %d audit records and none this site held before is among them (refused "
                "commands in them, by claimed signer: %s), so the record of its run may have been pushed out, or it "
                "vanished unrun (requests made since, still in the table, by site: %s). Check what it was to do "
                "(replicad status, GET /v1/audit at a site that stayed up); if it did not take effect: %s", prefix,
                report["request"], request_words(entry), entry.get("by", "?"), ", ".join(report["approvals"]) or "?",
                report["effective_ns"], AUDIT_MAX,
                ", ".join(f"{s} {n}" for s, n in sorted(refused.items())) or "none", made or "none",
                next_step(entry))

    def _log(self, report: dict) -> None:
        """The ERROR line (INFO for history replayed at start) and the count of one vanished request."""
        level, prefix = self._audit_prefix() if self._audit_prefix is not None else (logging.WARNING, "AUDIT")
        live = level >= logging.WARNING
        entry = report["entry"]
        if report["pushed_out_by_request"] is not None:
            how = (f"pushed out of the request table by request {report['pushed_out_by_request']} of "
                   f"{report['pushed_out_by_site']}")
        else:
            how = ("gone while this site caught up from a full state, with no accepted record of it running "
                   "(a failed run is audited refused and counts as not run)")
        made = ", ".join(f"{site} {n}" for site, n in report["pushed_out_by"].items())
        if report["rules"] < 2:
            why = (f"under the cluster's rules 1 the request table keeps {RULES1_REQUESTS_MAX} finished records in all "
                   "and forgets the oldest first, approved ones among them: a site making requests (and vetoing them "
                   "itself) erases an approved one")
        else:
            why = (f"the state's rules {report['rules']} keep approved records: this state differs from what this "
                   "release decides (compare the sites' vouched checkpoints, replicad status)")
        log.log(logging.ERROR if live else logging.INFO,
                "%s request %s (%s, requested by %s, approved by %s, cooling off until majority clock %s ns) "
                "VANISHED from the cluster state before it took effect: %s (requests made since, still in the "
                "table, by site: %s). It will not take effect and no site says so otherwise (%s). %s", prefix,
                report["request"], request_words(entry), entry.get("by", "?"), ", ".join(report["approvals"]) or "?",
                report["effective_ns"], how, made or "none", why, next_step(entry))
        if live:
            if self._counted is not None:
                self._counted(str(report["action"]))
            if self._logged_live is not None:
                self._logged_live()


def revocation_warning(state: Any, target: str, behind: Any = ()) -> str | None:
    """What a revocation of ``target`` requested now must say (``replicad revoke``, ``POST
    /v1/sites/{target}/revoke``: the answer's ``warning``, the daemon's WARNING line) while
    ``state``'s rules are 1, else None: approved, it can be erased by the target's own requests
    before its cooling-off ends, and the way out (a majority of the operators leave the members
    behind, ``behind`` (those ``replicad status`` shows without a release report; the target
    always named), the rules are raised, then the revocation is requested again). Pure."""
    if rules(state) >= 2:
        return None
    names = sorted({target, *(s for s in behind if isinstance(s, str))})
    return (f"the cluster's rules are 1 (founded by release b976d0a and not raised since): once approved, this "
            f"revocation can be erased before its cooling-off ends by {target}'s own requests (the request table "
            f"keeps {RULES1_REQUESTS_MAX} finished records in all, approved ones among them; every site then logs "
            f"ERROR 'AUDIT request ... VANISHED'). Raise the rules first: the operators of a majority of the sites "
            f"each run at their own site 'replicad raise-rules --leave-behind {','.join(names)} --reason ...'; once "
            f"replicad status shows rules 2 or more, request the revocation again: replicad revoke {target}")
