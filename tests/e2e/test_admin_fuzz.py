"""Schemathesis against the admin API's own OpenAPI document, on the running gateway: no input
it generates may produce a 5xx or an answer the document does not describe (its status, its
content type, its body's schema), and every answer is no-store. Examples are bounded (and
derandomised) to keep the suite fast and repeatable."""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from tests.e2e.harness import Gateway

EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_admin_api_answers_as_its_document_says(embedded_gateway: Gateway) -> None:
    gw = embedded_gateway
    schema = schemathesis.openapi.from_url(gw.url + "/admin/openapi.json")
    headers = {"X-Admin-Key": gw.env["ADMIN_API_KEY"]}
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), [r for r in results if not isinstance(r, Ok)]
    assert len(operations) >= 20  # every resource is in the document
    failures: list[str] = []
    sent = 0
    with httpx.Client(base_url=gw.url, timeout=10, headers=headers) as client:
        for op in operations:

            @given(case=op.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            # Any: the library's own strategy yields Case with its operation type unbound.
            def run(case: schemathesis.Case[Any]) -> None:
                nonlocal sent
                kwargs = case.as_transport_kwargs(base_url=gw.url)
                kwargs.pop("base_url", None)
                kwargs["headers"] = {**(kwargs.get("headers") or {}), **headers}
                r = client.request(
                    kwargs.pop("method"), kwargs.pop("url"),
                    headers=kwargs.get("headers"), params=kwargs.get("params"),
                    json=kwargs.get("json"), content=kwargs.get("data") or kwargs.get("content"),
                )  # fmt: skip
                sent += 1
                where = f"{r.request.method} {r.request.url} -> {r.status_code}"
                admin = case.operation.path.startswith("/admin")
                if admin and r.headers.get("cache-control") != "no-store":
                    failures.append(f"{where}: not no-store")
                try:
                    case.validate_response(r, checks=CHECKS)
                except (AssertionError, FailureGroup) as exc:
                    failures.append(f"{where}: {str(exc)[:500]}")

            run()
    assert sent >= 3 * len(operations)
    assert not failures, "\n".join(failures[:20])
