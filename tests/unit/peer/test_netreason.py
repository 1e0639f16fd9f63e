"""Why a link failed, in plain words (``replicad.peer.netreason``), from real failed connections."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from replicad.core.errors import PeerUnavailableError
from replicad.ops.adminclient import call_admin
from replicad.peer.netreason import connection_reason, origin

LIBRARY_WORDS = ("ClientConnectorError", "Cannot connect to host", "ssl:default", "Connect call failed", "Errno")


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_says_so_without_the_clients_words() -> None:
    port = closed_port()

    async def fail() -> BaseException:
        async with aiohttp.ClientSession() as session:
            try:
                await session.get(f"http://127.0.0.1:{port}/v1/peer/missing")
            except aiohttp.ClientError as err:
                return err
        raise AssertionError("connected to a closed port")

    err = asyncio.run(fail())
    reason = connection_reason(err)
    assert reason.startswith("connection refused"), reason
    assert not any(w in reason for w in LIBRARY_WORDS), reason
    try:  # the admin client (urllib) says the same
        call_admin(f"http://127.0.0.1:{port}", "GET", "/v1/status", timeout_s=10)
    except PeerUnavailableError as e:
        assert "unreachable: connection refused" in e.message and not any(w in e.message for w in LIBRARY_WORDS)
        assert "Connection refused" in e.evidence["detail"]  # the client's own text stays in the evidence
    else:
        raise AssertionError("no error from a closed port")


def test_a_silent_peer_and_other_errors() -> None:
    with socket.socket() as server:  # listens, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        async def silent() -> BaseException:
            async with aiohttp.ClientSession() as session:
                try:
                    await session.get(f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=0.5))
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    return err
            raise AssertionError("a silent server answered")

        assert connection_reason(asyncio.run(silent())) == "no answer in time"
    assert connection_reason(ValueError("odd")) == "ValueError: odd"
    assert connection_reason(socket.gaierror(-2, "Name or service not known")) == "its host name does not resolve"
    assert origin("http://127.0.0.1:7202/v1/peer/missing") == "http://127.0.0.1:7202"


def test_a_certificate_of_another_ca_is_named_as_refused(tmp_path) -> None:
    import ssl

    from replicad.lab.localcluster import LocalCA

    theirs, ours = LocalCA(tmp_path / "theirs"), LocalCA(tmp_path / "ours")
    cert, key = theirs.issue("site-b")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ours.ca_file))

    async def fail() -> BaseException:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                try:
                    await session.get(f"https://127.0.0.1:{port}/", ssl=client_ctx,
                                      timeout=aiohttp.ClientTimeout(total=10))
                except aiohttp.ClientError as err:
                    return err
        finally:
            server.close()
            await server.wait_closed()
        raise AssertionError("a certificate of another CA was accepted")

    reason = connection_reason(asyncio.run(fail()))
    assert reason.startswith("its TLS certificate was refused (") and "certificate" in reason[30:], reason
    assert not any(w in reason for w in LIBRARY_WORDS), reason
