"""The one filter of this site's restores and takeovers (``held_here``, ``newest_usable_here``,
review R7 F1): a snapshot the cluster calls clean is held back here when a person here marked
it (or an ancestor) suspect, or this site's own detector judged it suspect and no person
confirmed it. States are built by the real state machine; the detector's memory is read from
the opinion Raft recorded (``Detection.own_verdict``'s first source)."""

from __future__ import annotations

from replicad.site.promotion import held_here, newest_usable_here
from tests.unit.core.test_state import cluster, ok  # noqa: F401
from tests.unit.core.test_state_verdict_marks import chain, mark, opinion


class RecordedOpinions:
    """The part of ``site.detection.Detection`` the filter reads: this site's opinion as Raft recorded it."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id

    def own_verdict(self, volume: str, seq: int, vs: dict) -> str | None:
        snap = vs["snapshots"].get(seq)
        return ((snap or {}).get("opinions") or {}).get(self.site_id, {}).get("verdict")


def test_a_mark_here_holds_the_snapshot_and_its_descendants_here_only(cluster: dict) -> None:  # noqa: F811
    state = chain(cluster, 4)
    state, res = mark(state, "b", 3)
    vs = state["volumes"]["vol"]
    assert res["verdict"] == "clean"  # the cluster still calls #3 (and #4) clean
    seq, held = newest_usable_here("vol", vs, "b", RecordedOpinions("b"))
    assert seq == 2 and sorted(held) == [3, 4] and "marked" in held[3], held
    assert newest_usable_here("vol", vs, "c", RecordedOpinions("c")) == (4, {})
    assert held_here("vol", vs, 2, "b", None) is None and held_here("vol", vs, 4, "b", None) is not None


def test_an_own_suspect_opinion_holds_here_until_a_person_confirms(cluster: dict) -> None:  # noqa: F811
    state = chain(cluster, 3)
    state, _ = opinion(state, "c", 3, "suspect")
    vs = state["volumes"]["vol"]
    assert vs["snapshots"][3]["verdict"] == "clean"
    seq, held = newest_usable_here("vol", vs, "c", RecordedOpinions("c"))
    assert seq == 2 and "judged it suspect" in held[3], held
    assert newest_usable_here("vol", vs, "c", None) == (3, {})  # no detector: the marks only
    confirmed = {**vs, "snapshots": {**vs["snapshots"], 3: {**vs["snapshots"][3], "confirmed": True}}}
    assert newest_usable_here("vol", confirmed, "c", RecordedOpinions("c")) == (3, {})


def test_nothing_usable_here(cluster: dict) -> None:  # noqa: F811
    state = chain(cluster, 2)
    state, _ = mark(state, "b", 1)  # #2 descends from #1
    seq, held = newest_usable_here("vol", state["volumes"]["vol"], "b", None)
    assert seq is None and sorted(held) == [1, 2]
