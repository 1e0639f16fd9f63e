"""A new cluster is founded under this release's rules: its ``found`` commands carry ``rules``
(``state.founding_rules``), and the first one applied to a never-founded state founds it under
them, dropping what any member had applied before it under rules 1 (the founding window: one
hostile member registered 256 volumes there). Checked against the real state machines: this one,
and release b976d0a's loaded from the repository's history (:func:`.test_state_rules.old`), which
refuses such a ``found`` (a key it does not know) and so never founds that cluster: a b976d0a site
joining it never acts on a state decided under other rules. A log with the founding replays to
the same digest from its first entry (a joining witness, a rebuilt site).
"""

from __future__ import annotations

import copy

from replicad.consensus.checkpoint import state_digest
from replicad.core import state as st

from .test_state_rules import M3, POLICY, add_volume, cmd, old, raise_to, replay  # noqa: F401 (old: a fixture)

M3_IDS = ["a", "b", "c"]


def found(by: str, **extra) -> dict:
    return cmd("found", by, incarnation=by.encode() * 16, members=M3, **extra)


def register(site: str) -> dict:
    return cmd("register_site", site, site_id=site, peer_url=f"http://{site}", kind="data")


def hostile_first(n_volumes: int = 3) -> list[dict]:
    """What a member present at the founding applies before any honest found: itself and volumes."""
    return [register("c"), *(add_volume(f"c{i}", by="c") for i in range(n_volumes))]


def test_the_first_found_carrying_the_rules_founds_the_cluster_under_them():
    s = st.initial_state(members=M3_IDS)
    s, res = st.apply(s, found("a", rules=st.RULES_MAX), POLICY)
    assert res["ok"] and res["rules"] == st.RULES_MAX and res["previous"] == 1 and not res["adopted"]
    assert st.rules(s) == st.RULES_MAX and "dropped" not in res
    s, res = st.apply(s, found("b", rules=st.RULES_MAX), POLICY)  # decided under rules 2 now
    assert res["adopted"] and res["created"] and "previous" not in res and st.rules(s) == st.RULES_MAX
    s, res = st.apply(s, found("c"), POLICY)  # a plain found (a site of b976d0a): the recorded answer
    assert res["ok"] and not res["created"]
    # rules 2 decide: remove_volume is an op (under rules 1, b976d0a's unknown op)
    s, res = st.apply(s, register("a"), POLICY)
    s, res = st.apply(s, cmd("remove_volume", "a", volume="nope"), POLICY)
    assert res["error"] == "not_found", res


def test_what_was_applied_before_the_founding_under_rules_1_is_dropped():
    s, results = replay(st.apply, st.initial_state(members=M3_IDS), hostile_first())
    assert all(r["ok"] for r in results) and len(s["volumes"]) == 3 and st.rules(s) == 1
    audit_before = len(s["audit"])
    s, res = st.apply(s, found("a", rules=st.RULES_MAX), POLICY)
    assert res["dropped"] == {"sites": 1, "volumes": 3}, res
    assert s["sites"] == {} and s["volumes"] == {} and st.rules(s) == st.RULES_MAX
    assert len(s["audit"]) == audit_before + 1  # the records stay: what happened, and who did it
    assert s["limits"] == st.limits(M3_IDS)
    # the hostile member's commands again, now under rules 2: one site registers at most 128 volumes
    log = [found("b", rules=st.RULES_MAX), register("c"),
           *(add_volume(f"d{i}", by="c") for i in range(st.VOLUMES_PER_SITE_MAX + 1))]
    s, results = replay(st.apply, s, log)
    assert results[0]["adopted"] and all(r["ok"] for r in results[1:-1]), [r for r in results if not r["ok"]][:1]
    assert results[-1]["error"] == "conflict" and len(s["volumes"]) == st.VOLUMES_PER_SITE_MAX


def test_b976d0a_refuses_a_found_carrying_rules_and_never_founds_such_a_cluster(old):
    log = [*hostile_first(1), found("a", rules=st.RULES_MAX), found("b", rules=st.RULES_MAX),
           found("a", rules=st.RULES_MAX)]
    s, results = replay(old.apply, old.initial_state(members=M3_IDS), log)
    refused = results[len(hostile_first(1)):]
    assert all(r["error"] == "bad_request" and r["evidence"]["unknown"] == ["rules"] for r in refused), refused
    assert s.get("incarnation") is None  # never founded: every request, approval and vouch refused there
    new, _ = replay(st.apply, st.initial_state(members=M3_IDS), log)
    assert new.get("incarnation") is not None and st.rules(new) == st.RULES_MAX


def test_in_a_founded_cluster_under_rules_1_a_found_carrying_rules_is_b976d0as_refusal(old):
    """An upgraded cluster (founded by b976d0a) is not refounded: the rules-1 machine decides."""
    base = [register(x) for x in "abc"] + [found("a"), found("b")]
    log = [*base, found("c", rules=st.RULES_MAX), add_volume("v", by="a")]
    s_old, r_old = replay(old.apply, old.initial_state(members=M3_IDS), log)
    s_new, r_new = replay(st.apply, st.initial_state(members=M3_IDS), log)
    assert r_new == r_old and state_digest(s_new) == state_digest(s_old) and st.rules(s_new) == 1
    assert r_new[len(base)]["error"] == "bad_request"


def test_a_found_carrying_rules_that_is_refused_raises_nothing(old):
    """Refused by this machine (here: by a site its own list does not name), or naming rules this
    code does not apply, or not an int: decided under rules 1, as b976d0a refuses it."""
    outsider = cmd("found", "a", incarnation=b"a" * 16, members=[m for m in M3 if m["site_id"] != "a"],
                   rules=st.RULES_MAX)
    for c in (outsider, found("a", rules=st.RULES_MAX + 1), found("a", rules=True), found("a", rules="2"),
              found("a", rules=1)):
        s_old, r_old = replay(old.apply, old.initial_state(members=M3_IDS), [c])
        s_new, r_new = replay(st.apply, st.initial_state(members=M3_IDS), [c])
        assert r_new == r_old and state_digest(s_new) == state_digest(s_old) and st.rules(s_new) == 1, c["rules"]


def test_under_rules_2_a_found_names_rules_this_code_applies():
    s, _ = replay(st.apply, st.initial_state(members=M3_IDS), [found("a", rules=st.RULES_MAX)])
    s, res = st.apply(s, found("b", rules=st.RULES_MAX + 1), POLICY)
    assert res["error"] == "out_of_range" and s.get("incarnation") is None
    s, res = st.apply(s, found("b", rules=1), POLICY)  # lower than the state's: a plain found
    assert res["ok"] and res["adopted"] and st.rules(s) == st.RULES_MAX


def test_a_raise_after_such_a_founding_finds_the_rules_there(old):
    s, _ = replay(st.apply, st.initial_state(members=M3_IDS),
                  [found("a", rules=st.RULES_MAX), found("b", rules=st.RULES_MAX)] + [register(x) for x in "abc"])
    s, res = st.apply(s, raise_to("a"), POLICY)
    assert res["ok"] and res["changed"] is False, res


def test_the_log_replays_to_the_same_digest_from_its_first_entry():
    """A founder, a site rebuilt from an empty data dir (the same initial state) and a witness that
    joins later (``limits(joining=True)``: no configured reference) apply the log from its first
    entry: every digest after the adoption is the founders'."""
    log = [*hostile_first(2), found("a", rules=st.RULES_MAX), cmd("clock", "c"), found("b", rules=st.RULES_MAX),
           *(register(x) for x in "abc"), add_volume("v", by="a"), found("c", rules=st.RULES_MAX)]
    adopted_at = 5
    starts = {"founder": st.initial_state(members=M3_IDS), "joiner": {**st.initial_state(), "limits": st.limits(
        joining=True)}}
    digests = {}
    for who, start in starts.items():
        s, out = copy.deepcopy(start), []
        for c in log:
            s, _ = st.apply(s, copy.deepcopy(c), POLICY)
            out.append(state_digest(s))
        digests[who] = out
    assert digests["founder"][adopted_at:] == digests["joiner"][adopted_at:]
    assert st.rules(s) == st.RULES_MAX and sorted(s["volumes"]) == ["v"]


def test_a_follower_still_before_the_founding_takes_the_founded_state_whole():
    """A full state from the leader must keep every site and volume of the follower's, but the
    founding under rules 2 dropped what a never-founded state held: such a follower takes it."""
    before, _ = replay(st.apply, st.initial_state(members=M3_IDS), hostile_first())
    founded, _ = replay(st.apply, before, [found("a", rules=st.RULES_MAX), found("b", rules=st.RULES_MAX),
                                           register("a")])
    assert st.dump_problems(before, founded, 0) == []
    later, _ = replay(st.apply, founded, [add_volume("v", by="a")])
    assert st.dump_problems(later, founded, 0)  # a founded follower's volume must be kept, as before
    plain, _ = replay(st.apply, before, [found("a"), found("b")])  # founded under rules 1: nothing dropped
    assert st.dump_problems(before, {**plain, "volumes": {}}, 0)
