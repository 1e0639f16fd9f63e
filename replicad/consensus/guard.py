"""Checks on what a Raft member says: message shapes, terms, and full state installs.

pysyncobj trusts every message from a connected node: it indexes fields without checking
their types (a malformed message raises inside the tick), adopts any higher term, and
installs any dump (``append_entries`` carrying ``serialized``) as its new state. The
functions here decide, without side effects, whether a message may reach pysyncobj at all;
``raft._HardenedSyncObj`` applies them with the node's own Raft state (which node it
follows, whether its leader lease holds). :class:`GuardedSerializer` replaces pysyncobj's
receiving half of a dump transfer so that a dump is checked *before* it replaces
``raft.dump`` on disk. :class:`ClockRate` bounds how many ``clock`` heartbeats of one site a leader
appends (attacker review r13, F3: one site forced every site to compact its log within seconds).

What a dump must satisfy (:func:`replicad.core.state.dump_problems`): it keeps every site
and volume this node knows, epochs and last seqs never go back, every committed snapshot
record it keeps has the same root, epoch and creation time, and a record it lacks is older
than the volume's lock window by this node's own clock (only such records can have been
pruned).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from replicad.consensus import dumpfile
from replicad.consensus.channel import RefusalLog
from replicad.core import errors
from replicad.core.state import CLOCK_REPORT_PERIOD_NS
from replicad.storage.durable import write_durably

log = logging.getLogger(__name__)

MAX_TERM = 2**53
"""Largest term accepted (JSON-exact; the journal stores ``<Q``)."""
MAX_TERM_STEP = 2**24
"""Largest step above this node's term one message may carry. Reaching :data:`MAX_TERM`
(where elections could no longer advance) then takes 2**29 accepted messages; a single
forged message cannot get there."""
MAX_DUMP_BYTES = 256 * 1024 * 1024
"""Largest full dump received from the leader (the state is bounded far below:
``replicad.core.state`` caps every collection)."""
MAX_DUMP_CHUNK_BYTES = 128 * 1024
"""Largest chunk of a dump transfer (pysyncobj sends ``logCompactionBatchSize``, 64 KiB)."""
DUMP_SEND_RETRY_S = 0.5
"""After a failed read of this node's own dump, how long a member is not sent it again (it gets
plain heartbeats meanwhile); the hardened node steps down after a few such failures."""
MAX_ENTRY_COMMAND_BYTES = 96 * 1024
"""Largest log entry in an ``append_entries`` (commands are at most 40 KiB, pickled twice)."""

KNOWN_TYPES = frozenset({"request_vote", "response_vote", "append_entries", "next_node_idx", "apply_command",
                         "apply_command_response", "timeout_now", "pre_vote", "pre_vote_response",
                         "membership_query", "membership_report", "relay_command"})
MAX_REPORTED_MEMBERS = 64
"""Most members a ``membership_report`` may list (``replicad.core.state.SITES_MAX`` is lower)."""
_TERMED = frozenset({"request_vote", "response_vote", "append_entries", "timeout_now", "pre_vote"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shape_problem(message: Any, current_term: int) -> tuple[str, str] | None:
    """Why ``message`` must not reach pysyncobj, as ``(reason, detail)``, or None if well formed.

    Checks the type, the fields pysyncobj indexes, and the term bounds: ``0 <= term <=
    min(MAX_TERM, current_term + MAX_TERM_STEP)``. Entries of an ``append_entries`` must be
    ``(bytes, idx, term)`` with consecutive indexes after ``prevLogIdx`` and terms at most the
    message's; pysyncobj's chunked ``transmission`` of huge entries is refused (replicad's
    commands are at most 40 KiB, so an honest leader never uses it).
    """
    if not isinstance(message, dict) or message.get("type") not in KNOWN_TYPES:
        kind = message.get("type") if isinstance(message, dict) else type(message).__name__
        return "malformed", f"unknown message type {str(kind)[:40]!r}"
    kind = message["type"]
    if kind in _TERMED or "term" in message:
        term = message.get("term")
        if not _is_int(term) or term < 0:
            return "malformed", f"{kind} without an integer term"
        if term > MAX_TERM or term > current_term + MAX_TERM_STEP:
            return "term_out_of_range", f"{kind} at term {term}, this node is at {current_term}"
    if kind == "request_vote" and not (_is_int(message.get("last_log_index"))
                                       and _is_int(message.get("last_log_term"))):
        return "malformed", "request_vote without integer log position"
    if kind == "next_node_idx" and not (_is_int(message.get("next_node_idx"))
                                        and isinstance(message.get("reset"), bool)
                                        and isinstance(message.get("success"), bool)):
        return "malformed", "next_node_idx with wrong field types"
    if kind == "apply_command" and not isinstance(message.get("command"), bytes):
        return "malformed", "apply_command without a bytes command"
    if kind == "relay_command" and not (isinstance(message.get("command"), bytes)
                                        and len(message["command"]) <= MAX_ENTRY_COMMAND_BYTES):
        return "malformed", "relay_command without a bytes command of at most 96 KiB"
    if kind == "apply_command_response":
        if "request_id" not in message or ("error" not in message and not (
                _is_int(message.get("log_idx")) and _is_int(message.get("log_term")))):
            return "malformed", "apply_command_response with wrong fields"
    if kind == "append_entries":
        return _append_entries_problem(message)
    if kind == "membership_report":
        return _membership_report_problem(message.get("report"))
    return None


def _membership_report_problem(report: Any) -> tuple[str, str] | None:
    """A ``membership_report`` must carry ``{"incarnation": bytes, "members": [{"site_id": str,
    "raft": str, "kind": str, "keys": [str]}]}`` (raft point 16), each member with exactly those
    keys (an extra value once reached the daemon's comparison and ended its bootstrap)."""
    if not (isinstance(report, dict) and isinstance(report.get("incarnation"), bytes)
            and len(report["incarnation"]) <= 64 and isinstance(report.get("members"), list)
            and len(report["members"]) <= MAX_REPORTED_MEMBERS):
        return "malformed", "membership_report without an incarnation and a bounded member list"
    for m in report["members"]:
        if not (isinstance(m, dict) and set(m) == {"site_id", "raft", "kind", "keys"}
                and all(isinstance(m.get(k), str) and len(m[k]) <= 300 for k in ("site_id", "raft", "kind"))
                and isinstance(m.get("keys"), list) and len(m["keys"]) <= 8
                and all(isinstance(k, str) and len(k) <= 200 for k in m["keys"])):
            return "malformed", "membership_report with a malformed member"
    return None


def _append_entries_problem(message: dict) -> tuple[str, str] | None:
    if not _is_int(message.get("commit_index")) or message["commit_index"] < 0:
        return "malformed", "append_entries without an integer commit_index"
    if "transmission" in message:
        return "chunked_entries", "append_entries with a chunked transmission (never sent by replicad's leader)"
    if "prevLogIdx" in message:
        prev_idx, prev_term = message.get("prevLogIdx"), message.get("prevLogTerm")
        entries = message.get("entries", [])
        if not (_is_int(prev_idx) and _is_int(prev_term)) or not isinstance(entries, (list, tuple)):
            return "malformed", "append_entries with a wrong log position or entries"
        expected = prev_idx + 1
        for entry in entries:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], bytes)
                    and len(entry[0]) <= MAX_ENTRY_COMMAND_BYTES and entry[1] == expected
                    and _is_int(entry[2]) and 0 <= entry[2] <= message["term"]):
                return "malformed", f"append_entries entry {expected} is not (bytes, idx, term) in order"
            expected += 1
        return None
    serialized = message.get("serialized")
    if serialized is None and "serialized" in message:
        return None  # a heartbeat: pysyncobj's leader sends it while no dump chunk is ready to send
    if not (isinstance(serialized, tuple) and len(serialized) == 3 and isinstance(serialized[0], bytes)
            and len(serialized[0]) <= MAX_DUMP_CHUNK_BYTES and isinstance(serialized[1], bool)
            and isinstance(serialized[2], bool)):
        return "malformed", "append_entries carries neither a log position nor a well-formed dump chunk"
    return None


class GuardedSerializer:
    """pysyncobj's dump transfer, both halves: receiving checks first, sending never floods.

    Wraps pysyncobj's ``Serializer`` (everything but :meth:`getTransmissionData` and
    :meth:`setTransmissionData` is delegated).

    Receiving: chunks are gathered in memory (at most :data:`MAX_DUMP_BYTES`); the last one
    has its checksum verified (:func:`replicad.consensus.dumpfile.decode`: a mismatch or an
    undecodable body is refused as ``dump_damaged``), then triggers ``check(document) ->
    list[str]`` (problems; empty means acceptable) on the decoded msgpack document; only an
    accepted dump is written (in file format 3; one of the previous format, from a leader
    still running it, is framed with its checksum here) to ``<dump>.1.tmp``,
    fsync'ed, renamed over the dump file and the directory fsync'ed. A refused one is
    counted in ``refusals`` (reason ``snapshot_regresses`` or ``snapshot_too_large``; the
    ``reason`` of a :class:`~replicad.core.errors.DumpRefusedError` the check raises:
    ``dump_damaged``, ``dump_not_vouched``, ``dump_bad_command``, ``dump_malformed``), logged at ERROR and
    dropped: pysyncobj then keeps its state and log, and the leader retries. A dump that
    cannot be written here (``OSError``) is counted as ``dump_unwritable`` (ERROR).

    Sending (a leader reads its own dump in ``logCompactionBatchSize`` chunks for a follower
    behind its log's start): pysyncobj logs a traceback for every failed open or read and
    tries again at once, thousands of times a second (issue 13: a 239 MB log in 5.5 minutes).
    Here a failed open or read (``OSError``) is handed to ``on_send_error(transmission_id,
    exc)`` (set by the hardened node, which counts it and steps down), no traceback is
    logged, and that member is not tried again for :data:`DUMP_SEND_RETRY_S`
    (:meth:`send_blocked`; the node sends it plain heartbeats meanwhile).
    """

    on_send_error: Callable[[Any, OSError], None] | None = None

    def __init__(self, inner: Any, dump_file: str, check: Callable[[Any], list[str]], refusals: RefusalLog) -> None:
        self._inner = inner
        self._dump_file = Path(dump_file)
        self._check = check
        self._refusals = refusals
        self._incoming: bytearray | None = None
        self._blocked_until: dict[Any, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def send_blocked(self, transmission_id: Any) -> bool:
        """True while sending the dump to ``transmission_id`` (a member node) failed within
        the last :data:`DUMP_SEND_RETRY_S` seconds."""
        return time.monotonic() < self._blocked_until.get(transmission_id, float("-inf"))

    def getTransmissionData(self, transmission_id: Any) -> tuple[bytes, bool, bool] | None:
        """The next ``(chunk, is_first, is_last)`` of this node's dump for ``transmission_id``,
        or None when nothing can be sent now (a dump being written, or a read that failed).

        pysyncobj's own logic for a dump file (``Serializer.getTransmissionData``), with
        ``OSError`` handled as the class docstring says instead of a traceback per attempt.
        """
        inner = self._inner
        transmissions = getattr(inner, "_Serializer__transmissions", None)
        if transmissions is None or getattr(inner, "_Serializer__fileName", None) is None:
            return inner.getTransmissionData(transmission_id)  # in memory: nothing to read
        if inner._Serializer__pid != 0 or self.send_blocked(transmission_id):
            return None
        transmission = transmissions.get(transmission_id)
        try:
            if transmission is None:
                transmission = {"file": open(self._dump_file, "rb"), "transmitted": 0}
                transmissions[transmission_id] = transmission
            data = transmission["file"].read(inner._Serializer__transmissionBatchSize)
        except OSError as exc:
            dropped = transmissions.pop(transmission_id, None)
            if dropped is not None:
                try:
                    dropped["file"].close()
                except OSError:
                    pass
            self._blocked_until[transmission_id] = time.monotonic() + DUMP_SEND_RETRY_S
            if self.on_send_error is not None:
                self.on_send_error(transmission_id, exc)
            return None
        is_first = transmission["transmitted"] == 0
        transmission["transmitted"] += len(data)
        is_last = len(data) == 0
        if is_last:
            transmissions.pop(transmission_id, None)
            transmission["file"].close()
        return data, is_first, is_last

    def setTransmissionData(self, data: Any) -> bool:
        if data is None:
            return False
        chunk, is_first, is_last = data
        if is_first:
            self._incoming = bytearray()
        elif self._incoming is None:
            return False
        self._incoming += chunk
        if len(self._incoming) > MAX_DUMP_BYTES:
            self._incoming = None
            self._refusals.refuse("snapshot_too_large", "a full dump from the leader exceeds %d bytes",
                                  MAX_DUMP_BYTES, level=logging.ERROR)
            return False
        if not is_last:
            return False
        blob, self._incoming = bytes(self._incoming), None
        try:
            document, legacy = dumpfile.decode(blob)  # the checksum first: a damaged file is refused as such
            problems = self._check(document)
        except errors.DumpRefusedError as err:  # damaged, not vouched, a bad suffix command, malformed
            self._refusals.refuse(str(err.evidence.get("reason", "dump_malformed")),
                                  "refused a full state from the leader (%d bytes): %s; this node keeps its state",
                                  len(blob), err.message, level=logging.ERROR)
            return False
        except Exception as exc:  # a check that failed otherwise: refused like any other bad dump
            problems = [f"unusable dump: {type(exc).__name__}: {str(exc)[:120]}"]
        if problems:
            self._refusals.refuse("snapshot_regresses", "refused a full state from the leader (%d bytes): %s",
                                  len(blob), "; ".join(problems[:5]), level=logging.ERROR)
            return False
        if legacy:  # a leader still running the previous version: stored here with a checksum
            log.warning("a full state from the leader (%d bytes) has the previous dump format (%d, no checksum): "
                        "its content verified, stored here in format %d", len(blob), dumpfile.LEGACY_VERSION,
                        dumpfile.FORMAT_VERSION)
            blob = dumpfile.frame(blob)
        try:
            write_durably(self._dump_file, blob, ".1.tmp")
        except OSError as exc:
            self._refusals.refuse("dump_unwritable", "a full state from the leader (%d bytes) cannot be written to "
                                  "%s (%s): this node cannot catch up until it can", len(blob), self._dump_file, exc,
                                  level=logging.ERROR)
            return False
        return True


CLOCK_HONEST_PER_S = 1e9 / CLOCK_REPORT_PERIOD_NS
"""``clock`` heartbeats a second an honest site proposes: one per ``state.CLOCK_REPORT_PERIOD_NS``
(5 s; ``site.daemon.CLOCK_HEARTBEAT_S``: the daemon's clock loop sleeps that long after each
proposal settled), 0.2 a second."""
CLOCK_PER_S = 5 * CLOCK_HONEST_PER_S
"""Per-site bound on ``clock`` commands at the leader (sustained): five times the honest rate, 1 a
second. What an honest site sends beyond one per period: the same command sent again while it is not
in the log (``raft`` point 19, every ``WITHHELD_RESEND_S`` = 10 s) and relayed through the other
members (point 20, every 10 s too), and a new loop after a restart (the burst). Attacker review r13,
F3: one site forwarded 6,000 signed heartbeats in ~17 s (within the command budget, point 17: 200 a
second) and so forced every site to compact its log (``logCompactionMinEntries``, 5,000), which makes
a site that is away catch up from a full state instead of the entries. At this bound the same takes
83 minutes through the door alone; with its own relays (point 20) and those each honest follower
passes on at half the rate, about 33 minutes in a three-site cluster. A heartbeat carries nothing
but the site's clock, which counts in the majority clock once per period."""
CLOCK_BURST = 30
"""Per-site ``clock`` commands the leader takes at once (a restart, resends after a cut)."""
CLOCK_REASONS = ("forwarded_clock_over_rate", "relay_clock_over_rate")
"""Counted refusals (``replicad_raft_refused_total{reason}``, WARNING): a member forwarded more of its
site's ``clock`` commands than :data:`CLOCK_PER_S` (bursts of :data:`CLOCK_BURST`), or relayed more
of one site's than that (a follower passes on at most half of it for each site, so a leader never
refuses what an honest follower passes on, which that follower watches: ``raft`` point 20)."""


class ClockRate:
    """Per-site rate of ``clock`` commands a Raft node takes (attacker review r13, F3; bounds and
    their source: :data:`CLOCK_PER_S`, :data:`CLOCK_BURST`).

    A token bucket per key of ``per_s`` commands a second holding ``burst`` of them; a refused
    command costs nothing (an over-eager site gets its rate, never less). At most
    :data:`KEYS_MAX` keys (members, or member and site pairs); a new key is never refused for
    that: when the table is full, the keys whose buckets have refilled to ``burst`` are forgotten
    (a forgotten key starts again from a full bucket, which is what it had: nothing is lost), and
    if none has, the one nearest to full (made-up keys must not lock out an honest site's: attacker
    review r2, F1). Times are ``monotonic`` seconds passed in. Not thread-safe (the Raft tick
    thread only)."""

    KEYS_MAX = 4096

    def __init__(self, per_s: float = CLOCK_PER_S, burst: float = CLOCK_BURST) -> None:
        if not per_s > 0 or not burst >= 1:
            raise ValueError(f"a clock rate needs per_s > 0 and burst >= 1, not {per_s!r}, {burst!r}")
        self.per_s, self.burst = float(per_s), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, now_s: float) -> bool:
        """Charge one ``clock`` command to ``key``; False when it is over the rate (not charged)."""
        if key not in self._buckets and len(self._buckets) >= self.KEYS_MAX:
            self._forget_full(now_s)
        tokens, last = self._buckets.get(key, (self.burst, now_s))
        tokens = min(self.burst, tokens + max(0.0, now_s - last) * self.per_s)
        if tokens < 1:
            self._buckets[key] = (tokens, now_s)
            return False
        self._buckets[key] = (tokens - 1, now_s)
        return True

    def _refilled(self, key: str, now_s: float) -> float:
        """The tokens ``key``'s bucket holds at ``now_s`` (at most ``burst``)."""
        tokens, last = self._buckets[key]
        return min(self.burst, tokens + max(0.0, now_s - last) * self.per_s)

    def _forget_full(self, now_s: float) -> None:
        """Make room for one key in a full table: drop every key whose bucket is full again (one
        pass over the table; a key refills within ``burst / per_s`` seconds, 30 s, and a member
        relays at most 200 commands a second, point 17, so the pass mostly frees many keys), else
        the key nearest to full."""
        full = [key for key in self._buckets if self._refilled(key, now_s) >= self.burst]
        for key in full:
            del self._buckets[key]
        if not full:
            del self._buckets[max(self._buckets, key=lambda k: self._refilled(k, now_s))]

    def detail(self, who: str) -> str:
        """The refusal's text for the log: who sent too many, and the bound."""
        return (f"{who}: more clock heartbeats than {self.per_s:g} a second (bursts of {self.burst:.0f}; an honest "
                f"site sends one every {1 / CLOCK_HONEST_PER_S:g} s); refused")
