"""The ``replicad`` command line.

``run`` and ``check-config`` work on a config file; ``demo`` runs the three-site demo; the
other commands talk to a site's admin API (``--admin URL``, or the ``admin.listen`` of
``--config PATH``, or ``$REPLICAD_ADMIN``, default ``http://127.0.0.1:7301``).

Human output is a rich table; ``--json`` prints the API's JSON for scripts. Errors print
one line (never a traceback) and exit with the code of their class in
:mod:`replicad.core.errors` (2 usage/config, 3 not found, 4 conflict, 5 integrity, 6 protocol,
7 unavailable, 8 access denied, 9 commit outcome unknown, 70 internal). ``status`` exits 1
(:data:`STATUS_DEGRADED_EXIT`) when the site is degraded (:func:`status_problems`).

The admin token (:mod:`replicad.ops.auth`) is taken from ``--token``, else the first line of
``--token-file``, else ``$REPLICAD_TOKEN``, and sent as ``Authorization: Bearer``. Prefer
the file or the variable: a ``--token`` argument is visible to other users in ``ps``.
``hash-token`` and ``audit verify`` work offline.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_early(signum: int, frame: object) -> None:
    """Ctrl-C before main() takes over (while rich, asyncio ... import): one line, exit 130."""
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)


_AS_COMMAND = (os.path.basename(sys.argv[0] if sys.argv else "") == "replicad"
               or (sys.argv[0] if sys.argv else "").endswith(os.path.join("replicad", "__main__.py")))
if _AS_COMMAND and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    try:  # only as the replicad command (an importing program keeps its Ctrl-C)
        signal.signal(signal.SIGINT, _interrupted_early)
    except ValueError:  # not the main thread
        pass

import argparse
import asyncio
import contextlib
import json
import logging
import math
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replicad.ops.adminclient import call_admin
from replicad.core.units import size_text
from replicad.core.errors import (ConfigError, IntegrityError, InternalError, NotFoundError, ReplicadError, UsageError,
                                  from_dict, from_os_error)

def _console(stderr: bool) -> Console:
    """A rich console: ``$COLUMNS`` wide when set, else the terminal's width; when output is not
    a terminal, wide enough (160) that tables are not cut."""
    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) >= 40 else None if stream.isatty() else 160
    # markup and emoji codes off: every piece of data printed (file names, volume and site names,
    # reasons, patterns, paths, messages) is shown as it is; a line with styles says markup=True
    # and passes its data through esc() (rich.markup.escape)
    return Console(stderr=stderr, width=width, highlight=False, markup=False, emoji=False)


NARROW_COLUMNS = 120  # below this width ``replicad status`` prints one block per volume instead of a table


console = _console(stderr=False)
err_console = _console(stderr=True)


def esc(value: Any) -> str:
    """``value`` as text for a line printed with ``markup=True``: a file name such as ``[bold]x``
    or a regex such as ``[a-z2-7]{16}`` is shown as it is, never read as rich markup (the names
    come from whoever wrote the volume)."""
    return escape(str(value))


TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
"""How every command prints a time: UTC with the zone named (sites and operators may be in
other zones; an unmarked time was read as local)."""


def _utc(ns: Any) -> str:
    """A time in nanoseconds since the epoch as :data:`TIME_FORMAT` (``2026-12-07 09:03:31
    UTC``); ``-`` when it is not a number of a plausible range."""
    import datetime

    if not isinstance(ns, (int, float)) or isinstance(ns, bool) or not 0 <= ns < 2**63:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime(TIME_FORMAT)


def _admin_url(args: argparse.Namespace) -> str:
    if getattr(args, "admin", None):
        return args.admin.rstrip("/")
    if getattr(args, "site_config", None):
        from replicad.config import load_config

        try:
            cfg = load_config(Path(args.site_config))
        except ConfigError as err:  # the CLI needs only the admin URL: a typo elsewhere does not stop it
            url = _admin_url_of_toml(Path(args.site_config))
            if url is None:
                raise
            err_console.print(f"warning: {args.site_config} has {len(err.problems) or 1} problem(s) ('replicad "
                              f"check-config {args.site_config}' lists them); using its admin URL {url}",
                              soft_wrap=True)
            return url
        return str(cfg.self_ref().admin_url).rstrip("/")
    return os.environ.get("REPLICAD_ADMIN", "http://127.0.0.1:7301").rstrip("/")


def _admin_url_of_toml(path: Path) -> str | None:
    """The ``admin_url`` of the own ``[[sites]]`` entry (``site_id``) of a site config that does
    not validate as a whole, read from its TOML alone; None when the file is no TOML or has no
    such entry (the caller reports the config's problems then)."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    own = next((s for s in doc.get("sites") or [] if isinstance(s, dict) and s.get("site_id") == doc.get("site_id")),
               None)
    url = own.get("admin_url") if own else None
    return url.rstrip("/") if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token``, else ``--token-file`` (first line), else ``$REPLICAD_TOKEN``."""
    if getattr(args, "token", None):
        return args.token.strip()
    if getattr(args, "token_file", None):
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read token file {args.token_file}: {err}", path=args.token_file) from None
        if not lines or not lines[0].strip():
            raise UsageError(f"token file {args.token_file} is empty", path=args.token_file)
        return lines[0].strip()
    return os.environ.get("REPLICAD_TOKEN", "").strip() or None


def api(args: argparse.Namespace, method: str, path: str, body: dict | None = None, timeout_s: float = 600) -> Any:
    """Call the admin API of the chosen site; returns the decoded JSON or raises the error class it names.
    A token sent to a site without access control is said once on stderr (:func:`_open_site_notice`)."""
    return call_admin(_admin_url(args), method, path, body, timeout_s, token=_token(args),
                      on_open=lambda: _open_site_notice(args))


_noticed_open: set[str] = set()  # the admin URLs whose open access this process has said


def path_segment(value: str, what: str) -> str:
    """``value`` (a request id or site name typed by the operator) percent-quoted as one segment
    of an admin API path (``urllib.parse.quote`` with no safe characters).

    Raises:
        UsageError (bad_request, exit 2): ``value`` is empty, ``.`` or ``..``, holds ``/`` or a
            character that does not print (``str.isprintable``) -- such a value names no request
            or site, and sent as is it reached another path and read as an unreachable site
            (operator try-out 2, item 9)."""
    if not value or value in (".", "..") or "/" in value or not value.isprintable():
        raise UsageError(f"{what} {json.dumps(value)} is not a valid {what}: not empty, no '/', no '.' or '..' "
                         "alone, printable characters only (replicad requests and replicad status show the names)",
                         field=what.replace(" ", "_"), value=value)
    return urllib.parse.quote(value, safe="")


def _open_site_notice(args: argparse.Namespace) -> None:
    """One line on stderr, once per admin URL: the site has no admin tokens, the token given was
    not checked (``--token wrong`` against it succeeds)."""
    url = _admin_url(args)
    if url not in _noticed_open:
        _noticed_open.add(url)
        err_console.print(f"notice: {url} has no access control (no [[admin.tokens]] configured): the token given "
                          "was not checked", markup=False, soft_wrap=True)


def cmd_raise_rules(args: argparse.Namespace) -> int:
    """``replicad raise-rules``: this site's operator's consent to raise the cluster's rules
    leaving ``--leave-behind`` members behind, or ``--cancel`` (``POST /v1/rules/raise``).

    Raises:
        UsageError: neither or both of ``--leave-behind`` and ``--cancel``, or no ``--reason``."""
    sites = sorted({s.strip() for arg in args.leave_behind for s in arg.split(",") if s.strip()})
    if args.cancel == bool(sites):
        raise UsageError("raise-rules: --leave-behind SITE (with --reason) or --cancel", known=["leave_behind"])
    if args.cancel:
        body: dict = {"cancel": True}
    else:
        if not args.reason.strip():
            raise UsageError("raise-rules: --reason is required (why these members are left behind)", field="reason")
        body = {"leave_behind": sites, "reason": args.reason}
    _print(args, api(args, "POST", "/v1/rules/raise", body), _render_rules_consent)
    return 0


def _consents_shown(rules: dict) -> str:
    """The wait for operators' consents to leave members behind (``GET /v1/status`` ``rules``:
    :meth:`replicad.site.rules_raise.RulesRaise.status`): ``consents to leave members behind:
    1 of 3 operators' consents (need 2): site-a; this site's operator leaves behind: site-c``. The
    need is what the state machine asks (a majority of the members, ``len(members) // 2 + 1``:
    :func:`replicad.core.state._op_rules`); the consents counted are those this site's last round
    found covering every member behind."""
    consented = [str(s) for s in rules.get("consented") or []]
    members = len(rules.get("members") or {})
    mine = (rules.get("consent") or {}).get("leave_behind") or []
    need = f"{len(consented)} of {members} operators' consents (need {members // 2 + 1})" if members else \
        f"{len(consented)} operators' consents (members not known yet)"
    return (f"consents to leave members behind: {need}" + (f": {', '.join(consented)}" if consented else "")
            + f"; this site's operator leaves behind: {', '.join(str(s) for s in mine) or 'none'}")


def _render_rules_consent(data: dict) -> None:
    consent, withdrawn, rules = data.get("consent"), data.get("withdrawn"), data.get("rules") or {}
    if consent:
        console.print(f"this site consents to raise the cluster's rules to {rules.get('max')} leaving behind "
                      f"{', '.join(consent.get('leave_behind') or [])} until "
                      f"{_utc(consent.get('expires_ns'))}; "
                      "the sites raise once a majority of the operators consented (replicad status shows the wait)",
                      markup=False, soft_wrap=True)
        if rules.get("members"):  # as of this site's last round (every 30 s): its own consent counts from the next
            console.print("  " + _consents_shown({**rules, "consent": consent}) + " (as of this site's last round)",
                          markup=False,
                          soft_wrap=True)
    elif withdrawn:
        console.print(f"consent withdrawn (it left behind {', '.join(withdrawn.get('leave_behind') or [])}); a "
                      "report served before stays good for 10 minutes", markup=False, soft_wrap=True)
    else:
        console.print("this site had no consent in force", markup=False, soft_wrap=True)
    if rules.get("version") is not None:
        console.print(f"rules {rules.get('version')} (this release applies 1..{rules.get('max')})", markup=False)


def _print(args: argparse.Namespace, data: Any, render=None) -> None:
    """``data`` (an admin answer) as JSON (``--json`` or no ``render``: control characters are
    escaped by JSON), else through ``render`` after :func:`_shown`."""
    if getattr(args, "json", False) or render is None:
        console.print_json(json.dumps(data))
    else:
        render(_shown(data))


def _shown(data: Any) -> Any:
    """``data`` with every string (map keys too) that does not print escaped and quoted
    (:func:`replicad.ops.evidenceview.printable`): names, stats and reasons come from Raft and
    peers, and a primary's stats value with terminal escapes and a newline rewrote the lines
    around it at every site's ``replicad snapshots`` (review R10, F3). Printable text is kept as
    it is; other values unchanged."""
    from replicad.ops.evidenceview import printable

    if isinstance(data, str):
        return printable(data)
    if isinstance(data, dict):
        return {(printable(k) if isinstance(k, str) else k): _shown(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_shown(v) for v in data]
    return data


def _site_name(data: dict, raft_addr: str | None) -> str:
    """The site id of a Raft address, as listed in the status' ``raft_sites`` map."""
    if raft_addr is None:
        return "none (election in progress or no quorum)"
    return data.get("raft_sites", {}).get(raft_addr, raft_addr)


def _render_status(data: dict) -> None:
    raft = data.get("raft", {})
    console.print(f"[bold]site[/bold] {esc(data['site_id'])}   raft leader: {esc(_site_name(data, raft.get('leader')))}"
                  f"   term {esc(raft.get('term'))}   commit index {esc(raft.get('commit_index'))}   "
                  f"quorum: {'yes' if raft.get('has_quorum') else 'NO'}", markup=True)
    view = data.get("view") or {}
    if view.get("current") is False or raft.get("synced") is False:
        age = view.get("age_s")
        why = view.get("why") or "no leader, or the log is still being applied"
        console.print(f"[red]Raft view NOT CURRENT ({esc(why)}"
                      f"{f'; last own command applied {age:.0f} s ago' if age is not None else ''}): the figures "
                      "below may be old, and a role marked '?' is this site's belief, not what the cluster agreed. "
                      "Read the cluster from another site.[/red]", markup=True)
    cut_off = {site for site, r in ((data.get("identity") or {}).get("revoked") or {}).items()
               if not (isinstance(r, dict) and r.get("rejoined"))}
    if data.get("members"):
        console.print("members: " + ", ".join(
            m["site_id"] + (" (this site)" if m.get("self") else "" if m.get("reachable")
                            else " (revoked)" if m["site_id"] in cut_off else " (UNREACHABLE)")
            for m in data["members"]))
    if isinstance(data.get("release"), dict):  # the same at every site after an upgrade (README, "Upgrading")
        from replicad.release import identity_text

        console.print("release: " + identity_text(data["release"]).removeprefix("replicad "), markup=False,
                      soft_wrap=True)
    ident = data.get("identity") or {}
    if ident.get("unsafe_unsigned"):
        console.print("[red]UNSAFE: this site runs without identity (identity.unsafe_unsigned): its commands are "
                      "not signed and nobody's are checked[/red]", markup=True)
    elif ident:
        console.print(f"identity: cluster {ident.get('cluster_id')}, commands signed ({_keys_shown(ident)})",
                      markup=False, soft_wrap=True)
    for site, r in sorted((ident.get("revoked") or {}).items()):
        if r.get("rejoined"):
            console.print(f"rejoined: {site} (rebuilt with a new key after a revocation by a request of "
                          f"{r.get('by')}; a member again, its {r.get('keys')} revoked key(s) stay refused)",
                          markup=False, soft_wrap=True)
        else:
            console.print(f"[red]revoked[/red]: {esc(site)} ({esc(r.get('keys'))} key(s), by a request of "
                          f"{esc(r.get('by'))}); its commands are refused: revoked (cut off as intended), not "
                          "counted as degraded, until it is rebuilt with a new key or left out of the membership "
                          "('replicad members propose FILE', README \"A site is compromised\" step 6)",
                          markup=True, soft_wrap=True)
    rules = data.get("rules") or {}
    if rules.get("waiting"):  # a rolling upgrade in progress (replicad.site.rules_raise)
        behind = "; ".join(f"{site}: {m.get('problem')}" for site, m in sorted((rules.get("members") or {}).items())
                           if isinstance(m, dict) and m.get("problem"))
        console.print(f"[yellow]rules {esc(rules.get('version'))}[/yellow] (this release applies "
                      f"1..{esc(rules.get('max'))}): raised once every member runs a release applying them; "
                      f"waiting for {esc(behind or 'the members')}", markup=True, soft_wrap=True)
        mine = rules.get("consent") or {}
        if rules.get("consented") or mine:  # operators' consents to leave members behind (replicad raise-rules)
            console.print("  " + _consents_shown(rules), markup=False, soft_wrap=True)
    pending = [r for r in data.get("requests") or [] if r.get("status") in ("pending", "approved")]
    if pending:
        console.print(f"[yellow]{len(pending)} request(s) waiting for approval or cooling off[/yellow] "
                      "(replicad requests; replicad veto REQ stops one):", markup=True)
        for r in pending:
            console.print("  " + _request_line(r), markup=False, soft_wrap=True)
    if console.width < NARROW_COLUMNS:
        _render_volumes_narrow(data)
    else:
        _render_volumes_table(data)
    for name, v in data.get("volumes", {}).items():  # issue 16: promote --instant
        if v.get("instant"):
            console.print(_instant_line(name, v["instant"]), markup=False, soft_wrap=True)
    for target in data.get("interrupted_restores") or []:
        console.print(f"[red]incomplete:[/red] a restore into {esc(target)} was interrupted: that file is incomplete "
                      "(restore into it again with --overwrite if it is to be used)", markup=True, highlight=False)


def _instant_line(volume: str, st: dict) -> str:
    """One line of ``status`` for a volume's instant recovery (``volumes.VOL.instant``)."""
    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} s"
    head = f"instant recovery {volume}#{st['seq']} (epoch {st['epoch']}): {st['phase']}"
    if st["phase"] in ("serving", "copying", "switching"):
        head += (f", copy {100 * st['progress']:.0f} % ({st['copy_done_blocks']}/{st['copy_total_blocks']} blocks), "
                 f"{st['overlay_blocks']} blocks written by the application; serving on {st['socket']}")
    elif st["phase"] == "done":
        head += (f", switched over after {s(st['switched_after_s'])} ({st['overlay_blocks']} blocks copied in)"
                 if st.get("switched_after_s") is not None else " (switched over before a restart)")
        if st.get("socket"):
            head += (f"; serving the image on {st['socket']} until released (move the application to the image, "
                     f"then replicad export --close {st['export_id']})")
    elif st["phase"] == "released":
        head += " (the export is closed; the application runs on the image)"
    elif st["phase"] == "fenced":
        head += " (another site took the volume over: the export is closed, its writes kept, not applied)"
    head += f"; first read after {s(st['first_read_after_s'])}"
    if st.get("last_error") and st["phase"] != "done":
        head += f"; last error: {st['last_error']}"
    return head


def _keys_shown(ident: dict) -> str:
    """The keys pinned for this site, the one it signs with marked ``signs with``, a revoked one
    ``REVOKED``: from ``keys`` (``{key, signs, revoked}``), else (an older site) ``public_key``."""
    keys = ident.get("keys")
    if not isinstance(keys, list):
        return ", ".join(ident.get("public_key") or [])
    shown = []
    for k in keys:
        marks = [m for m, on in (("signs with", k.get("signs")), ("REVOKED", k.get("revoked"))) if on]
        if not marks and ident.get("signing_key"):
            marks = ["pinned, not used"]
        shown.append(str(k.get("key")) + (f" [{', '.join(marks)}]" if marks else ""))
    return ", ".join(shown)


def _standby_shown(v: dict) -> str:
    """A replica's standby as ``replicad status`` prints it: its seq and how far it is behind the
    newest clean snapshot (``10450 (2 behind)``, ``10452 (0 behind)``); ``none (3 behind)`` with
    no standby yet; ``(rewriting)`` while it is being applied; ``(behind: ?)`` when the lag is not
    known (the Raft view is not current); ``-`` for a primary."""
    if v.get("role") == "primary" or (v.get("standby_seq") is None and v.get("standby_lag_snapshots") is None):
        return "-"
    seq = "none" if v.get("standby_seq") is None else str(v["standby_seq"])
    lag = v.get("standby_lag_snapshots")
    if v.get("standby_applying"):
        return f"{seq} (rewriting)"
    if isinstance(lag, int) and not isinstance(lag, bool):
        return f"{seq} ({lag} behind)"
    return f"{seq} (behind: ?)"


def _seq_shown(seq: object, mark: str = "") -> str:
    """A snapshot number (``7``, or ``#7`` with ``mark="#"``); ``none yet`` when there is none
    (not Python's ``None``)."""
    return "none yet" if seq is None else f"{mark}{seq}"


def _volume_cells(v: dict) -> dict[str, str]:
    """The per-volume figures ``replicad status`` shows, as text."""
    rpo = v.get("rpo_s")
    return {"role": _role_shown(v), "primary": _primary_shown(v), "epoch": str(v.get("epoch")),
            "newest": _seq_shown(v.get("newest_committed"), "#"), "clean": _seq_shown(v.get("newest_clean"), "#"),
            "standby": _standby_shown(v),
            "rpo": f"{rpo:.1f}" if rpo is not None else "-", "age": _newest_age_shown(v),
            "suspect": ",".join(map(str, v.get("suspect", []))) or "-",
            "divergent": ",".join(f"{d['epoch']}:{d['seq']}" for d in v.get("divergent", [])) or "-",
            "error": v.get("last_error") or ""}


def _render_volumes_narrow(data: dict) -> None:
    """One block of short lines per volume (terminals narrower than :data:`NARROW_COLUMNS`)."""
    console.print("[bold]volumes[/bold]", markup=True)
    for name, v in data.get("volumes", {}).items():
        c = _volume_cells(v)
        newest_suspect = v.get("newest_committed") is not None and v.get("newest_committed") != v.get("newest_clean")
        style = "red" if newest_suspect else "bold"
        console.print(f"[{style}]{esc(name)}[/{style}]: {esc(c['role'])} (primary {esc(c['primary'])}, epoch "
                      f"{esc(c['epoch'])}), RPO {esc(c['rpo'])} s (newest clean), newest {esc(c['age'])} s old",
                      soft_wrap=False, markup=True)
        console.print(f"  snapshots: newest {c['newest']}, newest clean {c['clean']}, standby {c['standby']}",
                      markup=False)
        if c["suspect"] != "-" or c["divergent"] != "-":
            console.print(f"  suspect: {c['suspect']}   divergent: {c['divergent']}", style=style)
        if c["error"]:
            console.print(f"  last error: {c['error']}", markup=False, style="red")


def _render_volumes_table(data: dict) -> None:
    t = Table(title="volumes")
    for col in ("volume", "role", "primary", "epoch", "newest", "newest clean", "standby (snapshots behind)",
                "RPO s (clean)", "newest age s", "suspect", "divergent", "last error"):
        t.add_column(col)
    for name, v in data.get("volumes", {}).items():
        rpo = v.get("rpo_s")
        t.add_row(name, _role_shown(v), _primary_shown(v), str(v.get("epoch")), _seq_shown(v.get("newest_committed")),
                  _seq_shown(v.get("newest_clean")), _standby_shown(v), f"{rpo:.1f}" if rpo is not None else "-",
                  _newest_age_shown(v),
                  ",".join(map(str, v.get("suspect", []))) or "-",
                  ",".join(f"{d['epoch']}:{d['seq']}" for d in v.get("divergent", [])) or "-",
                  v.get("last_error") or "",
                  # red while the newest snapshot is suspect (an incident), not for old suspects kept for forensics
                  style="red" if v.get("newest_committed") is not None
                  and v.get("newest_committed") != v.get("newest_clean") else None)
    console.print(t)


def _newest_age_shown(v: dict) -> str:
    """Seconds since the newest committed snapshot (suspect or clean), as ``status`` prints it;
    ``-`` without one. The RPO column is the newest CLEAN one's age (what a restore loses)."""
    age = v.get("newest_age_s")
    return f"{age:.1f}" if isinstance(age, (int, float)) else "-"


def _primary_shown(v: dict) -> str:
    """A volume's primary as ``replicad status`` prints it: the site, ``NONE (demoted)`` when Raft
    names none (the reason ``no_primary`` says what to do), ``?`` when the view has no record."""
    if "primary" not in v:
        return "?"
    return "NONE (demoted)" if v["primary"] is None else str(v["primary"])


def _role_shown(v: dict) -> str:
    """A volume's role as ``replicad status`` prints it: ``primary`` when the site's Raft view is
    current and agrees; ``primary?`` when it is only this site's belief (``confirmed`` false:
    a stale view, or a role change Raft has not caught up with)."""
    role = str(v.get("role", ""))
    return role + "?" if v.get("confirmed") is False else role


STATUS_DEGRADED_EXIT = 1  # ``replicad status``: the site answered, and is degraded


def status_problems(data: dict) -> list[str]:
    """Why the ``GET /v1/status`` answer ``data`` shows a degraded site, one sentence each
    (empty: healthy): the messages of :func:`replicad.core.health.degraded_reasons`, which the
    daemon also serves (``degraded_reasons`` in the status, ``replicad_site_degraded_reasons``
    in ``/metrics``). Computed here from ``data`` so an older daemon's answer reads the same. Pure."""
    from replicad.core.health import degraded_reasons

    return [r["message"] for r in degraded_reasons(data)]


def cmd_status(args: argparse.Namespace) -> int:
    """Print the site's status; exit 0 if healthy, STATUS_DEGRADED_EXIT if degraded."""
    data = api(args, "GET", "/v1/status")
    _print(args, data, _render_status)
    problems = status_problems(data)
    if problems:  # on stderr: --json output stays the API's document
        err_console.print(f"[red]degraded[/red] (exit {STATUS_DEGRADED_EXIT}): ", end="", markup=True)
        err_console.print("; ".join(problems), markup=False, soft_wrap=True)
    return STATUS_DEGRADED_EXIT if problems else 0


def _render_volumes(data: dict) -> None:
    if console.width < NARROW_COLUMNS:  # a line per volume: names and sizes whole at 80 columns
        console.print("volumes (cluster view)")
        for name, v in sorted(data.get("volumes", {}).items()):
            console.print(f"{name}: primary {v.get('primary')}, epoch {v.get('epoch')}, size "
                          f"{size_text(v.get('size_bytes', 0), count='never')}, max size {_max_size_shown(v)}, "
                          f"block size {size_text(v.get('block_size', 0), count='never')}, "
                          f"min copies {v.get('min_copies')}, "
                          f"{v.get('snapshots')} snapshots, last seq {v.get('last_seq')}", markup=False)
        return
    t = Table(title="volumes (cluster view)")
    for col in ("volume", "primary", "epoch", "block size", "size", "max size (agreed)", "min copies", "snapshots",
                "last seq"):
        t.add_column(col)
    for name, v in sorted(data.get("volumes", {}).items()):
        t.add_row(name, str(v.get("primary")), str(v.get("epoch")), size_text(v.get("block_size", 0), count="never"),
                  size_text(v.get("size_bytes", 0), count="never"), _max_size_shown(v), str(v.get("min_copies")),
                  str(v.get("snapshots")), str(v.get("last_seq")))
    console.print(t)


def _max_size_shown(v: dict) -> str:
    """A volume's agreed maximum size (``GET /v1/volumes``) as ``replicad volumes`` prints it: the
    recorded ``max_size_bytes``; without one (registered by an older release) the default of its
    size, marked ``(default)``; registered without a size and not committed yet: what sets it."""
    from replicad.core.state import default_max_size_bytes
    from replicad.core.units import format_size

    recorded = v.get("max_size_bytes")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return format_size(recorded)
    size = v.get("size_bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return "none yet (set by the first snapshot)"
    return f"{format_size(default_max_size_bytes(size))} (default)"


def _render_cycle(r: dict, volume: str = "VOL", cluster: dict | None = None) -> None:
    """A snapshot cycle's report. The verdict it carries is the primary's commit-time screen,
    not the cluster's: every site judges the snapshot itself after the commit (a mass rename
    the screen let through was suspect at all three sites seconds later), so it is shown as
    what it is, with the cluster's verdict as known when the command returns (``cluster``: the
    snapshot's entry of ``GET /v1/volumes/VOL/snapshots``; None: not read) and the commands
    that show the sites' verdicts later."""
    seq = r.get("seq")
    state = "committed" if r.get("committed") else "NOT committed (too few sites stored it)"
    console.print(f"snapshot #{esc(seq)}: {state}, {esc(r.get('changed_blocks'))} changed blocks, held by "
                  f"{esc(', '.join(r.get('holders', [])))}, "
                  f"{esc(size_text(r.get('bytes_shipped', 0), count='never'))} shipped in "
                  f"{r.get('cycle_s', r.get('scan_s', 0)):.2f}s", markup=True)
    screen = f"{r.get('score', 0):.1%} of the non-zero blocks newly random, baseline {r.get('baseline', 0):.1%}"
    if r.get("verdict") == "suspect":
        console.print(f"  the primary's commit-time screen: [red]suspect[/red] ({esc(screen)})", markup=True,
                      soft_wrap=True)
    else:
        console.print(f"  the primary's commit-time screen found nothing ({esc(screen)}); that is not the verdict: "
                      f"every site judges #{esc(seq)} itself next", markup=True, soft_wrap=True)
    if r.get("verdict") == "suspect" and r.get("verdict_reason"):  # e.g. only by descent from a suspect parent
        console.print(f"  suspect because: {r['verdict_reason']}", markup=False, highlight=False, soft_wrap=True)
    if r.get("committed"):
        console.print(f"  {_cluster_verdict_text(cluster)}; the verdicts later: replicad snapshots {volume} "
                      f"(each site's: replicad evidence {volume} {seq})", markup=False, soft_wrap=True)
    for peer, p in sorted(r.get("peers", {}).items()):
        if not p.get("ok"):
            console.print(f"  {peer}: not stored yet ({p.get('error')}): {p.get('message')}", markup=False,
                          soft_wrap=True)


def _render_verdict(r: dict) -> None:
    if "request" in r:
        _render_request_state(r)
        return
    if r.get("marked") == "suspect" and r.get("verdict") == "clean":  # one site's vote: its own standby holds
        sites = ", ".join(r.get("suspect_sites") or [])
        console.print(f"{r['volume']}#{r['seq']} marked suspect here: this site's standby holds before it; the "
                      f"cluster's verdict stays clean until {r.get('needed')} sites judge it suspect (now: {sites})",
                      markup=False, soft_wrap=True)
        if r.get("next"):
            err_console.print(f"next: {r['next']}", markup=False, soft_wrap=True)
        return
    if r.get("note"):  # nothing to do (already confirmed): said as such
        console.print(r["note"], markup=False, soft_wrap=True)
    elif r.get("withdrawn"):
        console.print(f"{r['volume']}#{r['seq']}: this site's suspect mark withdrawn; the cluster's verdict: "
                      f"{r['verdict']} (to confirm it clean as a person: replicad verdict {r['volume']} {r['seq']} "
                      f"clean once more, a request another site approves)", markup=False, soft_wrap=True)
    elif r.get("changed") is False:
        console.print(f"{r['volume']}#{r['seq']} stays {r['verdict']}: nothing changed", markup=False)
    else:
        console.print(f"{r['volume']}#{r['seq']} is now {r['verdict']}", markup=False)
    if r.get("warning"):
        err_console.print(f"[yellow]warning[/yellow]: {esc(r['warning'])}", markup=True)


def _render_promote(r: dict) -> None:
    line = f"{r['volume']}: primary is now {r['primary']} at epoch {r.get('epoch')}"
    if r.get("restored_seq") is not None and not r.get("instant"):
        named = " (the one named)" if (r.get("restore") or {}).get("pinned") else ""
        line += f"; restored snapshot #{r['restored_seq']}{named}, root verified, in {r.get('rto_s', 0):.2f}s"
    if r.get("final_seq") is not None:
        line += f"; final snapshot #{r['final_seq']} committed before the handover"
    console.print(line, markup=False, soft_wrap=True)
    if r.get("warning"):  # the new primary is being revoked
        err_console.print(f"[yellow]warning[/yellow]: {esc(r['warning'])}", markup=True, soft_wrap=True)
    inst = r.get("instant")
    if inst is not None:  # issue 16: promote --instant
        after = (f" {inst['serving_after_s']:.2f} s after the request"
                 if isinstance(inst.get("serving_after_s"), (int, float)) else "")
        console.print(f"READY (instant): {r['primary']} serves snapshot #{inst['seq']} of {r['volume']} as a writable "
                      f"NBD export{after} on {inst['socket']}; attach the application to\n"
                      f"  {inst['uri']}\n"
                      f"  e.g. nbdfuse DIR/{r['volume']}.img '{inst['uri']}' &  (DIR an empty directory), then "
                      f"losetup -f --show DIR/{r['volume']}.img and mount the loop device\n"
                      f"The image is being written in the background (phase {inst.get('phase')}); the switch-over "
                      "is not done yet: until then the application's writes are at this site only (no snapshot). "
                      "At the switch-over they are copied into the image and the export goes on serving the image "
                      "(also after a restart of the site, until 'replicad export --close "
                      f"{inst.get('export_id')}'). Follow it with 'replicad status'.", markup=False, soft_wrap=True)
        return
    if r.get("ready") is True:
        after = f" ({r['ready_after_s']:.1f} s after the handover)" if r.get("ready_after_s") is not None else ""
        console.print(f"READY: {r['primary']} serves {r['volume']} (image restored, root verified){after}; "
                      "the application may start there", markup=False, soft_wrap=True)
    elif r.get("ready") is False:
        err_console.print(f"[red]NOT READY[/red]: {esc(r['primary'])} does not serve {esc(r['volume'])} yet: ", end="",
                          markup=True)
        err_console.print(f"{r.get('not_ready')}. Do not start the application until 'replicad status' at "
                          f"{r['primary']} shows {r['volume']} primary.", markup=False, soft_wrap=True)


PROMOTE_NOT_READY_EXIT = 7  # ``replicad promote``: switched over, but the new primary is not serving yet


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote; exit :data:`PROMOTE_NOT_READY_EXIT` if the new primary did not report the volume
    ready in time (the switchover itself happened)."""
    body = {"to": args.to, "force": args.force}
    if args.snapshot is not None:
        if not args.force:
            raise UsageError("--snapshot names a forced promotion's restore point: use it with --force")
        body["snapshot"] = args.snapshot
    if args.instant:
        if not args.force:
            raise UsageError("--instant serves a forced promotion at once: use it with --force")
        body["instant"] = True
    before = _promote_view(args) if args.force else None
    try:
        res = api(args, "POST", f"/v1/volumes/{args.volume}/promote", body)
    except KeyboardInterrupt:
        if before is None:
            raise
        raise _PromoteInterrupted(_promote_interrupted_message(args, before)) from None
    _print(args, res, _render_promote)
    return PROMOTE_NOT_READY_EXIT if res.get("ready") is False else 0


class _PromoteInterrupted(KeyboardInterrupt):
    """Ctrl-C during a forced ``promote``: ``message`` says whether the takeover started."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _promote_view(args: argparse.Namespace) -> dict | None:
    """``{site, primary, epoch}`` of ``args.volume`` at the site the command talks to (before
    and after a forced promotion, to tell after a Ctrl-C whether it was granted); None when the
    status cannot be read (the promote request then reports the problem itself)."""
    try:
        st = api(args, "GET", "/v1/status", timeout_s=10)
    except (ReplicadError, OSError):
        return None
    v = (st.get("volumes") or {}).get(args.volume) or {}
    return {"site": st.get("site_id"), "primary": v.get("primary"), "epoch": v.get("epoch"),
            "instant": v.get("instant")}


def _promote_interrupted_message(args: argparse.Namespace, before: dict) -> str:
    """What a Ctrl-C during ``promote --force`` left: the site goes on with the request it
    received (Ctrl-C does not cancel it), so say whether Raft granted it already."""
    vol, site = args.volume, before.get("site")
    try:
        now = _promote_view(args)
    except KeyboardInterrupt:
        now = None
    if now is None:
        return (f"interrupted: {site} received the promotion of {vol} and goes on with it (Ctrl-C does not cancel "
                f"it); whether the takeover started is unknown: run 'replicad status' at {site} before anything else")
    if now["primary"] == site and now["epoch"] != before.get("epoch"):
        inst = now.get("instant")
        return (f"interrupted: the promotion was granted ({site} is primary of {vol} at epoch {now['epoch']}); the "
                f"takeover goes on at {site} (Ctrl-C does not stop it)"
                + (f": instant recovery {inst.get('phase')}, export {inst.get('uri')}" if isinstance(inst, dict)
                   and inst.get("epoch") == now["epoch"] else "")
                + f"; follow it with 'replicad status' at {site}")
    return (f"interrupted: nothing was granted yet ({vol}: primary {now['primary']}, epoch {now['epoch']}); {site} "
            "still finishes the request it received and may propose it in the next seconds: run 'replicad status' "
            f"at {site} before retrying (a second promote is refused once the first is granted)")


SNAPSHOT_NOT_COMMITTED_EXIT = 7  # ``replicad snapshot``: taken, but stored at fewer than min_copies sites


def _cluster_verdict_text(snap: dict | None) -> str:
    """The cluster's verdict on a snapshot as its ``snapshots`` entry has it, with the sites that
    gave an opinion so far (``opinions``); "not read" for None."""
    if snap is None:
        return "the cluster's verdict was not read"
    opinions = snap.get("opinions") or {}
    by = {v: sorted(site for site, o in opinions.items() if isinstance(o, dict) and o.get("verdict") == v)
          for v in ("suspect", "clean")}
    judged = "; ".join(f"{v} at {', '.join(sites)}" for v, sites in by.items() if sites)
    return (f"the cluster's verdict now: {snap.get('verdict')} "
            + (f"(the sites' own verdicts so far: {judged})" if judged else "(no site has judged it yet)"))


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Take a snapshot now; exit :data:`SNAPSHOT_NOT_COMMITTED_EXIT` if it was not committed, 0
    once committed whatever its verdict (no exit code says suspect: the verdict is the cluster's,
    reached after the commit; ``replicad snapshots VOL`` shows it)."""
    res = api(args, "POST", f"/v1/volumes/{args.volume}/snapshot", {})
    cluster = None
    if not getattr(args, "json", False) and res.get("committed") is True:
        try:  # the cluster's verdict so far (the sites judge it after the commit)
            listed = api(args, "GET", f"/v1/volumes/{args.volume}/snapshots", timeout_s=10)
            cluster = next((s for s in listed.get("snapshots") or [] if s.get("seq") == res.get("seq")), None)
        except ReplicadError:
            cluster = None
    _print(args, res, lambda r: _render_cycle(r, args.volume, cluster))
    if res.get("committed") is not True:
        err_console.print(f"[red]not committed[/red] (exit {SNAPSHOT_NOT_COMMITTED_EXIT}): snapshot "
                          f"#{esc(res.get('seq'))} is stored at "
                          f"{esc(', '.join(res.get('holders') or []) or 'no site')} only, fewer than min_copies; it is "
                          "kept here and is not a recovery point yet", soft_wrap=True, markup=True)
        return SNAPSHOT_NOT_COMMITTED_EXIT
    return 0


def _render_snapshots(data: dict) -> None:
    if console.width < NARROW_COLUMNS:  # a line per snapshot: holders and roots whole at 80 columns
        _render_snapshots_narrow(data)
        return
    t = Table(title=f"{data['volume']} — primary {data['primary']}, epoch {data['epoch']}")
    for col in ("seq", "epoch", "verdict", "created", "holders", "changed blocks", "root"):
        t.add_column(col)
    for s in data["snapshots"]:
        created = _utc(s.get("created_at_ns"))
        style = "red" if s["verdict"] == "suspect" else "yellow" if s.get("held_here") else None
        t.add_row(str(s["seq"]), str(s["epoch"]), _verdict_here(s), created, ",".join(s["holders"]),
                  str(s.get("stats", {}).get("changed_blocks", "")), str(s["root"])[:16], style=style)
    for d in data.get("divergent", []):
        t.add_row(str(d["seq"]), str(d["epoch"]), "divergent", "", "(this site only)", "", str(d["root"])[:16],
                  style="yellow")
    for d in data.get("previous", []):
        judged = d.get("judged_here")
        t.add_row(str(d["seq"]), str(d["epoch"]), f"previous {d['incarnation'][:8]} ({d.get('state')}, judged "
                  f"{judged or 'never'} here)", "", "(this site only)", "", str(d["root"])[:16],
                  style="red" if judged == "suspect" else "magenta")
    console.print(t)
    _render_held_here(data)
    if data.get("previous"):
        console.print("previous: records of an earlier cluster incarnation (every site lost its Raft state); "
                      "'replicad readopt VOL' at the primary makes one the next snapshot")


def _verdict_here(s: dict) -> str:
    """A snapshot's verdict cell: the cluster's, and ``held here`` when this site holds its
    restores and takeovers back from a snapshot the cluster calls clean (``held_here``)."""
    return f"{s['verdict']}, held here" if s.get("held_here") else str(s["verdict"])


def _render_held_here(data: dict) -> None:
    """Under a snapshot list: why each snapshot the cluster calls clean is held back at this site
    (``held_here``: a person's mark here, this site's own detector), and the snapshot a restore
    here picks by default (``restore_default_here``), when the site said."""
    held = [s for s in data.get("snapshots") or [] if s.get("held_here")]
    for s in held:
        console.print(f"#{s['seq']} held here: {s['held_here']}; this site's takeovers and default restores pass it "
                      "over", markup=False, soft_wrap=True, style="yellow")
    if "restore_default_here" in data and (held or data["restore_default_here"] is None):
        default = data["restore_default_here"]
        console.print(f"default restore point here: {'#' + str(default) if default is not None else 'none'}",
                      markup=False, soft_wrap=True)


def _render_snapshots_narrow(data: dict) -> None:
    """:func:`_render_snapshots` below :data:`NARROW_COLUMNS`: the table's cells as one line per
    snapshot, wrapped at the terminal's width (the table cut holders and roots at 80 columns)."""
    console.print(f"{data['volume']} — primary {data['primary']}, epoch {data['epoch']}", markup=False)
    for s in data["snapshots"]:
        console.print(f"#{s['seq']} (epoch {s['epoch']}): {_verdict_here(s)}, created {_utc(s.get('created_at_ns'))}, "
                      f"held by {', '.join(s['holders']) or 'no site'}, "
                      f"{s.get('stats', {}).get('changed_blocks', '?')} changed blocks, root {str(s['root'])[:16]}",
                      markup=False,
                      style="red" if s["verdict"] == "suspect" else "yellow" if s.get("held_here") else None)
    for d in data.get("divergent", []):
        console.print(f"#{d['seq']} (epoch {d['epoch']}): divergent, this site only, root {str(d['root'])[:16]}",
                      markup=False, style="yellow")
    for d in data.get("previous", []):
        judged = d.get("judged_here")
        console.print(f"#{d['seq']} (epoch {d['epoch']}): previous {d['incarnation'][:8]} ({d.get('state')}, judged "
                      f"{judged or 'never'} here), this site only, root {str(d['root'])[:16]}", markup=False,
                      style="red" if judged == "suspect" else "magenta")
    _render_held_here(data)
    if data.get("previous"):
        console.print("previous: records of an earlier cluster incarnation (every site lost its Raft state); "
                      "'replicad readopt VOL' at the primary makes one the next snapshot")


def cmd_members_propose(args: argparse.Namespace) -> int:
    """Request that the cluster's agreed membership becomes the ``[[sites]]`` of a new config file."""
    from replicad.config import load_config

    members = load_config(Path(args.file)).membership()
    _print(args, api(args, "POST", "/v1/membership", {"members": members, "reason": args.reason}),
           _render_request_state)
    return 0


def cmd_readopt(args: argparse.Namespace) -> int:
    """Re-adopt a snapshot of a previous cluster incarnation at the primary (README runbook)."""
    body: dict[str, Any] = {}
    if args.incarnation:
        body["incarnation"] = args.incarnation
    if args.old is not None:
        epoch, _, seq = args.old.partition(":")
        if not (epoch.isdigit() and seq.isdigit()):
            raise UsageError("--snapshot takes EPOCH:SEQ as 'replicad snapshots VOL' lists a previous record")
        body.update(epoch=int(epoch), seq=int(seq))
    if args.confirm_suspect:
        body["confirm_suspect"] = True
    _print(args, api(args, "POST", f"/v1/volumes/{args.volume}/readopt", body), lambda r: console.print(
        f"{r['volume']}: re-adopted {r['readopted']['incarnation'][:8]}:{r['readopted']['epoch']}:"
        f"{r['readopted']['seq']} ({r['readopted']['prior_state']}) into the live image, root verified, "
        f"{r['blocks_written']} blocks written; snapshot #{r['seq']} epoch {r['epoch']} "
        f"{'committed' if r['committed'] else 'NOT committed'} ({r.get('verdict')})"))
    return 0


def _render_members(data: dict) -> None:
    quorum = "yes" if data.get("has_quorum") else "NO"
    t = Table(title=f"members — leader {data.get('leader') or 'none'}, term {data.get('term')}, quorum {quorum}")
    for col in ("site", "kind", "raft", "admin", "registered", "reachable", "leader"):
        t.add_column(col)
    for m in data.get("members", []):
        reach = "this site" if m.get("self") else ("yes" if m.get("reachable") else
                                                   f"NO (silent {m['silent_s']:.0f} s)" if m.get("silent_s") else "NO")
        t.add_row(m["site_id"], m["kind"], m["raft"], m["admin_url"], "yes" if m.get("registered") else "no",
                  reach, "*" if m.get("leader") else "", style=None if m.get("reachable") else "red")
    console.print(t)


def _key_shown(key: str) -> str:
    """A request argument's key for people: without its unit suffix (``_s``, ``_bytes``), which
    the value then carries (``lock 2d``, ``max_size 2GiB``)."""
    return key.removesuffix("_bytes").removesuffix("_s")


def _readable(value: Any, key: str = "") -> str:
    """A request argument for people: a ``*_s`` number as a duration (``604800`` → ``7d``), a
    ``*_bytes`` number as a size (``2147483648`` → ``2GiB``), a map as ``k v, ...`` (its keys
    without the suffix), a list comma-separated."""
    from replicad.core.units import format_duration

    if isinstance(value, dict):
        return ", ".join(f"{_key_shown(k)} {_readable(v, k)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_readable(v) for v in value)
    if key.endswith("_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_duration(value)
    if key.endswith("_bytes") and isinstance(value, int) and not isinstance(value, bool):
        return size_text(value)
    if isinstance(value, bool) or value is None:  # as in the TOML config: force: true, not True
        return "none" if value is None else "true" if value else "false"
    return str(value)


def _previous_shown(r: dict) -> str:
    """What a request replaces, for its line: ``; was ...`` (a retention change once applied, a
    new maximum size once applied) or ``; now ...`` (a maximum size while the request waits);
    empty when the record names none."""
    previous = r.get("previous")
    if isinstance(previous, dict):
        return f"; was {_readable(previous)}"
    if r.get("action") == "set_max_size" and isinstance(previous, int) and not isinstance(previous, bool):
        return f"; {'was' if r.get('status') == 'applied' else 'now'} {size_text(previous)}"
    return ""


_DOCUMENT_ARGS = ("policy", "retention", "members", "max_size_bytes", "to", "verdict")
"""Request args the ``changes`` line of a request shows as ``key: old -> new`` instead."""


def _request_line(r: dict) -> str:
    """One request for people: id, status, requester, action, its args; with ``changes`` (a
    site of this release, :mod:`replicad.core.requestdiff`) the keys it changes as ``key: old ->
    new`` and a count of the rest in place of the whole document (``--json`` has the full
    args); without, long values (a policy's pattern lists) summarised as counts."""
    from replicad.core.requestdiff import approvals_text, args_summary, changes_text

    diff = r.get("changes") if isinstance(r.get("changes"), dict) else None
    shown = args_summary(r.get("args") or {})
    if diff is not None:
        shown = {k: v for k, v in shown.items() if k not in _DOCUMENT_ARGS}
    args = "; ".join(f"{_key_shown(k)}: {_readable(v, k)}" for k, v in sorted(shown.items())
                     if not (k == "reason" and v == r.get("reason")))  # the reason is shown once, below
    return (f"{r['id']} [{r['status']}] by {r['by']}: {r['action']} {args}"
            + (f" ({r['reason']})" if r.get("reason") else "")
            + (f"; changes {changes_text(diff)}" if diff is not None else _previous_shown(r))
            + f"; approvals {', '.join(r.get('approvals') or [])} ({approvals_text(r.get('approvals'), r.get('needed'))})"
            + (f"; expires {_utc(r.get('expires_ns'))}" if r["status"] == "pending" else "")
            + (f"; takes effect {_utc(r.get('effective_ns'))} unless vetoed" if r["status"] == "approved" else "")
            + (f"; vetoed by {r.get('vetoed_by')}" if r["status"] == "vetoed" else "")
            + (f"; MOOT: {r['moot']}: applied, it would change nothing" if r.get("moot") else ""))


def _render_requests(data: dict) -> None:
    reqs = data.get("requests") or []
    if not reqs:
        console.print("no requests")
    for r in reqs:
        console.print(_request_line(r), markup=False, soft_wrap=True)
    if any(r.get("status") in ("pending", "approved") for r in reqs):
        console.print(f"at THIS site ({data.get('site_id')}): replicad approve REQ, or replicad veto REQ "
                      "(each site uses its own admin token)")
    if any(r.get("moot") for r in reqs):  # its effect is in force already: nothing to decide about it
        console.print("a MOOT request's effect is in force already: approved or not, it changes nothing, and it "
                      "needs no veto (a pending one expires)", markup=False, soft_wrap=True)


def _render_request_state(r: dict) -> None:
    what = " ".join(str(x) for x in (r.get("action"), r.get("volume") or r.get("site_id")) if x)
    about = f" ({what})" if what else ""  # after the state: scripts read "request rN is pending"
    if r.get("already"):  # approve/veto of a settled request: answered from the view, nothing proposed
        console.print(f"request {r['request']} is already {r.get('status')}{about}: nothing proposed",
                      markup=False, soft_wrap=True)
        if r.get("next"):  # an approved identical request asked for again: when it takes effect
            console.print(f"  next: {r['next']}", markup=False, soft_wrap=True)
        return
    if r.get("existing") and r.get("status") == "pending":  # an identical request asked again: none recorded
        approved = f"{len(r.get('approvals') or [])} of {r.get('needed')} sites approved"
        if r.get("own") is False:  # another site's request: approving it is what counts
            console.print(f"request {r['request']} by {r.get('by')} is already pending{about} (asked here: nothing "
                          f"new recorded; {approved}; the oldest identical request): approve it with replicad approve "
                          f"{r['request']}",
                          markup=False, soft_wrap=True)
        else:
            console.print(f"request {r['request']} is already pending{about} (asked again: nothing new recorded; "
                          f"its reason stays {json.dumps(r.get('reason') or '')}; {approved})",
                          markup=False, soft_wrap=True)
            if r.get("next"):
                console.print(f"  next: {r['next']}", markup=False, soft_wrap=True)
        for other in r.get("identical") or ():  # every identical pending request, oldest first (R16, F1)
            if other.get("request") != r.get("request"):
                console.print(f"  identical request also pending: {other.get('request')} by {other.get('by')} "
                              f"(approved by {', '.join(map(str, other.get('approvals') or ())) or 'none'}; reason "
                              f"{json.dumps(other.get('reason') or '')})", markup=False, soft_wrap=True)
        return
    if r.get("status") == "approved":
        console.print(f"request {r['request']} approved by {', '.join(r.get('approvals') or [])}{about}: it takes "
                      f"effect at {_utc(r.get('effective_ns'))} (cooling-off) unless a site vetoes it (replicad veto "
                      f"{r['request']})", markup=False, soft_wrap=True)
    elif r.get("status") == "vetoed":
        console.print(f"request {r['request']} vetoed by {r.get('vetoed_by')}{about}: it will not take effect",
                      markup=False, soft_wrap=True)
    elif r.get("status") == "withdrawn":
        console.print(f"request {r['request']} withdrawn{about}: this site made it; it will not take effect and its "
                      "record is gone", markup=False, soft_wrap=True)
    elif r.get("status") == "pending":
        console.print(f"request {r['request']} is pending{about}: {len(r.get('approvals') or [])} of "
                      f"{r.get('needed')} sites approved ({', '.join(r.get('approvals') or [])}); nothing changed yet",
                      markup=False, soft_wrap=True)
        if isinstance(r.get("changes"), dict):  # what the approvers will see (replicad requests)
            from replicad.core.requestdiff import changes_text

            console.print(f"  changes: {changes_text(r['changes'])}", markup=False, soft_wrap=True)
        if r.get("next"):
            console.print(f"  next: {r['next']}", markup=False, soft_wrap=True)
    else:
        console.print(f"request {r['request']} applied (approved by {', '.join(r.get('approvals') or [])}): "
                      f"{_result_text(r.get('action'), r.get('result'))}", markup=False, soft_wrap=True)
    if r.get("warning"):  # a revocation under rules 1 (review R13, F6)
        err_console.print(f"[yellow]warning[/yellow]: {esc(r['warning'])}", markup=True, soft_wrap=True)


def _result_text(action: Any, result: Any) -> str:
    """What an applied request did (``result``: the state machine's answer to its ``action``),
    in one sentence: ``ehr: maximum size 2GiB (was 1036MiB)``, ``ehr: pruned #1, #2``; an
    action without its own sentence as ``key value`` pairs (never a raw map)."""
    if not isinstance(result, dict):
        return "done" if result is None else str(result)
    vol = result.get("volume")
    if "max_size_bytes" in result:
        prev = result.get("previous")
        return (f"{vol}: agreed maximum size {size_text(result['max_size_bytes'])}"
                + (f" (was {size_text(prev)})" if isinstance(prev, int) and result.get("changed", True)
                   else " (unchanged)"))
    if "pruned" in result:
        seqs = ", ".join(f"#{s}" for s in result.get("pruned") or []) or "nothing"
        return f"{vol}: pruned {seqs}"
    if result.get("removed") is True:
        return (f"{vol}: removed from the cluster state ({result.get('snapshots', 0)} snapshot record(s), epoch "
                f"{result.get('epoch')}, last seq {result.get('last_seq')}); each site keeps its own copies")
    if "retention" in result:
        weaker = result.get("weakened") or []
        return (f"{vol} retention: {_readable(result['retention'])}"
                + (f" (shorter: {', '.join(_key_shown(k) for k in weaker)})" if weaker else ""))
    if "detection" in result:
        weaker = result.get("weakened") or []
        return (f"{vol} detection policy changed (replicad detection {vol} shows it)"
                + (f"; weaker: {', '.join(map(str, weaker))}" if weaker else ""))
    if action == "mark_verdict" or "cleared" in result:
        cleared = ", ".join(f"#{s}" for s in result.get("cleared") or [])
        return f"{vol}#{result.get('seq')} is {result.get('verdict')}" + (f" (cleared {cleared})" if cleared else "")
    if "revoked_keys" in result:
        return f"site {result.get('site_id')} revoked ({result['revoked_keys']} key(s)): its commands are refused"
    if "members" in result:
        sites = ", ".join(str(m.get("site_id", m)) if isinstance(m, dict) else str(m) for m in result["members"])
        return f"the cluster's membership is now {sites}"
    if "previous_primary" in result:  # a promote names its new primary, a demote none
        now = f"primary {result['primary']}" if result.get("primary") else "no primary"
        return f"{vol}: {now} now, epoch {result.get('epoch')} (was {result['previous_primary']})"
    return "; ".join(f"{_key_shown(k)} {_readable(v, k)}" for k, v in result.items() if k != "ok") or "done"


def _render_retention(data: dict) -> None:
    from replicad.core.units import format_duration

    if "request" in data:
        _render_request_state(data)
        return
    r = data["retention"]
    line = ", ".join(f"{k.removesuffix('_s')} {format_duration(r[k])}" for k in ("keep_all_s", "hourly_s",
                                                                                 "daily_s", "lock_s"))
    console.print(f"{data['volume']} retention: {line}")
    if data.get("status") == "unchanged":  # any change is a request (another site approves it)
        console.print("  (unchanged: that is the policy already agreed)")
    elif "previous" in data:
        console.print("  (agreed through Raft; every site applies it)")


def _render_verify(r: dict) -> None:
    style = "red" if r.get("lost") else "yellow" if r.get("corrupt") else "green"
    console.print(f"verify {esc(r['volume'])}#{esc(r['seq'])}: {esc(r['checked'])} chunks checked, "
                  f"[{style}]{len(r['corrupt'])} corrupt, {esc(r['healed'])} healed, {esc(r['lost'])} lost[/{style}] "
                  f"in {r['seconds']:.2f}s", markup=True)


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a held snapshot; exit 5 (integrity) if a corrupt chunk could not be healed."""
    report = api(args, "POST", f"/v1/volumes/{args.volume}/verify", {"seq": args.seq})
    _print(args, report, _render_verify)
    if report.get("lost"):
        raise IntegrityError(f"{report['lost']} corrupt chunk(s) of {args.volume}#{report['seq']} could not be "
                             "healed from any holder", volume=args.volume, seq=report["seq"], lost=report["lost"])
    return 0


def _follow(args: argparse.Namespace, op: dict, title: str) -> dict:
    """Poll operation ``op`` with a progress bar (on stderr) until it ends; return its result
    or raise its error."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("blocks"), TimeElapsedColumn(), console=err_console,
                      disable=getattr(args, "json", False)) as progress:
            task = progress.add_task(esc(f"{title}: starting"), total=None)
            while op["state"] == "running":
                time.sleep(0.2)
                op = api(args, "GET", f"/v1/operations/{op['id']}")
                progress.update(task, description=esc(f"{title}: {op['phase']}"),
                                completed=op["done_blocks"], total=op["total_blocks"] or None)
    except KeyboardInterrupt:
        raise Detached(op["id"], title) from None
    if op["state"] in ("failed", "cancelled"):
        raise from_dict(op["error"] or {"error": "internal", "message": f"{title} failed"})
    return op["result"]


class Detached(KeyboardInterrupt):
    """Ctrl-C while following an operation: the operation goes on at the site (``op_id``)."""

    def __init__(self, op_id: str, title: str) -> None:
        super().__init__(op_id)
        self.op_id, self.title = op_id, title


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a running restore or drill (``DELETE /v1/operations/{id}``)."""
    op = api(args, "DELETE", f"/v1/operations/{args.operation}")
    _print(args, op, lambda o: console.print(
        f"operation {o['id']} ({o['kind']} {o['volume']}): {o['state']}"
        + (" — stopping; 'replicad operation ID' shows when it stopped" if o["state"] == "running" else "")
        + (" (it had already ended: nothing cancelled)" if o["state"] in ("done", "failed") else "")
        + ("; a new target's partial image was removed, an in-place target is listed as interrupted"
           if o["state"] == "cancelled" and o["kind"] == "restore" else ""), markup=False, soft_wrap=True))
    return 0


def _render_operation(o: dict) -> None:
    line = f"operation {o['id']}: {o['kind']} {o['volume']} {o['state']} ({o['phase']}, {o['done_blocks']}"
    line += f" of {o['total_blocks']} blocks)" if o.get("total_blocks") else " blocks)"
    if o.get("error"):
        line += f": {o['error'].get('error')}: {o['error'].get('message')}"
    console.print(line, markup=False, soft_wrap=True)


def _render_raft_audit(data: dict) -> None:
    records = data.get("audit") or []
    if not records:
        console.print("no Raft audit records")
    t = Table(title="Raft audit (newest last)")
    for col in ("time", "by", "command", "volume", "outcome"):
        t.add_column(col)
    for r in records:
        by = str(r.get("by") or "-") + (" (unchecked claim)" if "signer" in r and r.get("signer") is None else "")
        t.add_row(_utc(r.get("at_ns")), by, str(r.get("op") or "-"), str(r.get("volume") or "-"),
                  "ok" if r.get("ok") else f"refused: {r.get('error')}", style=None if r.get("ok") else "yellow")
    console.print(t)
    dropped = data.get("dropped") if isinstance(data.get("dropped"), dict) else {}
    if dropped:  # rules 4: each signing site's share is cut on its own (a flood drops only its own records)
        console.print("records dropped from the kept audit, by share: " + ", ".join(
            f"{share or 'unattributed'} {entry[0]}" for share, entry in sorted(dropped.items())
            if isinstance(entry, list) and entry), markup=False, soft_wrap=True)


def _render_admin_audit(data: dict) -> None:
    chain = data.get("chain") or {}
    t = Table(title="admin audit log of this site (newest last)")
    for col in ("#", "time", "who", "request", "status"):
        t.add_column(col)
    for r in data.get("records") or []:
        when = _iso_utc(r.get("at"))
        t.add_row(str(r.get("seq")), when, str(r.get("who")), f"{r.get('method')} {r.get('path')}",
                  f"{r.get('status')} {r.get('outcome')}", style="yellow" if r.get("outcome") != "ok" else None)
    console.print(t)
    if chain.get("ok"):
        console.print(f"chain intact: {chain.get('n_records')} records")
    else:
        console.print(f"[red]chain BROKEN at record {esc(chain.get('first_bad_seq'))}[/red]", markup=True)


def _iso_utc(at: Any) -> str:
    """An admin audit record's ``at`` (ISO 8601 in UTC, ``2026-01-31T12:00:00.123456Z``) as
    :data:`TIME_FORMAT`; ``-`` when it is none, the text as it is when it does not parse."""
    import datetime

    if not isinstance(at, str) or not at:
        return "-"
    try:
        when = datetime.datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return at
    if when.tzinfo is None:
        return at
    return when.astimezone(datetime.timezone.utc).strftime(TIME_FORMAT)


def cmd_drill(args: argparse.Namespace) -> int:
    """Recovery drill as an operation with a progress bar; writes the site's signed HTML drill
    report (issue 16) to ``--report`` (default ``drill-VOLUME-SEQ-UTC.html`` here; never over an
    existing file). Exit 0 when the drill passed, 1 (tool) when a check failed (the report says
    which), the error's code when the restore itself failed (no report)."""
    import datetime

    from replicad.core.errors import ToolError

    if args.report:  # checked before the drill runs: a long drill is never lost to a bad path
        wanted = Path(args.report)
        if wanted.exists():
            raise UsageError(f"{wanted} exists: a drill report is never overwritten; name a new file", path=str(wanted))
        if not wanted.absolute().parent.is_dir():
            raise UsageError(f"the directory of --report {wanted} does not exist", path=str(wanted))
        if not os.access(wanted.absolute().parent, os.W_OK):
            raise UsageError(f"the directory of --report {wanted} is not writable", path=str(wanted))
    if args.pdf:  # the browser and a free PDF name, before the drill runs (ops/drillpdf.py)
        from replicad.ops import drillpdf

        drillpdf.find_browser()
        if args.report:
            drillpdf.check_free(drillpdf.pdf_path_for(Path(args.report)))
    body = {"sandbox": str(Path(args.sandbox).absolute()), "seq": args.seq, "keep": args.keep}
    op = api(args, "POST", f"/v1/volumes/{args.volume}/drill", body)
    result = _follow(args, op, f"drill {args.volume}")
    html_text = result.pop("html", None)
    if html_text is not None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path(args.report or f"drill-{args.volume}-{result['seq']}-{stamp}.html")
        try:
            with open(out, "x", encoding="utf-8") as f:  # "x": an earlier report is never overwritten
                f.write(html_text)
        except FileExistsError:
            raise UsageError(f"{out} exists: a drill report is never overwritten (the site keeps a copy at "
                             f"{result.get('report_path')})", path=str(out)) from None
        except OSError as err:
            raise from_os_error(err, f"writing the drill report {out} (the drill itself {result.get('outcome')}; "
                                f"the site keeps its report at {result.get('report_path')})") from None
        result["report_file"] = str(out)
        if args.pdf:  # a print of the signed HTML for the auditor; the HTML stays the evidence
            from replicad.ops import drillpdf

            try:
                result["report_pdf"] = str(drillpdf.print_pdf(out, drillpdf.pdf_path_for(out)))
            except ReplicadError:
                err_console.print(f"the drill {result.get('outcome')} and its signed report is {out}; its PDF print "
                                  "failed:", markup=False, soft_wrap=True)
                raise
    report = result.get("report") or {}

    def render(r: dict) -> None:
        fsck, app = report.get("fsck") or {}, report.get("application_check") or {}
        word = "[green]PASSED[/green]" if r.get("outcome", "passed") == "passed" else "[red]FAILED[/red]"
        console.print(f"drill {esc(r['volume'])}#{esc(r['seq'])} ({esc(r.get('verdict'))}): {word}: restored and root "
                      f"verified {esc(r['root'][:16])}…: RTO {r.get('rto_s', r['seconds']):.2f}s, "
                      f"{esc(r['blocks_written'])} blocks written; "
                      + (f"image kept at {esc(r['target'])}" if r.get("kept") else "image deleted"), markup=True)
        if report:
            rpo = (report.get("rpo") or {}).get("measured_s")
            console.print(f"  RPO {rpo if rpo is not None else '-'} s (target {report['rpo'].get('target_s')} s); "
                          "file-system check: " + ("passed" if fsck.get("ok") else f"not checked ({fsck.get('reason')})"
                                                    if not fsck.get("checked") else f"FAILED ({fsck.get('reason')})")
                          + "; application check: " + ("passed" if app.get("ok") else "not configured"
                                                       if not app.get("configured") else f"FAILED ({app.get('reason')})"),
                          markup=False, soft_wrap=True)
        if r.get("report_pdf"):
            console.print(f"  PDF print: {r['report_pdf']} (the HTML report is the signed evidence)", markup=False,
                          soft_wrap=True)
        if r.get("report_file"):
            console.print(f"  report: {r['report_file']} ("
                          + ("signed by " + str(r.get("report", {}).get("site_id")) if r.get("signature")
                             else "UNSIGNED: the site runs without identity") + f"; the site keeps a copy at "
                          f"{r.get('report_path')})", markup=False, soft_wrap=True)

    _print(args, result, render)
    if result.get("outcome") == "failed" and result.get("verdict") == "suspect":
        raise ToolError(f"drill of {args.volume}#{result['seq']} restored a SUSPECT snapshot: it is no recovery point "
                        "and is not counted as a passed drill (drill the newest clean one)",
                        volume=args.volume, seq=result["seq"], report=result.get("report_file"))
    if result.get("outcome") == "failed":
        raise ToolError(f"drill of {args.volume}#{result['seq']} FAILED its checks (see the report)",
                        volume=args.volume, seq=result["seq"], report=result.get("report_file"))
    return 0


def cmd_drill_verify(args: argparse.Namespace) -> int:
    """``replicad drill verify REPORT``: check a drill report's signature against the key the
    cluster pins for the site it names (``--config`` a site config of the cluster, or ``--key``)
    and that the file is exactly the rendering of its signed data. Exit 0 when it holds, 5
    (integrity) when it does not, 3 when the file is missing, 2 when it is no drill report."""
    from replicad.core import drillreport, identity

    path = Path(args.report_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"no drill report at {path}", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path} as a drill report: {err}", file=str(path)) from None
    report, _ = drillreport.read_html(text)
    cluster_id = None
    if args.key:
        try:
            pinned = {report.get("site_id"): [identity.parse_public_key(k) for k in args.key]}
        except ValueError as err:
            raise UsageError(f"--key: {err}", field="key") from None
    elif getattr(args, "site_config", None):
        from replicad.config import load_config

        cfg = load_config(Path(args.site_config))
        pinned, cluster_id = dict(cfg.trust().keys or {}), cfg.cluster_id
    else:
        raise UsageError("replicad drill verify needs the pinned keys: --config SITE.toml (any site config of the "
                         "cluster) or --key ed25519:... (the drilling site's public key)")
    checked = drillreport.verify_html(text, pinned, cluster_id)
    result = {"file": str(path), "valid": True, "site_id": checked["site_id"], "cluster_id": checked["cluster_id"],
              "volume": checked["volume"], "seq": checked["snapshot"]["seq"], "outcome": checked["outcome"],
              "started_at": checked["started_at"], "ran_by": checked["ran_by"]}
    _print(args, result, lambda r: console.print(
        f"{r['file']}: signature valid (site {r['site_id']}, cluster {r['cluster_id']}): drill of "
        f"{r['volume']}#{r['seq']} {r['outcome'].upper()} at {_iso_utc(r['started_at'])} by token {r['ran_by'].get('token')}",
        markup=False, soft_wrap=True))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Show the retention policy, or change it (``--set key=duration``, admin role)."""
    path = f"/v1/volumes/{args.volume}/retention"
    _no_approved_by(args)
    if not args.set:
        _print(args, api(args, "GET", path), _render_retention)
        return 0
    retention: dict[str, str] = {}
    for key, value in _set_pairs(args.set, "KEY=DURATION (keep_all, hourly, daily, lock)"):
        if value.replace(".", "", 1).isdigit() and value != "0":
            # a bare number is seconds to the API: keep_all=2 meant 2 days, not a request for 2 s
            raise UsageError(f"--set {key}={value}: give the unit (e.g. {value}d, {value}h or {value}s): a "
                             "retention change applies at every site", field=key)
        retention[key] = value
    return _send_change(args, "PUT", path, {"retention": retention}, _render_retention)


def _set_pairs(items: list[str], shape: str) -> Iterator[tuple[str, str]]:
    """``--set`` items (``KEY=VALUE``) as ``(key, value)`` pairs, both stripped, one at a time
    (the caller's own check of a value comes before the next item is looked at).

    Raises:
        UsageError: an item without ``=`` or with an empty key or value (``shape`` says what
        the command takes, e.g. ``KEY=DURATION (keep_all, ...)``).
    """
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--set takes {shape}, got {item!r}")
        yield key.strip(), value.strip()


def _send_change(args: argparse.Namespace, method: str, path: str, body: dict[str, Any],
                 render: Callable[[Any], None]) -> int:
    """Send a change of the cluster's agreed settings (``body``, with the operator's ``--reason``
    when given) and print the answer with ``render`` (``--json``: as it came). Returns 0; errors
    of :func:`api` propagate."""
    if args.reason:
        body = {**body, "reason": args.reason}
    _print(args, api(args, method, path, body), render)
    return 0


def cmd_max_size(args: argparse.Namespace) -> int:
    """Request a new agreed maximum size of a volume (``SIZE`` such as ``200GiB``; admin role):
    another site's operator approves it (``replicad approve REQ``)."""
    return _send_change(args, "PUT", f"/v1/volumes/{args.volume}/max-size", {"max_size_bytes": args.size},
                        _render_max_size)


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune committed snapshots now (``POST /v1/volumes/VOL/prune``, admin role): refused
    inside the lock window; one the agreed retention keeps becomes a request another site
    approves (202), then cools off."""
    return _send_change(args, "POST", f"/v1/volumes/{args.volume}/prune", {"seqs": list(args.seqs)}, _render_prune)


def cmd_remove_volume(args: argparse.Namespace) -> int:
    """Request to forget a volume from the cluster state (``POST /v1/volumes/VOL/remove``, admin
    role): operators of other sites approve it (``replicad approve REQ``), then it cools off,
    vetoable (``replicad veto REQ``); refused while a snapshot of it is inside its lock window.
    Each site keeps its own copies of the volume's snapshots."""
    return _send_change(args, "POST", f"/v1/volumes/{args.volume}/remove", {}, _render_request_state)


def _render_prune(r: dict) -> None:
    """The answer of a prune: what was pruned (and what this site freed), or the request made
    for snapshots the agreed retention keeps."""
    if r.get("request"):
        kept = ", ".join(f"#{s}" for s in r.get("kept_by_retention") or [])
        console.print(f"{r.get('volume')}: {kept or 'these snapshots'} kept by the agreed retention: pruning is a "
                      "request other sites approve (then the cooling-off)", markup=False, soft_wrap=True)
        _render_request_state({**r, "action": "prune_snapshots"})
        return
    local = r.get("local") or {}
    freed = (local.get("gc") or {}).get("bytes_freed")
    console.print(f"{r.get('volume')}: pruned {', '.join(f'#{s}' for s in r.get('pruned') or []) or 'nothing'} "
                  f"from the cluster's catalog (Raft); this site forgot {local.get('forgotten', 0)} snapshot(s)"
                  + (f" and freed {size_text(freed)}" if isinstance(freed, int) else ""), markup=False,
                  soft_wrap=True)


def _render_max_size(data: dict) -> None:
    if "request" in data:
        _render_request_state(data)
        return
    console.print(f"{data['volume']} maximum size: {size_text(data['max_size_bytes'])} (unchanged: already agreed)",
                  markup=False)


def _no_approved_by(args: argparse.Namespace) -> None:
    if getattr(args, "approved_by", None):
        raise UsageError("--approved-by is gone: a change that weakens protection becomes a request; operators of "
                         "other sites approve it at their own site (replicad requests; replicad approve REQ)")


def cmd_verdict(args: argparse.Namespace) -> int:
    """Operator verdict; clearing a suspect snapshot makes a request for other sites to approve."""
    _no_approved_by(args)
    _print(args, api(args, "POST", f"/v1/volumes/{args.volume}/snapshots/{args.seq}/verdict",
                     {"verdict": args.verdict, "reason": args.reason}), _render_verdict)
    return 0


def _render_evidence(e: dict) -> None:
    """``replicad evidence VOL SEQ``: the cluster's verdict, every site's own opinion, and what
    this site saw (``here``: base, signals, reasons, the blocks)."""
    style = "red" if e.get("verdict") == "suspect" else "green"
    console.print(f"{esc(e['volume'])}#{esc(e['seq'])}: [{style}]{esc(e.get('verdict'))}[/{style}]"
                  + (" (confirmed by a person)" if e.get("confirmed") else "")
                  + (f" — {esc(e['verdict_reason'])}" if e.get("verdict_reason") else ""),
                  soft_wrap=True, markup=True)
    if e.get("disagreement"):
        console.print("[red]the sites' own verdicts DISAGREE[/red]: a site is wrong, broken or lying "
                      "(see ReplicadVerdictDisagreement in the README)", markup=True)
    from replicad.ops.evidenceview import evidence_lines, mark_lines, opinion_cells  # issue 16: readable, --json exact

    if console.width < NARROW_COLUMNS:  # one line per site: a table of long reasons is unreadable at 80
        console.print("each site's own verdict:")
        for site, o in sorted((e.get("opinions") or {}).items()):
            score, cumulative, first, reason = opinion_cells(o)
            console.print(f"  {site}: {o.get('verdict')}, score {score}, cumulative {cumulative}, first suspect "
                          f"{first}" + (f": {reason}" if reason else ""), markup=False, highlight=False,
                          soft_wrap=True, style="red" if o.get("verdict") == "suspect" else None)
    else:
        t = Table(title="each site's own verdict")
        for col in ("site", "verdict", "score", "cumulative", "first suspect", "reason"):
            t.add_column(col)
        for site, o in sorted((e.get("opinions") or {}).items()):
            t.add_row(site, str(o.get("verdict")), *opinion_cells(o),
                      style="red" if o.get("verdict") == "suspect" else None)
        console.print(t)
    for line in mark_lines(e) + evidence_lines(e):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _render_detection(d: dict) -> None:
    """``replicad detection VOL``: the cluster's policy (Raft) and the one applied here."""
    from replicad.core.units import format_duration

    if "request" in d:
        _render_request_state(d)
        return

    def shown(key: str, value: Any) -> str:
        if isinstance(value, list):  # ransom_notes: one pattern a line, as written (no repr's doubled backslashes)
            return "\n".join(map(str, value)) or "(none)"
        return format_duration(value) if key.endswith("_s") and isinstance(value, (int, float)) else str(value)

    policy, here = d.get("detection") or {}, d.get("effective_here") or {}
    t = Table(title=f"{d['volume']} detection policy" + (" (applied)" if d.get("status") == "applied" else ""))
    for col in ("key", "cluster (Raft)", "applied here") + (("was",) if "previous" in d else ()):
        t.add_column(col)
    for key in sorted(policy):
        row = [key, shown(key, policy[key]), shown(key, here[key]) if key in here else "-"]
        if "previous" in d:
            row.append(shown(key, (d.get("previous") or {}).get(key, "-")))
        t.add_row(*row, style="yellow" if key in here and here[key] != policy[key] else None)
    console.print(t)
    if here and any(here.get(k) != v for k, v in policy.items()):
        console.print("applied here differs: this site's [volumes.anomaly] tightens the cluster's policy",
                      markup=False)


def _policy_value(key: str, text: str) -> Any:
    """A ``--set KEY=VALUE`` value of the detection policy: ``mode`` as given; ``ransom_notes`` and
    ``ransom_note_strong`` as a JSON list of regular expressions (the whole list); ``*_s`` keys
    as a duration (``7d``, ``3600``) in whole seconds; the rest as a number. Raises UsageError."""
    from replicad.core.units import parse_duration

    if key == "mode":
        return text
    if key in ("ransom_notes", "ransom_note_strong"):
        try:
            notes = json.loads(text)
        except ValueError as err:
            raise UsageError(f"--set {key}=...: a JSON list of regular expressions ({err})",
                             field=key) from None
        if not isinstance(notes, list):
            raise UsageError(f"--set {key}=...: a JSON list of regular expressions", field=key)
        return notes
    if key.endswith("_s"):
        try:
            return int(parse_duration(text))
        except (ValueError, TypeError, ReplicadError) as err:
            raise UsageError(f"--set {key}={text}: not a duration ({err})", field=key) from None
    try:
        number = float(text)
    except (ValueError, TypeError):  # not Python's "could not convert string to float"
        raise UsageError(f"--set {key}={text}: not a number (a decimal such as 0.05 or 2; shares are fractions: "
                         f"0.05 is 5 %)", field=key, value=text) from None
    if not math.isfinite(number):
        raise UsageError(f"--set {key}={text}: not a finite number", field=key, value=text)
    return int(number) if number.is_integer() and "." not in text else number


def cmd_detection(args: argparse.Namespace) -> int:
    """Show the detection policy (``GET /v1/volumes/VOL/detection``) or change keys of it
    (``--set key=value``, ``PUT`` with ``{"detection": {key: value}, "reason": R}``): every
    change becomes a request other sites approve, then cools off (a stricter one too)."""
    path = f"/v1/volumes/{args.volume}/detection"
    if not args.set:
        if args.reason:
            raise UsageError("--reason goes with --set (a change); without --set the policy is only shown")
        _print(args, api(args, "GET", path), _render_detection)
        return 0
    change = {key: _policy_value(key, value)
              for key, value in _set_pairs(args.set, "KEY=VALUE (e.g. min_score=0.01, window_s=14d, mode=encrypted)")}
    return _send_change(args, "PUT", path, {"detection": change}, _render_detection)


def cmd_identity_init(args: argparse.Namespace) -> int:
    """Create a site key file (mode 0600, never overwritten) and print its public key line."""
    from replicad.core import identity

    out = Path(args.out)
    key = identity.generate_private_key()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{out} exists: a site key is never overwritten (rotation: write the new key to another "
                         "file, see README 'Site identity')", path=str(out)) from None
    except OSError as err:
        raise from_os_error(err, f"creating {out}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(identity.private_key_pem(key))
        f.flush()
        os.fsync(f.fileno())
    public = identity.format_public_key(identity.public_key_raw(key))
    _print(args, {"key_file": str(out), "public_key": public}, lambda r: console.print(
        f"wrote {r['key_file']} (mode 0600). Put in this site's config:\n  [identity]\n  key_file = "
        f"\"{r['key_file']}\"\nand in this site's [[sites]] entry of EVERY site's config:\n"
        f"  public_key = \"{r['public_key']}\"", markup=False, soft_wrap=True))
    return 0


def cmd_identity_show(args: argparse.Namespace) -> int:
    """Print this site's public key (from its key file) and every pinned key of the config."""
    from replicad.config import load_config, load_signer

    path = args.identity_config or getattr(args, "site_config", None)
    if not path:
        raise UsageError("replicad identity show needs the site's config: --config FILE")
    cfg = load_config(Path(path))
    signer = load_signer(cfg)
    data = {"site_id": cfg.site_id, "cluster_id": cfg.cluster_id, "unsafe_unsigned": cfg.identity.unsafe_unsigned,
            "public_key": signer.public_key if signer else None,
            "pinned": {s.site_id: list(s.public_key) for s in cfg.sites}}

    def render(r: dict) -> None:
        if r["public_key"] is None:
            console.print(f"site {r['site_id']}: UNSAFE unsigned mode (no key)")
        else:
            console.print(f"site {r['site_id']} (cluster {r['cluster_id']}) signs with:\n  public_key = "
                          f"\"{r['public_key']}\"", markup=False, soft_wrap=True)
        for site, keys in r["pinned"].items():
            console.print(f"  pinned for {site}: {', '.join(keys) or 'NONE'}", markup=False, soft_wrap=True)

    _print(args, data, render)
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the hash chain of an audit file (admin-audit.jsonl or peer-audit.jsonl); exit 5
    (integrity) if it is broken, 3 (not found) if there is no such file, 2 (usage) if the file
    is no audit log at all (:func:`_looks_like_audit_log`)."""
    from replicad.storage.audit import verify_chain

    if not Path(args.file).is_file():  # a mistyped path must not read as "chain intact"
        raise NotFoundError(f"no audit file at {args.file}", file=args.file)
    if not _looks_like_audit_log(Path(args.file)):  # not "chain BROKEN at record 1": another file
        raise UsageError(f"{args.file} is not an audit log: none of its lines is an audit record (a JSON object "
                         "with seq, prev and hash); give admin-audit.jsonl or peer-audit.jsonl of a site's "
                         "data_dir", file=args.file)
    ok, n, bad = verify_chain(Path(args.file))
    result = {"file": args.file, "ok": ok, "n_records": n, "first_bad_seq": bad}
    _print(args, result, lambda r: console.print(  # one line whatever the width: scripts grep it
        f"{r['file']}: {r['n_records']} records, chain intact" if r["ok"] else
        f"{r['file']}: chain BROKEN at record {r['first_bad_seq']} ({r['n_records']} lines)",
        soft_wrap=True, style=None if r["ok"] else "red"))
    if not ok:
        raise IntegrityError(f"audit chain of {args.file} is broken at record {bad}", file=args.file,
                             first_bad_seq=bad, n_records=n)
    return 0


def _looks_like_audit_log(path: Path) -> bool:
    """True when some line of ``path`` (an existing file) is shaped like an audit record (a JSON
    object with ``seq``, ``prev`` and ``hash``), or the file is empty (an empty chain). A damaged
    audit log keeps such lines and goes to the chain check; a file of another kind has none.

    Raises:
        ReplicadError (from_os_error) when the file cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise from_os_error(err, f"reading {path}") from None
    if not data.strip():
        return True
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and {"seq", "prev", "hash"} <= set(rec):
            return True
    return False


def cmd_hash_token(args: argparse.Namespace) -> int:
    """Print the SHA-256 of a token read from stdin (or of a new random one with --generate)."""
    from replicad.ops.auth import MIN_TOKEN_CHARS, generate_token, hash_token

    given = [o for o, k in (("--token", "token"), ("--token-file", "token_file")) if getattr(args, k, None)]
    if given:  # the admin API's token, which this offline command never uses: not silently ignored
        raise UsageError(f"hash-token reads the token to hash from stdin (echo \"$TOKEN\" | replicad hash-token), "
                         f"or makes one with --generate; it takes no {' or '.join(given)} (nothing hashed)",
                         options=given)
    if args.generate:
        token = generate_token()
    else:
        lines = sys.stdin.read().splitlines()
        token = lines[0].strip() if lines else ""
        if len(token) < MIN_TOKEN_CHARS:
            raise UsageError(f"a token must have at least {MIN_TOKEN_CHARS} characters; make one with "
                             "'replicad hash-token --generate'", length=len(token))
    digest = hash_token(token)
    if args.generate:
        _print(args, {"token": token, "sha256": digest}, lambda r: console.print(
            f"token:  {r['token']}\nsha256: {r['sha256']}\n"
            "give the token to its holder; put only the sha256 in [[admin.tokens]]", soft_wrap=True, markup=False))
    else:
        _print(args, {"sha256": digest}, lambda r: console.print(r["sha256"], soft_wrap=True))
    return 0


def _config_path(args: argparse.Namespace) -> str:
    """The config file of ``run`` / ``check-config``: given positionally or as ``--config``."""
    path = getattr(args, "config", None) or getattr(args, "site_config", None)
    if not path:
        raise UsageError(f"replicad {args.command} needs the site's config file: replicad {args.command} "
                         "/etc/replicad/SITE.toml (or --config FILE)")
    args.config = path
    return path


def cmd_run(args: argparse.Namespace) -> int:
    from replicad.config import load_config
    from replicad.ops.service import run_site

    cfg = load_config(Path(_config_path(args)))
    setup_logging(cfg.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(run_site(cfg, Path(args.config)))


def cmd_check_config(args: argparse.Namespace) -> int:
    from replicad.config import load_config

    from replicad.site.datadir import data_dir_problems

    cfg = load_config(Path(_config_path(args)))
    problems = data_dir_problems(Path(cfg.data_dir))  # exists or creatable, a directory, writable (as this user)
    if problems:
        raise ConfigError(problems[0], problems=problems, path=str(cfg.data_dir))
    if cfg.tls is not None:
        from replicad.peer.tls import check_site_tls

        check_site_tls(cfg.tls, cfg.site_id)
    console.print(f"{args.config}: ok — site {cfg.site_id}, {len(cfg.sites)} sites, {len(cfg.volumes)} volume(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from replicad.lab.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, size_mib=args.size_mib, seed=args.seed)


EXAMPLES: dict[str, str] = {
    # snapshot exports and file views (issue 16)
    "export": "replicad export ehr --snapshot 42            # prints the socket and an nbd+unix:// URI\n"
              "nbdinfo 'nbd+unix:///?socket=/var/lib/replicad/nbd/x1a2b3c4d.sock'\n"
              "replicad export                              # the open exports\nreplicad export --close x1a2b3c4d",
    "mount": "mkdir -p /mnt/ehr-42 && replicad mount ehr --snapshot 42 /mnt/ehr-42\n"
             "cp -a /mnt/ehr-42/scans/2026-12-01.dcm /srv/restore/ && replicad umount /mnt/ehr-42",
    "umount": "replicad umount /mnt/ehr-42",
    "files": "replicad files ehr --snapshot 42 /scans\nreplicad files ehr --snapshot 42 / -r --json",
    "diff": "replicad diff ehr 41 42        # + added, - removed, ~ changed (why), m metadata only",
    "run": "replicad run /etc/replicad/site-a.toml\nreplicad run --config /etc/replicad/site-a.toml",
    "check-config": "replicad check-config /etc/replicad/site-a.toml   # every problem at once, exit 2 if any",
    "demo": "replicad demo\nreplicad demo --dir ./demo-state --size-mib 128",
    "status": "replicad status                       # exit 1 if degraded (the reasons on stderr)\n"
              "replicad status --json | jq .degraded_reasons\n"
              "replicad --admin http://10.0.0.2:7301 status",
    "volumes": "replicad volumes",
    "snapshots": "replicad snapshots ehr",
    "snapshot": "replicad snapshot ehr                 # exit 7 if it was not committed (0 if committed, "
                "whatever the sites judge it after: replicad snapshots ehr)",
    "readopt": "replicad readopt ehr --snapshot 3:41",
    "promote": "replicad promote ehr --to site-b       # at (or forwarded to) the primary; waits until site-b "
               "serves it\nreplicad promote ehr --force             # at the site to promote, when the primary "
               "is lost\nreplicad promote ehr --force --snapshot 41   # ... restoring #41, the last one known "
               "clean",
    "demote": "replicad demote ehr",
    "restore": "replicad restore ehr --target /srv/restore/ehr.img\n"
               "replicad restore ehr --snapshot 41 --target /srv/restore/ehr-41.img\n"
               "replicad restore ehr --target /dev/vg0/ehr --overwrite   # admin token\n"
               "Ctrl-C stops following; the restore goes on: replicad cancel OP stops it",
    "cancel": "replicad cancel 3f9c0a1b2d4e            # the id printed by restore/drill or listed on Ctrl-C",
    "operation": "replicad operation 3f9c0a1b2d4e",
    "verify": "replicad verify ehr --snapshot 41",
    "drill": "replicad drill ehr --sandbox /srv/drill\n"
             "replicad drill verify drill-ehr-41-20261207T031500Z.html --config /etc/replicad/site-a.toml",
    "drill-verify": "replicad drill verify drill-ehr-41-20261207T031500Z.html --config /etc/replicad/site-a.toml\n"
                    "replicad drill verify REPORT --key ed25519:...   # the drilling site's public key",
    "members": "replicad members\nreplicad members propose /etc/replicad/site-a.new.toml --reason 'add site-d'",
    "retention": "replicad retention ehr\nreplicad retention ehr --set lock=48h --set daily=30d",
    "prune": "replicad prune ehr 41 --reason 'held a copy of a deleted record'   # kept by the retention: a "
             "request\nreplicad approve r9                       # at another site, with its admin token",
    "remove-volume": "replicad remove-volume old-vm --reason 'VM decommissioned'   # then: replicad approve REQ "
                     "at another site; it cools off",
    "max-size": "replicad max-size ehr 200GiB --reason \"disk resized to 120 GiB\"   # then: replicad approve REQ "
                "at another site",
    "evidence": "replicad evidence ehr 42                # why each site judged ehr#42 as it did\n"
                "replicad evidence ehr 42 --json | jq .here.blocks",
    "detection": "replicad detection ehr\n"
                 "replicad detection ehr --set min_score=0.01 --reason 'tighter after an incident'   # a request\n"
                 "replicad detection ehr --set min_score=0.05 --reason 'bulk imports'   # weaker: request, cooling-off",
    "verdict": "replicad verdict ehr 42 suspect --reason 'encrypted files seen'\n"
               "replicad verdict ehr 42 clean --reason 'bulk import of zip archives'   # a request others approve",
    "requests": "replicad requests",
    "approve": "replicad approve r7                    # with THIS site's admin token",
    "revoke": "replicad revoke site-c --reason 'host compromised'",
    "raise-rules": "replicad raise-rules --leave-behind site-c --reason 'site-c cannot be upgraded this week'\n"
                   "replicad raise-rules --cancel            # withdraw this site's consent",
    "veto": "replicad veto r7",
    "identity": "replicad identity init --out /etc/replicad/site.key\n"
                "replicad identity show --config /etc/replicad/site-a.toml",
    "audit": "replicad audit log                     # the cluster's Raft audit (commands, who, outcome)\n"
             "replicad audit admin --limit 50        # this site's admin audit log and its chain check\n"
             "replicad audit verify /var/lib/replicad/admin-audit.jsonl\n"
             "replicad audit verify /var/lib/replicad/peer-audit.jsonl",
    "hash-token": "replicad hash-token --generate\necho \"$TOKEN\" | replicad hash-token",
}


def _json_error(err: ReplicadError) -> None:
    """``--json``: an error as the API's JSON error document ``{error, message, evidence}`` on stdout."""
    print(json.dumps(err.to_dict()), flush=True)


def _token_joined(argv: list[str]) -> list[str]:
    """``argv`` with ``--token VALUE`` written ``--token=VALUE`` when VALUE begins with ``-``:
    argparse reads such a value as an option ("expected one argument"), and tokens generated
    before ``hash-token --generate`` stopped making them begin with ``-`` 1 time in 64. Only
    the word right after ``--token``, and only when it is long enough to be a token
    (``auth.MIN_TOKEN_CHARS``), so no option is swallowed."""
    from replicad.ops.auth import MIN_TOKEN_CHARS

    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--token" and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and len(argv[i + 1]) >= MIN_TOKEN_CHARS:
            out.append(f"--token={argv[i + 1]}")
            i += 2
            continue
        if word == "--":
            out.extend(argv[i:])
            break
        out.append(word)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``replicad`` console script. Returns (and exits with) the exit code."""
    # allow_abbrev=False: "--to" must never be read as an abbreviation of "--token"
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--admin", default=argparse.SUPPRESS, help="admin API URL of the site to talk to")
    common.add_argument("--config", dest="site_config", default=argparse.SUPPRESS,
                        help="site config file (its admin_url is used)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    common.add_argument("--token", default=argparse.SUPPRESS,
                        help="admin API bearer token (visible in ps: prefer --token-file or $REPLICAD_TOKEN)")
    common.add_argument("--token-file", default=argparse.SUPPRESS, help="file whose first line is the token")
    # offline commands (run, check-config, identity init, hash-token) talk to no admin API:
    # no --admin/--token on their help pages
    json_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    json_only.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    offline = argparse.ArgumentParser(add_help=False, allow_abbrev=False, parents=[json_only])
    offline.add_argument("--config", dest="site_config", metavar="FILE", default=argparse.SUPPRESS,
                         help="the site's config file")
    parser = argparse.ArgumentParser(prog="replicad", parents=[common], allow_abbrev=False,
                                     description="replicad: block-level snapshot replication between sites, "
                                                 "agreed through Raft, for recovery after ransomware.")
    class _VersionAction(argparse.Action):
        """``--version``: the release's identity (:func:`replicad.release.identity_text`, what
        ``replicad_build_info`` and ``replicad status`` show), computed only when asked."""

        def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
            from replicad.release import identity_text

            print(identity_text())
            parser.exit()

    parser.add_argument("--version", nargs=0, action=_VersionAction,
                        help="the release: version, cluster rules it applies, digest of its sources, git commit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, parent: argparse.ArgumentParser = common) -> argparse.ArgumentParser:
        examples = EXAMPLES.get(name)
        return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", parents=[parent],
                              allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="examples:\n  " + examples.replace("\n", "\n  ") if examples else None)

    p = command("run", help="run a site daemon", parent=offline)
    p.add_argument("config", nargs="?", help="the site's config file, e.g. /etc/replicad/site-a.toml "
                                             "(or --config FILE)")
    p.set_defaults(fn=cmd_run)
    p = command("check-config", help="validate a site config file (all problems at once)", parent=offline)
    p.add_argument("config", nargs="?", help="the site's config file to check, e.g. /etc/replicad/site-a.toml "
                                             "(or --config FILE)")
    p.set_defaults(fn=cmd_check_config)
    p = command("demo", help="three sites on this machine: replicate, attack, fail over, restore")
    p.add_argument("--dir", help="keep the demo's state in this directory")
    p.add_argument("--size-mib", type=int, default=256, help="volume size (MiB)")
    p.add_argument("--seed", type=int, default=20261129,
                   help="seed of the volume's files and of the attack (the same seed, the same story; default "
                        "%(default)s)")
    p.set_defaults(fn=cmd_demo)

    p = command("status", help=f"site, Raft and per-volume status; exit {STATUS_DEGRADED_EXIT} if degraded")
    p.set_defaults(fn=cmd_status)
    p = command("volumes", help="the cluster's volumes")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/volumes"), _render_volumes))
    p = command("snapshots", help="snapshots of a volume")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", f"/v1/volumes/{a.volume}/snapshots"), _render_snapshots))
    p = command("snapshot", help="take a snapshot now (at the primary); exit 7 if it was not committed")
    p.add_argument("volume")
    p.set_defaults(fn=cmd_snapshot)
    p = command("readopt", help="at the primary: make a snapshot of a previous cluster incarnation the next one")
    p.add_argument("volume")
    p.add_argument("--incarnation", help="hex prefix of the previous incarnation (when several are held here)")
    p.add_argument("--snapshot", dest="old", metavar="EPOCH:SEQ", help="the old record (default: the newest)")
    p.add_argument("--confirm-suspect", action="store_true",
                   help="re-adopt it although this site judged it suspect in its incarnation (after looking at it)")
    p.set_defaults(fn=cmd_readopt)
    p = command("promote", help="planned switchover (--to SITE) or forced failover (--force, here); returns "
                "once the new primary serves the volume, exit 7 if it does not yet")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--to", metavar="SITE", help="planned switchover: hand the volume to SITE (no data lost); "
                   "sent to the site you talk to, which forwards it to the current primary")
    g.add_argument("--force", action="store_true",
                   help="forced failover: the site you talk to (--admin/--config) takes the volume over from its "
                        "newest clean snapshot; run it AT the site to promote (primary lost, or no primary)")
    p.add_argument("--snapshot", type=int, metavar="SEQ",
                   help="with --force: restore committed snapshot SEQ (the last one you know is clean) instead of "
                        "the newest clean one; refused if it is not committed, held by no site, or suspect")
    p.add_argument("--instant", action="store_true",
                   help="with --force: serve the snapshot at once as a writable NBD export (returns its socket) "
                        "while the image is written in the background; the export's writes are copied into the "
                        "image at the switch-over (README 'Instant recovery')")
    p.set_defaults(fn=cmd_promote)
    p = command("demote", help="leave a volume without primary (fences the current one)")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/volumes/{a.volume}/demote", {}), lambda r: console.print(
        f"{r['volume']}: no primary now, epoch {r['epoch']} (the old primary fences itself); nothing is replicated "
        f"until 'replicad promote {r['volume']} --force' runs AT the site to promote")))
    p = command("restore", help="restore a committed snapshot into a path; succeeds only once its root is verified")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("--target", required=True, metavar="PATH",
                   help="file or block device ON THE SITE to write the image to; its directory must exist "
                        "(an existing target needs --overwrite)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--snapshot", type=int, dest="seq", metavar="SEQ",
                   help="the committed snapshot to restore, by seq as 'replicad snapshots VOL' lists it "
                        "(default: the newest clean)")
    g.add_argument("--last-clean", action="store_true", help="the newest clean snapshot (the default)")
    g.add_argument("--divergent", metavar="EPOCH:SEQ",
                   help="a divergent snapshot of this site (what an old primary wrote alone), for forensics")
    p.add_argument("--overwrite", action="store_true", help="rewrite an existing target (only differing blocks)")
    p.set_defaults(fn=cmd_restore)
    p = command("cancel", help="cancel a running restore or drill (its partial image is removed)")
    p.add_argument("operation", help="the operation id (printed by restore and drill, and on Ctrl-C)")
    p.set_defaults(fn=cmd_cancel)
    p = command("operation", help="state and progress of a restore or drill")
    p.add_argument("operation", help="the operation id")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", f"/v1/operations/{a.operation}"), _render_operation))
    p = command("verify", help="re-read every chunk of a snapshot held here; heal corrupt ones from holders")
    p.add_argument("volume")
    p.add_argument("--snapshot", type=int, dest="seq", help="snapshot seq (default: the newest held here)")
    p.set_defaults(fn=cmd_verify)
    p = command("drill", help="recovery drill: restore into a sandbox while replication goes on, verify, clean up")
    p.add_argument("volume")
    p.add_argument("--sandbox", required=True, help="directory on the site where the drill image is written")
    p.add_argument("--snapshot", type=int, dest="seq", help="snapshot seq (default: the newest clean)")
    p.add_argument("--keep", action="store_true", help="keep the restored image")
    p.add_argument("--report", help="where to write the signed HTML drill report (default "
                                    "drill-VOLUME-SEQ-UTC.html here); 'replicad drill verify FILE' checks it")
    p.add_argument("--pdf", action="store_true", help="also print the report to a PDF beside it (same name, .pdf) "
                   "with headless Chromium; the HTML stays the signed evidence")
    p.set_defaults(fn=cmd_drill)
    # "replicad drill verify FILE" is parsed as drill-verify (see the argv rewrite below); both spellings work
    p = command("drill-verify", help="check a drill report's signature against the key the cluster pins for "
                "its site, offline (also spelled 'replicad drill verify REPORT')", parent=offline)
    p.add_argument("report_file", metavar="REPORT", help="the drill report (HTML) that 'replicad drill' wrote")
    p.add_argument("--key", action="append", help="the drilling site's public key ed25519:... (instead of --config)")
    p.set_defaults(fn=cmd_drill_verify)
    p = command("members", help="the sites of the Raft group and whether this site reaches them")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/members"), _render_members))
    members_sub = p.add_subparsers(dest="members_command")
    pm = members_sub.add_parser("propose", help="request that the cluster agrees on the [[sites]] of FILE "
                                "(a majority of the sites approves)", parents=[common])
    pm.add_argument("file", help="the new site config (its [[sites]] list is proposed)")
    pm.add_argument("--reason", default="", help="why (shown to the operators asked to approve)")
    pm.set_defaults(fn=cmd_members_propose)
    p = command("retention", help="show or change a volume's retention policy (agreed through Raft)")
    p.add_argument("volume")
    p.add_argument("--set", action="append", metavar="KEY=DURATION",
                   help="keep_all, hourly, daily or lock, e.g. --set lock=48h (repeatable)")
    p.add_argument("--reason", default="", help="why (shown to the operators asked to approve: every change, "
                   "longer too, is a request)")
    p.add_argument("--approved-by", action="append", help=argparse.SUPPRESS)  # retired: says what replaced it
    p.set_defaults(fn=cmd_retention)
    p = command("prune", help="prune committed snapshots now; one the agreed retention keeps becomes a request "
                "another site approves (then the cooling-off); refused inside the lock window")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("seqs", type=int, nargs="+", metavar="SEQ", help="the snapshots' seqs, as 'replicad snapshots "
                   "VOL' lists them")
    p.add_argument("--reason", default="", help="why (shown to the operators asked to approve)")
    p.set_defaults(fn=cmd_prune)
    p = command("remove-volume", help="request to forget a volume from the cluster state; other sites approve it, "
                "then it cools off (vetoable); refused while a snapshot is inside the lock window")
    p.add_argument("volume", help="the volume's name, as 'replicad status' lists it")
    p.add_argument("--reason", default="", help="why (shown to the operators asked to approve)")
    p.set_defaults(fn=cmd_remove_volume)
    p = command("max-size", help="request a larger (or smaller) agreed maximum size of a volume; another site "
                "approves it")
    p.add_argument("volume")
    p.add_argument("size", help="the new maximum, e.g. 200GiB (at least the volume's size)")
    p.add_argument("--reason", default="", help="why (shown to the operators asked to approve)")
    p.set_defaults(fn=cmd_max_size)
    p = command("verdict", help="operator verdict on a snapshot; clearing a suspect one is a request others approve")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("seq", type=int, help="the snapshot's seq, as 'replicad snapshots VOL' lists it")
    p.add_argument("verdict", choices=("clean", "suspect"),
                   help="suspect: this site's vote, at once; clean: withdraws this site's own suspect mark, else a "
                   "request other sites approve: a person's confirmation (clears a suspect snapshot; on a clean one "
                   "the slow windows then measure from it and learn its rate of benign random writes)")
    p.add_argument("--reason", default="", help="why (kept in the audit logs)")
    p.add_argument("--approved-by", action="append", help=argparse.SUPPRESS)  # retired: says what replaced it
    p.set_defaults(fn=cmd_verdict)
    p = command("evidence", help="why each site judged a snapshot clean or suspect: every site's own verdict "
                "and this site's evidence (blocks, signals, base, restore point)")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("seq", type=int, help="the snapshot's seq, as 'replicad snapshots VOL' or a log line names it")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", f"/v1/volumes/{a.volume}/snapshots/{a.seq}/evidence"),
                                       _render_evidence))
    p = command("detection", help="show or change a volume's ransomware detection policy (agreed through Raft; "
                "every change is a request other sites approve)")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a policy key: mode (content|encrypted), min_score, factor, cumulative_max, baseline_cap, "
                        "magic_min, wipe_max, cold_max, change_max (numbers), window_s, cold_age_s (durations, "
                        "e.g. 14d); repeatable")
    p.add_argument("--reason", default="", help="why (shown to the operators asked to approve: every change, "
                   "stricter too, is a request)")
    p.set_defaults(fn=cmd_detection)
    p = command("requests", help="requests other sites approve (policy changes, longer ones too; revocations, "
                "membership; pending, applied, expired) seen at this site")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/requests"), _render_requests))
    p = command("approve", help="approve a request of another site, as THIS site (admin token of this site)")
    p.add_argument("request", help="request id, as listed by replicad requests (r1, r2 ...)")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/requests/{path_segment(a.request, 'request id')}"
                                              "/approve", {}), _render_request_state))
    p = command("revoke", help="request to revoke a site's identity (compromised); a majority of sites approves")
    p.add_argument("site", help="the site whose keys to revoke")
    p.add_argument("--reason", default="", help="why (shown to the operators asked to approve)")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/sites/{path_segment(a.site, 'site name')}/revoke",
                                              {"reason": a.reason}), _render_request_state))
    p = command("raise-rules", help="consent, as THIS site's operator, to raise the cluster's rules leaving "
                "members behind (still on an older release, or withholding their release report); the sites "
                "raise once a majority of the operators consented")
    p.add_argument("--leave-behind", action="append", default=[], metavar="SITE",
                   help="a member to leave behind (repeat, or comma-separated)")
    p.add_argument("--reason", default="", help="why (kept with the consent, in the admin audit log)")
    p.add_argument("--cancel", action="store_true", help="withdraw this site's consent")
    p.set_defaults(fn=cmd_raise_rules)
    p = command("veto", help="stop a request (pending, or approved and cooling off) before it takes effect")
    p.add_argument("request", help="request id, as listed by replicad requests")
    p.add_argument("--reason", default="", help="why (kept in this site's log and admin audit log)")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/requests/{path_segment(a.request, 'request id')}"
                                              "/veto", {"reason": a.reason} if a.reason else {}),
                                       _render_request_state))
    p = command("identity", help="this site's signing key: create one, or show the public key")
    id_sub = p.add_subparsers(dest="identity_command", required=True)
    pi = id_sub.add_parser("init", help="create a site key file (mode 0600) and print its public key line",
                           description="Create a site's Ed25519 signing key file (mode 0600, never overwritten) "
                           "and print the lines to put in the configs (offline).", parents=[json_only])
    pi.add_argument("--out", required=True, help="the key file to create (never overwritten)")
    pi.set_defaults(fn=cmd_identity_init)
    ps = id_sub.add_parser("show", help="print the site's public key and every key its config pins",
                           allow_abbrev=False)
    ps.add_argument("--config", dest="identity_config", default=None,
                    help="the site's config file (also accepted before the command)")
    ps.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    ps.set_defaults(fn=cmd_identity_show)
    p = command("audit", help="audit records: the cluster's (Raft) and this site's admin log")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    pl = audit_sub.add_parser("log", help="the newest Raft audit records: every command, who sent it, its outcome",
                              parents=[common])
    pl.add_argument("--signer", default=None, help="only this site's records (under rules 4: those whose signature "
                    "was checked as its own, so another site's flood never hides them; '' the unattributed claims)")
    pl.add_argument("--limit", type=int, default=200, help="records to show, the newest (1-2000, default 200)")
    pl.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/audit?" + urllib.parse.urlencode(
        {"limit": a.limit, **({"signer": a.signer} if a.signer is not None else {})})), _render_raft_audit))
    pa = audit_sub.add_parser("admin", help="this site's admin audit log (newest records) and its chain check",
                              parents=[common])
    pa.add_argument("--limit", type=int, default=200, help="records to show (1-10000, default 200)")
    pa.set_defaults(fn=lambda a: _print(a, api(a, "GET", f"/v1/audit/admin?limit={a.limit}"), _render_admin_audit))
    pv = audit_sub.add_parser("verify", help="check the hash chain of an audit file: admin-audit.jsonl (admin API "
                              "requests) or peer-audit.jsonl (peer writes received), offline; exit 5 if broken",
                              description="Check the hash chain of a site's audit file offline: admin-audit.jsonl "
                              "(every admin API request) or peer-audit.jsonl (every peer write it received), both in "
                              "the site's data_dir. Exit 0 intact, 5 broken (the first bad record is named), 3 no "
                              "such file, 2 not an audit log.", parents=[json_only])
    pv.add_argument("file", help="the audit file, e.g. /var/lib/replicad/admin-audit.jsonl or "
                                 "/var/lib/replicad/peer-audit.jsonl")
    pv.set_defaults(fn=cmd_audit_verify)
    # snapshot exports and file views (issue 16): run these on the site's machine (unix sockets, mounts)
    p = command("export", help="serve a snapshot as a block device over NBD on a unix socket of the site; "
                "without VOLUME: the open exports")
    p.add_argument("volume", nargs="?", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("--snapshot", type=int, dest="seq", metavar="SEQ", help="the committed snapshot's seq")
    p.add_argument("--writable", action="store_true", help="accept writes (kept in an overlay, never the snapshot; "
                   "discarded when the export closes)")
    p.add_argument("--close", metavar="EXPORT_ID", help="close an export (its pin and overlay go with it)")
    p.add_argument("--ttl", metavar="DURATION", help="close the export once nobody read, wrote or held a connection "
                   "for this long (e.g. 2h; default and maximum: the site's [admin] export_idle_ttl, 24h unless set)")
    p.set_defaults(fn=cmd_export)
    p = command("mount", help="mount a snapshot read-only at DIR (ext4, XFS), until replicad umount DIR")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("--snapshot", type=int, dest="seq", metavar="SEQ", required=True, help="the snapshot's seq")
    p.add_argument("dir", help="an empty directory")
    p.add_argument("--partition", type=int, metavar="N", help="an image with a partition table: partition N "
                   "(default: the only one with an ext2/3/4 or XFS file system)")
    p.set_defaults(fn=cmd_mount)
    p = command("umount", help="unmount a snapshot mounted by replicad mount (export, loop device, FUSE)")
    p.add_argument("dir")
    p.set_defaults(fn=cmd_umount)
    p = command("files", help="list a snapshot's files (size, mtime, mode) through a temporary read-only mount")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("--snapshot", type=int, dest="seq", metavar="SEQ", required=True, help="the snapshot's seq")
    p.add_argument("path", nargs="?", default="/", help="a directory or file in the snapshot (default /)")
    p.add_argument("-r", "--recursive", action="store_true", help="everything below PATH")
    p.add_argument("--partition", type=int, metavar="N", help="an image with a partition table: partition N "
                   "(default: the only one with an ext2/3/4 or XFS file system)")
    p.set_defaults(fn=cmd_files)
    p = command("diff", help="files added, removed and changed between two snapshots (content compared by digest)")
    p.add_argument("volume", help="the volume's name (as in [[volumes]] name)")
    p.add_argument("a", type=int, metavar="A", help="the older snapshot's seq")
    p.add_argument("b", type=int, metavar="B", help="the newer snapshot's seq")
    p.add_argument("--quick", action="store_true", help="equal size and mtime count as equal content (no reads)")
    p.add_argument("--partition", type=int, metavar="N", help="an image with a partition table: partition N "
                   "(default: the only one with an ext2/3/4 or XFS file system)")
    p.set_defaults(fn=cmd_diff)
    p = command("hash-token", help="print the sha256 of a token read from stdin, for [[admin.tokens]]",
                parent=json_only)
    p.add_argument("--generate", action="store_true", help="make a new random token and print it with its hash")
    # accepted after the command as every global option is, only to be refused by name (the token
    # to hash comes from stdin): not argparse's "unrecognized arguments", never silently ignored
    p.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--token-file", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_hash_token)

    if signal.getsignal(signal.SIGINT) is _interrupted_early:  # from here on: KeyboardInterrupt, caught below
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = _main(parser, argv)
    except KeyboardInterrupt as ki:  # anywhere, the parsing included: one line, never a traceback
        _print_interrupted(ki)
        rc = 130
    if rc == 130 and _AS_COMMAND:
        _exit_interrupted()
    return rc


def _exit_interrupted() -> None:
    """Leave the ``replicad`` command at once after a Ctrl-C was reported (exit 130).

    The interrupt may have landed inside a logging handler or another thread's lock: the
    interpreter's exit handlers (``logging.shutdown`` among them) then printed "Exception
    ignored in atexit callback ... cannot release un-acquired lock" (1 of 4 interrupted
    restores). The output is flushed here and the process ends without them; a second
    Ctrl-C meanwhile changes nothing. Only as the command (:data:`_AS_COMMAND`), never in a
    program that imported :func:`main`."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(130)


def _print_interrupted(ki: KeyboardInterrupt) -> None:
    """The one line of a Ctrl-C: what a mount left (fileview.Interrupted), else "interrupted"."""
    try:
        err_console.print(getattr(ki, "message", "interrupted"), markup=False, soft_wrap=True)
    except KeyboardInterrupt:
        pass


def _main(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "drill" in argv and argv[argv.index("drill") + 1:argv.index("drill") + 2] == ["verify"]:
        i = argv.index("drill")  # replicad drill verify REPORT: the drill report check
        argv[i:i + 2] = ["drill-verify"]
    at = _command_index(argv)
    if at is not None and argv[at] == "files":  # files VOL --snapshot SEQ [PATH]: PATH not left over (exports)
        argv = _options_first(argv, at)
    args = parser.parse_args(_token_joined(argv))
    as_json = bool(getattr(args, "json", False))
    try:
        rc = args.fn(args)
        return int(rc or 0)
    except Detached as d:
        err_console.print(f"interrupted: the {d.title} goes on at the site as operation {d.op_id}; "
                          f"'replicad cancel {d.op_id}' stops it, 'replicad operation {d.op_id}' follows it",
                          markup=False, soft_wrap=True)
        if as_json:
            print(json.dumps({"interrupted": True, "operation": d.op_id, "state": "running"}), flush=True)
        return 130
    except ReplicadError as err:
        if as_json:
            _json_error(err)
            return err.exit_code
        if isinstance(err, ConfigError):
            return _print_config_error(args, err)
        return _print_error(err)
    except KeyboardInterrupt as ki:
        _print_interrupted(ki)
        return 130
    except OSError as err:  # e.g. a listen address already in use: typed, no traceback
        e = from_os_error(err, f"replicad {getattr(args, 'command', '')}".strip())
        if as_json:
            _json_error(e)
            return e.exit_code
        return _print_error(e)
    except Exception as err:  # noqa: BLE001 — never a traceback to an operator
        e = InternalError(f"internal error: {err!r}")
        if as_json:
            _json_error(e)
            return e.exit_code
        return _print_error(e)


def _print_config_error(args: argparse.Namespace, err: ConfigError) -> int:
    """Every problem of an invalid config, one line each, on stderr; returns the exit code."""
    where = getattr(args, "config", None) or getattr(args, "identity_config", None) or "the configuration"
    err_console.print(f"[red]config invalid[/red]: {len(err.problems) or 1} problem(s) in {esc(where)}:", markup=True)
    for problem in err.problems or [err.message]:
        err_console.print(f"  - {problem}", markup=False, soft_wrap=True)
    return err.exit_code


def _print_error(err: ReplicadError) -> int:
    """One line (code: message), a hint and the evidence on stderr; returns the exit code."""
    err_console.print(f"[red]{esc(err.code)}[/red]: ", end="", markup=True)
    err_console.print(err.message, markup=False, soft_wrap=True)
    if err.code == "peer_unavailable" and "admin API" in err.message and err.evidence.get("status"):
        err_console.print(f"  hint: something answers there, but not a replicad admin API (HTTP "
                          f"{err.evidence['status']}): another port or service, e.g. the site's peer port? the "
                          "admin API listens on the site's [admin] listen (its [[sites]] admin_url); choose it "
                          "with --admin URL or --config FILE", markup=False, soft_wrap=True)
    elif err.code == "peer_unavailable" and "admin API" in err.message:
        err_console.print("  hint: is the site's daemon running? choose the site with --admin URL or "
                          "--config FILE (or $REPLICAD_ADMIN)", markup=False, soft_wrap=True)
    if err.code == "not_primary" and err.evidence.get("primary"):
        err_console.print(f"  hint: the primary is {err.evidence['primary']}: run it there (--config its site "
                          "config, or --admin its admin URL)", markup=False, soft_wrap=True)
    if err.evidence:
        err_console.print(f"  evidence: {json.dumps(err.to_dict()['evidence'])}", markup=False, soft_wrap=True)
    return err.exit_code


def cmd_restore(args: argparse.Namespace) -> int:
    """Start the restore as an operation, show a progress bar while polling it, print the result."""
    body = {"target": str(Path(args.target).absolute()), "seq": args.seq, "last_clean": args.last_clean,
            "overwrite": args.overwrite, "wait": False}
    if args.divergent is not None:
        epoch, _, seq = args.divergent.partition(":")
        if not (epoch.isdigit() and seq.isdigit()):
            raise UsageError("--divergent takes EPOCH:SEQ as listed by 'replicad snapshots VOL'")
        body.update(divergent_epoch=int(epoch), seq=int(seq))
    op = api(args, "POST", f"/v1/volumes/{args.volume}/restore", body)
    result = _follow(args, op, f"restore {args.volume}")
    if result.get("verdict") == "suspect":
        err_console.print(f"[red]warning[/red]: snapshot #{esc(result['seq'])} is SUSPECT (ransomware signal): its "
                          "content may be encrypted; the newest clean snapshot is the default", markup=True)
    _print(args, result, _render_restore)
    return 0


def _render_restore(r: dict) -> None:
    """A restore's result, and the newer snapshots the cluster calls clean that this site passed
    over for it (``held_here``: ``{seq: why}``), newest first."""
    console.print(f"restored {r['volume']}#{r['seq']} ({r.get('verdict')}) into {r['target']}: root verified "
                  f"{r['root'][:16]}…, {r['blocks_written']} blocks written in {r['seconds']:.2f}s", markup=False)
    held = r.get("held_here") or {}
    for seq in sorted(held, key=lambda q: int(q) if str(q).isdigit() else -1, reverse=True):
        console.print(f"  passed over #{seq}, clean for the cluster but held back here: {held[seq]}", markup=False,
                      soft_wrap=True, style="yellow")


# ---------------------------------------------------------------------- snapshot exports and file views (issue 16)

def _admin_api(args: argparse.Namespace):
    """The admin API of the chosen site as ``api(method, path, body=None)`` (for ops.fileview)."""
    return lambda method, path, body=None: api(args, method, path, body)


def _when(ns: int) -> str:
    return _utc(ns)


_VALUED = {"--snapshot", "--partition", "--admin", "--config", "--token", "--token-file"}  # options taking a value (exports)


def _command_index(argv: list[str]) -> int | None:
    """Index of the sub-command in ``argv`` (the first word that is neither an option nor a
    global option's value), None without one."""
    i = 0
    while i < len(argv):
        if argv[i] in _VALUED:
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i
    return None


def _options_first(argv: list[str], at: int) -> list[str]:
    """``argv`` with the options after the sub-command at ``argv[at]`` moved right behind it
    (argparse leaves a second positional unparsed when options stand between the two)."""
    valued = _VALUED
    head, rest = argv[:at + 1], argv[at + 1:]
    options: list[str] = []
    positionals: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--":
            positionals += rest[i:]
            break
        if a in valued and i + 1 < len(rest):
            options += rest[i:i + 2]
            i += 2
            continue
        (options if a.startswith("-") and len(a) > 1 else positionals).append(a)
        i += 1
    return head + options + positionals


def cmd_export(args: argparse.Namespace) -> int:
    """Serve a snapshot over NBD (prints its socket and URI), list the exports, or close one."""
    from replicad.core.units import format_duration

    if args.close:
        _print(args, api(args, "DELETE", f"/v1/exports/{args.close}"), lambda r: console.print(
            f"export {r['export_id']} of {r['volume']}#{r['seq']} closed ({r['bytes_read']} bytes read, "
            f"{r['read_errors']} read errors)" + ("; the instant recovery is released: the export is not served "
                                                 "again, also after a restart" if r.get("instant") else ""),
            markup=False, soft_wrap=True))
        return 0
    if args.volume is None:
        def render(data: dict) -> None:
            from replicad.ops.statuspage import export_label

            def idle(e: dict) -> str:
                return (f"{format_duration(round(e.get('idle_s') or 0))} / {format_duration(e['idle_ttl_s'])}"
                        if isinstance(e.get("idle_ttl_s"), (int, float)) else "no limit")

            if not data["exports"]:
                console.print("no export open")
            elif console.width < NARROW_COLUMNS:  # a block per export: ids and URIs whole at 80 columns
                for e in data["exports"]:
                    console.print(f"{e['export_id']}: {export_label(e)} ({e.get('verdict', '?')}), "
                                  f"{'writable' if e['writable'] else 'read-only'}, {e['connections']} connection(s), "
                                  f"{e['bytes_read']} bytes read, {e['read_errors']} read errors, idle {idle(e)}\n"
                                  f"  {e['uri']}", markup=False, highlight=False, soft_wrap=True)
            else:
                t = Table("export", "snapshot", "writable", "connections", "bytes read", "read errors",
                          "idle / limit", "URI")
                for e in data["exports"]:
                    t.add_row(e["export_id"], export_label(e), "yes" if e["writable"] else "no",
                              str(e["connections"]), str(e["bytes_read"]), str(e["read_errors"]), idle(e), e["uri"])
                console.print(t)
        _print(args, api(args, "GET", "/v1/exports"), render)
        return 0
    if args.seq is None:
        raise UsageError("--snapshot SEQ is required (replicad snapshots VOL lists them)")
    body: dict[str, Any] = {"snapshot": args.seq, "writable": args.writable}
    if args.ttl is not None:  # the pin's idle limit (ops/exportlimits.py): the site's or shorter
        from replicad.core.units import parse_duration

        try:
            body["idle_ttl_s"] = parse_duration(args.ttl)
        except (ValueError, TypeError, ReplicadError) as err:
            raise UsageError(f"--ttl {args.ttl}: not a duration such as 2h or 90m ({err})", field="ttl") from None
    exp = _admin_api(args)("POST", f"/v1/volumes/{args.volume}/exports", body)
    _warn_suspect(args.volume, [(args.seq, exp.get("verdict"))])
    _print(args, exp, lambda e: console.print(
        f"export {e['export_id']}: {e['volume']}#{e['seq']} ({e.get('verdict', '?')}, {e['size_bytes']} bytes, "
        f"{'writable: writes go to an overlay, never the snapshot' if e['writable'] else 'read-only'})\n"
        f"socket: {e['socket']}\nURI:    {e['uri']}\n"
        + (f"idle:   closed after {format_duration(e['idle_ttl_s'])} without a read, write or connection\n"
           if isinstance(e.get("idle_ttl_s"), (int, float)) else "") +
        f"e.g.    nbdinfo '{e['uri']}'; qemu-img convert -f raw -O raw '{e['uri']}' copy.img\n"
        f"close:  replicad export --close {e['export_id']}", markup=False, soft_wrap=True))
    return 0


def _warn_suspect(volume: str, verdicts: list[tuple[int, str | None]]) -> None:
    """A warning line on stderr for each SUSPECT snapshot among ``verdicts`` (seq, verdict)."""
    for seq, verdict in verdicts:
        if verdict == "suspect":
            err_console.print(f"[red]warning[/red]: snapshot {esc(volume)}#{esc(seq)} is SUSPECT (ransomware signal): "
                              "its content may be encrypted; 'replicad snapshots VOL' lists the clean ones",
                              soft_wrap=True, markup=True)


def cmd_mount(args: argparse.Namespace) -> int:
    """Mount a snapshot read-only at DIR (until replicad umount DIR)."""
    from replicad.ops.fileview import mount

    rec = mount(_admin_api(args), args.volume, args.seq, Path(args.dir), args.partition)
    _warn_suspect(args.volume, [(args.seq, rec.get("verdict"))])
    _print(args, rec, lambda r: console.print(
        f"{r['volume']}#{r['seq']} mounted read-only at {r['mountpoint']} ({r['fstype']}, {r['loop']}); "
        f"copy what you need out of it, then: replicad umount {r['mountpoint']}", markup=False, soft_wrap=True))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    """Unmount a snapshot mounted by replicad mount."""
    from replicad.ops.fileview import umount

    def render(r: dict) -> None:
        what = (f"{r['volume']}#{r['seq']} unmounted from {r['mountpoint']}" if r["volume"] != "?" else
                f"no mount was recorded at {r['mountpoint']}; what an earlier one left is undone")
        console.print(f"{what} ({'; '.join(r['done']) or 'nothing was left mounted'})", markup=False, soft_wrap=True)
    _print(args, umount(Path(args.dir)), render)
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    """List a snapshot's files (through a temporary read-only mount)."""
    from replicad.ops.fileview import list_files, temporary_mount

    seen: dict = {}
    with temporary_mount(_admin_api(args), args.volume, args.seq, args.partition, seen) as root:
        _warn_suspect(args.volume, [(args.seq, seen.get("verdict"))])
        entries = list_files(root, args.path, args.recursive)

    def render(rows: list[dict]) -> None:
        t = Table("mode", "size", "modified", "path", box=None)
        for e in rows:
            t.add_row(e["mode"], str(e["size_bytes"]), _when(e["mtime_ns"]),
                      e["path"] + (f" -> {e['target']}" if "target" in e else ""))
        console.print(t)
    _print(args, entries, render)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """Which files were added, removed or changed between two snapshots (both mounted read-only)."""
    from replicad.ops.fileview import diff_trees, temporary_mount

    seen_a: dict = {}
    seen_b: dict = {}
    with temporary_mount(_admin_api(args), args.volume, args.a, args.partition, seen_a) as a, \
            temporary_mount(_admin_api(args), args.volume, args.b, args.partition, seen_b) as b:
        verdicts = [(args.a, seen_a.get("verdict")), (args.b, seen_b.get("verdict"))]
        _warn_suspect(args.volume, verdicts)
        result = diff_trees(a, b, quick=args.quick)
    result["quick"] = bool(args.quick)  # --quick: equal size and mtime were taken as equal content
    result["suspect"] = [seq for seq, verdict in verdicts if verdict == "suspect"]

    def render(r: dict) -> None:
        for sign, key in (("+", "added"), ("-", "removed"), ("~", "changed"), ("m", "metadata")):
            for e in r[key]:
                why = f"  ({', '.join(e['why'])})" if "why" in e else ""
                console.print(f"{sign} {e['path']}{'/' if e['kind'] == 'dir' else ''}{why}", markup=False,
                              soft_wrap=True)
        console.print(f"{args.volume} #{args.a} -> #{args.b}: {len(r['added'])} added, {len(r['removed'])} removed, "
                      f"{len(r['changed'])} changed, {len(r['metadata'])} with other metadata only"
                      + (" (--quick: contents were not compared where size and mtime match; a same-size, same-mtime "
                         "change, e.g. encryption that puts the mtime back, is not seen)" if r["quick"] else "")
                      + (f"; SUSPECT: #{', #'.join(map(str, r['suspect']))}" if r["suspect"] else ""), markup=False,
                      soft_wrap=True)
    _print(args, result, render)
    return 0


def setup_logging(level: str = "info") -> None:
    """Plain one-line logs on stderr (journald adds time and unit): ``LEVEL logger: message``."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
