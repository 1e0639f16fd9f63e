"""A site's own verdicts survive a cluster reset (every site lost its Raft state): the evidence
files are set aside per previous incarnation, where the new cluster's restarting seqs cannot
overwrite them, and ``readopt`` finds a record's verdict by its manifest root."""

from __future__ import annotations

import types
from pathlib import Path

from replicad.site.detection import Detection

OLD = bytes.fromhex("0a" * 16)


def _detection(tmp_path: Path) -> Detection:
    cluster = types.SimpleNamespace(site_id="site-a")  # the two methods under test touch only the evidence dir
    return Detection(cluster, None, None, tmp_path, lambda volume: {}, None)


def _doc(root: bytes, verdict: str, seq: int) -> dict:
    return {"site": "site-a", "volume": "ehr", "seq": seq, "root": root.hex(), "verdict": verdict, "score": 0.4,
            "reasons": ["72 of 80 changed blocks look encrypted"] if verdict == "suspect" else []}


def test_verdicts_are_set_aside_per_incarnation_and_found_by_root(tmp_path: Path) -> None:
    d = _detection(tmp_path)
    r1, r2, r3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    d._write("ehr", 3, _doc(r1, "suspect", 3))
    d._write("ehr", 4, _doc(r2, "clean", 4))
    d._write("pacs", 3, _doc(r3, "clean", 3))
    assert d.set_aside(OLD) == 2
    assert not (tmp_path / "detection" / "ehr").exists()
    assert d.judged_before("ehr", OLD, r1)["verdict"] == "suspect"
    assert d.judged_before("ehr", OLD, r2)["verdict"] == "clean"
    assert d.judged_before("ehr", OLD, r3) is None  # another volume's snapshot
    assert d.judged_before("pacs", OLD, r3)["verdict"] == "clean"
    assert d.judged_before("ehr", b"\x0b" * 16, r1) is None  # another incarnation

    # the new cluster's seq 3 is another snapshot: it never replaces the old verdict
    r4 = b"\x04" * 32
    d._write("ehr", 3, _doc(r4, "clean", 3))
    assert d.judged_before("ehr", OLD, r1)["verdict"] == "suspect"
    assert d.set_aside(OLD) == 1  # a second reset from the same incarnation keeps both sets
    assert d.judged_before("ehr", OLD, r1)["verdict"] == "suspect"
    assert d.judged_before("ehr", OLD, r4)["verdict"] == "clean"


def test_the_unrecorded_incarnation_and_damaged_files(tmp_path: Path) -> None:
    d = _detection(tmp_path)
    assert d.set_aside(b"") == 0  # nothing judged yet
    r1 = b"\x01" * 32
    d._write("ehr", 1, _doc(r1, "clean", 1))
    (tmp_path / "detection" / "ehr" / "2.json").write_text("{not json")
    assert d.set_aside(b"") == 1
    assert (tmp_path / "detection" / "previous" / "legacy" / "ehr" / "1.json").exists()
    assert d.judged_before("ehr", b"", r1)["verdict"] == "clean"  # the damaged file is skipped, not fatal
