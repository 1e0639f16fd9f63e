"""A request whose effect is in force already is shown as moot in ``replicad requests`` (display
only: the request stays as it is and may still be approved, vetoed or expire). Two operators who
ask for the same revocation at the same moment at two sites each get a request recorded; once
one applies, the other stayed "pending" and looked like a revocation still to decide (and
``ReplicadMembershipRequestOpen`` a reason to act). The states here come from the real state
machine (signed commands applied as every site applies them); the requests are read as the admin
API builds them (``with_previous``, ``with_changes``, ``with_moot``) and printed by the real CLI."""

from __future__ import annotations

import json

from replicad.core.requestdiff import moot_reason, with_changes, with_moot
from replicad.core.state import DEFAULT_RETENTION, list_requests
from replicad.ops.admin import with_previous
from tests.unit.consensus.test_depose import MEMBERS, apply, founded, signed
from tests.unit.ops.test_cli import admin_stub, run_env  # noqa: F401 (the fixture)

RETENTION = dict(DEFAULT_RETENTION)


def cluster():
    """A founded three-site state (sites a, b, c, each registered; a is ehr's primary)."""
    consumer = founded()
    for s in ("a", "b", "c"):
        assert apply(consumer, signed(s, "register_site", site_id=s, peer_url=f"https://{s}", kind="data"))["ok"]
    assert apply(consumer, signed("a", "add_volume", volume="ehr", primary="a", block_size=65536, size_bytes=2**20,
                                  min_copies=1, retention=RETENTION))["ok"]
    return consumer


def past_cooling_off(consumer, request: str) -> None:
    """Every site reports a clock past ``request``'s cooling-off: it applies."""
    effective = next(r for r in list_requests(consumer.cluster) if r["id"] == request)["effective_ns"]
    for s in ("a", "b"):
        apply(consumer, signed(s, "clock", now_ns=effective + 10**9))
    assert next(r for r in list_requests(consumer.cluster) if r["id"] == request)["status"] == "applied"


def shown(consumer) -> list[dict]:
    view = consumer.cluster
    return with_moot(with_changes(with_previous(list_requests(view), view), view), view)


def test_a_revocation_asked_twice_at_once_is_moot_once_the_other_applied(admin_stub) -> None:  # noqa: F811
    c = cluster()
    keys = MEMBERS[2]["keys"]
    assert apply(c, signed("a", "request", action="revoke_site", args={"site_id": "c", "keys": keys},
                           reason="host compromised"))["request"] == "r1"
    assert apply(c, signed("b", "request", action="revoke_site", args={"site_id": "c", "keys": keys},
                           reason="me too"))["request"] == "r2"
    assert [r.get("moot") for r in shown(c)] == [None, None]  # both still to decide
    assert apply(c, signed("b", "approve", request="r1"))["status"] == "approved"
    assert [r.get("moot") for r in shown(c)] == [None, None]  # r1 cooling off: not in force yet
    past_cooling_off(c, "r1")
    requests = {r["id"]: r for r in shown(c)}
    assert requests["r2"]["status"] == "pending"
    assert requests["r2"]["moot"] == "site c is revoked already (1 key(s), by a request of a)"
    assert "moot" not in requests["r1"]  # applied: not waiting
    # a revocation naming a key not revoked yet (the site rebuilt with a new one) is not moot
    other = {**requests["r2"], "args": {"site_id": "c", "keys": [MEMBERS[0]["keys"][0]]}}
    assert moot_reason(other, c.cluster) is None

    url, answers = admin_stub
    answers["/v1/requests"] = (200, {"site_id": "site-a", "requests": json.loads(json.dumps(
        list(requests.values()), default=str))})
    res = run_env({}, "--admin", url, "requests")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0, res.stderr
    assert "r2 [pending] by b: revoke_site" in text, text
    assert "MOOT: site c is revoked already (1 key(s), by a request of a): applied, it would change nothing" in text
    assert "a MOOT request's effect is in force already" in text and text.count("MOOT:") == 1, text


def test_a_moot_revocation_is_not_an_open_request_for_the_alerts(tmp_path) -> None:
    """``replicad_requests_open`` (ReplicadMembershipRequestOpen, critical: "the window to stop
    it") counted the moot one too: it fired for a revocation that decides nothing."""
    from tests.unit.telemetry.test_metrics import samples, value
    from replicad.telemetry.metrics import SiteMetrics

    c = cluster()
    keys = MEMBERS[2]["keys"]
    for by in ("a", "b"):
        assert apply(c, signed(by, "request", action="revoke_site", args={"site_id": "c", "keys": keys},
                               reason="host compromised"))["ok"]

    def open_revocations() -> float:
        m = SiteMetrics("a", lambda: {"view": {"current": True}}, state_fn=lambda: c.cluster, data_dir=tmp_path)
        return value(samples(m), "replicad_requests_open", site="a", action="revoke_site")

    assert open_revocations() == 2
    apply(c, signed("b", "approve", request="r1"))
    assert open_revocations() == 2  # r1 cooling off, r2 pending: both still decide something
    past_cooling_off(c, "r1")
    assert open_revocations() == 0  # r1 applied, r2 moot


def test_a_retention_request_asking_what_is_in_force_is_moot_and_a_change_is_not() -> None:
    c = cluster()
    shorter = {**RETENTION, "hourly_s": 2 * 86400}
    assert apply(c, signed("a", "request", action="set_retention", args={"volume": "ehr", "retention": shorter},
                           reason="less disk"))["request"] == "r1"
    assert apply(c, signed("c", "request", action="set_retention", args={"volume": "ehr", "retention": RETENTION},
                           reason="as it is"))["request"] == "r2"  # what is in force already
    assert {r["id"]: r.get("moot") for r in shown(c)} == {
        "r1": None, "r2": "what it asks is in force already: nothing differs (4 key(s) as now)"}
    effective = apply(c, signed("c", "approve", request="r1"))["effective_ns"]
    for s in ("a", "b"):  # near the end of r1's cooling-off, site-b asks for the same change
        apply(c, signed(s, "clock", now_ns=effective - 60 * 10**9))
    assert apply(c, signed("b", "request", action="set_retention", args={"volume": "ehr", "retention": shorter},
                           reason="less disk", now_ns=effective - 60 * 10**9))["request"] == "r3"
    assert shown(c)[0]["id"] == "r3" and shown(c)[0].get("moot") is None  # r1 not in force yet
    past_cooling_off(c, "r1")
    moot = {r["id"]: (r["status"], r.get("moot")) for r in shown(c)}
    assert moot["r1"] == ("applied", None)
    assert moot["r3"] == ("pending", "what it asks is in force already: nothing differs (4 key(s) as now)")
    assert moot["r2"][1] is None  # it asks the old retention back: a change again (if still waiting)


def test_removed_volumes_pruned_snapshots_and_role_changes() -> None:
    view = {"volumes": {"ehr": {"primary": "a", "epoch": 2, "snapshots": {4: {"verdict": "clean"}}}}}

    def req(action: str, args: dict, status: str = "pending") -> dict:
        return {"id": "r9", "by": "a", "action": action, "args": args, "status": status}

    assert moot_reason(req("remove_volume", {"volume": "pacs"}), view) == "volume pacs is no longer in the cluster state"
    assert moot_reason(req("remove_volume", {"volume": "ehr"}), view) is None
    assert moot_reason(req("prune_snapshots", {"volume": "ehr", "seqs": [1, 2, 3, 5]}), view) == \
        "snapshots #1, #2, #3 and 1 more of ehr are no longer in the cluster state"
    assert moot_reason(req("prune_snapshots", {"volume": "ehr", "seqs": [3, 4]}), view) is None
    # a role change to the role in force still starts a new epoch (fencing): never called moot
    assert moot_reason(req("promote", {"volume": "ehr", "to": "a"}), view) is None
    assert moot_reason(req("remove_volume", {"volume": "pacs"}, "vetoed"), view) is None  # not waiting
    for hostile in ({}, {"volumes": None, "revoked": []}, {"revoked": {"c": "x"}}):  # never raises
        for r in (req("remove_volume", {"volume": "pacs"}), req("revoke_site", {"site_id": "c", "keys": ["x"]}),
                  req("prune_snapshots", {"volume": "ehr", "seqs": "all"}), {"status": "pending", "args": None}):
            moot_reason(r, hostile)
