"""What a request changes, for the person who approves it.

A request's ``args`` are often a whole document: a detection policy (18 keys, two lists of
ransom-note patterns), a retention map, the cluster's membership. Printed whole, the one key
that matters (``min_score 0.02 -> 0.5``, a weakening) is buried in kilobytes of regexes.
:func:`request_changes` compares such args with what they replace and gives only the keys that
differ; the full ``args`` stay in the request record (``--json``).

What "old" is: while a request waits (``pending``, ``approved``, ``expired``) or once it ended
without taking effect (``vetoed``, ``failed``, ``withdrawn``...) the agreed state now (the Raft
view this site holds: what it asks compared with what is in force); once applied, only what the
record itself names as replaced (a retention change's ``previous``, a maximum size's
``result.previous``) — the state now already holds the new values — and for an applied
detection policy, whose record names no previous one, the defaults (``against`` ``"defaults"``:
``compared with the defaults: min_score: 0.02 -> 0.05 (17 other keys as the defaults)``). Other
records (an applied membership or role change) have no comparison: ``changes`` is None and the
caller summarises the args (:func:`args_summary`).

Every value here is another site's word (a request's args are whatever its requester sent
within the state machine's checks): the functions never raise on any shape and copy nothing
unbounded into their answer beyond the args themselves.
"""
from __future__ import annotations

from typing import Any

from replicad.core.units import format_duration, size_text

WAITING = ("pending", "approved", "expired")
"""Request statuses compared with the agreed state now (it has not taken effect)."""


def _value_change(key: str, old: Any, new: Any) -> dict | None:
    """One key's change: None when equal; ``{"key", "added", "removed"}`` for two lists (items
    in order of ``new`` / ``old``), else ``{"key", "old", "new"}``."""
    if old == new:
        return None
    if isinstance(old, list) and isinstance(new, list):
        return {"key": key, "added": [x for x in new if x not in old], "removed": [x for x in old if x not in new]}
    return {"key": key, "old": old, "new": new}


def _map_changes(old: dict, new: dict) -> tuple[list[dict], int]:
    """``(changes, unchanged)`` of two flat maps: the keys that differ, in the order of ``new``
    then keys only in ``old`` (new value None); ``unchanged`` counts the equal keys."""
    out = []
    for key in [*new, *(k for k in old if k not in new)]:
        change = _value_change(str(key), old.get(key), new.get(key))
        if change is not None:
            out.append(change)
    return out, sum(1 for k in new if k in old and old[k] == new[k])


def _members_changes(old: list, new: list) -> tuple[list[dict], int]:
    """``(changes, unchanged)`` of two membership lists (``{site_id, raft, kind, keys}``): a
    site added or removed as one change of key ``site_id`` (the other side None, the entry's
    ``kind``/``raft``/key count as value), a changed entry as one change per field
    (``site_id.raft``, ``site_id.kind``, ``site_id.keys`` with ``added``/``removed``)."""
    def by_id(members: list) -> dict:
        return {m.get("site_id"): m for m in members if isinstance(m, dict)}

    def brief(m: dict) -> str:
        keys = m.get("keys") if isinstance(m.get("keys"), list) else []
        return f"{m.get('kind')} at {m.get('raft')}, {len(keys)} key(s)"

    cur, want = by_id(old), by_id(new)
    out: list[dict] = []
    unchanged = 0
    for site in sorted(set(cur) | set(want), key=str):
        if site not in cur:
            out.append({"key": str(site), "old": None, "new": brief(want[site])})
        elif site not in want:
            out.append({"key": str(site), "old": brief(cur[site]), "new": None})
        else:
            fields = [c for c in (_value_change(f"{site}.{f}", cur[site].get(f), want[site].get(f))
                                  for f in ("kind", "raft", "keys")) if c is not None]
            out.extend(fields)
            unchanged += not fields
    return out, unchanged


def request_changes(r: dict, view: dict) -> dict | None:
    """What request record ``r`` (:func:`replicad.core.state.list_requests`) changes, compared
    with ``view`` (the Raft state) while it waits or with the ``previous`` it records once
    applied. Pure; never raises.

    Returns ``{"against": "now" | "before" | "defaults", "changes": [change], "unchanged": int}`` (a change
    ``{"key", "old", "new"}`` or, for lists, ``{"key", "added", "removed"}``; ``unchanged`` the
    keys of the document equal to what they replace), or None when there is nothing to compare
    with (an action whose args are no document, an unknown volume, a record that names no
    previous value once applied)."""
    action, status = r.get("action"), r.get("status")
    args = r.get("args") if isinstance(r.get("args"), dict) else {}
    vol = (view.get("volumes") or {}).get(args.get("volume")) if isinstance(view.get("volumes"), dict) else None
    waiting = status != "applied"  # waiting, or ended without effect: compared with the state now
    against = "now" if waiting else "before"
    unit = "key"  # what ``unchanged`` counts (changes_text)
    from replicad.core.state import detection_policy, max_size_bytes  # the CLI imports this module for its text

    try:
        if action == "set_detection" and waiting and isinstance(vol, dict) and isinstance(args.get("policy"), dict):
            changes, same = _map_changes(detection_policy(vol), args["policy"])
        elif action == "set_detection" and not waiting and isinstance(args.get("policy"), dict):  # none recorded
            from replicad.core.anomaly import POLICY_DEFAULTS, with_defaults

            changes, same = _map_changes(with_defaults(dict(POLICY_DEFAULTS)), args["policy"])
            against = "defaults"
        elif action == "set_retention" and isinstance(args.get("retention"), dict):
            old = vol.get("retention") if waiting and isinstance(vol, dict) else r.get("previous") \
                if status == "applied" else None
            if not isinstance(old, dict):
                return None
            changes, same = _map_changes(old, args["retention"])
        elif action == "set_max_size" and "max_size_bytes" in args:
            result = r.get("result") if isinstance(r.get("result"), dict) else {}
            old = max_size_bytes(vol) if waiting and isinstance(vol, dict) else result.get("previous") \
                if status == "applied" else None
            if old is None:
                return None
            change = _value_change("max_size_bytes", old, args["max_size_bytes"])
            changes, same = ([change] if change else []), int(change is None)
        elif action == "set_members" and waiting and isinstance(args.get("members"), list):
            inc = view.get("incarnation") if isinstance(view.get("incarnation"), dict) else {}
            changes, same = _members_changes(inc.get("members") or [], args["members"])
            unit = "site"  # what stays as it is: whole members, not keys
        elif action in ("promote", "demote") and waiting and isinstance(vol, dict):
            new = args.get("to") if action == "promote" else None
            change = _value_change("primary", vol.get("primary"), new)
            changes, same = ([change] if change else []), int(change is None)
        elif action == "mark_verdict" and waiting and isinstance(vol, dict):
            snaps = vol.get("snapshots") if isinstance(vol.get("snapshots"), dict) else {}
            snap = snaps.get(args.get("seq"), snaps.get(str(args.get("seq"))))
            if not isinstance(snap, dict):
                return None
            change = _value_change(f"#{args.get('seq')} verdict", snap.get("verdict"), args.get("verdict"))
            # an approved clean confirms the snapshot: the slow windows then measure from it
            confirm = _value_change(f"#{args.get('seq')} confirmed by a person", bool(snap.get("confirmed")), True) \
                if args.get("verdict") == "clean" else None
            changes = [c for c in (change, confirm) if c is not None]
            same = int(change is None) + int(args.get("verdict") == "clean" and confirm is None)
        else:
            return None
    except (KeyError, TypeError, ValueError, AttributeError):  # a record of a shape this code does not know
        return None
    return {"against": against, "changes": changes, "unchanged": same, **({"unit": unit} if unit != "key" else {})}


def document_changes(old: Any, new: Any) -> dict | None:
    """What document ``new`` (a detection policy, a retention map) changes from ``old``, in the
    shape of :func:`request_changes` with ``against`` ``"before"`` (for :func:`changes_text`:
    ``min_score: 0.02 -> 0.05 (17 other keys as before)``); None when either is not a map.
    Pure; never raises."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    try:
        changes, same = _map_changes(old, new)
    except (TypeError, ValueError):  # unhashable or uncomparable values of a hostile shape
        return None
    return {"against": "before", "changes": changes, "unchanged": same}


def with_changes(requests: list[dict], view: dict) -> list[dict]:
    """``requests`` each with ``changes`` (:func:`request_changes`; absent when None). Pure."""
    out = []
    for r in requests:
        diff = request_changes(r, view)
        out.append({**r, "changes": diff} if diff is not None else r)
    return out


MOOT_BY_DIFF = ("set_retention", "set_detection", "set_max_size", "set_members", "mark_verdict")
"""Actions whose request is moot when :func:`request_changes` finds nothing that differs from the
state now. Not ``promote``/``demote``: a role change to the role in force still starts a new
epoch (fencing), so it is never called moot here."""


def moot_reason(r: dict, view: dict) -> str | None:
    """Why request record ``r`` (:func:`replicad.core.state.list_requests`), still waiting
    (``pending`` or ``approved``), would change nothing if it applied now: its effect is in force
    already in ``view`` (the Raft state this site holds). A sentence: ``site site-c is revoked
    already (its keys, by site-a)``, ``volume pacs is no longer in the cluster state``,
    ``snapshots #3, #4 of ehr are no longer in the cluster state``, ``what it asks is in force
    already: nothing differs (17 keys as now)``; None when it would change something, when it
    no longer waits, or when this cannot be told from ``view``. Display only (``replicad
    requests``): the request stays as it is and may still be approved, vetoed or expire. Pure;
    never raises on any shape."""
    if not isinstance(r, dict) or r.get("status") not in ("pending", "approved") or not isinstance(view, dict):
        return None
    action = r.get("action")
    args = r.get("args") if isinstance(r.get("args"), dict) else {}
    volumes = view.get("volumes") if isinstance(view.get("volumes"), dict) else {}
    try:
        if action == "revoke_site":
            return _revocation_moot(args, view)
        if action == "remove_volume" and isinstance(args.get("volume"), str) and args["volume"] not in volumes:
            return f"volume {args['volume']} is no longer in the cluster state"
        if action == "prune_snapshots" and isinstance(args.get("volume"), str) and isinstance(args.get("seqs"), list) \
                and args["seqs"]:
            vol = volumes.get(args["volume"])
            snaps = vol.get("snapshots") if isinstance(vol, dict) and isinstance(vol.get("snapshots"), dict) else {}
            if not any(seq in snaps or str(seq) in snaps for seq in args["seqs"]):
                shown = ", ".join(f"#{seq}" for seq in args["seqs"][:ITEMS_SHOWN])
                more = f" and {len(args['seqs']) - ITEMS_SHOWN} more" if len(args["seqs"]) > ITEMS_SHOWN else ""
                return f"snapshots {shown}{more} of {args['volume']} are no longer in the cluster state"
            return None
        if action in MOOT_BY_DIFF:
            diff = request_changes(r, view)
            if diff is not None and diff["against"] == "now" and not diff["changes"]:
                return f"what it asks is in force already: nothing differs ({diff['unchanged']} key(s) as now)"
    except (KeyError, TypeError, ValueError, AttributeError):  # a shape this code does not know: no claim
        return None
    return None


def with_moot(requests: list[dict], view: dict) -> list[dict]:
    """``requests`` each with ``moot`` (:func:`moot_reason`; absent when None). Pure."""
    out = []
    for r in requests:
        reason = moot_reason(r, view)
        out.append({**r, "moot": reason} if reason is not None else r)
    return out


def _revocation_moot(args: dict, view: dict) -> str | None:
    """A revocation is moot when its site is revoked now (not rejoined with a new key since) and
    every key it names is among the keys revoked: a key it names that is not revoked yet (a site
    rebuilt but not registered again) is still something it would revoke."""
    from replicad.core.identity import parse_public_key

    site = args.get("site_id")
    revoked = view.get("revoked") if isinstance(view.get("revoked"), dict) else {}
    entry = revoked.get(site) if isinstance(site, str) else None
    if not isinstance(entry, dict) or "rejoined_ns" in entry or not isinstance(args.get("keys"), list):
        return None
    done = {bytes(k) for k in entry.get("keys") or () if isinstance(k, (bytes, bytearray))}
    try:
        named = {parse_public_key(k) for k in args["keys"]}
    except (ValueError, TypeError):
        return None
    if not named <= done:
        return None
    return f"site {site} is revoked already ({len(done)} key(s), by a request of {entry.get('by')})"


def args_summary(args: Any, limit: int = 400) -> dict:
    """``args`` with every value whose JSON text is longer than ``limit`` characters replaced by
    a count: a map by ``"<N keys>"``, a list by ``"<N items>"``, a string by its first ``limit``
    characters and ``"..."``; the full args stay in the record. Pure."""
    import json

    if not isinstance(args, dict):
        return {}
    out: dict = {}
    for key, value in args.items():
        try:
            size = len(json.dumps(value, default=str))
        except (TypeError, ValueError):
            size = limit + 1
        if size <= limit:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = f"<{len(value)} keys>"
        elif isinstance(value, list):
            out[key] = f"<{len(value)} items>"
        else:
            out[key] = str(value)[:limit] + "..."
    return out


def args_brief(action: Any, args: Any) -> str:
    """A request's args in one short line, for a request :func:`request_changes` has nothing to
    compare for (a revocation, a prune): ``revoke site-c (keys: 'ed25519:AAAA...')``-like
    ``site_id: site-c; keys: 'ed25519:...'``; a list of at most :data:`ITEMS_SHOWN` items named,
    a longer one counted (:func:`value_text`), a document counted. Pure; never raises."""
    if not isinstance(args, dict) or not args:
        return str(action or "?")
    parts = []
    for key, value in sorted(args.items(), key=lambda kv: str(kv[0])):
        if isinstance(value, list) and value and all(isinstance(x, (str, int)) for x in value):
            parts.append(f"{key}: {_items_text(value)}")
        else:
            parts.append(f"{key}: {value_text(value, str(key))}")
    return "; ".join(parts)


def approvals_text(approvals: Any, needed: Any) -> str:
    """``2 of 2`` approvals; past the number needed (a revocation waits for every member's word
    during its cooling-off, or more sites approved than needed) ``3 (2 needed)``, never ``3 of 2``.
    Pure."""
    n = len(approvals) if isinstance(approvals, (list, tuple)) else 0
    if isinstance(needed, int) and n > needed:
        return f"{n} ({needed} needed)"
    return f"{n} of {needed}"


ITEMS_SHOWN = 3
"""List items a change text names (``added 'a', 'b', 'c' and 4 more``)."""
ITEM_CHARS = 60
"""Characters of one list item (a ransom-note regex) a change text shows."""


def value_text(value: Any, key: str = "") -> str:
    """A value for people: a ``*_s`` number as a duration (``604800`` -> ``7d``), a ``*_bytes``
    number as a size, None as ``none``, a bool as ``true``/``false``, a list as its item count,
    a string longer than :data:`ITEM_CHARS` cut with ``...``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and key.endswith("_s"):
        return format_duration(value)
    if isinstance(value, int) and key.endswith("_bytes"):
        return size_text(value)
    if isinstance(value, (list, dict)):
        return f"{len(value)} {'items' if isinstance(value, list) else 'keys'}"
    text = str(value)
    return text if len(text) <= ITEM_CHARS else text[:ITEM_CHARS] + "..."


def _items_text(items: list) -> str:
    shown = ", ".join(repr(value_text(x)) for x in items[:ITEMS_SHOWN])
    return shown + (f" and {len(items) - ITEMS_SHOWN} more" if len(items) > ITEMS_SHOWN else "")


def change_text(change: dict) -> str:
    """One change for people: ``min_score: 0.02 -> 0.01``, ``lock: 7d -> 1d``,
    ``ransom_notes: added 'x'; removed 'y'``; a key without its unit suffix."""
    key = str(change.get("key"))
    shown = key.removesuffix("_bytes").removesuffix("_s")
    if "added" in change or "removed" in change:
        parts = [f"{word} {_items_text(change[word])}" for word in ("added", "removed")
                 if isinstance(change.get(word), list) and change[word]]
        return f"{shown}: {'; '.join(parts) or 'reordered'}"
    return f"{shown}: {value_text(change.get('old'), key)} -> {value_text(change.get('new'), key)}"


def changes_text(diff: dict) -> str:
    """A :func:`request_changes` answer in one line: the changes, ``, ``-separated, then how
    many keys stay as they are (``min_score: 0.02 -> 0.01 (17 other keys as now)``); compared with
    the defaults, it says so first."""
    changes = diff.get("changes") or []
    against = {"now": "now", "defaults": "the defaults"}.get(diff.get("against"), "before")
    text = ", ".join(change_text(c) for c in changes) if changes else f"nothing differs from {against}"
    unchanged = diff.get("unchanged") or 0
    unit = diff.get("unit") if diff.get("unit") in ("key", "site") else "key"  # a membership counts sites
    if changes and unchanged:
        text += f" ({unchanged} other {unit if unchanged == 1 else unit + 's'} as {against})"
    return f"compared with the defaults: {text}" if diff.get("against") == "defaults" and changes else text
