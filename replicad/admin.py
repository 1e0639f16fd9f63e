"""Admin HTTP API of a site (JSON, versioned under ``/v1``; listens on loopback by default).

Routes::

    GET  /healthz                              process is up
    GET  /readyz                               store open and Raft has a leader
    GET  /metrics                              Prometheus text exposition (replicad/metrics.py)
    GET  /v1/status                            site, Raft view, per-volume role/epoch/RPO
    GET  /v1/volumes                           Raft's volume table
    GET  /v1/volumes/{volume}/snapshots        committed catalog + this site's divergent branch
    POST /v1/volumes/{volume}/snapshot         take, ship and commit one now (primary only)
    POST /v1/volumes/{volume}/promote          {"to": site?, "force": bool}
    POST /v1/volumes/{volume}/demote           {}
    POST /v1/volumes/{volume}/restore          {"target": path, "seq": int?, "last_clean": bool?,
                                                "overwrite": bool?, "wait": bool? (false: 202 + operation)}
    GET  /v1/operations/{id}                   state, phase, progress (blocks), result or error
    POST /v1/volumes/{volume}/prune            {"seqs": [int]}: refused inside the lock window (O4)
    POST /v1/volumes/{volume}/retention/run    apply the retention policy at this site now
    GET  /v1/audit                             the newest Raft audit records

Errors are ``{error, message, evidence}`` with the HTTP status of the error class; the CLI
maps ``error`` back to the same class and its exit code. A planned switchover asked at a
site that is not the primary is forwarded to the primary's admin endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from .errors import (InternalError, NotFoundError, PeerUnavailableError, ReplicadError, UsageError, _jsonable,
                     from_dict)

if TYPE_CHECKING:
    from .daemon import SiteDaemon

log = logging.getLogger("replicad.admin")


def _ok(body: Any, status: int = 200) -> web.Response:
    return web.json_response(_jsonable(body), status=status)


def _err(err: ReplicadError) -> web.Response:
    return web.json_response(err.to_dict(), status=err.http_status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"request body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    return body


def _handler(fn):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except ReplicadError as err:
            return _err(err)
        except Exception as err:  # noqa: BLE001 — never a traceback to an operator
            log.exception("admin %s %s failed", request.method, request.path)
            return _err(InternalError(f"internal error: {err!r}"))

    return wrapped


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


def admin_routes(site: "SiteDaemon") -> list[web.RouteDef]:
    """The admin API of ``site`` as aiohttp route definitions."""

    @_handler
    async def healthz(request: web.Request) -> web.Response:
        return _ok({"ok": True, "site_id": site.site_id})

    @_handler
    async def readyz(request: web.Request) -> web.Response:
        raft = site.raft.status() if site.raft else {}
        ready = site.store is not None and raft.get("leader") is not None
        return _ok({"ready": ready, "leader": raft.get("leader")}, status=200 if ready else 503)

    @_handler
    async def metrics(request: web.Request) -> web.Response:
        from .metrics import CONTENT_TYPE

        body = await asyncio.to_thread(site.metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    @_handler
    async def status(request: web.Request) -> web.Response:
        return _ok(site.status())

    @_handler
    async def volumes(request: web.Request) -> web.Response:
        st = site.raft.state()
        out = {name: {k: v for k, v in vs.items() if k != "snapshots"} | {"snapshots": len(vs["snapshots"])}
               for name, vs in st["volumes"].items()}
        return _ok({"volumes": out})

    @_handler
    async def snapshots(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        vs = site.volume_state(name)
        if vs is None:
            _raise_not_found(name)
        committed = [{"seq": seq, **{k: v for k, v in snap.items()}} for seq, snap in sorted(vs["snapshots"].items())]
        divergent = []
        if site.catalog is not None and name in site.runners:
            divergent = [{"epoch": r.epoch, "seq": r.seq, "root": r.root, "created_at_ns": r.created_at_ns}
                         for r in site.catalog.list(name, "divergent")]
        return _ok({"volume": name, "epoch": vs["epoch"], "primary": vs["primary"], "snapshots": committed,
                    "divergent": divergent})

    @_handler
    async def snapshot(request: web.Request) -> web.Response:
        return _ok(await site.snapshot_now(request.match_info["volume"]))

    @_handler
    async def promote(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        to = body.get("to")
        force = _opt_bool(body, "force")
        if to is not None and not isinstance(to, str):
            raise UsageError("to must be a site id", field="to")
        if not force:
            if not to:
                raise UsageError("a planned switchover needs 'to' (or use force at the site to promote)")
            vs = site.volume_state(name)
            if vs is not None and vs["primary"] not in (None, site.site_id):
                return _ok(await _forward(site, vs["primary"], request.path, body))
        return _ok(await site.promote(name, to, force))

    @_handler
    async def demote(request: web.Request) -> web.Response:
        return _ok(await site.demote(request.match_info["volume"]))

    @_handler
    async def restore(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise UsageError("target (a path on this site) is required", field="target")
        seq = _opt_int(body, "seq")
        overwrite = _opt_bool(body, "overwrite")
        last_clean = _opt_bool(body, "last_clean")
        if _opt_bool(body, "wait", default=True):
            return _ok(await site.restore(name, Path(target), seq, last_clean, overwrite=overwrite))
        site.volume_state(name) or _raise_not_found(name)
        op = site.start_operation("restore", name, lambda op: site.restore(name, Path(target), seq, last_clean,
                                                                             overwrite=overwrite, op=op))
        return _ok(op.to_dict(), status=202)

    @_handler
    async def operation(request: web.Request) -> web.Response:
        op = site.operations.get(request.match_info["op_id"])
        if op is None:
            _raise_not_found(request.match_info["op_id"], what="operation")
        return _ok(op.to_dict())

    @_handler
    async def prune(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        body = await _json_body(request)
        seqs = body.get("seqs")
        if not isinstance(seqs, list) or not seqs or not all(isinstance(x, int) and not isinstance(x, bool)
                                                            and x >= 0 for x in seqs):
            raise UsageError("seqs must be a non-empty list of snapshot numbers", field="seqs")
        return _ok(await site.prune(name, seqs))

    @_handler
    async def retention_run(request: web.Request) -> web.Response:
        name = request.match_info["volume"]
        runner = site._runner(name)
        async with runner.lock:
            return _ok(await site.retention_step(name))

    @_handler
    async def audit(request: web.Request) -> web.Response:
        return _ok({"audit": site.raft.state().get("audit", [])[-200:]})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics), web.get("/v1/status", status),
            web.get("/v1/volumes", volumes), web.get("/v1/volumes/{volume}/snapshots", snapshots),
            web.post("/v1/volumes/{volume}/snapshot", snapshot), web.post("/v1/volumes/{volume}/promote", promote),
            web.post("/v1/volumes/{volume}/demote", demote), web.post("/v1/volumes/{volume}/restore", restore),
            web.post("/v1/volumes/{volume}/prune", prune), web.post("/v1/volumes/{volume}/retention/run", retention_run),
            web.get("/v1/audit", audit), web.get("/v1/operations/{op_id}", operation)]


async def _forward(site: "SiteDaemon", primary: str, path: str, body: dict) -> Any:
    url = next((s.admin_url for s in site.cfg.sites if s.site_id == primary), None)
    if url is None or site.session is None:
        raise PeerUnavailableError(f"no admin endpoint known for primary {primary}", primary=primary)
    try:
        async with site.session.post(url + path, json=body, timeout=aiohttp.ClientTimeout(total=300)) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise from_dict(data if isinstance(data, dict) else {}, resp.status)
            return data
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as err:
        raise PeerUnavailableError(f"primary {primary} admin endpoint unreachable: {err}", primary=primary) from None
