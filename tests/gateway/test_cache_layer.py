"""The cache layer on the request path, driven directly: real example upstream (in-process), real
upstream client, memory and Redis stores, a fake clock for the cache's sense of time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from heliox.core.cachekey import cache_key
from heliox.gateway.cache_layer import CacheLayer
from heliox.gateway.exchange import ClientGone, Exchange, ProxyRequest, ResponseSink
from heliox.gateway.upstream_client import UpstreamClient, UpstreamError, UpstreamTarget
from heliox.metrics import Metrics
from heliox.snapshot import CachePolicyConfig, RouteConfig
from heliox.state.bloom_store import MemoryNegativeCache, RedisNegativeCache
from heliox.state.cache_l1 import FreshEntries
from heliox.state.cache_memory import MemoryCacheStore
from heliox.state.cache_redis import RedisCacheStore
from heliox.upstream import app as upstream_app
from heliox.upstream.catalogue import ITEMS
from heliox.upstream.stats import STATS, RequestStats

STORES = ["memory", "redis"]
ACME = 1
TECHFLOW = 2


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            # One X-Cache, the gateway's: an upstream's own must never come along.
            assert [k for k, _ in message["headers"]].count(b"x-cache") == 1
        else:
            if self.fail_body and message.get("body"):
                raise ConnectionResetError("client went away")
            self.parts.append(message.get("body", b""))


@dataclass
class Rig:
    layer: CacheLayer
    runtime: Any
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


@pytest.fixture
async def make_rig(
    upstream: tuple[int, RequestStats],
    client: UpstreamClient,
    request: pytest.FixtureRequest,
) -> AsyncIterator[RigFactory]:
    """Build rigs on the memory or Redis store; Redis rigs built in one test share one prefix,
    like gateway instances sharing one Redis."""
    port, stats = upstream
    made: list[Rig] = []
    redis_clients: list[Redis] = []
    shared: dict[str, str] = {}

    async def build(kind: str, **layer_kw: Any) -> Rig:
        clock = layer_kw.pop("clock", None) or FakeClock()
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
        runtime = SimpleNamespace(
            fresh_entries=layer_kw.pop("fresh_entries", None),
            cache=store,
            negative=negative,
            redis=redis,
            metrics=Metrics(),
            upstream=client,
            settings=SimpleNamespace(redis_key_prefix=prefix),
            add_task=lambda task: None,  # the layer closes its own tasks in these tests
        )
        layer = CacheLayer(runtime, clock=clock, **layer_kw)  # type: ignore[arg-type]
        rig = Rig(layer, runtime, clock, port, stats)
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
    assert first.headers["cache-status"] == "heliox; fwd=miss; fwd-status=200"
    assert second.x_cache == "HIT"
    assert second.headers["cache-status"].startswith("heliox; hit; ttl=")
    assert second.headers["age"] == "0"
    assert second.body == first.body
    assert second.headers["content-length"] == str(len(first.body))
    assert rig.calls("/respond/a") == 1
    rig.clock.advance(7)
    assert (await rig.get("/respond/a")).headers["age"] == "7"


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
    store, negative = rig.runtime.cache, rig.runtime.negative

    class Spy:
        def __init__(self, name: str, target: Any) -> None:
            self._name, self._target = name, target

        def __getattr__(self, attr: str) -> Any:
            touched.append(f"{self._name}.{attr}")
            return getattr(self._target, attr)

    rig.runtime.cache = Spy("store", store)
    rig.runtime.negative = Spy("negative", negative)
    rig.runtime.upstream = Spy("upstream", rig.runtime.upstream)
    assert (await rig.get("/respond/mem")).x_cache == "HIT"
    assert touched == ["store.get"]


async def test_hit_on_redis_is_one_get(make_rig: RigFactory) -> None:
    rig = await make_rig("redis")
    await rig.get("/respond/one")
    redis: CountingRedis = rig.runtime.redis
    await asyncio.sleep(0)  # let the background gauge task run its first read
    redis.commands.clear()
    assert (await rig.get("/respond/one")).x_cache == "HIT"
    assert redis.commands == ["GET"]


async def _admitted(rig: Rig, target: str) -> ProxyRequest:
    """A request as the pipeline hands it over on Redis: admission has read the removal
    generation (admit.lua creates it on first use; so does this)."""
    key = rig.runtime.cache.generation_key
    await rig.runtime.redis.set(key, b"1", nx=True)
    req = rig.request(target)
    req.ex.cache_generation = await rig.runtime.redis.get(key)
    return req


async def _with_generation(rig: Rig, target: str) -> Answer:
    return await rig.send(await _admitted(rig, target))


async def test_fresh_entries_kept_in_process_spare_the_cache_round_trip(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    assert (await _with_generation(rig, "/respond/l1")).x_cache == "MISS"
    redis: CountingRedis = rig.runtime.redis
    await asyncio.sleep(0)  # let the background gauge task run its first read
    req = await _admitted(rig, "/respond/l1")
    redis.commands.clear()
    assert (await rig.send(req)).x_cache == "HIT"
    assert redis.commands == []  # the fill's own copy: no GET
    assert rig.runtime.metrics.events["cache_l1_hits"] == 1
    # Without a generation (admission failed open, say) the copy is not trusted.
    assert (await rig.get("/respond/l1")).x_cache == "HIT"
    assert redis.commands == ["GET"]


async def test_a_purge_elsewhere_retires_every_copy_kept_in_process(make_rig: RigFactory) -> None:
    kept = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    other = await make_rig("redis")  # another instance on the same Redis
    assert (await _with_generation(kept, "/respond/p1")).x_cache == "MISS"
    assert (await _with_generation(kept, "/respond/p1")).x_cache == "HIT"
    assert await other.runtime.cache.purge(route="r") == 1
    after = await _with_generation(kept, "/respond/p1")
    assert after.x_cache == "MISS"  # not the kept copy of the purged entry
    assert kept.calls("/respond/p1") == 2
    # An unsafe request's invalidation (a delete of the URI's entries) retires copies too.
    assert (await _with_generation(kept, "/respond/p1")).x_cache == "HIT"
    await other.layer.io.invalidate(other.request("/respond/p1"))
    assert (await _with_generation(kept, "/respond/p1")).x_cache == "MISS"
    assert kept.calls("/respond/p1") == 3


async def test_kept_copies_are_served_only_while_fresh(make_rig: RigFactory) -> None:
    rig = await make_rig("redis", fresh_entries=FreshEntries(1 << 20))
    rig.policy = policy_of(ttl_seconds=5)
    assert (await _with_generation(rig, "/respond/f1")).x_cache == "MISS"
    rig.clock.advance(6)
    # Stale now: looked up in Redis again (another instance may have refreshed it).
    redis: CountingRedis = rig.runtime.redis
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
    await rig.runtime.negative.add("r", rig.key("/echo/gone"), rig.clock())
    post = await rig.get("/echo/inv?x=1", method="POST")
    assert (post.status, post.x_cache) == (200, "BYPASS")
    assert "fwd=method" in post.headers["cache-status"]
    assert (await rig.get("/echo/inv?x=1")).x_cache == "MISS"
    # Another tenant's entry of the same URL is none of this write's business.
    assert (await rig.get("/echo/inv?x=1", tenant=TECHFLOW)).x_cache == "HIT"
    assert not await rig.runtime.negative.might_contain("r", rig.key("/echo/gone"), rig.clock())


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
    assert rig.runtime.metrics.events["swr_refresh"] == 1


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
    assert rig.runtime.metrics.events["swr_refresh_failed"] >= 1


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
    assert rig.runtime.metrics.events["stale_if_error"] == 2


async def test_a_body_cut_off_midway_is_never_stored(
    rig: Rig, flaky: tuple[int, dict[str, Any]]
) -> None:
    port, state = flaky
    route = rig.route(port=port)
    state["cut"] = True
    with pytest.raises(UpstreamError):
        await rig.get("/f/cut", route=route)
    assert await rig.runtime.cache.get(rig.key("/f/cut")) is None
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
    await rig.runtime.cache.purge(all=True)
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
    await rig.runtime.negative.add("r", rig.key(real), rig.clock())  # as a false positive would
    assert (await rig.get(real)).x_cache == "NEGATIVE"
    fixed = await rig.get(real, headers=[("Cache-Control", "no-cache")])
    assert (fixed.status, fixed.x_cache) == (200, "MISS")
    assert not await rig.runtime.negative.might_contain("r", rig.key(real), rig.clock())


async def test_routes_without_negative_caching_label_404s_as_hits(rig: Rig) -> None:
    rig.policy = policy_of(negative_cache=False)
    await rig.get("/items/nope2")
    assert (await rig.get("/items/nope2")).x_cache == "HIT"
    await rig.runtime.cache.purge(all=True)
    assert (await rig.get("/items/nope2")).x_cache == "MISS"


# --- coalescing ----------------------------------------------------------------------------------
async def test_concurrent_misses_make_one_upstream_call(rig: Rig) -> None:
    answers = await asyncio.gather(*(rig.get("/respond/storm?delay=0.3") for _ in range(50)))
    assert rig.calls("/respond/storm") == 1
    assert sorted(a.x_cache for a in answers).count("MISS") == 1
    assert {a.body for a in answers} == {answers[0].body}
    collapsed = [a for a in answers if a.x_cache == "HIT"]
    assert all("collapsed" in a.headers["cache-status"] for a in collapsed)
    assert rig.runtime.metrics.events["coalesced"] == 49


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
    await asyncio.sleep(0.05)
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
    saved = a.runtime.metrics.events["coalesced"] + b.runtime.metrics.events["coalesced"]
    assert saved == 79


async def test_a_remote_waiter_past_the_lock_timeout_does_not_store(make_rig: RigFactory) -> None:
    a = await make_rig("redis")
    b = await make_rig("redis", clock=a.clock, lock_timeout=0.2)
    leader = asyncio.create_task(a.get("/respond/remote?delay=0.8"))
    await asyncio.sleep(0.1)
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
    redis_b: CountingRedis = b.runtime.redis
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
    port, stats = upstream
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    clock = FakeClock()
    runtime = SimpleNamespace(
        fresh_entries=None,
        cache=RedisCacheStore(dead, prefix="x:"),
        negative=RedisNegativeCache(dead, expected_items=100, false_positive_rate=0.01),
        redis=dead,
        metrics=Metrics(),
        upstream=client,
        settings=SimpleNamespace(redis_key_prefix="x:"),
        add_task=lambda task: None,
    )
    layer = CacheLayer(runtime, clock=clock)  # type: ignore[arg-type]
    rig = Rig(layer, runtime, clock, port, stats)
    try:
        for _ in range(2):
            answer = await rig.get("/respond/down")
            assert (answer.status, answer.x_cache) == (200, "MISS")
        assert (await rig.get("/items/nope-down")).status == 404
        assert runtime.metrics.events["redis_errors"] >= 4
    finally:
        await layer.close()
        await dead.aclose()
