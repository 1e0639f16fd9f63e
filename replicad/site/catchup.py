"""What a full-state catch-up covered, in AUDIT lines (attacker review r13, F3).

A site behind the leader's compacted log (away, cut off or frozen longer than the leader's last
compaction: ``raft`` point 14; pysyncobj compacts every 5 minutes, or at 5,000 entries) catches up
by installing the leader's verified full state (``RaftNode._deserialize_dump``) instead of the
entries. Its ``on_applied`` never sees those entries, so the AUDIT lines every live site logged for
them (``site.daemon``: a volume registered, a primary changed, a request made, approved, vetoed or
applied, a rules raise ...) would never reach its log. Here the two states, before and after the
install, are compared on every cluster-wide fact an operator audits, and the state's kept
``audit`` records of the commands it covered are listed:

* rules version; agreed membership (members, kinds, Raft addresses, keys) and founding;
  registered sites; revocations;
* per volume: registration (``registered_by`` and what ``add_volume`` lines show), removal,
  primary and epoch, retention, detection policy, copies and size bounds, holds (a forced
  promotion's restore pin, an instant recovery), snapshots committed and pruned, verdicts
  (judged suspect, cleared);
* requests: new ones and each status change (:func:`request_words`, the wording of the live
  ``AUDIT request`` lines), and vetoes per site;
* the ``audit`` records (op, signer, volume, outcome, stamp) of the commands the state covers past
  this site's position: the accepted ones listed, oldest first, identical ones (same command,
  signer and volume) past :data:`LISTED_EACH_MAX` one line with their count and the range of
  their stamps (a flood of 2,000 accepted no-op ``add_volume`` of one site is one line, not the
  200 that buried another site's revocation request: attack review R16, F2) (the routine ones,
  :data:`ROUTINE_OPS`: clocks, vouches, snapshot commits and verdicts, counted per command and
  signer in one line), then the refused ones counted, one line per (op, claimed signer, error) with the
  range of their claimed stamps. A refused record is the command's claim, unsigned (the state
  machine audits a forged or malformed command with the ``op``, ``by`` and ``now_ns`` it names),
  and one site's thousand refused commands (attack review R15, F2: 6,000 vetoes of a request that
  does not exist in ~21 s) must not push the accepted records out of the list. Under rules 4
  (``state.RULES_AUDIT_BY_SIGNER``) the state itself keeps each signing site's share of the records
  (such a flood drops only the flooding site's own): the new records are those past this site's
  count (each carries its command's ``n``), and what a share dropped is named per share
  (:func:`dropped_text`).

Everything here is pure and never raises (a state that is not the expected shape gives a line
saying which part could not be compared). The lines are bounded (:data:`FACTS_MAX`,
:data:`RECORDS_MAX`, :data:`SEQS_SHOWN`): a hostile or huge state cannot flood the log; what is
left out is counted and named (``replicad status``, ``GET /v1/audit``).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Callable, Iterator

from replicad.core import state as cluster_state
from replicad.core.errors import facts_text
from replicad.core.requestdiff import args_summary, change_text, changes_text, document_changes, request_changes

FACTS_MAX = 200
"""Fact lines of the cluster's governance (rules, membership, sites and revocations, requests and
vetoes) logged for one install at most (then one line counting the rest); listed first, with a
budget of their own: a site's own volumes (up to 128, a line each for its registration and its
snapshots) pushed every request and veto out of a shared budget (attack review R16, R-b)."""
VOLUME_FACTS_MAX = 200
"""Fact lines of the volumes logged for one install at most, after the governance facts (then one
line counting the rest)."""
RECORDS_MAX = 200
"""Accepted audit records listed for one install at most (the state keeps ``state.AUDIT_MAX``,
1,000, under rules 1..3; at most ``state.AUDIT_KEPT_MAX``, 2,000, by signing site under rules 4);
and at most as many lines counting refused ones."""
SEQS_SHOWN = 10
"""Snapshot seqs named in one line at most (then how many more)."""
ROUTINE_OPS = ("clock", "vouch", "commit_snapshot", "site_verdict", "add_holder", "remove_holder")
"""Accepted audit records counted per (command, signer), not listed one by one: every site's
heartbeat every 5 s, checkpoint vouches, each snapshot's commit, every site's verdict on it and
the copies it holds (six minutes away are dozens of them: listed, they bury the facts, which stay
one line each)."""
LISTED_EACH_MAX = 3
"""Accepted, not routine audit records of one (command, signer, volume) listed one by one at most;
more of them are one line with their count and the range of their stamps (:func:`group_listed`)."""
ROUTINE_GROUPS_SHOWN = 30
"""(command, signer) counts named in the routine records' line at most (then how many more)."""
VOLUME_FIELDS = ("primary", "block_size", "min_copies", "retention")
"""What a volume's registration line shows (the live ``AUDIT add_volume`` line's fields)."""


def request_words(action: Any, args: Any, reason: Any = None) -> str:
    """A request's action, arguments and reason for an AUDIT line:
    ``set_retention volume=ehr retention={...} reason="..."`` (:func:`~replicad.core.errors.facts_text`);
    an argument longer than 400 characters (a detection policy's ransom-note patterns) counted
    (``policy=<18 keys>``: :func:`~replicad.core.requestdiff.args_summary`; the request record
    keeps it whole); ``?`` for an action not known here. The reason is shown once: an argument
    ``reason`` equal to ``reason`` (a verdict's) is left out of the arguments."""
    words = str(action or "?")
    if isinstance(args, dict) and reason and args.get("reason") == reason:
        args = {k: v for k, v in args.items() if k != "reason"}
    if isinstance(args, dict) and args:
        words += " " + facts_text(args_summary(args))
    if reason:
        words += " " + facts_text({"reason": reason})
    return words


def applied(state: Any) -> int:
    """The count of commands ``state`` holds (its ``applied``; 0 when absent or malformed)."""
    value = state.get("applied", 0) if isinstance(state, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _seqs(seqs: list) -> str:
    shown = ", ".join(str(s) for s in seqs[:SEQS_SHOWN])
    return f"[{shown}{f', ... {len(seqs) - SEQS_SHOWN} more' if len(seqs) > SEQS_SHOWN else ''}]"


def _value(value: Any) -> str:
    """``value`` as in :func:`~replicad.core.errors.facts_text`, a mapping in braces."""
    return "{" + facts_text(value) + "}" if isinstance(value, dict) else facts_text(value)


def _short(key: Any) -> str:
    text = key.hex() if isinstance(key, (bytes, bytearray)) else str(key)
    return text[:16] + ("..." if len(text) > 16 else "")


def _rules(before: dict, after: dict) -> list[str]:
    was, now = cluster_state.rules(before), cluster_state.rules(after)
    return [] if was == now else [f"the cluster's rules raised {was} -> {now}"]


def _keyed_diff(before: dict, after: dict, key: Callable[[Any], Any] = str) -> Iterator[tuple[Any, Any, Any]]:
    """``(name, old, new)`` of each entry of the mappings ``before`` / ``after`` that differs (one
    side None where it is absent), in the order of ``key`` over the names of both: the walk every
    keyed part of the state (members, sites, revocations, volumes) is compared by."""
    for name in sorted(set(before) | set(after), key=key):
        old, new = before.get(name), after.get(name)
        if old is not new and old != new:
            yield name, old, new


def _members(inc: Any) -> dict:
    return {m.get("site_id"): m for m in (_d(inc).get("members") or ()) if isinstance(m, dict)}


def _membership(before: dict, after: dict) -> list[str]:
    b_inc, a_inc = before.get("incarnation"), after.get("incarnation")
    out = []
    if a_inc is not None and (b_inc is None or _d(b_inc).get("id") != _d(a_inc).get("id")):
        out.append(f"the cluster {'founded' if b_inc is None else 're-founded'}: incarnation "
                   f"{_short(_d(a_inc).get('id'))} by {_d(a_inc).get('by')}, founders "
                   f"{', '.join(map(str, _d(a_inc).get('founders') or ()))}")
    for site, old, new in _keyed_diff(_members(b_inc), _members(a_inc)):
        if old is None:
            out.append(f"member {site} agreed: kind={new.get('kind')} raft={new.get('raft')} keys="
                       f"[{', '.join(_short(k) for k in new.get('keys') or ())}]")
        elif new is None:
            out.append(f"member {site} left the agreed membership")
        else:
            changed = {k: f"{_value(old.get(k))} -> {_value(new.get(k))}"
                       for k in ("kind", "raft") if old.get(k) != new.get(k)}
            if old.get("keys") != new.get("keys"):
                changed["keys"] = (f"[{', '.join(_short(k) for k in old.get('keys') or ())}] -> "
                                   f"[{', '.join(_short(k) for k in new.get('keys') or ())}]")
            out.append(f"member {site} changed: " + " ".join(f"{k} {v}" for k, v in changed.items()))
    return out


def _sites(before: dict, after: dict) -> list[str]:
    out = []
    for site, old, new in _keyed_diff(_d(before.get("sites")), _d(after.get("sites"))):
        if old is None:
            out.append(f"site {site} registered: {facts_text(_d(new))}")
        elif new is None:
            out.append(f"site {site} no longer registered")
        else:
            out.append(f"site {site} registration changed: {_value(old)} -> {_value(new)}")
    for site, old, new in _keyed_diff(_d(before.get("revoked")), _d(after.get("revoked"))):
        if new is None:
            out.append(f"revocation of site {site} gone from the state")
        else:
            new = _d(new)
            out.append(f"site {site} revoked by {new.get('by')} ({len(new.get('keys') or ())} key(s), majority clock "
                       f"{_when(new.get('at_ns'))})")
    return out


def _volume_added(name: str, vol: dict) -> str:
    fields = {k: vol[k] for k in VOLUME_FIELDS if k in vol}
    return (f"volume {name} added (registered by {vol.get('registered_by', '?')}): "
            f"{facts_text({**fields, 'epoch': vol.get('epoch')})}")


def _snapshots(name: str, old: dict, new: dict) -> list[str]:
    was, now, out = _d(old.get("snapshots")), _d(new.get("snapshots")), []
    added = sorted((s for s in now if s not in was), key=lambda s: (str(type(s)), s))
    gone = sorted((s for s in was if s not in now), key=lambda s: (str(type(s)), s))
    if added:
        out.append(f"volume {name}: {len(added)} snapshot(s) committed, seqs {_seqs(added)}")
    if gone:
        out.append(f"volume {name}: {len(gone)} snapshot record(s) pruned, seqs {_seqs(gone)}")
    suspect, cleared, confirmed = [], [], []
    for seq in sorted(now, key=lambda s: (str(type(s)), s)):
        snap, prior = _d(now[seq]), _d(was.get(seq))
        if snap.get("verdict") == "suspect" and prior.get("verdict") != "suspect":
            suspect.append(seq)
        elif snap.get("verdict") == "clean" and prior.get("verdict") == "suspect":
            cleared.append(seq)
        if snap.get("confirmed") and not prior.get("confirmed"):
            confirmed.append(seq)
    if suspect:
        first = _d(now[suspect[0]])
        why = (facts_text({"reason": first.get("verdict_reason")}) if first.get("verdict_reason")
               else "no reason recorded")  # not reason="" (a tryout's finding)
        out.append(f"volume {name}: {len(suspect)} snapshot(s) judged suspect, seqs {_seqs(suspect)} (#{suspect[0]}: "
                   f"{why})")
    if cleared:
        out.append(f"volume {name}: {len(cleared)} suspect snapshot(s) cleared, seqs {_seqs(cleared)}")
    if confirmed:
        out.append(f"volume {name}: {len(confirmed)} snapshot(s) confirmed clean by an approved request, seqs "
                   f"{_seqs(confirmed)}")
    return out


def _volumes(before: dict, after: dict) -> list[str]:
    out = []
    for name, old, new in _keyed_diff(_d(before.get("volumes")), _d(after.get("volumes"))):
        if old is None:
            out.append(_volume_added(name, _d(new)))
            out.extend(_snapshots(name, {}, _d(new)))
            continue
        if new is None:
            gone = _d(_d(after.get(cluster_state.REMOVED_VOLUMES)).get(name))
            out.append(f"volume {name} removed" + (f": {facts_text(gone)}" if gone else ""))
            continue
        old, new = _d(old), _d(new)
        if (old.get("primary"), old.get("epoch")) != (new.get("primary"), new.get("epoch")):
            out.append(f"volume {name}: primary {_value(old.get('primary'))} -> {_value(new.get('primary'))}, epoch "
                       f"{old.get('epoch')} -> {new.get('epoch')}")
        out.extend(_policies(name, old, new))
        for key in ("min_copies", "max_size_bytes"):
            if old.get(key) != new.get(key):
                out.append(f"volume {name}: {change_text({'key': key, 'old': old.get(key), 'new': new.get(key)})}")
        for key, what in ((cluster_state.RESTORE_PIN, "hold: restore pin (forced promotion)"),
                          (cluster_state.INSTANT, "hold: instant recovery")):
            if old.get(key) != new.get(key):
                out.append(f"volume {name}: {what} {_value(old.get(key))} -> {_value(new.get(key))}")
        out.extend(_snapshots(name, old, new))
    return out


def _policies(name: str, old: dict, new: dict) -> list[str]:
    """A volume's retention and detection policy changes in the CLI's words and units, only the keys
    that differ (``volume ehr: detection policy changed: min_score: 0.02 -> 0.05 (17 other keys as
    before)``, ``retention changed: daily: 30d -> 60d``): :mod:`replicad.core.requestdiff`, what
    ``replicad requests`` shows. A detection policy is compared as it applies
    (``state.detection_policy``: the defaults while none was set), so a first policy is a change
    from the defaults, not from "none"."""
    out = []
    if old.get("retention") != new.get("retention"):
        diff = document_changes(old.get("retention"), new.get("retention"))
        out.append(f"volume {name}: retention changed: {changes_text(diff)}" if diff is not None else
                   f"volume {name}: retention {_value(old.get('retention'))} -> {_value(new.get('retention'))}")
    if old.get("detection") != new.get("detection"):
        try:
            was, now = cluster_state.detection_policy(old), cluster_state.detection_policy(new)
        except Exception:  # a policy of a shape the state would not hold: say what is there, counted
            was, now = None, None
        diff = document_changes(was, now)
        if diff is None:
            out.append(f"volume {name}: detection policy {facts_text(args_summary({'was': old.get('detection')}))}"
                       f" -> {facts_text(args_summary({'now': new.get('detection')}))}")
        elif diff["changes"]:
            default = " (the defaults applied before)" if old.get("detection") is None else ""
            out.append(f"volume {name}: detection policy changed{default}: {changes_text(diff)}")
        else:
            out.append(f"volume {name}: detection policy recorded as it applied already: nothing differs")
    return out


def _requests(before: dict, after: dict) -> list[str]:
    was, now, out = _d(before.get("requests")), _d(after.get("requests")), []
    for req_id, entry in now.items():
        entry, prior = _d(entry), was.get(req_id)
        what = request_words(entry.get("action"), entry.get("args"), entry.get("reason"))
        diff = request_changes(entry, after)
        if diff is not None:
            what += f" (changes {changes_text(diff)})"
        approvals = ", ".join(map(str, entry.get("approvals") or ()))
        if prior is None:
            out.append(f"request {req_id} by {entry.get('by', '?')}: {what} -- now {entry.get('status')}, approvals "
                       f"[{approvals}] of {entry.get('needed')} needed" + _outcome(entry))
        elif _d(prior).get("status") != entry.get("status") or _d(prior).get("approvals") != entry.get("approvals"):
            out.append(f"request {req_id} ({what}, requested by {entry.get('by', '?')}): "
                       f"{_d(prior).get('status')} -> {entry.get('status')}, approvals [{approvals}]" + _outcome(entry))
    ends = gone_unfinished(before, after)
    for req_id in was:
        if req_id not in now:
            prior = _d(was[req_id])
            how = ends.get(req_id)
            if how == "withdrawn":  # the state proves its requester withdrew it
                voided = [str(s) for s in (prior.get("approvals") or ()) if s != prior.get("by")]
                out.append(f"request {req_id} ({prior.get('action')}, {prior.get('status')}, requested by "
                           f"{prior.get('by', '?')}) gone unfinished: withdrawn by its requester"
                           + (f" after {', '.join(voided)} approved it (their approvals are void)" if voided else ""))
                continue
            if how == "unknown":  # withdrawn, or finished since and pushed out: the state cannot tell
                out.append(f"request {req_id} ({prior.get('action')}, {prior.get('status')}, requested by "
                           f"{prior.get('by', '?')}) gone: withdrawn by its requester, or finished and forgotten "
                           f"since (the state keeps {cluster_state.REQUESTS_MAX} finished records per requester"
                           + (", or 64 in all under rules 1" if cluster_state.rules(after) < 2 else "")
                           + ", and no withdrawal of it among the answers it keeps)")
                continue
            out.append(f"request {req_id} ({prior.get('action')}, {prior.get('status')}, requested by "
                       f"{prior.get('by', '?')}) forgotten (finished records are bounded per requester)")
    was_v, now_v = _d(before.get("vetoes")), _d(after.get("vetoes"))
    for site in sorted(set(was_v) | set(now_v), key=str):
        if was_v.get(site, 0) != now_v.get(site, 0):
            out.append(f"vetoes by {site}: {was_v.get(site, 0)} -> {now_v.get(site, 0)}")
    return out


def gone_unfinished(before: Any, after: Any) -> dict[str, str]:
    """How each request ``before`` held pending or approved and ``after`` no longer holds left:
    ``{request id: "withdrawn" | "forgotten" | "unknown"}``. A finished record is forgotten too
    (:func:`replicad.core.state._bounded_requests`: :data:`~replicad.core.state.REQUESTS_MAX` per
    requester), so a record gone over many commands proves nothing by itself. ``"withdrawn"`` only
    when the state proves it: a kept answer (``applied_ops``) of its requester's withdrawal of it, or,
    under rules 2 and later before and after, its requester holding fewer than ``REQUESTS_MAX``
    finished records (a forgetting leaves that many, and only a forgetting removes one);
    ``"forgotten"`` when a kept answer names it forgotten; else ``"unknown"``. Requests gone finished
    are not listed. Pure; never raises (a malformed state: ``{}``)."""
    out: dict[str, str] = {}
    try:
        was, now = _d(_d(before).get("requests")), _d(_d(after).get("requests"))
        gone = {r: _d(p) for r, p in was.items() if r not in now and _d(p).get("status") in ("pending", "approved")}
        if not gone:
            return out
        withdrawn, forgotten = set(), set()
        for result in _d(_d(after).get("applied_ops")).values():
            result = _d(result)
            if result.get("ok") is not True:
                continue
            if result.get("status") == "withdrawn" and result.get("request") in gone and \
                    result.get("withdrawn_by") == gone[result["request"]].get("by"):
                withdrawn.add(result["request"])
            for f in result.get("forgotten") or () if isinstance(result.get("forgotten"), list) else ():
                if isinstance(f, dict) and f.get("request") in gone:
                    forgotten.add(f["request"])
        bounded = cluster_state.rules(_d(before)) >= 2 and cluster_state.rules(_d(after)) >= 2
        finished: dict[Any, int] = {}
        for entry in now.values():
            entry = _d(entry)
            if entry.get("status") not in ("pending", "approved"):
                finished[entry.get("by")] = finished.get(entry.get("by"), 0) + 1
        for req_id, prior in gone.items():
            if req_id in withdrawn or (req_id not in forgotten and bounded and
                                       finished.get(prior.get("by"), 0) < cluster_state.REQUESTS_MAX):
                out[req_id] = "withdrawn"
            else:
                out[req_id] = "forgotten" if req_id in forgotten else "unknown"
    except Exception:  # a malformed state: _requests says it cannot compare
        return {}
    return out


def withdrawn_after_approval(before: Any, after: Any) -> list[dict]:
    """The requests ``before`` held pending or approved, with the approval of a site other than
    their requester, that ``after`` no longer holds and that :func:`gone_unfinished` proves their
    requester withdrew (the requester's own veto): ``[{"request", "action", "by", "voided": [site]}]``
    in ``before``'s order. A record that may have finished and been forgotten since is not listed
    (its line says "withdrawn ..., or finished and forgotten", at the catch-up's level, not counted):
    an honest requester is not named. What the live ``AUDIT request ... withdrawn by its requester
    ... after ... approved it`` ERROR line says, for a site that caught up from a full state (attack
    review R16, F1). Pure; never raises."""
    out = []
    try:
        ends = gone_unfinished(before, after)
        for req_id, prior in _d(_d(before).get("requests")).items():
            prior = _d(prior)
            if ends.get(req_id) != "withdrawn":
                continue
            voided = [str(s) for s in (prior.get("approvals") or ()) if s != prior.get("by")]
            if voided:
                out.append({"request": req_id, "action": prior.get("action"), "by": prior.get("by"), "voided": voided})
    except Exception:  # a malformed state: _requests says it cannot compare
        return []
    return out


def _outcome(entry: dict) -> str:
    if entry.get("status") == "vetoed":
        return f"; vetoed by {entry.get('vetoed_by')}"
    if entry.get("status") in ("applied", "failed") and entry.get("result") is not None:
        return f": {facts_text(args_summary(entry.get('result')))}"
    if entry.get("status") == "approved":
        return f"; takes effect when the cooling-off ends (majority clock {_when(entry.get('effective_ns'))})"
    return ""


SECTIONS: tuple[tuple[str, Callable[[dict, dict], list[str]]], ...] = (
    ("rules", _rules), ("membership", _membership), ("sites and revocations", _sites), ("requests", _requests),
    ("volumes", _volumes))
"""The parts compared, in the order their lines are logged: the governance parts (bounded together
by :data:`FACTS_MAX`), then the volumes (:data:`VOLUME_FACTS_MAX`)."""
VOLUME_SECTIONS = ("volumes",)
"""The parts of :data:`SECTIONS` bounded by :data:`VOLUME_FACTS_MAX`."""


def state_change_parts(before: Any, after: Any) -> tuple[list[str], list[str]]:
    """``(governance, volumes)``: the lines (no prefix) of :func:`state_changes` split by budget:
    rules, membership, sites and revocations, requests and vetoes; then the volumes. Pure; never
    raises: a part that cannot be compared gives ``cannot compare PART: ERROR`` in its list."""
    before, after = _d(before), _d(after)
    governance: list[str] = []
    volumes: list[str] = []
    for part, compare in SECTIONS:
        out = volumes if part in VOLUME_SECTIONS else governance
        try:
            out.extend(compare(before, after))
        except Exception as exc:  # a malformed state: say so, go on
            out.append(f"cannot compare {part}: {type(exc).__name__}: {str(exc)[:200]}")
    return governance, volumes


def state_changes(before: Any, after: Any) -> list[str]:
    """Lines (no prefix) naming each cluster-wide fact that differs from ``before`` to ``after``
    (module docstring), unbounded, in the order of :data:`SECTIONS` (the governance facts, then
    the volumes): :func:`install_report` bounds them. Pure; never raises: a part that cannot be
    compared gives ``cannot compare PART: ERROR``."""
    governance, volumes = state_change_parts(before, after)
    return governance + volumes


def _overlap_new(was: list[dict], now: list[dict]) -> tuple[list[dict], bool]:
    """The records of ``now`` past its longest start that ends ``was`` (rules 1..3: a window of
    the last ``state.AUDIT_MAX``), and whether such an overlap was found."""
    for overlap in range(min(len(was), len(now)), 0, -1):
        if now[0] == was[-overlap] and now[:overlap] == was[-overlap:]:
            return now[overlap:], True
    return now, not was and not now


def _legacy(record: dict) -> dict:
    """A record as rules 1..3 kept it (without the ``signer`` and ``n`` of rules 4)."""
    return {k: v for k, v in record.items() if k not in ("signer", "n")}


def new_audit_records(before: Any, after: Any) -> tuple[list[dict], bool]:
    """``(records, complete)``: the ``audit`` records ``after`` holds that ``before`` did not.
    Under rules 1..3 the state keeps the last ``state.AUDIT_MAX``: ``after``'s list is ``before``'s
    with the new ones appended and the oldest dropped, so the new ones follow the overlap. Under
    rules 4 (``state.RULES_AUDIT_BY_SIGNER``) the list is cut by signing site (``state.audit_trim``:
    a flood drops only its own share's records, from anywhere in the list) and each record carries
    its command's count ``n``: the new ones are those past ``before``'s count (``applied``), and
    the records kept from before the raise (``n`` None) follow the overlap as under rules 1..3.
    ``complete`` is False when older records of the commands covered may be gone (no overlap: more
    commands than the list keeps, or ``before`` held none; rules 4: a share dropped a record of a
    command past ``before``'s count, ``state.audit_kept_since``). Pure; never raises."""
    was = [r for r in (_d(before).get("audit") or ()) if isinstance(r, dict)] \
        if isinstance(_d(before).get("audit"), list) else []
    now = [r for r in (_d(after).get("audit") or ()) if isinstance(r, dict)] \
        if isinstance(_d(after).get("audit"), list) else []
    if cluster_state.rules(_d(after)) < cluster_state.RULES_AUDIT_BY_SIGNER:
        return _overlap_new(was, now)
    since = applied(before)
    counted = [r for r in now if _count(r.get("n")) is not None and r["n"] > since]
    legacy = [r for r in now if r.get("n") is None]
    complete = cluster_state.audit_kept_since(_d(after), since) is True
    if legacy:
        old = [_legacy(r) for r in was if _count(r.get("n")) is None]
        fresh, found = _overlap_new(old, [_legacy(r) for r in legacy])
        return legacy[len(legacy) - len(fresh):] + counted, complete and found
    return counted, complete


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def dropped_text(after: Any, since: int) -> str:
    """Rules 4: the shares whose records of commands past ``since`` the state dropped
    (``state.AUDIT_DROPPED``), largest first: ``site-c 5210, unattributed 12`` (records each dropped
    in all, the flood of one signing site pushing out only its own); "" when none did. Never raises."""
    dropped = _d(after).get(cluster_state.AUDIT_DROPPED)
    shares = []
    for share, entry in (dropped.items() if isinstance(dropped, dict) else ()):
        if isinstance(entry, list) and len(entry) == 2 and _count(entry[0]) is not None and \
                (_count(entry[1]) is None or entry[1] > since):
            shares.append((entry[0], str(share) or "unattributed"))
    return ", ".join(f"{name} {n}" for n, name in sorted(shares, key=lambda x: (-x[0], x[1])))


def _when(at_ns: Any) -> str:
    if not isinstance(at_ns, int) or isinstance(at_ns, bool) or not 0 <= at_ns < 2**63:
        return str(at_ns)
    return datetime.datetime.fromtimestamp(at_ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_text(record: dict) -> str:
    """One ``audit`` record in words: ``command set_retention by site-a volume=ehr: applied
    (stamped 2026-...Z)`` or ``...: refused bad_signature (...)``."""
    volume = f" volume={record.get('volume')}" if record.get("volume") else ""
    outcome = "applied" if record.get("ok") else f"refused {record.get('error')}"
    return f"command {record.get('op')} by {record.get('by')}{volume}: {outcome} (stamped {_when(record.get('at_ns'))})"


def refused_text(group: tuple, n: int, first_ns: Any, last_ns: Any) -> str:
    """``n`` refused ``audit`` records of one ``(op, by, error[, checked])`` in words: ``6000
    command(s) veto claiming signer site-c: refused not_found (claimed stamps 2026-...Z .. 2026-...Z)``;
    ``checked`` (rules 4: the record's ``signer`` is its ``by``, the signature was checked) says
    ``signed by site-c (signature checked)`` instead of the claim."""
    op, by, error = group[:3]
    stamps = _when(first_ns) if first_ns == last_ns else f"{_when(first_ns)} .. {_when(last_ns)}"
    who = f"signed by {by} (signature checked)" if len(group) > 3 and group[3] else f"claiming signer {by}"
    return f"{n} command(s) {op} {who}: refused {error} (claimed stamps {stamps})"


def listed_text(record: dict, n: int, first_ns: Any, last_ns: Any) -> str:
    """``n`` identical accepted ``audit`` records (same op, signer and volume; ``record`` the first)
    in words: :func:`record_text` for one, else ``command add_volume by site-c volume=ehr: applied
    2000 times (stamped 2026-...Z .. 2026-...Z)``."""
    if n <= 1:
        return record_text(record)
    volume = f" volume={record.get('volume')}" if record.get("volume") else ""
    stamps = _when(first_ns) if first_ns == last_ns else f"{_when(first_ns)} .. {_when(last_ns)}"
    return f"command {record.get('op')} by {record.get('by')}{volume}: applied {n} times (stamped {stamps})"


def group_listed(listed: list[dict]) -> list[tuple[dict, int, Any, Any]]:
    """The accepted, not routine records ``listed`` (oldest first) as lines: ``[(first record, count,
    first at_ns, last at_ns)]``. Records of an (op, signer, volume) met more than
    :data:`LISTED_EACH_MAX` times are one entry with their count, at the place of the first (attack
    review R16, F2: a flood of one site's identical accepted commands is one line); the others one
    entry each, in their order."""
    def key(record: dict) -> tuple:
        return str(record.get("op")), str(record.get("by")), str(record.get("volume"))

    counts: dict[tuple, int] = {}
    for record in listed:
        counts[key(record)] = counts.get(key(record), 0) + 1
    out: list[list] = []
    groups: dict[tuple, list] = {}
    for record in listed:
        k = key(record)
        if counts[k] <= LISTED_EACH_MAX:
            out.append([record, 1, record.get("at_ns"), record.get("at_ns")])
            continue
        if k not in groups:
            groups[k] = [record, 0, record.get("at_ns"), None]
            out.append(groups[k])
        groups[k][1] += 1
        groups[k][3] = record.get("at_ns")
    return [tuple(g) for g in out]  # type: ignore[misc]


def _split(records: list[dict]) -> tuple[list[dict], dict[tuple, int], dict[tuple, list]]:
    """``(accepted listed, {(routine op, signer): count}, {(op, by, error, signature checked): [count,
    first at_ns, last at_ns]})`` of ``records`` (oldest first; :data:`ROUTINE_OPS`), the groups in the order
    first met."""
    routine: dict[tuple, int] = {}
    listed: list[dict] = []
    refused: dict[tuple, list] = {}
    for record in records:
        if not record.get("ok"):
            checked = isinstance(record.get("signer"), str) and record.get("signer") == record.get("by")  # rules 4
            key = (str(record.get("op")), str(record.get("by")), str(record.get("error")), checked)
            group = refused.setdefault(key, [0, record.get("at_ns"), None])
            group[0] += 1
            group[2] = record.get("at_ns")
        elif record.get("op") in ROUTINE_OPS:
            key = (str(record.get("op")), str(record.get("by")))
            routine[key] = routine.get(key, 0) + 1
        else:
            listed.append(record)
    return listed, routine, refused


def routine_text(routine: dict[tuple, int]) -> str:
    """Routine accepted records counted per (command, signer), the largest counts first (at most
    :data:`ROUTINE_GROUPS_SHOWN`): ``31 commit_snapshot by site-a, 6 site_verdict by site-b``."""
    groups = sorted(routine.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{n} {op} by {by}" for (op, by), n in groups[:ROUTINE_GROUPS_SHOWN])
    rest = groups[ROUTINE_GROUPS_SHOWN:]
    if rest:
        text += f" and {sum(n for _, n in rest)} of {len(rest)} more (command, signer)"
    return text


def install_report(before: Any, after: Any, *, at_start: bool, mark: int | None, missing: str | None = None,
                   first_start: bool = False, mark_name: str = "audit.seen") -> list[tuple[int, str]]:
    """The ``(level, line)`` to log for a full state installed over ``before`` (attacker review r13,
    F3). Pure; never raises for any input.

    Args:
        before / after: the applied state before the install and the installed one.
        at_start: this site's own Raft dump loaded at start (``before`` is then the initial state),
            not a state received from the leader.
        mark: this site's audit mark (``site.seen.SeenMark.mark``: the applied count it saw live),
            None while unknown (``missing`` says why) .
        first_start: the site never joined yet (``SeenMark.before_first_join``).

    Returns: one summary line naming the commands covered and the counts, then one line per
    changed fact (:func:`state_change_parts`: the governance facts, at most :data:`FACTS_MAX`, then
    the volumes', at most :data:`VOLUME_FACTS_MAX`), one counting the routine accepted records per
    (command, signer) (:data:`ROUTINE_OPS`, :func:`routine_text`), one per other accepted audit
    record of the commands past the mark, identical ones (op, signer, volume) past
    :data:`LISTED_EACH_MAX` one line counted (:func:`new_audit_records`, :func:`group_listed`, at
    most :data:`RECORDS_MAX` lines), then one per (op, claimed signer, error) of the refused ones
    (:func:`refused_text`, at most :data:`RECORDS_MAX`, the largest counts), each starting with the
    same ``AUDIT (...)`` head. Levels: WARNING when the covered commands go past the mark (or the
    mark is missing; ERROR for the line of a request withdrawn after another site approved it,
    :func:`withdrawn_after_approval`, as the live line); INFO on a first start (``committed
    before this site first joined``); a state not past the mark gives its summary line only, at
    INFO (logged here before, live or as the lines of an earlier catch-up that received those
    commands whole: the mark cannot tell which, so the line does not claim they were seen live; as
    the log replayed at start is not logged again).
    """
    was, now = applied(before), applied(after)
    seen_upto = was if mark is None else max(was, mark)
    lo = seen_upto + 1
    source = "this site's own Raft dump, loaded at start" if at_start else "received whole from the leader"
    if first_start:
        level, head = logging.INFO, f"AUDIT (committed before this site first joined; {source}, commands {was + 1}..{now})"
    elif mark is None and missing is not None:
        level, head = logging.WARNING, (f"AUDIT (committed while this site was away, or before: its mark {mark_name} "
                                        f"was {missing}; {source}, commands {was + 1}..{now})")
    elif lo > now:
        return [(logging.INFO, f"AUDIT (replayed: {source}, commands {was + 1}..{now}, each logged here before, "
                               f"live or in an earlier catch-up's lines: mark {mark}) nothing new to audit")]
    else:
        level, head = logging.WARNING, f"AUDIT (committed while this site was away; {source}, commands {lo}..{now})"
    governance, volume_facts = state_change_parts(before, after)
    facts = governance + volume_facts
    records, complete = new_audit_records(before, after)
    if not first_start and (mark is not None or missing is None):  # rules 4: each record's command count
        records = [r for r in records if _count(r.get("n")) is None or r["n"] >= lo]
    if not first_start and (mark is not None or missing is None) and now - lo + 1 < len(records):
        records = records[len(records) - max(0, now - lo + 1):]  # at most one record per command past the mark
    listed, routine, refused = _split(records)
    grouped = group_listed(listed)
    n_refused = sum(g[0] for g in refused.values())
    basis = ("the state's facts (this site's state before is the empty one it starts from: every fact is listed)"
             if was == 0 else f"what changed between command {was} (this site's state before) and command {now}")
    summary = (f"{head}: the entries were not applied here one by one; {basis}: {len(facts)} fact(s); "
               f"{len(listed)} audit record(s) of those commands"
               + (f" (in {len(grouped)} line(s): identical ones counted per command, signer and volume)"
                  if len(grouped) < len(listed) else "")
               + (f" listed, {sum(routine.values())} routine one(s) ({', '.join(sorted({op for op, _ in routine}))}) "
                  f"counted per command and signer" if routine else "")
               + (f"; {n_refused} refused command(s), counted per command, claimed signer and error (a refused "
                  + ("record is the command's unsigned claim)" if cluster_state.rules(_d(after))
                     < cluster_state.RULES_AUDIT_BY_SIGNER else "record is the command's claim unless its line says "
                     "its signature was checked)") if refused else "")
               + ("" if complete else
                  f"; the state keeps the last {cluster_state.AUDIT_MAX} records: older ones of these commands are not "
                  f"kept" if cluster_state.rules(_d(after)) < cluster_state.RULES_AUDIT_BY_SIGNER else
                  f"; the state keeps each signing site's share of the records (rules "
                  f"{cluster_state.RULES_AUDIT_BY_SIGNER}): older records of these commands dropped, by share: "
                  f"{dropped_text(after, was) or 'kept from before the raise'}")
               + ("; each follows" if facts or listed or refused or routine else ""))
    lines = [(level, summary)]
    voiding = tuple(f"request {w['request']} (" for w in withdrawn_after_approval(before, after))
    loud = logging.ERROR if level == logging.WARNING else level  # as the live line (site.daemon)
    lines += [(loud if fact.startswith(voiding) and " gone unfinished: " in fact else level, f"{head} {fact}")
              for fact in governance[:FACTS_MAX]]
    if len(governance) > FACTS_MAX:
        lines.append((level, f"{head} ... and {len(governance) - FACTS_MAX} more fact(s) of the rules, membership, "
                             f"sites and requests: see `replicad status` and `replicad requests`"))
    lines += [(level, f"{head} {fact}") for fact in volume_facts[:VOLUME_FACTS_MAX]]
    if len(volume_facts) > VOLUME_FACTS_MAX:
        lines.append((level, f"{head} ... and {len(volume_facts) - VOLUME_FACTS_MAX} more fact(s) of the volumes: "
                             f"see `replicad status`"))
    if routine:
        lines.append((level, f"{head} routine audit records (accepted, counted): {routine_text(routine)}"))
    lines += [(level, f"{head} audit record: {listed_text(*g)}") for g in grouped[-RECORDS_MAX:]]
    if len(grouped) > RECORDS_MAX:
        older = grouped[:-RECORDS_MAX]
        lines.append((level, f"{head} ... and {sum(g[1] for g in older)} older audit record(s) in {len(older)} "
                             f"line(s) not listed: see GET /v1/audit"))
    groups = sorted(refused.items(), key=lambda kv: -kv[1][0])  # stable: the largest counts, then first met
    lines += [(level, f"{head} refused: {refused_text(g, n, first, last)}") for g, (n, first, last) in
              groups[:RECORDS_MAX]]
    if len(groups) > RECORDS_MAX:
        rest = groups[RECORDS_MAX:]
        lines.append((level, f"{head} ... and {sum(n for _, (n, _f, _l) in rest)} refused command(s) of "
                             f"{len(rest)} more (command, signer, error) not counted here: see GET /v1/audit"))
    return lines
