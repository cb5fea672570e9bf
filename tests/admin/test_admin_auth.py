"""X-Admin-Key: constant-time on bytes, one 401 body for every failure, the UI session hook."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi import FastAPI, Request

from heliox.admin.auth import admin_key_actor, admin_key_matches
from tests.admin.admin_support import ADMIN_KEY, FakeRuntime, build_app, client_for

EXPECTED_ACTOR = "admin-key:" + hashlib.sha256(ADMIN_KEY.encode()).hexdigest()[:8]


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["www-authenticate"].startswith("AdminKey")
    body = response.json()
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"


async def raw_get(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
    async with client_for(app, admin_key=None) as client:
        return await client.get(path, headers=headers)


async def test_missing_and_wrong_keys_get_the_same_401(app: FastAPI) -> None:
    missing = await raw_get(app, "/admin/tenants", [])
    wrong = await raw_get(app, "/admin/tenants", [(b"x-admin-key", b"not-the-key")])
    prefix = await raw_get(app, "/admin/tenants", [(b"x-admin-key", ADMIN_KEY[:-1].encode())])
    empty = await raw_get(app, "/admin/tenants", [(b"x-admin-key", b"")])
    for response in (missing, wrong, prefix, empty):
        assert_401(response)
        assert response.content == missing.content


@pytest.mark.parametrize(
    "value",
    [
        "clé-admin".encode(),  # UTF-8
        "clé".encode("latin-1"),  # a lone non-ASCII byte
        b"\xff\xfe\x00",
        (ADMIN_KEY + "é").encode(),
    ],
)
async def test_non_ascii_header_values_are_401_not_500(app: FastAPI, value: bytes) -> None:
    assert_401(await raw_get(app, "/admin/tenants", [(b"x-admin-key", value)]))


async def test_a_duplicated_header_is_refused(app: FastAPI) -> None:
    both = [(b"x-admin-key", ADMIN_KEY.encode()), (b"x-admin-key", ADMIN_KEY.encode())]
    assert_401(await raw_get(app, "/admin/tenants", both))


async def test_the_right_key_is_accepted_on_every_resource(client: httpx.AsyncClient) -> None:
    for path in (
        "/admin/tenants",
        "/admin/keys",
        "/admin/routes",
        "/admin/policies",
        "/admin/audit",
    ):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-store"


async def test_every_endpoint_demands_the_key(app: FastAPI) -> None:
    calls = [
        ("GET", "/admin/tenants/1"),
        ("POST", "/admin/tenants"),
        ("PATCH", "/admin/tenants/1"),
        ("DELETE", "/admin/tenants/1"),
        ("GET", "/admin/keys/1"),
        ("POST", "/admin/keys"),
        ("PATCH", "/admin/keys/1"),
        ("DELETE", "/admin/keys/1"),
        ("POST", "/admin/keys/1/rotate"),
        ("POST", "/admin/routes"),
        ("PATCH", "/admin/routes/1"),
        ("DELETE", "/admin/routes/1"),
        ("POST", "/admin/policies"),
        ("PATCH", "/admin/policies/1"),
        ("DELETE", "/admin/policies/1"),
        ("GET", "/admin/audit"),
    ]
    async with client_for(app, admin_key="wrong") as client:
        for method, path in calls:
            # A body that would fail validation: authentication must be decided first.
            response = await client.request(method, path, content=b"{not json")
            assert_401(response)


async def test_unauthenticated_writes_change_nothing(app: FastAPI, runtime: FakeRuntime) -> None:
    async with client_for(app, admin_key="wrong") as client:
        assert_401(await client.post("/admin/tenants", json={"name": "Mallory"}))
    async with client_for(app) as client:
        assert (await client.get("/admin/tenants")).json()["total"] == 0
    assert runtime.changes == 0


async def test_the_actor_is_a_fingerprint_never_the_key(client: httpx.AsyncClient) -> None:
    assert (await client.post("/admin/tenants", json={"name": "Acme"})).status_code == 201
    audit = await client.get("/admin/audit")
    assert audit.json()["items"][0]["actor"] == EXPECTED_ACTOR
    assert ADMIN_KEY not in audit.text
    assert admin_key_actor(ADMIN_KEY) == EXPECTED_ACTOR


async def test_the_session_hook_admits_the_ui(runtime: FakeRuntime) -> None:
    def session_actor(request: Request) -> str | None:
        return "ui:alice" if request.cookies.get("heliox_session") == "good" else None

    runtime.session_actor = session_actor
    app = build_app(runtime)
    async with client_for(app, admin_key=None) as client:
        client.cookies.set("heliox_session", "good")
        created = await client.post("/admin/tenants", json={"name": "Via UI"})
        assert created.status_code == 201
        audit = await client.get("/admin/audit")
        assert audit.json()["items"][0]["actor"] == "ui:alice"
        client.cookies.set("heliox_session", "forged")
        assert_401(await client.get("/admin/tenants"))


async def test_an_async_session_hook_is_awaited(runtime: FakeRuntime) -> None:
    async def session_actor(request: Request) -> str | None:
        return "ui:bob" if request.headers.get("x-test-session") == "ok" else None

    runtime.session_actor = session_actor
    app = build_app(runtime)
    async with client_for(app, admin_key=None) as client:
        assert (
            await client.get("/admin/tenants", headers={"x-test-session": "ok"})
        ).status_code == 200
        assert_401(await client.get("/admin/tenants", headers={"x-test-session": "no"}))


async def test_the_header_still_works_beside_the_hook(runtime: FakeRuntime) -> None:
    runtime.session_actor = lambda request: None
    async with client_for(build_app(runtime)) as client:
        assert (await client.get("/admin/tenants")).status_code == 200


def test_key_comparison_is_on_bytes() -> None:
    assert admin_key_matches(ADMIN_KEY.encode(), ADMIN_KEY)
    assert admin_key_matches("clé".encode(), "clé")
    assert not admin_key_matches("clé".encode("latin-1"), "clé")
    assert not admin_key_matches(b"\xff", ADMIN_KEY)
    assert not admin_key_matches(b"", "")  # an unset key admits nobody
