"""The upstream HTTP client behind one small interface.

aiohttp with a bounded pool, explicit timeouts, no redirects followed, no environment proxies and no
decompression: the gateway relays bytes, it does not reinterpret them. A leaner client can replace
this class as long as it keeps `request()` and `UpstreamResponse`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

READ_CHUNK = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time; `status` is 502 or 504."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    scheme: str
    host: str
    port: int
    path_and_query: str  # already percent-encoded


class UpstreamResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: list[tuple[bytes, bytes]] = [
            (name.lower(), value) for name, value in resp.raw_headers
        ]

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError when the upstream breaks off mid-body."""
        try:
            async for chunk in self._resp.content.iter_chunked(READ_CHUNK):
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamError(502, f"upstream broke off the response body: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamError(504, "upstream stopped sending the response body") from exc

    async def read_all(self, limit: int) -> bytes | None:
        """The whole body if it fits in `limit` bytes, else None (the rest is left unread)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        # Closing (not releasing) drops the connection: used when the body was not read to the end.
        self._resp.close()


class UpstreamClient:
    def __init__(self, *, pool_size: int, connect_timeout: float, read_timeout: float) -> None:
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size,
            limit_per_host=0,
            ttl_dns_cache=30,
            keepalive_timeout=30,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=self._read_timeout
            ),
            read_bufsize=READ_CHUNK,
            max_line_size=16 * 1024,
            max_field_size=16 * 1024,
            max_headers=256,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        target: UpstreamTarget,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-route socket read timeout, not a deadline
    ) -> UpstreamResponse:
        session = self._session
        if session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        # Built from parts, never by joining strings: the host can only ever be the route's host.
        url = URL.build(
            scheme=target.scheme,
            host=target.host,
            port=target.port,
            path=target.path_and_query.split("?", 1)[0],
            query_string=target.path_and_query.partition("?")[2],
            encoded=True,
        )
        hdrs: CIMultiDict[str] = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers
        )
        req_timeout = None
        if timeout is not None:
            req_timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(self._connect_timeout, timeout), sock_read=timeout
            )
        try:
            resp = await session.request(
                method,
                url,
                headers=hdrs,
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None,
                timeout=req_timeout if req_timeout is not None else aiohttp.helpers.sentinel,
            )
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise UpstreamError(504, f"upstream {target.host}:{target.port} timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                502, f"upstream {target.host}:{target.port} refused or unreachable: {exc.os_error}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"upstream {target.host}:{target.port} failed: {exc}") from exc
        return UpstreamResponse(resp)
