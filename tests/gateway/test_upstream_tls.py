"""HTTPS upstreams through `UpstreamClient`: a real TLS server on loopback, with a certificate of a
throwaway authority the test makes with the `openssl` command and points the default trust store
at (`SSL_CERT_FILE`, which OpenSSL's default verify paths honour). The certificate is checked
against the route's host name, and an untrusted one is refused."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from heliox.net.upstream_client import UpstreamClient, UpstreamError, UpstreamTarget

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, and server.pem / server.key for the name "localhost", signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=Heliox test CA", cwd=d,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost", cwd=d,
    )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d,
    )  # fmt: skip
    return d


@pytest.fixture
async def tls_server(pki: Path) -> AsyncIterator[tuple[int, list[bytes]]]:
    """An HTTPS server answering every request "ok"; yields its port and the request heads."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], heads
    finally:
        server.close()


async def _get(client: UpstreamClient, host: str, port: int) -> tuple[int, bytes]:
    resp = await client.request("GET", UpstreamTarget("https", host, port, "/x"), [], None)
    try:
        return resp.status, await resp.read_all(1024) or b""
    finally:
        resp.release()


async def test_an_https_upstream_is_verified_and_its_connection_reused(
    pki: Path, tls_server: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, heads = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    client = UpstreamClient(pool_size=4, connect_timeout=5, read_timeout=5)
    await client.start()
    try:
        assert await _get(client, "localhost", port) == (200, b"ok")
        assert await _get(client, "localhost", port) == (200, b"ok")
        assert len(heads) == 2 and heads[0].startswith(b"GET /x HTTP/1.1\r\n")
        assert b"\r\nhost: localhost:%d\r\n" % port in heads[0]
    finally:
        await client.close()


async def test_an_untrusted_or_misnamed_certificate_is_refused(
    pki: Path, tls_server: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, heads = tls_server
    client = UpstreamClient(pool_size=4, connect_timeout=5, read_timeout=5)
    await client.start()
    try:
        # The machine's own trust store does not know the test's authority.
        monkeypatch.setenv("SSL_CERT_FILE", str(pki / "server.key"))  # no certificate in it
        with pytest.raises(UpstreamError) as caught:
            await _get(client, "localhost", port)
        assert caught.value.status == 502
    finally:
        await client.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    client = UpstreamClient(pool_size=4, connect_timeout=5, read_timeout=5)
    await client.start()
    try:
        # Trusted, but issued for "localhost": not for the address the route names.
        with pytest.raises(UpstreamError) as caught:
            await _get(client, "127.0.0.1", port)
        assert caught.value.status == 502 and "certificate" in caught.value.detail.lower()
        assert heads == []  # no request went out on either
    finally:
        await client.close()
