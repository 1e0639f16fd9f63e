"""Vouched checkpoints of the replicated state, and the full dumps built on them (issue 11, part 4).

A full state transfer (pysyncobj's install-snapshot: the leader ships its dump to a follower
whose next log entry was compacted away) hands the follower a *state*, not signed commands:
it bypasses :func:`replicad.core.state.apply` and so every signature check. A compromised
leader could ship any state (un-revoke itself, clear a verdict, make itself primary). This
module makes a dump something a majority vouched for:

* **Count** (:func:`advance`): the Raft node counts the commands it applies in
  ``state["applied"]``, refused ones included. Every site applies the same committed entries
  in the same order, so the count and the state after ``n`` commands are the same at every
  site.
* **Checkpoint** (:class:`CheckpointLog`): after the command that makes the count a multiple
  of ``every`` (:data:`CHECKPOINT_EVERY`), each site computes :func:`state_digest` of its
  state, keeps ``(n, digest, state)`` (the last :data:`CHECKPOINTS_KEPT`; states are
  immutable values sharing structure, so keeping one costs little memory) with the command
  payloads applied since the oldest one kept, and proposes a signed ``vouch {n, hash}``
  (:mod:`replicad.core.state`, op ``vouch``: recorded per site, the last two).
* **Dump** (:func:`dump_document`, format v2): ``{v: 2, base_n: c, base: S_c, suffix: [the
  msgpack payloads of commands c+1 ...], last, prev, cluster}`` where ``c`` is the newest
  checkpoint kept here whose digest a majority of the member sites vouched in the current
  state, or 0 (the initial state, which every site builds itself) while it is still kept.
  No such base: the dump is not written, so pysyncobj does not compact its log (history is
  never dropped); an ERROR says so (:class:`NotCompacting`).
* **Load** (:func:`verify_dump`, from the network and from this site's own file at start):
  the digest of ``base`` is recomputed; the suffix is replayed through ``apply`` (every
  signature, replay and bound check runs); a command refused there (forged, replayed,
  expired, revoked) is refused again, exactly as every site refused it when the log applied
  it, so it changes nothing but the audit and the count; it does not refuse the dump (a
  member that slips one forged command into the log every checkpoint interval would
  otherwise keep every lagging site from ever catching up); the vouches that the
  replayed suffix applied must show a majority of member sites for ``(c, digest)``
  (``dump_not_vouched``; each vouch is a signed command, so the leader cannot forge them;
  ``apply`` checks it against the keys the dump's own states record, so counting it also
  needs a key this node's config pins and the members are the config's sites: a forged base
  cannot name its own vouchers,
  and a vouch for ``c`` is applied after command ``c``, so it is always in the suffix); a
  later checkpoint inside the suffix that a majority vouched must be reproduced by the
  replay (``dump_bad_command``: a command omitted, reordered or inserted before it).
* **Divergence** (:meth:`CheckpointLog.divergent`): a majority vouch for a checkpoint this
  site computed differently is reported (the Raft node logs it at ERROR and counts
  ``checkpoint_divergent``); ``apply`` itself stays deterministic and never looks at it.

What remains (Raft is crash-tolerant, not Byzantine): the commands after the newest
vouched checkpoint (at most ``(CHECKPOINTS_KEPT + 1) * every``, typically ``every`` plus
the few commands a vouch takes to commit) are verified only one by one, not as a sequence:
a leader can omit or reorder *other* sites' commands there, which is what it can already do
with the log entries it sends a lagging follower; the follower then computes a different
digest for the next checkpoint, and the majority's vouch for it reports the divergence.

Digest: BLAKE3-256 of :data:`STATE_DOMAIN` + msgpack (``use_bin_type``) of the state as
it is. msgpack keeps map insertion order, and every site builds its state through the same
``apply`` from the same commands (a dump round trip keeps the order too), so the bytes are
the same at every site running the same code; sorting every map (a canonical form
independent of the code) costs 111 ms instead of 9 ms for a state of 10 volumes x 1000
snapshots (2.5 MB), measured: a mixed-version cluster whose code orders a map differently
is reported as divergent and does not compact, it never accepts a wrong state.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import blake3
import msgpack

from replicad.core import errors
from replicad.core import state as cluster_state
from replicad.core.identity import Trust, signature_problem

log = logging.getLogger("replicad.consensus.raft")  # logs as part of the Raft adapter

CHECKPOINT_EVERY = 256
"""Commands between two checkpoints (the count ``n`` of a checkpoint is a multiple of it).
With the daemons' heartbeats alone (a signed ``clock`` per site every 5 s) a three-site
cluster reaches one every ~7 minutes; a checkpoint costs one msgpack encoding and BLAKE3 of
the state (~9 ms for 10 volumes x 1000 snapshots) on the Raft tick thread, and one vouch
command per site."""
CHECKPOINTS_KEPT = 4
"""Checkpoints a site keeps (with the payloads since the oldest): a majority's vouches may
lag this many checkpoints before the site stops compacting its log."""
DUMP_VERSION = 2
STATE_DOMAIN = b"replicad-state-v1\x00"
COMMAND_MAX_BYTES = 40 * 1024  # raft.MAX_COMMAND_BYTES: a suffix payload is one proposed command
DUMP_REASONS = ("dump_damaged", "dump_not_vouched", "dump_bad_command", "dump_malformed")
"""Refusal reasons of a dump from the network (``replicad_raft_refused_total{reason}``)."""


class NotCompacting(Exception):
    """No dump can be written now (no checkpoint kept here is vouched by a majority):
    raised by the dump writer so that pysyncobj keeps its whole log."""


def state_digest(state: Any) -> bytes:
    """BLAKE3-256 (32 bytes) of :data:`STATE_DOMAIN` + msgpack of ``state`` (see the module
    docstring, "Digest"). Raises ``TypeError``/``ValueError`` for a value msgpack cannot encode."""
    return blake3.blake3(STATE_DOMAIN + msgpack.packb(state, use_bin_type=True)).digest()


def decode_command(payload: Any) -> Any:
    """The command map of a msgpack payload, or None when it does not decode (``apply``
    then refuses it as ``bad_request``, identically at every site)."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:  # undecodable: the state machine refuses a non-map command
        return None


def advance(state: dict, payload: Any, trust: Trust | None) -> tuple[dict, dict, Any]:
    """Apply one command payload and count it: ``(new_state, result, command)``.

    ``new_state["applied"]`` is ``state["applied"] + 1`` (0 when absent) whatever the
    result: the count is the number of commands applied, refused ones included. Never raises.
    """
    command = decode_command(payload)
    new_state, result = cluster_state.apply(state, command, trust)
    return {**new_state, "applied": _count(state) + 1}, result, command


def _count(state: Any) -> int:
    value = state.get("applied", 0) if isinstance(state, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def voters(trust: Trust | None, state: dict | None = None) -> tuple[frozenset[str], int]:
    """``(member site ids, majority)``: the sites whose vouches count and how many of them make
    a majority (``len // 2 + 1``, the Raft quorum of a group of that size).

    The members are the agreed membership of ``state`` (``incarnation.members``, as changed by
    applied ``set_members``) when it has one: the same at every site whatever its config says,
    like the keys :func:`replicad.core.state.apply` checks the vouches against. Otherwise (no
    ``state``, or not founded yet) the sites whose key the local config pins: that is the
    anchor :func:`verify_dump` uses, since a dump's own state cannot be trusted to name its
    vouchers. A revocation does not shrink it: a revoked site's vouches are never applied (its
    key is refused), so they are simply missing. Unsigned (``trust`` None or without keys): no
    member can vouch, ``(frozenset(), 0)``."""
    if trust is None or trust.keys is None:
        return frozenset(), 0
    inc = (state or {}).get("incarnation")
    members = frozenset(m["site_id"] for m in inc["members"]) if inc else frozenset(trust.keys)
    return members, len(members) // 2 + 1


def vouched_by(state: dict, n: int, digest: bytes, members: frozenset[str]) -> set[str]:
    """Member sites whose vouches kept in ``state`` include ``(n, digest)`` and that are
    not revoked."""
    out = set()
    for site, kept in (state.get("vouches") or {}).items():
        if site in members and not cluster_state.is_revoked(state, site) and \
                any(v[0] == n and v[1] == digest for v in kept):
            out.add(site)
    return out


class CheckpointLog:
    """The checkpoints this site keeps and the payloads applied since the oldest.

    ``points``: ``[(n, digest, state)]``, oldest first, at most :data:`CHECKPOINTS_KEPT`
    (plus the start point); ``points[0]`` is where ``payloads`` start: ``payloads[i]`` is
    command ``points[0].n + i + 1``. ``initial`` is True while ``points[0]`` is the initial
    state (n 0), which every site can build itself and so needs no vouch. Not thread-safe:
    the Raft node uses it under its consumer lock, on the tick thread.
    """

    def __init__(self, every: int, start_n: int, start_state: dict, start_digest: bytes, initial: bool) -> None:
        if every < 1:
            raise ValueError("checkpoint interval must be at least 1 command")
        self.every = every
        self.points: list[tuple[int, bytes, dict]] = [(start_n, start_digest, start_state)]
        self.initial = initial
        self.payloads: list[bytes] = []
        self.reported: set[tuple[int, bytes]] = set()  # divergences already reported

    @classmethod
    def fresh(cls, initial_state: dict, every: int = CHECKPOINT_EVERY) -> "CheckpointLog":
        """The log of a node starting from ``initial_state`` (count 0)."""
        return cls(every, 0, initial_state, state_digest(initial_state), initial=True)

    @property
    def end_n(self) -> int:
        """The count of the newest command recorded."""
        return self.points[0][0] + len(self.payloads)

    def record(self, state: dict, payload: bytes) -> tuple[int, bytes] | None:
        """Remember ``payload`` (the command just applied, giving ``state``); at a multiple of
        ``every``, keep a checkpoint and return ``(n, digest)`` to vouch for, else None."""
        n = _count(state)
        if n != self.end_n + 1:  # cannot happen: every applied command is recorded
            log.error("raft checkpoints: count %d after %d recorded commands: restarting the checkpoint log", n,
                      self.end_n)
            self.points, self.payloads, self.initial = [(n, state_digest(state), state)], [], False
            return None
        self.payloads.append(bytes(payload))
        if n % self.every:
            return None
        digest = state_digest(state)
        self.points.append((n, digest, state))
        if len(self.points) > CHECKPOINTS_KEPT + 1:
            dropped = self.points.pop(0)
            del self.payloads[:self.points[0][0] - dropped[0]]
            self.initial = False
        return n, digest

    def digest_at(self, n: int) -> bytes | None:
        """The digest of the kept point at count ``n``, or None."""
        return next((d for m, d, _ in self.points if m == n), None)

    def writable(self, state: dict, trust: Trust | None) -> tuple[int, dict, list[bytes]] | None:
        """``(base_n, base, suffix)`` for a dump of ``state`` (the state after :attr:`end_n`):
        the newest kept point a majority of member sites vouched in ``state`` (or the initial
        state while it is kept), and the payloads since. Unsigned: ``state`` itself with an
        empty suffix (nothing can be vouched). None: no kept point is vouched."""
        members, majority = voters(trust, state)
        if not members:
            return self.end_n, state, []
        start = self.points[0][0]
        for n, digest, base in reversed(self.points):
            if (n == 0 and self.initial) or len(vouched_by(state, n, digest, members)) >= majority:
                return n, base, self.payloads[n - start:]
        return None

    def divergent(self, state: dict, trust: Trust | None) -> list[tuple[int, bytes, bytes, list[str]]]:
        """Checkpoints kept here for which a majority of member sites vouched (in ``state``)
        another digest: ``[(n, ours, theirs, sites)]``, each reported once."""
        members, majority = voters(trust, state)
        if not members:
            return []
        out = []
        ours = {n: d for n, d, _ in self.points}
        claims: dict[tuple[int, bytes], set[str]] = {}
        for site, kept in (state.get("vouches") or {}).items():
            if site in members and not cluster_state.is_revoked(state, site):
                for n, digest in kept:
                    claims.setdefault((n, digest), set()).add(site)
        for (n, digest), sites in sorted(claims.items()):
            if n in ours and digest != ours[n] and len(sites) >= majority and (n, digest) not in self.reported:
                self.reported.add((n, digest))
                out.append((n, ours[n], digest, sorted(sites)))
        return out

    def summary(self) -> dict:
        """``{"n": newest checkpoint kept, "oldest_n": int, "suffix": payloads kept}`` for status."""
        return {"n": self.points[-1][0], "oldest_n": self.points[0][0], "suffix": len(self.payloads)}


def dump_document(checkpoints: CheckpointLog, state: dict, trust: Trust | None, last: Sequence, prev: Sequence,
                  cluster: Sequence[str]) -> dict:
    """The v2 dump of ``state`` (see the module docstring), ready for msgpack.

    Raises:
        NotCompacting: no checkpoint kept here is vouched by a majority (and the initial state
            is no longer kept): writing a dump would let pysyncobj drop log entries that no
            follower could then verify.
    """
    found = checkpoints.writable(state, trust)
    if found is None:
        members, majority = voters(trust, state)
        raise NotCompacting(f"none of the checkpoints kept here ({[p[0] for p in checkpoints.points]}) is vouched by "
                            f"{majority} of the {len(members)} sites; {len(checkpoints.payloads)} commands since the "
                            f"oldest (vouches lag: sites down, or not vouching); sites that vouched none of them: "
                            f"{lagging(checkpoints, state, members) or 'none'}")
    base_n, base, suffix = found
    return {"v": DUMP_VERSION, "base_n": base_n, "base": base, "suffix": list(suffix), "last": list(last),
            "prev": list(prev), "cluster": list(cluster)}


def lagging(checkpoints: CheckpointLog, state: dict, members: frozenset[str]) -> list[str]:
    """The member sites (sorted) whose vouches kept in ``state`` include none of the checkpoints
    kept here (revoked sites included: their vouches never count): the sites a log that does not
    compact waits on."""
    return sorted(site for site in members
                  if not any(site in vouched_by(state, n, digest, members) for n, digest, _ in checkpoints.points))


def _refused(reason: str, message: str, **evidence: Any) -> errors.DumpRefusedError:
    return errors.DumpRefusedError(message, reason=reason, **evidence)


def suffix_max(every: int) -> int:
    """Most suffix commands a dump may carry: what :class:`CheckpointLog` can hold."""
    return (CHECKPOINTS_KEPT + 1) * every


def verify_dump(document: Any, trust: Trust | None, initial: dict,
                every: int = CHECKPOINT_EVERY) -> tuple[dict, CheckpointLog]:
    """Check a v2 dump and rebuild the state it stands for (module docstring, "Load").

    Args:
        document: the decoded msgpack dump.
        trust: this node's trust (the pinned keys; None or unsigned: no vouch is required,
            the suffix is still replayed).
        initial: the initial state this node builds itself (with its ``limits``).
        every: this node's checkpoint interval.
    Returns:
        ``(state, checkpoints)``: the state after the suffix, and the checkpoint log to go on
        with (the base, the checkpoints recomputed in the suffix, its payloads).
    Raises:
        errors.DumpRefusedError: ``reason`` ``dump_malformed`` (shape, bounds, version),
            ``dump_not_vouched`` (the base is not the initial state nor vouched by a majority),
            ``dump_bad_command`` (a majority-vouched checkpoint in the suffix not reproduced:
            a command omitted, reordered or inserted before it).
    """
    if not isinstance(document, dict) or document.get("v") != DUMP_VERSION:
        version = document.get("v") if isinstance(document, dict) else None
        raise _refused("dump_malformed", f"not a replicad dump of version {DUMP_VERSION} (version {version!r})",
                       version=version if isinstance(version, (int, str, type(None))) else "?")
    base, base_n, suffix = document.get("base"), document.get("base_n"), document.get("suffix")
    if not isinstance(base, dict) or base.get("v") != cluster_state.STATE_VERSION:
        raise _refused("dump_malformed", "the dump's base is not a cluster state of this version")
    if not isinstance(base_n, int) or isinstance(base_n, bool) or base_n < 0 or _count(base) != base_n \
            or base.get("applied", 0) != base_n:
        raise _refused("dump_malformed", f"the dump's base count {base_n!r} is not the count in its state",
                       base_n=base_n if isinstance(base_n, int) else None)
    if not isinstance(suffix, list) or len(suffix) > suffix_max(every) or not all(
            isinstance(p, bytes) and len(p) <= COMMAND_MAX_BYTES for p in suffix):
        raise _refused("dump_malformed", f"the dump's suffix is not a list of at most {suffix_max(every)} commands "
                       f"of at most {COMMAND_MAX_BYTES} bytes",
                       suffix_len=len(suffix) if isinstance(suffix, list) else None)
    members, majority = voters(trust)
    try:
        base_digest = state_digest(base)
    except (TypeError, ValueError) as exc:
        raise _refused("dump_malformed", f"the dump's base cannot be encoded: {exc}") from None
    if members and base_n == 0 and base_digest != state_digest(initial):
        raise _refused("dump_not_vouched", "the dump's base claims count 0 but is not the initial state",
                       base_n=0)
    checkpoints = CheckpointLog(every, base_n, base, base_digest, initial=base_n == 0)
    claims: dict[tuple[int, bytes], set[str]] = {}
    replayed: dict[int, bytes] = {base_n: base_digest}
    state = base
    for i, payload in enumerate(suffix):
        state, result, command = advance(state, payload, trust)
        if result.get("ok") and isinstance(command, dict) and command.get("op") == "vouch" \
                and command.get("by") in members and isinstance(command.get("n"), int) \
                and isinstance(command.get("hash"), bytes) \
                and signature_problem(command, trust.keys.get(command["by"])) is None:
            # apply checked the vouch against the keys the dump's own states record; counting it
            # also needs a key this node's config pins (a forged base cannot name its vouchers)
            claims.setdefault((command["n"], command["hash"]), set()).add(command["by"])
        point = checkpoints.record(state, payload)
        if point is not None:
            replayed[point[0]] = point[1]
    if members and base_n > 0:
        vouchers = claims.get((base_n, base_digest), set())
        if len(vouchers) < majority:
            raise _refused("dump_not_vouched", f"the dump's base (count {base_n}) is vouched by {sorted(vouchers)}, "
                           f"not by {majority} of the {len(members)} sites",
                           base_n=base_n, vouched_by=sorted(vouchers), majority=majority)
    for (n, digest), sites in sorted(claims.items()):
        if len(sites) >= majority and n in replayed and replayed[n] != digest:
            raise _refused("dump_bad_command", f"the suffix does not reproduce checkpoint {n} that {sorted(sites)} "
                           "vouched (a command omitted, reordered or inserted before it)",
                           n=n, vouched_by=sorted(sites))
    return state, checkpoints


def document_key(document: dict) -> bytes:
    """A digest naming a v2 dump's content (base, suffix, last): lets the node adopt a dump it
    verified a moment before (the network path checks, then pysyncobj loads the file)."""
    h = blake3.blake3(state_digest(document["base"]))
    h.update(msgpack.packb([document["base_n"], list(document.get("last") or []), document["suffix"]],
                           use_bin_type=True))
    return h.digest()
