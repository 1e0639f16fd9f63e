"""The snapshot-source metrics read from the status at scrape time: the one-hot tracking state
and the reflink counters (lost by reason, verifier runs and mismatches)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.telemetry.test_metrics import make, samples, site_status, value


def test_source_tracking_state_is_one_hot_and_counters_follow_the_status(tmp_path: Path) -> None:
    st = site_status()
    smp = samples(make(tmp_path, st))
    vol = {"site": "site-b", "volume": "ehr"}
    for state in ("idle", "tracking", "lost", "rescan", "untracked"):
        assert value(smp, "replicad_source_tracking", **vol, kind="reflink", state=state) == (state == "lost")
    assert value(smp, "replicad_source_lost_total", **vol, reason="no_parent_clone") == 1
    assert value(smp, "replicad_source_verify_runs_total", **vol) == 2
    assert value(smp, "replicad_source_verify_mismatches_total", **vol) == 1


def test_file_source_exports_its_state_and_zero_verifier_counters(tmp_path: Path) -> None:
    """A file volume is its own full scan: its verifier counters read 0 (so the mismatch alert
    has a series at every site), and it has no lost-tracking reasons."""
    st = site_status()
    st["volumes"]["ehr"]["source"] = {"kind": "file", "state": "untracked"}
    smp = samples(make(tmp_path, st))
    vol = {"site": "site-b", "volume": "ehr"}
    assert value(smp, "replicad_source_tracking", **vol, kind="file", state="untracked") == 1
    assert value(smp, "replicad_source_tracking", **vol, kind="file", state="lost") == 0
    assert value(smp, "replicad_source_verify_mismatches_total", **vol) == 0
    assert value(smp, "replicad_source_verify_runs_total", **vol) == 0
    assert not any(name == "replicad_source_lost_total" for name, _ in smp)


def test_qemu_source_exports_its_lost_reasons_and_verifier(tmp_path: Path) -> None:
    st = site_status()
    st["volumes"]["ehr"]["source"] = {"kind": "qemu", "state": "tracking",
                                      "lost_total": {"bitmap_inconsistent": 2, "daemon_restarted": 1},
                                      "verify": {"runs": 3, "mismatches": 0}}
    smp = samples(make(tmp_path, st))
    vol = {"site": "site-b", "volume": "ehr"}
    assert value(smp, "replicad_source_tracking", **vol, kind="qemu", state="tracking") == 1
    assert value(smp, "replicad_source_lost_total", **vol, reason="bitmap_inconsistent") == 2
    assert value(smp, "replicad_source_lost_total", **vol, reason="daemon_restarted") == 1
    assert value(smp, "replicad_source_verify_runs_total", **vol) == 3
