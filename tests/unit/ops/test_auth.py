"""replicad.ops.auth: token hashing, authentication (401) vs authorization (403), the route table,
and the admin token settings of the config."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from replicad.ops import auth
from replicad.config import parse_config
from replicad.core.errors import ConfigError, ForbiddenError, UnauthenticatedError, UsageError, from_dict
from replicad.ops.openapi import build_document

CONFIG = Path(__file__).resolve().parents[3] / "config"
VIEW, OPER, ADM = "v" * 30, "o" * 30, "a" * 30


@pytest.fixture
def table() -> auth.TokenTable:
    return auth.TokenTable([("ann", "viewer", auth.hash_token(VIEW)), ("otto", "operator", auth.hash_token(OPER)),
                            ("ada", "admin", auth.hash_token(ADM))])


def test_hash_is_sha256_of_the_stripped_token() -> None:
    assert auth.hash_token(" secret\n") == hashlib.sha256(b"secret").hexdigest()
    with pytest.raises(UsageError):
        auth.hash_token("  ")


def test_generated_tokens_are_long_and_distinct() -> None:
    tokens = {auth.generate_token() for _ in range(50)}
    assert len(tokens) == 50 and min(map(len, tokens)) >= auth.MIN_TOKEN_CHARS


def test_generated_tokens_never_begin_with_a_dash() -> None:
    """1 draw in 64 began with '-', which `replicad --token X` reads as an option: in 2,000 draws
    (a 1 - (63/64)**2000 chance, about 1 - 2e-14, that the old rule made one) none does."""
    assert not any(auth.generate_token().startswith("-") for _ in range(2000))


def test_a_token_beginning_with_a_dash_is_read_after_token() -> None:
    from replicad.cli import _token_joined

    dash = "-" + "A" * 42
    assert _token_joined(["--token", dash, "status"]) == [f"--token={dash}", "status"]
    assert _token_joined(["--token", "-j", "status"]) == ["--token", "-j", "status"]  # too short: an option
    assert _token_joined(["--token", "abc" * 15]) == ["--token", "abc" * 15]
    res = _cli("--admin", "http://127.0.0.1:9", "--token", dash, "status")
    assert "expected one argument" not in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_each_token_authenticates_as_its_name_and_role(table: auth.TokenTable) -> None:
    assert table.authenticate(f"Bearer {VIEW}") == auth.Principal("ann", "viewer")
    assert table.authenticate(f"bearer   {OPER} ") == auth.Principal("otto", "operator")
    assert table.authenticate(f"Bearer {ADM}") == auth.Principal("ada", "admin")


@pytest.mark.parametrize(("header", "reason"), [(None, "missing"), ("", "missing"), ("Basic abc", "malformed"),
                                                 ("Bearer", "malformed"), ("Bearer " + "x" * 30, "unknown"),
                                                 ("Bearer " + VIEW[:-1], "unknown")])
def test_missing_malformed_or_unknown_token_is_401(table: auth.TokenTable, header: str | None, reason: str) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        table.authenticate(header)
    err = info.value
    assert err.http_status == 401 and err.evidence["reason"] == reason and err.exit_code == 8
    assert auth.www_authenticate(err).startswith("Bearer realm=")
    assert (reason == "missing") == ("invalid_token" not in auth.www_authenticate(err))


def test_role_too_low_is_403_and_roles_are_ordered(table: auth.TokenTable) -> None:
    viewer = table.authenticate(f"Bearer {VIEW}")
    auth.authorize(viewer, "viewer", "GET /v1/status")
    with pytest.raises(ForbiddenError) as info:
        auth.authorize(viewer, "operator", "POST /v1/volumes/ehr/snapshot")
    assert info.value.http_status == 403 and info.value.evidence["required_role"] == "operator"
    operator = table.authenticate(f"Bearer {OPER}")
    auth.authorize(operator, "operator", "x")
    with pytest.raises(ForbiddenError):
        auth.authorize(operator, "admin", "x")
    auth.authorize(table.authenticate(f"Bearer {ADM}"), "admin", "x")
    for role in auth.ROLES:
        assert auth.role_allows(role, auth.OPEN)
    assert not auth.role_allows("nobody", "viewer")


def test_no_token_configured_means_open_as_anonymous_admin() -> None:
    open_table = auth.TokenTable([])
    assert open_table.open
    assert open_table.authenticate(None) == auth.Principal("anonymous", "admin")


def test_access_errors_round_trip_through_json() -> None:
    for cls, status in ((UnauthenticatedError, 401), (ForbiddenError, 403)):
        err = from_dict(cls("no", reason="x").to_dict())
        assert type(err) is cls and err.http_status == status and err.exit_code == 8


def test_status_page_takes_the_token_as_basic_password_and_api_routes_do_not(table: auth.TokenTable) -> None:
    import base64  # issue 16: the status page's browser login

    basic = "Basic " + base64.b64encode(f"anyone:{VIEW}".encode()).decode()
    assert table.authenticate(basic, allow_basic=True) == auth.Principal("ann", "viewer")
    with pytest.raises(UnauthenticatedError) as err:  # the API itself stays bearer-only
        table.authenticate(basic)
    assert err.value.evidence["reason"] == "malformed"
    with pytest.raises(UnauthenticatedError) as err:
        table.authenticate("Basic " + base64.b64encode(b"anyone:wrong-token-0123456789abc").decode(), allow_basic=True)
    assert err.value.evidence["reason"] == "unknown"
    with pytest.raises(UnauthenticatedError) as err:
        table.authenticate("Basic !!!", allow_basic=True)
    assert err.value.evidence["reason"] == "malformed"
    assert auth.ROUTE_ROLES[("GET", "/")] == "viewer" and auth.BASIC_ROUTES == {("GET", "/")}
    assert auth.www_authenticate(err.value, basic=True).startswith('Basic realm="replicad status"')


def test_route_table_roles_follow_the_policy() -> None:
    roles = auth.ROUTE_ROLES
    assert all(role == "viewer" for (method, path), role in roles.items()
               if method == "GET" and path not in ("/healthz", "/readyz", "/metrics", "/v1/openapi.json"))
    assert {roles[("POST", f"/v1/volumes/{{volume}}/{op}")] for op in ("snapshot", "verify", "drill", "restore")} \
        == {"operator"}
    assert {roles[("POST", f"/v1/volumes/{{volume}}/{op}")] for op in ("promote", "demote", "prune")} == {"admin"}
    assert roles[("PUT", "/v1/volumes/{volume}/retention")] == "admin"
    assert roles[("POST", "/v1/members")] == roles[("DELETE", "/v1/members/{site_id}")] == "admin"


def test_openapi_documents_exactly_the_route_table() -> None:
    doc = build_document()
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert documented == set(auth.ROUTE_ROLES)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["x-required-role"] == auth.ROUTE_ROLES[(method.upper(), path)]
            if op["x-required-role"] != auth.OPEN:
                assert {"401", "403"} <= set(op["responses"])


# --------------------------------------------------------------------------- config


def _doc() -> dict:
    return tomllib.loads((CONFIG / "site-a.toml").read_text())


def _problems(doc: dict, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base_dir=base)
    return info.value.problems


def test_config_tokens_are_parsed_and_hashes_normalised(sample_configs: Path) -> None:
    doc = _doc()
    doc["admin"]["tokens"] = [{"name": "ops-ann", "role": "viewer", "sha256": auth.hash_token(VIEW).upper()}]
    cfg = parse_config(doc, base_dir=sample_configs)
    assert cfg.admin_tokens[0].sha256 == auth.hash_token(VIEW) and cfg.admin_tokens[0].role == "viewer"


def test_config_token_problems_are_all_reported(sample_configs: Path) -> None:
    doc = _doc()
    doc["admin"]["tokens"] = [{"name": "ann", "role": "root", "sha256": VIEW},
                              {"name": "bob", "role": "admin", "sha256": auth.hash_token(ADM)},
                              {"name": "bob", "role": "admin", "sha256": auth.hash_token(ADM)},
                              {"name": "eve", "role": "admin", "sha256": auth.hash_token(OPER), "token": "x"}]
    problems = _problems(doc, sample_configs)
    assert any(p.startswith("admin.tokens[0].role:") for p in problems), problems
    assert any(p.startswith("admin.tokens[0].sha256: must be 64 hex digits") for p in problems), problems
    assert any(p.startswith("admin.tokens[3].token: unknown key") for p in problems), problems
    doc["admin"]["tokens"] = doc["admin"]["tokens"][1:3]
    assert _problems(doc, sample_configs) == ["admin.tokens[1].name: duplicate (also admin.tokens[0])",
                              "admin.tokens[1].sha256: duplicate (also admin.tokens[0])"]


@pytest.mark.parametrize("listen", ["0.0.0.0:7301", "10.1.2.3:7301", "admin.example.org:7301", "[::]:7301"])
def test_open_admin_api_only_on_loopback(listen: str, sample_configs: Path) -> None:
    doc = _doc()
    doc["admin"]["listen"] = listen
    problems = _problems(doc, sample_configs)
    assert len(problems) == 1 and problems[0].startswith("admin.listen:") and "not a loopback" in problems[0]
    doc["admin"]["tokens"] = [{"name": "ann", "role": "admin", "sha256": auth.hash_token(ADM)}]
    assert parse_config(doc, base_dir=sample_configs).admin_listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1:7301", "127.0.0.2:7301", "[::1]:7301", "localhost:7301"])
def test_open_admin_api_on_loopback_is_fine(listen: str, sample_configs: Path) -> None:
    doc = _doc()
    doc["admin"]["listen"] = listen
    assert parse_config(doc, base_dir=sample_configs).admin_tokens == ()


def test_tokens_sample_config_is_valid(sample_configs: Path) -> None:
    cfg = parse_config(tomllib.loads((CONFIG / "site-a-tokens.toml").read_text()), base_dir=sample_configs)
    assert {t.role for t in cfg.admin_tokens} == set(auth.ROLES)
    assert not cfg.admin_listen.startswith("127.")


# --------------------------------------------------------------------------- CLI helper


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicad", *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def test_cli_hash_token_reads_stdin() -> None:
    res = _cli("hash-token", stdin=ADM + "\n")
    assert res.returncode == 0 and res.stdout.strip() == auth.hash_token(ADM)
    short = _cli("hash-token", stdin="short\n")
    assert short.returncode == 2 and "at least" in short.stderr and "Traceback" not in short.stderr
