"""This site's view of the cluster: the Raft handle (proposals retried through elections,
the applied state, whether that view is current) and the configured members.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from replicad.config import SiteConfig, SiteRef
from replicad.consensus.raft import RaftNode
import msgpack

from replicad.core.errors import CommitUnknownError, LeaderFrontRunError, NoQuorumError, NotFoundError
from replicad.core.state import is_revoked, list_requests, quorum_now_ns

PROPOSE_TIMEOUT_S = 5.0
PROPOSE_DEADLINE_S = 15.0   # how long a proposal waits for a leader election (seen: 0.5-2.1 s)
VIEW_WAIT_S = 5.0           # how long an operator's request waits for a stale view to become current
REQUEST_ANSWER_MARGIN = 10  # a pending request answers an identical new one only while more than 1/10 of the
                            # request lifetime ([policy] request_ttl) is left by the majority clock


class Cluster:
    """Raft and membership as seen from site ``site_id``.

    Args:
        site_id: this site.
        raft: the started (or starting) Raft node.
        cfg: returns the site's current configuration (it changes on reload).
    """

    def __init__(self, site_id: str, raft: RaftNode, cfg: Callable[[], SiteConfig]) -> None:
        self.site_id = site_id
        self.raft = raft
        self.cfg = cfg

    async def propose(self, op: str, *, deadline_s: float = PROPOSE_DEADLINE_S, **args: Any) -> dict:
        """Propose a command through Raft as this site and return its result.

        Retries the *same* command (same ``op_id``, so it applies at most once) while no
        leader is reachable — e.g. during the election that follows the loss of the leader
        — until ``deadline_s``; then NoQuorumError: a minority partition cannot commit.
        State machine refusals (StaleEpochError, ConflictError ...) are raised at once.
        A command answered ``leader_front_run`` (:class:`LeaderFrontRunError`: under rules 1 and
        2 only, the leader put another site's command with its op id before it, decided before
        any try of this one, and it was answered with that one's stored result, not applied;
        ``replicad.consensus.raft`` point 21) is proposed again as a new command (new ``op_id``
        and stamp) within the same deadline: its op id was never decided (an answer from the
        exactly-once memory enters no replay memory; a try of it decided before the other
        site's command is never answered ``leader_front_run``, so a retry after a timeout is not
        proposed twice), so it applies at most once unless a site replays its bytes after the
        other site's stored answer left the memory (``state.APPLIED_OPS_MAX`` newer answers) and
        inside the replay window: rules 3 close that (the command is applied, never answered from another site's answer).

        A ``request`` (``action``, ``args``) identical to a pending request of this site in the
        current view (:meth:`identical_pending_request`) is answered with that request, not
        proposed: an operator trying again after a failure that was not one (the first try
        committed through a relay) made a second request each time until the site's quota of
        pending requests was used up (attacker review r14, A2). Another site's identical request
        is the caller's to answer (the admin API points the operator to approving it); this
        site's own daemon tasks still make their own. Not committed by the deadline while
        this site holds a Raft leader deposed: :class:`CommitUnknownError` (the command may
        have committed through another member's relay; look before trying again).
        """
        if op == "request":
            existing = self.identical_pending_request(args.get("action"), args.get("args"))
            if existing is not None and existing["by"] == self.site_id:
                return existing
        cmd = {"op": op, "by": self.site_id, "now_ns": time.time_ns(), "op_id": uuid.uuid4().hex, **args}
        deadline = time.monotonic() + deadline_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self.raft.propose(cmd, timeout_s=max(0.5, min(PROPOSE_TIMEOUT_S, remaining)))
            except LeaderFrontRunError:
                if time.monotonic() + 0.3 >= deadline:
                    raise
                cmd = {**cmd, "now_ns": time.time_ns(), "op_id": uuid.uuid4().hex}
                await asyncio.sleep(0.3)
            except NoQuorumError as err:
                if time.monotonic() + 0.3 >= deadline:
                    raise self._unknown_while_deposing(err, cmd) from None
                await asyncio.sleep(0.3)

    def _unknown_while_deposing(self, err: NoQuorumError, cmd: dict) -> NoQuorumError:
        """``err``, the last failure of a proposal at its deadline, as the operator must read it: a
        :class:`CommitUnknownError` when this node holds a Raft leader deposed (``status()["deposed"]``:
        it applies nothing from that leader for the hold, while the other members may follow it and
        commit this site's command relayed through them, raft point 20), else ``err`` itself; a
        proposal the leader refused at its door (``reason`` ``request_denied``) stays ``err``."""
        try:
            deposed = self.raft.status().get("deposed") or {}
        except Exception:  # status is a hint here: the original error stands
            deposed = {}
        if not deposed or (err.evidence or {}).get("reason") == "request_denied":
            return err
        held = ", ".join(f"{addr} (site {d.get('site') or 'not known'}, {d.get('hold_s', 0):.0f}s left)"
                         for addr, d in sorted(deposed.items()))
        return CommitUnknownError(
            f"it is NOT known whether this {cmd.get('op')} committed: this site deposed the Raft leader {held} and "
            "applies nothing from it meanwhile, but the other sites may follow it and commit this command relayed "
            "through them. Look before trying again (replicad requests, or replicad status at another site): "
            "a new try is a new command", op=cmd.get("op"), op_id=cmd.get("op_id"), reason=(err.evidence or {}).get(
                "reason"), deposed={addr: d.get("site") for addr, d in deposed.items()})

    def identical_pending_request(self, action: Any, args: Any) -> dict | None:
        """The answer of a pending (not expired) request with exactly ``action`` and ``args``
        (compared as the state stores them: after a msgpack round trip) in the applied state,
        when this site's view is current (:meth:`raft_synced`; a stale view may show a request
        pending that expired or applied since): ``{"ok": True, "request", "status": "pending",
        "approvals", "needed", "expires_ns", "by", "reason", "existing": True, "identical": [...]}``
        -- the oldest such request of this site, else the OLDEST of another site (``by`` names it:
        the caller points the operator to approving it) -- else None. ``identical`` lists every
        such request, oldest first (``{"request", "by", "approvals", "needed", "expires_ns",
        "reason"}``): the operator sees each site that asked for the same change and who approved
        which. The oldest, not the newest: a site that filed a copy of an honest site's pending
        request had the next honest operator pointed to its copy, approved, and withdrew it during
        the cooling-off, voiding the approvals of a majority's change (attack review R16, F1; such
        a withdrawal is logged at ERROR and counted at every site, ``site.daemon``). A request
        with less than a tenth of
        the request lifetime (``[policy] request_ttl``; :data:`REQUEST_ANSWER_MARGIN`) left before
        its ``expires_ns`` by the majority clock answers nothing: it would likely expire before
        another site's operator approves it, so the new request (its reason kept) is made instead.
        A tenth rather than a fixed time: it scales with the lifetime an operator chose (2.4 h of
        the default 24 h: time to reach an operator at another site; 60 s of the shortest, 10
        min). Read only: proposes nothing, decides nothing in the state machine (whose decisions
        stay those of every rules version)."""
        if not isinstance(action, str) or not isinstance(args, dict) or not self.raft_synced():
            return None
        try:
            wanted = msgpack.unpackb(msgpack.packb(args, use_bin_type=True), raw=False)
        except (TypeError, ValueError, OverflowError):
            return None  # the state machine refuses what does not encode: nothing can equal it
        view = self.view()
        now = quorum_now_ns(view)  # None: no majority clock, nothing expires yet
        margin_ns = int(self.cfg().policy.request_ttl_s * 1e9) // REQUEST_ANSWER_MARGIN
        same = [r for r in list_requests(view)
                if r.get("status") == "pending" and r.get("action") == action and r.get("args") == wanted
                and (now is None or int(r["expires_ns"]) - now > margin_ns)]
        same.reverse()  # list_requests: newest first; oldest first here
        identical = [{"request": r["id"], "by": r.get("by"), "approvals": list(r["approvals"]), "needed": r["needed"],
                      "expires_ns": r["expires_ns"], "reason": r.get("reason")} for r in same]
        for r in sorted(same, key=lambda r: r.get("by") != self.site_id):  # stable: oldest first within each
            return {"ok": True, "request": r["id"], "status": "pending", "approvals": list(r["approvals"]),
                    "needed": r["needed"], "expires_ns": r["expires_ns"], "by": r.get("by"),
                    "reason": r.get("reason"), "existing": True, "identical": identical}
        return None

    def raft_synced(self) -> bool:
        """True when this site's applied Raft state is current: a leader is known, a majority is
        connected, and everything the *leader* reported committed is applied here (or was
        within ``raft.SYNCED_GRACE_S``; never before this node first caught up after its start:
        ``status()["caught_up"]``).

        A restarted site replays an old log first; acting on that view would act under a
        superseded epoch (found by the chaos campaign, crash-all seeds 2 and 3). A follower
        that cannot catch up (behind its leader's log start, and its leader cannot send or it
        cannot store the dump) applies everything *its own* commit index covers, which stops
        where its log stops: comparing with that index called such a site synced while it was
        stuck (issue 13); the leader's commit index does not. The Raft node logs a WARNING
        while it stays behind without progress (``raft.CATCH_UP_STALL_S``).
        """
        st = self.raft.status()
        # has_quorum: pysyncobj keeps a lone node's last leader forever (it only starts an
        # election when connected to someone), so "a leader is known" alone proves nothing.
        return (st.get("leader") is not None and bool(st.get("has_quorum"))
                and st.get("last_applied", 0) >= st.get("commit_index", 0) and bool(st.get("caught_up")))

    async def wait_synced(self, timeout_s: float = PROPOSE_DEADLINE_S) -> None:
        """Wait until :meth:`raft_synced`; NoQuorumError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.raft_synced():
            if time.monotonic() >= deadline:
                st = self.raft.status()
                partners = st.get("partners") or {}
                raise NoQuorumError(
                    "this site's view of the cluster is not current (no Raft leader, or the log is still being "
                    "applied): run it at a site that reaches a majority, or wait; 'replicad status' there says why",
                    site=self.site_id, leader=st.get("leader"), has_quorum=st.get("has_quorum"),
                    caught_up=st.get("caught_up"), behind_s=round(float(st.get("behind_s") or 0.0), 1),
                    connected=f"{sum(1 for up in partners.values() if up)} of {len(partners)} other sites")
            await asyncio.sleep(0.1)

    def view_freshness(self) -> dict:
        """How far this site's applied Raft view can be believed (issue 13, item 10; what
        ``/v1/status`` ``view``, ``replicad status`` and ``replicad_raft_view_*`` report).

        Returns ``{"current": bool, "age_s": float | None, "why": str | None}``:

        * ``current``: :meth:`raft_synced` (leader known, majority connected, the leader's
          commits applied here). Anything read from the view while False — the volume table,
          roles, epochs, the newest snapshots, standby lag — may be old.
        * ``age_s``: seconds since this site's own newest command reached its applied state:
          this site's clock now minus its own newest clock report in ``state["clocks"]`` (the
          daemon reports every ``CLOCK_REPORT_PERIOD_NS``, 5 s, so a current site reads about
          0-10 s; one cut off or restarted alone reads the time since it last committed).
          Both ends are this site's clock: no skew between sites enters it. None before this
          site's first report.
        * ``why``: None when current, else one sentence for the operator.
        """
        st = self.raft.status()
        current = self.raft_synced()
        mine = (self.view().get("clocks") or {}).get(self.site_id)
        age_s = max(0.0, (time.time_ns() - mine) / 1e9) if isinstance(mine, int) else None
        why = None
        if not current:
            why = ("no Raft leader known" if st.get("leader") is None
                   else "no Raft majority reachable" if not st.get("has_quorum")
                   else "this site has not applied what the Raft leader committed")
        return {"current": current, "age_s": age_s, "why": why}

    async def require_current(self, doing: str, timeout_s: float = VIEW_WAIT_S, **evidence: Any) -> None:
        """Return once this site's view is current (:meth:`raft_synced`), waiting up to
        ``timeout_s`` (a leader election); else raise :meth:`stale_view_error`."""
        deadline = time.monotonic() + timeout_s
        while not self.raft_synced():
            if time.monotonic() >= deadline:
                raise self.stale_view_error(doing, **evidence)
            await asyncio.sleep(0.1)

    def stale_view_error(self, doing: str, **evidence: Any) -> NoQuorumError:
        """The typed refusal (``no_quorum``, HTTP 503, exit 7) of an operator's request to
        ``doing`` (e.g. "commit a snapshot of ehr") at a site whose view is not current; its
        evidence carries ``view`` (:meth:`view_freshness`) and ``evidence``."""
        view = self.view_freshness()
        age = f"; its newest command applied here is {view['age_s']:.0f} s old" if view["age_s"] is not None else ""
        return NoQuorumError(f"{self.site_id} cannot {doing}: its view of the cluster is not current "
                             f"({view['why'] or 'it was not current a moment ago'}{age}). Nothing can commit "
                             "here until it reaches a Raft majority again; 'replicad status' at another site shows "
                             "the cluster as it is", site=self.site_id, view=view, **evidence)

    def view(self) -> dict:
        """The applied Raft state (read only: never mutate what this returns)."""
        return self.raft.view()

    def volume_state(self, name: str) -> dict | None:
        """The Raft entry of volume ``name`` (see ``core.state``), or None if unknown."""
        return self.raft.view()["volumes"].get(name)  # read only: never mutate what this returns

    def sites(self) -> tuple[SiteRef, ...]:
        """The configured sites of the cluster (this one included)."""
        return self.cfg().sites

    def peer_url(self, site_id: str) -> str:
        """The peer API URL of ``site_id``. Raises NotFoundError if it is not configured."""
        for s in self.cfg().sites:
            if s.site_id == site_id:
                return s.peer_url
        raise NotFoundError(f"unknown site {site_id}", site=site_id)

    def data_peers(self) -> list[str]:
        """The ids of every other site of kind ``data`` that the cluster has not revoked
        (:func:`replicad.core.state.is_revoked`): a revoked site is sent no snapshot and asked
        for no chunk (it would receive patient data, and could not count as a holder anyway)."""
        view = self.raft.view()
        return [s.site_id for s in self.cfg().sites
                if s.site_id != self.site_id and s.kind == "data" and not is_revoked(view, s.site_id)]

    def is_data_site(self, site_id: str) -> bool:
        """True if ``site_id`` is a configured site of kind ``data``."""
        return any(s.site_id == site_id and s.kind == "data" for s in self.cfg().sites)
