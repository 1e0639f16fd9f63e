"""Once the cluster's rules are this code's ``RULES_MAX`` (a cluster founded under them, or raised),
each site names at ERROR a member whose release does not apply them (``RulesRaise.watch``): real
peer HTTP servers on 127.0.0.1 serve the reports, a member on an older release serves none (404, as
b976d0a answers), one not reachable is down, not behind. The cluster is the stand-in of
``test_raise_rules`` over the real state machine."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from replicad.core import state as st
from replicad.site import rules_raise

from .test_raise_rules import KEYS, SITES, StateCluster, founded, identity, three_sites


def founded_under_rules_2() -> StateCluster:
    cluster = StateCluster(st.initial_state(members=list(SITES)))
    members = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
                "keys": [identity.format_public_key(identity.public_key_raw(KEYS[s]))]} for i, s in enumerate(SITES)]
    for s in SITES:
        res = cluster.apply("found", s, incarnation=b"i" * 16, members=members, rules=st.RULES_MAX)
    assert res["ok"] and cluster.state.get("incarnation") and st.rules(cluster.state) == st.RULES_MAX, res
    return cluster


def test_a_member_on_an_older_release_is_named_once_the_rules_are_there(caplog, monkeypatch) -> None:
    monkeypatch.setattr(rules_raise, "LOG_EVERY_S", 0.2)

    async def main() -> None:
        shared = founded_under_rules_2()
        async with aiohttp.ClientSession() as session:
            raises, runners = await three_sites(shared, {"a": st.RULES_MAX, "b": st.RULES_MAX, "c": None}, session)
            try:
                stopping = asyncio.Event()
                with caplog.at_level(logging.ERROR, logger="replicad.site.rules_raise"):
                    task = asyncio.create_task(raises["a"].watch(stopping))
                    for _ in range(100):
                        if "upgrade it" in caplog.text:
                            break
                        await asyncio.sleep(0.05)
                    stopping.set()
                    await task
                assert f"site a: the cluster's rules are {st.RULES_MAX}" in caplog.text
                assert "c: no release report (an older release)" in caplog.text and "b:" not in caplog.text
                status = raises["a"].status()
                assert status["members"]["c"]["problem"] and status["members"]["b"]["problem"] is None
                assert status["waiting"] is False
                # c upgraded (it reports this release's rules now), b down (not reachable): nobody is named
                raises["c"].reported_max = st.RULES_MAX
                await runners[1].cleanup()
                caplog.clear()
                stopping = asyncio.Event()
                with caplog.at_level(logging.ERROR, logger="replicad.site.rules_raise"):
                    task = asyncio.create_task(raises["a"].watch(stopping))
                    await asyncio.sleep(0.6)
                    stopping.set()
                    await task
                assert "upgrade it" not in caplog.text
                assert raises["a"].status()["members"]["b"]["problem"]  # not reachable, said in status only
            finally:
                for r in runners:
                    await r.cleanup()
    asyncio.run(main())


def test_while_the_rules_are_below_the_watch_leaves_it_to_the_raise(caplog, monkeypatch) -> None:
    monkeypatch.setattr(rules_raise, "LOG_EVERY_S", 0.2)

    async def main() -> None:
        shared = founded()  # rules 1: the raise's wait names the members behind, at WARNING
        async with aiohttp.ClientSession() as session:
            raises, runners = await three_sites(shared, {"a": st.RULES_MAX, "b": st.RULES_MAX, "c": None}, session)
            try:
                stopping = asyncio.Event()
                with caplog.at_level(logging.ERROR, logger="replicad.site.rules_raise"):
                    task = asyncio.create_task(raises["a"].watch(stopping))
                    await asyncio.sleep(0.5)
                    stopping.set()
                    await task
                assert "upgrade it" not in caplog.text and raises["a"].members == {}
            finally:
                for r in runners:
                    await r.cleanup()
    asyncio.run(main())
