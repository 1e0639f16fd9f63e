"""Raising the cluster state's rules version (``replicad.site.rules_raise``, ``SiteDaemon._raise_rules``):
each site serves its signed release report on a real peer HTTP server (127.0.0.1); a site raises
only once every unrevoked member reported a release applying the new rules, a member still on an
older release (no report: 404, as b976d0a answers) or unreachable keeps it waiting, and a state
above this code's rules stops the site. The cluster here is a stand-in over the real state
machine: ``propose`` applies the command with ``state.apply`` under the sites' real keys and
answers its result as the real cluster does (a refusal raised as its typed error)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from replicad.core import errors, identity
from replicad.core import state as st
from replicad.core.identity import Signer, Trust
from replicad.site.daemon import SiteDaemon
from replicad.site.rules_raise import RulesRaise

_ids = itertools.count()
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
TRUST = Trust(cluster_id="c", keys={s: (identity.public_key_raw(k),) for s, k in KEYS.items()})
R = st.RULES_MAX  # the rules of this release: what the sites report and raise to


class StateCluster:
    """``propose`` applies each command of ``by`` (signed with its key) to :attr:`state` and
    records it; ``view`` is the Raft view; ``sites`` the configured peers (``urls``)."""

    def __init__(self, state: dict, urls: dict[str, str] | None = None) -> None:
        self.state, self.urls = state, urls or {}
        self.calls: list[dict] = []

    def view(self) -> dict:
        return self.state

    def sites(self) -> list:
        return [SimpleNamespace(site_id=s, peer_url=u) for s, u in self.urls.items()]

    def apply(self, op: str, by: str, **fields) -> dict:
        command = identity.sign_command(KEYS[by], {"v": 1, "op": op, "op_id": f"{op}-{next(_ids)}", "by": by,
                                                   "now_ns": time.time_ns(), "cluster": "c", **fields})
        self.calls.append(command)
        self.state, result = st.apply(self.state, command, TRUST)
        return result


def founded() -> StateCluster:
    cluster = StateCluster(st.initial_state(members=list(SITES)))
    members = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
                "keys": [identity.format_public_key(identity.public_key_raw(KEYS[s]))]} for i, s in enumerate(SITES)]
    for s in SITES:
        assert cluster.apply("register_site", s, site_id=s, peer_url=f"http://{s}", kind="data")["ok"]
    for s in SITES:
        res = cluster.apply("found", s, incarnation=b"i" * 16, members=members)
    assert res["ok"] and cluster.state.get("incarnation"), res
    return cluster


class SiteCluster:
    """One site's handle on the shared :class:`StateCluster`: proposes as ``by``."""

    def __init__(self, shared: StateCluster, by: str) -> None:
        self.shared, self.by = shared, by

    def view(self) -> dict:
        return self.shared.view()

    def sites(self) -> list:
        return self.shared.sites()

    async def propose(self, op: str, **fields) -> dict:
        result = self.shared.apply(op, self.by, **fields)
        if not result["ok"]:
            raise errors.from_dict(result)
        return result


async def serve(raise_: RulesRaise) -> tuple[web.AppRunner, str]:
    """``raise_``'s peer route on a real HTTP server on 127.0.0.1; ``(runner, base url)``."""
    app = web.Application()
    app.add_routes([raise_.route()])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def three_sites(shared: StateCluster, reported: dict[str, int | None], session: aiohttp.ClientSession):
    raises = {s: RulesRaise(s, SiteCluster(shared, s), Signer(s, KEYS[s], "c"), lambda: TRUST, session,
                            reported[s]) for s in SITES}
    runners = []
    for s, r in raises.items():
        runner, url = await serve(r)
        runners.append(runner)
        shared.urls[s] = url
    return raises, runners


def test_a_site_raises_only_once_every_member_reports_the_new_release(caplog) -> None:
    async def main() -> None:
        shared = founded()
        async with aiohttp.ClientSession() as session:
            raises, runners = await three_sites(shared, {"a": R, "b": R, "c": None}, session)
            try:
                # c serves no report (an older release): a asks, waits, says so, proposes nothing
                reports, members = await raises["a"].collect(R)
                assert set(reports) == {"a", "b"} and members["c"] == {
                    "rules_max": None, "problem": "no release report (an older release)"}
                assert members["a"]["problem"] is None and members["b"]["problem"] is None
                stopping = asyncio.Event()
                task = asyncio.create_task(raises["a"].run(stopping))
                await asyncio.sleep(0.5)
                assert raises["a"].status()["waiting"] and st.rules(shared.state) == 1
                assert not any(c["op"] == "rules" for c in shared.calls)
                # c reports rules 1..1: still waiting
                raises["c"].reported_max = 1
                _, members = await raises["a"].collect(R)
                assert members["c"] == {"rules_max": 1, "problem": "runs rules 1..1"}
                # c upgraded: a raises at its next round, with every member's signed report
                raises["c"].reported_max = R
                stopping.set()
                await task
                await raises["a"].run(asyncio.Event())
                assert st.rules(shared.state) == R and raises["a"].raised_here is True
                raised = [c for c in shared.calls if c["op"] == "rules"]
                assert len(raised) == 1 and set(raised[0]["reports"]) == set(SITES)
                # b finds the state raised: no command, not waiting
                await raises["b"].run(asyncio.Event())
                assert len([c for c in shared.calls if c["op"] == "rules"]) == 1
                assert raises["b"].raised_here is False and raises["b"].status()["waiting"] is False
            finally:
                for runner in runners:
                    await runner.cleanup()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    text = caplog.text
    assert f"rules stay at 1 until every member runs a release applying rules {R}" in text
    assert "c: no release report (an older release)" in text
    assert f"AUDIT site a: the cluster's rules raised 1 -> {R}" in text


def test_an_unreachable_member_and_a_forged_report_keep_the_rules() -> None:
    """A member whose peer API does not answer is ``not reachable``; a member answering a report
    signed by another key (a site speaking for another) is refused by the state machine's own
    check before any proposal (the daemon raises by itself only with every member's report); a
    raise proposed anyway without a majority of good reports is refused, rules 1 kept; with one
    but no operator's consent to leave c behind it is refused too (a hostile site with one
    honest site's served report cannot raise past an honest member)."""
    async def main() -> None:
        shared = founded()
        async with aiohttp.ClientSession() as session:
            raises, runners = await three_sites(shared, {"a": R, "b": R, "c": R}, session)
            try:
                await runners[2].cleanup()  # c's peer server gone
                _, members = await raises["a"].collect(R)
                assert members["c"]["problem"].startswith("not reachable"), members
                raises["c"].signer = Signer("c", KEYS["a"], "c")  # c's report signed with a's key
                runner, shared.urls["c"] = await serve(raises["c"])
                runners[2] = runner
                reports, members = await raises["a"].collect(R)
                assert members["c"] == {"rules_max": R, "problem": "bad release report"}, members
                stopping = asyncio.Event()
                task = asyncio.create_task(raises["a"].run(stopping))
                await asyncio.sleep(0.3)
                stopping.set()
                await task
                assert not any(c["op"] == "rules" for c in shared.calls)
                try:  # a's own and c's forged report: not a majority of good ones
                    await SiteCluster(shared, "a").propose("rules", to=R, reports={
                        k: v for k, v in reports.items() if k != "b"})
                except errors.ReplicadError:
                    pass
                else:
                    raise AssertionError("a raise with a forged report and no majority was applied")
                assert st.rules(shared.state) == 1
                # with b's report the good ones are a majority, but no operator consented to leave c behind
                # (under rules 1 a refused raise is answered as b976d0a answers it: an unknown op)
                assert st.rules_consents(shared.state, reports, {"c": "bad release report"}) == []
                try:
                    await SiteCluster(shared, "a").propose("rules", to=R, reports=reports)
                except errors.ReplicadError:
                    pass
                else:
                    raise AssertionError("a raise leaving c behind without consents was applied")
                assert st.rules(shared.state) == 1
            finally:
                for runner in runners:
                    await runner.cleanup()

    asyncio.run(main())


def test_a_state_above_this_code_s_rules_stops_the_site() -> None:
    d = object.__new__(SiteDaemon)
    state = {**founded().state, st.RULES: st.RULES_MAX + 1}
    d.site_id, d.raft, d.fatal, d._stopping, d._tasks = "a", SimpleNamespace(view=lambda: state), None, \
        asyncio.Event(), []
    d._raise_rules()
    assert d._tasks == []
    assert isinstance(d.fatal, errors.RulesVersionError) and d.fatal.evidence == {"rules": st.RULES_MAX + 1,
                                                                                  "max_rules": st.RULES_MAX}
    assert d._stopping.is_set()


def test_a_majority_of_operators_consents_and_the_sites_raise_leaving_a_member_behind(tmp_path, caplog) -> None:
    """c serves no report (an older release). a's operator consents to leave c behind: a's served
    report carries ``leave_behind`` under its signature; with that one consent no site proposes
    (the wait's WARNING names the command), and a raise proposed anyway by b (a's consent and b's
    own report) is refused. b's operator consents too: b's next round raises by itself, the
    result names c behind and a, b consenting. A consent is kept in the data dir (a new
    RulesRaise over it serves it), expires, is withdrawn by ``cancel_consent``; a damaged file
    stops the start (ConfigError); bad input is a UsageError."""
    async def main() -> None:
        shared = founded()
        async with aiohttp.ClientSession() as session:
            raises, runners = await three_sites(shared, {"a": R, "b": R, "c": None}, session)
            for s in SITES:
                (tmp_path / s).mkdir()
                raises[s].keep_consent_in(tmp_path / s)
            try:
                for bad in (["d"], ["a"], [], "c", ["c", "c"]):
                    try:
                        raises["a"].give_consent(bad, "why", "op-a")
                    except errors.UsageError:
                        pass
                    else:
                        raise AssertionError(f"consent to leave behind {bad!r} accepted")
                try:
                    raises["a"].give_consent(["c"], "", "op-a")
                except errors.UsageError:
                    pass
                else:
                    raise AssertionError("a consent without a reason accepted")
                consent = raises["a"].give_consent(["c"], "c cannot be upgraded this week", "op-a")
                assert consent["leave_behind"] == ["c"] and consent["by"] == "op-a"
                reports, members = await raises["b"].collect(R)
                assert reports["a"][3] == ["c"] and len(reports["b"]) == 3 and "c" not in reports
                assert members["a"]["problem"] is None  # the consent verifies under a's key
                # one consent: b waits and says what the operators can do; nothing proposed
                await run_briefly(raises["b"])
                assert st.rules(shared.state) == 1 and not any(c["op"] == "rules" for c in shared.calls)
                assert raises["b"].status()["consented"] == ["a"] and raises["b"].status()["consent"] is None
                assert st.rules_consents(shared.state, reports, {"c": "not reported"}) == ["a"]
                try:  # the hostile reading: a's consent and b's report without one
                    await SiteCluster(shared, "b").propose("rules", to=R, reports=reports)
                except errors.ReplicadError:
                    pass
                else:
                    raise AssertionError("a raise with one consent was applied")
                # a consent tampered with in transit (c added) no longer verifies
                forged = {**reports, "a": [*reports["a"][:3], ["b", "c"]]}
                assert st.rules_reports_problems(shared.state, forged, R, TRUST) == {
                    "a": "bad release report", "c": "not reported"}
                # kept durably: a RulesRaise over a's data dir serves it
                again = RulesRaise("a", SiteCluster(shared, "a"), Signer("a", KEYS["a"], "c"), lambda: TRUST,
                                   session, R)
                again.keep_consent_in(tmp_path / "a")
                assert again.own_report()["leave_behind"] == ["c"]
                # b's operator consents: b's next round raises by itself
                raises["b"].give_consent(["c"], "c on the old release until its hardware is replaced", "op-b")
                await run_briefly(raises["b"])
                assert st.rules(shared.state) == R and raises["b"].raised_here is True
                raised = [c for c in shared.calls if c["op"] == "rules"]
                applied = shared.state["applied_ops"][st.applied_key(shared.state, "b", raised[-1]["op_id"])]
                assert applied["changed"] and list(applied["behind"]) == ["c"], applied
                assert applied["consented"] == ["a", "b"]
                assert raises["a"].consent() is None and "leave_behind" not in raises["a"].own_report()  # served once
                assert raises["a"]._consent is not None  # (kept until it expires or is withdrawn)
                # withdrawn, expired, damaged
                assert raises["a"].cancel_consent("op-a")["leave_behind"] == ["c"]
                assert not (tmp_path / "a" / "rules-consent.json").exists()
                assert raises["a"]._consent is None
                shared.state = {**shared.state, st.RULES: 1}  # (as if before the raise) an expired one is not served
                assert raises["b"].consent() is not None
                raises["b"]._consent = {**raises["b"]._consent, "to": st.RULES_MAX - 1}  # another raise's
                assert raises["b"].consent() is None
                raises["b"]._consent = {**raises["b"]._consent, "to": st.RULES_MAX}
                raises["b"]._consent = {**raises["b"]._consent, "expires_ns": time.time_ns() - 1}
                assert raises["b"].consent() is None and "leave_behind" not in raises["b"].own_report()
                (tmp_path / "c" / "rules-consent.json").write_text('{"leave_behind": "c"}')
                try:
                    raises["c"].keep_consent_in(tmp_path / "c")
                except errors.ConfigError:
                    pass
                else:
                    raise AssertionError("a damaged consent file was read")
            finally:
                for runner in runners:
                    await runner.cleanup()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    text = caplog.text
    assert "replicad raise-rules --leave-behind c --reason" in text and "consents in force: a" in text
    assert f"AUDIT site a: operator op-a consents to raise the cluster's rules to {R} leaving behind c" in text
    assert f"AUDIT site b: the cluster's rules raised 1 -> {R} leaving behind c: not reported" in text


async def run_briefly(raise_: RulesRaise) -> None:
    """One round of ``raise_``'s wait (it ends at the raise, or is stopped after its first round)."""
    stopping = asyncio.Event()
    task = asyncio.create_task(raise_.run(stopping))
    await asyncio.sleep(0.3)
    stopping.set()
    await task
