"""Access control of the admin API: bearer tokens, three roles, one route table.

Roles, in increasing power (each includes the ones before it)::

    viewer     every GET (status, volumes, snapshots, members, retention, audit, operations, requests)
    operator   + snapshot now, verify, drill, restore into a NEW path
    admin      + promote, demote, members, retention (set, run), prune, restore with overwrite,
                 verdicts, approving or vetoing a request, asking to revoke a site

Tokens are configured per site as ``[[admin.tokens]] name, role, sha256`` where ``sha256``
is the hex SHA-256 of the token's UTF-8 bytes (``replicad hash-token`` prints it); the
token itself is never stored. A request presents ``Authorization: Bearer <token>``; its
SHA-256 is compared with every configured hash with :func:`hmac.compare_digest`. Unsalted
SHA-256 is enough because tokens are random (``generate_token``: 256 bits), not passwords.

* No or unknown token → :class:`~replicad.core.errors.UnauthenticatedError` (HTTP 401, with a
  ``WWW-Authenticate: Bearer`` header); role too low → :class:`ForbiddenError` (HTTP 403).
* ``/healthz``, ``/readyz``, ``/metrics`` and ``/v1/openapi.json`` are open (no secrets).
* The status page ``GET /`` (issue 16) needs role viewer like ``GET /v1/status``, and also
  takes the token as the password of HTTP Basic authentication (any user name): a browser
  asks for it when the answer is 401 with ``WWW-Authenticate: Basic`` (:data:`BASIC_ROUTES`).
* **No token configured → the API is open** and every caller is ``anonymous`` with role
  ``admin``. Config validation allows this only when ``admin.listen`` is a loopback
  address (:func:`replicad.config.is_loopback_host`): then anyone with a shell on the host
  is the admin, as with a local socket. Its answers to routes with a role then carry
  ``X-Replicad-Access-Control: none`` (:data:`ACCESS_CONTROL_HEADER`): the CLI says once that a
  token it sent was not checked (a ``--token`` against an open site succeeded silently).

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Iterable

from replicad.core.errors import ForbiddenError, UnauthenticatedError, UsageError

ROLES: tuple[str, ...] = ("viewer", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
ANONYMOUS = "anonymous"
OPEN = "open"                 # a route without access control
MIN_TOKEN_CHARS = 24          # hash-token refuses shorter tokens (guessable)
TOKEN_BYTES = 32              # generate_token: 256 bits of randomness
ACCESS_CONTROL_HEADER = "X-Replicad-Access-Control"
"""Answer header of a site without admin tokens (value ``none``): nobody's token is checked there."""

# (method, route template) -> role needed, or OPEN. The admin server refuses to start a
# route missing here, and the OpenAPI document shows it as ``x-required-role``.
ROUTE_ROLES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/v1/openapi.json"): OPEN,
    ("GET", "/v1/status"): "viewer",
    ("GET", "/"): "viewer",                        # the status page (issue 16): Basic or Bearer
    ("GET", "/v1/volumes"): "viewer",
    ("GET", "/v1/volumes/{volume}/snapshots"): "viewer",
    ("GET", "/v1/volumes/{volume}/retention"): "viewer",
    ("GET", "/v1/operations/{op_id}"): "viewer",
    ("GET", "/v1/members"): "viewer",
    ("GET", "/v1/audit"): "viewer",
    ("GET", "/v1/requests"): "viewer",
    ("GET", "/v1/audit/admin"): "viewer",
    ("POST", "/v1/volumes/{volume}/snapshot"): "operator",
    ("POST", "/v1/volumes/{volume}/verify"): "operator",
    ("POST", "/v1/volumes/{volume}/drill"): "operator",
    ("POST", "/v1/volumes/{volume}/restore"): "operator",   # admin when "overwrite" is true
    ("DELETE", "/v1/operations/{op_id}"): "operator",      # cancel a restore or drill
    ("POST", "/v1/volumes/{volume}/promote"): "admin",
    ("POST", "/v1/volumes/{volume}/demote"): "admin",
    ("POST", "/v1/volumes/{volume}/readopt"): "admin",
    ("PUT", "/v1/volumes/{volume}/retention"): "admin",
    ("PUT", "/v1/volumes/{volume}/max-size"): "admin",
    ("POST", "/v1/volumes/{volume}/retention/run"): "admin",
    ("POST", "/v1/volumes/{volume}/prune"): "admin",
    ("POST", "/v1/volumes/{volume}/remove"): "admin",
    ("POST", "/v1/volumes/{volume}/snapshots/{seq}/verdict"): "admin",
    ("GET", "/v1/volumes/{volume}/snapshots/{seq}/evidence"): "viewer",
    ("GET", "/v1/volumes/{volume}/detection"): "viewer",
    ("PUT", "/v1/volumes/{volume}/detection"): "admin",
    ("POST", "/v1/requests/{request_id}/approve"): "admin",
    ("POST", "/v1/requests/{request_id}/veto"): "admin",
    ("POST", "/v1/sites/{site_id}/revoke"): "admin",
    ("POST", "/v1/rules/raise"): "operator",  # a consent to leave members behind in a rules raise
    ("POST", "/v1/members"): "admin",
    ("DELETE", "/v1/members/{site_id}"): "admin",
    ("POST", "/v1/membership"): "admin",
    ("POST", "/v1/volumes/{volume}/exports"): "operator",  # snapshot exports over NBD (issue 16)
    ("GET", "/v1/exports"): "viewer",
    ("DELETE", "/v1/exports/{export_id}"): "operator",
}

# Routes a browser opens itself: they also take the token as an HTTP Basic password (issue 16)
BASIC_ROUTES: frozenset[tuple[str, str]] = frozenset({("GET", "/")})
BASIC_REALM = "replicad status"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a configured token's ``name`` and ``role``, or ``anonymous`` (open API)."""

    name: str
    role: str


def hash_token(token: str) -> str:
    """Hex SHA-256 of ``token`` (surrounding whitespace stripped) — what ``[[admin.tokens]]``
    stores. Raises UsageError for an empty token."""
    token = token.strip()
    if not token:
        raise UsageError("the token is empty")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> str:
    """A new random token (``secrets.token_urlsafe``: 32 bytes, 43 characters of the URL-safe
    base64 alphabet). One that begins with ``-`` is drawn again: ``replicad --token -x...`` reads
    it as an option (argparse), and 1 draw in 64 began with it. Rejecting those keeps
    log2(2**256 * 63/64) = 255.98 bits of entropy."""
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def role_allows(role: str, required: str) -> bool:
    """True when ``role`` is at least ``required`` (``OPEN`` allows everyone)."""
    if required == OPEN:
        return True
    return _RANK.get(role, -1) >= _RANK[required]


class TokenTable:
    """The configured tokens of a site.

    Args:
        tokens: ``(name, role, sha256_hex)`` triples (e.g. from ``SiteConfig.admin_tokens``).
    """

    def __init__(self, tokens: Iterable[tuple[str, str, str]]) -> None:
        self._tokens = [(name, role, bytes.fromhex(sha)) for name, role, sha in tokens]
        for _, role, _ in self._tokens:
            if role not in _RANK:
                raise UsageError(f"unknown role {role!r}", roles=list(ROLES))

    @property
    def open(self) -> bool:
        """True when no token is configured: every caller is the anonymous admin."""
        return not self._tokens

    def authenticate(self, authorization: str | None, allow_basic: bool = False) -> Principal:
        """The principal of an ``Authorization`` header value (``"Bearer <token>"``; with
        ``allow_basic`` also ``"Basic base64(user:token)"``, the user name ignored: the status
        page's browser login).

        Every configured hash is compared (``hmac.compare_digest``), matched or not.

        Raises:
            UnauthenticatedError: header missing, not a bearer token, or no token matches
                (evidence ``reason``: ``missing`` | ``malformed`` | ``unknown``).
        """
        if self.open:
            return Principal(ANONYMOUS, "admin")
        if not authorization:
            raise UnauthenticatedError("this admin API needs a bearer token (--token, $REPLICAD_TOKEN or "
                                       "--token-file)", reason="missing")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if allow_basic and scheme.lower() == "basic" and token:
            try:  # issue 16: RFC 7617, user-id ":" password; the password is the token
                token = base64.b64decode(token, validate=True).decode("utf-8").partition(":")[2].strip()
            except (binascii.Error, ValueError):
                raise UnauthenticatedError("the Basic credentials are not base64 of user:token",
                                           reason="malformed") from None
            scheme = "bearer"
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError("the Authorization header must be 'Bearer <token>'", reason="malformed")
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for name, role, stored in self._tokens:
            if hmac.compare_digest(digest, stored) and found is None:
                found = Principal(name, role)
        if found is None:
            raise UnauthenticatedError("the bearer token is not one of this site's admin tokens", reason="unknown")
        return found


def authorize(principal: Principal, required: str, what: str) -> None:
    """Raise ForbiddenError unless ``principal``'s role is at least ``required``.

    ``what`` names the request in the message (``"POST /v1/volumes/ehr/promote"``).
    """
    if not role_allows(principal.role, required):
        raise ForbiddenError(f"{what} needs role {required}; token {principal.name!r} has role {principal.role}",
                             token=principal.name, role=principal.role, required_role=required)


def www_authenticate(err: UnauthenticatedError, basic: bool = False) -> str:
    """The ``WWW-Authenticate`` header of a 401 answer (RFC 6750 §3; with ``basic``, the status
    page's RFC 7617 challenge, so that a browser asks for the token)."""
    if basic:
        return f'Basic realm="{BASIC_REALM}", charset="UTF-8"'
    if err.evidence.get("reason") in ("unknown", "malformed"):
        return 'Bearer realm="replicad", error="invalid_token"'
    return 'Bearer realm="replicad"'
