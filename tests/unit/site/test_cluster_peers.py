"""Cluster.data_peers: the sites a primary ships to and a replica pulls from."""

from __future__ import annotations

from types import SimpleNamespace

from replicad.site.cluster import Cluster


class _View:
    """The one thing data_peers reads from the Raft node: the applied state."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def view(self) -> dict:
        return self.state


def _cfg() -> SimpleNamespace:
    sites = [SimpleNamespace(site_id=s, kind=k, peer_url=f"http://{s}")
             for s, k in (("site-a", "data"), ("site-b", "data"), ("site-c", "data"), ("witness", "witness"))]
    return SimpleNamespace(sites=tuple(sites))


def test_a_revoked_site_is_sent_nothing_until_it_rejoins() -> None:
    raft = _View({"volumes": {}, "revoked": {}})
    cluster = Cluster("site-b", raft, _cfg)
    assert cluster.data_peers() == ["site-a", "site-c"]
    raft.state = {"volumes": {}, "revoked": {"site-a": {"keys": [b"k" * 32], "at_ns": 1, "by": "site-b"}}}
    assert cluster.data_peers() == ["site-c"]  # it would receive patient data
    raft.state = {"volumes": {}, "revoked": {"site-a": {"keys": [b"k" * 32], "at_ns": 1, "by": "site-b",
                                                          "rejoined_ns": 2}}}
    assert cluster.data_peers() == ["site-a", "site-c"]  # rebuilt with a new key and registered again
