"""Variants selected by the response's Vary (RFC 9111 §4.1) through real gateway processes, in
both modes: an upstream that compresses when asked is cached per content-coding, the many
Accept-Encoding spellings of clients share the variant they would be served, `Vary: *` is never
stored, and the number of variants per URL stays within the policy's `max_variants`."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.harness import ACME, Gateway, Upstream
from tests.e2e.test_cache_demos import calls, get, make_route, purge, unique


@dataclass
class Negotiating:
    """An upstream that picks what it sends by request headers, as real ones do: gzip when
    Accept-Encoding names it, the Accept-Language asked for ("en" without one). It records the
    headers of every request, by path."""

    url: str = ""
    seen: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, path: str) -> int:
        with self.lock:
            return len(self.seen.get(path, []))


@pytest.fixture(scope="module")
def negotiating() -> Iterator[Negotiating]:
    upstream = Negotiating()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            with upstream.lock:
                seen = upstream.seen.setdefault(parts.path, [])
                seen.append({k.lower(): v for k, v in self.headers.items()})
                n = len(seen)
            vary = query.get("vary", "Accept-Encoding")
            headers = {"Vary": vary, "Cache-Control": "max-age=60"}
            if vary == "Accept-Language":
                body = f"{self.headers.get('Accept-Language', 'en')}:{n}".encode()
            else:
                body = f"plain:{n}".encode()
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    headers["Content-Encoding"] = "gzip"
                    body = gzip.compress(body)
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    upstream.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()


def _text(answer: httpx.Response) -> str:
    return answer.text  # httpx undoes the gzip coding; the header still says which was served


def test_responses_varying_on_accept_encoding_are_stored_per_served_coding(
    gateway: Gateway, negotiating: Negotiating
) -> None:
    route, _ = make_route(gateway, negotiating.url, ttl_seconds=60)
    token = unique("ae")
    path = f"/g/{route}/{token}"
    zipped = get(gateway, path, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert (zipped.headers["x-cache"], zipped.headers["content-encoding"]) == ("MISS", "gzip")
    assert _text(zipped) == "plain:1"
    assert negotiating.seen[f"/{token}"][0]["accept-encoding"] == "gzip, deflate, br"

    plain = get(gateway, path, headers={"Accept-Encoding": "identity"})
    assert plain.headers["x-cache"] == "MISS", plain.headers  # not the gzip variant
    assert "content-encoding" not in plain.headers
    assert _text(plain) == "plain:2"

    # Different strings that accept gzip share the gzip variant; those that do not, the other.
    for accept in ("gzip", "br;q=1.0, gzip;q=0.8, *;q=0.1", "deflate, gzip"):
        again = get(gateway, path, headers={"Accept-Encoding": accept})
        assert again.headers["x-cache"] == "HIT", (accept, again.headers)
        assert (again.headers["content-encoding"], _text(again)) == ("gzip", "plain:1")
    for accept in ("identity", "deflate", "compress;q=0.5"):
        again = get(gateway, path, headers={"Accept-Encoding": accept})
        assert again.headers["x-cache"] == "HIT", (accept, again.headers)
        assert "content-encoding" not in again.headers
        assert _text(again) == "plain:2"
    assert negotiating.calls(f"/{token}") == 2

    # A purge by URL takes the variants (and the index leading to them) with it.
    assert purge(gateway, {"url": path}).json() == {"purged": 3}
    assert get(gateway, path, headers={"Accept-Encoding": "gzip"}).headers["x-cache"] == "MISS"
    refilled = get(gateway, path, headers={"Accept-Encoding": "identity"})
    assert refilled.headers["x-cache"] == "MISS"
    # The key an answer's Cache-Status shows is its variant's: a purge by it takes that one.
    key = refilled.headers["cache-status"].split('key="', 1)[1].split('"', 1)[0]
    assert purge(gateway, {"key": key}).json() == {"purged": 1}
    assert get(gateway, path, headers={"Accept-Encoding": "identity"}).headers["x-cache"] == "MISS"
    assert get(gateway, path, headers={"Accept-Encoding": "gzip"}).headers["x-cache"] == "HIT"


def _raw(gw: Gateway, path: str, accept: str) -> tuple[httpx.Headers, bytes]:
    """Headers and body bytes as sent (httpx would try to undo a Content-Encoding)."""
    headers = {"X-API-Key": ACME, "Accept-Encoding": accept}
    with httpx.stream("GET", gw.url + path, headers=headers, timeout=15) as answer:
        return answer.headers, b"".join(answer.iter_raw())


def test_a_gzip_labelled_answer_never_goes_to_a_client_that_did_not_accept_it(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", ttl_seconds=60)
    token = unique("label")
    path = f"/g/{route}/{token}?vary=Accept-Encoding&header=Content-Encoding:%20gzip&body=zz"
    labels = []
    for accept in ("gzip", "gzip, br", "identity", "identity"):
        headers, body = _raw(gateway, path, accept)
        labels.append(headers["x-cache"])
        assert (headers["content-encoding"], body) == ("gzip", b"zz")  # the upstream's doing
    # The stored gzip variant answers the clients that accept gzip; the others go upstream
    # (whose answer is gzip whatever they ask: stored as the gzip variant, never theirs).
    assert labels == ["MISS", "HIT", "MISS", "MISS"]
    assert calls(upstream, f"/respond/{token}") == 3


def test_vary_star_is_never_stored(gateway: Gateway, upstream: Upstream) -> None:
    route, _ = make_route(gateway, upstream.url + "/respond", ttl_seconds=60)
    token = unique("star")
    for _ in range(3):
        answer = get(gateway, f"/g/{route}/{token}?vary=*")
        assert answer.headers["x-cache"] == "MISS"
        assert "detail=vary_star" in answer.headers["cache-status"]
    assert calls(upstream, f"/respond/{token}") == 3


def test_variants_per_url_stay_within_max_variants(
    gateway: Gateway, negotiating: Negotiating
) -> None:
    route, _ = make_route(gateway, negotiating.url, ttl_seconds=60, max_variants=2)
    token = unique("bound")
    path = f"/g/{route}/{token}?vary=Accept-Language"

    def lang(value: str) -> httpx.Response:
        return get(gateway, path, headers={"Accept-Language": value})

    # The first fill cannot know the URL varies on Accept-Language, so it does not send it; its
    # answer is the one for requests without it. From then on the fill forwards it.
    first = lang("fr")
    assert (first.headers["x-cache"], first.text) == ("MISS", "en:1")
    for value, n in (("fr", 2), ("de", 3)):
        answer = lang(value)
        assert (answer.headers["x-cache"], answer.text) == ("MISS", f"{value}:{n}")
    assert negotiating.seen[f"/{token}"][1]["accept-language"] == "fr"
    # Two variants kept, the least recently stored (the first, "en") dropped.
    for value, n in (("fr", 2), ("de", 3)):
        answer = lang(value)
        assert (answer.headers["x-cache"], answer.text) == ("HIT", f"{value}:{n}")
    assert get(gateway, path).headers["x-cache"] == "MISS"  # the dropped one
    assert lang("fr").headers["x-cache"] == "MISS"  # pushed out in turn by that fill
    assert lang("de").headers["x-cache"] == "MISS"
    assert negotiating.calls(f"/{token}") == 6
    assert purge(gateway, {"url": path}).json() == {"purged": 3}  # the index and two variants
