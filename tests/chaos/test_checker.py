"""The chaos checker must fail: hand-made histories with one broken invariant each (and a
tampered restored image) are reported; a clean history is not. Pure and fast: no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.checker import Topology, check
from chaos.workload import block_bytes, expected_image, parse_block

BS = 4096
N = 4
VOL = "ehr"


def good_history(tmp_path: Path) -> list[dict]:
    """Two committed snapshots at site-a, held by a and b, restored at both, converged."""
    img1, img2 = [1, 1, 1, 1], [1, 2, 1, 3]
    ev: list[dict] = [
        {"t": 0.0, "type": "info", "op": "setup", "volume": VOL, "n_blocks": N, "block_size": BS,
         "sites": {"site-a": "data", "site-b": "data", "site-c": "witness"}},
        {"t": 1.0, "type": "ok", "op": "write", "site": "site-a", "blocks": [0, 1, 2, 3], "gens": [1, 1, 1, 1],
         "image": img1},
        {"t": 1.1, "type": "invoke", "op": "snapshot", "site": "site-a", "image": img1},
        {"t": 1.2, "type": "ok", "op": "snapshot", "site": "site-a", "image": img1, "seq": 1, "committed": True},
        {"t": 1.3, "type": "ok", "op": "write", "site": "site-a", "blocks": [1, 3], "gens": [2, 3], "image": img2},
        {"t": 1.4, "type": "invoke", "op": "snapshot", "site": "site-a", "image": img2},
        {"t": 1.5, "type": "ok", "op": "snapshot", "site": "site-a", "image": img2, "seq": 2, "committed": True},
        {"t": 1.6, "type": "info", "op": "status", "site": "site-a", "leader": "x", "epoch": 1, "role": "primary",
         "acting_epoch": 1, "newest_committed": 2},
        {"t": 1.6, "type": "info", "op": "status", "site": "site-b", "leader": "x", "epoch": 1, "role": "replica",
         "acting_epoch": None, "newest_committed": 2},
        {"t": 2.0, "type": "ok", "op": "converge", "elapsed_s": 1.0, "bound_s": 90},
        {"t": 2.5, "type": "info", "op": "rpo", "site": "site-a", "rpo_s": 1.0, "target_s": 30},
    ]
    cat = {"1": {"root": "r1", "epoch": 1, "holders": ["site-a", "site-b"]},
           "2": {"root": "r2", "epoch": 1, "holders": ["site-a", "site-b"]}}
    for site in ("site-a", "site-b", "site-c"):
        ev.append({"t": 2.1, "type": "info", "op": "catalog", "site": site, "final": True, "epoch": 1,
                   "primary": "site-a", "snapshots": cat, "divergent": []})
    t = 3.0
    for seq, img in ((1, img1), (2, img2)):
        for site in ("site-a", "site-b"):
            target = tmp_path / f"{site}-{seq}.img"
            target.write_bytes(expected_image(VOL, img, BS))
            ev.append({"t": t, "type": "ok", "op": "restore", "site": site, "seq": seq, "target": str(target)})
            t += 0.1
    for site in ("site-a", "site-b"):
        path = tmp_path / f"{site}.img"
        path.write_bytes(expected_image(VOL, img2, BS))
        ev.append({"t": t, "type": "info", "op": "final_image", "site": site, "seq": 2, "path": str(path),
                   "role": "replica"})
    return ev


def invariants(ev: list[dict]) -> set[str]:
    return {v.invariant for v in check(ev)}


def test_block_format_roundtrip_and_tamper() -> None:
    b = block_bytes(VOL, 7, 3, BS)
    assert len(b) == BS and parse_block(b, VOL, 7) == 3
    assert parse_block(bytes(BS), VOL, 7) == 0
    assert parse_block(b, VOL, 8) is None  # a block at the wrong place
    flipped = bytearray(b)
    flipped[BS // 2] ^= 1
    assert parse_block(bytes(flipped), VOL, 7) is None


def test_clean_history_passes(tmp_path: Path) -> None:
    assert check(good_history(tmp_path)) == []


def test_tampered_restored_image_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    target = Path(next(e["target"] for e in ev if e["op"] == "restore" and e["site"] == "site-b" and e["seq"] == 2))
    data = bytearray(target.read_bytes())
    data[BS + 100] ^= 0xFF
    target.write_bytes(bytes(data))
    vs = [v for v in check(ev) if v.invariant == "restorable"]
    assert any("#2" in v.detail and "site-b" in v.detail for v in vs)
    assert any("different bytes" in v.detail for v in vs)


def test_old_generation_restored_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    target = Path(next(e["target"] for e in ev if e["op"] == "restore" and e["site"] == "site-a" and e["seq"] == 2))
    target.write_bytes(expected_image(VOL, [1, 1, 1, 1], BS))  # rolled back to #1's content
    assert "restorable" in invariants(ev)


def test_failed_or_missing_restore_is_reported(tmp_path: Path) -> None:
    ev = [e for e in good_history(tmp_path) if not (e["op"] == "restore" and e["seq"] == 1 and e["site"] == "site-b")]
    assert "restorable" in invariants(ev)


def test_two_primaries_in_one_epoch_are_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev.append({"t": 1.7, "type": "info", "op": "status", "site": "site-b", "leader": "x", "epoch": 1,
               "role": "primary", "acting_epoch": 1, "newest_committed": 2})
    assert "one_primary_per_epoch" in invariants(ev)


def test_epoch_rollback_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev.append({"t": 1.65, "type": "info", "op": "status", "site": "site-a", "leader": "x", "epoch": 2,
               "role": "replica", "acting_epoch": None, "newest_committed": 2})
    assert "epoch_monotonic" not in invariants(ev)  # 1 -> 2 is forward
    ev.append({"t": 1.7, "type": "info", "op": "status", "site": "site-a", "leader": "x", "epoch": 1,
               "role": "replica", "acting_epoch": None, "newest_committed": 1})
    assert any(v.invariant == "epoch_monotonic" and "from 2 to 1" in v.detail for v in check(ev))


def test_a_view_that_says_it_is_not_current_may_lag(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev.append({"t": 1.65, "type": "info", "op": "status", "site": "site-a", "leader": "x", "current": True,
               "epoch": 2, "role": "replica", "acting_epoch": None, "newest_committed": 2})
    ev.append({"t": 1.7, "type": "info", "op": "status", "site": "site-a", "leader": "x", "current": False,
               "epoch": 2, "role": "replica", "acting_epoch": None, "newest_committed": 1})  # replaying its log
    assert "epoch_monotonic" not in invariants(ev)
    ev.append({"t": 1.75, "type": "info", "op": "status", "site": "site-a", "leader": "x", "current": True,
               "epoch": 2, "role": "replica", "acting_epoch": None, "newest_committed": 1})  # says current: held to it
    assert any(v.invariant == "epoch_monotonic" and "from 2 to 1" in v.detail for v in check(ev))


def test_promotion_in_a_minority_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev += [{"t": 1.70, "type": "ok", "op": "nemesis", "f": "isolate", "site": "site-b"},
           {"t": 1.71, "type": "invoke", "op": "promote", "site": "site-b"},
           {"t": 1.72, "type": "ok", "op": "promote", "site": "site-b", "primary": "site-b", "epoch": 2},
           {"t": 1.73, "type": "ok", "op": "nemesis", "f": "heal", "site": "site-b"}]
    assert "promotion_needs_majority" in invariants(ev)
    topo = Topology(["a", "b", "c"])
    topo.apply({"f": "blackhole", "site": "a", "peer": "b"})
    # one-way cut a->b: a and b still meet through c (a component, as Raft relays through a leader)
    assert topo.in_majority("a") and topo.component("b") == {"a", "b", "c"}
    topo.apply({"f": "pause", "site": "c"})
    assert not topo.in_majority("a")


def test_commit_by_fenced_primary_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev += [{"t": 1.70, "type": "ok", "op": "promote", "site": "site-b", "primary": "site-b", "epoch": 2},
           {"t": 1.71, "type": "invoke", "op": "snapshot", "site": "site-a", "image": [1, 2, 1, 3]},
           {"t": 1.72, "type": "ok", "op": "snapshot", "site": "site-a", "image": [1, 2, 1, 3], "seq": 3,
            "committed": True}]
    assert "fenced_produces_nothing" in invariants(ev)


def test_epoch_going_down_along_the_catalog_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    for e in ev:
        if e["op"] == "catalog":
            e["snapshots"] = {"1": dict(e["snapshots"]["1"], epoch=2), "2": e["snapshots"]["2"]}
    assert "fenced_produces_nothing" in invariants(ev)


def test_lost_committed_snapshot_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev.append({"t": 1.8, "type": "info", "op": "catalog", "site": "site-a", "epoch": 1,
               "snapshots": {"3": {"root": "r3", "epoch": 1, "holders": ["site-a", "site-b"]}}})
    vs = [v for v in check(ev) if v.invariant == "no_committed_loss"]
    assert vs and "#3" in vs[0].detail


def test_stale_primary_from_the_log_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev += [{"t": 1.70, "type": "ok", "op": "promote", "site": "site-b", "primary": "site-b", "epoch": 2},
           {"t": 9.0, "type": "info", "op": "acted_primary", "site": "site-a", "epoch": 1, "log_t": 1.9}]
    assert "no_stale_primary" in invariants(ev)


@pytest.mark.parametrize("bad", [
    {"t": 2.0, "type": "fail", "op": "converge", "elapsed_s": 90, "bound_s": 90, "reason": "standby behind"},
    {"t": 2.5, "type": "info", "op": "rpo", "site": "site-a", "rpo_s": 99.0, "target_s": 30},
    {"t": 2.5, "type": "info", "op": "expect", "name": "x", "passed": False, "detail": "y"},
])
def test_convergence_rpo_and_expectation_failures_are_reported(tmp_path: Path, bad: dict) -> None:
    ev = good_history(tmp_path) + [bad]
    assert {"converge": "converged", "rpo": "rpo", "expect": "expectation"}[bad["op"]] in invariants(ev)


def test_standby_image_not_at_newest_clean_is_reported(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    path = Path(next(e["path"] for e in ev if e["op"] == "final_image" and e["site"] == "site-b"))
    path.write_bytes(expected_image(VOL, [1, 1, 1, 1], BS))
    assert "converged" in invariants(ev)


def _faketime_start(t: float, site: str, offset: str | None) -> dict:
    return {"t": t, "type": "ok", "op": "nemesis", "f": "start", "site": site,
            "env": ["FAKETIME_TIMESTAMP_FILE", "LD_PRELOAD"], "clock_offset": offset}


def test_rpo_is_read_at_sites_with_a_true_clock(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev = [e for e in ev if e["op"] != "rpo"]
    ev += [_faketime_start(0.5, "site-a", "-50"),
           {"t": 1.0, "type": "ok", "op": "nemesis", "f": "kill", "site": "site-a"},
           {"t": 1.01, "type": "ok", "op": "nemesis", "f": "clock", "site": "site-a", "offset": "+45"},
           _faketime_start(1.02, "site-a", "+45"),
           {"t": 2.5, "type": "info", "op": "rpo", "site": "site-a", "rpo_s": 45.6, "target_s": 30, "primary": True},
           {"t": 2.5, "type": "info", "op": "rpo", "site": "site-b", "rpo_s": 0.6, "target_s": 30, "primary": False}]
    assert "rpo" not in invariants(ev)  # the stepped clock of site-a is not the RPO
    late = dict(ev[-1], rpo_s=31.0)
    assert any(v.invariant == "rpo" and "site-b" in v.detail for v in check(ev[:-1] + [late]))
    only_skewed = ev[:-1]
    assert any(v.invariant == "rpo" and "stepped clock" in v.detail for v in check(only_skewed))


def test_rpo_of_a_faketime_site_back_on_time_is_judged(tmp_path: Path) -> None:
    ev = [e for e in good_history(tmp_path) if e["op"] != "rpo"]
    ev += [_faketime_start(0.5, "site-a", "+45"),
           {"t": 1.0, "type": "ok", "op": "nemesis", "f": "clock", "site": "site-a", "offset": "+0"},
           {"t": 2.5, "type": "info", "op": "rpo", "site": "site-a", "rpo_s": 45.6, "target_s": 30}]
    assert "rpo" in invariants(ev)  # +0 is a true clock: its RPO counts
    ev = [e for e in ev if not (e["op"] == "nemesis" and e.get("f") == "clock")]
    assert all("stepped clock" in v.detail for v in check(ev) if v.invariant == "rpo")  # +45: not judged
    ev.append({"t": 1.5, "type": "ok", "op": "nemesis", "f": "start", "site": "site-a", "env": []})
    assert "rpo" in invariants(ev)  # restarted without faketime: a true clock again


def test_clock_offsets_parse() -> None:
    from chaos.checker import offset_s
    assert offset_s("+45") == 45 and offset_s("-2h") == -7200 and offset_s("+0") == 0
    assert offset_s("1.5m") == 90 and offset_s("garbage") is None and offset_s(None) is None


def test_pruned_snapshots_are_not_lost_but_others_are(tmp_path: Path) -> None:
    ev = good_history(tmp_path)
    ev.append({"t": 1.8, "type": "info", "op": "catalog", "site": "site-a", "epoch": 1,
               "snapshots": {"3": {"root": "r3", "epoch": 1, "holders": ["site-a", "site-b"]}}})
    ev.append({"t": 1.9, "type": "info", "op": "pruned", "site": "site-a", "volume": VOL, "seqs": [3]})
    assert "no_committed_loss" not in invariants(ev)
    ev[-1] = {"t": 1.9, "type": "ok", "op": "retention_run", "site": "site-a", "report": {"pruned": [4]}}
    assert "no_committed_loss" in invariants(ev)  # #3 was not what retention pruned


def crypt_history(tmp_path: Path) -> list[dict]:
    """good_history, except that the write behind #2 left block 3 at generation 3 as ciphertext
    (a ransomware overwrite): #2's restores and the final images hold that ciphertext."""
    ev = good_history(tmp_path)
    for e in ev:
        if e["op"] == "write" and e["gens"] == [2, 3]:
            e.update(blocks=[3], gens=[3], crypt=True)
            ev.insert(ev.index(e), {"t": 1.29, "type": "ok", "op": "write", "site": "site-a", "blocks": [1],
                                    "gens": [2], "image": [1, 2, 1, 1]})
            break
    crypt = {(3, 3)}
    for e in ev:
        if (e["op"] == "restore" and e["seq"] == 2) or e["op"] == "final_image":
            Path(e.get("target") or e["path"]).write_bytes(expected_image(VOL, [1, 2, 1, 3], BS, crypt))
    return ev


def test_ciphertext_generations_are_expected_as_ciphertext(tmp_path: Path) -> None:
    assert check(crypt_history(tmp_path)) == []


def test_ciphertext_restored_as_text_or_text_as_ciphertext_is_reported(tmp_path: Path) -> None:
    ev = crypt_history(tmp_path)
    target = Path(next(e["target"] for e in ev if e["op"] == "restore" and e["site"] == "site-b" and e["seq"] == 2))
    target.write_bytes(expected_image(VOL, [1, 2, 1, 3], BS))  # right generations, wrong kind of block 3
    vs = [v for v in check(ev) if v.invariant == "restorable"]
    assert any("#2" in v.detail and "site-b" in v.detail and "block [3]" in v.detail for v in vs), vs
    ev = crypt_history(tmp_path)
    target = Path(next(e["target"] for e in ev if e["op"] == "restore" and e["site"] == "site-a" and e["seq"] == 1))
    target.write_bytes(expected_image(VOL, [1, 1, 1, 1], BS, {(0, 1)}))  # block 0 was never encrypted
    assert "restorable" in invariants(ev)


def test_unattributed_snapshot_with_the_wrong_block_kind_is_reported(tmp_path: Path) -> None:
    ev = crypt_history(tmp_path)
    ev = [e for e in ev if not (e["op"] == "snapshot" and e.get("seq") == 2)]  # #2 taken by the daemon itself
    assert "restorable" not in invariants(ev)
    target = Path(next(e["target"] for e in ev if e["op"] == "restore" and e["site"] == "site-a" and e["seq"] == 2))
    target.write_bytes(expected_image(VOL, [1, 2, 1, 3], BS, {(1, 2), (3, 3)}))  # block 1 gen 2 was text
    assert any(v.invariant == "restorable" and "unattributed" in v.detail for v in check(ev))
