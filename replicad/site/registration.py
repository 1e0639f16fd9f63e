"""A volume's Raft registration compared with this site's ``[[volumes]]`` entry.

``add_volume`` is signed by the volume's initial primary only (:mod:`replicad.core.state`), but
a site may still register a name nobody registered yet, in its own name, before the site whose
config names it starts: a squatted volume. Every site compares what the cluster recorded
(``registered_by``, ``block_size``, ``min_copies``) with its own config, logs a difference at
ERROR naming the registering site, sets ``replicad_volume_registration_mismatch{volume}`` to 1
and, where acting on it would do harm, holds the volume (its runner takes no step):

* another ``block_size``: this site's source, manifests and standby would not fit;
* this site is the configured initial primary and another site registered the volume: as a
  replica of that site this site would overwrite its own live volume with the other site's
  snapshots.

A held volume stays held until the config and the registration agree (the operator renames the
volume or, if the other site's registration is legitimate, sets ``initial_primary`` to it) and
the site restarts. Volumes registered before the record had ``registered_by`` compare only
``block_size`` and ``min_copies``.

The size a volume is registered with (:func:`registered_size_bytes`) sets its agreed maximum
before its first commit (:func:`replicad.core.state.default_max_size_bytes`). A ``qemu`` volume
whose qemu-storage-daemon does not answer is not registered (no volume of size 0 whose first
snapshot would set any maximum): its size is asked again with a bounded back-off, then refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from replicad.config import VolumeConfig
from replicad.core.backoff import Backoff
from replicad.core.errors import ReplicadError, UnavailableError
from replicad.sources import qemu
from replicad.sources.file import _open_source

log = logging.getLogger(__name__)

SIZE_QUERY_TIMEOUT_S = 10.0
"""Bound (seconds) of one reading of a volume's size at registration: a hung device or a QSD that
does not answer delays the registration of the site's other volumes by at most this (a ``qemu``
volume: this for each of its :data:`SIZE_QUERY_ATTEMPTS` tries)."""
SIZE_QUERY_ATTEMPTS = 4
"""Tries of reading a ``qemu`` volume's virtual size while its qemu-storage-daemon does not answer
(started after replicad, restarting); then the registration is refused."""
SIZE_QUERY_BACKOFF_S = 1.0
"""First back-off bound between those tries (:class:`replicad.core.backoff.Backoff`: waits of
0.5-1, 1-2 and 2-4 s, at most 7 s in all)."""


async def registered_size_bytes(v: VolumeConfig, attempts: int = SIZE_QUERY_ATTEMPTS,
                                backoff_s: float = SIZE_QUERY_BACKOFF_S) -> int:
    """The size in bytes a volume is registered with (``add_volume``; its agreed maximum is
    derived from it, :func:`replicad.core.state.default_max_size_bytes`):

    * ``file`` and ``reflink``: the size of its image file or block device (``lseek`` to the
      end, in a worker thread); 0 when it cannot be read within :data:`SIZE_QUERY_TIMEOUT_S`
      (logged at WARNING: the volume is registered without a size and its first commit's size
      sets its agreed maximum);
    * ``qemu``: the virtual size of its disk as qemu-storage-daemon serves it
      (:func:`replicad.sources.qemu.disk_size_bytes`), not the size of the qcow2 file. A QSD
      that does not answer within :data:`SIZE_QUERY_TIMEOUT_S` is asked again, ``attempts``
      times in all, with a back-off of first bound ``backoff_s`` seconds (each retry logged at
      WARNING);
    * 0 for any other kind.

    Raises:
        UnavailableError: a ``qemu`` volume's QSD did not answer any try: the volume must not be
            registered (evidence ``volume``, ``qmp_socket``, ``node``, ``attempts``, ``action``).
        NotFoundError, UsageError, ToolError: a ``qemu`` volume's QSD answered that it has no
            such node, that the node is not qcow2, or no virtual size: refused at once (the
            config or QSD's is wrong), evidence ``volume`` added.

    Never raises for ``file`` or ``reflink`` volumes; cancellation propagates."""
    kind = v.source.kind
    if kind == "qemu":
        return await _qemu_size_bytes(v, attempts, backoff_s)
    try:
        if kind in ("file", "reflink"):
            return await asyncio.wait_for(asyncio.to_thread(_file_size_bytes, str(v.path)), SIZE_QUERY_TIMEOUT_S)
        return 0
    except (ReplicadError, OSError, asyncio.TimeoutError) as err:
        log.warning("volume %s: the size of %s could not be read (%s): registered without a size, its first "
                    "snapshot's size sets its agreed maximum", v.name, v.path, str(err) or type(err).__name__)
        return 0


async def _qemu_size_bytes(v: VolumeConfig, attempts: int, backoff_s: float) -> int:
    """:func:`registered_size_bytes` of a ``qemu`` volume (its rules and errors)."""
    where = f"qemu-storage-daemon at {v.source.qmp_socket}, node {v.source.node!r}"
    backoff = Backoff(base_s=backoff_s, max_s=max(backoff_s, 60.0))
    for attempt in range(1, attempts + 1):
        try:
            return await asyncio.wait_for(qemu.disk_size_bytes(v), SIZE_QUERY_TIMEOUT_S)
        except (UnavailableError, asyncio.TimeoutError) as err:
            problem = str(err) or f"no answer within {SIZE_QUERY_TIMEOUT_S:.0f}s"
        except ReplicadError as err:  # it answered: no such node, not qcow2, no virtual size
            raise type(err)(f"volume {v.name} not registered: {err}", **{**err.evidence, "volume": v.name}) from err
        if attempt < attempts:
            delay = backoff.failed()
            log.warning("volume %s: the virtual size of its disk could not be read (try %d of %d: %s); asking "
                        "%s again in %.1fs", v.name, attempt, attempts, problem, where, delay)
            await asyncio.sleep(delay)
    raise UnavailableError(
        f"volume {v.name} not registered: {where} did not answer {attempts} tries ({problem}); a volume is never "
        "registered without its size. Start qemu-storage-daemon (README \"Change tracking with "
        "qemu-storage-daemon\"), then restart replicad",
        volume=v.name, qmp_socket=str(v.source.qmp_socket), node=str(v.source.node), attempts=attempts,
        action="start qemu-storage-daemon, then restart replicad")


def _file_size_bytes(path: str) -> int:
    """Size in bytes of the file or block device at ``path``, as the ``file`` source reads it
    (:func:`replicad.sources.file._open_source`; worker thread). Raises OSError, UsageError
    (neither a regular file nor a block device)."""
    fd, size = _open_source(Path(path))
    os.close(fd)
    return size


def registration_problems(cfg: VolumeConfig, vs: dict) -> list[str]:
    """How the volume's Raft entry ``vs`` differs from ``cfg`` (this site's ``[[volumes]]``
    entry): one sentence per difference, [] when they agree. Pure."""
    out = []
    by = vs.get("registered_by")
    if by is not None and by != cfg.initial_primary:
        out.append(f"registered by {by}, not by its initial_primary {cfg.initial_primary} (this config)")
    if vs.get("block_size") != cfg.block_size_bytes:
        out.append(f"block_size {vs.get('block_size')} (this config: {cfg.block_size_bytes})")
    if vs.get("min_copies") != cfg.min_copies:
        out.append(f"min_copies {vs.get('min_copies')} (this config: {cfg.min_copies})")
    return out


def must_hold(cfg: VolumeConfig, vs: dict, site_id: str) -> bool:
    """True when acting on the volume would harm this site's data (module docstring). Pure."""
    by = vs.get("registered_by")
    squatted = by is not None and by != cfg.initial_primary and cfg.initial_primary == site_id
    return squatted or vs.get("block_size") != cfg.block_size_bytes


class RegistrationCheck:
    """Each volume's registration judged once per distinct Raft entry: the ERROR line, the gauge,
    and whether the volume is held (:meth:`held`, asked by every runner's tick).

    Args:
        site_id: this site.
        gauge: ``replicad_volume_registration_mismatch`` (labels site, volume), or None.
    """

    def __init__(self, site_id: str, gauge: Any = None) -> None:
        self.site_id = site_id
        self.gauge = gauge
        self._seen: dict[str, tuple] = {}  # volume -> the registration last judged
        self._held: dict[str, bool] = {}

    def held(self, cfg: VolumeConfig, vs: dict) -> bool:
        """Judge ``vs`` (the volume's Raft entry) against ``cfg`` if it is new; True: hold the volume."""
        key = (vs.get("registered_by"), vs.get("block_size"), vs.get("min_copies"))
        if self._seen.get(cfg.name) != key:
            self._seen[cfg.name] = key
            problems = registration_problems(cfg, vs)
            hold = bool(problems) and must_hold(cfg, vs, self.site_id)
            self._held[cfg.name] = hold
            if self.gauge is not None:
                self.gauge.labels(self.site_id, cfg.name).set(1 if problems else 0)
            if problems:
                log.error("AUDIT volume %s: the cluster's registration (by %s) differs from this site's config: %s; %s",
                          cfg.name, vs.get("registered_by", "an unrecorded site"), "; ".join(problems),
                          "this site HOLDS the volume (no standby apply, no snapshot, no takeover) until the config "
                          "and the registration agree: a site that registered a name nobody configured it for is a "
                          "security incident; if it is legitimate, set initial_primary (or block_size) as "
                          "registered and restart" if hold else
                          "this site goes on with the registered values; compare the configs with the other sites' "
                          "operators")
        return self._held[cfg.name]
