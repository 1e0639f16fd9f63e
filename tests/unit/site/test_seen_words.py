"""The words of AUDIT lines seen live versus lines of history (``replicad.site.seen``): a replayed or
caught-up request line gives no next step for a request that may have applied since (an operator's
tryout: ``AUDIT (committed while this site was away) request r6 ... -- approvals 1 of 2 needed; an
operator of another site approves it ... replicad approve r6``, then ``request r6 applied``), and a
replayed founding does not tell its membership as not adopted now."""

from __future__ import annotations

from replicad.site.seen import approved_words, pending_words, unadopted_words


def test_a_pending_request_seen_live_gives_the_next_step_and_history_does_not() -> None:
    live = pending_words(1, 2, "r6", live=True)
    assert live == ("1 of 2 approvals; an operator of another site approves it at their own site with: "
                    "replicad approve r6")
    history = pending_words(1, 2, "r6", live=False)
    assert history.startswith("1 of 2 approvals at that command")
    assert "replicad approve" not in history and "needed" not in history
    assert "what became of r6 is logged after it" in history


def test_an_approved_request_seen_live_names_the_veto_and_history_does_not() -> None:
    live = approved_words(5, "r6", live=True)
    assert "unless a site vetoes it: replicad veto r6" in live
    history = approved_words(5, "r6", live=False)
    assert "replicad veto" not in history and "was to take effect when the cooling-off ended (majority clock 5 ns)" \
        in history


def test_a_replayed_founding_tells_that_proposal_alone_not_the_state_now() -> None:
    assert "its membership is not adopted yet" in unadopted_words(live=True)
    replayed = unadopted_words(live=False)
    assert "not adopted yet" not in replayed and "this proposal alone adopted no membership" in replayed


def test_what_became_of_a_request_named_in_lines_of_history() -> None:
    from replicad.site.seen import fate_words

    entry = {"action": "set_retention", "by": "site-b", "status": "applied", "approvals": ["site-b", "site-a"],
             "needed": 2}
    assert fate_words("r6", entry) == "request r6 (set_retention, requested by site-b): since applied"
    assert fate_words("r6", {**entry, "status": "vetoed", "vetoed_by": "site-c"}).endswith("since vetoed by site-c")
    pending = fate_words("r6", {**entry, "status": "pending", "approvals": ["site-b"]})
    assert pending.endswith("still pending, 1 of 2 approvals; an operator of another site approves it at their own "
                            "site with: replicad approve r6"), pending  # current now: the next step is right
    assert "gone from the state" in fate_words("r6", None)
    for junk in ("x", 3, {"approvals": "x"}):
        assert fate_words("r6", junk)
