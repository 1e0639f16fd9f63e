"""A minimal synchronous client of the admin API (stdlib ``urllib``), shared by the CLI, the
demo and the tests. Errors come back as the class named in the JSON error body. A token is
sent as ``Authorization: Bearer <token>`` (:mod:`replicad.ops.auth`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable

from replicad.core.errors import PeerUnavailableError, UsageError, from_dict
from replicad.ops.auth import ACCESS_CONTROL_HEADER
from replicad.peer.netreason import connection_reason, unreachable_detail


def call_admin(base_url: str, method: str, path: str, body: dict | None = None, timeout_s: float = 600,
               token: str | None = None, on_open: Callable[[], None] | None = None) -> Any:
    """``method`` ``base_url + path`` with a JSON body (and ``token`` as a bearer token when
    given); returns the decoded JSON answer. ``on_open`` is called when a token was sent and the
    site answered that it has no access control (``X-Replicad-Access-Control: none``,
    :data:`replicad.ops.auth.ACCESS_CONTROL_HEADER`): the token was not checked.

    Raises:
        the ReplicadError subclass named by an error answer ({error, message, evidence});
        PeerUnavailableError if the endpoint cannot be reached or answers without a JSON error;
        UsageError if ``base_url`` is not a URL.
    """
    if not base_url.startswith(("http://", "https://")):
        raise UsageError(f"admin URL {base_url!r} needs its scheme: http://{base_url} (or https:// with [tls])",
                         url=base_url)
    url = base_url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
    except ValueError as err:  # not a URL at all
        raise UsageError(f"admin URL {base_url!r} is not a URL (expected e.g. http://127.0.0.1:7301, the default "
                         f"admin port): {err}", url=base_url) from None
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            if token and on_open is not None and resp.headers.get(ACCESS_CONTROL_HEADER) == "none":
                on_open()
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            payload = json.loads(err.read() or b"{}")
        except ValueError:
            payload = {}
        if isinstance(payload, dict) and "error" in payload:
            raise from_dict(payload, err.code) from None
        raise PeerUnavailableError(f"admin API {url} answered HTTP {err.code}", url=url, status=err.code) from None
    except (urllib.error.URLError, OSError) as err:
        raise PeerUnavailableError(f"admin API {url} unreachable: {connection_reason(err)}", url=url,
                                   detail=unreachable_detail(err)) from None
