"""The idle time limit of the exports the admin API opens (issue 16: pins against retention).

An open export pins its snapshot at this site: retention keeps its local record and GC its
chunks however old it gets (ARCHITECTURE.md, "Snapshot exports"). Without a limit, an operator
token (or a stolen one) could hold up to ``MAX_EXPORTS`` (32) snapshots against retention for
ever. So every export opened through ``POST /v1/volumes/{volume}/exports`` has an **idle TTL**:
once nobody read or wrote a byte and no NBD connection was open for that long, the export is
closed, its pin released (logged ``AUDIT export ... closed (idle ...)`` by the exports room and a
WARNING here). The TTL is the site's ``[admin] export_idle_ttl`` (default 24 h), or less when
the request asks (``idle_ttl_s``; ``replicad export --ttl``): a token can shorten it, never
lengthen it. An open connection counts as use (a mounted snapshot is in use); the socket is
local (mode 0600), so only the daemon's user and root can hold one, not a remote token.

Exports opened by the daemon itself (instant recovery) are not registered here and have no
idle limit.

:func:`idle_step` decides (pure: values in, values out); :class:`IdleExports` runs it on the
event loop every :func:`check_interval_s` while an export it tracks is open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

from replicad.core.errors import NotFoundError, ReplicadError, UsageError

log = logging.getLogger("replicad.ops.exportlimits")

CHECK_INTERVAL_MAX_S = 30.0
CHECK_INTERVAL_MIN_S = 0.25


@dataclass(frozen=True)
class Tracked:
    """One export under the idle limit: ``ttl_s`` (seconds), ``activity`` (bytes read + written
    so far, as last seen), ``last_active_s`` (monotonic seconds of the last use seen)."""

    ttl_s: float
    activity: int
    last_active_s: float


def requested_ttl_s(value: Any, max_s: float) -> float:
    """The idle TTL an export request asks for: ``value`` (seconds, a number; None: ``max_s``).

    Raises UsageError when it is not a positive finite number or exceeds ``max_s`` (the site's
    ``[admin] export_idle_ttl``: a request may shorten the limit, never lengthen it)."""
    if value is None:
        return float(max_s)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UsageError("idle_ttl_s must be a positive number of seconds", field="idle_ttl_s")
    if value > max_s:
        raise UsageError(f"idle_ttl_s {value:g} exceeds this site's [admin] export_idle_ttl ({max_s:g} s): an "
                         "export request may shorten the idle limit, not lengthen it", field="idle_ttl_s",
                         max_s=max_s)
    return float(value)


def idle_step(tracked: Mapping[str, Tracked], exports: Iterable[Mapping[str, Any]],
              now_s: float) -> tuple[dict[str, Tracked], list[tuple[str, float]]]:
    """One check of the idle limit. Pure.

    Args:
        tracked: ``{export_id: Tracked}`` of the exports under the limit.
        exports: the open exports (``Export.to_dict()``: ``export_id``, ``connections``,
            ``bytes_read``, ``bytes_written``).
        now_s: monotonic seconds now.
    Returns:
        ``(tracked, to_close)``: the entries of the exports still open (use seen now: an open
        connection, or bytes read or written since the last check, moves ``last_active_s`` to
        ``now_s``) and ``[(export_id, idle_s)]`` of those idle for their ``ttl_s`` or longer
        (these stay tracked until their close succeeds).
    """
    out: dict[str, Tracked] = {}
    to_close: list[tuple[str, float]] = []
    for e in exports:
        t = tracked.get(e.get("export_id"))
        if t is None:
            continue
        activity = int(e.get("bytes_read") or 0) + int(e.get("bytes_written") or 0)
        if activity != t.activity or int(e.get("connections") or 0) > 0:
            t = replace(t, activity=activity, last_active_s=now_s)
        out[e["export_id"]] = t
        idle_s = now_s - t.last_active_s
        if idle_s >= t.ttl_s:
            to_close.append((e["export_id"], idle_s))
    return out, to_close


def check_interval_s(tracked: Mapping[str, Tracked]) -> float:
    """How often to check: a quarter of the shortest TTL, within 0.25..30 s."""
    shortest = min((t.ttl_s for t in tracked.values()), default=CHECK_INTERVAL_MAX_S * 4)
    return max(CHECK_INTERVAL_MIN_S, min(CHECK_INTERVAL_MAX_S, shortest / 4))


class IdleExports:
    """Closes the admin API's exports once idle for their TTL (module docstring).

    Args:
        exports: returns the site's ``Exports`` (``list()`` and ``close(export_id, why)``); a
            callable because the daemon makes its rooms at start, after the admin routes.
        background: the daemon's set of background tasks (cancelled when it stops); the
            checking task is added while something is tracked.
        clock: monotonic seconds (tests of the pure part pass their own).
    """

    def __init__(self, exports: Callable[[], Any], background: set[asyncio.Task],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.exports = exports
        self.background = background
        self.clock = clock
        self.tracked: dict[str, Tracked] = {}
        self._task: asyncio.Task | None = None

    def register(self, export: Mapping[str, Any], ttl_s: float) -> None:
        """Put the just opened ``export`` (``Export.to_dict()``) under the idle limit ``ttl_s``."""
        activity = int(export.get("bytes_read") or 0) + int(export.get("bytes_written") or 0)
        self.tracked[export["export_id"]] = Tracked(float(ttl_s), activity, self.clock())
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="export-idle-limit")
            self.background.add(self._task)
            self._task.add_done_callback(self.background.discard)

    def shown(self, export: Mapping[str, Any]) -> dict:
        """``export`` with ``idle_ttl_s`` and ``idle_s`` (None for an export without the limit)."""
        t = self.tracked.get(export.get("export_id"))
        if t is None:
            return {**export, "idle_ttl_s": None, "idle_s": None}
        return {**export, "idle_ttl_s": t.ttl_s, "idle_s": max(0.0, self.clock() - t.last_active_s)}

    async def _loop(self) -> None:
        while self.tracked:
            await asyncio.sleep(check_interval_s(self.tracked))
            exports = self.exports()
            self.tracked, to_close = idle_step(self.tracked, exports.list(), self.clock())
            for export_id, idle_s in to_close:
                ttl_s = self.tracked[export_id].ttl_s
                try:
                    closed = await exports.close(export_id, f"idle {idle_s:.0f} s: nobody read, wrote or held a "
                                                            f"connection for its limit of {ttl_s:.0f} s")
                except NotFoundError:
                    pass  # closed meanwhile
                except ReplicadError as err:
                    log.error("closing the idle export %s failed: %s %s", export_id, err, err.evidence)
                    continue
                else:
                    log.warning("export %s of %s#%d closed after %.0f s without use (idle limit %.0f s): its pin "
                                "is released", export_id, closed.get("volume"), closed.get("seq"), idle_s, ttl_s)
                self.tracked.pop(export_id, None)
