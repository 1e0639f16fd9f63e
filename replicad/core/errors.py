"""One error tree for replicad.

Every error an operator or a peer can see is a :class:`ReplicadError`. Each class carries
a stable ``code`` (used in JSON error bodies and audit records), a CLI ``exit_code``, an
HTTP status for the admin API, an operator ``message`` and ``evidence`` (a small dict of
facts: volume, seq, both epochs, digests ...). Foreign exceptions (OSError, aiohttp,
pysyncobj, sqlite3) are translated into this tree at the adapter that met them.

::

    ReplicadError                      exit 1
    ├── ConfigError                    exit 2   bad TOML / values; .problems lists all
    │   └── MembershipMismatchError             [[sites]] disagrees with the membership agreed in Raft
    ├── UsageError                     exit 2   bad CLI/API arguments
    │   ├── NotSupportedError                   (HTTP 501) a feature replicad refuses on purpose
    │   └── ReflinkUnsupportedError             a reflink source's file system cannot clone or map extents
    │       └── CloneCrossDeviceError           the clone directory is on another file system (EXDEV)
    ├── NotFoundError                  exit 3   unknown volume, snapshot, site, chunk
    ├── ConflictError                  exit 4   state does not allow it (state machine refusal)
    │   ├── StaleEpochError                     a message or command under an older epoch
    │   ├── NotPrimaryError                     this site is not the volume's primary
    │   ├── RetentionLockedError                delete inside the retention lock (O4)
    │   ├── ApprovalRequiredError               two-party rule: a second site's approval is missing
    │   ├── SnapshotSuspectError                a restore point named by the operator is suspect, not cleared
    │   ├── RecordConflictError                 a snapshot record held here would be replaced (write-once)
    │   ├── QuotaExceededError          (429)   a peer sent more than a snapshot in flight can need
    │   └── SourceShrunkError                   a volume's source is smaller than its last snapshot
    ├── IntegrityError                 exit 5   digest/root mismatch: never served, never stored
    │   ├── RestoreVerifyError                  restored image root != manifest root (O5)
    │   │   └── TakeoverRestoreError            a promotion's restore failed O5, and so did its full rewrite
    │   ├── JournalDamagedError                 the Raft journal is damaged before its tail: refuse to start
    │   ├── DumpDamagedError                    this site's Raft dump cannot be loaded or verified: refuse to start
    │   └── DumpRefusedError                    a full state from the network is not vouched by a majority
    ├── ProtocolError                  exit 6
    │   ├── RemoteProtocolError                 a peer sent something malformed (its fault)
    │   └── LocalProtocolError                  we were about to send something invalid (our bug)
    ├── UnavailableError               exit 7   transient: retry later
    │   ├── NoQuorumError                       Raft could not commit (minority, no leader)
    │   │   └── CommitUnknownError     exit 9   timed out while this site deposed its leader: committed or not?
    │   ├── PeerUnavailableError                a peer did not answer
    │   │   └── PeerBusyError           (503)   a holder serves as many fetches as it allows: ask later
    │   ├── StreamSlotsBusyError                this site's chunk streams to a peer stayed at its bound: ship later
    │   ├── StoreFullError                      the data dir is full (ENOSPC)
    │   └── TargetFullError                     a restore target's file system is full (ENOSPC)
    ├── AccessError                    exit 8   admin API access control
    │   ├── UnauthenticatedError                (HTTP 401) no bearer token, or an unknown one
    │   ├── ForbiddenError                      (HTTP 403) the token's role is too low
    │   └── FetchRefusedError           (403)   a fetch of a volume (or chunk) the requester may not read
    ├── ToolError                      exit 1   an external tool (mke2fs, debugfs, e2fsck) failed
    └── InternalError                  exit 70  a bug; carries the original exception text

``is_transient(err)`` is the one place that decides whether an operation is retried.
"""

from __future__ import annotations

import errno
from typing import Any


class ReplicadError(Exception):
    """Base of every replicad error.

    Args:
        message: operator-facing sentence (no traceback is ever shown instead).
        **evidence: small JSON-serialisable facts that explain the error.
    """

    code = "error"
    exit_code = 1
    http_status = 500
    transient = False

    def __init__(self, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.message = message
        self.evidence = evidence

    def to_dict(self) -> dict[str, Any]:
        """JSON body used by the admin and peer APIs: ``{error, message, evidence}``."""
        return {"error": self.code, "message": self.message, "evidence": _jsonable(self.evidence)}

    def __str__(self) -> str:
        return self.message


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class ConfigError(ReplicadError):
    """The site configuration is invalid. ``problems`` lists every problem at once,
    each as ``"key.path: what is wrong"``."""

    code = "config_invalid"
    exit_code = 2
    http_status = 400

    def __init__(self, message: str, problems: list[str] | None = None, **evidence: Any) -> None:
        super().__init__(message, problems=list(problems or []), **evidence)
        self.problems = list(problems or [])


class MembershipMismatchError(ConfigError):
    """This site's ``[[sites]]`` (site ids, Raft addresses, kinds, pinned keys) disagrees with the
    membership agreed in the cluster's Raft state: the site refuses to start, or stops before it
    acts as leader or primary. ``problems`` names each difference; evidence ``source`` (where
    the agreed membership was read) and ``action`` (README "Adding or removing a site")."""

    code = "membership_mismatch"


class UsageError(ReplicadError):
    """A request or command line is malformed (missing or invalid argument)."""

    code = "bad_request"
    exit_code = 2
    http_status = 400


class NotSupportedError(UsageError):
    """The request asks for something replicad does not do on purpose (evidence says what to
    do instead), e.g. changing Raft membership at runtime."""

    code = "not_supported"
    http_status = 501


class MethodNotAllowedError(UsageError):
    """An admin API path asked with a method it does not serve (HTTP 405; evidence ``method``,
    ``path``, ``allowed``)."""

    code = "method_not_allowed"
    http_status = 405


class BodyTooLargeError(UsageError):
    """An admin API request body longer than the listener takes (HTTP 413; evidence ``limit_bytes``):
    refused before it is read whole, nothing done."""

    code = "body_too_large"
    http_status = 413


class ReflinkUnsupportedError(UsageError):
    """A ``reflink`` volume's image cannot be cloned or mapped: ``ioctl(FICLONE)`` or
    ``FS_IOC_FIEMAP`` answered EOPNOTSUPP/ENOTTY/EINVAL (ext4, XFS without ``reflink=1``, a block
    device, a file system without FIEMAP). Evidence: ``source`` or ``path``, ``errno``,
    ``reason`` (``not_reflink_capable`` | ``extent_map_unsupported``). The reflink source turns
    it into the tracking state ``lost`` and scans the live image (:mod:`replicad.sources.reflink`)."""

    code = "reflink_unsupported"


class CloneCrossDeviceError(ReflinkUnsupportedError):
    """The clone directory of a ``reflink`` volume is on another file system than its image
    (``FICLONE`` answered EXDEV, or the directories' devices differ): the cycle is refused until
    ``[volumes.source] clone_dir`` names a directory on the image's file system. Evidence:
    ``source``, ``clone``."""

    code = "reflink_cross_device"


class NotFoundError(ReplicadError):
    """Unknown volume, snapshot, site, chunk or operation."""

    code = "not_found"
    exit_code = 3
    http_status = 404


class ConflictError(ReplicadError):
    """The cluster state does not allow the operation (the Raft state machine refused it)."""

    code = "conflict"
    exit_code = 4
    http_status = 409


class OperationCancelledError(ConflictError):
    """A background operation (restore, drill) was cancelled (``replicad cancel``, ``DELETE
    /v1/operations/{id}``) or ended by the site stopping before it finished."""

    code = "cancelled"


class StaleEpochError(ConflictError):
    """A message or command carries an epoch older than the committed one (fencing)."""

    code = "stale_epoch"


class NotPrimaryError(ConflictError):
    """This site is not the primary of the volume under the current epoch."""

    code = "not_primary"


class RetentionLockedError(ConflictError):
    """Deleting or pruning a snapshot inside its retention lock window was refused (O4)."""

    code = "retention_locked"


class RulesVersionError(ConflictError):
    """The cluster state is decided under a rules version (``state.rules``) above the highest
    this site's code applies (``state.RULES_MAX``): the site runs an older release than the one
    that raised the rules, and applying the log with older rules would give it another state than
    the other sites'. The site stops at start; run the release the other sites run. Evidence:
    ``rules``, ``max_rules``."""

    code = "rules_version"


class ApprovalRequiredError(ConflictError):
    """The approval rule (O4): clearing a suspect snapshot or shortening retention is a
    *request* (``replicad requests``) that applies only once operators at other sites
    approved it, each at their own site (``replicad approve REQ``)."""

    code = "approval_required"



class SnapshotSuspectError(ConflictError):
    """A snapshot named as a restore point (``promote --force --snapshot``) is suspect and no
    person cleared it (``replicad verdict VOL SEQ clean``, approved by other sites). Evidence:
    ``volume``, ``seq``, ``verdict``, ``reason``. Nothing changed."""

    code = "snapshot_suspect"


class RecordConflictError(ConflictError):
    """Snapshot records are write-once: the site already holds ``(volume, epoch, seq)`` with
    another manifest root (evidence ``held_root``/``offered_root``), or a change of state
    that would weaken a record (a ``committed`` one back to ``received`` ...). Nothing is
    written; the held record stays."""

    code = "record_conflict"


class QuotaExceededError(ConflictError):
    """A peer's writes to this site exceeded what replication can legitimately need: more
    chunk bytes for one ``(volume, epoch)`` since its last snapshot than the volume's size
    allows, or more snapshots announced ahead of the committed one than are ever in flight.
    Evidence: ``volume``, ``epoch``, ``sender``, the ``limit`` and what was asked. Nothing
    past the limit was stored."""

    code = "quota_exceeded"
    http_status = 429


class SourceShrunkError(ConflictError):
    """A volume's source (its image file or device) is smaller than the parent snapshot and
    the operator did not say the volume was shrunk on purpose (``[volumes.source]
    allow_shrink``): a truncated image, a device that came back smaller. Nothing is stored or
    committed; standbys stay as they are. Evidence: ``volume``, ``path``, ``size_bytes`` (now),
    ``parent_size_bytes``, ``parent_seq``."""

    code = "source_shrunk"


class IntegrityError(ReplicadError):
    """Content does not match its digest: a corrupt chunk, page, manifest or pack."""

    code = "integrity"
    exit_code = 5
    http_status = 502


class RestoreVerifyError(IntegrityError):
    """A restored image's Merkle root differs from the snapshot manifest's root (O5)."""

    code = "restore_verify_failed"


class TakeoverRestoreError(RestoreVerifyError):
    """A promotion's in-place restore failed its O5 check and so did the one fallback, a full
    rewrite of every block from this site's store: the store or the disk under the volume
    cannot be trusted here. Not retried in a loop (the takeover is tried again only after a
    growing backoff); promote another site or repair this one. Evidence: ``volume``, ``seq``,
    both roots, ``first_differing_page``."""

    code = "takeover_restore_failed"


class JournalDamagedError(IntegrityError):
    """This site's Raft journal holds a damaged record followed by valid ones: not a torn
    tail (a crash mid-append), so dropping everything after it would drop acknowledged
    entries; or its meta file (term, vote) fails its checksum or is not JSON (evidence
    ``path`` of the meta file, ``problem``, ``action``). The site refuses to start; nothing
    was truncated. Evidence: ``path``,
    ``offset`` (bytes from the start of the file) and ``record`` (its position) of the first
    damaged record, ``last_good_idx``, ``next_valid_offset``/``next_valid_idx`` and
    ``valid_records_after``, and ``action`` (what the operator does: README "Raft journal
    damaged")."""

    code = "journal_damaged"


class DumpDamagedError(IntegrityError):
    """This site's own Raft dump (``raft.dump``) cannot be used: unreadable, zeroed,
    truncated, of an unknown version, not vouched by a majority, or missing while the
    journal starts after index 1 (compacted: the state before it exists only in the dump).
    The site refuses to start rather than serve an empty state; nothing was changed.
    Evidence: ``path``, ``reason`` (``dump_damaged``, ``dump_not_vouched``,
    ``dump_bad_command``, ``dump_missing``), ``problems``, ``action`` (README "Raft dump
    damaged")."""

    code = "dump_damaged"


class DumpRefusedError(IntegrityError):
    """A full Raft state (a dump: a vouched checkpoint and the signed commands since) cannot
    be adopted: its base is not a state a majority of the sites vouched for, a command of its
    suffix is forged, replayed or contradicts a checkpoint a majority vouched, or it is
    malformed. The node keeps its state and its dump file. Evidence: ``reason``
    (``dump_damaged``: the file's checksum does not match or it does not decode;
    ``dump_not_vouched``, ``dump_bad_command``, ``dump_malformed``), ``problems``."""

    code = "dump_refused"


class ProtocolError(ReplicadError):
    """A wire or disk document could not be parsed."""

    code = "protocol"
    exit_code = 6
    http_status = 400


class RemoteProtocolError(ProtocolError):
    """A peer (or a file written by another version) sent something malformed: its fault."""

    code = "remote_protocol"


class LocalProtocolError(ProtocolError):
    """We were about to emit an invalid message: our bug."""

    code = "local_protocol"
    exit_code = 70
    http_status = 500


class UnavailableError(ReplicadError):
    """Transient: the operation may succeed if retried later."""

    code = "unavailable"
    exit_code = 7
    http_status = 503
    transient = True


class NoQuorumError(UnavailableError):
    """Raft could not commit the command in time: no leader or no majority reachable."""

    code = "no_quorum"


class CommitUnknownError(NoQuorumError):
    """A proposal was not answered within its deadline while this site held a Raft leader deposed
    (``replicad.consensus.raft`` points 18, 19 and 21: it accepts nothing from that leader for the
    hold, so it applies nothing meanwhile while the other members may keep following it). The
    command may have committed all the same, relayed by another member (point 20): it is NOT known
    whether it did. Look before trying again (``replicad requests`` / ``replicad status`` at
    another site): a new try is a new command. A retry with the same op id is safe, so it stays
    ``transient`` for the retries inside the daemon that keep the op id (``request_with_retry``);
    its own exit code, 9, not 7's "retry later", so that automation retrying on exit 7 (which sends
    a new command, a new op id) does not apply a command twice (attacker review r2, L3).
    Evidence: ``op``, ``op_id``, ``deposed`` (the leaders held deposed, with their sites)."""

    code = "commit_unknown"
    exit_code = 9


class LeaderFrontRunError(UnavailableError):
    """The Raft leader appended, just before this site's command, a command of another site with
    the same op id, and the state machine answered this site's command with that command's stored
    result instead of applying it (rules 1 and 2 key the exactly-once memory by op id alone).
    This site deposed that leader (``replicad.consensus.raft``, point 21); the command was not
    applied: propose it again as a new command (a new op id). Evidence: ``op``, ``op_id``,
    ``signer`` (the site whose command took the op id), ``leader``, ``term``, ``index``."""

    code = "leader_front_run"


class PeerUnavailableError(UnavailableError):
    """A peer site did not answer (refused, reset, timed out)."""

    code = "peer_unavailable"


class PeerStalledError(PeerUnavailableError):
    """A peer answered a fetch too slowly to count as serving it: fewer than the progress
    rule's bytes of complete chunk frames within its window (a holder trickling its answer,
    or one too overloaded to serve). Evidence: ``url``, ``window_s``, ``got_bytes``,
    ``frames`` (received before it was cut). The fetch goes to another holder.

    Also a replica that did not answer a ship's request (``/v1/peer/missing``, ``snapshot``)
    within its deadline or took too little of its chunk upload (evidence ``url``,
    ``request``, ``deadline_s`` or ``window_s``/``got_bytes``/``sent_bytes``): that ship is cut."""

    code = "peer_stalled"


class PeerBusyError(PeerUnavailableError):
    """A holder refused a ``/v1/peer/fetch`` because it already serves as many fetches as it
    allows, for the requesting site or in all (``transport.FETCH_PER_SITE``,
    ``transport.FETCH_GLOBAL``, and none of its waiting places freed in time). Nothing was
    read; the fetch may be asked again later or of another holder. Evidence: ``sender``,
    ``limit`` (``per_site`` or ``global``), ``serving``, ``waited_s``."""

    code = "peer_busy"


class StreamSlotsBusyError(UnavailableError):
    """A ship waited for a place to open a chunk stream (``/v1/peer/chunks``) to a peer and none
    freed in time: this site already streams ``transport.CHUNK_SLOTS_PER_PEER`` to it (other
    volumes' ships) and earlier ships waited first. A local condition, not the peer's fault and
    not a sign that it is down or slow: nothing was sent; the next cycle ships again. Evidence:
    ``peer`` (its origin), ``streams`` (open to it), ``limit``, ``waiting`` (ships queued behind),
    ``waited_s``."""

    code = "stream_slots_busy"


class StoreFullError(UnavailableError):
    """The data directory is full (ENOSPC/EDQUOT); nothing already stored was damaged."""

    code = "store_full"
    http_status = 507


class TargetFullError(UnavailableError):
    """The file system of a restore target (a restore, drill or promotion image, or a
    standby) is full (ENOSPC/EDQUOT); the chunk store is not concerned. Evidence: ``path``,
    ``free_bytes`` on that file system, the snapshot's ``size_bytes``."""

    code = "target_full"
    http_status = 507


class AccessError(ReplicadError):
    """The admin API refused the caller (see :mod:`replicad.ops.auth`)."""

    code = "access_denied"
    exit_code = 8
    http_status = 403


class UnauthenticatedError(AccessError):
    """No bearer token was presented, or it matches no configured token."""

    code = "unauthenticated"
    http_status = 401


class ForbiddenError(AccessError):
    """The token is valid but its role does not allow this request."""

    code = "forbidden"
    http_status = 403


class FetchRefusedError(AccessError):
    """A holder refused a ``/v1/peer/fetch``: the requesting site may not read that volume (it
    is neither the volume's primary nor a holder of any of its committed snapshots in Raft),
    or the request asks for a manifest or a manifest page of another volume under its name.
    Evidence: ``sender``, ``volume``, ``reason`` (``not_holder``, ``unknown_volume``,
    ``not_data_site``, ``other_volume``), ``digest`` (hex) for ``other_volume``. Logged at
    WARNING once per requester and reason per audit window, counted in
    ``replicad_fetch_refused_total{requester,reason}`` and in the holder's peer audit."""

    code = "fetch_refused"
    http_status = 403


class BadSignatureError(AccessError):
    """The replicated state machine refused a command that is not signed by a key pinned for
    the site it names in ``by`` (or is signed for another cluster). Evidence: ``by``, ``op``,
    ``problem``. Every honest site logs it at WARNING and counts it in
    ``replicad_command_refused_total{reason="bad_signature"}``."""

    code = "bad_signature"


class ReplayedCommandError(AccessError):
    """The state machine refused a command whose op id its signer already used (a replay of
    a signed command), or older than what the replay memory covers."""

    code = "replayed"


class ExpiredCommandError(AccessError):
    """The state machine refused a command stamped (``now_ns``) further before the majority
    clock than the replay window (a captured command replayed late, or a site whose clock
    is far behind)."""

    code = "expired"


class RevokedError(AccessError):
    """The state machine refused a command signed by a key (or, unsigned, sent by a site)
    that a majority of sites revoked through Raft (``replicad revoke SITE``); or the peer API
    refused a request of such a site (every route; evidence ``sender``; audited and counted
    in ``replicad_peer_refused_total{reason="revoked"}``)."""

    code = "revoked"


class BadAckError(AccessError):
    """The state machine refused a ``commit_snapshot`` naming a holder whose signed "stored"
    acknowledgement (``acks``, :func:`replicad.core.identity.sign_ack`) is missing or not by
    a key pinned for it: a primary cannot claim copies nobody vouched for. Evidence:
    ``volume``, ``seq``, ``holder``, ``by``, ``problem``. Logged at WARNING and counted in
    ``replicad_command_refused_total{reason="bad_ack"}`` at every site."""

    code = "bad_ack"


class NotSelfError(AccessError):
    """The state machine refused a validly signed command by which one site speaks for another
    where only a site may speak for itself: a ``register_site`` whose signer (``by``) is not the
    site it registers (a compromised site naming an honest one a witness, or moving its peer
    address). Evidence: ``by``, ``site_id``, ``op``. Logged at WARNING and counted in
    ``replicad_command_refused_total{reason="not_self"}`` at every site."""

    code = "not_self"


class OutOfRangeError(ConflictError):
    """A value past a bound of the replicated state: a snapshot seq more than
    ``state.SEQ_STEP_MAX`` past the volume's last one (or past 2**63-1), a size past
    ``state.SIZE_BYTES_MAX``. Evidence names the value and the bound."""

    code = "out_of_range"


class ToolError(ReplicadError):
    """An external program (e2fsprogs ``mke2fs``/``debugfs``/``e2fsck``) could not run or
    failed; evidence holds the ``command``, its ``returncode`` and its ``stderr_tail``."""

    code = "tool_failed"
    exit_code = 1
    http_status = 500


class InternalError(ReplicadError):
    """A bug in replicad. The message carries the original exception's text."""

    code = "internal"
    exit_code = 70
    http_status = 500


def is_transient(err: BaseException) -> bool:
    """True when retrying the failed operation later may succeed.

    The single retry policy of the project: replicad errors say it themselves;
    ``OSError`` for full disks and connection problems is transient, other errors are not.
    """
    if isinstance(err, ReplicadError):
        return err.transient
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.ECONNREFUSED, errno.ECONNRESET,
                             errno.ETIMEDOUT, errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH)
    return isinstance(err, TimeoutError)


def facts_text(facts: Any) -> str:
    """``facts`` (an error's evidence, a command's arguments or result) in words for a log line
    or a terminal: ``key=value`` pairs separated by spaces, in the mapping's order, values as in
    TOML (``true``/``false`` lowercase, strings bare unless they hold a space, ``=``, a quote or
    nothing, then double-quoted; lists ``[1, 2]``; nested mappings ``{key=value ...}``; bytes as
    hex; None as ``none``). Anything but a mapping is shown as one such value. Never raises.

    >>> facts_text({"ok": True, "volume": "ehr", "seqs": [3, 4], "reason": "mass rename"})
    'ok=true volume=ehr seqs=[3, 4] reason="mass rename"'
    """
    if isinstance(facts, dict):
        return " ".join(f"{k}={_fact_value(v)}" for k, v in facts.items())
    return _fact_value(facts)


def _fact_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return "{" + facts_text(value) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return "[" + ", ".join(_fact_value(v) for v in items) + "]"
    text = str(value)
    if isinstance(value, str) and (not text or any(c in text for c in ' ="\'\t\n') or not text.isprintable()):
        return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return text


def from_os_error(err: OSError, what: str, **evidence: Any) -> ReplicadError:
    """Translate an ``OSError`` met while doing ``what`` into the tree (disk full → StoreFullError;
    missing → NotFoundError; permissions, read-only, bad path → UsageError; port taken →
    ConflictError; anything else InternalError).

    ``evidence`` may override the ``path`` and ``errno`` taken from ``err``.
    """
    facts = {"errno": err.errno, "path": err.filename, **evidence}
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"{what}: no space left on device", **facts)
    if err.errno == errno.ENOENT:
        return NotFoundError(f"{what}: {err.strerror}", **facts)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.EISDIR,
                     errno.ENOTDIR):  # the operator's path or permissions, not a bug
        return UsageError(f"{what}: {err.strerror}", **facts)
    if err.errno == errno.EADDRINUSE:
        return ConflictError(f"{what}: address already in use (another process listens there)", **facts)
    return InternalError(f"{what}: {err.strerror or err}", **facts)


_BY_CODE: dict[str, type[ReplicadError]] = {}


def _register(cls: type[ReplicadError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(ReplicadError)


def from_dict(body: dict[str, Any], status: int | None = None) -> ReplicadError:
    """Rebuild an error from a JSON body ``{error, message, evidence}`` sent by a peer or the
    admin API. Unknown codes become a plain :class:`ReplicadError` (or InternalError on 5xx)."""
    code = str(body.get("error", "error"))
    message = str(body.get("message", "error without message"))
    evidence = body.get("evidence") if isinstance(body.get("evidence"), dict) else {}
    cls = _BY_CODE.get(code, ReplicadError)
    if issubclass(cls, ConfigError):
        return cls(message, **{**evidence, "problems": list(evidence.get("problems", []))})
    err = cls.__new__(cls)
    ReplicadError.__init__(err, message, **{k: v for k, v in evidence.items()})
    return err
