"""The site configuration: one TOML file per site, validated into one frozen model.

``load_config(path)`` reads the file and returns a :class:`SiteConfig`, or raises
:class:`~replicad.core.errors.ConfigError` whose ``problems`` lists *every* problem found, each
as ``"key.path: message"`` (``"volumes[0].block_size: must be a power of two ..."``).
``replicad check-config PATH`` prints exactly that list. The layout and every key, with
unit and default, are documented in ``config/README.md``; in short::

    site_id  = "site-a"
    data_dir = "/var/lib/replicad/site-a"
    [raft]   bind = "127.0.0.1:7101"   password_file = "raft.key"   # or password = "..."
    [peer]   listen = "127.0.0.1:7201"
    [admin]  listen = "127.0.0.1:7301"
    [[admin.tokens]]  name = "ops-alice"  role = "viewer" | "operator" | "admin"  sha256 = "<hex>"
    [[sites]]   site_id, raft, peer_url, admin_url, kind = "data" | "witness"
    [[volumes]] name, path, block_size, interval, min_copies, initial_primary, ...
    [volumes.source] / [volumes.retention] / [volumes.anomaly]
    [floor]  lock = "7d"  daily = 35  weekly = 13  monthly = 12   # this site's own, never Raft's
    [scrub]  standby_every = "60s"  standby_bytes = "256MiB"    # background check of standby images

Decisions the operator must know:

* Unknown keys are errors everywhere (a typo must not silently fall back to a default).
* Relative paths (``data_dir``, ``volumes.path``, ``raft.password_file``, ``tls.*``) are
  resolved against the directory of the config file (:func:`parse_config`: against
  ``base_dir``, by default the current directory). ``~`` is not expanded.
* Topology: at least 3 voting sites, of which at least 2 are data sites (2 data sites +
  1 witness is the smallest cluster that survives the loss of any one site). A 2-site
  cluster is refused: Raft cannot keep a majority when either is lost. ``lab = true``
  lifts this (1 or 2 sites, 1 data site) for test benches only.
* The Raft port speaks pickle (see FIELD-NOTES): the shared password is mandatory and at
  least 16 characters; ``password_file`` is preferred over an inline ``password``, and is
  refused (like ssh refuses a private key) when group or others have any access to it:
  ``chmod 600``.
* Admin API tokens (``[[admin.tokens]]``) are stored as the SHA-256 of the token, never the
  token (``replicad hash-token``). Without any token the admin API is open, which is
  allowed only when ``admin.listen`` is a loopback address (``127.0.0.0/8``, ``::1``,
  ``localhost``).

Models built directly in Python (``SiteConfig(...)``) are validated the same way but raise
``pydantic.ValidationError``; only :func:`parse_config`/:func:`load_config` translate into
``ConfigError`` and resolve relative paths.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from replicad.core import identity as site_identity
from replicad.core.errors import ConfigError, NotFoundError
from replicad.core.floor import DEFAULT_FLOOR, MIN_LOCK_S, FloorPolicy
from replicad.core.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "SiteRef",
    "RetentionConfig",
    "FloorConfig",
    "SourceConfig",
    "AnomalyConfig",
    "DetectionConfig",
    "DrillConfig",
    "VolumeConfig",
    "TlsConfig",
    "AdminToken",
    "ADMIN_ROLES",
    "SiteConfig",
    "IdentityConfig",
    "PolicyConfig",
    "load_signer",
    "load_config",
    "parse_config",
    "split_host_port",
    "MIN_BLOCK_SIZE_BYTES",
    "MAX_BLOCK_SIZE_BYTES",
    "MIN_RAFT_PASSWORD_CHARS",
    "LOG_LEVELS",
]

MIN_BLOCK_SIZE_BYTES = 4 * 1024
MAX_BLOCK_SIZE_BYTES = 4 * 1024 * 1024
DEFAULT_BLOCK_SIZE_BYTES = 64 * 1024
MIN_INTERVAL_S = 0.1
MIN_RAFT_PASSWORD_CHARS = 16
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ADMIN_ROLES = ("viewer", "operator", "admin")   # increasing power; see replicad/auth.py
_SHA256_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")

_IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


# --------------------------------------------------------------------------- field types


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return value


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` into ``(host, port)``.

    ``host`` is an IPv4 address, a DNS name, or an IPv6 address in brackets
    (``"[::1]:7101"``, returned without brackets); ``port`` is 1..65535.

    Raises:
        ValueError: with a message naming what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected 'host:port', got {type(text).__name__}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"{text!r} is not 'host:port' (IPv6 as '[::1]:7101')")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not 'host:port'")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, as '[::1]:7101'")
        if not _HOSTNAME_RE.match(host):
            raise ValueError(f"{host!r} in {text!r} is not a valid host name or IPv4 address")
    return host, _check_port(port_text, text)


def _check_port(port_text: str, whole: str) -> int:
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} in {whole!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {whole!r} is out of range 1..65535")
    return port


def _check_host_port(value: str) -> str:
    split_host_port(value)
    return value


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    if parts.username or parts.password:
        raise ValueError(f"{value!r} must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} must not have a query or fragment")
    netloc = parts.netloc
    if netloc.startswith("["):
        split_host_port(netloc if "]:" in netloc else netloc + ":1")
    elif ":" in netloc:
        split_host_port(netloc)
    elif not _HOSTNAME_RE.match(netloc):
        raise ValueError(f"{netloc!r} in {value!r} is not a valid host name or IPv4 address")
    return value.rstrip("/")


def _url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def _check_nonempty_path(value: Path) -> Path:
    text = str(value)
    if text in ("", "."):
        raise ValueError("must not be empty")
    if text.startswith("~"):
        raise ValueError(f"'~' is not expanded in {text!r}; write an absolute path or one relative to the config file")
    return value


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are resolved against ``context["base_dir"]`` (the config file's folder)."""
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is not None and not value.is_absolute():
        return Path(base_dir) / value
    return value


def _check_power_of_two_block(value: int) -> int:
    if value & (value - 1) or value == 0:
        raise ValueError(f"{format_size(value)} ({value} bytes) must be a power of two")
    if not MIN_BLOCK_SIZE_BYTES <= value <= MAX_BLOCK_SIZE_BYTES:
        raise ValueError(
            f"{format_size(value)} is outside {format_size(MIN_BLOCK_SIZE_BYTES)}..{format_size(MAX_BLOCK_SIZE_BYTES)}"
        )
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _public_keys(value: Any) -> Any:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a public key string or a list of them")
    if len(value) > site_identity.MAX_KEYS_PER_SITE:
        raise ValueError(f"at most {site_identity.MAX_KEYS_PER_SITE} public keys per site")
    for item in value:
        site_identity.parse_public_key(item)
    if len(set(value)) != len(value):
        raise ValueError("the same public key is listed twice")
    return tuple(value)


SiteId = Annotated[str, AfterValidator(_check_identifier)]
PublicKeys = Annotated[tuple[str, ...], BeforeValidator(_public_keys)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
HttpUrl = Annotated[str, AfterValidator(_check_url)]
SizeBytes = Annotated[int, BeforeValidator(parse_size)]
DurationS = Annotated[float, BeforeValidator(parse_duration)]
Number = Annotated[float, BeforeValidator(_not_bool), AfterValidator(_finite)]
ConfigPath = Annotated[Path, AfterValidator(_check_nonempty_path)]
Command = tuple[Annotated[str, Field(min_length=1)], ...]

_FROZEN = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)


# --------------------------------------------------------------------------- models


class SiteRef(BaseModel):
    """One member of the cluster, as every site's config lists it (``[[sites]]``).

    ``raft`` is the pysyncobj node address ``"host:port"`` (its identity in the Raft
    group); ``peer_url``/``admin_url`` are base URLs (trailing ``/`` removed) of the peer
    data-plane API and the admin API. A ``witness`` votes in Raft but stores no volume.
    ``public_key``: the site's Ed25519 public key(s), ``"ed25519:<base64>"`` (``replicad
    identity init`` prints it); a string or a list of at most
    :data:`replicad.core.identity.MAX_KEYS_PER_SITE` (the current and the next key during a
    rotation). Every command the site signs is checked against these at every site.
    """

    model_config = _FROZEN

    site_id: SiteId
    raft: HostPort
    peer_url: HttpUrl
    admin_url: HttpUrl
    kind: Literal["data", "witness"] = "data"
    public_key: PublicKeys = ()


MAX_RETENTION_S = 10 * 366 * 86400.0  # = replicad.core.state.RETENTION_MAX_S: the state refuses longer


class RetentionConfig(BaseModel):
    """Snapshot retention policy of a volume (seconds; TOML keys take durations).

    Every snapshot is kept for ``keep_all_s``; then one per hour up to ``hourly_s``; then
    one per day up to ``daily_s``; older ones are pruned. No snapshot younger than
    ``lock_s`` is ever deleted, whatever any site asks (O4). Requires
    ``keep_all_s <= hourly_s <= daily_s``; each at most ten years. The defaults are the longest
    a volume is registered with (``replicad.core.state.DEFAULT_RETENTION``): the initial primary
    requests longer keys from the other sites (approvals, no cooling-off).
    """

    model_config = _FROZEN

    keep_all_s: DurationS = Field(24 * 3600.0, alias="keep_all", ge=0, le=MAX_RETENTION_S)
    hourly_s: DurationS = Field(7 * 86400.0, alias="hourly", ge=0, le=MAX_RETENTION_S)
    daily_s: DurationS = Field(30 * 86400.0, alias="daily", ge=0, le=MAX_RETENTION_S)
    lock_s: DurationS = Field(24 * 3600.0, alias="lock", ge=0, le=MAX_RETENTION_S)

    @model_validator(mode="after")
    def _ordered(self) -> RetentionConfig:
        if self.keep_all_s > self.hourly_s:
            raise ValueError(
                f"keep_all ({format_duration(self.keep_all_s)}) must not exceed hourly ({format_duration(self.hourly_s)})"
            )
        if self.hourly_s > self.daily_s:
            raise ValueError(
                f"hourly ({format_duration(self.hourly_s)}) must not exceed daily ({format_duration(self.daily_s)})"
            )
        return self


MAX_FLOOR_LOCK_S = 10 * 366 * 86400.0   # ten years: beyond that a value is a typo, not a policy
MAX_FLOOR_DAILY = 3660
MAX_FLOOR_WEEKLY = 520
MAX_FLOOR_MONTHLY = 120
DEFAULT_GC_GRACE_S = 24 * 3600.0     # = replicad.storage.chunkstore.DEFAULT_GC_GRACE_NS (why: there)
MIN_GC_GRACE_S = 3600.0              # longer than any snapshot transfer of a test or lab volume
MAX_GC_GRACE_S = 30 * 86400.0


class FloorConfig(BaseModel):
    """This site's local retention floor (``[floor]``; site config, never Raft).

    What the site keeps on its own authority, whatever the cluster state says (rules and
    the reasons for the defaults: :mod:`replicad.core.floor`): every snapshot younger than
    ``lock_s`` (TOML ``lock``, a duration, default 7 days), and the oldest committed
    snapshot of each of the last ``daily`` days (35), ``weekly`` ISO weeks (13) and
    ``monthly`` calendar months (12), UTC. Limits: ``lock`` 0..10 years, ``daily``
    0..3660, ``weekly`` 0..520, ``monthly`` 0..120. A ``lock`` below one day
    (:data:`replicad.core.floor.MIN_LOCK_S`) is refused unless
    ``unsafe_allow_short_floor = true`` (labs and tests with fast retention only).

    ``cooling_off_s`` (TOML ``cooling_off``, default 0: the cluster's ``[policy]`` alone): a
    longer minimum this site enforces itself after a retention change that a request applied:
    until this long after it applied (this site's clock), the site plans and forgets records
    with the stronger of the previous and the new policy (each key's maximum).

    ``gc_grace_s`` (TOML ``gc_grace``, default 24 h): a chunk no snapshot record references
    yet (a snapshot still arriving, or junk a peer sent) is collected only once it is this
    old here (:func:`replicad.storage.chunkstore.ChunkStore.gc`); below one hour only with
    ``unsafe_allow_short_floor``.
    """

    model_config = _FROZEN

    lock_s: DurationS = Field(DEFAULT_FLOOR.lock_s, alias="lock", ge=0, le=MAX_FLOOR_LOCK_S)
    gc_grace_s: DurationS = Field(DEFAULT_GC_GRACE_S, alias="gc_grace", ge=0, le=MAX_GC_GRACE_S)
    cooling_off_s: DurationS = Field(0.0, alias="cooling_off", ge=0, le=MAX_FLOOR_LOCK_S)
    daily: StrictInt = Field(DEFAULT_FLOOR.daily, ge=0, le=MAX_FLOOR_DAILY)
    weekly: StrictInt = Field(DEFAULT_FLOOR.weekly, ge=0, le=MAX_FLOOR_WEEKLY)
    monthly: StrictInt = Field(DEFAULT_FLOOR.monthly, ge=0, le=MAX_FLOOR_MONTHLY)
    unsafe_allow_short_floor: StrictBool = False

    @model_validator(mode="after")
    def _hard_minimum(self) -> FloorConfig:
        if self.gc_grace_s < MIN_GC_GRACE_S and not self.unsafe_allow_short_floor:
            raise ValueError(
                f"gc_grace ({format_duration(self.gc_grace_s)}) is below the hard minimum of "
                f"{format_duration(MIN_GC_GRACE_S)}: chunks of a snapshot still arriving could be collected; "
                "set unsafe_allow_short_floor = true only on a lab or test bench"
            )
        if self.lock_s < MIN_LOCK_S and not self.unsafe_allow_short_floor:
            raise ValueError(
                f"lock ({format_duration(self.lock_s)}) is below the hard minimum of "
                f"{format_duration(MIN_LOCK_S)}: a shorter floor lets one bad cluster decision delete recent "
                "history here; set unsafe_allow_short_floor = true only on a lab or test bench"
            )
        return self

    def policy(self) -> FloorPolicy:
        """The floor as :func:`replicad.core.floor.protected` takes it."""
        return FloorPolicy(lock_s=float(self.lock_s), daily=self.daily, weekly=self.weekly, monthly=self.monthly)


class ScrubConfig(BaseModel):
    """This site's background checks (``[scrub]``; site config).

    Every ``standby_every`` (default 60 s; ``"0s"`` turns the check off) each replica volume's
    standby image is read for at most ``standby_bytes`` (default 256 MiB) and compared block by
    block with the snapshot its standby record names, going on where the last pass stopped: a
    1 GiB standby is read whole every 4 minutes, a 64 GiB one every ~4.3 hours, at an average of
    ~4.5 MB/s of reads per volume. A damaged standby is reported (status, metric, WARNING) and
    repaired from the store. ``replicad verify`` reads the whole standby at once.
    """

    model_config = _FROZEN

    standby_every_s: DurationS = Field(60.0, alias="standby_every", ge=0)
    standby_bytes: SizeBytes = Field(256 * 2**20, alias="standby_bytes", ge=2**16)


DEFAULT_VERIFY_EVERY_CYCLES = 96  # reflink verifier: a full scan every 96 tracked cycles (16 min at 10 s) ...
DEFAULT_VERIFY_MAX_AGE_S = 86400.0  # ... and at least daily


class SourceConfig(BaseModel):
    """How the primary reads a volume. ``kind = "file"``: a raw image file or block device,
    read whole at every cycle. ``kind = "reflink"``: an image file on XFS (``reflink=1``) or
    btrfs; every cycle clones it (``FICLONE``: a crash-consistent point in time) and reads only
    the ranges whose extents differ from the previous clone's (:mod:`replicad.sources.reflink`).

    ``clone_dir`` (reflink only; default ``.replicad-clones`` beside the image): where the
    clones live, on the image's own file system (another one is refused, ``reflink_cross_device``).
    ``verify_every`` (cycles, default 96) and ``verify_max_age`` (default ``"1d"``): the reflink
    verifier's schedule — a full scan of the clone must give the tracked manifest's block
    digests; a mismatch is logged (ERROR), counted and repaired by committing the full scan's.

    ``kind = "qemu"``: a qcow2 disk served by a ``qemu-storage-daemon`` (:mod:`replicad.sources.qemu`:
    persistent dirty bitmap, copy-before-write fleecing view). ``qmp_socket`` (required): the
    daemon's QMP unix socket; ``node`` (required): the ``node-name`` of the disk's qcow2 node;
    ``nbd_socket`` (optional): the unix socket of the daemon's NBD server when the operator
    started one (else replicad starts it in its data directory). qemu only.

    ``pre_snapshot``/``post_snapshot`` are optional commands as argv lists (run without a
    shell) around each snapshot scan, e.g. ``["fsfreeze", "-f", "/mnt/ehr"]``.

    ``allow_shrink`` (default false): a source smaller than the volume's last snapshot (a
    0-byte or truncated image, a device that came back smaller) is refused with
    ``source_shrunk`` and nothing is committed, so standbys are never truncated by a damaged
    source. Set it to true (reloadable, SIGHUP) only for the snapshot after shrinking the
    volume on purpose, then back to false.
    """

    model_config = _FROZEN

    kind: Literal["file", "reflink", "qemu"] = "file"
    pre_snapshot: Command = ()
    post_snapshot: Command = ()
    allow_shrink: StrictBool = False
    clone_dir: ConfigPath | None = None
    verify_every: StrictInt = Field(DEFAULT_VERIFY_EVERY_CYCLES, ge=1)
    verify_max_age_s: DurationS = Field(DEFAULT_VERIFY_MAX_AGE_S, alias="verify_max_age", gt=0)
    qmp_socket: ConfigPath | None = None
    node: Annotated[str, Field(min_length=1, max_length=31, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")] | None = None
    nbd_socket: ConfigPath | None = None

    @field_validator("clone_dir", "qmp_socket", "nbd_socket", mode="after")
    @classmethod
    def _resolve_clone_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _reflink_only(self) -> "SourceConfig":
        if self.kind != "reflink" and self.clone_dir is not None:
            raise ValueError('clone_dir applies to kind = "reflink" only')
        qemu_keys = [k for k in ("qmp_socket", "node", "nbd_socket") if getattr(self, k) is not None]
        if self.kind != "qemu" and qemu_keys:
            raise ValueError(f'{", ".join(qemu_keys)} applies to kind = "qemu" only')
        if self.kind == "qemu" and (self.qmp_socket is None or self.node is None):
            raise ValueError('kind = "qemu" needs qmp_socket and node')
        return self


class AnomalyConfig(BaseModel):
    """Ransomware signal thresholds of a volume (DESIGN §7).

    A snapshot is ``suspect`` when its score (share of changed blocks that look random)
    is at least ``min_score`` and at least ``factor`` times the volume's baseline.
    """

    model_config = _FROZEN

    min_score: Number = Field(0.02, ge=0.0, le=1.0)
    factor: Number = Field(4.0, ge=1.0)


class DetectionConfig(BaseModel):
    """The volume's initial detection policy (``[volumes.detection]``; issue 14).

    ``mode`` (``"content"`` or ``"encrypted"``; default: not set, i.e. ``content``). The volume
    is always registered with the default policy: one site may not weaken detection on its own
    word (the state machine refuses an ``add_volume`` whose policy is weaker than the defaults),
    and ``encrypted`` drops the content signals. So the site whose registration created the
    volume *requests* the mode (a ``set_detection`` request, logged at WARNING with its id) and
    the volume is judged in ``content`` mode until operators of other sites approve it
    (``replicad approve ID``). Afterwards the cluster's policy in Raft rules: a later change of
    this key does nothing (a WARNING says so; ``replicad detection VOL --set mode=...`` changes
    it, as an approved request), and ``[volumes.anomaly]`` may only make detection stricter.
    """

    model_config = _FROZEN

    mode: Literal["content", "encrypted"] | None = None


class DrillConfig(BaseModel):
    """What a recovery drill checks on the restored image (``[volumes.drill]``; issue 16).

    ``check`` (optional): the application check, an argv list run without a shell once the
    drill image is restored and its root verified; ``{image}`` in an argument is replaced by
    the image's path (also given as ``$REPLICAD_DRILL_IMAGE``, with ``$REPLICAD_DRILL_VOLUME``
    and ``$REPLICAD_DRILL_SEQ``). Exit 0 passes. It runs as the daemon's user, with
    ``check_timeout`` (default ``"10m"``; then it is killed and the check fails).
    ``fsck_timeout`` (default ``"10m"``) bounds ``e2fsck -fn`` on an image that holds ext2/3/4.
    """

    model_config = _FROZEN

    check: Command = ()
    check_timeout_s: DurationS = Field(600.0, alias="check_timeout", gt=0)
    fsck_timeout_s: DurationS = Field(600.0, alias="fsck_timeout", gt=0)


class VolumeConfig(BaseModel):
    """One protected volume (``[[volumes]]``).

    ``path`` is this site's image file or block device: the source while this site is the
    volume's primary, the standby target (when ``standby``) while it is a replica.
    ``block_size_bytes`` (TOML ``block_size``, e.g. ``"64KiB"``) is a power of two in
    4 KiB..4 MiB; ``interval_s`` (TOML ``interval``) is the snapshot period, at least
    100 ms; ``min_copies`` sites must store a snapshot before it commits (O2);
    ``apply_delay_s`` (TOML ``apply_delay``) delays standby apply on replicas.
    """

    model_config = _FROZEN

    name: SiteId
    path: ConfigPath
    block_size_bytes: SizeBytes = Field(DEFAULT_BLOCK_SIZE_BYTES, alias="block_size")
    interval_s: DurationS = Field(10.0, alias="interval")
    min_copies: StrictInt = Field(2, ge=1)
    initial_primary: SiteId
    apply_delay_s: DurationS = Field(0.0, alias="apply_delay", ge=0)
    standby: StrictBool = True
    source: SourceConfig = SourceConfig()
    retention: RetentionConfig = RetentionConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    detection: DetectionConfig = DetectionConfig()
    drill: DrillConfig = DrillConfig()

    @field_validator("path", mode="after")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("block_size_bytes", mode="after")
    @classmethod
    def _block_size(cls, value: int) -> int:
        return _check_power_of_two_block(value)

    @field_validator("interval_s", mode="after")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < MIN_INTERVAL_S:
            raise ValueError(f"{format_duration(value)} is too short; at least {format_duration(MIN_INTERVAL_S)}")
        return value


class TlsConfig(BaseModel):
    """Mutual TLS material of this site (``[tls]``, PEM files): its certificate and key,
    and the CA that signs every site's certificate. Required when peer URLs use https."""

    model_config = _FROZEN

    cert_file: ConfigPath
    key_file: ConfigPath
    ca_file: ConfigPath

    @field_validator("cert_file", "key_file", "ca_file", mode="after")
    @classmethod
    def _readable(cls, value: Path, info: ValidationInfo) -> Path:
        value = _resolve(value, info)
        if (info.context or {}).get("check_files") and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value}")
        return value


class AdminToken(BaseModel):
    """One bearer token of the admin API (``[[admin.tokens]]``).

    ``sha256`` is the hex SHA-256 of the token's UTF-8 bytes (``replicad hash-token``
    prints it; stored lower-case); the token itself is never written in the config.
    ``role`` is ``viewer`` (read), ``operator`` (snapshot, verify, drill, restore to a new
    path) or ``admin`` (everything); the table is in :mod:`replicad.ops.auth`.
    """

    model_config = _FROZEN

    name: SiteId
    role: Literal["viewer", "operator", "admin"]
    sha256: str

    @field_validator("sha256", mode="after")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256_HEX_RE.match(value):
            raise ValueError("must be 64 hex digits: the SHA-256 of the token (replicad hash-token), not the token")
        return value.lower()


class IdentityConfig(BaseModel):
    """This site's signing identity (``[identity]``).

    ``key_file``: the site's Ed25519 private key, PKCS#8 PEM (``replicad identity init --out
    FILE`` writes one, mode 0600); relative to the config file. Refused, like the Raft
    password file, when group or others have any access to it: whoever reads it speaks in
    this site's name. Its public key must be listed in this site's ``[[sites]] public_key``.

    ``unsafe_unsigned = true``: no identity (test benches only): commands are not signed and
    ``by`` is a claim; every site of the cluster must then say so, the daemon logs a WARNING
    at start and ``replicad status`` shows it.
    """

    model_config = _FROZEN

    key_file: ConfigPath | None = None
    unsafe_unsigned: StrictBool = False

    @field_validator("key_file", mode="after")
    @classmethod
    def _key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _resolve(value, info)
        if (info.context or {}).get("check_files"):
            _read_private_key(value)
        return value


def _read_private_key(path: Path) -> site_identity.Ed25519PrivateKey:
    """Load ``path`` as this site's private key. Raises ValueError (the config problem)."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    if mode & 0o077:  # like ssh with a private key: whoever reads it signs as this site
        raise ValueError(f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); it holds this "
                         f"site's private key: chmod 600 {path}")
    try:
        return site_identity.load_private_key_pem(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err} (replicad identity init --out FILE writes one)") from None


MIN_MEMBERSHIP_COOLING_OFF_S = 300.0
"""The shortest ``[policy] membership_cooling_off`` without ``unsafe_short_membership_cooling_off``."""


class PolicyConfig(BaseModel):
    """Cluster policy (``[policy]``): must be the same in every site's config (it is an input
    of the replicated state machine, like ``[[sites]]``).

    ``approvals``: sites that must agree before a change that weakens protection applies
    (shortening retention or its lock, clearing a suspect verdict), the requesting site
    counting as one; default a majority of the data sites. ``request_ttl`` (duration,
    default 24 h, at least 10 min): a request not approved within it expires.
    ``cooling_off`` (duration, default 24 h, 0..30 days): an approved request takes effect
    this long after its last approval (majority clock); until then any site's admin can veto
    it (``replicad veto REQ``). ``0s`` applies it at once (test benches).
    ``membership_cooling_off`` (duration, default 15 min, 0..30 days): a site revocation or
    membership change (``set_members``) that a majority approved, but not every unrevoked
    member, takes effect this long after its approval unless vetoed (one compromised site and
    one stolen admin token of another are a majority of three: this is the other operators'
    time to veto). Below :data:`MIN_MEMBERSHIP_COOLING_OFF_S` (5 min), including 0, only with
    ``unsafe_short_membership_cooling_off = true`` (labs and test benches).
    """

    model_config = _FROZEN

    approvals: StrictInt | None = Field(None, ge=1, le=64)
    request_ttl_s: DurationS = Field(24 * 3600.0, alias="request_ttl", ge=600, le=30 * 86400)
    cooling_off_s: DurationS = Field(24 * 3600.0, alias="cooling_off", ge=0, le=30 * 86400)
    membership_cooling_off_s: DurationS = Field(900.0, alias="membership_cooling_off", ge=0, le=30 * 86400)
    unsafe_short_membership_cooling_off: StrictBool = False

    @model_validator(mode="after")
    def _membership_cooling_off_minimum(self) -> PolicyConfig:
        if self.membership_cooling_off_s < MIN_MEMBERSHIP_COOLING_OFF_S and not self.unsafe_short_membership_cooling_off:
            raise ValueError(
                f"membership_cooling_off ({format_duration(self.membership_cooling_off_s)}) is below the minimum of "
                f"{format_duration(MIN_MEMBERSHIP_COOLING_OFF_S)}: one compromised site with one stolen admin token "
                "could revoke an honest site or change the membership before anyone can veto; set "
                "unsafe_short_membership_cooling_off = true only on a lab or test bench"
            )
        return self


def load_signer(cfg: "SiteConfig") -> site_identity.Signer | None:
    """This site's signer (its private key, site id and cluster id), or None when the config
    says ``unsafe_unsigned``.

    Raises:
        ConfigError: the key file cannot be read, is readable by others, is not an Ed25519
            key, or its public key is not pinned for this site in ``[[sites]]``.
    """
    if cfg.identity.unsafe_unsigned and cfg.identity.key_file is None:
        return None
    path = cfg.identity.key_file
    try:
        if path is None:
            raise ValueError("missing: create one with replicad identity init --out FILE")
        key = _read_private_key(path)
    except ValueError as err:
        problem = f"identity.key_file: {err}"
        raise ConfigError(f"invalid configuration: {problem}", problems=[problem]) from None
    signer = site_identity.Signer(cfg.site_id, key, cfg.cluster_id)
    if signer.public_key not in cfg.self_ref().public_key:
        problem = (f"identity.key_file: its public key {signer.public_key} is not pinned in this site's "
                   f"[[sites]] public_key")
        raise ConfigError(f"invalid configuration: {problem}", problems=[problem])
    return signer


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (from ``split_host_port``) is ``localhost`` or a loopback IP
    address. A DNS name other than ``localhost`` is not assumed to be loopback."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SiteConfig(BaseModel):
    """The whole configuration of one site (one daemon).

    Flat fields map to TOML tables: ``raft_bind`` ← ``raft.bind``, ``raft_password`` ←
    ``raft.password`` or the content of ``raft.password_file``, ``peer_listen`` ←
    ``peer.listen``, ``admin_listen`` ← ``admin.listen``, ``admin_tokens`` ←
    ``[[admin.tokens]]``. Cross-field rules (site listed,
    unique ids/addresses, topology, primaries, min_copies, volume names) are checked on
    construction; see the module docstring and ``config/README.md``.
    """

    model_config = _FROZEN

    site_id: SiteId
    data_dir: ConfigPath
    raft_bind: HostPort
    raft_password: SecretStr
    raft_join: StrictBool = False
    """``[raft] join``: this site joins an existing cluster (README, "Adding or removing a site"):
    its first start replays the cluster's founding without this config as reference (a site added
    since the founding is not one of its founders). Read only while this site's Raft log is
    empty; harmless to leave set."""
    raft_withheld_after_s: DurationS | None = Field(None, ge=20, le=600)
    """``[raft] withheld_after`` (test benches only: needs ``lab = true``): how long one of this
    site's commands may stay out of the log under a heartbeating leader before this site deposes it
    (raft point 19); None: ``replicad.consensus.raft.WITHHELD_AFTER_S`` (45 s). At least 20 s, above
    the daemon's 15 s proposal deadline, so a caller has seen its proposal fail first."""
    peer_listen: HostPort
    admin_listen: HostPort
    admin_tokens: tuple[AdminToken, ...] = ()
    admin_export_idle_ttl_s: DurationS = Field(86400.0, gt=0, le=30 * 86400)
    """``[admin] export_idle_ttl`` (default ``"24h"``, at most 30 days): an export opened through
    the admin API that nobody read, wrote or held a connection to for this long is closed and its
    pin released (``replicad export --ttl`` may ask for less, never more; README "Exports")."""
    sites: tuple[SiteRef, ...]
    volumes: tuple[VolumeConfig, ...] = ()
    log_level: str = "info"
    lab: StrictBool = False
    tls: TlsConfig | None = None
    floor: FloorConfig = FloorConfig()
    scrub: ScrubConfig = ScrubConfig()
    cluster_id: SiteId = "replicad"
    identity: IdentityConfig = IdentityConfig()
    policy: PolicyConfig = PolicyConfig()

    @field_validator("data_dir", mode="after")
    @classmethod
    def _resolve_data_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("raft_password", mode="after")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_RAFT_PASSWORD_CHARS:
            raise ValueError(f"must be at least {MIN_RAFT_PASSWORD_CHARS} characters")
        return value

    @field_validator("log_level", mode="after")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    @model_validator(mode="after")
    def _cross_fields(self) -> SiteConfig:
        problems = _cross_problems(
            site_id=self.site_id,
            raft_bind=self.raft_bind,
            peer_listen=self.peer_listen,
            admin_listen=self.admin_listen,
            admin_tokens=list(enumerate(self.admin_tokens)),
            sites=list(enumerate(self.sites)),
            sites_complete=True,
            site_ids={site.site_id for site in self.sites},
            volumes=list(enumerate(self.volumes)),
            lab=self.lab,
            tls_set=self.tls is not None,
            identity=self.identity,
            policy=self.policy,
            withheld_after_s=self.raft_withheld_after_s,
        )
        if problems:
            raise PydanticCustomError(
                "config_cross", "{summary}", {"summary": "; ".join(problems), "problems": problems}
            )
        return self

    def trust(self) -> site_identity.Trust:
        """What this site's state machine trusts (:class:`replicad.core.identity.Trust`):
        the cluster id, every site's pinned public keys (None under ``unsafe_unsigned``)
        and the approval policy. Identical at every site whose ``[[sites]]``, ``cluster_id``
        and ``[policy]`` are identical."""
        keys = None
        if not self.identity.unsafe_unsigned:
            keys = {s.site_id: tuple(site_identity.parse_public_key(k) for k in s.public_key) for s in self.sites}
        return site_identity.Trust(cluster_id=self.cluster_id, keys=keys, approvals=self.policy.approvals,
                                   request_ttl_ns=int(self.policy.request_ttl_s * 1e9),
                                   cooling_off_ns=int(self.policy.cooling_off_s * 1e9),
                                   membership_cooling_off_ns=int(self.policy.membership_cooling_off_s * 1e9))

    def membership(self) -> list[dict]:
        """The cluster membership this config describes, as the Raft state records it (``found``,
        :mod:`replicad.core.state`): ``[{"site_id", "raft", "kind", "keys": [str]}]`` sorted by
        site id, keys sorted. Two sites agree on membership iff these lists are equal."""
        return sorted(({"site_id": s.site_id, "raft": s.raft, "kind": s.kind, "keys": sorted(set(s.public_key))}
                       for s in self.sites), key=lambda m: m["site_id"])

    def self_ref(self) -> SiteRef:
        """This site's own ``[[sites]]`` entry (validation guarantees it exists)."""
        for site in self.sites:
            if site.site_id == self.site_id:
                return site
        raise NotFoundError(f"site {self.site_id!r} is not listed in sites", site=self.site_id)

    def peers(self) -> tuple[SiteRef, ...]:
        """The other sites, in the order of the config file."""
        return tuple(site for site in self.sites if site.site_id != self.site_id)

    def data_sites(self) -> tuple[SiteRef, ...]:
        """All sites of kind ``data`` (this one included when it is one)."""
        return tuple(site for site in self.sites if site.kind == "data")

    @property
    def is_witness(self) -> bool:
        """True when this site only votes and stores no volume data."""
        return self.self_ref().kind == "witness"

    def volume(self, name: str) -> VolumeConfig:
        """The volume called ``name``.

        Raises:
            NotFoundError: no such volume in this config (evidence lists the known ones).
        """
        for volume in self.volumes:
            if volume.name == name:
                return volume
        raise NotFoundError(
            f"unknown volume {name!r}", volume=name, known=[volume.name for volume in self.volumes]
        )


# --------------------------------------------------------------------------- cross-field rules


def _cross_problems(
    *,
    site_id: str | None,
    raft_bind: str | None,
    peer_listen: str | None,
    admin_listen: str | None,
    sites: list[tuple[int, SiteRef]],
    admin_tokens: list[tuple[int, AdminToken]] | None = None,
    sites_complete: bool,
    site_ids: set[str] | None,
    volumes: list[tuple[int, VolumeConfig]],
    lab: bool | None,
    tls_set: bool | None,
    identity: IdentityConfig | None = None,
    policy: PolicyConfig | None = None,
    withheld_after_s: float | None = None,
) -> list[str]:
    """Every rule that involves more than one field, as ``"key.path: message"`` strings.

    Works on the parts that validated on their own (``None`` / missing entries are
    skipped), so that a file with field errors still gets its cross-field problems
    reported in the same run. ``sites_complete`` is False when some ``[[sites]]`` entry
    failed validation: counting and kind rules are then skipped. ``site_ids`` holds every
    listed site id (also of invalid entries), or None when not all are known: membership
    rules are skipped then.
    """
    problems: list[str] = []
    by_id: dict[str, tuple[int, SiteRef]] = {}
    seen: dict[tuple[str, str], int] = {}
    for index, site in sites:
        for key, value in (("site_id", site.site_id), ("raft", site.raft), ("peer_url", site.peer_url),
                           ("admin_url", site.admin_url)):
            first = seen.setdefault((key, value), index)
            if first != index:
                problems.append(f"sites[{index}].{key}: duplicate {value!r} (also sites[{first}])")
        by_id.setdefault(site.site_id, (index, site))

    data_ids = [site.site_id for _, site in sites if site.kind == "data"]
    if sites_complete:
        min_sites, min_data = (1, 1) if lab else (3, 2)
        if len(sites) < min_sites:
            problems.append(
                f"sites: {len(sites)} site(s) listed; at least 3 voting sites are needed so that Raft keeps a "
                "majority when one is lost (2 data sites + 1 witness is the smallest); set lab = true for a test bench"
            )
        elif len(data_ids) < min_data:
            problems.append(
                f"sites: {len(data_ids)} data site(s) listed; at least {min_data} are needed to hold copies"
                + ("" if lab else "; set lab = true for a test bench")
            )

    if withheld_after_s is not None and lab is False:
        problems.append("raft.withheld_after: a test bench setting (production uses 45s); set lab = true")

    own = by_id.get(site_id) if site_id is not None else None
    if site_id is not None and site_ids is not None and site_id not in site_ids:
        problems.append(f"site_id: {site_id!r} is not listed in [[sites]] ({_names(site_ids)})")
    if own is not None:
        own_index, own_site = own
        if raft_bind is not None and raft_bind != own_site.raft:
            problems.append(
                f"raft.bind: {raft_bind!r} differs from this site's raft address {own_site.raft!r} "
                f"(sites[{own_index}].raft); Raft identifies nodes by this address"
            )
        for key, listen, url in (("peer.listen", peer_listen, own_site.peer_url),
                                 ("admin.listen", admin_listen, own_site.admin_url)):
            if listen is not None and split_host_port(listen)[1] != _url_host_port(url)[1]:
                problems.append(f"{key}: port of {listen!r} differs from this site's URL {url!r}")
        if own_site.kind == "witness" and volumes:
            problems.append("volumes: a witness site stores no volume data; remove the [[volumes]] tables")

    if admin_tokens is not None:
        problems.extend(_admin_token_problems(admin_listen, admin_tokens))
    if identity is not None:
        problems.extend(_identity_problems(identity, sites, sites_complete, own[1] if own else None))
    if policy is not None and policy.approvals is not None and sites_complete and policy.approvals > len(sites):
        problems.append(f"policy.approvals: {policy.approvals} is more than the {len(sites)} site(s)")

    listens = [(key, value) for key, value in (("raft.bind", raft_bind), ("peer.listen", peer_listen),
                                                ("admin.listen", admin_listen)) if value is not None]
    for i, (key_a, addr_a) in enumerate(listens):
        for key_b, addr_b in listens[i + 1:]:
            if _same_socket(addr_a, addr_b):
                problems.append(f"{key_b}: {addr_b!r} collides with {key_a} {addr_a!r}")

    schemes = {urlsplit(site.peer_url).scheme for _, site in sites}
    if tls_set is False and "https" in schemes:
        problems.append("tls: peer URLs use https:// but no [tls] table gives the certificate files")
    if tls_set and "http" in schemes:
        problems.append("sites: with [tls] set, every peer_url must use https://")

    names: dict[str, int] = {}
    paths: dict[Path, int] = {}
    for index, volume in volumes:  # a field None: its own value was invalid (reported); its rules skipped
        first = names.setdefault(volume.name, index) if volume.name is not None else index
        if first != index:
            problems.append(f"volumes[{index}].name: duplicate volume name {volume.name!r} (also volumes[{first}])")
        first = paths.setdefault(volume.path, index) if volume.path is not None else index
        if first != index:
            problems.append(f"volumes[{index}].path: same path as volumes[{first}]")
        primary = by_id.get(volume.initial_primary) if volume.initial_primary is not None else None
        if volume.initial_primary is None:
            pass
        elif site_ids is not None and volume.initial_primary not in site_ids:
            problems.append(
                f"volumes[{index}].initial_primary: {volume.initial_primary!r} is not a site ({_names(site_ids)})"
            )
        elif primary is not None and primary[1].kind != "data":
            problems.append(
                f"volumes[{index}].initial_primary: {volume.initial_primary!r} is a witness; the primary must be a data site"
            )
        if sites_complete and data_ids and volume.min_copies is not None and volume.min_copies > len(data_ids):
            problems.append(
                f"volumes[{index}].min_copies: {volume.min_copies} is more than the {len(data_ids)} data site(s)"
            )
    return problems


def _admin_token_problems(admin_listen: str | None, tokens: list[tuple[int, AdminToken]]) -> list[str]:
    """Unique token names and hashes; an open admin API (no token) only on loopback."""
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for index, token in tokens:
        for key, value in (("name", token.name), ("sha256", token.sha256)):
            first = seen.setdefault((key, value), index)
            if first != index:
                problems.append(f"admin.tokens[{index}].{key}: duplicate (also admin.tokens[{first}])")
    if not tokens and admin_listen is not None and not is_loopback_host(split_host_port(admin_listen)[0]):
        problems.append(
            f"admin.listen: {admin_listen!r} is not a loopback address and no [[admin.tokens]] is configured: "
            "the admin API would be open to anyone who reaches it; add tokens (replicad hash-token) "
            "or listen on 127.0.0.1"
        )
    return problems


def _identity_problems(ident: IdentityConfig, sites: list[tuple[int, SiteRef]], sites_complete: bool,
                       own: SiteRef | None) -> list[str]:
    """Signed mode needs this site's key and every site's pinned public key."""
    if ident.unsafe_unsigned:
        return []
    if ident.key_file is None:
        return ["identity.key_file: missing: every site signs its commands with its own key; create one with "
                "replicad identity init --out FILE (or set identity.unsafe_unsigned = true on a test bench)"]
    problems = [f"sites[{index}].public_key: missing: pin {site.site_id}'s public key (replicad identity show "
                f"--config on that site prints it)" for index, site in sites if not site.public_key]
    if own is not None and own.public_key:
        try:
            mine = site_identity.format_public_key(site_identity.public_key_raw(_read_private_key(ident.key_file)))
        except ValueError:
            return problems  # reported on the field already
        if mine not in own.public_key:
            problems.append(f"identity.key_file: its public key {mine} is not pinned in this site's [[sites]] "
                            "public_key")
    return problems


def _names(site_ids: set[str]) -> str:
    return "sites: " + ", ".join(sorted(site_ids)) if site_ids else "no sites"


def _same_socket(a: str, b: str) -> bool:
    host_a, port_a = split_host_port(a)
    host_b, port_b = split_host_port(b)
    return port_a == port_b and (host_a == host_b or host_a in _WILDCARD_HOSTS or host_b in _WILDCARD_HOSTS)


# --------------------------------------------------------------------------- loading

# TOML tables that hold flat SiteConfig fields: table -> {key in table: field name}.
_TABLES: dict[str, dict[str, str]] = {
    "raft": {"bind": "raft_bind", "password": "raft_password", "password_file": "raft_password", "join": "raft_join",
             "withheld_after": "raft_withheld_after_s"},
    "peer": {"listen": "peer_listen"},
    "admin": {"listen": "admin_listen", "tokens": "admin_tokens", "export_idle_ttl": "admin_export_idle_ttl_s"},
}
_FLAT_TO_KEY = {"raft_bind": "raft.bind", "raft_password": "raft.password", "raft_join": "raft.join",
                "raft_withheld_after_s": "raft.withheld_after",
                "peer_listen": "peer.listen", "admin_listen": "admin.listen", "admin_tokens": "admin.tokens",
                "admin_export_idle_ttl_s": "admin.export_idle_ttl"}

_SITE_ID = TypeAdapter(SiteId)
_HOST_PORT = TypeAdapter(HostPort)


def load_config(path: Path | str) -> SiteConfig:
    """Read and validate the TOML config file at ``path``.

    Relative paths inside the file are resolved against the file's directory.

    Raises:
        ConfigError: unreadable file, TOML syntax error, or validation problems; its
            ``problems`` lists each as ``"key.path: message"`` (all of them at once).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        problem = f"file: cannot read {path}: {err.strerror or err}"
        raise ConfigError(f"invalid configuration {path}: {problem}", problems=[problem], path=str(path)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        problem = f"toml: {path} is not UTF-8 text ({err.reason} at byte {err.start})"
        raise ConfigError(f"invalid configuration {path}: {problem}", problems=[problem], path=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        problem = f"toml: invalid TOML syntax: {err}"
        raise ConfigError(f"invalid configuration {path}: {problem}", problems=[problem], path=str(path)) from None
    return parse_config(data, source=str(path), base_dir=path.absolute().parent)


def parse_config(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> SiteConfig:
    """Validate a parsed TOML document (a dict in the file's layout) into a SiteConfig.

    Args:
        data: the document, e.g. from ``tomllib.loads``.
        source: where it came from, for the error message.
        base_dir: folder that relative paths are resolved against; default: the current
            directory. ``raft.password_file`` is read from there.

    Raises:
        ConfigError: ``problems`` holds every problem as ``"key.path: message"``.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    context = {"base_dir": base, "check_files": True}
    problems: list[str] = []
    if not isinstance(data, dict):
        problems.append(f"document: expected a table, got {type(data).__name__}")
        raise _config_error(source, problems)
    flat, skip_fields, password_key = _flatten(data, base, problems)
    try:
        config = SiteConfig.model_validate(flat, context=context)
    except ValidationError as err:
        cross_done = False
        for error in err.errors(include_url=False):
            if error["type"] == "config_cross":
                problems.extend(error["ctx"]["problems"])
                cross_done = True
            elif not (error["loc"] and error["loc"][0] in skip_fields):
                problems.append(_format_error(error, password_key))
        if not cross_done:
            problems.extend(_salvage_cross_problems(flat, context))
        raise _config_error(source, problems) from None
    if problems:
        raise _config_error(source, problems)
    return config


def _config_error(source: str, problems: list[str]) -> ConfigError:
    unique = list(dict.fromkeys(problems))
    more = f" (and {len(unique) - 1} more)" if len(unique) > 1 else ""
    return ConfigError(f"invalid configuration {source}: {unique[0]}{more}", problems=unique, source=source)


def _flatten(data: dict[str, Any], base: Path, problems: list[str]) -> tuple[dict[str, Any], set[str], str]:
    """Move ``[raft]``, ``[peer]``, ``[admin]`` keys to flat fields and read the password file.

    Returns ``(flat, fields already reported, key the password came from)``.
    """
    flat: dict[str, Any] = {}
    skip: set[str] = set()
    password_key = "raft.password"
    for key, value in data.items():
        if key in _FLAT_TO_KEY:
            problems.append(f"{key}: unknown key (write it as {_FLAT_TO_KEY[key]})")
        elif key in _TABLES:
            if not isinstance(value, dict):
                problems.append(f"{key}: must be a table ([{key}])")
                skip.update(_TABLES[key].values())
                continue
            for sub_key in value:
                if sub_key not in _TABLES[key]:
                    problems.append(f"{key}.{sub_key}: unknown key{_suggest(sub_key, _TABLES[key])}")
            for sub_key, field in _TABLES[key].items():
                if sub_key in value and field != "raft_password":
                    flat[field] = value[sub_key]
        else:
            flat[key] = value

    raft = data.get("raft") if isinstance(data.get("raft"), dict) else None
    if raft is not None:
        has_inline, has_file = "password" in raft, "password_file" in raft
        if has_inline and has_file:
            problems.append("raft: give exactly one of password and password_file, not both")
            skip.add("raft_password")
        elif not has_inline and not has_file:
            problems.append("raft.password: missing; set raft.password_file (preferred) or raft.password")
            skip.add("raft_password")
        elif has_inline:
            flat["raft_password"] = raft["password"]
        else:
            password_key = "raft.password_file"
            secret = _read_password_file(raft["password_file"], base, problems)
            if secret is None:
                skip.add("raft_password")
            else:
                flat["raft_password"] = secret
    return flat, skip, password_key


def _read_password_file(value: Any, base: Path, problems: list[str]) -> str | None:
    if not isinstance(value, str) or not value:
        problems.append("raft.password_file: must be a non-empty path string")
        return None
    path = Path(value)
    if not path.is_absolute():
        path = base / path
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        problems.append(f"raft.password_file: cannot read {path}: {err.strerror or err}")
        return None
    except UnicodeDecodeError:
        problems.append(f"raft.password_file: {path} is not UTF-8 text")
        return None
    if not secret:
        problems.append(f"raft.password_file: {path} is empty")
        return None
    try:
        mode = path.stat().st_mode
    except OSError as err:
        problems.append(f"raft.password_file: cannot read {path}: {err.strerror or err}")
        return None
    if mode & 0o077:  # like ssh with a private key: whoever reads it can speak Raft (pickle) as a site
        problems.append(f"raft.password_file: {path} is accessible by group or others (mode "
                        f"{stat.S_IMODE(mode):04o}); it holds the cluster's Raft password: chmod 600 {path}")
        return None
    return secret


def _salvage_cross_problems(flat: dict[str, Any], context: dict[str, Any]) -> list[str]:
    """Cross-field problems computed from the parts that are valid on their own."""

    def valid(adapter: TypeAdapter[Any], value: Any) -> Any:
        try:
            return adapter.validate_python(value, context=context)
        except ValidationError:
            return None

    sites: list[tuple[int, SiteRef]] = []
    raw_sites = flat.get("sites")
    complete = isinstance(raw_sites, list)
    site_ids: set[str] | None = set() if complete else None
    for index, item in enumerate(raw_sites if isinstance(raw_sites, list) else []):
        site = valid(TypeAdapter(SiteRef), item)
        if site is None:
            complete = False
        else:
            sites.append((index, site))
        listed_id = valid(_SITE_ID, item.get("site_id")) if isinstance(item, dict) else None
        if listed_id is None:
            site_ids = None
        elif site_ids is not None:
            site_ids.add(listed_id)
    volumes: list[tuple[int, VolumeConfig]] = []
    raw_volumes = flat.get("volumes", [])
    for index, item in enumerate(raw_volumes if isinstance(raw_volumes, list) else []):
        volume = valid(TypeAdapter(VolumeConfig), item)
        if volume is None and isinstance(item, dict):
            volume = _partial_volume(item, context)  # its valid fields still take part in the cross rules
        if volume is not None:
            volumes.append((index, volume))
    lab = flat.get("lab", False)
    raw_tokens = flat.get("admin_tokens", [])
    tokens = [valid(TypeAdapter(AdminToken), item) for item in raw_tokens] if isinstance(raw_tokens, list) else None
    admin_tokens = None if tokens is None or None in tokens else list(enumerate(tokens))
    return _cross_problems(
        site_id=valid(_SITE_ID, flat.get("site_id")),
        raft_bind=valid(_HOST_PORT, flat.get("raft_bind")),
        peer_listen=valid(_HOST_PORT, flat.get("peer_listen")),
        admin_listen=valid(_HOST_PORT, flat.get("admin_listen")),
        admin_tokens=admin_tokens,
        sites=sites,
        sites_complete=complete,
        site_ids=site_ids,
        volumes=volumes,
        lab=lab if isinstance(lab, bool) else None,
        tls_set="tls" in flat,
        identity=valid(TypeAdapter(IdentityConfig), flat.get("identity", {})),
        withheld_after_s=(valid(TypeAdapter(DurationS), flat["raft_withheld_after_s"])
                          if "raft_withheld_after_s" in flat else None),
    )


def _partial_volume(item: dict[str, Any], context: dict[str, Any]) -> VolumeConfig:
    """A ``[[volumes]]`` entry that failed validation, with each field validated on its own:
    the fields the cross-field rules read (``name``, ``path``, ``initial_primary``,
    ``min_copies``) are None where their own value is invalid or missing (those rules are then
    skipped for it), so one wrong field does not hide the entry's other problems."""
    volume = VolumeConfig.model_construct()
    for name, field in VolumeConfig.model_fields.items():
        key = field.alias if field.alias in item else name
        if key not in item:
            if field.is_required():
                object.__setattr__(volume, name, None)
            continue
        try:
            VolumeConfig.__pydantic_validator__.validate_assignment(volume, name, item[key], context=context)
        except ValidationError:
            object.__setattr__(volume, name, None)
    return volume


def _format_error(error: Any, password_key: str) -> str:
    """One pydantic error as ``"key.path: message"`` in the file's own key names."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        key = loc[-1]
        field = model.model_fields.get(key) if model is not None and isinstance(key, str) else None
        if field is not None and field.alias and field.alias != key:
            message = f"given twice, as {field.alias!r} and {key!r}; keep {field.alias!r}"
        else:
            message = "unknown key" + (_suggest(str(key), _document_keys(model)) if model is not None else "")
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "tuple_type":
        message = "expected an array ([[...]] tables, or a [...] list)"
    elif kind in ("model_type", "model_attributes_type", "dict_type") and loc:
        message = f"must be a table ({_table_header(loc, password_key)}), not {_toml_type(error.get('input'))}"
    else:
        message = error["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if message.startswith(prefix):
                message = message[len(prefix):]
        message = message[:1].lower() + message[1:]
    return f"{_loc_to_key(loc, password_key)}: {message}"


def _table_header(loc: tuple[Any, ...], password_key: str) -> str:
    """The TOML header of the table at ``loc``: ``[[volumes]]`` for an entry of an array of tables
    (``("volumes", 0)``), ``[volumes.retention]`` for a table inside one, ``[admin]``."""
    key = _loc_to_key(tuple(p for p in loc if not isinstance(p, int)), password_key)
    return f"[[{key}]]" if isinstance(loc[-1], int) else f"[{key}]"


def _toml_type(value: Any) -> str:
    """What a TOML value is, in TOML's words (``an integer``, ``an array``), never the value (a
    secret's place may hold one)."""
    for kind, word in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                       ((list, tuple), "an array")):
        if isinstance(value, kind):
            return word
    return "a " + type(value).__name__.lower()


def _loc_to_key(loc: tuple[Any, ...], password_key: str) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "raft_password":
            out += password_key
        else:
            part = _FLAT_TO_KEY.get(part, part) if not out else part
            out += f".{part}" if out else str(part)
    return out or "document"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose table sits at ``loc`` (e.g. ``("volumes", 0, "retention")``)."""
    model: type[BaseModel] | None = SiteConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (tuple, typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _document_keys(model: type[BaseModel]) -> list[str]:
    """The keys a TOML table for ``model`` may hold, as written in the file."""
    keys = [field.alias or name for name, field in model.model_fields.items()]
    if model is SiteConfig:
        keys = [key for key in keys if key not in _FLAT_TO_KEY] + list(_TABLES)
    return keys


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def membership_differences(agreed: list[dict], configured: list[dict], *, hints: bool = True) -> list[str]:
    """How ``configured`` (:meth:`SiteConfig.membership`) differs from the ``agreed`` membership
    recorded in the Raft state, one line per difference naming the site and the field (site
    missing or extra, ``raft`` address, ``kind``, pinned ``keys``); [] when they agree. With
    ``hints`` an added site and changed keys carry how to make such a change on purpose (members
    propose first); without, the differences alone (a change already approved).
    Pure; both arguments are lists of ``{"site_id", "raft", "kind", "keys"}``."""
    ours = {m["site_id"]: m for m in configured}
    theirs = {m["site_id"]: m for m in agreed}
    out: list[str] = []
    for site in sorted(set(theirs) - set(ours)):
        out.append(f"sites: {site} is a member of the cluster (raft {theirs[site]['raft']}) but not in this config")
    for site in sorted(set(ours) - set(theirs)):
        out.append(f"sites: {site} (raft {ours[site]['raft']}) is in this config but not a member of the cluster"
                   + (f" (adding it on purpose: {_PROPOSE_FIRST})" if hints else ""))
    for site in sorted(set(ours) & set(theirs)):
        a, b = theirs[site], ours[site]
        if a["raft"] != b["raft"]:
            out.append(f"sites.{site}.raft: the cluster has {a['raft']}, this config {b['raft']}")
        if a["kind"] != b["kind"]:
            out.append(f"sites.{site}.kind: the cluster has {a['kind']}, this config {b['kind']}")
        if sorted(a["keys"]) != sorted(b["keys"]):
            out.append(f"sites.{site}.public_key: the cluster pins {sorted(a['keys']) or 'none'}, this config "
                       f"{sorted(b['keys']) or 'none'}" + (f" (a key rotation on purpose: {_PROPOSE_FIRST}, approved by "
                                                            f"{site} itself too)" if hints else ""))
    return out


_PROPOSE_FIRST = ("run `replicad members propose` with this config at a running site and have a majority of the "
                  "sites approve it (`replicad approve REQ`) BEFORE installing it and restarting; README 'Rotate a "
                  "site's key', 'Adding or removing a site'")
"""The membership-difference hint for an intended change: the agreed membership changes first."""
