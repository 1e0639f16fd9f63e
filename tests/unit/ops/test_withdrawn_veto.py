"""A second veto of a request its requester withdrew answers ``already`` (exit 0) like a vetoed
one, not ``not_found`` (tryout 2, item 7): the withdrawal leaves no request record, but the
state's exactly-once memory keeps its answer. Real states built by the real state machine."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from replicad.core.errors import NotFoundError
from replicad.ops.admin import _settled_answer, withdrawal_of
from tests.unit.core.test_state_membership import cmd, run
from tests.unit.site.test_catchup import RET, base


def _site(state: dict, site_id: str) -> SimpleNamespace:
    """What :func:`_settled_answer` reads of a site: its id and its current view of the state."""
    return SimpleNamespace(site_id=site_id, cluster=SimpleNamespace(raft_synced=lambda: True, view=lambda: state))


def test_a_withdrawn_request_vetoed_again_answers_already() -> None:
    c, asked = run(base(), cmd("request", "a", action="set_retention",
                               args={"volume": "ehr", "retention": {**RET, "lock_s": 60}}))
    req = asked["request"]
    assert withdrawal_of(c, req) is None  # pending: nothing withdrawn
    c, withdrawn = run(c, cmd("veto", "a", request=req))
    assert withdrawn["status"] == "withdrawn", withdrawn
    kept = withdrawal_of(c, req)
    assert kept is not None and kept["withdrawn_by"] == "a" and kept["action"] == "set_retention", kept
    for who in ("a", "b"):  # its requester again, or another site: it will not happen, as a vetoed one
        answer = json.loads(_settled_answer(_site(c, who), req, None, "veto").text)
        assert answer["status"] == "withdrawn" and answer["already"] is True, answer
        assert answer["withdrawn_by"] == "a" and answer["volume"] == "ehr", answer
    # an approval of it, and a veto of an id never made, stay not_found
    with pytest.raises(NotFoundError):
        _settled_answer(_site(c, "b"), req, None, "approve")
    with pytest.raises(NotFoundError):
        _settled_answer(_site(c, "a"), "r99", None, "veto")


def test_a_malformed_view_claims_no_withdrawal() -> None:
    assert withdrawal_of(None, "r1") is None
    assert withdrawal_of({"applied_ops": [1]}, "r1") is None
    assert withdrawal_of({"applied_ops": {"x": "y", "z": {"ok": True, "status": "withdrawn", "request": "r1"}}},
                         "r1") is None  # no requester named: not proven
