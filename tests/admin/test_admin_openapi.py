"""The admin API's OpenAPI document as a contract, on the real application in process: security
scheme, problem+json errors with their schema, 404/409/413 where the code answers them, bounds
and a description and a valid example for every field and parameter; errors off /admin are
problem+json too; the docs page loads only the gateway's own assets.

The running gateway's document is fuzzed against its answers in tests/e2e/test_admin_fuzz.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest

from heliox.config import Settings, load_settings
from heliox.gateway.app import Gateway
from heliox.main import DOCS_URL, OPENAPI_URL, build_app
from tests.admin.admin_support import ADMIN_KEY

PROBLEM = "application/problem+json"
PROBLEM_SCHEMA = {"$ref": "#/components/schemas/ProblemDetail"}


def _settings() -> Settings:
    return load_settings(
        admin_api_key=ADMIN_KEY,
        secret_key="test-secret-key-0123456789abcdef",
        deployment_mode="demo",
        database_url="",
        redis_url="",
    )


@pytest.fixture(scope="module")
def app() -> Gateway:
    # No lifespan: the document and routing's own errors need neither database nor runtime.
    # (The production docs page behind the admin key: tests/e2e/test_observability.py.)
    return build_app(_settings())


@pytest.fixture
async def client(app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


@pytest.fixture
async def doc(client: httpx.AsyncClient) -> dict[str, Any]:
    """The document as the gateway serves it."""
    r = await client.get(OPENAPI_URL)
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def _admin_operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = [(p, m, op) for p, m, op in _operations(doc) if p.startswith("/admin/")]
    assert len(found) >= 30  # every resource is in the document
    return found


def test_every_admin_operation_requires_the_admin_key_scheme(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["AdminKey"]
    assert {k: scheme[k] for k in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Admin-Key",
    }
    for path, method, op in _admin_operations(doc):
        assert op["security"] == [{"AdminKey": []}], (method, path)
        assert "401" in op["responses"], (method, path)


def test_every_error_is_problem_json_with_its_schema(doc: dict[str, Any]) -> None:
    errors = 0
    for path, method, op in _operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            errors += 1
            assert response["content"] == {PROBLEM: {"schema": PROBLEM_SCHEMA}}, (
                method,
                path,
                status,
            )
    assert errors > 100
    problem = doc["components"]["schemas"]["ProblemDetail"]
    assert set(problem["required"]) == {"title", "status"}
    assert {"type", "title", "status", "detail", "errors"} <= set(problem["properties"])


def test_404_409_and_413_are_declared_where_the_code_answers_them(doc: dict[str, Any]) -> None:
    for path, method, op in _admin_operations(doc):
        declared = set(op["responses"])
        if "{" in path:
            assert "404" in declared, (method, path)
        if method in ("post", "put", "patch", "delete"):
            assert "409" in declared, (method, path)
        if "requestBody" in op:
            assert "413" in declared, (method, path)
    assert {"200", "401", "404", "409", "413", "422", "429", "500", "503"} <= set(
        doc["paths"]["/admin/keys/{key_id}"]["patch"]["responses"]
    )


def _leaves(doc: dict[str, Any], node: dict[str, Any], where: str, seen: frozenset[str]) -> Any:
    """(where, schema) of every scalar or list a request can carry, through $refs."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return _leaves(doc, doc["components"]["schemas"][name], where, seen | {name})
    out = [(where, node)] if node.get("type") in ("integer", "number", "string", "array") else []
    for option in node.get("anyOf", []) + node.get("allOf", []) + node.get("oneOf", []):
        out += _leaves(doc, option, where, seen)
    for name, prop in node.get("properties", {}).items():
        out += _leaves(doc, prop, f"{where}.{name}", seen)
    if isinstance(node.get("items"), dict):
        out += _leaves(doc, node["items"], f"{where}[]", seen)
    return out


def _bounded(schema: dict[str, Any]) -> bool:
    kind = schema["type"]
    if kind in ("integer", "number"):
        return bool({"minimum", "exclusiveMinimum"} & set(schema)) and bool(
            {"maximum", "exclusiveMaximum"} & set(schema)
        )
    if kind == "string":
        return "maxLength" in schema or "enum" in schema or schema.get("format") == "date-time"
    return "maxItems" in schema


def test_every_value_a_request_carries_has_its_bounds_stated(doc: dict[str, Any]) -> None:
    leaves: list[tuple[str, dict[str, Any]]] = []
    for path, method, op in _admin_operations(doc):
        for media in op.get("requestBody", {}).get("content", {}).values():
            leaves += _leaves(doc, media["schema"], f"{method} {path} body", frozenset())
        for param in op.get("parameters", []):
            if param["in"] == "path":
                continue  # ids: one no row can have is a 404, like any missing row
            where = f"{method} {path} ?{param['name']}"
            leaves += _leaves(doc, param["schema"], where, frozenset())
    assert len(leaves) > 100
    assert [where for where, schema in leaves if not _bounded(schema)] == []


def _valid(example: Any, schema: dict[str, Any], doc: dict[str, Any]) -> str | None:
    validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
    try:
        validator.validate(example)
    except jsonschema_rs.ValidationError as exc:
        return exc.message
    return None


def test_every_field_and_parameter_has_a_description_and_a_valid_example(
    doc: dict[str, Any],
) -> None:
    missing: list[str] = []
    invalid: list[str] = []
    fields = 0
    for name, schema in doc["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            fields += 1
            where = f"{name}.{field}"
            if not prop.get("description"):
                missing.append(f"{where}: description")
            if not prop.get("examples"):
                missing.append(f"{where}: example")
            elif (error := _valid(prop["examples"][0], prop, doc)) is not None:
                invalid.append(f"{where}: {error}")
    params = 0
    for path, method, op in _operations(doc):
        for param in op.get("parameters", []):
            params += 1
            where = f"{method} {path} {param['name']}"
            if not param.get("description"):
                missing.append(f"{where}: description")
            if "example" not in param:
                missing.append(f"{where}: example")
            elif (error := _valid(param["example"], param["schema"], doc)) is not None:
                invalid.append(f"{where}: {error}")
    assert fields > 300 and params > 50
    assert missing == []
    assert invalid == []
    key = doc["components"]["schemas"]["KeyCreate"]["properties"]["rate_limit_rps"]
    assert key["examples"] == [100.0]  # from the table, not made up per model


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/foo", 404),
        ("GET", "/ui/nope", 404),
        ("GET", "/ui/static/nope.js", 404),
        ("DELETE", "/health", 405),
        ("POST", "/metrics", 405),
        ("GET", "/admin/nothing-here", 404),
        ("PUT", "/admin/tenants", 405),
    ],
)
async def test_every_error_is_problem_json_also_off_the_admin_api(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    r = await client.request(method, path, headers={"X-Admin-Key": ADMIN_KEY})
    assert r.status_code == status
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"]
    assert path in body["detail"]  # says what was asked, not just the status again
    if status == 405:
        assert r.headers["allow"] and r.headers["allow"] in body["detail"]


async def test_the_docs_page_loads_only_the_gateways_own_assets(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get(DOCS_URL)
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert OPENAPI_URL in urls
    assert len(urls) >= 4  # script, stylesheet, favicon, document
    assert [u for u in urls if not u.startswith("/")] == []  # nothing from another origin
    for url in urls:
        if url != OPENAPI_URL:
            asset = await client.get(url)
            assert asset.status_code == 200, url
    script = await client.get(next(u for u in urls if "swagger-ui-bundle.js" in u))
    assert "javascript" in script.headers["content-type"]
    assert "SwaggerUIBundle" in script.text
