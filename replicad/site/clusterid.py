"""Tell a ``cluster_id`` typo from a key mismatch or an impostor on the Raft port.

The signed Raft handshake (:mod:`replicad.consensus.channel`) signs a transcript that starts with
the cluster id, so two sites whose configs name different ``cluster_id`` values refuse each
other exactly as they would refuse an impostor (``bad_identity``): the signature alone cannot
say which cluster id the other end used. This module does not touch that check. It only asks:
every :data:`CHECK_EVERY_S`, for each configured site whose handshake failed as
``bad_identity`` within :data:`WINDOW_S`, this site asks that site's peer API which cluster its
config names (``GET /v1/peer/hello``, field ``cluster_id``: not a secret, drill reports carry it)
and logs, at most once per :data:`LOG_EVERY_S` per site:

* ERROR ``cluster id mismatch``: the site answers another cluster id than this site's config
  names: both ids are named, and which one the other configured sites answer (the majority's
  is most likely the right one), so the operator fixes the one config that differs;
* WARNING ``... same cluster id``: the ids agree, so the failure is not a cluster id typo: the key
  pinned for that site here (``[[sites]] public_key``) is not the one it signs with, or someone
  else answers at its address.

Only the dialing end of a connection checks a signature that fails; the accepting end sees the
dialer drop the connection after its signed answer, which it notes too
(``RefusalLog.note_bad_identity(abandoned=True)``), so both ends name a cluster id that differs;
for a site only noted that way and answering the same id, nothing is logged (a pause or a
restart drops a handshake too).

What a site answers is never trusted for anything but these lines: the handshake stays refused
either way. A site whose peer API cannot be reached, or that answers no ``cluster_id`` (an
older release), gets no line (the channel's own ``raft refused [bad_identity]`` line stays).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from replicad.core.errors import ReplicadError

log = logging.getLogger(__name__)

CHECK_EVERY_S = 10.0
"""How often the refusals are looked at (seconds)."""
WINDOW_S = 60.0
"""A site is asked when its handshake failed as ``bad_identity`` within this many seconds."""
LOG_EVERY_S = 60.0
"""At most one line per site per this many seconds (the finding stays true until a config changes)."""


def mismatch_line(own_site: str, own_cluster: str, peer: str, peer_cluster: str,
                  others: dict[str, str]) -> str:
    """The ERROR text for ``peer`` answering ``peer_cluster`` while this site's config names
    ``own_cluster``. ``others``: site -> cluster id answered by the other sites asked (may be
    empty). Pure."""
    agree = sorted(s for s, c in others.items() if c == own_cluster)
    with_peer = sorted(s for s, c in others.items() if c == peer_cluster)
    if len(agree) > len(with_peer):
        side = (f"; {', '.join(agree)} {'answers' if len(agree) == 1 else 'answer'} {own_cluster!r} as this site "
                f"does, so {peer}'s config is most likely the one to fix")
    elif len(with_peer) > len(agree):
        side = (f"; {', '.join(with_peer)} {'answers' if len(with_peer) == 1 else 'answer'} {peer_cluster!r} too, "
                f"so this site's config is most likely the one to fix")
    else:
        side = ""
    return (f"cluster id mismatch: site {peer} answers that it belongs to cluster {peer_cluster!r} while this site's "
            f"({own_site}) config says cluster_id = {own_cluster!r}: the Raft handshakes between them are refused "
            f"(bad_identity) because each end signs its cluster id, not because of a key or an impostor{side}. "
            f"Every site of a cluster needs the same cluster_id: fix it in the config of the site that differs "
            f"and restart that site (README 'A cluster_id that differs')")


def same_cluster_line(peer: str, cluster: str) -> str:
    """The WARNING text when ``peer`` answers the same cluster id ``cluster``. Pure."""
    return (f"Raft handshakes with site {peer} are refused (bad_identity) though it answers the same cluster id "
            f"{cluster!r}: not a cluster_id typo; the public_key pinned for {peer} in this site's [[sites]] is not "
            f"the key it signs with (compare with `replicad identity` at {peer}), or another host answers at its "
            f"Raft address")


class ClusterIdCheck:
    """The watch of one site (see the module docstring).

    Args:
        site_id, cluster_id: this site's id and its config's ``cluster_id`` (read at each check).
        bad_identity_sites: ``(within_s) -> {site: abandoned}`` (``RefusalLog.bad_identity_sites``).
        peer_url: ``site -> URL`` of its peer API (raises for an unknown site).
        sites: ``() -> [site]`` the configured sites (this one included).
        hello: ``async (url) -> dict`` (``PeerClient.hello``).
    """

    def __init__(self, site_id: str, cluster_id: Callable[[], str], bad_identity_sites: Callable[[float], dict[str, bool]],
                 peer_url: Callable[[str], str], sites: Callable[[], list[str]],
                 hello: Callable[[str], Any]) -> None:
        self.site_id = site_id
        self.cluster_id = cluster_id
        self.bad_identity_sites = bad_identity_sites
        self.peer_url = peer_url
        self.sites = sites
        self.hello = hello
        self._logged: dict[str, float] = {}

    async def _answer(self, site: str) -> str | None:
        try:
            doc = await self.hello(self.peer_url(site))
        except (ReplicadError, asyncio.TimeoutError) as err:
            log.debug("cluster id check: %s not asked: %s", site, err)
            return None
        cid = doc.get("cluster_id")
        return cid if isinstance(cid, str) else None

    async def check_once(self) -> list[str]:
        """Ask each site refused as ``bad_identity`` lately (and not logged within
        :data:`LOG_EVERY_S`) and log what it answers. Returns the lines logged. Never raises
        for a peer's answer."""
        now = time.monotonic()
        noted = self.bad_identity_sites(WINDOW_S)
        due = [s for s in noted if s != self.site_id and now - self._logged.get(s, float("-inf")) >= LOG_EVERY_S]
        if not due:
            return []
        own = self.cluster_id()
        lines = []
        answers: dict[str, str] = {}
        for s in due:
            if (cid := await self._answer(s)) is not None:
                answers[s] = cid
        others: dict[str, str] = {}
        if any(c != own for c in answers.values()):
            for s in self.sites():
                if s != self.site_id and s not in answers and (cid := await self._answer(s)) is not None:
                    others[s] = cid
        for s, cid in answers.items():
            self._logged[s] = now
            if cid != own:
                line = mismatch_line(self.site_id, own, s, cid,
                                     {**{o: c for o, c in answers.items() if o != s}, **others})
                log.error("%s", line)
            elif noted[s]:  # it only dropped our answer (paused, restarted, or it pins another key for us)
                continue
            else:
                line = same_cluster_line(s, own)
                log.warning("%s", line)
            lines.append(line)
        return lines

    async def run(self) -> None:
        """:meth:`check_once` every :data:`CHECK_EVERY_S` until cancelled."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - a diagnosis must never stop the site
                log.exception("cluster id check failed")
