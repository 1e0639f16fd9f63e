"""Drill evidence: the signed, self-contained HTML report of a recovery drill (issue 16, item 5).

A drill (:mod:`replicad.site.drills`) restores a snapshot into a sandbox, checks it, and
describes what it did in a **report**: a JSON-native map (str, int, float, bool, None, lists,
maps with str keys) with the keys listed in :data:`REPORT_KEYS`. What is signed:

    ``REPORT_DOMAIN + canonical_report_bytes(report)``

where :func:`canonical_report_bytes` is the report as JSON with sorted keys, no whitespace and
ASCII escapes only (``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)``),
and the signature is Ed25519 by the drilling site's key (the one its ``[[sites]] public_key``
pins everywhere). The domain string keeps these signatures apart from command and
acknowledgement signatures (:mod:`replicad.core.identity`).

The HTML file (:func:`render_html`) is a pure, deterministic function of (report, signature):
readable tables for the auditor, plus the canonical bytes (HTML-escaped, in
``<pre id="replicad-signed-report">``) and the signature (``<code id="replicad-signature">``,
base64). :func:`verify_html` takes the canonical bytes and signature back out of a file,
checks the signature against the pinned keys of the site the report names, then renders the
HTML again and requires the file to be byte-for-byte that rendering: editing any visible
figure (or the data) makes the file fail, not only editing the signed block. Every value is
HTML-escaped (a volume name or a hook's output can hold markup); the page has no script.

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from replicad.core.errors import IntegrityError, UsageError

REPORT_DOMAIN = b"replicad-drill-report-v1\0"
REPORT_VERSION = 1
REPORT_KIND = "replicad-drill-report"
REPORT_KEYS = ("v", "kind", "cluster_id", "site_id", "public_key", "volume", "snapshot", "rpo", "rto", "restore",
               "fsck", "application_check", "ran_by", "started_at", "finished_at", "outcome")
"""Every report has these keys: ``v`` (1), ``kind``, ``cluster_id``, ``site_id`` (the drilling
site), ``public_key`` (its key, ``ed25519:<base64>``, or None when unsigned), ``volume``,
``snapshot`` ({seq, root, epoch, verdict, created_at}), ``rpo`` ({measured_s, target_s,
within_target}), ``rto`` ({measured_s, restore_s, verify_s}), ``restore`` ({verified,
blocks_written, bytes_written, image, kept}), ``fsck`` ({checked, ok, tool, returncode,
output_tail, reason}), ``application_check`` ({configured, ok, command, returncode, seconds,
timed_out, output_tail, reason}), ``ran_by`` ({token, role}), ``started_at``/``finished_at``
(UTC, ISO 8601), ``outcome`` (``passed`` | ``failed``)."""

_DATA_RE = re.compile(r'<pre id="replicad-signed-report">(.*?)</pre>', re.S)
_SIG_RE = re.compile(r'<code id="replicad-signature">(.*?)</code>', re.S)


def canonical_report_bytes(report: Mapping[str, Any]) -> bytes:
    """The canonical encoding of ``report`` (sorted keys, no whitespace, ASCII only).

    Raises:
        UsageError: a value JSON cannot hold (bytes, a set, a non-str key, NaN...).
    """
    try:
        return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as err:
        raise UsageError(f"a drill report holds JSON values only: {err}") from None


def sign_report(private_key: Ed25519PrivateKey, report: Mapping[str, Any]) -> str:
    """The base64 Ed25519 signature of ``REPORT_DOMAIN + canonical_report_bytes(report)``."""
    return base64.b64encode(private_key.sign(REPORT_DOMAIN + canonical_report_bytes(report))).decode("ascii")


def signature_ok(report: Mapping[str, Any], signature_b64: str, public_keys: Any) -> bool:
    """True if ``signature_b64`` verifies ``report`` under one of ``public_keys`` (raw 32 bytes)."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return False
    message = REPORT_DOMAIN + canonical_report_bytes(report)
    for raw in public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
            return True
        except (InvalidSignature, ValueError, TypeError):
            continue
    return False


# --------------------------------------------------------------------------- HTML

def _e(value: Any) -> str:
    """HTML-escaped text of any value (None as an em dash)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value), quote=True)


def _dur(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "—"
    s = float(seconds)
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min ({s:.0f} s)"
    return f"{s / 3600:.2f} h ({s:.0f} s)"


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>\n" for k, v in pairs)


def _check_text(check: Mapping[str, Any], configured_key: str) -> str:
    """PASSED / FAILED / not checked, with the reason, for the fsck or application check."""
    if not check.get(configured_key):
        return f'<span class="na">not checked</span>: {_e(check.get("reason"))}'
    cls, word = ("ok", "PASSED") if check.get("ok") else ("bad", "FAILED")
    return f'<span class="{cls}">{word}</span>'


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:60em;color:#111}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #bbb;padding:.3em .6em;"
          "text-align:left;vertical-align:top}th{background:#eee;width:16em}.ok{color:#060;font-weight:bold}"
          ".bad{color:#a00;font-weight:bold}.na{color:#666;font-weight:bold}pre{white-space:pre-wrap;"
          "word-break:break-all;background:#f6f6f6;padding:.5em;font-size:.85em}")


def render_html(report: Mapping[str, Any], signature_b64: str | None) -> str:
    """The self-contained HTML drill report of ``report`` (and its signature, None when the
    site runs unsigned). Deterministic: the same inputs give the same bytes (UTF-8).

    Raises:
        UsageError: ``report`` is not JSON-native (see :func:`canonical_report_bytes`).
    """
    canonical = canonical_report_bytes(report).decode("ascii")
    snap = report.get("snapshot") or {}
    rpo, rto = report.get("rpo") or {}, report.get("rto") or {}
    restore, fsck = report.get("restore") or {}, report.get("fsck") or {}
    app, who = report.get("application_check") or {}, report.get("ran_by") or {}
    passed = report.get("outcome") == "passed"
    outcome = '<span class="ok">PASSED</span>' if passed else '<span class="bad">FAILED</span>'
    if not passed and snap.get("verdict") == "suspect":
        outcome += " (the snapshot is judged suspect: a drill proves recovery only from a clean snapshot)"
    within = rpo.get("within_target")
    rpo_text = (f"{_dur(rpo.get('measured_s'))} (target {_dur(rpo.get('target_s'))}: "
                f"{'within' if within else 'ABOVE'} target)")
    summary = _rows([
        ("Outcome", outcome),
        ("Volume", _e(report.get("volume"))),
        ("Snapshot", f"#{_e(snap.get('seq'))} (epoch {_e(snap.get('epoch'))}, verdict {_e(snap.get('verdict'))}, "
                     f"taken {_e(snap.get('created_at'))})"),
        ("Snapshot root (BLAKE3)", f"<code>{_e(snap.get('root'))}</code>"),
        ("Measured RPO", _e(rpo_text)),
        ("Measured RTO", _e(f"{_dur(rto.get('measured_s'))} (write {_dur(rto.get('restore_s'))}, "
                            f"verify {_dur(rto.get('verify_s'))})")),
        ("Restored image", _e(f"root verified: {'yes' if restore.get('verified') else 'NO'}; "
                              f"{restore.get('blocks_written')} blocks, {restore.get('bytes_written')} bytes "
                              f"written; {'kept at ' + str(restore.get('image')) if restore.get('kept') else 'deleted after the checks'}")),
        ("File-system check", _check_text(fsck, "checked")),
        ("Application check", _check_text(app, "configured")),
        ("Run by", _e(f"token {who.get('token')} (role {who.get('role')})")),
        ("Started / finished (UTC)", _e(f"{report.get('started_at')} / {report.get('finished_at')}")),
        ("Site / cluster", _e(f"{report.get('site_id')} / {report.get('cluster_id')}")),
    ])
    fsck_rows = _rows([("Result", _check_text(fsck, "checked")), ("Tool", _e(fsck.get("tool"))),
                       ("Exit code", _e(fsck.get("returncode")))])
    fsck_out = f"<pre>{_e(fsck.get('output_tail'))}</pre>" if fsck.get("output_tail") else ""
    app_rows = _rows([("Result", _check_text(app, "configured")),
                      ("Command", f"<code>{_e(' '.join(map(str, app.get('command') or [])) or None)}</code>"),
                      ("Exit code", _e(app.get("returncode"))), ("Seconds", _e(app.get("seconds"))),
                      ("Timed out", _e(app.get("timed_out")))])
    app_out = f"<pre>{_e(app.get('output_tail'))}</pre>" if app.get("output_tail") else ""
    if signature_b64 is None:
        sig_block = ('<p class="bad">UNSIGNED: this site runs without identity (identity.unsafe_unsigned); '
                     'this report is not evidence.</p><code id="replicad-signature"></code>')
    else:
        sig_block = (f"<p>Ed25519 signature by the key of site {_e(report.get('site_id'))} "
                     f"(<code>{_e(report.get('public_key'))}</code>) over the bytes "
                     f"<code>replicad-drill-report-v1\\0</code> followed by the signed data below. Check it with "
                     f"<code>replicad drill verify FILE --config SITE.toml</code> (the key the cluster pins).</p>"
                     f'<p>Signature: <code id="replicad-signature">{_e(signature_b64)}</code></p>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>replicad drill report: {_e(report.get('volume'))} #{_e(snap.get('seq'))} "
        f"{_e(report.get('started_at'))}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>Recovery drill report: {_e(report.get('volume'))}</h1>\n"
        f"<table id=\"summary\">\n{summary}</table>\n"
        f"<h2>File-system check</h2>\n<table>\n{fsck_rows}</table>\n{fsck_out}\n"
        f"<h2>Application check</h2>\n<table>\n{app_rows}</table>\n{app_out}\n"
        f"<h2>Signature</h2>\n{sig_block}\n"
        "<h2>Signed data</h2>\n<p>The canonical JSON the signature covers (every figure above is rendered "
        "from it):</p>\n"
        f'<pre id="replicad-signed-report">{html.escape(canonical, quote=True)}</pre>\n'
        "</body></html>\n")


def read_html(text: str) -> tuple[dict, str | None]:
    """``(report, signature or None)`` taken out of a drill report file's text.

    Raises:
        UsageError: not a replicad drill report (no signed data block, not JSON, wrong kind).
    """
    data, sig = _DATA_RE.search(text), _SIG_RE.search(text)
    if data is None or sig is None:
        raise UsageError("not a replicad drill report (no signed data block)")
    try:
        report = json.loads(html.unescape(data.group(1)))
    except ValueError as err:
        raise UsageError(f"the report's signed data is not JSON: {err}") from None
    if not isinstance(report, dict) or report.get("kind") != REPORT_KIND:
        raise UsageError("not a replicad drill report (kind)")
    if report.get("v") != REPORT_VERSION:
        raise UsageError(f"drill report version {report.get('v')!r} is not known to this replicad",
                         known=[REPORT_VERSION])
    signature = html.unescape(sig.group(1)).strip() or None
    return report, signature


def verify_html(text: str, pinned: Mapping[str, Any], cluster_id: str | None = None) -> dict:
    """Check a drill report file's text against the pinned keys; the report if it holds.

    Args:
        text: the whole file, decoded as UTF-8.
        pinned: ``{site_id: [raw 32-byte public keys]}`` (the ``[[sites]] public_key`` pins).
        cluster_id: if given, the report must name this cluster.

    Raises:
        UsageError: not a drill report.
        IntegrityError: unsigned, signed by a key not pinned for the site it names (or a site
            not pinned at all), another cluster, or the file differs from the rendering of
            its signed data (an edit); evidence says which (``reason``).
    """
    report, signature = read_html(text)
    site = report.get("site_id")
    if signature is None:
        raise IntegrityError("the drill report is unsigned (its site ran without identity)", reason="unsigned",
                             site=site)
    if cluster_id is not None and report.get("cluster_id") != cluster_id:
        raise IntegrityError(f"the drill report is of cluster {report.get('cluster_id')!r}, not {cluster_id!r}",
                             reason="other_cluster", report_cluster=report.get("cluster_id"), cluster=cluster_id)
    keys = list(pinned.get(site) or ()) if isinstance(site, str) else []
    if not keys:
        raise IntegrityError(f"no key is pinned for site {site!r}, which the report names", reason="no_pinned_key",
                             site=site)
    if not signature_ok(report, signature, keys):
        raise IntegrityError(f"the drill report's signature does not verify under the key(s) pinned for {site}",
                             reason="bad_signature", site=site)
    if render_html(report, signature) != text:
        raise IntegrityError("the drill report file was edited: it is not the rendering of its signed data",
                             reason="edited", site=site)
    return report
