"""Mutual TLS on the peer API: three real daemons with ``[tls]``, real certificates.

Replication works over https; a client without a certificate, with one from another CA, or
with a certificate that names another site than the ``from`` it claims is refused.
"""

from __future__ import annotations

import random
import ssl

import aiohttp
import pytest

from replicad.config import TlsConfig
from replicad.core.errors import ForbiddenError, PeerUnavailableError
from replicad.lab.localcluster import LocalCA, LocalCluster
from replicad.peer.tls import client_context
from replicad.peer.transport import PeerClient

from .conftest import VOL, overwrite_blocks, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def _missing(ctx, site_id: str, url: str) -> list[bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        return await PeerClient(session, site_id).missing(url, VOL, 1, [bytes(32)])


async def test_peers_replicate_over_mutual_tls_and_refuse_impostors(cluster_factory, tmp_path) -> None:
    c: LocalCluster = cluster_factory(tls=True)
    assert c.ca is not None
    first = snapshot(c, "site-a")
    assert first["committed"] and set(first["holders"]) == {"site-a", "site-b", "site-c"}
    overwrite_blocks(c.sites["site-a"].volume_path(VOL), [3, 30], random.Random(4))
    second = snapshot(c, "site-a")
    assert second["committed"] and second["changed_blocks"] == 2
    assert all(second["peers"][p]["ok"] for p in ("site-b", "site-c"))
    url = f"https://127.0.0.1:{c.sites['site-b'].peer_port}"

    # a certificate of this CA naming site-c may speak as site-c ...
    cert, key = c.ca.root / "site-c.crt", c.ca.root / "site-c.key"  # site-c's own files
    as_c = client_context(TlsConfig(cert_file=cert, key_file=key, ca_file=c.ca.ca_file))
    assert await _missing(as_c, "site-c", url) == [bytes(32)]
    # ... but not as site-a
    with pytest.raises(ForbiddenError) as info:
        await _missing(as_c, "site-a", url)
    assert info.value.evidence["sender"] == "site-a"

    # another CA's certificate, and no certificate at all: refused at the handshake
    other = LocalCA(tmp_path / "other-ca")
    ocert, okey = other.issue("site-a")
    stranger = client_context(TlsConfig(cert_file=ocert, key_file=okey, ca_file=c.ca.ca_file))
    with pytest.raises(PeerUnavailableError):
        await _missing(stranger, "site-a", url)
    anonymous = ssl.create_default_context(cafile=str(c.ca.ca_file))
    with pytest.raises(PeerUnavailableError):
        await _missing(anonymous, "site-a", url)
    with pytest.raises(PeerUnavailableError):  # plain http to the TLS port
        await _missing(None, "site-a", url.replace("https://", "http://"))


def test_check_config_refuses_tls_files_that_do_not_belong_together(tmp_path) -> None:
    """check-config builds the TLS contexts and reads the certificate, as the daemon's start
    does: a key of another certificate, a garbage CA, or a certificate naming another site is
    a config error (exit 2) naming the file, not an "ok" followed by a refused start."""
    import shutil
    import subprocess
    import sys

    c = LocalCluster(tmp_path / "c", tls=True)
    assert c.ca is not None
    site = c.sites["site-a"].config_path
    text = site.read_text()

    def check(body: str) -> tuple[int, str]:
        cfg = site.with_name("edited.toml")
        cfg.write_text(body)
        r = subprocess.run([sys.executable, "-m", "replicad", "check-config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr

    assert check(text)[0] == 0
    other_key = str(c.ca.root / "site-b.key")
    rc, out = check(text.replace(str(c.ca.root / "site-a.key"), other_key))
    assert rc == 2 and "tls" in out and "Traceback" not in out
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    rc, out = check(text.replace(str(c.ca.ca_file), str(garbage)))
    assert rc == 2 and "Traceback" not in out
    shutil.copy(c.ca.root / "site-b.crt", tmp_path / "b.crt")
    shutil.copy(c.ca.root / "site-b.key", tmp_path / "b.key")
    rc, out = check(text.replace(str(c.ca.root / "site-a.crt"), str(tmp_path / "b.crt"))
                    .replace(str(c.ca.root / "site-a.key"), str(tmp_path / "b.key")))
    assert rc == 2 and "not this site 'site-a'" in out
