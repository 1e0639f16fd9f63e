"""How far into the cluster's Raft history this site has seen live (its audit lines' mark).

A site logs a cluster-wide change signed by another site (``AUDIT ... by site-c``) when it applies
it live; the entries it replays at start, or catches up from the leader before it joined, are its
history again and not logged (each restart would log the whole history). An entry committed while
this site was down or still catching up was never seen live anywhere here: without a mark, a
change made then (a hostile site registering volumes while the honest sites start, or changing a
policy during an all-stopped upgrade) would never reach this site's log. The mark is the number of
commands this site's state had applied (``RaftNode.applied_count``) when it last saw the cluster
live; entries beyond it are logged at start as committed while this site was away. The mark is
written after each line logged live (on the Raft tick thread, after the line: a crash between the
two logs that entry once more at the next start, never loses it), when the site joins and when it
stops.

Kept in ``data_dir/audit.seen`` (JSON ``{"applied": int}``, written with fsync and rename).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from replicad.core import errors
from replicad.storage.durable import write_durably

log = logging.getLogger(__name__)

SEEN_FILE = "audit.seen"


class SeenMark:
    """The mark of one site's data dir.

    ``mark`` (int or None): the applied count seen live. None: unknown — a data dir with a Raft log
    written before the mark existed (an upgrade): nothing replayed is called new, as before. A
    data dir without a Raft log starts at 0: everything it applies is new to it.
    """

    def __init__(self, data_dir: Path) -> None:
        """Read the mark of ``data_dir`` (never raises: an unreadable file is logged at WARNING and
        read as unknown)."""
        self.path = Path(data_dir) / SEEN_FILE
        self.mark: int | None = None
        self._saved: int | None = None
        self._lock = threading.Lock()  # the tick thread and the event loop both save
        try:
            value = json.loads(self.path.read_text())["applied"]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"applied {value!r} is not a count")
            self.mark = self._saved = value
        except FileNotFoundError:
            raft = Path(data_dir) / "raft"
            if not (raft / "raft.journal").exists() and not (raft / "raft.dump").exists():
                self.mark = 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s): entries this site replays at start are not told apart from the ones "
                        "committed while it was away", self.path, exc)

    def away(self, applied: int) -> bool:
        """True when the entry that made the applied count ``applied`` is past the mark: committed
        while this site was down or catching up. Pure."""
        return self.mark is not None and applied > self.mark

    def save(self, applied: int) -> None:
        """Record ``applied`` as seen live (only when past the last write; thread-safe).

        Raises:
            errors.StoreFullError / errors.InternalError: the file cannot be written."""
        with self._lock:
            if self._saved is not None and applied <= self._saved:
                return
            try:
                write_durably(self.path, json.dumps({"applied": applied}).encode())
            except OSError as exc:
                raise errors.from_os_error(exc, f"writing {self.path}") from exc
            self._saved = self.mark = applied
