"""The cache layer on the request path, driven directly: real example upstream (in-process), real
upstream client, memory and Redis stores, a fake clock for the cache's sense of time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from heliox.core.cachekey import cache_key
from heliox.gateway.cache_layer import CacheLayer
from heliox.gateway.exchange import AnswerAborted, ClientGone, Exchange, ProxyRequest, ResponseSink
from heliox.metrics import Metrics
from heliox.net.upstream_client import UpstreamClient, UpstreamTarget
from heliox.runtime import CacheDeps
from heliox.snapshot import CachePolicyConfig, RouteConfig
from heliox.state.bloom_store import MemoryNegativeCache, RedisNegativeCache
from heliox.state.cache import CacheEntry, CacheUnavailable
from heliox.state.cache_l1 import FreshEntries
from heliox.state.cache_memory import MemoryCacheStore
from heliox.state.cache_redis import RedisCacheStore
from heliox.upstream import app as upstream_app
from heliox.upstream.catalogue import ITEMS
from heliox.upstream.stats import STATS, RequestStats
from tests.support import FakeClock

STORES = ["memory", "redis"]
ACME = 1
TECHFLOW = 2


class CountingRedis(Redis):
    """A client that records every command it sends (pub/sub connections excluded)."""

    commands: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.__dict__.setdefault("commands", []).append(str(args[0]).upper())
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def x_cache(self) -> str:
        return self.headers.get("x-cache", "")

    def json(self) -> Any:
        return json.loads(self.body)


class Capture:
    """An ASGI `send` recording the response; `fail_body` acts like a client that left."""

    def __init__(self, *, fail_body: bool = False) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.fail_body = fail_body
        self.ended = False

    async def __call__(self, message: Any) -> None:
        assert not self.ended, "nothing may be sent after the answer's last message"
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            # One X-Cache, the gateway's: an upstream's own must never come along.
            assert [k for k, _ in message["headers"]].count(b"x-cache") == 1
        else:
            self.ended = not message.get("more_body", False)
            if self.fail_body and message.get("body"):
                raise ConnectionResetError("client went away")
            self.parts.append(message.get("body", b""))


@dataclass
class Rig:
    layer: CacheLayer
    deps: Any  # a CacheDeps; Any so that tests may put spies in its place
    clock: FakeClock
    port: int
    stats: RequestStats
    policy: CachePolicyConfig = field(default_factory=lambda: policy_of())

    def route(self, policy: CachePolicyConfig | None = None, **kw: Any) -> RouteConfig:
        return RouteConfig(
            id=1,
            name=kw.pop("name", "r"),
            upstream_url=f"http://127.0.0.1:{self.port}",
            cache_policy=policy or self.policy,
            upstream_host="127.0.0.1",
            upstream_port=kw.pop("port", self.port),
            **kw,
        )

    def request(
        self,
        target: str,
        *,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        tenant: int | None = ACME,
        route: RouteConfig | None = None,
    ) -> ProxyRequest:
        path, _, query = target.partition("?")
        hdrs = [(k.lower().encode(), v.encode()) for k, v in headers]
        route = route or self.route()
        return ProxyRequest(
            method=method,
            route=route,
            path=path,
            raw_query=query.encode(),
            client_headers=hdrs,
            upstream_headers=list(hdrs),
            target=UpstreamTarget("http", "127.0.0.1", route.upstream_port, target),
            tenant_id=tenant,
            ex=Exchange(method, time.perf_counter()),
        )

    async def send(self, req: ProxyRequest, capture: Capture | None = None) -> Answer:
        capture = capture or Capture()
        await self.layer.serve(req, ResponseSink(capture, req.ex))
        answer = Answer(capture.status, capture.headers, b"".join(capture.parts))
        assert req.ex.cache_status == answer.x_cache  # what the pipeline will count
        return answer

    async def get(self, target: str, **kw: Any) -> Answer:
        return await self.send(self.request(target, **kw))

    def calls(self, path: str) -> int:
        return self.stats.by_path.get(path, 0)

    def key(self, target: str, tenant: int | None = ACME) -> str:
        path, _, query = target.partition("?")
        return cache_key("GET", "r", path, query.encode(), [], tenant)


def policy_of(**kw: Any) -> CachePolicyConfig:
    kw.setdefault("ttl_seconds", 60)
    return CachePolicyConfig(id=1, name="p", **kw)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, RequestStats]]:
    runner, port = await upstream_app.start()
    try:
        yield port, runner.app[STATS]
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(pool_size=512, connect_timeout=2.0, read_timeout=10.0)
    await c.start()
    try:
        yield c
    finally:
        await c.close()


RigFactory = Callable[..., Awaitable[Rig]]


def rig_over(
    store: Any,
    negative: Any,
    redis: Redis | None,
    upstream: tuple[int, RequestStats],
    client: UpstreamClient,
    clock: FakeClock,
    *,
    prefix: str = "heliox:",
    **layer_kw: Any,
) -> Rig:
    """A cache layer on the stores given; its caller closes it."""
    deps = CacheDeps(
        fresh_entries=layer_kw.pop("fresh_entries", None),
        cache=store,
        negative=negative,
        redis=redis,
        metrics=Metrics(),
        upstream=client,
        key_prefix=prefix,
        add_task=lambda task: None,  # the layer closes its own tasks in these tests
    )
    port, stats = upstream
    return Rig(CacheLayer(deps, clock=clock, **layer_kw), deps, clock, port, stats)


@pytest.fixture
async def make_rig(
    upstream: tuple[int, RequestStats],
    client: UpstreamClient,
    request: pytest.FixtureRequest,
) -> AsyncIterator[RigFactory]:
    """Build rigs on the memory or Redis store; Redis rigs built in one test share one prefix,
    like gateway instances sharing one Redis."""
    made: list[Rig] = []
    redis_clients: list[Redis] = []
    shared: dict[str, str] = {}

    async def build(kind: str, **layer_kw: Any) -> Rig:
        clock = layer_kw.pop("clock", None) or FakeClock(time.time())
        negative_kw: dict[str, Any] = {"expected_items": 1000, "false_positive_rate": 0.01}
        redis: Redis | None = None
        if kind == "memory":
            prefix = "heliox:"
            store: Any = MemoryCacheStore(clock=clock)
            negative: Any = MemoryNegativeCache(**negative_kw)
        else:
            if "prefix" not in shared:
                shared["prefix"] = request.getfixturevalue("redis_prefix")
            prefix = shared["prefix"]
            redis = CountingRedis.from_url(request.getfixturevalue("redis_server"))
            redis_clients.append(redis)
            store = RedisCacheStore(redis, prefix=prefix + "cache:")
            negative = RedisNegativeCache(redis, prefix=prefix + "neg:", **negative_kw)
        rig = rig_over(store, negative, redis, upstream, client, clock, prefix=prefix, **layer_kw)
        made.append(rig)
        return rig

    try:
        yield build
    finally:
        for rig in made:
            await rig.layer.close()
        for redis in redis_clients:
            await redis.aclose()


@pytest.fixture(params=STORES)
async def rig(request: pytest.FixtureRequest, make_rig: RigFactory) -> Rig:
    return await make_rig(request.param)


# --- hits, misses, keys --------------------------------------------------------------------------
async def test_miss_then_hit_with_headers(rig: Rig) -> None:
    first = await rig.get("/respond/a")
    second = await rig.get("/respond/a")
    assert first.x_cache == "MISS"
    # The entry's key, which POST /admin/cache/purge {"key": ...} takes (RFC 9211 §2.7).
    key = rig.key("/respond/a")
    assert first.headers["cache-status"] == f'heliox; fwd=miss; fwd-status=200; key="{key}"'
    assert second.headers["cache-status"].endswith(f'; key="{key}"')
    assert second.x_cache == "HIT"
    assert second.headers["cache-status"].startswith("heliox; hit; ttl=")
    assert second.headers["age"] == "0"
    assert second.body == first.body
    assert second.headers["content-length"] == str(len(first.body))
    assert rig.calls("/respond/a") == 1
    rig.clock.advance(7)
    assert (await rig.get("/respond/a")).headers["age"] == "7"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_relayed_answer_ends_once_and_with_its_last_part(rig: Rig, method: str) -> None:
    capture = Capture()
    answer = await rig.send(rig.request("/respond/end", method=method), capture)
    assert answer.x_cache == "MISS" and capture.ended
    if method == "GET":
        # The upstream's body arrived whole: its part is the last message, no empty one after.
        assert capture.parts == [answer.body] and answer.body
    else:
        assert capture.parts == [b""]


async def test_query_order_is_one_entry(rig: Rig) -> None:
    await rig.get("/respond/q?color=red&shape=round")
    again = await rig.get("/respond/q?shape=round&color=red")
    assert again.x_cache == "HIT"
    assert rig.calls("/respond/q") == 1


async def test_tenants_are_isolated_unless_the_policy_is_shared(rig: Rig) -> None:
    assert (await rig.get("/respond/t", tenant=ACME)).x_cache == "MISS"
    assert (await rig.get("/respond/t", tenant=TECHFLOW)).x_cache == "MISS"
    assert rig.calls("/respond/t") == 2
    shared = rig.route(policy_of(shared=True), name="s")
    assert (await rig.get("/respond/s", tenant=ACME, route=shared)).x_cache == "MISS"
    assert (await rig.get("/respond/s", tenant=TECHFLOW, route=shared)).x_cache == "HIT"
    assert rig.calls("/respond/s") == 1


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("set_cookie=session%3D1", "set_cookie"),
        ("cache_control=private", "private"),
        ("cache_control=no-store", "no_store"),
        ("vary=*", "vary_star"),
    ],
)
async def test_never_stored(rig: Rig, query: str, reason: str) -> None:
    for _ in range(2):
        answer = await rig.get(f"/respond/never?{query}")
        assert answer.x_cache == "MISS"
        assert f"detail={reason}" in answer.headers["cache-status"]
    assert rig.calls("/respond/never") == 2


async def test_request_no_store_is_not_stored(rig: Rig) -> None:
    await rig.get("/respond/rns", headers=[("Cache-Control", "no-store")])
    assert (await rig.get("/respond/rns")).x_cache == "MISS"
    assert rig.calls("/respond/rns") == 2


async def test_upstream_cannot_set_gateway_owned_headers(rig: Rig) -> None:
    target = (
        "/respond/owned?header=RateLimit-Remaining%3A%205&header=X-RateLimit-Limit%3A%209"
        "&header=X-Cache%3A%20HIT&header=X-Heliox-Tenant%3A%201&header=X-Kept%3A%20yes"
    )
    for expected in ("MISS", "HIT"):  # neither relayed live nor replayed from the entry
        answer = await rig.get(target)
        assert answer.x_cache == expected
        for name in ("ratelimit-remaining", "x-ratelimit-limit", "x-heliox-tenant"):
            assert name not in answer.headers, (expected, name)
        assert answer.headers["x-kept"] == "yes"


async def test_hit_in_memory_touches_only_the_store(make_rig: RigFactory) -> None:
    rig = await make_rig("memory")
    await rig.get("/respond/mem")
    touched: list[str] = []
    store, negative = rig.deps.cache, rig.deps.negative

    class Spy:
        def __init__(self, name: str, target: Any) -> None:
            self._name, self._target = name, target

        def __getattr__(self, attr: str) -> Any:
            touched.append(f"{self._name}.{attr}")
            return getattr(self._target, attr)

    rig.deps.cache = Spy("store", store)
    rig.deps.negative = Spy("negative", negative)
    rig.deps.upstream = Spy("upstream", rig.deps.upstream)
    assert (await rig.get("/respond/mem")).x_cache == "HIT"
    assert touched == ["store.get"]


async def _gauges_read(rig: Rig) -> None:
    """Until the background gauge task has finished its first read of the store (its commands
    are then all sent; the next read is GAUGE_INTERVAL away), so it cannot mix with a count."""
    deadline = time.monotonic() + 30
    while "cache_entries" not in rig.deps.metrics.gauges:
        assert time.monotonic() < deadline, "the cache gauges were never read"
        await asyncio.sleep(0.01)


async def test_hit_on_redis_is_one_get(make_rig: RigFactory) -> None:
    rig = await make_rig("redis")
    await rig.get("/respond/one")
    redis: CountingRedis = rig.deps.redis
    await _gauges_read(rig)
    redis.commands.clear()
    assert (await rig.get("/respond/one")).x_cache == "HIT"
    assert redis.commands == ["GET"]


async def _admitted(rig: Rig, target: str) -> ProxyRequest:
    """A request as the pipeline hands it over on Redis: admission has read the removal
    generation (admit.lua creates it on first use; so does this)."""
    key = rig.deps.cache.generation_key
    await rig.deps.redis.set(key, b"1", nx=True)
    req = rig.request(target)
    req.ex.cache_generation = await rig.deps.redis.get(key)
    return req


async def _with_generation(rig: Rig, target: str) -> Answer:
    return await rig.send(await _admitted(rig, target))


async def test_fresh_entries_kept_in_process_spare_the_cache_round_trip(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    assert (await _with_generation(rig, "/respond/l1")).x_cache == "MISS"
    redis: CountingRedis = rig.deps.redis
    await _gauges_read(rig)
    req = await _admitted(rig, "/respond/l1")
    redis.commands.clear()
    assert (await rig.send(req)).x_cache == "HIT"
    assert redis.commands == []  # the fill's own copy: no GET
    assert rig.deps.metrics.events["cache_l1_hits"] == 1
    # Without a generation (admission failed open, say) the copy is not trusted.
    assert (await rig.get("/respond/l1")).x_cache == "HIT"
    assert redis.commands == ["GET"]


async def test_a_purge_elsewhere_retires_every_copy_kept_in_process(make_rig: RigFactory) -> None:
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    other = await make_rig("redis")  # another instance on the same Redis
    assert (await _with_generation(rig, "/respond/p1")).x_cache == "MISS"
    assert (await _with_generation(rig, "/respond/p1")).x_cache == "HIT"
    assert await other.deps.cache.purge(route="r") == 1
    after = await _with_generation(rig, "/respond/p1")
    assert after.x_cache == "MISS"  # not the kept copy of the purged entry
    assert rig.calls("/respond/p1") == 2
    # An unsafe request's invalidation (a delete of the URI's entries) retires copies too.
    assert (await _with_generation(rig, "/respond/p1")).x_cache == "HIT"
    await other.layer.io.invalidate(other.request("/respond/p1"))
    assert (await _with_generation(rig, "/respond/p1")).x_cache == "MISS"
    assert rig.calls("/respond/p1") == 3


async def test_kept_copies_are_served_only_while_fresh(make_rig: RigFactory) -> None:
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    rig.policy = policy_of(ttl_seconds=5)
    assert (await _with_generation(rig, "/respond/f1")).x_cache == "MISS"
    rig.clock.advance(6)
    # Stale now: looked up in Redis again (another instance may have refreshed it).
    redis: CountingRedis = rig.deps.redis
    req = await _admitted(rig, "/respond/f1")
    redis.commands.clear()
    answer = await rig.send(req)
    assert answer.x_cache != "HIT"
    assert "GET" in redis.commands


# --- conditional requests, HEAD, Range -----------------------------------------------------------
async def test_conditional_request_answered_304_from_cache(rig: Rig) -> None:
    target = "/respond/c?etag=%22v1%22&last_modified=Mon,%2002%20Jan%202023%2000:00:00%20GMT"
    await rig.get(target)
    hit = await rig.get(target, headers=[("If-None-Match", '"v1"')])
    assert (hit.status, hit.x_cache, hit.body) == (304, "HIT", b"")
    assert hit.headers["etag"] == '"v1"'
    assert "content-length" not in hit.headers
    since = await rig.get(target, headers=[("If-Modified-Since", "Tue, 03 Jan 2023 00:00:00 GMT")])
    assert since.status == 304
    other = await rig.get(target, headers=[("If-None-Match", '"v2"')])
    assert (other.status, other.x_cache) == (200, "HIT")
    assert rig.calls("/respond/c") == 1


async def test_client_validators_on_a_miss_get_304_and_the_entry_is_stored(rig: Rig) -> None:
    target = "/respond/c2?etag=%22v1%22"
    miss = await rig.get(target, headers=[("If-None-Match", '"v1"')])
    assert (miss.status, miss.x_cache) == (304, "MISS")
    full = await rig.get(target)
    assert (full.status, full.x_cache) == (200, "HIT")
    assert full.json()["n"] >= 1


async def test_stale_entry_with_validators_is_revalidated(rig: Rig) -> None:
    rig.policy = policy_of(ttl_seconds=1, stale_if_error_seconds=60)
    target = "/respond/rv?etag=%22v1%22"
    first = await rig.get(target)
    rig.clock.advance(5)
    again = await rig.get(target)
    assert again.x_cache == "REVALIDATED"
    assert "fwd-status=304" in again.headers["cache-status"]
    assert again.body == first.body  # the stored body, freshened by a bodyless 304
    assert (await rig.get(target)).x_cache == "HIT"
    assert rig.calls("/respond/rv") == 2


async def test_client_no_cache_forces_revalidation(rig: Rig) -> None:
    target = "/respond/nc?etag=%22v1%22"
    await rig.get(target)
    forced = await rig.get(target, headers=[("Cache-Control", "no-cache")])
    assert forced.x_cache == "REVALIDATED"
    assert rig.calls("/respond/nc") == 2


async def test_head_is_answered_from_the_get_entry_and_never_stores(rig: Rig) -> None:
    head_miss = await rig.get("/respond/h", method="HEAD")
    assert (head_miss.x_cache, head_miss.body) == ("MISS", b"")
    get = await rig.get("/respond/h")
    assert get.x_cache == "MISS"  # the HEAD stored nothing
    head_hit = await rig.get("/respond/h", method="HEAD")
    assert (head_hit.status, head_hit.x_cache, head_hit.body) == (200, "HIT", b"")
    assert head_hit.headers["content-length"] == str(len(get.body))
    assert rig.calls("/respond/h") == 2


async def test_range_requests_bypass_and_never_poison(rig: Rig) -> None:
    ranged = await rig.get("/respond/rg", headers=[("Range", "bytes=0-3")])
    assert ranged.x_cache == "BYPASS"
    assert "fwd=bypass" in ranged.headers["cache-status"]
    assert (await rig.get("/respond/rg")).x_cache == "MISS"
    assert (await rig.get("/respond/rg", headers=[("Range", "bytes=0-3")])).x_cache == "BYPASS"
    assert rig.calls("/respond/rg") == 3


# --- invalidation --------------------------------------------------------------------------------
async def test_successful_unsafe_method_invalidates_the_uri_for_the_writer(rig: Rig) -> None:
    await rig.get("/echo/inv?x=1")
    await rig.get("/echo/inv?x=1", tenant=TECHFLOW)
    await rig.deps.negative.add("r", rig.key("/echo/gone"), rig.clock())
    post = await rig.get("/echo/inv?x=1", method="POST")
    assert (post.status, post.x_cache) == (200, "BYPASS")
    assert "fwd=method" in post.headers["cache-status"]
    assert (await rig.get("/echo/inv?x=1")).x_cache == "MISS"
    # Another tenant's entry of the same URL is none of this write's business.
    assert (await rig.get("/echo/inv?x=1", tenant=TECHFLOW)).x_cache == "HIT"
    assert not await rig.deps.negative.might_contain("r", rig.key("/echo/gone"), rig.clock())


async def test_unsafe_method_invalidates_the_shared_entry_every_tenant_reads(rig: Rig) -> None:
    rig.policy = policy_of(shared=True)
    await rig.get("/echo/shared-inv")
    assert (await rig.get("/echo/shared-inv", tenant=TECHFLOW)).x_cache == "HIT"
    assert (await rig.get("/echo/shared-inv", method="DELETE", tenant=TECHFLOW)).status == 200
    assert (await rig.get("/echo/shared-inv")).x_cache == "MISS"


async def test_failed_unsafe_method_invalidates_nothing(
    rig: Rig, flaky: tuple[int, dict[str, Any]]
) -> None:
    port, state = flaky
    route = rig.route(port=port)
    await rig.get("/f/keep", route=route)
    state["status"] = 500
    failed = await rig.get("/f/keep", method="DELETE", route=route)
    assert (failed.status, failed.x_cache) == (500, "BYPASS")
    assert (await rig.get("/f/keep", route=route)).x_cache == "HIT"


# --- stale-while-revalidate and stale-if-error ---------------------------------------------------
async def test_swr_serves_stale_then_refreshes_once(rig: Rig) -> None:
    rig.policy = policy_of(ttl_seconds=10, stale_while_revalidate_seconds=60)
    target = "/respond/swr?delay=0.2"
    first = await rig.get(target)
    rig.clock.advance(11)
    stale = await rig.get(target)
    assert stale.x_cache == "STALE"
    assert stale.body == first.body
    assert "ttl=-1" in stale.headers["cache-status"]
    during = await rig.get(target)
    assert during.x_cache == "UPDATING"  # this process is already refreshing it
    await rig.layer.refresher.drain()
    fresh = await rig.get(target)
    assert fresh.x_cache == "HIT"
    assert fresh.json()["n"] > first.json()["n"]
    assert rig.calls("/respond/swr") == 2
    assert rig.deps.metrics.events["swr_refresh"] == 1


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """An upstream whose answer the test switches: status, and a body cut off mid-way."""
    state: dict[str, Any] = {"status": 200, "calls": 0, "cut": False}

    async def handler(request: web.Request) -> web.StreamResponse:
        state["calls"] += 1
        if state["cut"]:
            resp = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
            resp.content_length = 10_000
            await resp.prepare(request)
            await resp.write(b"x" * 1000)
            assert request.transport is not None
            request.transport.abort()
            return resp
        body = json.dumps({"calls": state["calls"]}).encode()
        return web.Response(status=state["status"], body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1]), state
    finally:
        await runner.cleanup()


async def test_failed_refresh_keeps_the_stale_copy(
    rig: Rig, flaky: tuple[int, dict[str, Any]]
) -> None:
    port, state = flaky
    route = rig.route(policy_of(ttl_seconds=10, stale_while_revalidate_seconds=60), port=port)
    first = await rig.get("/f/swr", route=route)
    state["status"] = 503
    rig.clock.advance(11)
    assert (await rig.get("/f/swr", route=route)).x_cache == "STALE"
    await rig.layer.refresher.drain()
    after = await rig.get("/f/swr", route=route)
    assert after.x_cache == "STALE"  # still the old copy: the 503 was not stored
    assert after.body == first.body
    assert rig.deps.metrics.events["swr_refresh_failed"] >= 1


async def test_stale_if_error_on_5xx_and_on_unreachable_upstream(
    rig: Rig, flaky: tuple[int, dict[str, Any]]
) -> None:
    port, state = flaky
    policy = policy_of(ttl_seconds=10, stale_if_error_seconds=300)
    route = rig.route(policy, port=port)
    first = await rig.get("/f/sie", route=route)
    rig.clock.advance(11)
    state["status"] = 500
    stale = await rig.get("/f/sie", route=route)
    assert (stale.status, stale.x_cache, stale.body) == (200, "STALE", first.body)
    assert "fwd=stale; fwd-status=500" in stale.headers["cache-status"]
    assert "detail=stale-if-error" in stale.headers["cache-status"]
    down = rig.route(policy, port=1)  # the same route name and key, nothing listening
    unreachable = await rig.get("/f/sie", route=down)
    assert (unreachable.status, unreachable.x_cache) == (200, "STALE")
    rig.clock.advance(300)
    gone = await rig.get("/f/sie", route=down)
    assert (gone.status, gone.x_cache) == (502, "MISS")  # past the error window
    assert rig.deps.metrics.events["stale_if_error"] == 2


async def test_a_body_cut_off_midway_is_never_stored(
    rig: Rig, flaky: tuple[int, dict[str, Any]]
) -> None:
    port, state = flaky
    route = rig.route(port=port)
    state["cut"] = True
    with pytest.raises(AnswerAborted):  # the head was out: the client's connection is cut
        await rig.get("/f/cut", route=route)
    assert await rig.deps.cache.get(rig.key("/f/cut")) is None
    assert rig.deps.metrics.upstream_errors[(route.name, 502)] == 1
    state["cut"] = False
    assert (await rig.get("/f/cut", route=route)).x_cache == "MISS"


async def test_a_client_that_leaves_still_fills_the_cache(rig: Rig) -> None:
    req = rig.request("/respond/gone?size=200000")
    with pytest.raises(ClientGone):
        await rig.send(req, Capture(fail_body=True))
    hit = await rig.get("/respond/gone?size=200000")
    assert (hit.x_cache, len(hit.body)) == ("HIT", 200_000)


async def test_too_large_is_streamed_whole_but_not_stored(rig: Rig) -> None:
    rig.policy = policy_of(max_object_bytes=1000)
    for _ in range(2):
        answer = await rig.get("/respond/big?size=5000")
        assert (answer.x_cache, len(answer.body)) == ("MISS", 5000)
    assert rig.calls("/respond/big") == 2


# --- negative cache ------------------------------------------------------------------------------
async def test_second_404_is_negative_without_upstream(rig: Rig) -> None:
    first = await rig.get("/items/nope")
    second = await rig.get("/items/nope")
    assert (first.status, first.x_cache) == (404, "MISS")
    assert (second.status, second.x_cache, second.body) == (404, "NEGATIVE", first.body)
    await rig.deps.cache.purge(all=True)
    remembered = await rig.get("/items/nope")  # the entry is gone, the filter remembers
    assert (remembered.status, remembered.x_cache) == (404, "NEGATIVE")
    assert remembered.headers["content-type"] == "application/problem+json"
    assert "Cache-Control: no-cache" in remembered.json()["detail"]
    assert rig.calls("/items/nope") == 1
    bypass = await rig.get("/items/nope", headers=[("Cache-Control", "no-cache")])
    assert (bypass.status, bypass.x_cache) == (404, "MISS")
    assert rig.calls("/items/nope") == 2


async def test_bypassing_a_false_positive_clears_it(rig: Rig) -> None:
    real = f"/items/{ITEMS[0]['id']}"
    await rig.deps.negative.add("r", rig.key(real), rig.clock())  # as a false positive would
    assert (await rig.get(real)).x_cache == "NEGATIVE"
    fixed = await rig.get(real, headers=[("Cache-Control", "no-cache")])
    assert (fixed.status, fixed.x_cache) == (200, "MISS")
    assert not await rig.deps.negative.might_contain("r", rig.key(real), rig.clock())


async def test_routes_without_negative_caching_label_404s_as_hits(rig: Rig) -> None:
    rig.policy = policy_of(negative_cache=False)
    await rig.get("/items/nope2")
    assert (await rig.get("/items/nope2")).x_cache == "HIT"
    await rig.deps.cache.purge(all=True)
    assert (await rig.get("/items/nope2")).x_cache == "MISS"


# --- coalescing ----------------------------------------------------------------------------------
async def test_concurrent_misses_make_one_upstream_call(rig: Rig) -> None:
    answers = await asyncio.gather(*(rig.get("/respond/storm?delay=0.3") for _ in range(50)))
    assert rig.calls("/respond/storm") == 1
    assert sorted(a.x_cache for a in answers).count("MISS") == 1
    assert {a.body for a in answers} == {answers[0].body}
    collapsed = [a for a in answers if a.x_cache == "HIT"]
    assert all("collapsed" in a.headers["cache-status"] for a in collapsed)
    assert rig.deps.metrics.events["coalesced"] == 49


async def test_uncacheable_answers_are_not_handed_to_waiters(rig: Rig) -> None:
    target = "/respond/private?delay=0.2&cache_control=private"
    answers = await asyncio.gather(*(rig.get(target) for _ in range(10)))
    assert rig.calls("/respond/private") == 10
    assert len({a.json()["n"] for a in answers}) == 10


async def test_a_waiter_past_the_lock_timeout_goes_alone_and_stores_nothing(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig("memory", lock_timeout=0.2)
    leader = asyncio.create_task(rig.get("/respond/slow?delay=0.8"))
    await _upstream_has_seen(rig, "/respond/slow", 1)  # the leader's fill is under way
    late = await rig.get("/respond/slow?delay=0.8")
    first = await leader
    assert late.x_cache == "MISS"
    assert rig.calls("/respond/slow") == 2
    assert (await rig.get("/respond/slow?delay=0.8")).body == first.body  # the leader's copy


async def test_two_instances_make_one_upstream_call(make_rig: RigFactory) -> None:
    a = await make_rig("redis")
    b = await make_rig("redis", clock=a.clock)
    target = "/respond/cluster?delay=0.4"
    answers = await asyncio.gather(
        *(rig.get(target) for rig in [a, b] * 40),
    )
    assert a.calls("/respond/cluster") == 1
    assert [x.x_cache for x in answers].count("MISS") == 1
    saved = a.deps.metrics.events["coalesced"] + b.deps.metrics.events["coalesced"]
    assert saved == 79


async def test_a_remote_waiter_past_the_lock_timeout_does_not_store(make_rig: RigFactory) -> None:
    a = await make_rig("redis")
    b = await make_rig("redis", clock=a.clock, lock_timeout=0.2)
    leader = asyncio.create_task(a.get("/respond/remote?delay=0.8"))
    await _upstream_has_seen(a, "/respond/remote", 1)  # A holds the fill lock
    late = await b.get("/respond/remote?delay=0.8")
    first = await leader
    assert late.x_cache == "MISS"
    assert late.json()["n"] > first.json()["n"]
    assert a.calls("/respond/remote") == 2
    assert (await b.get("/respond/remote?delay=0.8")).body == first.body


async def test_swr_refresh_runs_once_across_instances(make_rig: RigFactory) -> None:
    a = await make_rig("redis")
    b = await make_rig("redis", clock=a.clock)
    for rig in (a, b):
        rig.policy = policy_of(ttl_seconds=10, stale_while_revalidate_seconds=60)
    await a.get("/respond/swr2?delay=0.3")
    a.clock.advance(11)
    assert (await a.get("/respond/swr2?delay=0.3")).x_cache == "STALE"
    assert (await b.get("/respond/swr2?delay=0.3")).x_cache == "STALE"
    await asyncio.gather(a.layer.refresher.drain(), b.layer.refresher.drain())
    assert a.calls("/respond/swr2") == 2
    assert (await b.get("/respond/swr2?delay=0.3")).x_cache == "HIT"


async def test_an_instance_waits_for_anothers_refresh_instead_of_retrying_the_lock(
    make_rig: RigFactory,
) -> None:
    a = await make_rig("redis")
    b = await make_rig("redis", clock=a.clock)
    for rig in (a, b):
        rig.policy = policy_of(ttl_seconds=10, stale_while_revalidate_seconds=60)
    target = "/respond/swr3?delay=2"  # a refresh outlasting the requests below, however slow
    await a.get(target)
    await b.get(target)  # B's fill-notice subscription is up
    a.clock.advance(11)
    assert (await a.get(target)).x_cache == "STALE"  # A refreshes (2 s upstream)
    redis_b: CountingRedis = b.deps.redis
    redis_b.commands.clear()
    assert (await b.get(target)).x_cache == "STALE"  # B finds A's lock taken
    later = [await b.get(target) for _ in range(5)]
    assert [x.x_cache for x in later] == ["UPDATING"] * 5  # B waits for A, holding its slot
    assert redis_b.commands.count("SET") == 1  # one lock attempt, not one per stale answer
    await asyncio.gather(a.layer.refresher.drain(), b.layer.refresher.drain())
    assert a.calls("/respond/swr3") == 2
    assert (await b.get(target)).x_cache == "HIT"


# --- Redis failures ------------------------------------------------------------------------------
async def test_redis_down_means_misses_not_errors(
    upstream: tuple[int, RequestStats], client: UpstreamClient
) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    store = RedisCacheStore(dead, prefix="x:")
    negative = RedisNegativeCache(dead, expected_items=100, false_positive_rate=0.01)
    rig = rig_over(store, negative, dead, upstream, client, FakeClock(time.time()), prefix="x:")
    try:
        for _ in range(2):
            answer = await rig.get("/respond/down")
            assert (answer.status, answer.x_cache) == (200, "MISS")
        assert (await rig.get("/items/nope-down")).status == 404
        assert rig.deps.metrics.events["redis_errors"] >= 4
    finally:
        await rig.layer.close()
        await dead.aclose()


class UnreadableStore(MemoryCacheStore):
    """An in-process store whose reads fail, as a store of another kind may."""

    async def get(self, key: str) -> CacheEntry | None:
        raise CacheUnavailable("the store cannot be read")


async def test_an_in_process_store_with_a_read_of_its_own_is_read_through_it(
    upstream: tuple[int, RequestStats], client: UpstreamClient
) -> None:
    """The in-process store is read without an await (`MemoryCacheStore.get_now`): a store type
    that reads its own way must still be asked through its `get`, failures included."""
    clock = FakeClock(time.time())
    plain = MemoryCacheStore(clock=clock)
    for store, second in ((plain, "HIT"), (UnreadableStore(clock=clock), "MISS")):
        negative = MemoryNegativeCache(expected_items=100, false_positive_rate=0.01)
        rig = rig_over(store, negative, None, upstream, client, clock)
        try:
            assert (await rig.get("/respond/own-read")).x_cache == "MISS"
            assert (await rig.get("/respond/own-read")).x_cache == second
            assert rig.deps.metrics.events["redis_errors"] == (2 if second == "MISS" else 0)
        finally:
            await rig.layer.close()
    assert plain.get_now(rig.key("/respond/own-read")) is not None


# --- the request's own directives on shared answers (RFC 9111 §5.2.1) -----------------------------
async def _upstream_has_seen(rig: Rig, path: str, calls: int) -> None:
    """Until the upstream has received `calls` requests for `path` (a fill is under way)."""
    deadline = time.monotonic() + 5
    while rig.calls(path) < calls:
        assert time.monotonic() < deadline, f"the upstream never saw call {calls} of {path}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("directive", ["no-cache", "max-age=0", "min-fresh=120"])
async def test_a_request_no_fill_can_satisfy_never_takes_another_requests_answer(
    rig: Rig, directive: str
) -> None:
    """§5.2.1.4, §5.2.1.1, §5.2.1.3: the running fill's answer (fresh for 60 s) cannot be used
    for it, so it asks the origin itself instead of being answered `HIT; collapsed`."""
    target = "/respond/directive?delay=0.5"
    leader = asyncio.create_task(rig.get(target))
    await _upstream_has_seen(rig, "/respond/directive", 1)
    own = await rig.get(target, headers=[("Cache-Control", directive)])
    first = await leader
    assert own.x_cache == "MISS", own.headers
    assert "collapsed" not in own.headers["cache-status"]
    assert own.json()["n"] != first.json()["n"]
    assert rig.calls("/respond/directive") == 2


async def test_a_request_the_fill_can_satisfy_still_takes_its_answer(rig: Rig) -> None:
    target = "/respond/satisfied?delay=0.5"
    leader = asyncio.create_task(rig.get(target))
    await _upstream_has_seen(rig, "/respond/satisfied", 1)
    shared = await rig.get(target, headers=[("Cache-Control", "max-age=30")])
    first = await leader
    assert (shared.x_cache, shared.body) == ("HIT", first.body)
    assert "collapsed" in shared.headers["cache-status"]
    assert rig.calls("/respond/satisfied") == 1


@pytest.mark.parametrize("directive", ["no-cache", "max-age=0", "min-fresh=120"])
async def test_a_request_no_fill_can_satisfy_never_waits_on_another_instance(
    make_rig: RigFactory, directive: str
) -> None:
    a = await make_rig("redis")
    b = await make_rig("redis", clock=a.clock)
    target = "/respond/remote-directive?delay=0.5"
    leader = asyncio.create_task(a.get(target))
    await _upstream_has_seen(a, "/respond/remote-directive", 1)  # A holds the fill lock
    own = await b.get(target, headers=[("Cache-Control", directive)])
    first = await leader
    assert own.x_cache == "MISS", own.headers
    assert "collapsed" not in own.headers["cache-status"]
    assert own.json()["n"] != first.json()["n"]
    assert a.calls("/respond/remote-directive") == 2


# --- the negative cache in origin mode -----------------------------------------------------------
async def test_origin_mode_remembers_a_404_only_while_the_origin_allows(rig: Rig) -> None:
    """§4.2: an `Expires` in the past allows no reuse, so the next request asks the origin
    (a Bloom filter, which cannot forget one path early, would have answered NEGATIVE)."""
    rig.policy = policy_of(mode="origin")
    past = "/respond/gone?status=404&expires=Thu,%2001%20Jan%201970%2000:00:00%20GMT"
    for _ in range(2):
        answer = await rig.get(past)
        assert (answer.status, answer.x_cache) == (404, "MISS")
    assert rig.calls("/respond/gone") == 2
    assert not await rig.deps.negative.might_contain("r", rig.key(past), rig.clock())
    # A 404 the origin lets be reused for 30 s is the negative cache's answer for 30 s.
    fresh = "/respond/gone30?status=404&cache_control=max-age%3D30"
    assert (await rig.get(fresh)).x_cache == "MISS"
    again = await rig.get(fresh)
    assert (again.status, again.x_cache) == (404, "NEGATIVE")
    rig.clock.advance(31)
    assert (await rig.get(fresh)).x_cache == "MISS"
    assert rig.calls("/respond/gone30") == 2


# --- every fill keeps the in-process copy current ------------------------------------------------
async def test_a_revalidation_updates_the_copy_kept_in_process(make_rig: RigFactory) -> None:
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    target = "/respond/kept-rv?etag=%22v1%22"
    assert (await _with_generation(rig, target)).x_cache == "MISS"
    rig.clock.advance(10)
    forced = rig.request(target, headers=[("Cache-Control", "no-cache")])
    forced.ex.cache_generation = (await _admitted(rig, target)).ex.cache_generation
    assert (await rig.send(forced)).x_cache == "REVALIDATED"
    after = await _with_generation(rig, target)
    assert after.x_cache == "HIT"
    assert after.headers["age"] == "0"  # the freshened entry, not the copy read 10 s ago
    assert rig.deps.metrics.events["cache_l1_hits"] >= 1


# --- revalidation: entries with validators are kept past their stale windows (§4.3) ---------------
@pytest.mark.parametrize(
    "cache_control",
    ["max-age%3D2", "no-cache", "max-age%3D0", "max-age%3D2%2C%20must-revalidate"],
)
async def test_a_stale_entry_with_a_validator_is_revalidated_not_fetched_again(
    rig: Rig, cache_control: str
) -> None:
    """§4.3.1: kept for `keep_seconds` past its windows, the entry is revalidated with
    If-None-Match; the 304 freshens it (§4.3.4). `no-cache` and `max-age=0` are stored and
    revalidated on every use (§5.2.2.4)."""
    rig.policy = policy_of(mode="origin")
    target = f"/respond/kept?etag=%22abc%22&cache_control={cache_control}"
    first = await rig.get(target)
    assert first.x_cache == "MISS"
    rig.clock.advance(3)
    again = await rig.get(target)
    assert (again.status, again.x_cache) == (200, "REVALIDATED"), again.headers
    assert again.body == first.body  # the stored body: the upstream answered 304
    assert "fwd-status=304" in again.headers["cache-status"]
    assert rig.calls("/respond/kept") == 2


async def test_without_a_validator_or_a_keep_window_nothing_is_kept(rig: Rig) -> None:
    rig.policy = policy_of(mode="origin")
    plain = "/respond/plain?cache_control=max-age%3D2"
    await rig.get(plain)
    rig.clock.advance(3)
    assert (await rig.get(plain)).x_cache == "MISS"
    rig.policy = policy_of(mode="origin", keep_seconds=0)
    tagged = "/respond/nokeep?etag=%22abc%22&cache_control=max-age%3D2"
    await rig.get(tagged)
    rig.clock.advance(3)
    assert (await rig.get(tagged)).x_cache == "MISS"
    # Past the keep window the entry is gone too.
    rig.policy = policy_of(mode="origin", keep_seconds=10)
    late = "/respond/late?etag=%22abc%22&cache_control=max-age%3D2"
    await rig.get(late)
    rig.clock.advance(13)
    assert (await rig.get(late)).x_cache == "MISS"
    assert rig.calls("/respond/late") == 2


async def test_a_background_refresh_updates_the_copy_kept_in_process(make_rig: RigFactory) -> None:
    """The refresh runs the same filler as a miss: what it stores, this process keeps too."""
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    rig.policy = policy_of(ttl_seconds=10, stale_while_revalidate_seconds=60)
    target = "/respond/kept-swr"
    first = await _with_generation(rig, target)
    rig.clock.advance(11)
    assert (await _with_generation(rig, target)).x_cache == "STALE"
    await rig.layer.refresher.drain()
    redis: CountingRedis = rig.deps.redis
    req = await _admitted(rig, target)
    redis.commands.clear()
    fresh = await rig.send(req)
    assert fresh.x_cache == "HIT"
    assert fresh.json()["n"] > first.json()["n"]
    assert redis.commands == []  # served from the refreshed copy kept in process


# --- invalidation by the response's Location and Content-Location (§4.4) -------------------------
@pytest.mark.parametrize("field", ["Location", "Content-Location"])
async def test_a_successful_write_invalidates_the_same_origin_uri_its_response_names(
    rig: Rig, field: str
) -> None:
    named, absolute, foreign = "/respond/named", "/respond/absolute", "/respond/foreign"
    for target in (named, absolute, foreign):
        await rig.get(target)
        assert (await rig.get(target)).x_cache == "HIT"
    origin = f"http://127.0.0.1:{rig.port}"
    for value in (named, f"{origin}{absolute}", f"http://elsewhere.example{foreign}"):
        query = f"header={field}%3A%20{value}"
        assert (await rig.get(f"/respond/write?{query}", method="POST")).status == 200
    assert (await rig.get(named)).x_cache == "MISS"
    assert (await rig.get(absolute)).x_cache == "MISS"
    assert (await rig.get(foreign)).x_cache == "HIT"  # another origin's URL: left alone


async def test_a_location_outside_the_routes_base_path_is_left_alone(rig: Rig) -> None:
    based = rig.route(upstream_base_path="/respond")
    await rig.get("/respond/kept", route=based)
    assert (await rig.get("/respond/kept", route=based)).x_cache == "HIT"
    # /kept under the base is the route's /kept; /other/kept is outside the base.
    for location in ("/other/kept", "/respond/kept"):
        write = f"/respond/w?header=Location%3A%20{location}"
        await rig.get(write, method="POST", route=based)
    assert (await rig.get("/respond/kept", route=based)).x_cache == "HIT"
    await rig.get(
        "/respond/w?header=Location%3A%20/respond/respond/kept", method="POST", route=based
    )
    assert (await rig.get("/respond/kept", route=based)).x_cache == "MISS"


# --- a fill that began before a write does not store the old answer ------------------------------
async def test_a_fill_that_began_before_a_successful_write_stores_nothing(rig: Rig) -> None:
    target = "/respond/race?delay=0.5"
    leader = asyncio.create_task(rig.get(target))
    await _upstream_has_seen(rig, "/respond/race", 1)
    # A quick write whose answer names the URI: invalidated while the fill still runs.
    write = "/respond/race-write?header=Location%3A%20/respond/race%3Fdelay%3D0.5"
    assert (await rig.get(write, method="POST")).status == 200
    first = await leader
    assert first.x_cache == "MISS"
    assert rig.deps.metrics.events["cache_fills_outdated"] == 1
    after = await rig.get(target)
    assert after.x_cache == "MISS"  # not the answer fetched before the write
    assert after.json()["n"] > first.json()["n"]
    assert (await rig.get(target)).x_cache == "HIT"


# --- the policy's own lock settings ---------------------------------------------------------------
async def test_the_policys_lock_timeout_bounds_the_wait_for_another_fill(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig("memory")  # no override: the policy's settings apply
    rig.policy = policy_of(lock_timeout_seconds=0.2)
    leader = asyncio.create_task(rig.get("/respond/plock?delay=1"))
    await _upstream_has_seen(rig, "/respond/plock", 1)
    late = await rig.get("/respond/plock?delay=1")
    await leader
    assert late.x_cache == "MISS"  # went alone after 0.2 s instead of waiting 1 s
    assert rig.calls("/respond/plock") == 2


# --- variants selected by the response's Vary (RFC 9111 §4.1) ------------------------------------
@dataclass
class Negotiating:
    """An upstream that chooses what it sends by request headers, as real ones do: gzip when the
    request's Accept-Encoding names it, the language it asks for; it records what it was sent."""

    port: int
    seen: list[dict[str, str]] = field(default_factory=list)

    def calls(self) -> int:
        return len(self.seen)


@pytest.fixture
async def negotiating() -> AsyncIterator[Negotiating]:
    import gzip

    upstream = Negotiating(0)

    async def handle(request: web.Request) -> web.Response:
        upstream.seen.append({k.lower(): v for k, v in request.headers.items()})
        n = len(upstream.seen)
        await asyncio.sleep(float(request.query.get("delay", "0")))
        vary = request.query.get("vary", "Accept-Encoding")
        headers = {"Vary": vary, "Cache-Control": "max-age=60"}
        if vary == "Accept-Language":
            lang = request.headers.get("Accept-Language", "en")
            return web.Response(body=f"{lang}:{n}".encode(), headers=headers)
        body = f"plain:{n}".encode()
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.port = runner.addresses[0][1]
    try:
        yield upstream
    finally:
        await runner.cleanup()


async def _fill_under_way(upstream: Negotiating, calls: int) -> None:
    """Until the upstream has received `calls` requests."""
    deadline = time.monotonic() + 5
    while upstream.calls() < calls:
        assert time.monotonic() < deadline, f"the upstream never saw call {calls}"
        await asyncio.sleep(0.01)


def _body(answer: Answer) -> str:
    import gzip

    if answer.headers.get("content-encoding") == "gzip":
        return gzip.decompress(answer.body).decode()
    return answer.body.decode()


GZIP = [("Accept-Encoding", "gzip, deflate, br")]


async def test_variants_are_stored_per_served_coding(rig: Rig, negotiating: Negotiating) -> None:
    route = rig.route(port=negotiating.port)
    zipped = await rig.get("/v/a", headers=GZIP, route=route)
    assert (zipped.x_cache, zipped.headers["content-encoding"]) == ("MISS", "gzip")
    # The upstream was offered the codings the client accepts, rebuilt.
    assert negotiating.seen[0]["accept-encoding"] == "gzip, deflate, br"
    plain = await rig.get("/v/a", route=route)
    assert plain.x_cache == "MISS"  # not the gzip variant: this client did not ask for it
    assert "content-encoding" not in plain.headers
    assert "accept-encoding" not in negotiating.seen[1]
    assert _body(plain) == "plain:2"
    # Every spelling that accepts gzip is the one gzip variant; the rest the identity one.
    for accept in ("gzip", "br;q=1.0, gzip;q=0.8, *;q=0.1", "deflate, gzip;q=1.0"):
        again = await rig.get("/v/a", headers=[("Accept-Encoding", accept)], route=route)
        assert (again.x_cache, _body(again)) == ("HIT", "plain:1"), accept
        assert again.headers["content-encoding"] == "gzip"
    for accept in ("identity", "deflate", "evil-encoding"):
        again = await rig.get("/v/a", headers=[("Accept-Encoding", accept)], route=route)
        assert (again.x_cache, _body(again)) == ("HIT", "plain:2"), accept
        assert "content-encoding" not in again.headers
    assert negotiating.calls() == 2
    # A purge of the URL removes the index and every variant.
    uri = rig.deps.cache
    assert await rig.layer.io.invalidate(rig.request("/v/a", route=route)) == 3
    assert (await uri.stats()).entries == 0
    assert (await rig.get("/v/a", headers=GZIP, route=route)).x_cache == "MISS"


async def test_variants_per_url_are_bounded(rig: Rig, negotiating: Negotiating) -> None:
    route = rig.route(policy_of(max_variants=2), port=negotiating.port)

    async def lang(value: str) -> Answer:
        return await rig.get(
            "/v/l?vary=Accept-Language", headers=[("Accept-Language", value)], route=route
        )

    for value in ("fr", "de"):
        assert (await lang(value)).x_cache == "MISS"
    # Known to vary on it now: the fill forwards it (the first did not: see the next test).
    assert negotiating.seen[1]["accept-language"] == "de"
    assert [(await lang(v)).x_cache for v in ("de",)] == ["HIT"]
    assert _body(await lang("it")) == "it:3"
    assert [(await lang(v)).x_cache for v in ("de", "it")] == ["HIT", "HIT"]
    assert _body(await lang("es")) == "es:4"  # the third: the least recently stored (de) goes
    assert (await rig.deps.cache.stats()).entries == 3  # the index and two variants
    assert [(await lang(v)).x_cache for v in ("it", "es")] == ["HIT", "HIT"]
    again = await lang("de")
    assert (again.x_cache, _body(again)) == ("MISS", "de:5")


async def test_the_first_fill_keys_unsent_headers_as_absent(
    rig: Rig, negotiating: Negotiating
) -> None:
    route = rig.route(port=negotiating.port)
    target = "/v/first?vary=Accept-Language"
    # Nothing says yet that the URL varies on Accept-Language: the first fill does not send it,
    # so its answer (the upstream's default) is not the French variant.
    first = await rig.get(target, headers=[("Accept-Language", "fr")], route=route)
    assert (first.x_cache, _body(first)) == ("MISS", "en:1")
    assert (await rig.get(target, route=route)).x_cache == "HIT"  # no Accept-Language: that one
    french = await rig.get(target, headers=[("Accept-Language", "fr")], route=route)
    assert (french.x_cache, _body(french)) == ("MISS", "fr:2")
    again = await rig.get(target, headers=[("Accept-Language", "fr")], route=route)
    assert (again.x_cache, _body(again)) == ("HIT", "fr:2")


async def test_a_waiter_is_not_handed_a_variant_for_other_headers(
    rig: Rig, negotiating: Negotiating
) -> None:
    route = rig.route(port=negotiating.port)
    target = "/v/storm?delay=0.3"
    leader = asyncio.create_task(rig.get(target, headers=GZIP, route=route))
    await _fill_under_way(negotiating, 1)
    answers = await asyncio.gather(
        *(rig.get(target, headers=GZIP, route=route) for _ in range(5)),
        *(rig.get(target, route=route) for _ in range(5)),
    )
    first = await leader
    assert first.headers["content-encoding"] == "gzip"
    zipped, plain = answers[:5], answers[5:]
    assert all(a.headers.get("content-encoding") == "gzip" for a in zipped)
    assert all("collapsed" in a.headers["cache-status"] for a in zipped)
    # Those that do not accept gzip went upstream on their own and got identity.
    assert all("content-encoding" not in a.headers for a in plain)
    assert all(_body(a).startswith("plain:") for a in plain)
    assert negotiating.calls() == 6


async def test_waiters_varying_on_other_headers_take_the_stored_variant(
    rig: Rig, negotiating: Negotiating
) -> None:
    route = rig.route(port=negotiating.port)
    target = "/v/lang?vary=Accept-Language&delay=0.3"
    fr = [("Accept-Language", "fr")]
    assert _body(await rig.get(target, headers=fr, route=route)) == "en:1"  # not sent yet
    assert _body(await rig.get(target, headers=fr, route=route)) == "fr:2"
    # Gone from the store; this process still knows the URL varies on Accept-Language.
    assert await rig.layer.io.invalidate(rig.request(target, route=route)) == 3
    leader = asyncio.create_task(rig.get(target, headers=fr, route=route))
    await _fill_under_way(negotiating, 3)
    de = [("Accept-Language", "de")]
    answers = await asyncio.gather(
        *(rig.get(target, headers=fr, route=route) for _ in range(4)),
        *(rig.get(target, headers=de, route=route) for _ in range(2)),
    )
    assert _body(await leader) == "fr:3"
    # The waiters cannot tell from the answer whose Accept-Language chose it: they look their
    # own variant up in the store, where the fill has just put it; those it is not for go
    # upstream on their own.
    assert [_body(a) for a in answers[:4]] == ["fr:3"] * 4
    assert all("collapsed" in a.headers["cache-status"] for a in answers[:4])
    assert sorted(_body(a) for a in answers[4:]) == ["de:4", "de:5"]
    assert negotiating.calls() == 5


async def test_a_varying_hit_kept_in_process_costs_no_redis_round_trip(
    make_rig: RigFactory, negotiating: Negotiating
) -> None:
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    route = rig.route(port=negotiating.port)
    key = rig.deps.cache.generation_key
    await rig.deps.redis.set(key, b"1", nx=True)

    async def admitted(headers: list[tuple[str, str]]) -> Answer:
        req = rig.request("/v/l1", headers=headers, route=route)
        req.ex.cache_generation = await rig.deps.redis.get(key)
        return await rig.send(req)

    assert (await admitted(GZIP)).x_cache == "MISS"
    redis: CountingRedis = rig.deps.redis
    await _gauges_read(rig)
    redis.commands.clear()
    hit = await admitted(GZIP)
    assert (hit.x_cache, hit.headers["content-encoding"]) == ("HIT", "gzip")
    assert redis.commands == ["GET"]  # the generation read above; the index and variant: none
    assert rig.deps.metrics.events["cache_l1_hits"] == 2


async def test_an_instance_waiting_on_another_takes_only_its_own_variant(
    make_rig: RigFactory, negotiating: Negotiating
) -> None:
    a = await make_rig("redis")
    b = await make_rig("redis", clock=a.clock)
    route = a.route(port=negotiating.port)
    target = "/v/remote?delay=0.5"
    leader = asyncio.create_task(a.get(target, headers=GZIP, route=route))
    await _fill_under_way(negotiating, 1)
    # On b, the gzip request leads (it waits for a's fill, and takes it); the other waits on
    # b's own, whose gzip answer it does not accept: it goes upstream alone.
    zipping = asyncio.create_task(b.get(target, headers=GZIP, route=route))
    deadline = time.monotonic() + 5
    while not b.layer.flights.busy(b.key(target)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    plain = await b.get(target, route=route)
    zipped = await zipping
    assert (await leader).headers["content-encoding"] == "gzip"
    assert zipped.headers["content-encoding"] == "gzip"
    assert "collapsed" in zipped.headers["cache-status"]
    assert "content-encoding" not in plain.headers
    assert _body(plain) == "plain:2"
    assert negotiating.calls() == 2


@pytest.mark.parametrize("query", ["cache_control=no-store", "cache_control=private",
                                   "set_cookie=s%3D1"])  # fmt: skip
async def test_a_404_the_cache_may_not_keep_is_not_remembered_either(rig: Rig, query: str) -> None:
    """§5.2.2.5, §5.2.2.7: what forbids storing a 404 forbids the negative cache's memory of
    it too (the Bloom filter would otherwise answer NEGATIVE without asking the upstream)."""
    target = f"/respond/unkept?status=404&{query}"
    for _ in range(2):
        answer = await rig.get(target)
        assert (answer.status, answer.x_cache) == (404, "MISS"), answer.headers
    assert rig.calls("/respond/unkept") == 2
