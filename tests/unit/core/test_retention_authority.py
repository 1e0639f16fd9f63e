"""Who may change a volume's retention and register a volume (threat model: one site's key).

One site's signed ``set_retention`` with ``lock_s`` and ``keep_all_s`` at 2**62 and the thinning
windows at 0 applied at once: deletion frozen at every site, and the honest sites' undo a
weakening that site could veto. One site's ``add_volume`` could name another site primary of a
name nobody had registered yet. These tests run the pure state machine with signed commands and a
cooling-off policy (:class:`replicad.core.identity.Trust`), as every site does."""

from __future__ import annotations

import copy
import itertools

import pytest

from replicad.config import MAX_RETENTION_S, RetentionConfig
from replicad.core import errors, identity
from replicad.core.identity import Signer, Trust
from replicad.core.state import (DEFAULT_RETENTION, RETENTION_MAX_S, RULES_MAX, apply, initial_state, list_requests,
                                 retention_weakened)

S = 1_000_000_000
NOW = 1_700_000_000 * S
CLUSTER = "test-cluster"
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
SIGNERS = {s: Signer(s, KEYS[s], CLUSTER) for s in SITES}
COOLING = Trust(cluster_id=CLUSTER, keys={s: (identity.public_key_raw(KEYS[s]),) for s in SITES},
                cooling_off_ns=3600 * S)
RETENTION = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}
FOREVER = {"keep_all_s": 2**62, "hourly_s": 0, "daily_s": 0, "lock_s": 2**62}  # the reviewer's attack
_ids = itertools.count()


def cmd(op: str, by: str = "a", now_ns: int = NOW, **args) -> dict:
    return SIGNERS[by].sign({"v": 1, "op": op, "op_id": f"op-{next(_ids)}", "by": by, "now_ns": now_ns, **args})


def run(state: dict, command: dict) -> tuple[dict, dict]:
    before = copy.deepcopy(state)
    new, result = apply(state, command, COOLING)
    assert state == before, "apply must never mutate its input"
    assert apply(copy.deepcopy(state), copy.deepcopy(command), COOLING) == (new, result), "deterministic"
    return new, result


def ok(state: dict, command: dict) -> tuple[dict, dict]:
    new, result = run(state, command)
    assert result["ok"] is True, result
    return new, result


def refused(state: dict, command: dict, code: str) -> dict:
    new, result = run(state, command)
    assert result["ok"] is False and result["error"] == code, result
    assert errors.from_dict(result).code == code
    assert new["volumes"] == state["volumes"] and new.get("requests") == state.get("requests")
    return result


def vol_args(name: str = "vol", primary: str = "a", retention: dict | None = None, **over) -> dict:
    return {"volume": name, "primary": primary, "block_size": 65536, "size_bytes": 0, "min_copies": 2,
            "retention": dict(RETENTION if retention is None else retention), **over}


@pytest.fixture
def cluster() -> dict:
    state = initial_state(members=SITES, rules=RULES_MAX)
    for s in SITES:
        state, _ = ok(state, cmd("register_site", by=s, site_id=s, peer_url=f"https://{s}:7443", kind="data"))
    members = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
                "keys": [identity.format_public_key(identity.public_key_raw(KEYS[s]))]} for i, s in enumerate(SITES)]
    for s in SITES[:2]:  # founded: no request before the membership is agreed
        state, _ = ok(state, cmd("found", by=s, incarnation=s.encode() * 16, members=members))
    state, _ = ok(state, cmd("add_volume", by="a", **vol_args()))
    for s in SITES:
        state, _ = ok(state, cmd("clock", by=s))
    return state


def retention(state: dict) -> dict:
    return state["volumes"]["vol"]["retention"]


def test_every_shorter_key_is_a_weakening() -> None:
    """plan_prune keeps more the longer each key is: shorter hourly/daily windows (0 included) thin
    away snapshots the longer ones kept, so they weaken like a shorter keep_all or lock."""
    assert retention_weakened(RETENTION, RETENTION) == []
    assert retention_weakened(RETENTION, {**RETENTION, "lock_s": 10**6, "daily_s": 10**7}) == []
    assert retention_weakened(RETENTION, FOREVER) == ["daily_s", "hourly_s"]
    assert retention_weakened(RETENTION, {k: 0 for k in RETENTION}) == sorted(RETENTION)


def test_one_site_cannot_lengthen_retention_alone(cluster: dict) -> None:
    longer = {**RETENTION, "lock_s": 30 * 86400, "keep_all_s": 2 * 86400}
    res = refused(cluster, cmd("set_retention", by="c", volume="vol", retention=longer), "approval_required")
    assert res["evidence"]["lengthened"] == ["keep_all_s", "lock_s"] and res["evidence"]["by"] == "c"
    state, res = ok(cluster, cmd("request", by="c", action="set_retention", args={"volume": "vol", "retention": longer}))
    assert res["status"] == "pending" and retention(state) == RETENTION
    # a second site's approval applies it at once: a tightening waits for no cooling-off
    state, res = ok(state, cmd("approve", by="b", request=res["request"]))
    assert res["status"] == "applied" and retention(state) == longer, res
    assert list_requests(state)[0]["previous"] == RETENTION
    _, res = ok(state, cmd("set_retention", by="c", volume="vol", retention=longer))
    assert res["changed"] is False


def test_shorter_thinning_windows_cool_off(cluster: dict) -> None:
    """hourly_s / daily_s at 0 with a longer lock: a weakening (approvals and the cooling-off)."""
    mixed = {**RETENTION, "lock_s": 7200, "hourly_s": 0, "daily_s": 0}
    res = refused(cluster, cmd("set_retention", by="c", volume="vol", retention=mixed), "approval_required")
    assert res["evidence"]["shortened"] == ["daily_s", "hourly_s"]
    state, res = ok(cluster, cmd("request", by="c", action="set_retention", args={"volume": "vol", "retention": mixed}))
    state, res = ok(state, cmd("approve", by="b", request=res["request"]))
    assert res["status"] == "approved" and res["effective_ns"] == NOW + COOLING.cooling_off_ns
    assert retention(state) == RETENTION
    state, res = ok(state, cmd("veto", by="a", request=res["request"]))  # an honest site stops it in time
    assert res["status"] == "vetoed" and retention(state) == RETENTION


def test_a_duration_above_ten_years_is_refused_everywhere(cluster: dict) -> None:
    """The reviewer's 2**62 s lock: refused as bad_request as a command, a request, a registration."""
    assert RETENTION_MAX_S == MAX_RETENTION_S == 10 * 366 * 86400
    for bad in (FOREVER, {**RETENTION, "daily_s": RETENTION_MAX_S + 1}):
        res = refused(cluster, cmd("set_retention", by="c", volume="vol", retention=bad), "bad_request")
        assert res["evidence"]["max_s"] == RETENTION_MAX_S
        refused(cluster, cmd("request", by="c", action="set_retention", args={"volume": "vol", "retention": bad}),
                "bad_request")
        refused(cluster, cmd("add_volume", by="c", **vol_args("v2", "c", bad)), "bad_request")
    at_most = {**RETENTION, "daily_s": RETENTION_MAX_S}
    state, res = ok(cluster, cmd("request", by="c", action="set_retention", args={"volume": "vol", "retention": at_most}))
    state, res = ok(state, cmd("approve", by="a", request=res["request"]))
    assert retention(state) == at_most


def test_a_site_registers_a_volume_only_as_its_own_primary(cluster: dict) -> None:
    """Squatting: c registered a name nobody had registered, with a as primary, min_copies 1 and
    zero retention; a's daemon then found it and compared nothing."""
    res = refused(cluster, cmd("add_volume", by="c", **vol_args("pacs", "a", {k: 0 for k in RETENTION},
                                                                 min_copies=1)), "not_self")
    assert res["evidence"] == {"by": "c", "primary": "a", "volume": "pacs", "op": "add_volume"}
    # in its own name it can: the registration records who signed it (every daemon compares it)
    state, res = ok(cluster, cmd("add_volume", by="c", **vol_args("pacs", "c", min_copies=1)))
    assert res["created"] and state["volumes"]["pacs"]["registered_by"] == "c"
    assert cluster["volumes"]["vol"]["registered_by"] == "a"
    # the honest primary's own add_volume of that name then changes nothing
    same, res = ok(state, cmd("add_volume", by="a", **vol_args("pacs", "a")))
    assert res["created"] is False and same["volumes"]["pacs"] == state["volumes"]["pacs"]
    refused(state, cmd("add_volume", by="a", **vol_args("pacs", "a", block_size=4096)), "conflict")
    refused(cluster, cmd("add_volume", by="c", **vol_args("v3", "c", min_copies=65)), "out_of_range")


def test_a_volume_starts_with_at_most_the_default_retention(cluster: dict) -> None:
    """A longer initial retention would keep every site's copies longer on one site's word: the
    registering daemon registers each key at most at the default and requests the rest."""
    assert DEFAULT_RETENTION == {k: int(getattr(RetentionConfig(), k)) for k in DEFAULT_RETENTION}
    longer = {**DEFAULT_RETENTION, "lock_s": DEFAULT_RETENTION["lock_s"] + 1}
    res = refused(cluster, cmd("add_volume", by="c", **vol_args("v2", "c", longer)), "approval_required")
    assert res["evidence"]["lengthened"] == ["lock_s"]
    ok(cluster, cmd("add_volume", by="c", **vol_args("v2", "c", DEFAULT_RETENTION)))
    ok(cluster, cmd("add_volume", by="c", **vol_args("v2", "c", {k: 0 for k in RETENTION})))
