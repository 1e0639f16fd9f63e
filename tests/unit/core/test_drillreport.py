"""Drill reports (issue 16, item 5): canonical bytes, Ed25519 signature by the site key, the
self-contained HTML rendering and its verification (any edit of the file is refused)."""

from __future__ import annotations

import pytest

from replicad.core import drillreport, identity
from replicad.core.errors import IntegrityError, UsageError


def _report(**over) -> dict:
    rep = {"v": 1, "kind": drillreport.REPORT_KIND, "cluster_id": "lab-1", "site_id": "site-b",
           "public_key": "ed25519:x", "volume": "ehr",
           "snapshot": {"seq": 7, "root": "ab" * 32, "epoch": 2, "verdict": "clean",
                        "created_at": "2026-01-01T00:00:00+00:00"},
           "rpo": {"measured_s": 12.5, "target_s": 1800.0, "within_target": True},
           "rto": {"measured_s": 1.25, "restore_s": 1.0, "verify_s": 0.25},
           "restore": {"verified": True, "blocks_written": 10, "bytes_written": 655360, "image": "/s/x.img",
                       "kept": False},
           "fsck": {"checked": True, "ok": True, "tool": "e2fsck -fn", "returncode": 0,
                    "output_tail": "clean <b>", "reason": None},
           "application_check": {"configured": False, "ok": False, "command": [], "returncode": None,
                                 "seconds": None, "timed_out": False, "output_tail": "",
                                 "reason": "no [volumes.drill] check configured"},
           "ran_by": {"token": "otto", "role": "operator"}, "started_at": "2026-01-01T00:00:12+00:00",
           "finished_at": "2026-01-01T00:00:14+00:00", "outcome": "passed"}
    rep.update(over)
    return rep


@pytest.fixture
def key():
    return identity.generate_private_key()


def _pinned(key) -> dict:
    return {"site-b": [identity.public_key_raw(key)]}


def test_signed_report_verifies_and_renders_every_figure(key) -> None:
    rep = _report()
    text = drillreport.render_html(rep, drillreport.sign_report(key, rep))
    assert drillreport.verify_html(text, _pinned(key), "lab-1") == rep
    assert drillreport.render_html(rep, drillreport.sign_report(key, rep)) == text  # deterministic
    for shown in ("ehr", "#7", "PASSED", "12.50 s", "1.25 s", "e2fsck", "not checked", "token otto", "site-b"):
        assert shown in text
    assert "clean &lt;b&gt;" in text and "<b>" not in text.split("<pre id=\"replicad-signed-report\">")[0]


def test_an_edited_figure_or_data_or_another_key_is_refused(key) -> None:
    rep = _report()
    text = drillreport.render_html(rep, drillreport.sign_report(key, rep))
    with pytest.raises(IntegrityError) as err:  # a visible figure changed, the signed data not
        drillreport.verify_html(text.replace("FAILED", "PASSED").replace("12.50 s", "2.50 s"), _pinned(key))
    assert err.value.evidence["reason"] == "edited"
    forged = text.replace("&quot;measured_s&quot;:12.5", "&quot;measured_s&quot;:2.5")
    assert forged != text
    with pytest.raises(IntegrityError) as err:
        drillreport.verify_html(forged, _pinned(key))
    assert err.value.evidence["reason"] == "bad_signature"
    other = identity.generate_private_key()
    with pytest.raises(IntegrityError) as err:
        drillreport.verify_html(text, {"site-b": [identity.public_key_raw(other)]})
    assert err.value.evidence["reason"] == "bad_signature"
    with pytest.raises(IntegrityError) as err:
        drillreport.verify_html(text, {"site-a": [identity.public_key_raw(key)]})
    assert err.value.evidence["reason"] == "no_pinned_key"
    with pytest.raises(IntegrityError) as err:
        drillreport.verify_html(text, _pinned(key), "another-cluster")
    assert err.value.evidence["reason"] == "other_cluster"


def test_unsigned_and_foreign_files() -> None:
    rep = _report(public_key=None)
    text = drillreport.render_html(rep, None)
    assert "UNSIGNED" in text
    with pytest.raises(IntegrityError) as err:
        drillreport.verify_html(text, {"site-b": [b"\0" * 32]})
    assert err.value.evidence["reason"] == "unsigned"
    with pytest.raises(UsageError):
        drillreport.read_html("<html><body>hello</body></html>")
    with pytest.raises(UsageError):
        drillreport.canonical_report_bytes({"x": b"bytes"})


def test_markup_in_any_value_is_escaped(key) -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    rep = _report(volume=evil, ran_by={"token": evil, "role": "operator"},
                  fsck={"checked": False, "ok": False, "tool": None, "returncode": None, "output_tail": evil,
                        "reason": evil})
    text = drillreport.render_html(rep, drillreport.sign_report(key, rep))
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert drillreport.verify_html(text, _pinned(key))["volume"] == evil
