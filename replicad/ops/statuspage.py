"""The status page of a site: read-only, server-rendered HTML at ``GET /`` of the admin API
(issue 16, item 3).

One page, no script, no external resource, refreshed by the browser every
:data:`REFRESH_S` seconds (``<meta http-equiv="refresh">``): the sites and their
reachability, Raft health (leader, quorum, whether this site's view is current), per
volume: this site's role (with ``confirmed``), the epoch, RPO against its target, newest
clean snapshot, standby (none where this site is the primary), then the conditions an operator
must look at (current suspect snapshots: older ones a clean snapshot superseded are listed as
kept, not alerted; verdict disagreements, damaged standbys, revoked sites, the degraded reasons
of the status), the requests waiting for approval, the operations (restore, drill) running here with
their progress, and the open exports (each pins its snapshot here: volume, snapshot, writable,
connections, age, bytes read, idle time against its limit).

**Every value is attacker-influenced** (a request's reason, a volume or site name, an error
message that quotes a path): every value goes through :func:`html.escape` (:func:`_e`), none
is ever put in a tag name, attribute name, URL, style or script; the page is also served with
``Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'`` (no script runs
even if escaping were missed) and ``X-Frame-Options: DENY``.

Access (see ARCHITECTURE.md, "Status page"): role ``viewer``; a browser sends the viewer
token as the password of HTTP Basic authentication (any user name), a script a bearer token.

:func:`render` is pure: its inputs are the status document (``GET /v1/status``), the Raft
view, the operations and the RPO targets; it returns the page as text.
"""

from __future__ import annotations

import datetime
import html
from typing import Any, Iterable, Mapping

from replicad.core.requestdiff import approvals_text
from replicad.core.state import MARKS, disagreement

REFRESH_S = 10
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'"
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
"""Headers of the page's answer (see the module docstring)."""

_STYLE = ("body{font-family:sans-serif;margin:1.2em;color:#111;background:#fff}h1{font-size:1.4em;margin:0}"
          "h2{font-size:1.1em;margin:1.2em 0 .3em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
          "padding:.25em .6em;text-align:left}th{background:#f0f0f0}.ok{color:#070}.warn{color:#a60}"
          ".bad{color:#b00;font-weight:bold}.muted{color:#777}ul{margin:.2em 0}"
          ".bar{display:inline-block;width:10em;height:.8em;border:1px solid #888;vertical-align:middle}"
          ".fill{display:block;height:100%;background:#4a4}")


def _e(value: Any) -> str:
    """HTML-escaped text of any value (quotes too); None is an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return html.escape(str(value), quote=True)


def _cls(word: str, text: Any) -> str:
    """``text`` escaped inside a span of class ``word`` (one of ok, warn, bad, muted: ours, never data)."""
    assert word in ("ok", "warn", "bad", "muted")
    return f'<span class="{word}">{_e(text)}</span>'


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "—"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _bytes(n: Any) -> str:
    """A byte count in binary units (``1.5 MiB``); ``—`` when not a number."""
    if not isinstance(n, int) or isinstance(n, bool):
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _request_changes(r: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """What request ``r`` changes against the agreed ``state``, in one line
    (:func:`replicad.core.requestdiff.changes_text`), or, with nothing to compare (a revocation,
    a prune), its args in brief (:func:`replicad.core.requestdiff.args_brief`)."""
    from replicad.core.requestdiff import args_brief, changes_text, request_changes

    diff = request_changes(dict(r), dict(state))
    return changes_text(diff) if diff is not None else args_brief(r.get("action"), r.get("args"))


def _request_status(r: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """The status cell of a shown request, escaped: its status, and for one whose effect is in
    force already in ``state`` the same ``MOOT: ...`` mark as ``replicad requests``
    (:func:`replicad.core.requestdiff.moot_reason`)."""
    from replicad.core.requestdiff import moot_reason

    reason = moot_reason(dict(r), dict(state))
    if not reason:
        return _e(r.get("status"))
    return _e(r.get("status")) + "; " + _cls("muted", f"MOOT: {reason}: applied, it would change nothing")


def _request_when(r: Mapping[str, Any]) -> str:
    """When a shown request ends: a pending one ``expires ...``, an approved one (cooling off)
    ``takes effect ... unless vetoed``."""
    if r.get("status") == "approved":
        return f"takes effect {_utc(r.get('effective_ns'))} unless vetoed"
    return f"expires {_utc(r.get('expires_ns'))}"


def _utc(ns_or_s: Any, ns: bool = True) -> str:
    if not isinstance(ns_or_s, (int, float)) or isinstance(ns_or_s, bool) or ns_or_s <= 0:
        return "—"
    ts = ns_or_s / 1e9 if ns else float(ns_or_s)
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(head: Iterable[str], rows: list[list[str]], table_id: str, empty: str) -> str:
    """A table of already-escaped cells (head: our own words, escaped anyway)."""
    if not rows:
        return f'<p id="{table_id}" class="muted">{_e(empty)}</p>'
    out = [f'<table id="{table_id}"><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return "\n".join(out) + "</table>"


REPLICA_ROLES = ("replica", "fenced", "divergent")
"""Roles that keep a standby (``site/status.py``); the others act as the volume's primary."""


def export_label(x: Mapping[str, Any]) -> str:
    """What an export serves, for a person: ``VOL#SEQ``; an instant recovery's export
    ``VOL#SEQ + overlay (instant recovery, switch-over pending)`` before its switch-over and
    ``VOL: the live image (instant recovery from #SEQ)`` after it (``serves`` of
    :meth:`Export.to_dict`)."""
    if x.get("serves") == "image":
        return f"{x.get('volume')}: the live image (instant recovery from #{x.get('seq')})"
    if x.get("instant"):
        return f"{x.get('volume')}#{x.get('seq')} + overlay (instant recovery, switch-over pending)"
    return f"{x.get('volume')}#{x.get('seq')}"


def split_suspects(v: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """The suspect snapshots of one volume's status as ``(current, kept)``: ``current`` are newer
    than the newest clean snapshot (an incident nobody resolved: the page is red), ``kept`` are
    older ones a newer clean snapshot superseded (kept for forensics after a restore or a forced
    promotion; not an alert). A suspect cleared by an approved request is clean and in neither.
    The same rule as ``replicad status`` and ``degraded_reasons`` (the newest snapshot is
    suspect). Pure."""
    suspect = sorted(s for s in v.get("suspect") or [] if isinstance(s, int) and not isinstance(s, bool))
    ncl = v.get("newest_clean")
    if not isinstance(ncl, int) or isinstance(ncl, bool):
        return suspect, []
    return [s for s in suspect if s > ncl], [s for s in suspect if s < ncl]


def marked(snaps: Mapping[Any, Any]) -> dict[str, list[int]]:
    """``{site: [seq, ...]}`` of the snapshots carrying a person's suspect mark in that site's name
    (:data:`replicad.core.state.MARKS`), seqs ascending. Pure; malformed entries are ignored."""
    out: dict[str, list[int]] = {}
    for seq, snap in snaps.items():
        if not isinstance(snap, Mapping) or not isinstance(seq, int) or isinstance(seq, bool):
            continue
        for site, m in (snap.get(MARKS) or {}).items():
            if isinstance(m, Mapping) and m.get("verdict") == "suspect":
                out.setdefault(str(site), []).append(seq)
    return {site: sorted(seqs) for site, seqs in out.items()}


def alerts(status: Mapping[str, Any], state: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The conditions worth an alert, as ``(severity, sentence)`` (severity ``bad`` | ``warn``):
    current suspect snapshots (:func:`split_suspects`), verdict disagreements, persons' suspect marks
    (:func:`marked`), damaged or repairing standbys, revoked sites,
    an unsigned site, and the status' ``degraded_reasons`` (when it has them). Pure."""
    out: list[tuple[str, str]] = []
    ident = status.get("identity") or {}
    if ident.get("unsafe_unsigned"):
        out.append(("bad", "this site runs without identity (identity.unsafe_unsigned): commands are not signed"))
    for site, rec in sorted((ident.get("revoked") or {}).items()):
        out.append(("bad", f"site {site} is revoked (by {(rec or {}).get('by')} at {_utc((rec or {}).get('at_ns'))}): "
                           "nothing signed by its old keys is accepted"))
    volumes = (state or {}).get("volumes") or {}
    for name, v in sorted((status.get("volumes") or {}).items()):
        current, _ = split_suspects(v)
        if current:
            out.append(("bad", f"{name}: suspect snapshot(s) {', '.join('#' + str(s) for s in current)} "
                               f"(newest clean: {v.get('newest_clean') if v.get('newest_clean') is not None else 'none'})"))
        snaps = (volumes.get(name) or {}).get("snapshots") or {}
        dis = sorted(seq for seq, snap in snaps.items() if isinstance(snap, Mapping) and disagreement(snap))
        if dis:
            out.append(("bad", f"{name}: the sites' verdicts disagree on {', '.join('#' + str(s) for s in dis)} "
                               "(one site is wrong, broken or lying: replicad evidence)"))
        primary = (volumes.get(name) or {}).get("primary")
        for site, seqs in sorted(marked(snaps).items()):
            held = "a takeover there holds" if site == primary else "its standby holds"  # a primary has no standby
            out.append(("warn", f"{name}: a person marked {', '.join('#' + str(s) for s in seqs)} suspect in {site}'s "
                                f"name (that site's vote: {held}; replicad evidence)"))
        sb = v.get("standby") or {}
        if sb.get("state") in ("damaged", "repairing"):
            out.append(("bad" if sb.get("state") == "damaged" else "warn",
                        f"{name}: standby {sb.get('state')} ({sb.get('damaged_blocks', 0)} damaged blocks)"))
    for r in status.get("degraded_reasons") or []:
        text = r.get("message") or r.get("reason") if isinstance(r, Mapping) else r
        out.append(("warn", f"degraded: {text}"))
    return out


def render(status: Mapping[str, Any], state: Mapping[str, Any], operations: list[Mapping[str, Any]],
           rpo_targets: Mapping[str, float], now_s: float,
           exports: Iterable[Mapping[str, Any]] | None = None) -> str:
    """The status page (UTF-8 text of an HTML5 document).

    Args:
        status: ``GET /v1/status`` of this site (with ``members``).
        state: this site's Raft view (``Cluster.view()``): snapshot opinions for disagreements.
        operations: ``Operation.to_dict()`` of the kept operations; the running ones are shown.
        rpo_targets: ``{volume: seconds}`` (3 x the configured interval).
        now_s: unix time of the page (shown, and the age of operations and exports).
        exports: the open exports (``Export.to_dict()`` with ``idle_s``/``idle_ttl_s`` of the idle
            limit, ``GET /v1/exports``): each one pins its snapshot here.
    Never raises on a partial status (missing parts read as "—").
    """
    site = status.get("site_id")
    raft = status.get("raft") or {}
    view = status.get("view") or {}
    members = status.get("members") or []
    leader = next((m.get("site_id") for m in members if m.get("leader")), None)
    current = bool(view.get("current"))
    raft_rows = [[
        _cls("ok", leader) if leader else _cls("bad", "none"),
        _e(raft.get("term")),
        _cls("ok", "yes") if raft.get("has_quorum") else _cls("bad", "NO"),
        _cls("ok", "current") if current else _cls("bad", f"NOT CURRENT ({view.get('why') or 'unknown'})"),
        _e(_age(view.get("age_s"))),
    ]]
    site_rows = [[
        _e(m.get("site_id")) + (" (this site)" if m.get("self") else ""), _e(m.get("kind")),
        _cls("ok", "reachable") if m.get("reachable") else _cls("bad", "UNREACHABLE"),
        _e("leader" if m.get("leader") else ""), _e(m.get("registered")),
        _cls("bad", "REVOKED") if m.get("site_id") in ((status.get("identity") or {}).get("revoked") or {})
        else _cls("muted", "no"),
    ] for m in members]
    vol_rows = []
    for name, v in sorted((status.get("volumes") or {}).items()):
        role = v.get("role")
        confirmed = v.get("confirmed")
        role_cell = _e(role) if confirmed else _cls("warn", f"{role}? (not confirmed)")
        target = rpo_targets.get(name)
        rpo = v.get("rpo_s")
        if rpo is None:
            rpo_cell = _cls("muted", "no clean snapshot")
        else:
            word = "ok" if target is None or rpo <= target else "bad"
            rpo_cell = _cls(word, f"{_age(rpo)} / target {_age(target)}" if target else _age(rpo))
        ncl, nc = v.get("newest_clean"), v.get("newest_committed")
        clean_cell = _e(f"#{ncl}" if ncl is not None else None) if ncl == nc else \
            _cls("bad", f"#{ncl} (newest #{nc} suspect)" if ncl is not None else f"none (newest #{nc} suspect)")
        sb = v.get("standby") or {}
        if role not in REPLICA_ROLES:  # primary or restoring here: the image is the volume, not a standby
            standby_cell = _cls("muted", "— (primary here)")
        else:
            lag = v.get("standby_lag_snapshots")
            behind = (f", {lag} behind" if isinstance(lag, int) and not isinstance(lag, bool)
                      else ", rewriting" if v.get("standby_applying") else "")
            standby_cell = _e((f"#{v.get('standby_seq')} {sb.get('state', '')}".strip()
                               if v.get("standby_seq") is not None else str(sb.get("state"))) + behind)
        vol_rows.append([
            _e(name), role_cell, _e(v.get("primary")), _e(v.get("epoch")), rpo_cell, clean_cell, standby_cell,
            _cls("bad", v.get("last_error")) if v.get("last_error") else _cls("muted", "none"),
        ])
    alert_items = alerts(status, state)
    alert_html = ("<ul id=\"alerts\">" + "".join(f"<li>{_cls(sev, text)}</li>" for sev, text in alert_items)
                  + "</ul>") if alert_items else '<p id="alerts" class="ok">nothing to look at</p>'
    kept = [f"{name}: suspect snapshot(s) {', '.join('#' + str(s) for s in ks)} kept for forensics, superseded by "
            f"clean #{v.get('newest_clean')}" for name, v in sorted((status.get("volumes") or {}).items())
            for ks in [split_suspects(v)[1]] if ks]
    if kept:
        alert_html += '\n<ul id="kept">' + "".join(f"<li>{_cls('muted', t)}</li>" for t in kept) + "</ul>"
    now_ns = now_s * 1e9
    export_rows = [[
        _e(x.get("export_id")),
        _e(export_label(x)) + (" " + _cls("bad", "SUSPECT") if x.get("verdict") == "suspect" and
                               x.get("serves") != "image" else ""),
        _e(bool(x.get("writable"))), _e(x.get("connections")),
        _e(_age((now_ns - x["created_at_ns"]) / 1e9) if isinstance(x.get("created_at_ns"), int) else None),
        _e(_bytes(x.get("bytes_read"))),
        _e(f"{_age(x.get('idle_s'))} / {_age(x['idle_ttl_s'])}" if isinstance(x.get("idle_ttl_s"), (int, float))
           else "no limit"),
    ] for x in exports or []]
    req_rows = [[_e(r.get("id")), _e(r.get("action")), _e(r.get("by")), _e(r.get("reason")),
                 _e(_request_changes(r, state)),
                 _e(approvals_text(r.get("approvals"), r.get("needed"))), _request_status(r, state),
                 _e(_request_when(r))]
                for r in status.get("requests") or [] if r.get("status") in ("pending", "approved")]
    op_rows = []
    for op in operations:
        if op.get("state") != "running":
            continue
        done, total = op.get("done_blocks") or 0, op.get("total_blocks") or 0
        pct = int(100 * done / total) if total else 0
        bar = f'<span class="bar"><span class="fill" style="width:{pct}%"></span></span> '
        op_rows.append([_e(op.get("id")), _e(op.get("kind")), _e(op.get("volume")), _e(op.get("phase")),
                        bar + _e(f"{done} / {total} blocks ({pct} %)" if total else "starting"),
                        _e(_age(now_s - op["started_at"]) if isinstance(op.get("started_at"), (int, float))
                           else None)])
    inst_rows = []
    for name, v in sorted((status.get("volumes") or {}).items()):
        ist = v.get("instant")
        if not isinstance(ist, Mapping):
            continue
        phase, done, total = ist.get("phase"), ist.get("copy_done_blocks") or 0, ist.get("copy_total_blocks") or 0
        pct = int(100 * done / total) if total else 0
        if phase in ("serving", "copying", "switching"):
            progress = (f'<span class="bar"><span class="fill" style="width:{pct}%"></span></span> '
                        + _e(f"{done} / {total} blocks copied ({pct} %); {ist.get('overlay_blocks')} blocks "
                             "written by the application (in the overlay)"))
            serves = _cls("warn", "snapshot + overlay: switch-over pending")
        elif phase == "done":
            progress = _e(f"switched over after {ist['switched_after_s']:.1f} s, "
                          f"{ist.get('overlay_blocks')} blocks copied in"
                          if isinstance(ist.get("switched_after_s"), (int, float)) else "switched over")
            serves = (_cls("warn", "the image: the application's disk until released (replicad export --close "
                               f"{ist.get('export_id')})") if ist.get("socket") else _cls("muted", "closed"))
        elif phase == "fenced":
            progress = _cls("bad", "fenced: another site took the volume over; the writes are kept, not applied")
            serves = _cls("muted", "closed")
        else:
            progress, serves = _e(phase), _cls("muted", "closed (released)")
        inst_rows.append([_e(name), _e(f"#{ist.get('seq')} (epoch {ist.get('epoch')})"), _e(phase), progress,
                          serves, _e(ist.get("socket")),
                          _e(f"{ist['first_read_after_s']:.2f} s" if isinstance(ist.get("first_read_after_s"),
                                                                             (int, float)) else None)])
    healthy = not alert_items and current and raft.get("has_quorum")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">"
        f"<title>replicad {_e(site)}: {'ok' if healthy else 'ATTENTION'}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n<h1>replicad site {_e(site)}</h1>\n"
        f"<p class=\"muted\">cluster {_e((status.get('identity') or {}).get('cluster_id'))}; page of "
        f"{_e(_utc(now_s, ns=False))}, refreshed every {REFRESH_S} s; read-only</p>\n"
        "<h2>Raft</h2>\n" + _table(["leader", "term", "quorum", "this site's view", "view age"], raft_rows,
                                   "raft", "") +
        "\n<h2>Sites</h2>\n" + _table(["site", "kind", "reachable from here", "", "registered", "revoked"],
                                      site_rows, "sites", "no sites") +
        "\n<h2>Volumes</h2>\n" + _table(["volume", "role here", "primary", "epoch", "RPO / target",
                                         "newest clean", "standby", "last error"], vol_rows, "volumes",
                                        "no volume at this site") +
        "\n<h2>Alerts</h2>\n" + alert_html +
        "\n<h2>Pending requests</h2>\n" + _table(["id", "action", "by", "reason", "changes", "approvals", "status",
                                                  "ends"], req_rows, "requests", "no pending request") +
        ("\n<h2>Instant recovery</h2>\n" + _table(["volume", "from snapshot", "phase", "progress", "export serves",
                                                   "socket", "first read after"], inst_rows, "instant", "")
         if inst_rows else "") +
        "\n<h2>Running operations</h2>\n" + _table(["id", "kind", "volume", "phase", "progress", "running for"],
                                                   op_rows, "operations", "no operation running") +
        "\n<h2>Open exports</h2>\n" + _table(["export", "snapshot", "writable", "connections", "age", "bytes read",
                                              "idle / limit"], export_rows, "exports", "no export open") +
        "\n</body></html>\n")
