"""The admin API answers every refusal as its typed JSON error ``{error, message, evidence}``
(a tryout's findings): an unknown path 404 ``not_found``, a method a path does not serve 405
``method_not_allowed`` with ``Allow`` (aiohttp's text/plain pages before), and a malformed body
400 ``bad_request`` on every route, also one that reads no body: ``POST .../snapshot`` with
``{bad`` took a snapshot and answered 200; a body past 1 MiB 413 ``body_too_large`` (it was a 500
with a traceback) (real daemons)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from .conftest import VOL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def raw(url: str, method: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_unknown_paths_methods_and_malformed_bodies_are_typed_json_errors(cluster_factory) -> None:
    c = cluster_factory(n_blocks=32, interval="3650d")
    base = c.sites["site-a"].admin_url
    status, headers, body = raw(base + "/v1/nope", "GET")
    err = json.loads(body)
    assert status == 404 and headers["Content-Type"].startswith("application/json"), (status, headers, body)
    assert err["error"] == "not_found" and "/v1/nope" in err["message"] and err["evidence"]["path"] == "/v1/nope"

    status, headers, body = raw(base + "/v1/status", "DELETE")
    err = json.loads(body)
    assert status == 405 and err["error"] == "method_not_allowed" and "GET" in err["evidence"]["allowed"], err
    assert "GET" in headers["Allow"]

    before = c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
    status, headers, body = raw(base + f"/v1/volumes/{VOL}/snapshot", "POST", b"{bad")
    err = json.loads(body)
    assert status == 400 and err["error"] == "bad_request" and "not JSON" in err["message"], (status, body)
    assert c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"] == before  # no snapshot taken
    status, _, body = raw(base + f"/v1/volumes/{VOL}/snapshot", "POST", b"[1]")
    assert status == 400 and json.loads(body)["error"] == "bad_request"
    status, _, body = raw(base + f"/v1/volumes/{VOL}/snapshot", "POST", b"{}")  # an empty object still works
    assert status == 200 and json.loads(body)["committed"], body

    # a body past the listener's 1 MiB: a typed 413 on every route, no traceback in the journal (tryout)
    for method, path in (("PUT", f"/v1/volumes/{VOL}/detection"), ("POST", "/v1/requests/r1/approve")):
        status, _, body = raw(base + path, method, b"a" * 3_000_000)
        err = json.loads(body)
        assert status == 413 and err["error"] == "body_too_large" and err["evidence"]["limit_bytes"] == 2**20, body
    assert "Traceback" not in c.sites["site-a"].log_path.read_text()
