"""The admin API of real site daemons with access control: 401 vs 403 vs 200 per role, the
hash-chained admin audit file, verify and drill, retention through Raft, membership
refusal, and the OpenAPI document checked against the live routes and live answers."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from replicad.ops.admin import AUDIT_FILE, admin_routes
from replicad.storage.audit import verify_chain
from replicad.config import load_config
from replicad.site.daemon import SiteDaemon
from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, snapshot, write_image

pytestmark = pytest.mark.integration

TOKENS = {"ann": ("viewer", "viewer-token-abcdefghijklmnopqrstuvwxyz"),
          "otto": ("operator", "operator-token-abcdefghijklmnopqrstuvwxyz"),
          "ada": ("admin", "admin-token-abcdefghijklmnopqrstuvwxyz")}
VIEWER, OPERATOR, ADMIN = (TOKENS[n][1] for n in ("ann", "otto", "ada"))
NO_TOKEN = ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Three sites; site-a (the primary) has viewer/operator/admin tokens, site-b is open."""
    root = tmp_path_factory.mktemp("admin-api")
    c = LocalCluster(root / "cluster", interval="1h", min_copies=2, tokens={"site-a": TOKENS})
    write_image(c.sites["site-a"].volume_path(VOL), 96, random.Random(7))
    try:
        c.start_all()
        c.wait_ready(60)
        snapshot(c, "site-a")
        yield c
    finally:
        c.stop_all()


def call(c: LocalCluster, site: str, method: str, path: str, body: Any = None, token: str = ADMIN,
         raw_body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP request; returns (status, headers, decoded JSON or text). Never raises on 4xx/5xx."""
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(c.sites[site].admin_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            status, hdrs, payload = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, hdrs, payload = err.code, dict(err.headers), err.read()
    ctype = hdrs.get("Content-Type", "")
    return status, hdrs, json.loads(payload) if "json" in ctype else payload.decode()


def wait_op(c: LocalCluster, site: str, op: dict, token: str = ADMIN) -> dict:
    deadline = time.monotonic() + 120
    while op["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        status, _, op = call(c, site, "GET", f"/v1/operations/{op['id']}", token=token)
        assert status == 200
    return op


# --------------------------------------------------------------------------- access control


def test_no_or_unknown_token_is_401_with_www_authenticate(cluster: LocalCluster) -> None:
    status, headers, body = call(cluster, "site-a", "GET", "/v1/status", token=NO_TOKEN)
    assert status == 401 and body["error"] == "unauthenticated" and body["evidence"]["reason"] == "missing"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, headers, body = call(cluster, "site-a", "POST", f"/v1/volumes/{VOL}/promote", {"force": True},
                                 token="not-a-configured-token-0123456789")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    for path in ("/healthz", "/readyz", "/metrics", "/v1/openapi.json"):
        assert call(cluster, "site-a", "GET", path, token=NO_TOKEN)[0] == 200, path


def test_each_role_gets_200_or_403(cluster: LocalCluster, tmp_path: Path) -> None:
    def status_of(method: str, path: str, body: Any, token: str) -> int:
        return call(cluster, "site-a", method, path, body, token=token)[0]

    for token in (VIEWER, OPERATOR, ADMIN):
        assert status_of("GET", "/v1/status", None, token) == 200
        assert status_of("GET", f"/v1/volumes/{VOL}/snapshots", None, token) == 200
    assert status_of("POST", f"/v1/volumes/{VOL}/snapshot", {}, VIEWER) == 403
    assert status_of("POST", f"/v1/volumes/{VOL}/snapshot", {}, OPERATOR) == 200
    target = tmp_path / "new.img"
    assert status_of("POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)}, VIEWER) == 403
    assert status_of("POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)}, OPERATOR) == 200
    status, _, body = call(cluster, "site-a", "POST", f"/v1/volumes/{VOL}/restore",
                           {"target": str(target), "overwrite": True}, token=OPERATOR)
    assert status == 403 and body["evidence"] == {"token": "otto", "role": "operator", "required_role": "admin"}
    assert status_of("POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "overwrite": True}, ADMIN) == 200
    for method, path in (("POST", f"/v1/volumes/{VOL}/promote"), ("POST", f"/v1/volumes/{VOL}/demote"),
                         ("PUT", f"/v1/volumes/{VOL}/retention"), ("POST", f"/v1/volumes/{VOL}/prune"),
                         ("POST", "/v1/members")):
        assert status_of(method, path, {}, OPERATOR) == 403, path
    # the open site answers without a token
    assert call(cluster, "site-b", "GET", "/v1/status", token=NO_TOKEN)[0] == 200


def test_members_listed_and_membership_changes_refused(cluster: LocalCluster) -> None:
    # Raft connections are re-checked on its ticks: wait for all three to be reported
    body = cluster.wait_for("every member reachable", lambda: (lambda b: b if all(
        m["reachable"] and m["registered"] for m in b["members"]) and b["has_quorum"] else None)(
        call(cluster, "site-a", "GET", "/v1/members", token=VIEWER)[2]), 30)
    assert [m["site_id"] for m in body["members"]] == ["site-a", "site-b", "site-c"]
    assert body["leader"] in ("site-a", "site-b", "site-c")
    st = call(cluster, "site-a", "GET", "/v1/status", token=VIEWER)[2]
    assert [m["site_id"] for m in st["members"]] == ["site-a", "site-b", "site-c"]
    for method, path in (("POST", "/v1/members"), ("DELETE", "/v1/members/site-c")):
        status, _, body = call(cluster, "site-a", method, path, {"site_id": "site-d"})
        assert status == 501 and body["error"] == "not_supported" and body["evidence"]["procedure"]


# --------------------------------------------------------------------------- operations


def test_verify_and_drill(cluster: LocalCluster, tmp_path: Path) -> None:
    status, _, rep = call(cluster, "site-a", "POST", f"/v1/volumes/{VOL}/verify", {}, token=OPERATOR)
    assert status == 200 and rep["checked"] > 0 and rep["corrupt"] == [] and rep["lost"] == 0
    newest = rep["seq"]
    status, _, rep = call(cluster, "site-b", "POST", f"/v1/volumes/{VOL}/verify", {"seq": newest}, token=NO_TOKEN)
    assert status == 200 and rep["seq"] == newest and rep["corrupt"] == []
    assert call(cluster, "site-a", "POST", f"/v1/volumes/{VOL}/verify", {"seq": 10**6})[0] == 404

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    status, _, op = call(cluster, "site-a", "POST", f"/v1/volumes/{VOL}/drill", {"sandbox": str(sandbox)},
                         token=OPERATOR)
    assert status == 202 and op["kind"] == "drill"
    op = wait_op(cluster, "site-a", op, token=VIEWER)
    assert op["state"] == "done", op
    assert op["result"]["verified"] and op["result"]["drill"] and not op["result"]["kept"]
    assert list(sandbox.iterdir()) == []  # the drill image is deleted
    status, _, op = call(cluster, "site-a", "POST", f"/v1/volumes/{VOL}/drill",
                         {"sandbox": str(sandbox), "keep": True})
    op = wait_op(cluster, "site-a", op)
    kept = Path(op["result"]["target"])
    assert op["state"] == "done" and kept.parent == sandbox
    assert kept.read_bytes() == cluster.sites["site-a"].volume_path(VOL).read_bytes()
    assert call(cluster, "site-a", "POST", f"/v1/volumes/{VOL}/drill", {"sandbox": str(tmp_path / "no")})[0] == 400


def test_cli_with_tokens(cluster: LocalCluster, tmp_path: Path) -> None:
    admin = cluster.sites["site-a"].admin_url
    env = {k: v for k, v in os.environ.items() if k != "REPLICAD_TOKEN"}

    def cli(*args: str, token_env: str | None = None) -> subprocess.CompletedProcess:
        e = dict(env, REPLICAD_TOKEN=token_env) if token_env else env
        return subprocess.run([sys.executable, "-m", "replicad", "--admin", admin, *args], capture_output=True,
                              text=True, timeout=180, env=e)

    denied = cli("status")
    assert denied.returncode == 8 and "unauthenticated" in denied.stderr and "Traceback" not in denied.stderr
    assert cli("status", token_env=VIEWER).returncode == 0
    token_file = tmp_path / "token"
    token_file.write_text(OPERATOR + "\n")
    verify = cli("--json", "verify", VOL, "--token-file", str(token_file))
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["lost"] == 0
    forbidden = cli("promote", VOL, "--force", "--token-file", str(token_file))
    assert forbidden.returncode == 8 and "forbidden" in forbidden.stderr
    sandbox = tmp_path / "sb"
    sandbox.mkdir()
    drill = cli("drill", VOL, "--sandbox", str(sandbox), "--report", str(tmp_path / "drill.html"), token_env=OPERATOR)
    assert drill.returncode == 0 and "root verified" in drill.stdout, drill.stderr
    members = cli("--json", "members", "--token", VIEWER)
    assert members.returncode == 0 and len(json.loads(members.stdout)["members"]) == 3
    ret = cli("retention", VOL, token_env=VIEWER)
    assert ret.returncode == 0 and "lock" in ret.stdout


def test_retention_policy_through_raft(cluster: LocalCluster) -> None:
    path = f"/v1/volumes/{VOL}/retention"
    status, _, before = call(cluster, "site-a", "GET", path, token=VIEWER)
    assert status == 200
    lock = before["retention"]["lock_s"]
    # a longer policy keeps every site's copies longer: a request too, applied at its second approval (no cooling-off)
    status, _, body = call(cluster, "site-a", "PUT", path, {"retention": {"lock": lock + 3600}})
    assert status == 202 and body["status"] == "pending" and body["weakened"] == [], body
    assert call(cluster, "site-a", "GET", path, token=VIEWER)[2]["retention"]["lock_s"] == lock
    status, _, body = call(cluster, "site-b", "POST", f"/v1/requests/{body['request']}/approve", {}, token=NO_TOKEN)
    assert status == 200 and body["status"] == "applied", body
    status, _, body = call(cluster, "site-a", "PUT", path, {"retention": {"lock": lock + 3600}})
    assert status == 200 and body["status"] == "unchanged", body
    assert call(cluster, "site-a", "PUT", path, {"retention": {"lock": "3700d"}})[0] == 400  # > ten years
    cluster.wait_for("site-c sees the new policy", lambda: call(cluster, "site-c", "GET", path, token=NO_TOKEN)[2]
                     ["retention"]["lock_s"] == lock + 3600, timeout_s=20)
    # O4: one site cannot shorten it: a request, pending until an operator of another site approves it there
    status, _, body = call(cluster, "site-a", "PUT", path, {"retention": {"lock_s": lock}, "reason": "test"})
    assert status == 202 and body["status"] == "pending" and body["needed"] == 2 and body["weakened"] == ["lock_s"]
    req = body["request"]
    assert call(cluster, "site-a", "GET", path, token=VIEWER)[2]["retention"]["lock_s"] == lock + 3600
    listed = call(cluster, "site-c", "GET", "/v1/requests", token=NO_TOKEN)[2]["requests"]
    assert [(r["id"], r["status"], r["by"], r["reason"]) for r in listed if r["status"] == "pending"] == \
        [(req, "pending", "site-a", "test")]
    assert call(cluster, "site-a", "POST", f"/v1/requests/{req}/approve", {}, token=OPERATOR)[0] == 403
    status, _, body = call(cluster, "site-a", "POST", f"/v1/requests/{req}/approve", {})  # its own site again
    assert status == 200 and body["status"] == "pending", body
    assert body["next"].startswith("site-a was already counted (it made the request): nothing changed"), body
    status, _, body = call(cluster, "site-b", "POST", f"/v1/requests/{req}/approve", {}, token=NO_TOKEN)
    assert status == 200 and body["status"] == "applied" and body["approvals"] == ["site-a", "site-b"], body
    cluster.wait_for("site-a sees the approved policy", lambda: call(cluster, "site-a", "GET", path, token=VIEWER)[2]
                     ["retention"]["lock_s"] == lock, timeout_s=20)
    status, _, body = call(cluster, "site-a", "PUT", path, {"retention": {"lock": lock}, "approved_by": ["site-b"]})
    assert status == 400 and "approved_by is no longer accepted" in body["message"]
    assert call(cluster, "site-a", "PUT", path, {"retention": {"lock": "x"}})[0] == 400
    assert call(cluster, "site-a", "PUT", path, {"retention": {"daily": 1}})[0] == 400  # keep_all <= hourly <= daily


def test_repeated_and_self_directed_requests_propose_nothing(cluster: LocalCluster) -> None:
    """Operator try-out 2, items 1, 2, 3 and 11, on real daemons: a site's revocation of itself is
    refused at the proposer; another site's identical request is answered with the pending one (a
    pointer to approve it); an approve of an applied request and a veto of a vetoed one answer what
    they are (``already``) and the contradicting ones ``conflict``, all without a new request."""
    def requests(site: str) -> list[dict]:
        return call(cluster, site, "GET", "/v1/requests", token=NO_TOKEN if site != "site-a" else VIEWER)[2][
            "requests"]

    count = len(requests("site-a"))
    status, _, body = call(cluster, "site-b", "POST", "/v1/sites/site-b/revoke", {"reason": "typo"}, token=NO_TOKEN)
    assert status == 409 and body["error"] == "conflict" and "cannot ask for its own revocation" in body["message"]
    cli = subprocess.run([sys.executable, "-m", "replicad", "--admin", cluster.sites["site-b"].admin_url, "revoke",
                          "site-b"], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "REPLICAD_TOKEN"})
    assert cli.returncode == 4 and "ask at another site" in cli.stderr, (cli.stdout, cli.stderr)
    path = f"/v1/volumes/{VOL}/retention"
    daily = call(cluster, "site-a", "GET", path, token=VIEWER)[2]["retention"]["daily_s"] + 86400
    status, _, first = call(cluster, "site-a", "PUT", path, {"retention": {"daily_s": daily}, "reason": "first"})
    assert status == 202 and first["status"] == "pending" and "existing" not in first, first
    req = first["request"]
    cluster.wait_for("site-b sees the request", lambda: any(r["id"] == req for r in requests("site-b")),
                     timeout_s=20)
    status, _, other = call(cluster, "site-b", "PUT", path, {"retention": {"daily": f"{daily}s"}, "reason": "2nd"},
                            token=NO_TOKEN)
    assert status == 202 and other["request"] == req and other["existing"] is True and other["own"] is False, other
    assert other["by"] == "site-a" and other["reason"] == "first" and other["approvals"] == ["site-a"], other
    assert other["next"].startswith(f"{req} by site-a is pending (the oldest identical request): approve it with "
                                    f"replicad approve {req}"), other
    status, _, again = call(cluster, "site-a", "PUT", path, {"retention": {"daily_s": daily}, "reason": "other"})
    assert status == 202 and again["request"] == req and again["own"] is True and again["reason"] == "first"
    assert len(requests("site-a")) == count + 1
    status, _, body = call(cluster, "site-b", "POST", f"/v1/requests/{req}/approve", {}, token=NO_TOKEN)
    assert status == 200 and body["status"] == "applied", body
    cluster.wait_for("site-c sees it applied", lambda: any(r["id"] == req and r["status"] == "applied"
                                                            for r in requests("site-c")), timeout_s=20)
    status, _, body = call(cluster, "site-c", "POST", f"/v1/requests/{req}/approve", {}, token=NO_TOKEN)
    assert status == 200 and body["status"] == "applied" and body["already"] is True, body
    status, _, body = call(cluster, "site-c", "POST", f"/v1/requests/{req}/veto", {}, token=NO_TOKEN)
    assert status == 409 and "already applied" in body["message"], body
    status, _, second = call(cluster, "site-a", "PUT", path, {"retention": {"daily_s": daily + 86400}})
    assert status == 202, second
    cluster.wait_for("site-b sees the second request", lambda: any(r["id"] == second["request"]
                                                                   for r in requests("site-b")), timeout_s=20)
    status, _, body = call(cluster, "site-b", "POST", f"/v1/requests/{second['request']}/veto",
                           {"reason": "not agreed"}, token=NO_TOKEN)
    assert status == 200 and body["status"] == "vetoed", body
    cluster.wait_for("site-c sees it vetoed", lambda: any(r["id"] == second["request"] and r["status"] == "vetoed"
                                                          for r in requests("site-c")), timeout_s=20)
    status, _, body = call(cluster, "site-c", "POST", f"/v1/requests/{second['request']}/veto", {}, token=NO_TOKEN)
    assert status == 200 and body["already"] is True and body["vetoed_by"] == "site-b", body
    status, _, body = call(cluster, "site-c", "POST", f"/v1/requests/{second['request']}/approve", {},
                           token=NO_TOKEN)
    assert status == 409 and "already vetoed" in body["message"], body
    assert call(cluster, "site-c", "POST", "/v1/requests/r999/approve", {}, token=NO_TOKEN)[0] == 404
    assert len(requests("site-a")) == count + 2


def test_audit_file_chains_and_records_refused_calls(cluster: LocalCluster) -> None:
    tag = f"/v1/volumes/{VOL}/snapshot"
    assert call(cluster, "site-a", "POST", tag, {}, token=NO_TOKEN)[0] == 401
    assert call(cluster, "site-a", "POST", tag, {}, token=VIEWER)[0] == 403
    assert call(cluster, "site-a", "GET", "/v1/volumes/nope/snapshots", token=VIEWER)[0] == 404
    assert call(cluster, "site-a", "POST", tag, {"token": "do-not-store"}, token=OPERATOR)[0] == 200
    path = cluster.sites["site-a"].dir / "data" / AUDIT_FILE
    ok, n, bad = verify_chain(path)
    assert ok and bad is None and n >= 4
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    tail = recs[-4:]
    assert [(r["who"], r["status"], r["outcome"], r["error"]) for r in tail] == [
        ("anonymous", 401, "refused", "unauthenticated"), ("ann", 403, "refused", "forbidden"),
        ("ann", 404, "refused", "not_found"), ("otto", 200, "ok", None)]
    assert tail[-1]["body"] == {"token": "***"} and tail[-1]["method"] == "POST" and tail[-1]["path"] == tag
    assert tail[-1]["remote"] == "127.0.0.1" and tail[-1]["at"].endswith("Z")
    assert not any(r["method"] == "GET" and r["status"] == 200 for r in recs)  # reads that succeed are not audited
    status, _, body = call(cluster, "site-a", "GET", "/v1/audit/admin?limit=3", token=VIEWER)
    assert status == 200 and body["chain"]["ok"] and len(body["records"]) == 3
    assert body["head"]["seq"] >= n
    cli = subprocess.run([sys.executable, "-m", "replicad", "audit", "verify", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0 and "chain intact" in cli.stdout


# --------------------------------------------------------------------------- OpenAPI conformance


def test_openapi_documents_every_live_route(cluster: LocalCluster, tmp_path: Path) -> None:
    doc = call(cluster, "site-a", "GET", "/v1/openapi.json", token=NO_TOKEN)[2]
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    cfg = load_config(cluster.sites["site-a"].config_path).model_copy(update={"data_dir": tmp_path})
    routes = {(r.method, r.path) for r in admin_routes(SiteDaemon(cfg))}
    assert routes == documented


def _validator(doc: dict, response: dict) -> jsonschema.Draft202012Validator | None:
    content = response.get("content", {}).get("application/json")
    if content is None:
        return None
    return jsonschema.Draft202012Validator({**content["schema"], "components": doc["components"]})


def _one_more_key(members: list[dict]) -> list[dict]:
    """``members`` with a new key pinned beside the last member's own (a membership change)."""
    from replicad.core import identity

    extra = identity.format_public_key(identity.public_key_raw(identity.generate_private_key()))
    return [*members[:-1], {**members[-1], "keys": [*members[-1]["keys"], extra]}]


def test_live_answers_match_the_openapi_document(cluster: LocalCluster, tmp_path: Path) -> None:
    doc = call(cluster, "site-a", "GET", "/v1/openapi.json", token=NO_TOKEN)[2]
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    op_ids: list[str] = []
    v = f"/v1/volumes/{VOL}"
    # (documented path, method, actual path, body, token) — a valid and an invalid request each;
    # order matters: demote then a forced promote back to site-a come last.
    cases: list[tuple[str, str, str, Any, str]] = [
        ("/", "GET", "/", None, VIEWER),  # the status page (issue 16)
        ("/", "GET", "/", None, NO_TOKEN),  # the status page without a token: 401
        ("/healthz", "GET", "/healthz", None, NO_TOKEN),
        ("/readyz", "GET", "/readyz", None, NO_TOKEN),
        ("/metrics", "GET", "/metrics", None, NO_TOKEN),
        ("/v1/openapi.json", "GET", "/v1/openapi.json", None, NO_TOKEN),
        ("/v1/status", "GET", "/v1/status", None, VIEWER),
        ("/v1/status", "GET", "/v1/status", None, NO_TOKEN),
        ("/v1/volumes", "GET", "/v1/volumes", None, VIEWER),
        ("/v1/volumes", "GET", "/v1/volumes", None, "wrong-token-0123456789abcdef"),
        ("/v1/volumes/{volume}/snapshots", "GET", f"{v}/snapshots", None, VIEWER),
        ("/v1/volumes/{volume}/snapshots", "GET", "/v1/volumes/nope/snapshots", None, VIEWER),
        ("/v1/volumes/{volume}/snapshot", "POST", f"{v}/snapshot", {}, OPERATOR),
        ("/v1/volumes/{volume}/snapshot", "POST", "/v1/volumes/nope/snapshot", {}, OPERATOR),
        ("/v1/volumes/{volume}/verify", "POST", f"{v}/verify", {}, OPERATOR),
        ("/v1/volumes/{volume}/verify", "POST", f"{v}/verify", {"seq": -1}, OPERATOR),
        ("/v1/volumes/{volume}/drill", "POST", f"{v}/drill", {"sandbox": str(sandbox)}, OPERATOR),
        ("/v1/volumes/{volume}/drill", "POST", f"{v}/drill", {"sandbox": "relative/dir"}, OPERATOR),
        ("/v1/volumes/{volume}/restore", "POST", f"{v}/restore", {"target": str(tmp_path / "r.img"), "wait": False},
         OPERATOR),
        ("/v1/volumes/{volume}/restore", "POST", f"{v}/restore", {"target": str(tmp_path / "s.img")}, OPERATOR),
        ("/v1/volumes/{volume}/restore", "POST", f"{v}/restore", {}, OPERATOR),
        ("/v1/volumes/{volume}/exports", "POST", f"{v}/exports", {"snapshot": 1}, OPERATOR),  # snapshot exports
        ("/v1/volumes/{volume}/exports", "POST", f"{v}/exports", {"snapshot": 999}, OPERATOR),
        ("/v1/volumes/{volume}/exports", "POST", f"{v}/exports", {"snapshot": 1}, VIEWER),
        ("/v1/exports", "GET", "/v1/exports", None, VIEWER),
        ("/v1/exports", "GET", "/v1/exports", None, NO_TOKEN),
        ("/v1/exports/{export_id}", "DELETE", "/v1/exports/{export}", None, OPERATOR),
        ("/v1/exports/{export_id}", "DELETE", "/v1/exports/nope", None, OPERATOR),
        ("/v1/operations/{op_id}", "GET", "/v1/operations/{op}", None, VIEWER),
        ("/v1/operations/{op_id}", "GET", "/v1/operations/nope", None, VIEWER),
        ("/v1/operations/{op_id}", "DELETE", "/v1/operations/{op}", None, OPERATOR),  # cancelled, or ended
        ("/v1/operations/{op_id}", "DELETE", "/v1/operations/nope", None, OPERATOR),
        ("/v1/volumes/{volume}/retention", "GET", f"{v}/retention", None, VIEWER),
        ("/v1/volumes/{volume}/retention", "GET", "/v1/volumes/nope/retention", None, VIEWER),
        ("/v1/volumes/{volume}/retention", "PUT", f"{v}/retention", {"retention": {"daily": "31d"}}, ADMIN),
        ("/v1/volumes/{volume}/retention", "PUT", f"{v}/retention", {"retention": {"bogus": 1}}, ADMIN),
        ("/v1/volumes/{volume}/retention", "PUT", f"{v}/retention", {"retention": {"lock": "1s"}}, ADMIN),
        ("/v1/requests", "GET", "/v1/requests", None, VIEWER),
        ("/v1/requests", "GET", "/v1/requests", None, NO_TOKEN),
        ("/v1/requests/{request_id}/approve", "POST", "/v1/requests/{req}/approve", {}, ADMIN),
        ("/v1/requests/{request_id}/approve", "POST", "/v1/requests/r999/approve", {}, ADMIN),
        ("/v1/requests/{request_id}/approve", "POST", "/v1/requests/{req}/approve", {}, VIEWER),
        ("/v1/requests/{request_id}/veto", "POST", "/v1/requests/{req}/veto", {}, ADMIN),
        ("/v1/requests/{request_id}/veto", "POST", "/v1/requests/{req}/veto", {}, ADMIN),  # already vetoed (200)
        ("/v1/requests/{request_id}/veto", "POST", "/v1/requests/r999/veto", {}, ADMIN),  # no such request
        ("/v1/requests/{request_id}/veto", "POST", "/v1/requests/{req}/veto", {}, VIEWER),
        ("/v1/sites/{site_id}/revoke", "POST", "/v1/sites/site-c/revoke", {"reason": "test"}, ADMIN),
        ("/v1/sites/{site_id}/revoke", "POST", "/v1/sites/nowhere/revoke", {}, ADMIN),
        ("/v1/sites/{site_id}/revoke", "POST", "/v1/sites/site-c/revoke", {}, VIEWER),
        ("/v1/rules/raise", "POST", "/v1/rules/raise", {"cancel": True}, OPERATOR),  # none to withdraw
        ("/v1/rules/raise", "POST", "/v1/rules/raise", {"leave_behind": ["site-c"], "reason": "t"}, OPERATOR),  # 409
        ("/v1/rules/raise", "POST", "/v1/rules/raise", {"bogus": 1}, OPERATOR),  # 400
        ("/v1/rules/raise", "POST", "/v1/rules/raise", {"cancel": True}, VIEWER),
        ("/v1/volumes/{volume}/max-size", "PUT", f"{v}/max-size", {"max_size_bytes": "2GiB"}, ADMIN),  # a request
        ("/v1/volumes/{volume}/max-size", "PUT", f"{v}/max-size", {"max_size_bytes": "lots"}, ADMIN),
        ("/v1/volumes/{volume}/max-size", "PUT", f"{v}/max-size", {"max_size_bytes": "2GiB"}, VIEWER),
        ("/v1/volumes/{volume}/retention/run", "POST", f"{v}/retention/run", {}, ADMIN),
        ("/v1/volumes/{volume}/retention/run", "POST", "/v1/volumes/nope/retention/run", {}, ADMIN),
        ("/v1/volumes/{volume}/prune", "POST", f"{v}/prune", {"seqs": [1]}, ADMIN),
        ("/v1/volumes/{volume}/prune", "POST", f"{v}/prune", {"seqs": []}, ADMIN),
        ("/v1/volumes/{volume}/snapshots/{seq}/verdict", "POST", f"{v}/snapshots/1/verdict",
         {"verdict": "clean", "reason": "reviewed"}, ADMIN),
        ("/v1/volumes/{volume}/snapshots/{seq}/verdict", "POST", f"{v}/snapshots/1/verdict",
         {"verdict": "maybe"}, ADMIN),
        ("/v1/volumes/{volume}/snapshots/{seq}/evidence", "GET", f"{v}/snapshots/1/evidence", None, VIEWER),
        ("/v1/volumes/{volume}/snapshots/{seq}/evidence", "GET", f"{v}/snapshots/999/evidence", None, VIEWER),
        ("/v1/volumes/{volume}/detection", "GET", f"{v}/detection", None, VIEWER),
        ("/v1/volumes/{volume}/detection", "GET", "/v1/volumes/nope/detection", None, VIEWER),
        ("/v1/volumes/{volume}/detection", "PUT", f"{v}/detection", {"detection": {"window_s": 8 * 86400}},
         ADMIN),  # any change is a request (202): tests/security/test_detection_policy.py
        ("/v1/volumes/{volume}/detection", "PUT", f"{v}/detection", {"detection": {"bogus": 1}}, ADMIN),
        ("/v1/volumes/{volume}/detection", "PUT", f"{v}/detection", {"detection": {}}, VIEWER),
        ("/v1/members", "GET", "/v1/members", None, VIEWER),
        ("/v1/members", "GET", "/v1/members", None, NO_TOKEN),
        ("/v1/members", "POST", "/v1/members", {"site_id": "site-d"}, ADMIN),
        ("/v1/members", "POST", "/v1/members", {}, VIEWER),
        ("/v1/members/{site_id}", "DELETE", "/v1/members/site-c", None, ADMIN),
        ("/v1/membership", "POST", "/v1/membership", {"members": []}, ADMIN),
        ("/v1/membership", "POST", "/v1/membership",  # the same list: nothing to change, refused (409)
         {"members": load_config(cluster.sites["site-a"].config_path).membership()}, ADMIN),
        ("/v1/membership", "POST", "/v1/membership", {"members": _one_more_key(  # a pending request, never approved
            load_config(cluster.sites["site-a"].config_path).membership())}, ADMIN),
        ("/v1/membership", "POST", "/v1/membership", {}, VIEWER),
        ("/v1/volumes/{volume}/readopt", "POST", f"{v}/readopt", {}, ADMIN),  # no previous incarnation: 404
        ("/v1/volumes/{volume}/readopt", "POST", f"{v}/readopt", {"epoch": 1}, ADMIN),  # epoch without seq: 400
        ("/v1/volumes/{volume}/readopt", "POST", f"{v}/readopt", {}, VIEWER),
        ("/v1/members/{site_id}", "DELETE", "/v1/members/site-c", None, NO_TOKEN),
        ("/v1/audit", "GET", "/v1/audit", None, VIEWER),
        ("/v1/audit", "GET", "/v1/audit", None, NO_TOKEN),
        ("/v1/audit/admin", "GET", "/v1/audit/admin", None, VIEWER),
        ("/v1/audit/admin", "GET", "/v1/audit/admin?limit=0", None, VIEWER),
        ("/v1/volumes/{volume}/remove", "POST", f"{v}/remove", {"reason": "decommissioned"}, ADMIN),
        ("/v1/volumes/{volume}/remove", "POST", "/v1/volumes/nope/remove", {}, ADMIN),
        ("/v1/volumes/{volume}/remove", "POST", f"{v}/remove", {"bogus": 1}, ADMIN),
        ("/v1/volumes/{volume}/remove", "POST", f"{v}/remove", {}, VIEWER),
        ("/v1/volumes/{volume}/demote", "POST", f"{v}/demote", {}, ADMIN),
        ("/v1/volumes/{volume}/demote", "POST", "/v1/volumes/nope/demote", {}, ADMIN),
        ("/v1/volumes/{volume}/promote", "POST", f"{v}/promote", {"force": "yes"}, ADMIN),
        ("/v1/volumes/{volume}/promote", "POST", f"{v}/promote", {"force": True}, ADMIN),
    ]
    seen: set[tuple[str, str]] = set()
    statuses: dict[tuple[str, str], set[int]] = {}
    request_ids: list[str] = []
    export_ids: list[str] = []
    for documented, method, path, body, token in cases:
        if "{op}" in path:
            path = path.replace("{op}", op_ids[0])
        if "{req}" in path:
            path = path.replace("{req}", request_ids[-1])
        if "{export}" in path:  # the export opened by an earlier case
            path = path.replace("{export}", export_ids[-1])
        operation = doc["paths"][documented][method.lower()]
        status, headers, answer = call(cluster, "site-a", method, path, body, token=token)
        responses = operation["responses"]
        assert str(status) in responses, (method, path, status, answer)
        validator = _validator(doc, responses[str(status)])
        if validator is None:
            assert isinstance(answer, str) and headers["Content-Type"].startswith(
                "text/html" if documented == "/" else "text/plain")  # the status page is HTML
        else:
            errors = sorted(validator.iter_errors(answer), key=str)
            assert not errors, (method, path, status, [e.message for e in errors[:3]])
        if status == 200 and documented == "/v1/volumes/{volume}/exports":
            export_ids.append(answer["export_id"])
        if status == 202 and "request" in answer:
            request_ids.append(answer["request"])
        elif status == 202:
            op_ids.append(answer["id"])
        seen.add((method, documented))
        statuses.setdefault((method, documented), set()).add(status)
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert seen == documented
    # every operation was answered once as designed (a prune or a removal inside the lock window is
    # refused, membership changes are not supported) and every protected one refused once
    # readopt needs a previous cluster incarnation, which this cluster has not (tests/integration/test_incarnation.py)
    assert all(any(s < 300 for s in st) or key[1].endswith(("/prune", "/readopt", "/remove")) or 501 in st
               for key, st in statuses.items()), statuses
    assert all(any(s >= 400 for s in st) for key, st in statuses.items()
               if doc["paths"][key[1]][key[0].lower()]["x-required-role"] != "open"), statuses
    for op_id in op_ids:
        wait_op(cluster, "site-a", {"id": op_id, "state": "running"})
    final = cluster.status("site-a")["volumes"][VOL]
    assert final["primary"] == "site-a" and final["role"] == "primary"
