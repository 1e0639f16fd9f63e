"""A cluster of real site daemons on this machine (loopback), for the demo and the tests.

Each site is a separate ``python -m replicad run CONFIG`` process with its own data dir,
config file and log under ``root/<site_id>/``. Ports are free loopback ports picked at
start. Processes are stopped by PID (SIGTERM, then SIGKILL after a grace period), never by
name. :class:`LocalCluster` is a context manager: leaving it kills every process it started.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from replicad.config import MIN_MEMBERSHIP_COOLING_OFF_S
from replicad.core import identity
from replicad.core.units import parse_duration
from replicad.ops.adminclient import call_admin
from replicad.core.errors import ReplicadError, UnavailableError

RAFT_KEY = "demo-cluster-shared-raft-password-0123456789"


LAB_PORTS_ENV = "REPLICAD_LAB_PORTS"
"""``LOW-HIGH`` (inclusive): :func:`free_ports` picks from this range only, probing each port with a
bind. The test suite gives each of its worker processes a range of its own below the kernel's
ephemeral range (``net.ipv4.ip_local_port_range``, which ``bind(("", 0))`` and outgoing connections
draw from): a port picked for a daemon of one worker, free until that daemon binds it, is then never
handed to another worker's pick, server or client. Unset: the kernel picks (``bind`` to port 0)."""


def _lab_port_range() -> tuple[int, int] | None:
    """:data:`LAB_PORTS_ENV` as ``(low, high)``, None when unset.

    Raises:
        ValueError: set but not ``LOW-HIGH`` with 1 <= LOW <= HIGH <= 65535."""
    text = os.environ.get(LAB_PORTS_ENV)
    if not text:
        return None
    low_text, sep, high_text = text.partition("-")
    low, high = (int(low_text), int(high_text)) if sep else (0, -1)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{LAB_PORTS_ENV}={text!r}: LOW-HIGH with 1 <= LOW <= HIGH <= 65535")
    return low, high


_next_port = [-1]  # the offset in LAB_PORTS_ENV's range this process probes next (-1: not drawn yet)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (:func:`free_ports` of one)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now: each bound and held until all are read,
    then closed (probed one after the other, closed at once, the kernel could hand one out twice:
    two of a cluster's sites' ports the same, a site refused to start). From :data:`LAB_PORTS_ENV`'s
    range when set (probed on from where this process's last pick stopped, first from a random place,
    wrapping around: a port picked here comes again only after every other port of the range;
    ``OSError`` when fewer than ``n`` of its ports are free), else the kernel's pick (port 0)."""
    span = _lab_port_range()
    socks: list[socket.socket] = []
    try:
        if span is None:
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, 0))
        else:
            low, high = span
            size = high - low + 1
            for _ in range(size):
                if len(socks) == n:
                    break
                _next_port[0] = (_next_port[0] if _next_port[0] >= 0 else secrets.randbelow(size)) % size
                port = low + _next_port[0]
                _next_port[0] += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((host, port))  # no SO_REUSEADDR: a port still in TIME_WAIT is skipped
                except OSError:
                    s.close()
                    continue
                socks.append(s)
            if len(socks) < n:
                raise OSError(f"fewer than {n} free ports on {host} in {LAB_PORTS_ENV} {low}-{high}")
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCA:
    """A throwaway certificate authority for mutual TLS between local sites (tests, demo):
    EC P-256 keys, certificates valid for one day, written as PEM files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replicad test CA")])
        self.cert = (_builder(name, self.key.public_key()).issuer_name(name)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = self.root / "ca.crt"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, ip: str = "127.0.0.1") -> tuple[Path, Path]:
        """(cert file, key file) for ``name`` (commonName and DNS subjectAltName) at ``ip``
        (IP subjectAltName), signed by this CA; the key file is mode 0600."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        san = x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(ip))])
        cert = (_builder(subject, key.public_key()).issuer_name(self.cert.subject)
                .add_extension(san, critical=False).sign(self.key, hashes.SHA256()))
        cert_file, key_file = self.root / f"{name}.crt", self.root / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_file, 0o600)
        return cert_file, key_file


def _builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))


@dataclass
class SiteProc:
    """One site of the local cluster: its ports, paths and (when running) its process."""

    site_id: str
    kind: str
    raft_port: int
    peer_port: int
    admin_port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "site.toml"

    @property
    def log_path(self) -> Path:
        return self.dir / "replicad.log"

    def volume_path(self, volume: str) -> Path:
        return self.dir / f"{volume}.img"


NO_FLOOR_TOML = ('[floor]\nlock = "0s"\ngc_grace = "0s"\ndaily = 0\nweekly = 0\nmonthly = 0\n'
                 'unsafe_allow_short_floor = true\n')
"""A ``[floor]`` that protects nothing: for test clusters whose retention runs in seconds."""


def write_site_keys(dirs: dict[str, Path], name: str = "site.key") -> dict[str, str]:
    """Create a fresh Ed25519 key for each site in ``dirs`` (``{site_id: directory}``), written
    as ``DIR/name`` with mode 0600 as ``replicad identity init`` writes it; returns
    ``{site_id: public key line}`` to pin in every site's ``[[sites]] public_key``."""
    public: dict[str, str] = {}
    for site_id, d in dirs.items():
        d.mkdir(parents=True, exist_ok=True)
        key = identity.generate_private_key()
        path = d / name
        path.write_bytes(identity.private_key_pem(key))
        os.chmod(path, 0o600)
        public[site_id] = identity.format_public_key(identity.public_key_raw(key))
    return public


class LocalCluster:
    """Write configs for ``n_data`` data sites (+ ``n_witness`` witnesses) and run them.

    Args:
        root: directory that holds every site's dir.
        volumes: names of the volumes every data site protects; the first data site is
            their initial primary.
        interval: snapshot interval (config duration string).
        min_copies: O2 threshold per volume.
        extra_volume_toml: appended to each ``[[volumes]]`` entry (e.g. retention tables).
        extra_site_toml: top-level tables written into every site's file before ``[[sites]]``,
            e.g. :data:`NO_FLOOR_TOML` for tests whose retention runs in seconds (the default
            ``[floor]`` keeps every snapshot for 7 days).
        tokens: optional admin tokens per site, ``{site_id: {token_name: (role, token)}}``;
            written hashed as ``[[admin.tokens]]``. :meth:`api` then sends that site's first
            ``admin`` token (or the first token) unless told otherwise.
        unsigned: write ``[identity] unsafe_unsigned = true`` instead of a key per site.
            By default every site gets its own Ed25519 key (``<site dir>/site.key``, mode
            0600, as ``replicad identity init`` writes it), every ``[[sites]]`` entry pins
            the public key, and the cluster gets a random ``cluster_id``.
        cooling_off: ``[policy] cooling_off`` of every site (default ``"0s"``: an approved
            request applies at once; production's default is 24 h).
        membership_cooling_off: ``[policy] membership_cooling_off`` of every site (default
            ``"0s"``, written with ``unsafe_short_membership_cooling_off = true``: a revocation or
            membership change applies at its last needed approval; production's default is 15 min).
        withheld_after: ``[raft] withheld_after`` of every site (written with ``lab = true``), for
            tests of raft point 19's watch; None: production's 45 s.
    """

    def __init__(self, root: Path, *, n_data: int = 3, n_witness: int = 0, volumes: tuple[str, ...] = ("ehr",),
                 interval: str = "1h", min_copies: int = 2, block_size: str = "64KiB",
                 apply_delay: str = "0s", extra_volume_toml: str = "", extra_site_toml: str = "",
                 tokens: dict[str, dict[str, tuple[str, str]]] | None = None, tls: bool = False,
                 unsigned: bool = False, cooling_off: str = "0s", membership_cooling_off: str = "0s",
                 withheld_after: str | None = None) -> None:
        self.root = Path(root).absolute()  # the daemons run in their own directories: no relative path
        self.code_dir = Path(__file__).resolve().parents[2]
        """The directory whose ``replicad`` package the daemons run (put first on PYTHONPATH at each
        :meth:`start`): this checkout's; a test of an upgrade points it at an older release's."""
        self.unsigned = unsigned
        self.cooling_off = cooling_off
        self.membership_cooling_off = membership_cooling_off
        self.withheld_after = withheld_after
        self.cluster_id = "lab-" + secrets.token_hex(4)
        self.ca = LocalCA(self.root / "tls") if tls else None  # mutual TLS on the peer API
        self.volumes = volumes
        names = [f"site-{chr(ord('a') + i)}" for i in range(n_data + n_witness)]
        self.sites: dict[str, SiteProc] = {}
        ports = free_ports(3 * len(names))
        for i, name in enumerate(names):
            kind = "data" if i < n_data else "witness"
            self.sites[name] = SiteProc(name, kind, *ports[3 * i:3 * i + 3], self.root / name)
        self.primary = names[0]
        self.tokens = {site: dict(named) for site, named in (tokens or {}).items()}
        self.extra_site_toml = extra_site_toml
        self._write_configs(interval, min_copies, block_size, apply_delay, extra_volume_toml)

    def _tokens_toml(self, site_id: str) -> str:
        from replicad.ops.auth import hash_token

        return "".join(f'[[admin.tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{hash_token(token)}"\n'
                       for name, (role, token) in self.tokens.get(site_id, {}).items())

    def default_token(self, site_id: str) -> str | None:
        """The token :meth:`api` sends to ``site_id`` by default (None: its API is open)."""
        named = list(self.tokens.get(site_id, {}).values())
        admins = [token for role, token in named if role == "admin"]
        return (admins or [token for _, token in named] or [None])[0]

    def key_path(self, site_id: str) -> Path:
        """The file holding ``site_id``'s private key (absent with ``unsigned``)."""
        return self.sites[site_id].dir / "site.key"

    def _write_keys(self) -> dict[str, str]:
        """Create every site's key file (0600); ``{site_id: public key line}``."""
        return write_site_keys({s.site_id: s.dir for s in self.sites.values()})

    def _write_configs(self, interval: str, min_copies: int, block_size: str, apply_delay: str, extra: str) -> None:
        scheme = "https" if self.ca is not None else "http"
        public = {} if self.unsigned else self._write_keys()
        members = "".join(
            f'\n[[sites]]\nsite_id = "{s.site_id}"\nraft = "127.0.0.1:{s.raft_port}"\n'
            f'peer_url = "{scheme}://127.0.0.1:{s.peer_port}"\nadmin_url = "{s.admin_url}"\nkind = "{s.kind}"\n'
            + (f'public_key = "{public[s.site_id]}"\n' if s.site_id in public else "")
            for s in self.sites.values())
        ident = ('[identity]\nunsafe_unsigned = true\n' if self.unsigned
                 else '[identity]\nkey_file = "site.key"\n') + f'[policy]\ncooling_off = "{self.cooling_off}"\n'
        ident += (f'membership_cooling_off = "{self.membership_cooling_off}"\n'  # a lab: short only when told
                  + ('unsafe_short_membership_cooling_off = true\n'
                     if parse_duration(self.membership_cooling_off) < MIN_MEMBERSHIP_COOLING_OFF_S else ''))

        for s in self.sites.values():
            s.dir.mkdir(parents=True, exist_ok=True)
            (s.dir / "raft.key").write_text(RAFT_KEY)
            os.chmod(s.dir / "raft.key", 0o600)
            tls = ""
            if self.ca is not None:
                cert, key = self.ca.issue(s.site_id)
                tls = f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nca_file = "{self.ca.ca_file}"\n'
            vols = ""
            if s.kind == "data":
                for v in self.volumes:
                    vols += (f'\n[[volumes]]\nname = "{v}"\npath = "{v}.img"\nblock_size = "{block_size}"\n'
                             f'interval = "{interval}"\nmin_copies = {min_copies}\ninitial_primary = "{self.primary}"\n'
                             f'apply_delay = "{apply_delay}"\n{extra}\n')
            s.config_path.write_text(
                f"# replicad site config written by LocalCluster (demo/tests): {len(self.sites)} sites on\n"
                f"# 127.0.0.1 with free ports picked at start. interval = {interval!r}: the demo and the tests\n"
                f"# take snapshots on demand (POST /v1/volumes/VOL/snapshot). Keys: config/README.md.\n"
                f'site_id = "{s.site_id}"\ncluster_id = "{self.cluster_id}"\ndata_dir = "data"\nlog_level = "info"\n'
                + ("" if self.withheld_after is None else "lab = true\n")
                + f'[raft]\nbind = "127.0.0.1:{s.raft_port}"\npassword_file = "raft.key"\n'
                + ("" if self.withheld_after is None else f'withheld_after = "{self.withheld_after}"\n')
                + f'[peer]\nlisten = "127.0.0.1:{s.peer_port}"\n[admin]\nlisten = "127.0.0.1:{s.admin_port}"\n'
                + tls + ident + self._tokens_toml(s.site_id) + self.extra_site_toml + members + vols)

    # ------------------------------------------------------------------ processes
    def start(self, site_id: str, *, module: str = "replicad", args: Sequence[str] = ("run",)) -> None:
        """Start (or restart) one site's daemon process, ``python -m MODULE ARGS... CONFIG`` in the
        site's directory (tests run a site as a module that patches the daemon, e.g. an attacker);
        nothing when it runs already."""
        s = self.sites[site_id]
        if s.proc is not None and s.proc.poll() is None:
            return
        log = open(s.log_path, "ab")
        # run the same replicad as the caller's (or code_dir's), whatever is installed in site-packages
        src = str(self.code_dir)
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]))
        s.proc = subprocess.Popen([sys.executable, "-m", module, *args, str(s.config_path)], stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=s.dir)
        log.close()

    def start_all(self) -> None:
        for name in self.sites:
            self.start(name)

    def kill(self, site_id: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one site's process (by PID); SIGKILL also reaps it."""
        s = self.sites[site_id]
        if s.proc is None or s.proc.poll() is not None:
            return
        s.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                s.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(timeout=10)

    def stop_all(self) -> None:
        """SIGCONT (in case one is stopped), SIGTERM, then SIGKILL what is left; by PID."""
        for s in self.sites.values():
            if s.proc is not None and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGCONT)
                s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for s in self.sites.values():
            if s.proc is None:
                continue
            try:
                s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(timeout=10)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()

    def log_tail(self, site_id: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.sites[site_id].log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ admin API
    def api(self, site_id: str, method: str, path: str, body: dict | None = None, timeout_s: float = 120,
            token: str | None = None) -> Any:
        """Call a site's admin API; raises the error class named in its JSON error body.

        ``token``: the bearer token to send; default :meth:`default_token`; ``""`` sends none.
        """
        if token is None:
            token = self.default_token(site_id)
        return call_admin(self.sites[site_id].admin_url, method, path, body, timeout_s, token=token or None)

    def wait_for(self, what: str, predicate, timeout_s: float = 60, interval_s: float = 0.2) -> Any:
        """Poll ``predicate()`` until it returns a truthy value; UnavailableError after ``timeout_s``.

        Exceptions of type ReplicadError raised by the predicate count as "not yet".
        """
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except ReplicadError as err:
                last = err
            time.sleep(interval_s)
        raise UnavailableError(f"timed out after {timeout_s}s waiting for {what}", last=str(last)[:500])

    def status(self, site_id: str) -> dict:
        return self.api(site_id, "GET", "/v1/status", timeout_s=10)

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Every running site has a current Raft view (leader, majority, log applied), has joined
        the cluster's incarnation, sees every running site registered, and every running data
        site knows every volume.

        Raises UnavailableError at once if a started site's process has exited (with its exit
        code and log tail): a cluster whose daemons died is never "ready"."""
        def ready() -> bool:
            dead = [s for s in self.sites.values() if s.proc is not None and s.proc.poll() is not None]
            if dead:
                raise _SiteExited(dead[0].site_id, dead[0].proc.returncode, self.log_tail(dead[0].site_id, 10))
            running = [s for s in self.sites.values() if s.proc is not None and s.proc.poll() is None]
            for s in running:
                st = self.status(s.site_id)
                if st["raft"].get("leader") is None or st["raft"].get("synced") is False or st.get("joined") is False:
                    return False
                if any(r.site_id not in st.get("sites", {}) for r in running):
                    return False
                if s.kind == "data" and any(st["volumes"].get(v, {}).get("epoch") is None for v in self.volumes):
                    return False
            return True

        try:
            self.wait_for("cluster ready", ready, timeout_s)
        except _SiteExited as exited:
            raise UnavailableError(f"site {exited.site_id} exited (code {exited.code}) before the cluster was ready: "
                                   f"{exited.tail.splitlines()[-1] if exited.tail else 'no log'}",
                                   site=exited.site_id, exit_code=exited.code, log_tail=exited.tail) from None


class _SiteExited(Exception):
    """Raised inside :meth:`LocalCluster.wait_ready`'s predicate (not a ReplicadError, so
    :meth:`LocalCluster.wait_for` does not take it for "not yet")."""

    def __init__(self, site_id: str, code: int | None, tail: str) -> None:
        super().__init__(site_id)
        self.site_id, self.code, self.tail = site_id, code, tail
