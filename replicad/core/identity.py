"""Site identities and signed state-machine commands (Ed25519, RFC 8032, via ``cryptography``).

Every site holds one Ed25519 private key (its ``[identity] key_file``); every site's config
pins the public keys of every site (``[[sites]] public_key``, a short list during a
rotation). Each command a site proposes through Raft is signed by it, and the replicated
state machine (:func:`replicad.core.state.apply`) verifies it against the pinned keys of
the site named in ``by``: a member holding only its own key cannot speak in another
site's name, whatever it appends to the Raft log.

Pure code: no I/O, no clock, no randomness except in :func:`generate_private_key`.

Canonical encoding (what is signed): ``DOMAIN + msgpack(command without "sig")`` where every
map is written with its keys sorted (by type name, then value) and msgpack's
``use_bin_type`` (str and bytes stay distinct). The domain string separates these
signatures from any other use of a site key. The signed fields therefore include ``v``,
``op``, ``op_id``, ``by``, ``now_ns``, ``cluster`` and every argument.

Stored acknowledgements (O2): a site that stored a snapshot completely answers the primary
with :func:`sign_ack`, an Ed25519 signature by its own key over :func:`ack_bytes` =
``ACK_DOMAIN + msgpack([cluster_id, volume, epoch, seq, root, size_bytes, n_blocks])``: the
size and block count are those of the manifest the holder checked complete, so the size a
commit records is attested by its holders, not the primary's word alone (a 1-block snapshot
committed as 1 PiB once lifted the replicas' chunk quota for good). The primary puts them in
``commit_snapshot`` (``acks``) and the state machine checks each named holder's against the
commit's ``size_bytes`` (see :func:`ack_problem`): a primary cannot name a holder that did not
say it stored the snapshot, nor change the size it stored. Version 1 acknowledgements (without
the size) carry another domain and are refused.
The domain differs from :data:`DOMAIN`, so an acknowledgement is never a valid command
signature, nor the reverse.

Public key text form: ``"ed25519:" + base64(32 raw bytes)`` (what ``replicad identity init``
prints and ``[[sites]] public_key`` holds).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Mapping

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"replicad-command-v1\x00"
"""Prefix of every signed byte string (domain separation)."""
ACK_DOMAIN = b"replicad-stored-ack-v2\x00"
"""Prefix of every signed "stored" acknowledgement (:func:`ack_bytes`); v2 covers the size
(v1, ``replicad-stored-ack-v1``, did not: its signatures never verify as v2)."""
RELEASE_DOMAIN = b"replicad-release-report-v1\x00"
"""Prefix of every signed release report (:func:`release_report_bytes`): "this site runs a release
that applies rules 1..``rules_max``" (the state's ``rules`` command carries every member's)."""
RELEASE_CONSENT_DOMAIN = b"replicad-release-report-consent-v1\x00"
"""Prefix of a signed release report that also carries its operator's consent to raise the rules
leaving members behind (:func:`release_report_bytes` with ``leave_behind``)."""
PUBLIC_KEY_PREFIX = "ed25519:"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SIG_FIELD = "sig"
CLUSTER_FIELD = "cluster"
MAX_KEYS_PER_SITE = 4
"""Public keys pinned per site at most (the current one and the next, during a rotation)."""
DEFAULT_REPLAY_WINDOW_NS = 6 * 3600 * 1_000_000_000
"""A command stamped (``now_ns``) more than this before the majority clock
(:func:`replicad.core.state.quorum_now_ns`) is refused as ``expired``: 6 hours. Replays are
refused by each site's replay memory (op ids and a floor, see :mod:`replicad.core.state`)
whatever their age; the window bounds how long a command a Raft leader withheld can still
be committed, and stays above the clock errors a site must survive (a primary whose clock
is 2-3 h behind keeps committing: chaos campaign, scenario clock-step)."""
DEFAULT_REQUEST_TTL_NS = 24 * 3600 * 1_000_000_000
"""A protection-weakening request not approved within this time (majority clock) expires."""
DEFAULT_COOLING_OFF_NS = 24 * 3600 * 1_000_000_000
"""An approved protection-weakening request takes effect this long after its last approval
(majority clock), unless vetoed meanwhile: time for the operators of every site to notice."""
DEFAULT_MEMBERSHIP_COOLING_OFF_NS = 15 * 60 * 1_000_000_000
"""A revocation (``revoke_site``) or membership change (``set_members``) that a majority
approved, but not every unrevoked member of the cluster, takes effect this long after it was
approved (majority clock), unless vetoed meanwhile: one compromised site plus one stolen admin
token of another reach a majority of three, and this is the time the other operators have to
veto it (:mod:`replicad.core.state`, "Revocation and membership")."""


class CanonicalError(ValueError):
    """A value that has no canonical encoding (a type other than map, list, str, bytes,
    int, float, bool, None)."""


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        items = [(k, _canon(v)) for k, v in value.items()]
        for k, _ in items:
            if not isinstance(k, (str, int, bytes)) or isinstance(k, bool):
                raise CanonicalError(f"map key of type {type(k).__name__}")
        items.sort(key=lambda kv: (type(kv[0]).__name__, kv[0]))
        return dict(items)
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return value
    raise CanonicalError(f"value of type {type(value).__name__}")


def canonical_bytes(command: Mapping[str, Any]) -> bytes:
    """The bytes a command's signature covers: :data:`DOMAIN` + sorted-key msgpack of
    ``command`` without its ``sig`` field.

    Raises:
        CanonicalError: ``command`` is not a map or holds a value without a canonical form.
    """
    if not isinstance(command, Mapping):
        raise CanonicalError("a command must be a map")
    body = {k: v for k, v in command.items() if k != SIG_FIELD}
    return DOMAIN + msgpack.packb(_canon(body), use_bin_type=True)


def sign_command(private_key: Ed25519PrivateKey, command: Mapping[str, Any]) -> dict:
    """A copy of ``command`` with ``sig`` = Ed25519 signature (64 bytes) of
    :func:`canonical_bytes`. Ed25519 is deterministic: the same command gets the same
    signature (a retried proposal stays byte-identical).

    Raises:
        CanonicalError: see :func:`canonical_bytes`.
    """
    signed = {k: v for k, v in command.items() if k != SIG_FIELD}
    signed[SIG_FIELD] = private_key.sign(canonical_bytes(signed))
    return signed


def signature_problem(command: Any, public_keys: Any, revoked: Any = ()) -> str | None:
    """Why ``command``'s ``sig`` is not a valid signature by one of ``public_keys``; None if it is.

    Args:
        command: the decoded command map.
        public_keys: the raw 32-byte Ed25519 keys pinned for the site named in ``by``
            (empty or None: the site has no key, nothing it says is accepted).
        revoked: raw keys revoked through Raft: a signature by one of them is ``revoked key``.
    Returns:
        None, or a short reason (``missing signature``, ``no pinned key``, ``bad signature``,
        ``not canonical``, ``revoked key``). Never raises.
    """
    sig = command.get(SIG_FIELD) if isinstance(command, dict) else None
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        return "missing signature"
    if not public_keys:
        return "no pinned key"
    try:
        message = canonical_bytes(command)
    except CanonicalError:
        return "not canonical"
    return _verify_any(public_keys, revoked, sig, message, "bad signature")


def _verify_any(public_keys, revoked, sig: bytes, message: bytes, bad: str) -> str | None:
    """None if ``sig`` verifies ``message`` under one of ``public_keys`` (raw Ed25519) that is
    not in ``revoked``; ``"revoked key"`` if only a revoked one does; else ``bad``."""
    for raw in public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return "revoked key" if raw in revoked else None
    return bad


def ack_bytes(cluster_id: str, volume: str, epoch: int, seq: int, root: bytes, size_bytes: int,
              n_blocks: int) -> bytes:
    """The bytes a "stored" acknowledgement signs: :data:`ACK_DOMAIN` + msgpack of the list
    ``[cluster_id, volume, epoch, seq, root, size_bytes, n_blocks]`` (a list: field order is the
    encoding).

    Args:
        cluster_id: the cluster's name; volume: the volume's name; epoch, seq: ints
            (0 <= x < 2**64); root: the 32-byte manifest root; size_bytes: the manifest's image
            size in bytes, n_blocks: its block count (``ceil(size_bytes / block_size)``), both
            ints (0 <= x < 2**64).
    Raises:
        CanonicalError: a field of the wrong type (the state machine checks types first).
    """
    if not (isinstance(cluster_id, str) and isinstance(volume, str) and isinstance(root, bytes)
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64
                    for x in (epoch, seq, size_bytes, n_blocks))):
        raise CanonicalError("an acknowledgement covers (str cluster, str volume, int epoch, int seq, bytes root, "
                             "int size_bytes, int n_blocks)")
    return ACK_DOMAIN + msgpack.packb([cluster_id, volume, epoch, seq, root, size_bytes, n_blocks],
                                      use_bin_type=True)


def sign_ack(private_key: Ed25519PrivateKey, cluster_id: str, volume: str, epoch: int, seq: int,
             root: bytes, size_bytes: int, n_blocks: int) -> bytes:
    """This site's 64-byte Ed25519 signature of :func:`ack_bytes`: "I store snapshot ``seq``
    (``root``, ``size_bytes`` in ``n_blocks`` blocks) of ``volume`` at ``epoch``, completely and
    durably".

    Raises:
        CanonicalError: see :func:`ack_bytes`.
    """
    return private_key.sign(ack_bytes(cluster_id, volume, epoch, seq, root, size_bytes, n_blocks))


def ack_problem(sig: Any, public_keys: Any, cluster_id: str, volume: str, epoch: int, seq: int, root: bytes,
                size_bytes: Any, n_blocks: Any, revoked: Any = ()) -> str | None:
    """Why ``sig`` is not a valid acknowledgement by one of ``public_keys`` (raw 32-byte keys
    pinned for the holder) of ``(cluster_id, volume, epoch, seq, root, size_bytes, n_blocks)``;
    None if it is. An acknowledgement of the same snapshot with another size is ``bad
    acknowledgement`` (the signature covers the size); a size that is not an int (a commit
    without ``size_bytes``) is ``not canonical``.

    Returns:
        None, or ``missing acknowledgement``, ``no pinned key``, ``not canonical``,
        ``revoked key`` or ``bad acknowledgement``. Never raises.
    """
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        return "missing acknowledgement"
    if not public_keys:
        return "no pinned key"
    try:
        message = ack_bytes(cluster_id, volume, epoch, seq, root, size_bytes, n_blocks)
    except CanonicalError:
        return "not canonical"
    return _verify_any(public_keys, revoked, sig, message, "bad acknowledgement")


def release_report_bytes(cluster_id: str, site_id: str, rules_max: int, at_ns: int,
                         leave_behind: list[str] | None = None) -> bytes:
    """The bytes a release report signs: :data:`RELEASE_DOMAIN` + msgpack of the list
    ``[cluster_id, site_id, rules_max, at_ns]``: "site ``site_id`` of ``cluster_id`` runs a release
    that applies the state's rules 1..``rules_max``, said at ``at_ns``" (ns since the epoch, by the
    site's clock). With ``leave_behind`` (a list of site ids, sorted, no repeats) the report also
    carries its operator's consent to raise the rules leaving those members behind
    (``replicad raise-rules --leave-behind``): :data:`RELEASE_CONSENT_DOMAIN` + msgpack of
    ``[cluster_id, site_id, rules_max, at_ns, leave_behind]``, a form of its own (a signature of
    one form never verifies as the other).

    Raises:
        CanonicalError: a field of the wrong type (ints: 0 <= x < 2**64; ``leave_behind`` a sorted
            list of distinct strings).
    """
    if not (isinstance(cluster_id, str) and isinstance(site_id, str)
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64 for x in (rules_max, at_ns))):
        raise CanonicalError("a release report covers (str cluster, str site, int rules_max, int at_ns)")
    if leave_behind is None:
        return RELEASE_DOMAIN + msgpack.packb([cluster_id, site_id, rules_max, at_ns], use_bin_type=True)
    if not (isinstance(leave_behind, list) and all(isinstance(s, str) for s in leave_behind)
            and leave_behind == sorted(set(leave_behind))):
        raise CanonicalError("a release report's leave_behind is a sorted list of distinct site ids")
    return RELEASE_CONSENT_DOMAIN + msgpack.packb([cluster_id, site_id, rules_max, at_ns, leave_behind],
                                                  use_bin_type=True)


def sign_release_report(private_key: Ed25519PrivateKey, cluster_id: str, site_id: str, rules_max: int,
                        at_ns: int, leave_behind: list[str] | None = None) -> bytes:
    """The 64-byte Ed25519 signature of :func:`release_report_bytes` by ``private_key``.

    Raises:
        CanonicalError: see :func:`release_report_bytes`.
    """
    return private_key.sign(release_report_bytes(cluster_id, site_id, rules_max, at_ns, leave_behind))


def release_report_problem(sig: Any, public_keys: Any, cluster_id: str, site_id: str, rules_max: Any, at_ns: Any,
                           revoked: Any = (), leave_behind: Any = None) -> str | None:
    """Why ``sig`` is not a valid release report of ``site_id`` (:func:`release_report_bytes`,
    with its operator's ``leave_behind`` consent when not None) under one of ``public_keys`` (raw
    32-byte keys the state records for it); None if it is.

    Returns:
        None, or ``missing signature``, ``no pinned key``, ``not canonical``, ``revoked key`` or
        ``bad release report``. Never raises.
    """
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        return "missing signature"
    if not public_keys:
        return "no pinned key"
    try:
        message = release_report_bytes(cluster_id, site_id, rules_max, at_ns, leave_behind)
    except CanonicalError:
        return "not canonical"
    return _verify_any(public_keys, revoked, sig, message, "bad release report")


def generate_private_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key (OS randomness)."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """``key`` as an unencrypted PKCS#8 PEM (what ``[identity] key_file`` holds)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key_pem(data: bytes) -> Ed25519PrivateKey:
    """Parse a PKCS#8 PEM Ed25519 private key.

    Raises:
        ValueError: not PEM, encrypted, or not an Ed25519 key (message says which).
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"not an unencrypted PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"not an Ed25519 key ({type(key).__name__})")
    return key


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``key``'s public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def format_public_key(raw: bytes) -> str:
    """``"ed25519:<base64>"`` for 32 raw public key bytes."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of ``"ed25519:<base64>"``.

    Raises:
        ValueError: wrong prefix, not base64, or not 32 bytes.
    """
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(f"a public key is written {PUBLIC_KEY_PREFIX}<base64> (replicad identity init prints it)")
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the public key is not valid base64") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key has {PUBLIC_KEY_BYTES} bytes, this one {len(raw)}")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as err:
        raise ValueError(f"not an Ed25519 public key: {err}") from None
    return raw


@dataclass(frozen=True)
class Trust:
    """What the state machine trusts: an input of :func:`replicad.core.state.apply` that
    every site must give identically (it comes from the ``[[sites]]`` tables and the cluster
    policy, which are the same in every site's config).

    Attributes:
        cluster_id: the cluster's name; every command must carry it (``cluster``), so a
            command signed for another cluster is refused here.
        keys: ``{site_id: (raw 32-byte public key, ...)}``; None = unsigned lab mode
            (``unsafe_unsigned``): ``by`` is then a claim, as it was before identities.
        approvals: sites needed to apply a protection-weakening request, the requester
            counting as one; None = a majority of the registered data sites.
        replay_window_ns: see :data:`DEFAULT_REPLAY_WINDOW_NS`.
        request_ttl_ns: see :data:`DEFAULT_REQUEST_TTL_NS`.
        cooling_off_ns: see :data:`DEFAULT_COOLING_OFF_NS`; 0 applies a request at its last
            approval.
        membership_cooling_off_ns: see :data:`DEFAULT_MEMBERSHIP_COOLING_OFF_NS`; 0 (a lab
            setting: ``[policy] unsafe_short_membership_cooling_off``) applies a revocation or
            membership change at its last needed approval.
    """

    cluster_id: str
    keys: Mapping[str, tuple[bytes, ...]] | None = None
    approvals: int | None = None
    replay_window_ns: int = DEFAULT_REPLAY_WINDOW_NS
    request_ttl_ns: int = DEFAULT_REQUEST_TTL_NS
    cooling_off_ns: int = DEFAULT_COOLING_OFF_NS
    membership_cooling_off_ns: int = DEFAULT_MEMBERSHIP_COOLING_OFF_NS

    @property
    def signed(self) -> bool:
        """True unless this is the unsigned lab mode."""
        return self.keys is not None


@dataclass(frozen=True)
class Signer:
    """This site's signing identity: its site id, its private key and the cluster id it
    signs for. :meth:`sign` fills ``by``, ``cluster`` and ``sig`` of a command."""

    site_id: str
    private_key: Ed25519PrivateKey
    cluster_id: str

    def sign(self, command: Mapping[str, Any]) -> dict:
        """``command`` with ``by`` = this site, ``cluster`` = the cluster id and ``sig``.

        Raises:
            ValueError: ``command`` names another site in ``by`` (a site signs only as itself).
            CanonicalError: see :func:`canonical_bytes`.
        """
        by = command.get("by", self.site_id)
        if by != self.site_id:
            raise ValueError(f"site {self.site_id!r} cannot sign a command by {by!r}")
        return sign_command(self.private_key, {**command, "by": self.site_id, CLUSTER_FIELD: self.cluster_id})

    def sign_ack(self, volume: str, epoch: int, seq: int, root: bytes, size_bytes: int, n_blocks: int) -> bytes:
        """This site's "stored" acknowledgement of a snapshot of ``size_bytes`` in ``n_blocks``
        blocks (:func:`sign_ack`, this cluster).

        Raises:
            CanonicalError: see :func:`ack_bytes`.
        """
        return sign_ack(self.private_key, self.cluster_id, volume, epoch, seq, root, size_bytes, n_blocks)

    def sign_release_report(self, rules_max: int, at_ns: int, leave_behind: list[str] | None = None) -> bytes:
        """This site's 64-byte signature of its release report (:func:`release_report_bytes`,
        this cluster and site; with its operator's ``leave_behind`` consent when not None).

        Raises:
            CanonicalError: see :func:`release_report_bytes`.
        """
        return sign_release_report(self.private_key, self.cluster_id, self.site_id, rules_max, at_ns, leave_behind)

    @property
    def public_key(self) -> str:
        """This site's public key in text form."""
        return format_public_key(public_key_raw(self.private_key))
