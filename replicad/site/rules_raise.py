"""Raising the cluster state's rules version (op ``rules``) in a rolling upgrade.

Each site serves its signed release report on the peer API (``GET /v1/peer/release``, JSON
``{"site_id", "rules_max", "at_ns", "sig"}``: "this site runs a release applying the state's rules
1..rules_max", ``sig`` the base64 Ed25519 signature of
:func:`replicad.core.identity.release_report_bytes`, None in unsigned lab mode). A release before
the rules version (b976d0a) has no such route: its peer API answers 404, read here as "an older
release".

:class:`RulesRaise` (one per site, started by the daemon's bootstrap once the site registered)
asks every unrevoked member of the agreed membership for its report every :data:`POLL_S`, and
proposes ``rules`` ``to`` this code's :data:`~replicad.core.state.RULES_MAX` with every member's
report once each member reported a release applying it (checked beforehand by the state
machine's own :func:`~replicad.core.state.rules_reports_problems`). Until then the cluster stays
under its rules (rules 1: this release decides every command as b976d0a does, so a cluster of
mixed releases keeps one state), and the site says what it waits for: a WARNING line per
:data:`LOG_EVERY_S` naming the members and why (``runs rules 1..1``, ``no release report (an
older release)``, ``not reachable``), :meth:`RulesRaise.status` in ``GET /v1/status`` (``rules``)
and the gauges ``replicad_rules_*``. Every site does this; the first raise applied wins and the
others find the state raised (a proposal racing it is answered ``changed`` false).

A member that cannot be upgraded soon, or is suspected hostile and withholds its report, is left
behind only with the consent of a majority of the operators (ARCHITECTURE.md, Choices, "The
state's rules version", option (d)): an operator runs ``replicad raise-rules --leave-behind SITE
--reason ...`` at their own site (admin API ``POST /v1/rules/raise``, operator role, in the admin
audit log); the consent is kept in ``<data_dir>/``:data:`CONSENT_FILE` (written durably) until it
expires (:data:`CONSENT_TTL_S`) or is withdrawn (``--cancel``), and the site's release report
carries it, signed (``leave_behind``: sorted site ids). Once a majority of the members reported and
a majority's consents cover every member without a good report, every site proposes the raise by
itself; the state machine counts the consents again (:func:`~replicad.core.state.rules_consents`).
While it waits, the WARNING line names the command.

What a hostile member can do: delay the raise (no report, or a low one) until a majority of the
operators leaves it behind; not hasten it past an honest member still on an older release: it
cannot make that member's signed report, and with its own lying report and one honest site's
served report it has a majority of reports but one consent (an honest report carries one only
when its operator gave it). A consent withdrawn or expired is no longer served; a report served
before stays good for the state's :data:`~replicad.core.state.RULES_REPORT_TTL_NS` (10 minutes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from pathlib import Path

from replicad.core import state as cluster_state
from replicad.core.errors import ConfigError, ConflictError, ReplicadError, UsageError
from replicad.core.identity import Signer, Trust
from replicad.core.state import RULES_MAX, rules
from replicad.storage.durable import fsync_dir, write_durably

log = logging.getLogger("replicad.site.rules_raise")

POLL_S = 5.0
"""How often a site waiting to raise the rules asks the members for their release reports."""
LOG_EVERY_S = 60.0
"""A site waiting to raise the rules says which members it waits for at most once per this."""
ASK_TIMEOUT = aiohttp.ClientTimeout(total=5.0, connect=3.0)
"""One member's ``GET /v1/peer/release``: a member that does not answer within it is ``not reachable``."""
REPORT_MAX_BYTES = 4096
"""A release report's JSON body at most (a member answering more is ``malformed``)."""
ROUTE = "/v1/peer/release"
REPORT_REUSE_S = 1.0
"""A signed report is served again for this long (well inside the state's 10-minute window)."""
CONSENT_FILE = "rules-consent.json"
"""This site's operator's consent to raise the rules leaving members behind, in the data dir:
JSON ``{"leave_behind": [site], "reason", "by", "to", "at_ns", "expires_ns"}`` (``to``: the rules
version of the raise it consents to, this code's :data:`~replicad.core.state.RULES_MAX`)."""
CONSENT_TTL_S = 24 * 3600
"""A consent expires after a day: an operator's decision of an upgrade window, not a standing
permission (a member that fails later is judged again)."""
REASON_MAX_CHARS = 1024
LAB_REPORT_RULES_MAX_ENV = "REPLICAD_LAB_REPORT_RULES_MAX"
"""Test benches only (the site's config must say ``lab = true``; ignored with a WARNING otherwise):
the ``rules_max`` this site reports instead of its code's :data:`RULES_MAX`, to play a site still
on an older release in a cluster test; ``0``: no report at all (404, as release b976d0a's peer API
answers). Never set in production: a site reporting less than it runs only delays the raise; one
reporting more than it runs would be a lie."""


LAB_FOUND_RULES_ENV = "REPLICAD_LAB_FOUND_RULES"
"""Test benches only (``lab = true``; ignored with a WARNING otherwise): the rules this site's
``found`` proposals carry instead of :data:`RULES_MAX`; ``1``: none (a plain ``found``, as release
b976d0a proposes it), so a new test cluster starts under rules 1 like one founded by b976d0a and
upgraded since. Never set in production: a cluster founded under rules 1 is open to a hostile
member's commands decided under them until its daemons raise the rules."""


def _lab_rules_knob(env: str, lab: bool, lowest: int, production: str) -> int:
    """The int in ``lowest``..RULES_MAX that the lab knob ``env`` sets on a test bench (``lab``),
    else :data:`RULES_MAX` (unset; or set without ``lab``: logged, ``production`` says what this
    site does instead).

    Raises:
        ConfigError: the knob is set on a test bench and is not an int in ``lowest``..RULES_MAX."""
    text = os.environ.get(env)
    if text is None:
        return RULES_MAX
    if not lab:
        log.warning("%s is a test bench setting (lab = true): ignored, %s", env, production)
        return RULES_MAX
    try:
        value = int(text)
    except ValueError:
        value = lowest - 1
    if not lowest <= value <= RULES_MAX:
        raise ConfigError(f"{env}={text!r}: an int in {lowest}..{RULES_MAX}", field=env, value=text[:40])
    return value


def founding_rules(lab: bool) -> int:
    """The rules version this site's ``found`` proposals carry (``state.founding_rules``):
    :data:`RULES_MAX`, or the lab knob :data:`LAB_FOUND_RULES_ENV` on a test bench (``lab``).

    Raises:
        ConfigError: the knob is set on a test bench and is not an int in 1..RULES_MAX."""
    return _lab_rules_knob(LAB_FOUND_RULES_ENV, lab, 1, f"this site founds under rules {RULES_MAX}")


def reported_rules_max(lab: bool) -> int | None:
    """The ``rules_max`` this site reports: :data:`RULES_MAX`, or the lab knob
    :data:`LAB_REPORT_RULES_MAX_ENV` on a test bench (``lab``); None: serve no report (knob 0).

    Raises:
        ConfigError: the knob is set on a test bench and is not an int in 0..RULES_MAX."""
    value = _lab_rules_knob(LAB_REPORT_RULES_MAX_ENV, lab, 0, f"this site reports rules 1..{RULES_MAX}")
    if lab and os.environ.get(LAB_REPORT_RULES_MAX_ENV) is not None:
        log.warning("LAB: site reports a release applying rules 1..%d (%s; this code applies 1..%d)%s", value,
                    LAB_REPORT_RULES_MAX_ENV, RULES_MAX, ": no release report at all" if value == 0 else "")
    return value or None


class RulesRaise:
    """This site's release report, and its wait to raise the rules (module docstring).

    Args:
        site_id: this site.
        cluster: the site's :class:`~replicad.site.cluster.Cluster` (``view``, ``propose``, ``sites``).
        signer: this site's identity (None in unsigned lab mode: reports carry no signature).
        trust: returns the state machine's :class:`~replicad.core.identity.Trust` (the config's).
        session: the peer HTTP client session (the peer API's TLS context).
        reported_max: the ``rules_max`` this site reports (:func:`reported_rules_max`); None: none.
    """

    def __init__(self, site_id: str, cluster: Any, signer: Signer | None, trust: Callable[[], Trust],
                 session: aiohttp.ClientSession | None, reported_max: int | None) -> None:
        self.site_id = site_id
        self.cluster = cluster
        self.signer = signer
        self.trust = trust
        self.session = session
        self.reported_max = reported_max
        self.waiting = False
        self.members: dict[str, dict] = {}  # site -> {"rules_max": int | None, "problem": str | None}
        self.waiting_since: float | None = None  # time.time() the wait began
        self.raised_here: bool | None = None  # True: this site's raise applied; False: another's
        self._logged = float("-inf")
        self._report: tuple[float, tuple, dict] | None = None  # (monotonic s, (rules_max, signer, consent), report)
        self._consent_path: Path | None = None
        self._consent: dict | None = None  # CONSENT_FILE's content, expired or not
        self.consented: list[str] = []  # members whose served consents cover the members behind (last round)

    # ------------------------------------------------------------------ the operator's consent
    def keep_consent_in(self, data_dir: Path) -> None:
        """Keep this site's consent in ``data_dir`` / :data:`CONSENT_FILE`, and load it (the
        admin API's start calls this).

        Raises:
            ConfigError: the file exists and is damaged (not the JSON this module writes): remove
                it (the consent is withdrawn) and start the site again."""
        path = Path(data_dir) / CONSENT_FILE
        consent = None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read this site's consent to leave members behind: {err}",
                              path=str(path)) from None
        if raw is not None:
            try:
                consent = json.loads(raw)
            except ValueError:
                consent = None
            if not _consent_ok(consent):
                raise ConfigError(f"{path} is damaged (this site's consent to raise the rules leaving members "
                                  "behind): remove it to withdraw the consent, then start the site",
                                  path=str(path))
        self._consent_path, self._consent = path, consent

    def consent(self) -> dict | None:
        """This site's operator's consent in force (:data:`CONSENT_FILE`, not expired, given for a
        raise to this code's :data:`RULES_MAX` and the cluster's rules still below it: a consent is
        for one raise, and is not served for a later one), or None."""
        c = self._consent
        if (c is None or c["expires_ns"] <= time.time_ns() or c["to"] != RULES_MAX
                or rules(self.cluster.view()) >= RULES_MAX):
            return None
        return dict(c)

    def give_consent(self, leave_behind: Any, reason: Any, by: str) -> dict:
        """Record (durably, then serve in the report) this site's operator's consent to raise the
        rules leaving ``leave_behind`` behind; it replaces an earlier one and expires after
        :data:`CONSENT_TTL_S`. ``by``: the operator's token name (the admin audit log has it too).
        Returns the consent.

        Raises:
            UsageError: ``leave_behind`` not a non-empty list of distinct unrevoked members of the
                agreed membership other than this site, or ``reason`` not a non-empty printable
                string of at most :data:`REASON_MAX_CHARS`.
            ConflictError: the cluster's rules are at this code's ``RULES_MAX`` already, or no
                agreed membership yet.
            OSError: the file could not be written (nothing changed)."""
        view = self.cluster.view()
        current = rules(view)
        if current >= RULES_MAX:
            raise ConflictError(f"the cluster's rules are at {current} already: nothing to raise", rules=current)
        if view.get("incarnation") is None:
            raise ConflictError("the cluster is not founded yet: no agreed membership to leave members of")
        members = cluster_state.rules_members(view)
        if not (isinstance(leave_behind, list) and leave_behind and len(leave_behind) <= cluster_state.SITES_MAX
                and all(isinstance(s, str) for s in leave_behind) and len(set(leave_behind)) == len(leave_behind)):
            raise UsageError("leave_behind must be a non-empty list of distinct site ids", field="leave_behind")
        unknown = sorted(s for s in leave_behind if s not in members)
        if unknown:
            raise UsageError(f"leave_behind {unknown}: not unrevoked members of the agreed membership "
                             f"({', '.join(members)})", field="leave_behind", members=members)
        if self.site_id in leave_behind:
            raise UsageError(f"leave_behind names this site ({self.site_id}): consent at another site",
                             field="leave_behind")
        if not (isinstance(reason, str) and reason.strip() and len(reason) <= REASON_MAX_CHARS
                and cluster_state.printable(reason)):
            raise UsageError(f"reason: why these members are left behind (printable, at most {REASON_MAX_CHARS} "
                             "characters)", field="reason")
        if self._consent_path is None:
            raise ConflictError("this site keeps no consent (no data dir)")
        now = time.time_ns()
        consent = {"leave_behind": sorted(leave_behind), "reason": reason, "by": str(by)[:128], "to": RULES_MAX,
                   "at_ns": now, "expires_ns": now + int(CONSENT_TTL_S * 1e9)}
        write_durably(self._consent_path, json.dumps(consent, sort_keys=True).encode())
        self._consent = consent
        log.warning("AUDIT site %s: operator %s consents to raise the cluster's rules to %d leaving behind %s "
                    "(until %s UTC): %s", self.site_id, consent["by"], RULES_MAX, ", ".join(consent["leave_behind"]),
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(consent["expires_ns"] / 1e9)), reason)
        return dict(consent)

    def cancel_consent(self, by: str) -> dict | None:
        """Withdraw this site's consent (remove :data:`CONSENT_FILE`, durably); the one withdrawn, or
        None when there was none. A report served before stays good for the state's 10 minutes.

        Raises:
            OSError: the file could not be removed."""
        old = self._consent
        if self._consent_path is not None:
            try:
                self._consent_path.unlink()
            except FileNotFoundError:
                pass
            else:
                fsync_dir(self._consent_path.parent)
        self._consent = None
        if old is not None:
            log.warning("AUDIT site %s: operator %s withdrew the consent to leave behind %s", self.site_id,
                        str(by)[:128], ", ".join(old["leave_behind"]))
        return old

    # ------------------------------------------------------------------ the report
    def own_report(self) -> dict | None:
        """``{"site_id", "rules_max", "at_ns", "sig"}`` (``sig`` base64 or None unsigned), stamped
        now, and ``leave_behind`` (sorted site ids, signed with the rest) while this site's operator
        consents (:meth:`consent`); None when this site serves none (lab knob 0)."""
        if self.reported_max is None:
            return None
        now = time.monotonic()
        consent = self.consent()
        leave_behind = consent["leave_behind"] if consent is not None else None
        key = (self.reported_max, self.signer, tuple(leave_behind) if leave_behind is not None else None)
        if self._report is not None and self._report[1] == key and now - self._report[0] < REPORT_REUSE_S:
            return self._report[2]  # a flood of asks costs one signature a second
        at_ns = time.time_ns()
        sig = (self.signer.sign_release_report(self.reported_max, at_ns, leave_behind)
               if self.signer is not None else None)
        report = {"site_id": self.site_id, "rules_max": self.reported_max, "at_ns": at_ns,
                  "sig": base64.b64encode(sig).decode() if sig is not None else None}
        if leave_behind is not None:
            report["leave_behind"] = list(leave_behind)
        self._report = (now, key, report)
        return report

    def route(self) -> web.RouteDef:
        """``GET /v1/peer/release`` on the peer API: :meth:`own_report` as JSON, 404 when none."""

        async def release(request: web.Request) -> web.Response:
            report = self.own_report()
            if report is None:
                raise web.HTTPNotFound()
            return web.json_response(report)

        return web.get(ROUTE, release)

    # ------------------------------------------------------------------ asking the members
    async def _ask(self, site: str, url: str | None) -> tuple[list | None, int | None, str | None]:
        """``(report entry [rules_max, at_ns, sig], rules_max, problem)`` of one member."""
        if site == self.site_id:
            body = self.own_report()
            if body is None:
                return None, None, "no release report (an older release)"
        elif url is None or self.session is None:
            return None, None, "no peer URL known"
        else:
            try:
                async with self.session.get(url.rstrip("/") + ROUTE, timeout=ASK_TIMEOUT) as resp:
                    if resp.status == 404:
                        return None, None, "no release report (an older release)"
                    raw = b""
                    while len(raw) <= REPORT_MAX_BYTES:
                        piece = await resp.content.read(REPORT_MAX_BYTES + 1 - len(raw))
                        if not piece:
                            break
                        raw += piece
                    if resp.status != 200 or len(raw) > REPORT_MAX_BYTES:
                        return None, None, f"malformed release report (HTTP {resp.status}, {len(raw)} bytes)"
                    body = json.loads(raw)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                return None, None, f"not reachable ({type(err).__name__})"
            except ValueError:
                return None, None, "malformed release report (not JSON)"
        if not isinstance(body, dict) or body.get("site_id") != site:
            return None, None, "malformed release report (another site's)"
        rules_max, at_ns, sig_text = body.get("rules_max"), body.get("at_ns"), body.get("sig")
        if not (type(rules_max) is int and type(at_ns) is int and 0 <= rules_max < 2**16 and 0 <= at_ns < 2**63
                and (sig_text is None or (isinstance(sig_text, str) and len(sig_text) <= 128))):
            return None, None, "malformed release report"
        try:
            sig = base64.b64decode(sig_text, validate=True) if sig_text is not None else None
        except (binascii.Error, ValueError):
            return None, None, "malformed release report (signature)"
        if "leave_behind" not in body:
            return [rules_max, at_ns, sig], rules_max, None
        leave_behind = body["leave_behind"]
        if not cluster_state.leave_behind_ok(leave_behind):
            return None, None, "malformed release report (leave_behind)"
        return [rules_max, at_ns, sig, list(leave_behind)], rules_max, None

    async def collect(self, target: int) -> tuple[dict, dict[str, dict]]:
        """Ask every member (:func:`~replicad.core.state.rules_members` of the current view) at
        once. Returns ``(reports, members)``: ``reports`` ``{site: [rules_max, at_ns, sig]}`` (with
        ``leave_behind`` as a 4th element when the member's operator consents) for the raise
        command; ``members`` ``{site: {"rules_max", "problem"}}``, ``problem`` None only when the
        state machine would count that member's report for rules ``target``."""
        view = self.cluster.view()
        urls = {s.site_id: str(s.peer_url) for s in self.cluster.sites()}
        for site, entry in (view.get("sites") or {}).items():
            urls.setdefault(site, entry.get("peer_url"))
        sites = cluster_state.rules_members(view)
        answers = await asyncio.gather(*(self._ask(site, urls.get(site)) for site in sites))
        reports = {site: entry for site, (entry, _, _) in zip(sites, answers) if entry is not None}
        checked = cluster_state.rules_reports_problems(view, reports, target, self.trust())
        members = {site: {"rules_max": rules_max, "problem": problem or checked.get(site)}
                   for site, (_, rules_max, problem) in zip(sites, answers)}
        return reports, members

    # ------------------------------------------------------------------ the wait
    async def run(self, stopping: asyncio.Event) -> None:
        """Until the state's rules reach this code's :data:`RULES_MAX` (or ``stopping``): ask the
        members every :data:`POLL_S`; propose the raise once every one reported a release applying
        it, or once a majority did and a majority of the operators consent to leave the others
        behind (their consents, served in their reports, cover every member without a good one).
        A refused or unanswered proposal is logged and asked again at the next round."""
        target = RULES_MAX
        while not stopping.is_set():
            current = rules(self.cluster.view())
            if current >= target:
                self._done(current)
                return
            try:
                reports, self.members = await self.collect(target)
                behind = {site: m["problem"] for site, m in self.members.items() if m["problem"] is not None}
                view = self.cluster.view()
                if view.get("incarnation") is None or cluster_state.quorum_now_ns(view) is None:
                    # the state machine judges a report's age by the majority clock: none yet (a cluster
                    # just founded) would refuse the raise (rules_no_clock), as an unknown op under rules 1
                    behind = {**behind, "cluster": "no majority clock yet (its clock reports come every 5 s)"}
                checked = cluster_state.rules_reports_problems(view, reports, target, self.trust())
                self.consented = cluster_state.rules_consents(view, reports, checked) if checked else []
                needed = len(self.members) // 2 + 1
                if self.members and not behind:
                    await self._propose(target, reports)
                elif (self.members and "cluster" not in behind and len(self.members) - len(checked) >= needed
                      and len(self.consented) >= needed):
                    await self._propose(target, reports, left_behind=checked)
                else:
                    self._wait(current, target, behind)
            except Exception:  # never let one bad round end the wait: the raise would never come
                log.exception("site %s: a round of the rules raise failed; asking again in %.0f s", self.site_id,
                              POLL_S)
            try:
                await asyncio.wait_for(stopping.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass

    async def watch(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: once the state is founded at this code's :data:`RULES_MAX` (a cluster
        founded under them, or raised), ask the members for their reports every :data:`LOG_EVERY_S`
        and name at ERROR each member whose release does not apply them (no report: an older
        release; or a lower ``rules_max``): it cannot decide like the others (release b976d0a
        refuses a founding that carries the rules and never joins such a cluster, and decides a
        raised one under rules 1). Its status ``rules.members`` says so too. A member not reachable
        is not named (down, not behind). Never raises."""
        while not stopping.is_set():
            try:
                view = self.cluster.view()
                current = rules(view)
                if current >= RULES_MAX and view.get("incarnation") is not None and not self.waiting:
                    _, members = await self.collect(current)
                    self.members = members
                    behind = {site: m["problem"] for site, m in members.items()
                              if (m["rules_max"] is None and str(m["problem"]).startswith("no release report"))
                              or (m["rules_max"] is not None and m["rules_max"] < current)}
                    if behind:
                        log.error("site %s: the cluster's rules are %d and %s: %s; such a member cannot decide like "
                                  "the others (a site on release b976d0a never joins a cluster founded under them, "
                                  "and parts from one raised since): upgrade it", self.site_id, current,
                                  "these members run a release that does not apply them",
                                  "; ".join(f"{site}: {why}" for site, why in sorted(behind.items())))
            except Exception:  # never let one bad round end the watch
                log.exception("site %s: a round of asking the members for their releases failed", self.site_id)
            try:
                await asyncio.wait_for(stopping.wait(), LOG_EVERY_S)
            except asyncio.TimeoutError:
                pass

    async def _propose(self, target: int, reports: dict, left_behind: dict[str, str] | None = None) -> None:
        try:
            res = await self.cluster.propose("rules", to=target, reports=reports)
        except ReplicadError as err:  # a report gone stale, a member changed, no quorum: the next round
            log.warning("site %s: raising the cluster's rules to %d was not applied: %s %s; asking again in %.0f s",
                        self.site_id, target, err, err.evidence, POLL_S)
            return
        if res.get("changed") and res.get("behind"):
            self.raised_here = True
            log.warning("AUDIT site %s: the cluster's rules raised %s -> %s leaving behind %s (the operators of %s "
                        "consented; a member left behind parts from the others until it is upgraded and its Raft "
                        "state rebuilt)", self.site_id, res.get("previous"), res.get("rules"),
                        "; ".join(f"{s}: {why}" for s, why in sorted(res["behind"].items())),
                        ", ".join(res.get("consented") or ()))
        elif res.get("changed"):
            self.raised_here = True
            log.warning("AUDIT site %s: the cluster's rules raised %s -> %s (every member reported a release "
                        "applying them: %s)", self.site_id, res.get("previous"), res.get("rules"),
                        ", ".join(f"{s} 1..{r[0]}" for s, r in sorted(reports.items())))

    def _wait(self, current: int, target: int, behind: dict[str, str]) -> None:
        now = time.monotonic()
        if not self.waiting:
            self.waiting, self.waiting_since = True, time.time()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            sites = sorted(s for s in behind if s != "cluster")
            mine = self.consent()
            log.warning("site %s: the cluster's rules stay at %d until every member runs a release applying rules "
                        "%d (a rolling upgrade in progress: upgrade these sites): %s.%s", self.site_id, current, target,
                        "; ".join(f"{site}: {why}" for site, why in sorted(behind.items())) or "no member known yet",
                        (f" If a member cannot be upgraded soon or is suspected hostile, a majority of the "
                         f"operators can leave it behind: each runs at their own site `replicad raise-rules "
                         f"--leave-behind {','.join(sites)} --reason '...'` (consents in force: "
                         f"{', '.join(self.consented) or 'none'}; here: "
                         f"{', '.join(mine['leave_behind']) if mine else 'none'})") if sites else "")

    def _done(self, current: int) -> None:
        if self.waiting or self.raised_here is None:
            if self.raised_here is None:
                self.raised_here = False
            if self.waiting:
                log.info("site %s: the cluster's rules are at %d: nothing left to wait for", self.site_id, current)
        self.waiting = False

    def status(self) -> dict:
        """``{"version", "max", "reported_max", "waiting", "waiting_since", "members", "consent",
        "consented", "applied", "vouches"}`` for ``GET /v1/status`` (``rules``): the state's rules
        version, this code's ``RULES_MAX``, what this site reports, whether it waits for members'
        reports to raise, since when (epoch seconds), each member's last answer ``{"rules_max",
        "problem"}``, this site's operator's consent in force (:meth:`consent`, or None) and the
        members whose served consents cover the members behind (last round); and,
        to compare the sites' states through an upgrade, the commands applied here (``applied``)
        and the checkpoint digests each member vouched (``{site: {n: hex digest}}``, Raft
        state): equal digests at the same ``n`` are equal states."""
        view = self.cluster.view()
        vouches = {str(site): {str(n): bytes(d).hex() for n, d in kept if isinstance(d, (bytes, bytearray))}
                   for site, kept in sorted((view.get("vouches") or {}).items())}
        waiting = self.waiting and rules(view) < RULES_MAX  # raised by another site since the last round
        return {"version": rules(view), "max": RULES_MAX, "reported_max": self.reported_max,
                "waiting": waiting, "waiting_since": self.waiting_since if waiting else None,
                "members": {site: dict(m) for site, m in sorted(self.members.items())},
                "consent": self.consent(), "consented": list(self.consented) if waiting else [],
                "applied": view.get("applied"), "vouches": vouches}


def _consent_ok(c: Any) -> bool:
    """:data:`CONSENT_FILE`'s content as :meth:`RulesRaise.give_consent` writes it."""
    return (isinstance(c, dict) and set(c) == {"leave_behind", "reason", "by", "to", "at_ns", "expires_ns"}
            and cluster_state.leave_behind_ok(c["leave_behind"]) and bool(c["leave_behind"])
            and isinstance(c["reason"], str) and isinstance(c["by"], str)
            and all(type(c[k]) is int and c[k] >= 0 for k in ("to", "at_ns", "expires_ns")))
