"""replicad.site.clusterid: which config to fix, and which sites are asked (the daemons' side is
tests/integration/test_cluster_id_mismatch.py)."""

from __future__ import annotations

import asyncio

from replicad.consensus.channel import RefusalLog
from replicad.core.errors import PeerUnavailableError
from replicad.site.clusterid import ClusterIdCheck, mismatch_line


def test_the_majority_names_the_config_to_fix() -> None:
    honest = mismatch_line("site-a", "prod", "site-c", "prdo", {"site-b": "prod"})
    assert "site-b answers 'prod' as this site does, so site-c's config is most likely the one to fix" in honest
    typo = mismatch_line("site-c", "prdo", "site-a", "prod", {"site-b": "prod"})
    assert "site-b answers 'prod' too, so this site's config is most likely the one to fix" in typo
    alone = mismatch_line("site-a", "prod", "site-b", "prdo", {})
    assert "most likely" not in alone and "cluster 'prdo'" in alone and "cluster_id = 'prod'" in alone


def test_refusals_note_sites_and_the_check_asks_only_them() -> None:
    refusals = RefusalLog()
    refusals.note_bad_identity("site-c")
    refusals.note_bad_identity("site-b", abandoned=True)
    assert refusals.bad_identity_sites(60) == {"site-b": True, "site-c": False}
    answers = {"site-b": "prod", "site-c": "prod"}
    asked: list[str] = []

    async def hello(url: str) -> dict:
        asked.append(url)
        if url == "down":
            raise PeerUnavailableError("down")
        return {"site_id": url, "cluster_id": answers[url]}

    check = ClusterIdCheck("site-a", lambda: "prod", refusals.bad_identity_sites, lambda s: s,
                           lambda: ["site-a", "site-b", "site-c"], hello)
    lines = asyncio.run(check.check_once())
    # same id: site-c (refused here) is a key mismatch; site-b only dropped our answer: no line
    assert len(lines) == 1 and "site site-c are refused (bad_identity) though it answers the same cluster id" \
        in lines[0], lines
    assert sorted(asked) == ["site-b", "site-c"]
    assert asyncio.run(check.check_once()) == []  # once a minute per site
    answers["site-c"] = "prdo"
    check2 = ClusterIdCheck("site-a", lambda: "prod", refusals.bad_identity_sites, lambda s: s,
                            lambda: ["site-a", "site-b", "site-c"], hello)
    lines = asyncio.run(check2.check_once())
    assert len(lines) == 1 and lines[0].startswith("cluster id mismatch: site site-c answers that it belongs to "
                                                   "cluster 'prdo'"), lines
