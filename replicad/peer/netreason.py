"""Why a connection to another site (or a site's admin API) failed, in words an operator reads.

The HTTP client's own text (``ClientConnectorError: Cannot connect to host 127.0.0.1:7202
ssl:default [Connect call failed ('127.0.0.1', 7202)]``) names the library, not the cause; it
stays in the error's evidence (``detail``) for whoever debugs the link, and the message says
``connection refused (...)``, ``no answer in time``, ``the TLS handshake failed (...)``.

aiohttp is not imported here: its exception classes are looked at only when the program has
imported it (the ``replicad`` command line talks to the admin API with urllib and starts faster
without it). Pure; never raises.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused (its daemon is not running, or listens on another address)",
    errno.ECONNRESET: "the connection was reset",
    errno.ECONNABORTED: "the connection was aborted",
    errno.EHOSTUNREACH: "no route to its host",
    errno.ENETUNREACH: "its network is unreachable",
    errno.ETIMEDOUT: "no answer in time",
    errno.EPIPE: "the connection was closed while sending",
}
"""Plain reasons of the socket errors a link to another site usually ends with (Linux errno)."""


def connection_reason(err: BaseException) -> str:
    """Why the connection attempt or exchange that raised ``err`` failed: a short phrase
    without the client library's names (``connection refused (...)``, ``no answer in time``,
    ``its host name does not resolve``, ``the TLS handshake failed (certificate has expired)``),
    else the exception's class and text."""
    aiohttp: Any = sys.modules.get("aiohttp")
    if aiohttp is not None:
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            cert = err.certificate_error
            why = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or str(cert)
            return f"its TLS certificate was refused ({why})"
        if isinstance(err, aiohttp.ClientSSLError):
            inner = getattr(err, "os_error", None)
            return f"the TLS handshake failed ({getattr(inner, 'reason', None) or inner or err})"
        if isinstance(err, aiohttp.ServerFingerprintMismatch):
            return "its TLS certificate is not the one pinned"
        if isinstance(err, aiohttp.ServerDisconnectedError):
            return "it closed the connection before answering"
        if isinstance(err, aiohttp.ClientPayloadError):
            return "its answer was cut off"
        if isinstance(err, aiohttp.ClientConnectorError):
            err = err.os_error
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return "no answer in time"
    inner = getattr(err, "reason", None)  # urllib's URLError wraps the socket error
    if isinstance(inner, BaseException) and inner is not err:
        return connection_reason(inner)
    if isinstance(err, socket.gaierror):
        return "its host name does not resolve"
    if isinstance(err, OSError) and err.errno is not None:
        return _ERRNO_REASONS.get(err.errno) or os.strerror(err.errno).lower()
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (its path dropped), or ``url`` when it has none."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def unreachable_detail(err: BaseException) -> str:
    """The client's own text of ``err`` for the evidence (``ClassName: text``)."""
    return f"{type(err).__name__}: {err}"
