"""GET /admin/analytics/logs/{request_id}, the logs' request-id and key-name searches, and
/admin/analytics/refusals, against hand-built request logs (see test_admin_analytics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from heliox.db.engine import make_engine
from heliox.db.logwriter import LogWriter
from heliox.db.models import RequestLog
from heliox.gateway.admission_step import refusal_for, refusal_record
from heliox.metrics import Metrics
from heliox.state.admission import (
    RATE,
    TOKEN_BUCKET,
    AdmissionRequest,
    AdmissionResult,
    LimitSpec,
    key_subject,
)
from tests.admin.admin_support import FakeRuntime, assert_problem
from tests.admin.test_admin_analytics import (
    IN_RANGE,
    KEY_HASH,
    RANGE,
    ROWS,
    T0,
    Row,
    _backend,
    assert_same,
    get_json,
    insert_rows,
    row_ids,
    seed,
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"


@pytest.fixture
async def seeded(runtime: FakeRuntime) -> FakeRuntime:
    await seed(runtime.session_factory)
    return runtime


# --- one request ---------------------------------------------------------------------------------
async def test_a_request_by_its_id_shows_everything_its_row_holds(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    # Row 3 (id 3): orders, key 1, a MISS that called the upstream.
    body = await get_json(client, "/admin/analytics/logs/req-20")
    assert KEY_HASH[:-1] not in str(body)
    assert body["id"] == 3
    assert body["request_id"] == "req-20"
    assert (body["route_name"], body["method"], body["path"]) == ("orders", "GET", "/orders/1_a")
    assert (body["status"], body["cache_status"]) == (200, "MISS")
    assert (body["latency_ms"], body["upstream_latency_ms"]) == (30.0, 25.0)
    assert (body["bytes_in"], body["bytes_out"]) == (7, 100)
    assert (body["client_ip"], body["user_agent"]) == ("203.0.113.9", "test-agent")
    # Names, so the drawer need not look them up: never key material.
    assert (body["key_id"], body["key_name"], body["key_prefix"]) == (
        1,
        "orders-bot",
        "hx_live_aaaa",
    )
    assert (body["tenant_id"], body["tenant_name"]) == (1, "Acme")
    assert body["same_request_id"] == [] and body["more_same_request_id"] is False


async def test_a_request_without_a_key_has_no_key_names(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    body = await get_json(client, "/admin/analytics/logs/req-30")
    assert (body["status"], body["key_id"], body["key_name"], body["tenant_name"]) == (
        401,
        None,
        None,
        None,
    )


async def test_an_unknown_request_id_is_a_404_problem(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    problem = assert_problem(await client.get("/admin/analytics/logs/no-such-request"), 404)
    assert "no-such-request" in problem["detail"]
    # A row that exists but carries another request id is not answered for this one.
    problem = assert_problem(
        await client.get("/admin/analytics/logs/req-20", params={"log_id": 1}), 404
    )


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "café", "a;b"])
async def test_a_request_id_the_gateway_never_makes_is_a_422(
    client: httpx.AsyncClient, bad: str
) -> None:
    problem = assert_problem(await client.get(f"/admin/analytics/logs/{bad}"), 422)
    assert problem["errors"][0]["loc"] == ["path", "request_id"]


async def test_a_reused_client_request_id_answers_the_newest_and_lists_the_others(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    # A client sent X-Request-Id "retry-7" three times (ids 15, 16, 17).
    reused = [
        Row(200 + i, "orders", 1, status, "MISS", 5.0, 4.0, 10, path=f"/try/{i}")
        for i, status in enumerate((502, 502, 200))
    ]
    await insert_rows(seeded.session_factory, reused)
    async with seeded.session_factory() as session:
        await session.execute(
            update(RequestLog).where(RequestLog.id > len(ROWS)).values(request_id="retry-7")
        )
        await session.commit()
    newest = await get_json(client, "/admin/analytics/logs/retry-7")
    assert (newest["id"], newest["status"], newest["path"]) == (17, 200, "/try/2")
    assert [o["id"] for o in newest["same_request_id"]] == [16, 15]
    assert newest["same_request_id"][0] == {
        "id": 16,
        "ts": newest["same_request_id"][0]["ts"],
        "status": 502,
        "method": "GET",
        "path": "/try/1",
    }
    # log_id opens one of the others; the rest (the newest included) are listed beside it.
    older = await get_json(client, "/admin/analytics/logs/retry-7", log_id=15)
    assert (older["id"], older["path"]) == (15, "/try/0")
    assert [o["id"] for o in older["same_request_id"]] == [17, 16]


# --- what the gateway records besides (0010), written as the gateway writes it ------------------
def _refused_by_rate() -> tuple[str, str, dict[str, Any]]:
    """The log fields of a key's rate-limit 429, built by the gateway's own code, and what the
    client's problem said."""
    admission = AdmissionRequest(subject=key_subject(1), limit=LimitSpec(TOKEN_BUCKET, 2.0, 4))
    result = AdmissionResult(
        allowed=False, reason=RATE, limit=4, remaining=0, reset_after=2.0, retry_after=0.4,
        blocked_until=None, daily_limit=None, daily_remaining=None, daily_reset=None,
        monthly_limit=None, monthly_remaining=None, monthly_reset=None, now=T0.timestamp(),
    )  # fmt: skip
    refusal = refusal_for(admission, result, RATE)
    said = {"quota": refusal.quota, "window_seconds": refusal.window, "remaining": 0}
    said |= {"retry_after": refusal.retry_after, "reset_after": refusal.reset}
    return RATE, refusal_record(admission, result, refusal), said


async def _write_detail_rows(url: str, spill: Path) -> None:
    """Through the log writer (COPY on PostgreSQL): a MISS, a HIT, a 429, and a row spilled by
    the previous version (without the 0010 fields) replayed by this one."""
    engine = make_engine(url, pool_size=1)
    writer = LogWriter(
        engine,
        is_postgres=engine.dialect.name == "postgresql",
        metrics=Metrics(),
        queue_size=100,
        spill_path=spill,
    )
    ts = T0.timestamp() + 1
    base = (1, 1, None, "orders", "GET", "/orders/9", 200)
    tail = (5.0, 4.0, 0, 10, "203.0.113.9", "agent", None)
    reason, record, _ = _refused_by_rate()
    try:
        await writer._spill([(ts, "d-old", *base, "MISS", *tail)])  # 17 fields: 0009's rows
        writer.enqueue((ts, "d-miss", *base, "MISS", *tail, "c:" + "a" * 32, 200, None, None))
        writer.enqueue((ts, "d-hit", *base, "HIT", *tail, "c:" + "a" * 32, None, None, None))
        refused = (ts, "d-429", *base[:-1], 429, "", 1.0, None, 0, 60, *tail[4:])
        writer.enqueue((*refused, None, None, reason, record))
        await writer.flush()
        assert writer.written == 4  # the spilled row replayed, then the three queued
    finally:
        await engine.dispose()


async def _detail_answers(url: str, spill: Path) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    async for backend in _backend(url):
        await seed(backend.runtime.session_factory)
        await _write_detail_rows(url, spill)
        for rid in ("d-old", "d-miss", "d-hit", "d-429"):
            answers[rid] = await get_json(backend.client, f"/admin/analytics/logs/{rid}")
    return answers


def _assert_detail_fields(answers: dict[str, Any]) -> None:
    fields = ("cache_key", "upstream_status", "refused_by", "refusal")
    key = "c:" + "a" * 32
    assert {rid: tuple(a[f] for f in fields) for rid, a in answers.items() if rid != "d-429"} == {
        "d-old": (None, None, None, None),
        "d-miss": (key, 200, None, None),
        "d-hit": (key, None, None, None),
    }
    refused = answers["d-429"]
    assert (refused["status"], refused["refused_by"], refused["cache_key"]) == (429, "rate", None)
    _, _, said = _refused_by_rate()
    numbers = refused["refusal"]
    assert {name: numbers[name] for name in said} == said  # what the client was told
    assert (numbers["quota"], numbers["window_seconds"], numbers["retry_after"]) == (4, 2, 1)
    assert numbers["algorithm"] == TOKEN_BUCKET and numbers["per"] == "key"
    assert (numbers["rate"], numbers["burst"]) == (2.0, 4)
    # The list endpoint keeps its fields; the detail adds these.
    assert answers["d-old"]["status"] == 200 and answers["d-old"]["key_name"] == "orders-bot"


async def test_the_detail_shows_cache_key_upstream_status_and_the_refusing_limit(
    sqlite_url: str, tmp_path: Path
) -> None:
    _assert_detail_fields(await _detail_answers(sqlite_url, tmp_path / "spill.jsonl"))


@pytest.mark.postgres
async def test_the_detail_fields_read_the_same_on_postgresql(
    pg_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    pg = await _detail_answers(pg_url, tmp_path / "pg-spill.jsonl")
    _assert_detail_fields(pg)
    lite = await _detail_answers(sqlite_url, tmp_path / "spill.jsonl")
    assert_same(lite, pg)


# --- searching the logs --------------------------------------------------------------------------
async def test_logs_search_by_request_id(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/admin/analytics/logs", request_id="req-75")
    assert [item["id"] for item in body["items"]] == [10]
    body = await get_json(client, "/admin/analytics/logs", request_id="nothing-like-it")
    assert body["items"] == [] and body["next_cursor"] is None


@pytest.mark.parametrize(
    ("text", "key_ids"),
    [
        ("orders", {1}),  # name prefix
        ("ORDERS-B", {1}),  # case-insensitive
        ("hx_b", {2}),  # display prefix
        ("hx_", {1, 2}),  # both prefixes
        ("bot", set()),  # the middle of a name is not a prefix
        ("%", set()),  # LIKE wildcards are literal
    ],
)
async def test_logs_search_by_key_name_or_prefix(
    seeded: FakeRuntime, client: httpx.AsyncClient, text: str, key_ids: set[int]
) -> None:
    body = await get_json(client, "/admin/analytics/logs", key=text, limit=1000)
    assert [item["id"] for item in body["items"]] == row_ids(lambda r: r.key_id in key_ids)


async def test_a_key_search_combines_with_other_filters_and_the_tail(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    body = await get_json(client, "/admin/analytics/logs", key="users", status="5xx")
    assert [item["id"] for item in body["items"]] == [11]
    # A tail that matches no key keeps its cursor where it was.
    body = await get_json(client, "/admin/analytics/logs", key="nobody", after_id=5)
    assert body == {"items": [], "next_cursor": 5, "has_more": False}


async def test_bad_search_values_are_422_naming_the_parameter(client: httpx.AsyncClient) -> None:
    for params, name in (
        ({"request_id": "x" * 129}, "request_id"),
        ({"request_id": "a\x01b"}, "request_id"),
        ({"key": "k" * 201}, "key"),
    ):
        problem = assert_problem(await client.get("/admin/analytics/logs", params=params), 422)
        assert problem["errors"][0]["loc"] == ["query", name]


# --- refusals ------------------------------------------------------------------------------------
async def test_refusals_series_and_keys(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/admin/analytics/refusals", **RANGE, bucket="1m")
    series = body["series"]
    assert len(series) == 10 and body["bucket_seconds"] == 60
    assert sum(p["requests"] for p in series) == len(IN_RANGE)
    # 429 at 130 s and 404 at 150 s (minute 2), 401 at 30 s (minute 0).
    assert [(p["client_errors"], p["unauthorized"], p["rate_limited"]) for p in series[:3]] == [
        (1, 1, 0),
        (0, 0, 0),
        (2, 0, 1),
    ]
    # Only key 1 was refused (a 429 and a 404); the 401 had no key.
    (key,) = body["by_key"]
    assert key == {
        "key_id": 1,
        "tenant_id": 1,
        "tenant_name": "Acme",
        "name": "orders-bot",
        "key_prefix": "hx_live_aaaa",
        "requests": 8,
        "client_errors": 2,
        "forbidden": 0,
        "rate_limited": 1,
        "refused_rate": 0.25,
    }


async def test_refusals_reject_a_bucket_too_fine_for_the_range(client: httpx.AsyncClient) -> None:
    problem = assert_problem(
        await client.get("/admin/analytics/refusals", params={"window": "90d", "bucket": "1m"}),
        422,
    )
    assert problem["errors"][0]["loc"] == ["query", "bucket"]


@pytest.mark.postgres
async def test_postgresql_answers_as_sqlite(pg_url: str, sqlite_url: str) -> None:
    answers: list[dict[str, Any]] = []
    for url in (sqlite_url, pg_url):
        async for backend in _backend(url):
            await seed(backend.runtime.session_factory)
            c = backend.client
            answers.append(
                {
                    "detail": await get_json(c, "/admin/analytics/logs/req-20"),
                    "key": await get_json(c, "/admin/analytics/logs", key="HX_"),
                    "refusals": await get_json(c, "/admin/analytics/refusals", **RANGE),
                }
            )
    assert answers[0]["key"]["items"], "the search found nothing to compare"
    assert_same(answers[0], answers[1])
