"""Faults, each recorded in the history as ``{op: "nemesis", f: <fault>, ...}`` (invoke then ok/fail).

Faults (DESIGN §9): ``kill`` (SIGKILL) and ``start``; ``pause`` (SIGSTOP) and ``resume``
(SIGCONT); ``isolate``/``heal`` (the site's veth down/up: a total partition of that site);
``blackhole``/``unblackhole`` (one direction: ``site`` can no longer send to ``peer``);
``throttle``/``unthrottle`` (egress rate limit; this kernel has no ``netem``, so delay and
loss are approximated by a slow link); ``corrupt`` (one flipped byte in a pack file of one
site). The checker rebuilds from these events which sites could reach which at any instant.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

from .harness import Cluster, History

PACK_HEADER_BYTES = 16


class Nemesis:
    """Applies faults to a :class:`Cluster` and records them; :meth:`heal_all` undoes every
    network fault and resumes paused sites (killed sites are restarted)."""

    def __init__(self, cluster: Cluster, history: History, rng: random.Random) -> None:
        self.c = cluster
        self.h = history
        self.rng = rng
        self.isolated: set[str] = set()
        self.blackholes: set[tuple[str, str]] = set()
        self.throttled: set[str] = set()
        self.paused: set[str] = set()
        self.killed: set[str] = set()

    def _do(self, f: str, fn, **fields) -> None:
        self.h.record("invoke", "nemesis", f=f, **fields)
        try:
            fn()
        except Exception as err:  # noqa: BLE001 — recorded, then re-raised to the scenario
            self.h.record("fail", "nemesis", f=f, error=repr(err)[:300], **fields)
            raise
        self.h.record("ok", "nemesis", f=f, **fields)

    def kill(self, site: str) -> None:
        self._do("kill", lambda: self.c.signal(site, signal.SIGKILL), site=site)
        self.killed.add(site)
        self.paused.discard(site)

    def start(self, site: str) -> None:
        self._do("start", lambda: self.c.start(site), site=site)
        self.killed.discard(site)

    def pause(self, site: str) -> None:
        self._do("pause", lambda: self.c.signal(site, signal.SIGSTOP), site=site)
        self.paused.add(site)

    def resume(self, site: str) -> None:
        self._do("resume", lambda: self.c.signal(site, signal.SIGCONT), site=site)
        self.paused.discard(site)

    def isolate(self, site: str) -> None:
        self._do("isolate", lambda: self.c.link(site, False), site=site)
        self.isolated.add(site)

    def heal(self, site: str) -> None:
        self._do("heal", lambda: self.c.link(site, True), site=site)
        self.isolated.discard(site)

    def blackhole(self, site: str, peer: str) -> None:
        self._do("blackhole", lambda: self.c.blackhole(site, peer, True), site=site, peer=peer)
        self.blackholes.add((site, peer))

    def unblackhole(self, site: str, peer: str) -> None:
        self._do("unblackhole", lambda: self.c.blackhole(site, peer, False), site=site, peer=peer)
        self.blackholes.discard((site, peer))

    def throttle(self, site: str, rate: str = "512kbit") -> None:
        self._do("throttle", lambda: self.c.throttle(site, rate), site=site, rate=rate)
        self.throttled.add(site)

    def unthrottle(self, site: str) -> None:
        self._do("unthrottle", lambda: self.c.throttle(site, None), site=site)
        self.throttled.discard(site)

    def corrupt(self, site: str) -> dict:
        """Flip one byte in the payload area of the largest pack file of ``site``. Returns
        ``{pack, offset}``. Raises FileNotFoundError if the site has no pack."""
        packs = sorted((self.c.sites[site].data_dir / "chunks").rglob("*.pack"))
        if not packs:
            raise FileNotFoundError(f"{site} has no pack file")
        pack = max(packs, key=lambda p: p.stat().st_size)
        size = pack.stat().st_size
        offset = self.rng.randrange(PACK_HEADER_BYTES + (size - PACK_HEADER_BYTES) // 4, size)
        where = {"pack": str(pack), "offset": offset}

        def flip() -> None:
            with open(pack, "r+b") as f:
                f.seek(offset)
                byte = f.read(1)
                f.seek(offset)
                f.write(bytes([byte[0] ^ 0x5A]))
                f.flush()
                os.fsync(f.fileno())

        self._do("corrupt", flip, site=site, **where)
        return where

    def heal_all(self) -> None:
        """Undo every active fault: resume, reconnect, unthrottle, restart killed sites."""
        for s in sorted(self.paused):
            self.resume(s)
        for s in sorted(self.isolated):
            self.heal(s)
        for s, p in sorted(self.blackholes):
            self.unblackhole(s, p)
        for s in sorted(self.throttled):
            self.unthrottle(s)
        for s in sorted(self.killed):
            self.start(s)


def pack_files(data_dir: Path) -> list[Path]:
    """Pack files of a site's chunk store."""
    return sorted((Path(data_dir) / "chunks").rglob("*.pack"))
