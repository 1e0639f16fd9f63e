"""Vetoes: one site's veto blocks a request (ARCHITECTURE, Choices: "A veto blocks"), and each is
counted per vetoing site in the replicated state and named in its result, so that every site
logs it (``AUDIT veto of request ...``) and exports ``replicad_request_vetoes_total{by}``."""

from __future__ import annotations

from tests.unit.core.test_state import RETENTION, cluster, cmd, ok, refused  # noqa: F401

SHORTER = {**RETENTION, "lock_s": 60}


def test_each_veto_is_counted_per_site_and_names_the_request(cluster):
    state, r1 = ok(cluster, cmd("request", by="b", action="set_retention",
                                args={"volume": "vol", "retention": SHORTER}))
    state, r2 = ok(state, cmd("request", by="c", action="set_retention",
                              args={"volume": "vol", "retention": SHORTER}))
    assert "vetoes" not in state
    state, res = ok(state, cmd("veto", by="a", request=r1["request"]))
    assert (res["status"], res["vetoed_by"], res["action"], res["requested_by"], res["volume"], res["vetoes"]) == \
        ("vetoed", "a", "set_retention", "b", "vol", 1)
    state, res = ok(state, cmd("veto", by="a", request=r2["request"]))
    assert res["vetoes"] == 2 and state["vetoes"] == {"a": 2}
    # a vetoed request stays vetoed: no approval revives it, a second veto is refused (refused()
    # checks that the state, its veto counts included, is unchanged)
    refused(state, cmd("approve", by="c", request=r1["request"]), "conflict")
    refused(state, cmd("veto", by="w", request=r1["request"]), "conflict")
    assert state["volumes"]["vol"]["retention"] == RETENTION
