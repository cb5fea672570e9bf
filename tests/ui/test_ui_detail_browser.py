"""The request-detail drawer, the log searches, the audit page, the dashboard's history and the
UI polish (dark theme, blocked keys, empty states) in a real browser against a real gateway.

The gateway is the embedded one (SQLite in its folder). An hour of request log rows is added to
its database before the dashboard opens, so the charts have history to show the moment the page
loads; every other row here comes from real requests through /g/. With HELIOX_UPDATE_SCREENSHOTS
set, the dashboard and request-detail pictures in docs/screenshots/ are refreshed.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.hardening_support import create_key
from tests.e2e.harness import ADMIN_KEY, SEEDED_KEYS, Gateway, Upstream, gateway_env, wait_until
from tests.e2e.harness import start_gateway as start
from tests.ui.test_ui_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    TIMEOUT_MS,
    XSS_AGENT,
    Traffic,
    Watch,
    at,
    expect,
    nav,
    proxied,
    shot,
    sync_playwright,
)

SCREENSHOTS = REPO / "docs" / "screenshots"
UPDATE_SCREENSHOTS = bool(os.environ.get("HELIOX_UPDATE_SCREENSHOTS"))
# One point per minute of the last hour (59 minutes back, widened to a whole minute).
FULL_HOUR = re.compile(r"^(59|60)$")


@pytest.fixture(scope="module")
def browser(sync_playwright: Any) -> Iterator[Any]:  # noqa: F811
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    folder = workdir / "gateway-detail"
    folder.mkdir()
    gw = start(folder, gateway_env(upstream))
    gw.folder = folder  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        gw.proc.stop()


def sign_in(browser: Any, gateway: Gateway, **options: Any) -> tuple[Any, Any, Watch]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    page.goto(gateway.url + "/ui/login")
    page.locator("#admin_key").fill(ADMIN_KEY)
    page.keyboard.press("Enter")
    page.wait_for_url(at("/ui/dashboard"))
    return context, page, watch


def add_an_hour_of_history(gateway: Gateway, key_ids: list[int]) -> int:
    """Request log rows for each of the last 60 minutes (a wave, with a quiet stretch)."""
    db = gateway.folder / "heliox.db"  # type: ignore[attr-defined]
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for minute in range(60, 1, -1):
        if 34 <= minute <= 38:
            continue  # nobody called: zero requests, and no latency to draw
        base = now - timedelta(minutes=minute)
        per_minute = 600 + (minute * 97) % 900  # 10 to 25 requests a second
        for i in range(per_minute):
            status = 429 if i % 11 == 0 else 401 if i % 17 == 0 else 200
            cache = "" if status != 200 else ("HIT" if i % 3 else "MISS")
            latency = 2.0 + (i * 13 + minute) % 40
            rows.append(
                (
                    (base + timedelta(seconds=i * 60 / per_minute)).isoformat(sep=" "),
                    f"hist-{minute}-{i}",
                    1,
                    None if status == 401 else key_ids[i % len(key_ids)],
                    "demo",
                    "GET",
                    f"/items/{i % 5}",
                    status,
                    cache,
                    latency,
                    latency * 0.8 if cache == "MISS" else None,
                    0,
                    512,
                    "198.51.100.7",
                    "history-seeder",
                )
            )
    with sqlite3.connect(db, timeout=30) as conn:
        conn.executemany(
            "INSERT INTO request_logs (ts, request_id, tenant_id, key_id, route_name, method,"
            " path, status, cache_status, latency_ms, upstream_latency_ms, bytes_in, bytes_out,"
            " client_ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


def logged(gateway: Gateway, **params: Any) -> list[dict[str, Any]]:
    with gateway.admin() as admin:
        answer = admin.get("/admin/analytics/logs", params=params)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items


def test_request_detail_log_searches_and_the_audit_page(
    browser: Any, gateway: Gateway, request: pytest.FixtureRequest
) -> None:
    admin = gateway.admin()
    request.addfinalizer(admin.close)  # also when an assert fails before the browser part
    suffix = uuid.uuid4().hex[:6]
    request_id = f"detail-{suffix}"
    key_id, key_name = next((k["id"], k["name"]) for k in admin.get("/admin/keys").json()["items"])
    # A client's own X-Request-Id, a hostile user agent, and a request without a key. The same
    # request just before makes this one a cache HIT.
    page_path = f"/g/demo/items?page=2&run={suffix}"
    assert proxied(gateway, page_path, SEEDED_KEYS[0], **{"User-Agent": XSS_AGENT}).is_success
    answer = proxied(
        gateway,
        page_path,
        SEEDED_KEYS[0],
        **{"X-Request-Id": request_id, "User-Agent": XSS_AGENT},
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == request_id
    assert answer.headers["x-cache"] == "HIT"
    (cache_key,) = re.findall(r'key="([^"]+)"', answer.headers["cache-status"])
    # A key with a daily quota of one: its second request is refused, with the numbers.
    tenant_id = admin.get("/admin/keys").json()["items"][0]["tenant_id"]
    _, quota_key = create_key(gateway, tenant_id=tenant_id, daily_quota=1)
    assert proxied(gateway, "/g/demo/items", quota_key).status_code == 200
    over = proxied(gateway, "/g/demo/items", quota_key)
    assert over.status_code == 429 and over.json()["limit"] == "daily_quota"
    assert httpx.get(gateway.url + "/g/demo/items", timeout=10).status_code == 401
    wait_until(lambda: bool(logged(gateway, request_id=request_id)), 15)
    (row,) = logged(gateway, request_id=request_id)
    key_name = next(
        k["name"] for k in admin.get("/admin/keys").json()["items"] if k["id"] == row["key_id"]
    )
    # A failed sign-in, for the audit page.
    bad = httpx.get(gateway.url + "/admin/tenants", headers={"X-Admin-Key": "wrong"}, timeout=10)
    assert bad.status_code == 401

    context, page, watch = sign_in(browser, gateway)
    try:
        # --- search by request id; the row opens the drawer from the keyboard -------------------
        nav(page, "Logs")
        page.locator("#lf-request-id").fill(request_id)
        page.locator("#search-logs").click()
        result = page.locator("#search-table tbody tr.row-link")
        expect(result).to_have_count(1)
        result.focus()
        page.keyboard.press("Enter")
        drawer = page.locator("#log-drawer[open]")
        drawer.wait_for()
        fields = page.locator("#drawer-fields")

        def field(name: str) -> Any:
            return fields.locator(f'dd[data-field="{name}"]')

        expect(field("Key")).to_contain_text(key_name)  # filled in from the detail endpoint
        expect(field("Request id")).to_contain_text(request_id)
        expect(field("Route")).to_have_text("demo")
        expect(field("Path")).to_have_text("/items")  # the path, without the query
        expect(field("Method")).to_have_text("GET")
        expect(field("Status")).to_have_text("200")
        expect(field("Client IP")).to_have_text("127.0.0.1")
        expect(field("Tenant")).not_to_have_text("\u2013")
        expect(field("Cache outcome")).to_have_text("HIT")
        expect(field("Cache key")).to_have_text(cache_key)
        expect(field("Upstream status")).to_have_text("\u2013")  # a HIT calls no upstream
        # Text, never markup.
        expect(field("User agent")).to_have_text(XSS_AGENT)
        assert page.locator("#log-drawer script, #log-drawer img").count() == 0
        expect(page.locator("#drawer-missing")).to_have_text("")
        if UPDATE_SCREENSHOTS:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "request-detail.png"))
        shot(page, "request-detail")
        # Escape closes it and gives the focus back to the row.
        page.keyboard.press("Escape")
        drawer.wait_for(state="detached")
        assert page.evaluate("document.activeElement.dataset.requestId") == request_id

        # --- a refused request says what refused it ---------------------------------------------
        page.locator("#reset-filters").click()
        page.locator("#lf-status").fill("401")
        page.locator("#search-logs").click()
        refused = page.locator("#search-table tbody tr.row-link").first
        refused.click()
        drawer.wait_for()
        expect(field("Refused by")).to_contain_text("No valid API key")
        page.locator("#drawer-close").click()
        drawer.wait_for(state="detached")
        # A 429 names the limit that refused it, with the numbers the client was given.
        problem = over.json()
        page.locator("#reset-filters").click()
        page.locator("#lf-request-id").fill(over.headers["x-request-id"])
        page.locator("#search-logs").click()
        page.locator("#search-table tbody tr.row-link").first.click()
        drawer.wait_for()
        expect(field("Refused by")).to_contain_text("Daily quota (429): 1 request per day, 0 left")
        expect(field("Refused by")).to_contain_text(problem["reset_at"])
        numbers = field("Limit numbers")
        expect(numbers).to_contain_text("quota=1")
        expect(numbers).to_contain_text(f"retry_after={problem['retry_after']}")
        expect(numbers).to_contain_text(f"window_seconds={problem['window_seconds']}")
        shot(page, "request-detail-429")
        page.locator("#drawer-close").click()
        drawer.wait_for(state="detached")

        # --- search by key name; a rejected filter clears the old results -----------------------
        page.locator("#reset-filters").click()
        page.locator("#lf-key").fill(key_name[:5].upper())
        page.locator("#search-logs").click()
        page.locator("#search-table tbody tr", has_text="/items").first.wait_for()
        watch.expecting_4xx = True
        page.locator("#lf-status").fill("99x")
        page.locator("#search-logs").click()
        page.locator('#log-filters [data-field="status"] .field-error').wait_for()
        expect(page.locator("#search-table tbody tr")).to_have_count(0)
        expect(page.locator("#search-status")).to_have_text("Search failed.")
        watch.expecting_4xx = False

        # --- the audit page: the failed sign-in, with its address --------------------------------
        nav(page, "Audit")
        failure = page.locator("#audit-table tbody tr[data-action='auth.failure']").first
        failure.wait_for()
        expect(failure).to_contain_text("127.0.0.1")
        expect(failure).to_contain_text("unauthenticated")
        # A change made now shows after a refresh of the list, with who made it.
        tenant = admin.post("/admin/tenants", json={"name": f"Audited {suffix}"})
        assert tenant.status_code == 201, tenant.text
        page.locator("#audit-search").click()
        created = page.locator("#audit-table tbody tr[data-action='tenant.create']").first
        expect(created).to_contain_text("admin-key:")
        expect(created).to_contain_text("127.0.0.1")  # where the change came from
        created.locator("summary").click()
        expect(created).to_contain_text(f"Audited {suffix}")
        page.locator("#af-failures").check()
        expect(page.locator("#audit-table tbody tr[data-action='tenant.create']")).to_have_count(0)
        page.locator("#audit-table tbody tr[data-action='auth.failure']").first.wait_for()
        shot(page, "audit")

        # --- keys: a blocked key shows as blocked; an empty tenant offers to create a key -------
        assert admin.post(f"/admin/abuse/block/{key_id}", json={"reason": "ui"}).status_code == 200
        nav(page, "Keys")
        blocked_row = page.locator(f"#keys-table tbody tr[data-id='{key_id}']")
        expect(blocked_row.locator(".badge", has_text="blocked")).to_have_count(1)
        blocked_row.get_by_role("button", name="Unblock").click()
        page.locator("#confirm-ok").click()
        expect(blocked_row.locator(".badge", has_text="blocked")).to_have_count(0)
        expect(blocked_row.get_by_role("button", name="Block")).to_have_count(1)

        page.goto(f"{gateway.url}/ui/keys?tenant={tenant.json()['id']}")
        page.locator("#keys-table .empty-cta", has_text="has no").wait_for()
        page.get_by_role("button", name="Create a key").click()
        page.locator("#key-dialog[open]").wait_for()
        expect(page.locator("#key-tenant_id")).to_have_value(str(tenant.json()["id"]))
    except Exception:
        shot(page, "detail-failure")
        print("console errors:", watch.console_errors, "5xx:", watch.server_errors)
        raise
    finally:
        admin.close()
        context.close()
    assert watch.console_errors == []
    assert watch.server_errors == []


def test_the_dashboard_opens_with_an_hour_of_history(browser: Any, gateway: Gateway) -> None:
    with gateway.admin() as admin:
        key_ids = [k["id"] for k in admin.get("/admin/keys").json()["items"]][:3]
    added = add_an_hour_of_history(gateway, key_ids)
    assert added > 30_000
    # A key refused now (404s from the upstream), for the table of keys refused most.
    for _ in range(3):
        assert proxied(gateway, "/g/demo/status/404", SEEDED_KEYS[1]).status_code == 404

    context, page, watch = sign_in(browser, gateway)
    try:
        # Full on open: the history is there before a single live sample could be.
        expect(page.locator("body")).to_have_attribute("data-history", FULL_HOUR)
        expect(page.locator("#chart-refused canvas")).to_have_count(1)
        page.locator("#refused-table tbody tr").first.wait_for()
        assert page.locator("#refused-table tbody tr").count() >= 1
        with Traffic(gateway, list(SEEDED_KEYS[:3]), seconds=6):
            expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
            expect(page.locator("#kpi-rps")).not_to_have_text("\u2013")
        page.locator("#top-keys table").wait_for()
        path = shot(page, "dashboard-history")
        if UPDATE_SCREENSHOTS:
            shutil.copyfile(path, SCREENSHOTS / "dashboard.png")
    finally:
        context.close()
    assert watch.console_errors == []
    assert watch.server_errors == []

    # --- the same page follows a dark system setting ------------------------------------------
    context, page, watch = sign_in(browser, gateway, color_scheme="dark")
    try:
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(11, 16, 32)", background  # --bg of the dark theme
        text = page.evaluate("getComputedStyle(document.querySelector('h1')).color")
        assert text == "rgb(230, 234, 242)", text
        expect(page.locator("body")).to_have_attribute("data-history", FULL_HOUR)
        shot(page, "dashboard-dark")
        nav(page, "Logs")
        expect(page.locator("#tail-state")).to_have_attribute("data-state", "live")
        shot(page, "logs-dark")
    finally:
        context.close()
    assert watch.console_errors == []
