"""Admin HTTP API of a site (JSON, versioned under ``/v1``; listens on loopback by default).

Routes (role needed in brackets; :mod:`replicad.ops.auth` holds the table, the OpenAPI 3
document served at ``/v1/openapi.json`` — :mod:`replicad.ops.openapi` — describes every one)::

    GET    /                                    [viewer; Basic or Bearer] the status page: read-only HTML (issue 16,
                                                 replicad.ops.statuspage)
    GET    /healthz                             [open] process is up
    GET    /readyz                              [open] store open, a leader and a quorum, view current (503
                                                 otherwise, e.g. a site cut off in a minority)
    GET    /metrics                             [open] Prometheus text exposition
    GET    /v1/openapi.json                     [open] this API as an OpenAPI 3.1 document
    GET    /v1/status                           [viewer] site, Raft view, members, per-volume role/epoch/RPO
    GET    /v1/volumes                          [viewer] Raft's volume table
    GET    /v1/volumes/{volume}/snapshots       [viewer] committed catalog (verdict, holders, epoch) + divergent
    POST   /v1/volumes/{volume}/snapshot        [operator] take, ship and commit one now (primary only)
    POST   /v1/volumes/{volume}/readopt         [admin] {"incarnation": str?, "epoch": int?, "seq": int?,
                                                 "confirm_suspect": bool?}: make a snapshot of a previous
                                                 cluster incarnation the next one (primary)
    POST   /v1/volumes/{volume}/verify          [operator] {"seq": int?}: re-read every chunk, heal from holders
    POST   /v1/volumes/{volume}/drill           [operator] {"sandbox": dir, "seq": int?, "keep": bool?}: 202 + operation;
                                                 its result carries the signed drill report (site.drills)
    POST   /v1/volumes/{volume}/restore         [operator; admin with overwrite] {"target": path, "seq": int?,
                                                 "last_clean": bool?, "overwrite": bool?, "wait": bool?}
    POST   /v1/volumes/{volume}/exports         [operator] {"snapshot": int, "writable": bool?, "auto_close": bool?,
                                                 "idle_ttl_s": number?}: serve the snapshot over NBD on a unix
                                                 socket here (site.exports); closed once idle for idle_ttl_s (at
                                                 most [admin] export_idle_ttl, the default; ops.exportlimits)
    GET    /v1/exports                          [viewer] the snapshot exports open here
    DELETE /v1/exports/{export_id}              [operator] close an export (its pin and overlay go with it)
    GET    /v1/operations/{op_id}               [viewer] state, phase, progress (blocks), result or error
    DELETE /v1/operations/{op_id}               [operator] cancel a running restore or drill (state cancelled)
    POST   /v1/volumes/{volume}/promote         [admin] {"to": site?, "force": bool, "snapshot": seq?, "instant": bool?
                                                 (with force: answers once the snapshot is served as a writable
                                                 NBD export, "instant": its socket and phase; site.instant)}; answers once the new
                                                 primary serves the volume ("ready": true), or "ready": false
                                                 with "not_ready" (why) after PROMOTE_READY_WAIT_S
    POST   /v1/volumes/{volume}/demote          [admin] {}
    GET    /v1/volumes/{volume}/snapshots/{seq}/evidence  [viewer] every site's verdict, this site's evidence (issue 14)
    GET    /v1/volumes/{volume}/detection       [viewer] the Raft-agreed detection policy, and the one applied here
    PUT    /v1/volumes/{volume}/detection       [admin] {"detection": {...}, "reason": str?}; a change: 202 request
    GET    /v1/volumes/{volume}/retention       [viewer] the Raft-agreed retention policy
    PUT    /v1/volumes/{volume}/retention       [admin] {"retention": {...}, "reason": str?}; shortening: 202 request
    POST   /v1/volumes/{volume}/retention/run   [admin] apply the retention policy at this site now
    POST   /v1/volumes/{volume}/prune           [admin] {"seqs": [int], "reason": str?}: refused inside the lock window (O4);
                                                 what the agreed retention keeps: 202 request
    POST   /v1/volumes/{volume}/remove          [admin] {"reason": str?}: 202 remove_volume request (approvals, then
                                                 the cooling-off; refused while a snapshot is inside the lock window)
    GET    /v1/members                          [viewer] sites of the Raft group and their reachability
    POST   /v1/members, DELETE /v1/members/{site_id}   [admin] 501 not_supported (see below)
    POST   /v1/membership                       [admin] {"members": [...], "reason"?}: request to change the agreed
                                                 membership (a majority of the sites approves it)
    GET    /v1/requests                         [viewer] protection-weakening requests (pending, applied, expired);
                                                 a set_max_size one with "previous", the maximum it replaces; each
                                                 with "changes" (the keys its args' document changes, old and new:
                                                 replicad.core.requestdiff) when there is something to compare with
    POST   /v1/requests/{request_id}/approve    [admin] this site approves the request (a command signed by it)
    POST   /v1/requests/{request_id}/veto       [admin] this site stops a request before it takes effect
    POST   /v1/sites/{site_id}/revoke           [admin] {"reason"?}: request to revoke a site's identity (a majority);
                                                the request names the keys this site pins for it; under the
                                                cluster's rules 1 the answer's "warning" says the target's own
                                                requests can erase it (raise the rules first: R13, F6)
    POST   /v1/rules/raise                      [operator] {"leave_behind": [site], "reason": str} or {"cancel": true}:
                                                 this site's operator consents to raise the cluster's rules leaving
                                                 those members behind (site.rules_raise; a majority of the operators
                                                 must), or withdraws the consent
    GET    /v1/audit                            [viewer] the newest Raft audit records
    GET    /v1/audit/admin                      [viewer] this site's admin audit log + chain check

Errors are ``{error, message, evidence}`` with the HTTP status of the error class; the CLI
maps ``error`` back to the same class and its exit code. 401 answers carry
``WWW-Authenticate: Bearer``. A planned switchover asked at a site that is not the
primary is forwarded to the primary's admin endpoint with the caller's bearer token.

Every call that changes something, and every refused or failed call (any status >= 400),
is appended to the hash-chained ``<data_dir>/admin-audit.jsonl`` (:mod:`replicad.storage.audit`)
before the answer is sent.

**Membership** is fixed by the config files: pysyncobj's dynamic membership commands are
refused on the Raft port on purpose (an unauthenticated pickle port must not be able to
add a voter). To add or remove a site: edit ``[[sites]]`` in every site's config, then
restart the sites one at a time, waiting for ``replicad members`` to show a leader and
every member reachable before the next.

**Retention** ``PUT``: ``retention`` may give any of ``keep_all_s``, ``hourly_s``,
``daily_s``, ``lock_s`` (seconds) or ``keep_all``, ``hourly``, ``daily``, ``lock``
(durations such as ``"48h"``), each at most ten years; missing keys keep their current value.
Any change is a request (202 with its id): a longer policy applies once another site approves
it (no cooling-off: one site's 2**62 s lock froze deletion everywhere), a shorter key is a
weakening (below). The same policy again answers 200 ``unchanged``.

**Approvals.** Shortening any retention key, and clearing a ``suspect`` verdict,
weaken protection: the call records a *request* through Raft (answer 202 with its id) and
nothing changes until operators of other sites approve it, each at their own site with an
admin token valid there (``POST /v1/requests/{id}/approve``; the approval is a command
signed by that site's key). The number of sites needed is the cluster policy
(``[policy] approvals``; default a majority of the data sites, the requesting site counting
as one). Requests expire (``[policy] request_ttl``, default 24 h). An approved request takes
effect after ``[policy] cooling_off`` (default 24 h, majority clock); until then the admin of
any site can veto it (``POST /v1/requests/{id}/veto``). The old ``approved_by`` claim is
refused with a message saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from replicad.ops import auth
from replicad.ops.exportlimits import IdleExports, requested_ttl_s
from replicad.core.requestdiff import request_changes, with_changes, with_moot
from replicad.storage.audit import AuditLog, verify_chain
from replicad.peer.netreason import connection_reason, unreachable_detail
from replicad.core.errors import (BodyTooLargeError, ConflictError, InternalError, MethodNotAllowedError, NotFoundError,
                                  NotSupportedError, PeerUnavailableError,
                                  ReplicadError, UnauthenticatedError, UsageError, _jsonable, facts_text, from_dict)
from replicad.core import anomaly  # issue 14
from replicad.core.state import AUDIT_DROPPED, AUDIT_KEPT_MAX, RULES_AUDIT_BY_SIGNER, audit_share
from replicad.core.state import rules as cluster_rules
from replicad.core.health import degraded_reasons
from replicad.core.state import CLOCK_LAG_MARGIN_NS, CLOCK_REPORT_PERIOD_NS, clock_offsets_ns
from replicad.core.state import (RETENTION_MAX_S, SIZE_BYTES_MAX, detection_policy, held_by_marks, list_requests,
                                 is_revoked, max_size_bytes, newest_confirmed, retention_weakened)
from replicad.core.units import parse_duration, parse_size
from replicad.site.promotion import held_here
from replicad.site.requestwatch import revocation_warning
from replicad.site.runner import runner_of

if TYPE_CHECKING:
    from replicad.site.daemon import SiteDaemon

log = logging.getLogger("replicad.ops.admin")

AUDIT_FILE = "admin-audit.jsonl"
RETENTION_KEYS = ("keep_all_s", "hourly_s", "daily_s", "lock_s")
PRINCIPAL_KEY = "replicad.principal"
MEMBERSHIP_PROCEDURE = ("edit [[sites]] identically in every site's config file",
                        "run replicad check-config on each file",
                        "at one site: replicad members propose NEW_CONFIG (a request); a majority of the sites "
                        "approves it (replicad approve REQ at each): the Raft state then agrees with the new list",
                        "restart the sites one at a time; before the next, wait until 'replicad members' shows "
                        "a leader and every member reachable")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ok(body: Any, status: int = 200) -> web.Response:
    return web.json_response(_jsonable(body), status=status)


def _err(err: ReplicadError) -> web.Response:
    resp = web.json_response(err.to_dict(), status=err.http_status)
    if isinstance(err, UnauthenticatedError):
        resp.headers["WWW-Authenticate"] = auth.www_authenticate(err)
    return resp


_BODY_KEY = "replicad.json_body"  # the body as _json_body parsed it (read once: aiohttp's can_read_body turns False)


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (``{}`` without a body), parsed once per request.
    UsageError (400 ``bad_request``) when it is not JSON or not an object; BodyTooLargeError (413
    ``body_too_large``) past the admin listener's ``client_max_size`` (aiohttp's default: 1 MiB)."""
    if _BODY_KEY in request:
        return request[_BODY_KEY]
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"request body is not JSON: {err}") from None
    except web.HTTPRequestEntityTooLarge:  # aiohttp's client_max_size: a typed 413, not an internal error
        raise BodyTooLargeError(f"request body longer than the admin listener takes ({request.client_max_size} "
                                "bytes)", limit_bytes=request.client_max_size) from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    request[_BODY_KEY] = body
    return body


def _only_keys(body: dict, *known: str) -> None:
    """UsageError naming the keys of a request body that are not in ``known``."""
    unknown = set(body) - set(known)
    if unknown:
        raise UsageError(f"unknown keys {sorted(unknown)}", known=list(known))


def _reason(body: dict) -> str:
    """The ``reason`` of a request body: a string of at most 1024 characters ("" when absent);
    UsageError otherwise."""
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 1024:
        raise UsageError("reason must be a string of at most 1024 characters", field="reason")
    return reason


def _opt_int(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError(f"{key} must be a non-negative integer", field=key)
    return value


def _opt_bool(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UsageError(f"{key} must be true or false", field=key)
    return value


def _raise_not_found(name: str, what: str = "volume") -> None:
    raise NotFoundError(f"unknown {what} {name}", **{what: name})


def _require(request: web.Request, role: str) -> None:
    """Inside a handler: a stricter role for this particular request (e.g. overwrite)."""
    principal = request.get(PRINCIPAL_KEY)
    if principal is not None:
        auth.authorize(principal, role, f"{request.method} {request.path} with these arguments")


class _Guard:
    """Authentication, authorization and audit around every admin handler."""

    def __init__(self, site: "SiteDaemon", audit_log: AuditLog) -> None:
        self.site = site
        self.audit_log = audit_log
        self._tokens_src: Any = None
        self._tokens = auth.TokenTable(())

    def tokens(self) -> auth.TokenTable:
        """The token table of the site's current config (rebuilt when the config object changes)."""
        src = self.site.cfg.admin_tokens
        if src is not self._tokens_src:
            self._tokens = auth.TokenTable((t.name, t.role, t.sha256) for t in src)
            self._tokens_src = src
        return self._tokens

    def wrap(self, method: str, template: str, fn: Handler) -> Handler:
        if (method, template) not in auth.ROUTE_ROLES:
            raise InternalError(f"admin route {method} {template} has no role in auth.ROUTE_ROLES")
        required = auth.ROUTE_ROLES[(method, template)]
        basic = (method, template) in auth.BASIC_ROUTES  # the status page: a browser's Basic login too

        async def wrapped(request: web.Request) -> web.StreamResponse:
            principal: auth.Principal | None = None
            code: str | None = None
            try:
                if required != auth.OPEN:
                    principal = self.tokens().authenticate(request.headers.get("Authorization"), allow_basic=basic)
                    request[PRINCIPAL_KEY] = principal
                    auth.authorize(principal, required, f"{method} {request.path}")
                if method != "GET" and request.can_read_body:
                    await _json_body(request)  # a malformed body is a 400 on every route, even one that reads none
                resp = await fn(request)
            except ReplicadError as err:
                code, resp = err.code, _err(err)
                if basic and isinstance(err, UnauthenticatedError):  # the status page: the browser asks
                    resp.headers["WWW-Authenticate"] = auth.www_authenticate(err, basic=True)
            except Exception as err:  # noqa: BLE001 — never a traceback to an operator
                log.exception("admin %s %s failed", request.method, request.path)
                internal = InternalError(f"internal error: {err!r}")
                code, resp = internal.code, _err(internal)
            if required != auth.OPEN and (method != "GET" or resp.status >= 400):
                await self._audit(request, principal, resp.status, code)
            if required != auth.OPEN and self.tokens().open and not resp.prepared:  # a token sent is not checked
                resp.headers[auth.ACCESS_CONTROL_HEADER] = "none"
            return resp

        return wrapped

    async def _audit(self, request: web.Request, principal: auth.Principal | None, status: int,
                     code: str | None) -> None:
        body: Any = None
        if request.body_exists:  # read before (cached): can_read_body is False once a handler read it
            try:
                raw = await request.read()
                body = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError, web.HTTPException):
                body = {"unparsed": True}
        outcome = "ok" if status < 300 and status != 202 else "accepted" if status == 202 else \
            "refused" if status < 500 else "failed"
        fields = {"who": principal.name if principal else "anonymous", "role": principal.role if principal else None,
                  "remote": request.remote, "method": request.method, "path": request.path_qs, "body": body,
                  "outcome": outcome, "status": status, "error": code}
        try:
            rec = await asyncio.to_thread(self.audit_log.append, fields)
        except ReplicadError as err:
            log.error("admin audit: could not record %s %s (%d): %s", request.method, request.path, status, err)
            return
        # the daemon log is the anchor outside the file (tail truncation)
        log.info("admin audit #%d %s %s by %s -> %d hash %s", rec["seq"], request.method, request.path,
                 fields["who"], status, rec["hash"])


SILENT_AFTER_NS = 3 * CLOCK_REPORT_PERIOD_NS + CLOCK_LAG_MARGIN_NS
"""A member whose last clock report (every site reports its clock through Raft every
``CLOCK_REPORT_PERIOD_NS``, 5 s) trails the majority's clock by more than this (25 s) is not
counted reachable, even with its Raft connection open: a paused process (SIGSTOP, a frozen VM)
keeps its TCP connections, and between two followers Raft itself is legitimately silent."""


def members(site: "SiteDaemon") -> dict:
    """The Raft group as this site sees it: every configured site with its addresses, whether
    it registered through Raft, whether it leads, and whether it is ``reachable``: this site's
    Raft node is connected to it and its clock reports have not stopped (``silent_s``, present
    when they trail the majority's clock by more than :data:`SILENT_AFTER_NS`: stopped, paused,
    catching up, or a clock that far behind); this site itself is always reachable."""
    assert site.raft is not None
    st = site.raft.state()
    raft = site.raft.status()
    registered = st.get("sites", {})
    partners = raft.get("partners", {})
    leader_addr = raft.get("leader")
    silent = {name: -off / 1e9 for name, off in clock_offsets_ns(st).items() if off < -SILENT_AFTER_NS}
    out = []
    leader = None
    for s in site.cfg.sites:
        is_self = s.site_id == site.site_id
        if leader_addr == s.raft:
            leader = s.site_id
        quiet = None if is_self else silent.get(s.site_id)
        out.append({"site_id": s.site_id, "kind": s.kind, "raft": s.raft, "peer_url": s.peer_url,
                    "admin_url": s.admin_url, "self": is_self, "registered": s.site_id in registered,
                    "leader": leader_addr == s.raft,
                    "reachable": True if is_self else bool(partners.get(s.raft, False)) and quiet is None,
                    **({"silent_s": round(quiet, 1)} if quiet is not None else {})})
    return {"members": out, "leader": leader, "term": raft.get("term"), "has_quorum": bool(raft.get("has_quorum"))}


def _retention_update(body: dict, current: dict) -> dict:
    """The full retention map after applying the request body's partial ``retention`` to
    ``current``. Raises UsageError for unknown keys, bad values or a wrong order."""
    given = body.get("retention")
    if not isinstance(given, dict) or not given:
        raise UsageError("retention must be a non-empty object, e.g. {\"lock\": \"48h\"}", field="retention")
    out = {k: int(current[k]) for k in RETENTION_KEYS}
    for key, value in given.items():
        name = key if key in RETENTION_KEYS else f"{key}_s"
        if name not in RETENTION_KEYS:
            short = [k.removesuffix("_s") for k in RETENTION_KEYS]  # the CLI's spellings (--set daily=14d)
            raise UsageError(f"unknown retention key {key!r}: known {', '.join(short)} (each also as <key>_s)",
                             field="retention", known=short)
        if isinstance(value, bool):
            raise UsageError(f"retention.{key} must be seconds or a duration", field=f"retention.{key}")
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError, ReplicadError) as err:
            raise UsageError(f"retention.{key}: {err}", field=f"retention.{key}") from None
        if seconds < 0 or seconds != int(seconds):
            raise UsageError(f"retention.{key} must be whole non-negative seconds", field=f"retention.{key}")
        if seconds > RETENTION_MAX_S:
            raise UsageError(f"retention.{key} must be at most {RETENTION_MAX_S} s (ten years)",
                             field=f"retention.{key}", max_s=RETENTION_MAX_S)
        out[name] = int(seconds)
    if not out["keep_all_s"] <= out["hourly_s"] <= out["daily_s"]:
        raise UsageError("retention must satisfy keep_all <= hourly <= daily", field="retention", requested=out)
    return out


def admin_routes(site: "SiteDaemon") -> list[web.RouteDef]:
    """The admin API of ``site`` as aiohttp route definitions, each wrapped by access
    control and audit. Opens ``<data_dir>/admin-audit.jsonl``.

    Raises InternalError if a route lacks a role in ``auth.ROUTE_ROLES``; ReplicadError
    if the audit log cannot be opened.
    """
    audit_log = AuditLog(site.data_dir / AUDIT_FILE)
    guard = _Guard(site, audit_log)
    if getattr(site, "rules_raise", None) is not None:  # the operator's consent to leave members behind
        site.rules_raise.keep_consent_in(site.data_dir)
    idle_exports = IdleExports(lambda: site.exports, site._background)  # exports' idle limit (ops/exportlimits.py)

    async def healthz(request: web.Request) -> web.Response:
        return _ok({"ok": True, "site_id": site.site_id})

    async def readyz(request: web.Request) -> web.Response:
        # ready: the store is open and this site is in the majority with a current view (a leader,
        # a quorum, the leader's commits applied here); a site cut off in a minority is not ready
        raft = site.raft.status() if site.raft else {}
        current = site.cluster.view_freshness() if site.raft else {"current": False, "why": "Raft not started"}
        ready = (site.store is not None and raft.get("leader") is not None and bool(raft.get("has_quorum"))
                 and bool(current.get("current")))
        why = None if ready else ("store not open" if site.store is None else "no Raft leader"
                                  if raft.get("leader") is None else "no Raft quorum (minority)"
                                  if not raft.get("has_quorum") else current.get("why") or "Raft view not current")
        return _ok({"ready": ready, "leader": raft.get("leader"), "has_quorum": bool(raft.get("has_quorum")),
                    "why": why}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        from replicad.telemetry.metrics import CONTENT_TYPE

        body = await asyncio.to_thread(site.metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi_doc(request: web.Request) -> web.Response:
        from replicad.ops.openapi import build_document

        return _ok(build_document())

    async def status_page(request: web.Request) -> web.Response:
        """The read-only HTML status page (issue 16; replicad.ops.statuspage)."""
        import time

        from replicad.ops import statuspage

        data = site.status.report() | {"members": members(site)["members"]}
        targets = {v.name: 3 * float(v.interval_s) for v in site.cfg.volumes}
        page = statuspage.render(data, site.cluster.view(), [op.to_dict() for op in site.operations.list()],
                                 targets, time.time(), exports=[idle_exports.shown(e) for e in site.exports.list()])
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=statuspage.HEADERS)

    async def status(request: web.Request) -> web.Response:
        report = site.status.report()
        view = site.cluster.view()
        report["requests"] = with_moot(with_changes(with_previous(report.get("requests") or [], view), view), view)
        report["members"] = members(site)["members"]
        reasons = degraded_reasons(report)  # with the members: a paused one (silent) is unreachable too
        return _ok(report | {"degraded": bool(reasons), "degraded_reasons": reasons})

    async def volumes(request: web.Request) -> web.Response:
        st = site.raft.state()
        out = {name: {k: v for k, v in vs.items() if k != "snapshots"} | {"snapshots": len(vs["snapshots"])}
               for name, vs in st["volumes"].items()}
        return _ok({"volumes": out})

    async def snapshots(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        vs = site.cluster.volume_state(name)
        if vs is None:
            _raise_not_found(name)
        committed = [{"seq": seq, **dict(snap)} for seq, snap in sorted(vs["snapshots"].items())]
        # clean for the cluster but held back by this site (a person's mark here, its own detector):
        # its takeovers and restores pass them over (promotion.held_here), so an operator sees why
        marked = held_by_marks(vs, site.site_id)
        usable = None
        for entry in committed:
            if entry["verdict"] == "clean":
                why = held_here(name, vs, entry["seq"], site.site_id, site.detection, marked)
                if why is None:
                    usable = entry["seq"]
                else:
                    entry["held_here"] = why
        divergent = []
        kept = []
        if site.catalog is not None and name in site.runners:
            divergent = [{"epoch": r.epoch, "seq": r.seq, "root": r.root, "created_at_ns": r.created_at_ns}
                         for r in site.catalog.list(name, "divergent")]
            # records the cluster state no longer lists that this site's floor kept (restorable here)
            listed = {snap["root"] for snap in vs["snapshots"].values()}
            kept = [{"epoch": r.epoch, "seq": r.seq, "root": r.root, "state": r.state, "created_at_ns": r.created_at_ns}
                    for r in site.catalog.list(name) if r.state in ("committed", "received") and r.root not in listed]
            # records of previous cluster incarnations (every site lost its Raft state): kept here,
            # never shipped nor pruned by this cluster; replicad readopt makes one the next snapshot
            records = site.catalog.list(name, "previous")
            judged = {}  # this site's verdicts in each previous incarnation, set aside at the reset
            if site.detection is not None:
                for inc in {r.incarnation for r in records}:
                    judged[inc] = await asyncio.to_thread(site.detection.previous_verdicts, name, inc)
            previous = [{"incarnation": r.incarnation.hex(), "epoch": r.epoch, "seq": r.seq, "root": r.root,
                         "state": r.prior_state, "created_at_ns": r.created_at_ns,
                         "judged_here": judged.get(r.incarnation, {}).get(r.root.hex())}
                        for r in records]
        else:
            previous = []
        return _ok({"volume": name, "epoch": vs["epoch"], "primary": vs["primary"], "snapshots": committed,
                    "divergent": divergent, "kept_locally": kept, "previous": previous,
                    "restore_default_here": usable})

    async def snapshot(request: web.Request) -> web.Response:
        return _ok(await site.volumes.snapshot_on_request(request.match_info["volume"]))

    async def readopt(request: web.Request) -> web.Response:
        body = await _json_body(request)
        inc = body.get("incarnation")
        if inc is not None and (not isinstance(inc, str) or not inc or any(c not in "0123456789abcdefABCDEF" for c in inc)):
            raise UsageError("incarnation must be a hex prefix of a previous incarnation's id", field="incarnation")
        return _ok(await site.volumes.readopt(request.match_info["volume"], inc, _opt_int(body, "epoch"),
                                              _opt_int(body, "seq"), _opt_bool(body, "confirm_suspect")))

    async def verify(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        return _ok(await site.scrub.verify(name, _opt_int(body, "seq")))

    async def drill(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        sandbox = body.get("sandbox")
        if not isinstance(sandbox, str) or not Path(sandbox).is_absolute():
            raise UsageError("sandbox (an absolute directory path on this site) is required", field="sandbox")
        if not Path(sandbox).is_dir():
            raise UsageError(f"drill sandbox {sandbox} is not a directory", field="sandbox", sandbox=sandbox)
        seq, keep = _opt_int(body, "seq"), _opt_bool(body, "keep")
        site.cluster.volume_state(name) or _raise_not_found(name)
        runner_of(site.runners, name, site.site_id)
        principal = request.get(PRINCIPAL_KEY)  # who ran the drill, for its signed report (site.drills)
        who = (principal.name, principal.role) if principal else (auth.ANONYMOUS, "admin")
        op = site.operations.start_operation(
            "drill", name, lambda op: site.drills.run(name, seq, Path(sandbox), keep, who=who, op=op))
        return _ok(op.to_dict(), status=202)

    async def promote(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        to = body.get("to")
        force = _opt_bool(body, "force")
        snapshot = _opt_int(body, "snapshot")  # a forced promotion's restore point (issue 14)
        instant = _opt_bool(body, "instant")  # issue 16: serve the snapshot at once over NBD, copy behind
        if instant and not force:
            raise UsageError("instant names a forced promotion served at once: it needs force", field="instant")
        if to is not None and not isinstance(to, str):
            raise UsageError("to must be a site id", field="to")
        if snapshot is not None and not force:
            raise UsageError("snapshot names a forced promotion's restore point: it needs force", field="snapshot")
        if not force:
            if not to:
                raise UsageError("a planned switchover needs 'to' (or use force at the site to promote)")
            vs = site.cluster.volume_state(name)
            if vs is not None and vs["primary"] not in (None, site.site_id):
                return _ok(await _forward(site, vs["primary"], request.path, body,
                                          request.headers.get("Authorization")))
        res = await site.promotion.promote(name, to, force, snapshot=snapshot, instant=instant)
        warning = _revocation_pending(site.cluster.view(), site.site_id if force else str(res.get("primary") or to))
        if warning is not None:
            res = {**res, "warning": warning}
        if force:  # answered once this site restored and verified the volume (instant: serves it): ready
            return _ok({**res, "ready": True})
        # a planned switchover: the new primary still restores and verifies its image; answer
        # once it serves the volume (or say it does not yet), never before
        return _ok({**res, **await _await_ready(site, res["primary"], name, res.get("epoch"),
                                                 request.headers.get("Authorization"))})

    async def demote(request: web.Request) -> web.Response:
        return _ok(await site.promotion.demote(request.match_info["volume"]))

    async def restore(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise UsageError("target (a path on this site) is required", field="target")
        seq = _opt_int(body, "seq")
        overwrite = _opt_bool(body, "overwrite")
        last_clean = _opt_bool(body, "last_clean")
        divergent_epoch = _opt_int(body, "divergent_epoch")
        if divergent_epoch is not None and seq is None:
            raise UsageError("divergent_epoch needs seq: name the divergent snapshot (epoch, seq)", field="seq")
        if overwrite:
            _require(request, "admin")  # rewriting an existing image is an admin's decision
        if not Path(target).is_absolute():
            raise UsageError(f"target must be an absolute path on this site, not {target!r}", field="target")
        site.cluster.volume_state(name) or _raise_not_found(name)
        # refused now, typed, before an operation starts: a target this site cannot reach or write
        await asyncio.to_thread(site.recovery.check_restore_target, Path(target), overwrite)
        if _opt_bool(body, "wait", default=True):
            return _ok(await site.recovery.restore(name, Path(target), seq, last_clean, overwrite=overwrite,
                                                   divergent_epoch=divergent_epoch))
        site.cluster.volume_state(name) or _raise_not_found(name)
        op = site.operations.start_operation(
            "restore", name, lambda op: site.recovery.restore(name, Path(target), seq, last_clean, overwrite=overwrite,
                                                              op=op, divergent_epoch=divergent_epoch))
        return _ok(op.to_dict(), status=202)

    async def operation(request: web.Request) -> web.Response:
        op = site.operations.get(request.match_info["op_id"])
        if op is None:
            _raise_not_found(request.match_info["op_id"], what="operation")
        return _ok(op.to_dict())

    async def operation_cancel(request: web.Request) -> web.Response:
        op = site.operations.cancel(request.match_info["op_id"])
        if op is None:
            _raise_not_found(request.match_info["op_id"], what="operation")
        for _ in range(50):  # the task ends at its next await: answer with its final state when it has
            if op.state != "running":
                break
            await asyncio.sleep(0.1)
        return _ok(op.to_dict(), status=200 if op.state != "running" else 202)

    async def prune(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        unknown = set(body) - {"seqs", "reason"}
        if unknown:
            raise UsageError(f"unknown keys {sorted(unknown)}", known=["seqs", "reason"])
        seqs = body.get("seqs")
        if not isinstance(seqs, list) or not seqs or not all(isinstance(x, int) and not isinstance(x, bool)
                                                            and x >= 0 for x in seqs):
            raise UsageError("seqs must be a non-empty list of snapshot numbers", field="seqs")
        reason = _reason(body)
        out = await site.housekeeping.prune(name, seqs, reason)
        if out.get("request") and out.get("status") == "pending":  # kept by the agreed retention: a request
            out["next"] = (f"an operator of another site approves it there: replicad approve {out['request']} "
                           f"(needs {out.get('needed')} sites, this one counted)")
            return _ok(out, status=202)
        return _ok(out)

    async def remove(request: web.Request) -> web.Response:
        """Request to forget a volume from the cluster state (``remove_volume``: other sites
        approve, then the cooling-off, vetoable; none for a revoked site's volume). NotFoundError
        for a volume the cluster does not know; the state machine refuses one with a snapshot
        inside its lock window (``retention_locked``). Every site keeps its own records and chunks."""
        name = request.match_info["volume"]
        body = await _json_body(request)
        _only_keys(body, "reason")
        reason = _reason(body)
        if site.cluster.volume_state(name) is None:
            _raise_not_found(name)
        return await _make_request(site, "remove_volume", {"volume": name}, reason)

    async def verdict(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        try:
            seq = int(request.match_info["seq"])
        except ValueError:
            raise UsageError("seq must be a snapshot number", field="seq") from None
        body = await _json_body(request)
        _no_claimed_approval(body)
        unknown = set(body) - {"verdict", "reason"}
        if unknown:
            raise UsageError(f"unknown keys {sorted(unknown)}", known=["verdict", "reason"])
        value, reason = body.get("verdict"), body.get("reason", "")
        if value not in ("clean", "suspect"):
            raise UsageError("verdict must be 'clean' or 'suspect'", field="verdict")
        reason = _reason(body)
        vs = site.cluster.volume_state(name)
        if vs is None:
            _raise_not_found(name)
        snap = vs["snapshots"].get(seq)
        if snap is not None and value == "clean":
            own_mark = site.site_id in (snap.get("marks") or {})  # core.state.MARKS: this site's suspect vote
            if snap.get("confirmed"):  # a person's approved clean already: no request, nothing changes
                return _ok({"volume": name, "seq": seq, "verdict": "clean", "changed": False, "confirmed": True,
                            "note": f"{name}#{seq} is already confirmed clean by a person (the slow windows measure "
                                    f"from the newest confirmed snapshot, #{newest_confirmed(vs)}): nothing changed"})
            if snap["verdict"] == "suspect" or not own_mark:
                # clearing a suspect verdict, or confirming a clean one (the slow windows' anchor and the rate
                # they allow move to it): a person vouching weakens protection, a request others approve
                return await _make_request(site, "mark_verdict", {"volume": name, "seq": seq, "verdict": value,
                                                                  "reason": reason}, reason,
                                           confirms=snap["verdict"] == "clean")
        return _ok(await site.housekeeping.set_verdict(name, seq, value, reason))

    async def evidence_get(request: web.Request) -> web.Response:  # issue 14: detection evidence
        name = request.match_info["volume"]
        try:
            seq = int(request.match_info["seq"])
        except ValueError:
            raise UsageError("seq must be a snapshot number", field="seq") from None
        vs = site.cluster.volume_state(name)
        if vs is None:
            _raise_not_found(name)
        doc = site.detection.evidence(name, seq)
        first = (doc.get("here") or {}).get("first_suspect_seq") if isinstance(doc.get("here"), dict) else None
        if isinstance(first, int):  # snapshots just before it the cluster calls suspect: the incident began earlier
            snaps, earlier = vs.get("snapshots") or {}, []
            while first - 1 - len(earlier) in snaps and snaps[first - 1 - len(earlier)].get("verdict") == "suspect":
                earlier.append(first - 1 - len(earlier))
            if earlier:
                doc = {**doc, "suspect_before_first": earlier}
        return _ok(doc)

    async def detection_get(request: web.Request) -> web.Response:  # issue 14: detection policy
        name = request.match_info["volume"]
        vs = site.cluster.volume_state(name)
        if vs is None:
            _raise_not_found(name)
        return _ok({"volume": name, "detection": detection_policy(vs), "effective_here": site.detection.policy(name, vs)})

    async def _policy_change(request: web.Request, field: str) -> tuple[str, dict, str, dict]:
        """The common part of a volume policy change (``PUT .../retention``, ``.../detection``):
        ``(volume, body, reason, volume Raft entry)`` from a body ``{field: ..., "reason"?}``.

        Raises:
            UsageError: an approval claimed in the body, unknown keys, a reason that is not a
                string of at most 1024 characters.
            NotFoundError: no such volume in the Raft state.
        """
        name = request.match_info["volume"]
        body = await _json_body(request)
        _no_claimed_approval(body)
        unknown = set(body) - {field, "reason"}
        if unknown:
            raise UsageError(f"unknown keys {sorted(unknown)}", known=[field, "reason"])
        reason = _reason(body)
        vs = site.cluster.volume_state(name)
        if vs is None:
            _raise_not_found(name)
        return name, body, reason, vs

    async def detection_put(request: web.Request) -> web.Response:  # issue 14: a detection change is a request
        name, body, reason, vs = await _policy_change(request, "detection")
        current = detection_policy(vs)
        change = body.get("detection")
        if not isinstance(change, dict):
            raise UsageError("detection must be a map of policy keys to values", field="detection",
                             known=sorted(current))
        new = {**current, **change}
        problems = anomaly.policy_problems(new)
        if problems:
            raise UsageError(f"detection policy: {'; '.join(problems)}", field="detection", problems=problems)
        args: dict[str, Any] = {"volume": name, "policy": new}
        if new == current:
            return _ok({"volume": name, "detection": current, "previous": current, "status": "unchanged"})
        # any change applies at every site: a request, approvals and the cooling-off (stricter too: review R7)
        return await _make_request(site, "set_detection", args, reason, previous=current,
                                   weakened=anomaly.weakened_keys(current, new))

    async def requests_get(request: web.Request) -> web.Response:
        view = site.cluster.view()
        return _ok({"requests": with_moot(with_changes(with_previous(list_requests(view), view), view), view),
                    "site_id": site.site_id})

    async def requests_approve(request: web.Request) -> web.Response:
        req_id = request.match_info["request_id"]
        body = await _json_body(request)
        if body:
            raise UsageError("approve takes no body", known=[])
        before = next((r for r in list_requests(site.cluster.view()) if r.get("id") == req_id), None)
        done = _settled_answer(site, req_id, before, "approve")
        if done is not None:
            return done
        res = await site.cluster.propose("approve", request=req_id)
        counted = before is not None and site.site_id in (before.get("approvals") or [])
        what = f"{before.get('action')} {facts_text(before.get('args') or {})}" if before is not None else "?"
        log.log(logging.INFO if counted else logging.WARNING, "AUDIT request %s (%s, requested by %s) %s at %s: %s of "
                "%s approvals (%s)", req_id, what, (before or {}).get("by", "?"),
                "not changed: already counted" if counted else "approved", site.site_id,
                len(res.get("approvals") or []), res.get("needed"), res.get("status"))
        out = _request_answer(res)
        if res.get("status") == "pending":  # say why nothing changed: this site counted already (made it or approved)
            out["next"] = ((f"{site.site_id} was already counted ("
                            + ("it made the request" if before.get("by") == site.site_id else "it approved it before")
                            + "): nothing changed; " if counted else "")
                           + f"an operator of another site approves it there: replicad approve {req_id}")
        target = ((before or {}).get("args") or {}).get("site_id")
        if res.get("status") == "approved" and (before or {}).get("action") == "revoke_site" and \
                isinstance(target, str):
            warning = revocation_warning(site.cluster.view(), target)  # cooling off under rules 1 (R13, F6)
            if warning is not None:
                out["warning"] = warning
        return _ok(out)

    async def retention_get(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        vs = site.cluster.volume_state(name)
        if vs is None:
            _raise_not_found(name)
        return _ok({"volume": name, "retention": dict(vs["retention"])})

    async def requests_veto(request: web.Request) -> web.Response:
        req_id = request.match_info["request_id"]
        body = await _json_body(request)
        _only_keys(body, "reason")
        reason = _reason(body)  # the veto command carries none (rules): kept in this log line and the admin audit
        before = next((r for r in list_requests(site.cluster.view()) if r.get("id") == req_id), None)
        done = _settled_answer(site, req_id, before, "veto")
        if done is not None:
            return done
        res = await site.cluster.propose("veto", request=req_id)
        log.warning("AUDIT request %s %s at %s%s", req_id, res.get("status", "vetoed"), site.site_id,  # or withdrawn
                    f": {reason}" if reason else "")
        return _ok(_request_answer(res) | ({"vetoed_by": res["vetoed_by"]} if res.get("vetoed_by") else {}))

    async def rules_raise(request: web.Request) -> web.Response:
        """This site's operator's consent to raise the cluster's rules leaving members behind
        (``replicad raise-rules``; :meth:`replicad.site.rules_raise.RulesRaise.give_consent`), or its
        withdrawal (``cancel``). Answers ``{"consent": {...} | None, "withdrawn": {...} | None,
        "rules": status}``."""
        body = await _json_body(request)
        _only_keys(body, "leave_behind", "reason", "cancel")
        principal = request.get(PRINCIPAL_KEY)
        who = principal.name if principal else auth.ANONYMOUS
        if _opt_bool(body, "cancel"):
            if "leave_behind" in body:
                raise UsageError("cancel takes no leave_behind", field="leave_behind")
            withdrawn = await asyncio.to_thread(site.rules_raise.cancel_consent, who)
            return _ok({"consent": None, "withdrawn": withdrawn, "rules": site.rules_raise.status()})
        if "leave_behind" not in body:
            raise UsageError("leave_behind: the members to leave behind (or cancel: true)", field="leave_behind")
        consent = await asyncio.to_thread(site.rules_raise.give_consent, body["leave_behind"], body.get("reason"),
                                          who)
        return _ok({"consent": consent, "withdrawn": None, "rules": site.rules_raise.status()})

    async def site_revoke(request: web.Request) -> web.Response:
        target = request.match_info["site_id"]
        body = await _json_body(request)
        _only_keys(body, "reason")
        reason = _reason(body)
        ref = next((s for s in site.cfg.sites if s.site_id == target), None)
        if ref is None:
            raise NotFoundError(f"unknown site {target}", site=target)
        if target == site.site_id:  # its own approval would count: one typo + one approval elsewhere (try-out 2, 1)
            raise ConflictError(f"a site cannot ask for its own revocation: {target} is this site; ask at another "
                                f"site (replicad --config <another site's config> revoke {target})", site=target)
        view = site.cluster.view()
        if is_revoked(view, target):
            by = next((r for r in list_requests(view) if r.get("action") == "revoke_site" and
                       r.get("status") == "applied" and (r.get("args") or {}).get("site_id") == target), None)
            raise ConflictError(f"site {target} is already revoked"
                                + (f" by {by['id']} (requested by {by.get('by')})" if by else "")
                                + ": nothing to request", site=target, request=(by or {}).get("id"))
        # the request names the exact keys it revokes (this site's pinned keys of the target,
        # inside the signed command): every site revokes those, whatever its config pins later
        keys = sorted(set(ref.public_key)) if site.cfg.trust().signed else []
        # under rules 1 the target's own requests can erase the approved revocation (review R13, F6)
        behind = [s for s, m in (site.rules_raise.status().get("members") or {}).items() if m.get("problem")]
        warning = revocation_warning(site.cluster.view(), target, behind)
        answer = await _make_request(site, "revoke_site", {"site_id": target, "keys": keys}, reason,
                                     **({"warning": warning} if warning is not None else {}))
        if warning is not None:
            log.warning("AUDIT revocation of %s requested at %s under rules 1: %s", target, site.site_id, warning)
        return answer

    async def max_size_put(request: web.Request) -> web.Response:
        """A new agreed maximum size of a volume (``{"max_size_bytes": bytes or "200GiB",
        "reason"?}``): a ``set_max_size`` request other sites approve (no cooling-off); the same
        maximum again answers ``unchanged``. UsageError for a size that does not parse or is past
        1 PiB; the state refuses one below the volume's size (``bad_request``)."""
        name, body, reason, vs = await _policy_change(request, "max_size_bytes")
        try:
            wanted = parse_size(body.get("max_size_bytes"))
        except (ValueError, TypeError) as err:
            raise UsageError(f"max_size_bytes: {err}", field="max_size_bytes") from None
        if wanted > SIZE_BYTES_MAX:
            raise UsageError(f"max_size_bytes {wanted} is past {SIZE_BYTES_MAX} (1 PiB)", field="max_size_bytes")
        current = max_size_bytes(vs)
        if wanted == current:
            return _ok({"volume": name, "max_size_bytes": current, "previous": current, "status": "unchanged"})
        return await _make_request(site, "set_max_size", {"volume": name, "max_size_bytes": wanted}, reason,
                                   previous=current)

    async def retention_put(request: web.Request) -> web.Response:
        name, body, reason, vs = await _policy_change(request, "retention")
        new = _retention_update(body, vs["retention"])
        args: dict[str, Any] = {"volume": name, "retention": new}
        current = dict(vs["retention"])
        if new == current:
            return _ok({"volume": name, "retention": current, "previous": current, "status": "unchanged"})
        # any change applies at every site: a request (longer: approvals only; shorter: and cooling-off)
        return await _make_request(site, "set_retention", args, reason, previous=current,
                                   weakened=retention_weakened(current, new))

    async def retention_run(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        runner = runner_of(site.runners, name, site.site_id)
        async with runner.lock:
            return _ok(await site.housekeeping.retention_step(name, force_gc=True))

    async def members_get(request: web.Request) -> web.Response:
        return _ok(members(site))

    async def members_change(request: web.Request) -> web.Response:
        raise NotSupportedError(
            "Raft membership cannot change at runtime: dynamic membership is disabled on the Raft port on "
            "purpose. Edit [[sites]] in every site's config and restart the sites one at a time.",
            procedure=list(MEMBERSHIP_PROCEDURE), see="config/README.md (Changing the members)")

    async def membership_propose(request: web.Request) -> web.Response:
        body = await _json_body(request)
        members, reason = body.get("members"), body.get("reason", "")
        if not isinstance(members, list) or not members:
            raise UsageError("members: the new [[sites]] list, as 'replicad members propose FILE' reads it",
                             field="members")
        reason = _reason(body)
        diff = request_changes({"action": "set_members", "args": {"members": members}, "status": "pending"},
                               site.cluster.view())
        if diff is not None and not diff.get("changes"):  # a request would change nothing, yet stay open
            raise ConflictError("nothing to change: the members proposed are the cluster's agreed members now "
                                "(same sites, kinds, Raft addresses and keys); no request made",
                                reason="unchanged", unchanged=diff.get("unchanged"))
        return await _make_request(site, "set_members", {"members": members}, reason)

    async def audit(request: web.Request) -> web.Response:
        """The kept Raft audit records, newest last: the newest ``limit`` (default 200, at most
        ``AUDIT_KEPT_MAX``); with ``signer``, only that site's share (rules 4: the records whose
        signature was checked as that site's, ``state.audit_share``; ``signer=`` alone the
        unattributed claims; rules 1..3: the records claiming it in ``by``), so that one site's flood
        never hides another site's records here. Also ``rules`` and, under rules 4, ``dropped``
        (``state.AUDIT_DROPPED``: what each share lost)."""
        try:
            limit = int(request.query.get("limit", "200"))
        except ValueError:
            raise UsageError("limit must be an integer", field="limit") from None
        if not 1 <= limit <= AUDIT_KEPT_MAX:
            raise UsageError(f"limit must be in 1..{AUDIT_KEPT_MAX}", field="limit")
        state = site.raft.state()
        records = [r for r in state.get("audit") or () if isinstance(r, dict)]
        signer = request.query.get("signer")
        if signer is not None:
            by_share = cluster_rules(state) >= RULES_AUDIT_BY_SIGNER
            records = [r for r in records if (audit_share(r) if by_share else r.get("by")) == signer]
        dropped = state.get(AUDIT_DROPPED)
        return _ok({"audit": records[-limit:], "rules": cluster_rules(state),
                    **({"dropped": dropped} if isinstance(dropped, dict) else {})})

    async def audit_admin(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "200"))
        except ValueError:
            raise UsageError("limit must be an integer", field="limit") from None
        if not 1 <= limit <= 10000:
            raise UsageError("limit must be in 1..10000", field="limit")
        records = await asyncio.to_thread(audit_log.read, limit)
        ok, n, bad = await asyncio.to_thread(verify_chain, audit_log.path)
        seq, head = audit_log.head
        return _ok({"records": records, "head": {"seq": seq, "hash": head},
                    "chain": {"ok": ok, "n_records": n, "first_bad_seq": bad}})

    async def export_create(request: web.Request) -> web.Response:
        """A committed snapshot served over NBD on a unix socket of this site (issue 16, site.exports)."""
        name = request.match_info["volume"]
        body = await _json_body(request)
        unknown = sorted(set(body) - {"snapshot", "writable", "auto_close", "idle_ttl_s"})
        if unknown:
            raise UsageError(f"unknown keys {unknown} (exports take snapshot, writable, auto_close, idle_ttl_s)",
                             field=unknown[0])
        seq = _opt_int(body, "snapshot")
        if seq is None:
            raise UsageError("snapshot (the committed snapshot's seq) is required", field="snapshot")
        # the pin's idle limit: the site's [admin] export_idle_ttl, or less (ops/exportlimits.py)
        ttl_s = requested_ttl_s(body.get("idle_ttl_s"), site.cfg.admin_export_idle_ttl_s)
        runner_of(site.runners, name, site.site_id)
        exp = await site.exports.create(name, seq, writable=_opt_bool(body, "writable"),
                                        auto_close=_opt_bool(body, "auto_close"))
        idle_exports.register(exp, ttl_s)
        return _ok(idle_exports.shown(exp))

    async def exports_list(request: web.Request) -> web.Response:
        return _ok({"exports": [idle_exports.shown(e) for e in site.exports.list()], "site_id": site.site_id})

    async def export_delete(request: web.Request) -> web.Response:
        return _ok(await site.exports.close(request.match_info["export_id"]))

    table: list[tuple[str, str, Handler]] = [
        ("GET", "/", status_page),  # the status page (issue 16)
        ("GET", "/healthz", healthz), ("GET", "/readyz", readyz), ("GET", "/metrics", metrics),
        ("GET", "/v1/openapi.json", openapi_doc),
        ("GET", "/v1/status", status), ("GET", "/v1/volumes", volumes),
        ("GET", "/v1/volumes/{volume}/snapshots", snapshots),
        ("POST", "/v1/volumes/{volume}/snapshot", snapshot),
        ("POST", "/v1/volumes/{volume}/readopt", readopt),
        ("POST", "/v1/volumes/{volume}/verify", verify),
        ("POST", "/v1/volumes/{volume}/drill", drill),
        ("POST", "/v1/volumes/{volume}/promote", promote),
        ("POST", "/v1/volumes/{volume}/demote", demote),
        ("POST", "/v1/volumes/{volume}/restore", restore),
        ("GET", "/v1/operations/{op_id}", operation),
        ("DELETE", "/v1/operations/{op_id}", operation_cancel),
        ("POST", "/v1/volumes/{volume}/prune", prune),
        ("POST", "/v1/volumes/{volume}/remove", remove),
        ("POST", "/v1/volumes/{volume}/snapshots/{seq}/verdict", verdict),
        ("GET", "/v1/volumes/{volume}/snapshots/{seq}/evidence", evidence_get),
        ("GET", "/v1/volumes/{volume}/detection", detection_get),
        ("PUT", "/v1/volumes/{volume}/detection", detection_put),
        ("GET", "/v1/volumes/{volume}/retention", retention_get),
        ("PUT", "/v1/volumes/{volume}/retention", retention_put),
        ("PUT", "/v1/volumes/{volume}/max-size", max_size_put),
        ("POST", "/v1/volumes/{volume}/retention/run", retention_run),
        ("GET", "/v1/members", members_get),
        ("POST", "/v1/members", members_change),
        ("DELETE", "/v1/members/{site_id}", members_change),
        ("POST", "/v1/membership", membership_propose),
        ("GET", "/v1/requests", requests_get),
        ("POST", "/v1/requests/{request_id}/approve", requests_approve),
        ("POST", "/v1/requests/{request_id}/veto", requests_veto),
        ("POST", "/v1/sites/{site_id}/revoke", site_revoke),
        ("POST", "/v1/rules/raise", rules_raise),
        ("GET", "/v1/audit", audit),
        ("GET", "/v1/audit/admin", audit_admin),
        ("POST", "/v1/volumes/{volume}/exports", export_create),  # snapshot exports over NBD (issue 16)
        ("GET", "/v1/exports", exports_list), ("DELETE", "/v1/exports/{export_id}", export_delete),
    ]
    return [web.route(method, path, guard.wrap(method, path, fn)) for method, path, fn in table]


@web.middleware
async def json_route_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp middleware of the admin listener: a path no route serves answers 404 and a method a
    path does not serve 405 (with ``Allow``) as the API's typed JSON errors ``{error, message,
    evidence}`` (``not_found``, ``method_not_allowed``), not aiohttp's text/plain pages."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        resp = _err(MethodNotAllowedError(f"{request.method} is not served on {request.path} (allowed: "
                                          f"{', '.join(allowed)}; the API: GET /v1/openapi.json)",
                                          method=request.method, path=request.path, allowed=allowed))
        resp.headers["Allow"] = ",".join(allowed)
        return resp
    except web.HTTPNotFound:
        if request.match_info.http_exception is None:  # a handler's own 404 (none raise it): as it is
            raise
        return _err(NotFoundError(f"no API path {request.path} (the API: GET /v1/openapi.json)", path=request.path))


def _no_claimed_approval(body: dict) -> None:
    """UsageError for the retired ``approved_by`` claim, saying what replaced it."""
    if "approved_by" in body:
        raise UsageError("approved_by is no longer accepted: a change that weakens protection becomes a request, "
                         "applied once operators at other sites approve it at their own site "
                         "(replicad requests; replicad approve REQ)", field="approved_by")


def with_previous(requests: list[dict], view: dict) -> list[dict]:
    """``requests`` (:func:`~replicad.core.state.list_requests` records) with ``previous`` on each
    ``set_max_size`` one: the agreed maximum (bytes) it replaces; while it waits (pending,
    approved) the volume's maximum now in ``view`` (the Raft state), once applied the one its
    result names. Other records unchanged (a retention change carries its own once applied). Pure."""
    out = []
    for r in requests:
        if r.get("action") == "set_max_size" and "previous" not in r:
            result = r.get("result") if isinstance(r.get("result"), dict) else {}
            vs = (view.get("volumes") or {}).get((r.get("args") or {}).get("volume"))
            if isinstance(result.get("previous"), int):
                r = {**r, "previous": result["previous"]}
            elif r.get("status") in ("pending", "approved") and vs is not None:
                r = {**r, "previous": max_size_bytes(vs)}
        out.append(r)
    return out


SETTLED_OK = {"approve": frozenset({"applied"}), "veto": frozenset({"vetoed", "failed", "expired"})}
"""Settled statuses in which an ``approve`` / ``veto`` asked again is a success (exit 0): what the
operator asked for holds (an applied request took effect; a vetoed, failed or expired one will
not). Any other settled status contradicts the ask (``conflict``, exit 4): a script must learn
that an approved change did not happen, or that a veto came too late."""


def withdrawal_of(view: Any, req_id: str) -> dict | None:
    """The kept answer (``applied_ops``, the exactly-once memory of :mod:`replicad.core.state`)
    of the withdrawal of request ``req_id`` by its requester (its own veto, which leaves no request
    record): ``{"ok": True, "request", "status": "withdrawn", "withdrawn_by", "requested_by",
    "approvals", "needed", "action", "volume", "was"}``; None when ``view`` keeps no such answer
    (never withdrawn, or the answer was pushed out of the memory since). Pure; never raises."""
    ops = view.get("applied_ops") if isinstance(view, dict) else None
    for result in reversed(list(ops.values())) if isinstance(ops, dict) else ():
        if isinstance(result, dict) and result.get("ok") is True and result.get("status") == "withdrawn" \
                and result.get("request") == req_id and result.get("withdrawn_by") is not None \
                and result.get("withdrawn_by") == result.get("requested_by"):
            return result
    return None


def _settled_answer(site: "SiteDaemon", req_id: str, before: dict | None, op: str) -> web.Response | None:
    """The answer to ``op`` (``approve`` | ``veto``) of request ``req_id`` when this site's current
    view (:meth:`Cluster.raft_synced`) already settles it, proposing no Raft command: a repeated
    ask reached Raft and showed at other sites as a refused command, "a sign to look at that
    site" (operator try-out 2, item 11). ``before`` is the request's record in the view (None:
    not there). Returns 200 ``{"request", "status", ..., "already": True}`` when the status is in
    :data:`SETTLED_OK`; raises NotFoundError for an id the current view does not hold, and
    ConflictError for a contradicting settled status; None (propose as before) while the request
    is pending or approved, or when the view is not current (the state machine decides). A veto
    of a request its requester withdrew (:func:`withdrawal_of`) answers like a vetoed one:
    ``status: withdrawn``, ``already``."""
    if not site.cluster.raft_synced():
        return None
    withdrawal = withdrawal_of(site.cluster.view(), req_id) if before is None and op == "veto" else None
    if withdrawal is not None:  # a withdrawn request leaves no record, but it will not happen either: as vetoed
        log.info("AUDIT request %s: veto asked at %s, already withdrawn by %s (nothing proposed)", req_id,
                 site.site_id, withdrawal.get("withdrawn_by"))
        return _ok({"request": req_id, "status": "withdrawn", "already": True,
                    **{k: withdrawal[k] for k in ("approvals", "needed", "action", "withdrawn_by", "volume")
                       if withdrawal.get(k) is not None}})
    if before is None:
        raise NotFoundError(f"no request {req_id} at this site (replicad requests lists them; a withdrawn request "
                            "leaves no record)", request=req_id)
    status = before.get("status")
    if status in ("pending", "approved"):
        return None
    answer = {"request": req_id, "status": status, "approvals": list(before.get("approvals") or []),
              "needed": before.get("needed"), "action": before.get("action"), "already": True,
              **({"vetoed_by": before["vetoed_by"]} if before.get("vetoed_by") else {}),
              **({"result": before["result"]} if before.get("result") is not None else {})}
    if status in SETTLED_OK[op]:
        log.info("AUDIT request %s: %s asked at %s, already %s (nothing proposed)", req_id, op, site.site_id, status)
        return _ok(answer)
    raise ConflictError(f"request {req_id} is already {status}: it cannot be {op}d now (nothing proposed)",
                        request=req_id, status=status)


def _request_answer(res: dict) -> dict:
    """The admin API's view of a ``request`` / ``approve`` result (with the request's
    ``action`` and ``volume`` when the result names them)."""
    out = {"request": res.get("request"), "status": res.get("status"), "approvals": res.get("approvals", []),
           "needed": res.get("needed")}
    for key in ("action", "volume"):
        if res.get(key) is not None:
            out[key] = res[key]
    for key in ("expires_ns", "effective_ns"):
        if res.get(key) is not None:
            out[key] = res[key]
    if res.get("result") is not None:
        out["result"] = res["result"]
    return out


def _revocation_pending(view: dict, target: str) -> str | None:
    """A warning when a revocation of ``target`` (a volume's new primary) is pending or approved and
    cooling off in ``view``: once it applies every command ``target`` signs is refused, so the
    volume then needs another primary; None otherwise. Pure."""
    r = next((r for r in list_requests(view) if r.get("action") == "revoke_site" and r.get("status") in
              ("pending", "approved") and (r.get("args") or {}).get("site_id") == target), None)
    if r is None:
        return None
    when = (f"approved, it takes effect at {_utc_text(r.get('effective_ns'))} unless a site vetoes it"
            if r.get("status") == "approved" else "pending")
    return (f"a revocation of {target} is {when} ({r.get('id')}, requested by {r.get('by')}): once it applies, "
            f"every command {target} signs is refused and this volume needs another primary (promote it at "
            f"another site); if the revocation is a mistake, veto {r.get('id')} at a site")


def _identical_approved(view: dict, action: str, args: dict) -> dict | None:
    """The request record (:func:`list_requests`) approved and cooling off (status ``approved``)
    whose action and args equal ``action`` and ``args`` (compared as the state stores them: after a
    msgpack round trip), else None: a revocation, membership change or large maximum asked for
    again during its cooling-off is answered with it (a new request would stay pending after it
    applied, nothing left to change, until it expired). Pure."""
    import msgpack

    try:
        wanted = msgpack.unpackb(msgpack.packb(args, use_bin_type=True), raw=False)
    except (TypeError, ValueError):
        return None
    return next((r for r in list_requests(view) if r.get("status") == "approved" and r.get("action") == action
                 and r.get("args") == wanted), None)


def _utc_text(ns: Any) -> str:
    """A Raft time in nanoseconds as ``2026-12-08 00:44:09 UTC`` (``?`` when not an int)."""
    import datetime

    if not isinstance(ns, int):
        return "?"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


async def _make_request(site: "SiteDaemon", action: str, args: dict, reason: str, **extra: Any) -> web.Response:
    """Record a protection-weakening change as a request through Raft: 202 while it waits
    for approvals (200 when the policy needs no other site)."""
    view = site.cluster.view()  # before it applies: what the request changes, as the approvers will see it
    changes = request_changes({"action": action, "args": args, "status": "pending"}, view)
    cooling = _identical_approved(view, action, args)
    if cooling is not None:  # approved, cooling off: it takes effect without a new request (which would stay moot)
        log.warning("AUDIT request %s (approved, cooling off) asked for again at %s: nothing new proposed: %s %s",
                    cooling["id"], site.site_id, action, facts_text(args))
        return _ok({"request": cooling["id"], "status": "approved", "approvals": list(cooling.get("approvals") or []),
                    "needed": cooling.get("needed"), "effective_ns": cooling.get("effective_ns"), "action": action,
                    **{k: args[k] for k in ("volume", "site_id") if k in args}, "existing": True, "already": True,
                    "by": cooling.get("by"), "own": cooling.get("by") == site.site_id,
                    "reason": cooling.get("reason") or "",
                    "next": f"{cooling['id']} takes effect at {_utc_text(cooling.get('effective_ns'))} (cooling-off) "
                            f"unless a site vetoes it (replicad veto {cooling['id']}); nothing new recorded"})
    res = site.cluster.identical_pending_request(action, args)  # another site's: answered with it, none proposed
    if res is None or res["by"] == site.site_id:  # (this site's own: Cluster.propose answers with it)
        res = await site.cluster.propose("request", action=action, args=args, reason=reason)
    out = {**_request_answer(res), "action": action, **{k: args[k] for k in ("volume", "site_id") if k in args},
           **({"changes": changes} if changes is not None else {}), **extra,
           **({"existing": True, "by": res.get("by") or site.site_id, "own": (res.get("by") or site.site_id) ==
               site.site_id, "reason": res.get("reason") or "", "identical": list(res.get("identical") or [])}
              if res.get("existing") else {})}
    if res.get("status") == "pending":
        out["next"] = (f"an operator of another site approves it there: replicad approve {res.get('request')} "
                       f"(needs {res.get('needed')} sites, this one counted)")
        others = [r for r in out.get("identical") or () if r.get("request") != res.get("request")]
        also = ("; identical pending requests also: " + ", ".join(
            f"{r.get('request')} by {r.get('by')} (approved by {', '.join(map(str, r.get('approvals') or ()))})"
            for r in others)) if others else ""
        out["next"] += also
        if res.get("existing") and out["by"] != site.site_id:  # another site's identical request: nothing proposed
            out["next"] = (f"{res.get('request')} by {out['by']} is pending (the oldest identical request): approve "
                           f"it with replicad approve {res.get('request')} (this site has not approved it; nothing "
                           f"new recorded){also}")
            log.warning("AUDIT request %s of %s asked for again at %s (identical to that pending request, the oldest "
                        "of %d: nothing new proposed): %s %s", res.get("request"), out["by"], site.site_id,
                        len(out.get("identical") or ()) or 1, action, facts_text(args))
        elif res.get("existing"):  # Cluster.propose: this site's identical pending request, nothing proposed
            log.warning("AUDIT request %s asked for again at %s (identical to this pending request of the site: "
                        "nothing new proposed): %s %s", res.get("request"), site.site_id, action, facts_text(args))
        else:
            log.warning("AUDIT request %s made at %s: %s %s", res.get("request"), site.site_id, action,
                        facts_text(args))
        return _ok(out, status=202)
    return _ok(out)


PROMOTE_READY_WAIT_S = 120.0  # a planned switchover waits this long for the new primary to serve the volume


async def _await_ready(site: "SiteDaemon", target: str, volume: str, epoch: int | None, authorization: str | None,
                       wait_s: float = PROMOTE_READY_WAIT_S) -> dict:
    """After a planned switchover: poll ``target``'s ``GET /v1/status`` (with the caller's
    bearer token) every 0.2 s until it reports ``volume`` with role ``primary`` at acting epoch
    ``epoch`` — its image restored and its root verified (O5), the application may start.

    Returns ``{"ready": True, "ready_after_s": seconds}``, or after ``wait_s`` (or at once when
    the target refuses the token) ``{"ready": False, "not_ready": why}``. Never raises."""
    import time

    url = next((s.admin_url for s in site.cfg.sites if s.site_id == target), None)
    if url is None or site.session is None:
        return {"ready": False, "not_ready": f"no admin endpoint known for {target}"}
    headers = {"Authorization": authorization} if authorization else {}
    t0 = time.monotonic()
    why = f"{target} has not reported {volume} yet"
    while True:
        try:
            async with site.session.get(url + "/v1/status", headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                data = await resp.json(content_type=None)
            if resp.status == 200 and isinstance(data, dict):
                v = (data.get("volumes") or {}).get(volume) or {}
                if v.get("role") == "primary" and epoch is not None and v.get("acting_epoch") == epoch:
                    return {"ready": True, "ready_after_s": time.monotonic() - t0}
                why = (f"{target} reports {volume} as {v.get('role')} (acting epoch {v.get('acting_epoch')}, "
                       f"granted epoch {epoch})" + (f", last error: {v['last_error']}" if v.get("last_error") else ""))
            else:
                code = data.get("error") if isinstance(data, dict) else None
                why = f"{target} answered its status with HTTP {resp.status} {code or ''}".rstrip()
                if resp.status in (401, 403):
                    return {"ready": False, "not_ready": why + " (the token is not valid there: check its status "
                                                             "there with its own token)"}
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as err:
            why = f"{target} admin endpoint unreachable: {connection_reason(err)}"
        if time.monotonic() - t0 >= wait_s:
            return {"ready": False, "not_ready": f"not ready after {wait_s:.0f} s: {why}"}
        await asyncio.sleep(0.2)


async def _forward(site: "SiteDaemon", primary: str, path: str, body: dict, authorization: str | None) -> Any:
    """POST ``body`` to the primary's admin API with the caller's bearer token."""
    url = next((s.admin_url for s in site.cfg.sites if s.site_id == primary), None)
    if url is None or site.session is None:
        raise PeerUnavailableError(f"no admin endpoint known for primary {primary}", primary=primary)
    headers = {"Authorization": authorization} if authorization else {}
    try:
        async with site.session.post(url + path, json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=300)) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:  # named: the operator talked to this site, the primary refused
                doc = data if isinstance(data, dict) else {}
                raise from_dict({**doc, "message": f"{primary} (the primary, forwarded to by {site.site_id}) refused: "
                                 f"{doc.get('message', 'error without message')}",
                                 "evidence": {**(doc.get("evidence") if isinstance(doc.get("evidence"), dict) else {}),
                                              "refused_by": primary}}, resp.status)
            return data
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as err:
        raise PeerUnavailableError(f"primary {primary} admin endpoint unreachable: {connection_reason(err)}",
                                   primary=primary, detail=unreachable_detail(err)) from None
