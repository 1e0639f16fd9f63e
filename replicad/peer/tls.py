"""Mutual TLS on the peer API (``[tls]`` of the site config): SSL contexts and the sender check.

Every site holds a certificate signed by the cluster's CA (``ca_file``) and its key. The peer
server asks every client for its certificate and refuses one the CA did not sign; a client
checks the server's certificate against the same CA and the host of the ``peer_url`` it
dials (so each certificate names its site's peer host as a subjectAltName: DNS name or IP).
The sender of a peer request is its certificate: the ``from`` of every peer document must be
named by the certificate's commonName or one of its DNS subjectAltNames
(:func:`check_sender`), so one site cannot speak for another. Plain HTTP peers are refused
at the handshake. The Raft port is separate: pysyncobj encrypts and authenticates it with the
cluster's Raft password.

Contexts come from :mod:`ssl` (TLS 1.2 at least, the platform's default ciphers).
"""

from __future__ import annotations

import datetime
import ssl
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from replicad.config import TlsConfig
from replicad.core.errors import ConfigError, ForbiddenError


def _context(purpose: ssl.Purpose, tls: TlsConfig) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(purpose, cafile=str(tls.ca_file))
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"tls: cannot load the certificate, key or CA: {err}", cert_file=str(tls.cert_file),
                          key_file=str(tls.key_file), ca_file=str(tls.ca_file)) from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The peer server's context: its certificate, and a client certificate signed by the CA
    required (``CERT_REQUIRED``). Raises ConfigError if the files do not load."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """The peer client's context: presents this site's certificate, verifies the server's
    against the CA and the peer URL's host. Raises ConfigError if the files do not load."""
    return _context(ssl.Purpose.SERVER_AUTH, tls)


def check_site_tls(tls: TlsConfig, site_id: str, now: datetime.datetime | None = None) -> None:
    """Everything a site's ``[tls]`` must satisfy before it serves, for ``check-config`` and
    the daemon's start: the certificate, key and CA load and belong together (both contexts
    are built), the certificate is valid now, and it names ``site_id`` (commonName or DNS
    subjectAltName: the sender check of every peer that receives from this site). Raises
    ConfigError naming the file and the problem."""
    server_context(tls)
    client_context(tls)
    try:
        cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"tls.cert_file: {tls.cert_file} is not a PEM certificate: {err}",
                          cert_file=str(tls.cert_file)) from err
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(f"tls.cert_file: {tls.cert_file} is not valid now (valid from "
                          f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
                          cert_file=str(tls.cert_file))
    names = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        names |= set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                     .value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    if site_id not in names:
        raise ConfigError(f"tls.cert_file: {tls.cert_file} names {sorted(names)}, not this site {site_id!r}: "
                          "peers would refuse everything it sends", cert_file=str(tls.cert_file))


def cert_names(peercert: dict[str, Any]) -> set[str]:
    """The names a verified peer certificate (``SSLSocket.getpeercert()`` form) vouches for:
    its commonName(s) and DNS subjectAltNames."""
    names = {value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names |= {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return names


def cert_site(peercert: dict[str, Any] | None) -> str | None:
    """The site a verified peer certificate (``getpeercert()`` form) belongs to, known before
    any byte of the request body is read: its commonName (the site id, :func:`check_site_tls`);
    without one, its DNS subjectAltNames joined by ``|``; None for a request not over TLS."""
    if peercert is None:
        return None
    common = sorted(value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName")
    if common:
        return common[0]
    return "|".join(sorted(cert_names(peercert))) or "?"


def check_sender(peercert: dict[str, Any] | None, sender: object) -> None:
    """Raise ForbiddenError unless the TLS client certificate names ``sender`` (the ``from``
    of a peer document). ``peercert`` None: the request did not come over TLS (a cluster
    without ``[tls]``), nothing to check."""
    if peercert is None:
        return
    names = cert_names(peercert)
    if sender not in names:
        raise ForbiddenError("the peer's TLS certificate does not name the site it speaks for",
                             sender=str(sender), certificate_names=sorted(names))
