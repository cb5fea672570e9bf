"""The admin UI in a real browser against a real gateway process (Playwright + Debian's Chromium).

One operator's session, start to finish: sign in, create a tenant and a key, use the key through
/g/, watch the request arrive in the live log, edit a route's cache policy (and see a validation
error beside its field), purge, block and unblock the key, sign out. Every page is screenshotted
to test-artifacts/ui/.

Skips when playwright or /usr/bin/chromium is missing (fails instead under
HELIOX_REQUIRE_SERVICES=1). Install: `pip install -e '.[dev]'` (playwright) and
`apt-get install -y chromium`; never `playwright install`.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.harness import (
    ADMIN_KEY,
    SEEDED_KEYS,
    Gateway,
    Upstream,
    gateway_env,
    start_gateway,
    wait_until,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
XSS_PATH = "/<img src=x onerror=alert(1)>"
XSS_AGENT = "<script>alert('ua')</script>"
REQUIRE = os.environ.get("HELIOX_REQUIRE_SERVICES", "") not in ("", "0", "false")
TIMEOUT_MS = 15_000


def _missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what}; HELIOX_REQUIRE_SERVICES is set, so this is a failure", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    expect.set_options(timeout=TIMEOUT_MS)
    return sync_playwright


def expect(locator: Any) -> Any:
    """Playwright's `expect` (it polls without eval, which the UI's CSP forbids)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture(scope="module")
def browser(sync_playwright: Any) -> Iterator[Any]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    folder = workdir / "gateway"
    folder.mkdir()
    gw = start_gateway(folder, gateway_env(upstream))
    try:
        yield gw
    finally:
        gw.proc.stop()


@dataclass
class Watch:
    """What the browser reported: console errors, failed pages, 5xx answers, dialogs."""

    console_errors: list[str] = field(default_factory=list)
    expected_errors: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    expecting_4xx: bool = False

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"page error: {exc}"))
        page.on("response", self._response)
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        text = f"{message.text} ({message.location.get('url', '')})"
        # A form's expected 422 is also reported by the browser as a failed resource load.
        if self.expecting_4xx and "status of 422" in message.text:
            self.expected_errors.append(text)
        else:
            self.console_errors.append(text)

    def _response(self, response: Any) -> None:
        if response.status >= 500:
            self.server_errors.append(f"{response.status} {response.url}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")  # the sidebar is sticky: shoot from the top
    page.screenshot(path=str(path), full_page=True)
    return path


def at(path: str) -> re.Pattern[str]:
    """The page at exactly `path` (a glob would also match `?next=` + path)."""
    return re.compile(rf"^https?://[^/]+{re.escape(path)}$")


def nav(page: Any, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    page.wait_for_url(at(f"/ui/{name.lower()}"))


def proxied(gw: Gateway, path: str, key: str, **headers: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers={"X-API-Key": key, **headers}, timeout=10)


class Traffic:
    """Requests from a few keys over several routes, in a background thread, for `seconds`."""

    PATHS = ("/g/demo/items", "/g/products/items", "/g/demo/items/1", "/g/inventory/items",
             "/g/reports/items", "/g/demo/missing/1")  # fmt: skip

    def __init__(self, gw: Gateway, keys: list[str], *, seconds: float) -> None:
        self.gw, self.keys, self.seconds = gw, keys, seconds
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(self.seconds + 10)

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        with httpx.Client(base_url=self.gw.url, timeout=5) as client:
            while time.monotonic() < end:
                # A slow wave, so the charts show some shape; no sleeps are waited on by asserts.
                phase = (end - time.monotonic()) % 6
                for path in self.PATHS[: 2 + int(phase)]:
                    key = self.keys[self.sent % len(self.keys)]
                    client.get(path, headers={"X-API-Key": key})
                    self.sent += 1
                time.sleep(0.05)


def test_an_operator_session_from_sign_in_to_sign_out(browser: Any, gateway: Gateway) -> None:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        permissions=["clipboard-read", "clipboard-write"],
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    admin = gateway.admin()
    suffix = uuid.uuid4().hex[:6]
    tenant_name = f"Browser Tenant {suffix}"
    key_name = f"browser-key-{suffix}"
    try:
        # --- sign in, with the keyboard -------------------------------------------------------
        page.goto(gateway.url + "/ui/")
        page.wait_for_url(at("/ui/login?next=/ui/dashboard"))
        shot(page, "login")
        page.locator("#admin_key").fill(ADMIN_KEY)
        page.keyboard.press("Enter")
        page.wait_for_url(at("/ui/dashboard"))
        cookies = {c["path"]: c for c in context.cookies() if c["name"] == "heliox_session"}
        assert set(cookies) == {"/ui", "/admin"}
        assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies.values())
        assert page.evaluate("JSON.stringify(localStorage)") == "{}"
        assert ADMIN_KEY not in page.content()

        # --- a tenant, created from the keyboard ----------------------------------------------
        nav(page, "Tenants")
        page.locator("#new-tenant").click()
        page.locator("#tenant-name").wait_for()
        assert page.evaluate("document.activeElement.id") == "tenant-name"
        page.keyboard.type(tenant_name)
        page.keyboard.press("Enter")
        page.locator("#tenants-table tbody tr", has_text=tenant_name).wait_for()
        shot(page, "tenants")

        # --- a key: shown once, copied ---------------------------------------------------------
        nav(page, "Keys")
        page.locator("#filter-tenant option", has_text=tenant_name).wait_for(state="attached")
        page.locator("#new-key").click()
        page.locator("#key-tenant_id").select_option(label=tenant_name)
        page.locator("#key-name").fill(key_name)
        page.locator("#key-daily_quota").fill("1000")
        page.locator("#key-save").click()
        page.locator("#secret-dialog[open]").wait_for()
        key = page.locator("#secret-value").inner_text().strip()
        assert re.fullmatch(r"\S{20,}", key), key
        page.locator("#secret-copy").click()
        expect(page.locator("#secret-copy")).not_to_have_text("Copy")
        assert page.evaluate("navigator.clipboard.readText()") == key
        shot(page, "keys-new-key")
        page.locator("#secret-done").click()
        # Gone from the page once the dialog closes.
        expect(page.locator("#secret-value")).to_have_text("")
        row = page.locator("#keys-table tbody tr", has_text=key_name)
        row.wait_for()
        assert key not in page.content()

        # --- the key works through /g/ --------------------------------------------------------
        assert proxied(gateway, "/g/demo/items", key).status_code == 200
        row.locator(".quota[data-quota=daily]").wait_for()
        shot(page, "keys")

        # --- the live log shows it, as text ---------------------------------------------------
        nav(page, "Logs")
        page.locator("#tail-table tbody tr", has_text="/items").first.wait_for()  # backfill
        expect(page.locator("#tail-state")).to_have_attribute("data-state", "live")
        answer = proxied(gateway, "/g/demo" + XSS_PATH, key, **{"User-Agent": XSS_AGENT})
        assert answer.status_code < 500
        xss_row = page.locator("#tail-table tbody tr", has_text="onerror=alert(1)")
        xss_row.wait_for()
        assert xss_row.locator("td.path").inner_text() == XSS_PATH
        assert xss_row.locator("td").last.inner_text() == XSS_AGENT
        assert page.locator("#tail-table img, #tail-table script").count() == 0

        # pause holds new rows back; resume shows them
        page.locator("#tail-toggle").click()
        assert page.locator("#tail-toggle").get_attribute("aria-pressed") == "true"
        proxied(gateway, "/g/demo/while-paused", key)
        expect(page.locator("#tail-status")).to_contain_text("1 new")
        assert page.locator("#tail-table tbody tr", has_text="while-paused").count() == 0
        page.locator("#tail-toggle").click()
        page.locator("#tail-table tbody tr", has_text="while-paused").wait_for()
        shot(page, "logs")

        # search over stored logs
        page.locator("#lf-path").fill("/while")
        page.locator("#search-logs").click()
        page.locator("#search-table tbody tr", has_text="while-paused").wait_for()
        assert page.locator("#search-table tbody tr").count() == 1
        shot(page, "logs-search")

        # --- routes: a route's cache policy, a policy's TTL, errors beside the field ------------
        nav(page, "Routes")
        demo = page.locator("#routes-table tbody tr[data-name=demo]")
        demo.get_by_role("button", name="Edit").click()
        policy_value = page.locator("#route-cache_policy_id option", has_text="standard")
        page.locator("#route-cache_policy_id").select_option(policy_value.get_attribute("value"))
        page.locator("#route-save").click()
        demo.locator(".policy-cell", has_text="standard").wait_for()
        routes = admin.get("/admin/routes").json()["items"]
        assert next(r for r in routes if r["name"] == "demo")["cache_policy"] == "standard"

        standard = page.locator("#policies-table tbody tr[data-name=standard]")
        standard.get_by_role("button", name="Edit").click()
        page.locator("#policy-ttl_seconds").fill("45")
        page.locator("#policy-save").click()
        standard.locator(".ttl-cell", has_text="45 s").wait_for()

        # the cache engine fields: shown with the stored values, submitted as numbers; the lock
        # pair is empty while the policy leaves it to the gateway (null)
        standard.get_by_role("button", name="Edit").click()
        page.locator("#policy-dialog[open]").wait_for()
        engine_fields = ("keep_seconds", "max_variants", "lock_timeout_seconds", "lock_age_seconds")
        shown = {f: page.locator(f"#policy-{f}").input_value() for f in engine_fields}
        assert shown == {
            "keep_seconds": "600",
            "max_variants": "8",
            "lock_timeout_seconds": "",
            "lock_age_seconds": "",
        }
        lock_settings = {
            "lock_timeout_seconds": "CACHE_LOCK_TIMEOUT",
            "lock_age_seconds": "CACHE_LOCK_AGE",
        }
        for f, setting in lock_settings.items():
            hint = page.locator(f"#policy-{f}-hint").inner_text()
            assert f"Empty: the gateway default ({setting}, 5 s)." in hint, hint
        edited = {
            "keep_seconds": "7200",
            "max_variants": "3",
            "lock_timeout_seconds": "0.5",
            "lock_age_seconds": "2.5",
        }
        for f, value in edited.items():
            page.locator(f"#policy-{f}").fill(value)
        page.locator("#policy-save").click()
        page.locator("#policy-dialog[open]").wait_for(state="detached")

        def engine_values() -> dict[str, Any]:
            items = admin.get("/admin/policies").json()["items"]
            policy = next(p for p in items if p["name"] == "standard")
            return {f: policy[f] for f in engine_fields}

        wanted: dict[str, float | None] = {
            "keep_seconds": 7200,
            "max_variants": 3,
            "lock_timeout_seconds": 0.5,
            "lock_age_seconds": 2.5,
        }
        wait_until(lambda: engine_values() == wanted, timeout=10)
        standard.get_by_role("button", name="Edit").click()
        page.locator("#policy-dialog[open]").wait_for()
        assert {f: page.locator(f"#policy-{f}").input_value() for f in engine_fields} == edited

        # emptied, the lock pair goes back to the gateway's settings: null, not 5
        for f in lock_settings:
            page.locator(f"#policy-{f}").fill("")
        page.locator("#policy-save").click()
        page.locator("#policy-dialog[open]").wait_for(state="detached")
        wanted = {**wanted, "lock_timeout_seconds": None, "lock_age_seconds": None}
        wait_until(lambda: engine_values() == wanted, timeout=10)
        standard.get_by_role("button", name="Edit").click()
        page.locator("#policy-dialog[open]").wait_for()
        assert {f: page.locator(f"#policy-{f}").input_value() for f in engine_fields} == {
            **edited,
            "lock_timeout_seconds": "",
            "lock_age_seconds": "",
        }
        page.locator("#policy-dialog").get_by_role("button", name="Cancel").click()

        # a new policy starts with the lock pair empty (after a policy that had numbers) and is
        # created with null
        standard.get_by_role("button", name="Edit").click()
        page.locator("#policy-dialog[open]").wait_for()
        page.locator("#policy-lock_timeout_seconds").fill("0.75")
        page.locator("#policy-dialog").get_by_role("button", name="Cancel").click()
        page.locator("#new-policy").click()
        page.locator("#policy-dialog[open]").wait_for()
        assert [page.locator(f"#policy-{f}").input_value() for f in lock_settings] == ["", ""]
        new_policy = f"browser-policy-{suffix}"
        page.locator("#policy-name").fill(new_policy)
        page.locator("#policy-save").click()
        page.locator("#policy-dialog[open]").wait_for(state="detached")

        def created() -> dict[str, Any] | None:
            items = admin.get("/admin/policies", params={"limit": 500}).json()["items"]
            return next((p for p in items if p["name"] == new_policy), None)

        wait_until(lambda: created() is not None, timeout=10)
        made = created()
        assert made is not None
        assert (made["lock_timeout_seconds"], made["lock_age_seconds"]) == (None, None)
        assert admin.delete(f"/admin/policies/{made['id']}").status_code == 204

        watch.expecting_4xx = True
        standard.get_by_role("button", name="Edit").click()
        page.locator("#policy-cacheable_statuses").fill("200, abc")
        page.locator("#policy-max_variants").fill("0")
        page.locator("#policy-save").click()
        error = page.locator('#policy-form [data-field="cacheable_statuses"] .field-error')
        error.wait_for()
        assert page.locator("#policy-cacheable_statuses").get_attribute("aria-invalid") == "true"
        variants_error = page.locator('#policy-form [data-field="max_variants"] .field-error')
        variants_error.wait_for()
        assert "1" in variants_error.inner_text()
        assert page.locator("#policy-dialog[open]").count() == 1
        shot(page, "routes-validation")
        page.locator("#policy-dialog").get_by_role("button", name="Cancel").click()

        demo.get_by_role("button", name="Edit").click()
        page.locator("#route-upstream_url").fill("file:///etc/passwd")
        page.locator("#route-save").click()
        upstream_error = page.locator('#route-form [data-field="upstream_url"] .field-error')
        upstream_error.wait_for()
        assert "http" in upstream_error.inner_text()
        page.locator("#route-dialog").get_by_role("button", name="Cancel").click()
        watch.expecting_4xx = False
        assert watch.expected_errors, "the 422s were expected to reach the browser"
        shot(page, "routes")

        # --- purge: a route's cache from its row, confirmed from the keyboard ---------------------
        proxied(gateway, "/g/demo/items", key)
        assert proxied(gateway, "/g/demo/items", key).headers.get("x-cache") == "HIT"
        demo.get_by_role("button", name="Purge", exact=True).click()
        page.locator("#confirm-dialog[open]").wait_for()
        page.keyboard.press("Tab")  # from Cancel (focused first, the safe default) to Purge
        page.keyboard.press("Enter")
        page.locator(".toast", has_text=re.compile(r"Purged [1-9]\d* entr")).wait_for()
        assert proxied(gateway, "/g/demo/items", key).headers.get("x-cache") != "HIT"

        nav(page, "Cache")
        page.locator("#hit-table tbody tr[data-route=demo]").wait_for()
        page.locator("#pp-route").select_option("demo")
        page.locator("#pp-prefix").fill("/items")
        page.locator("#purge-prefix button[type=submit]").click()
        page.locator("#confirm-ok").click()
        # The outcome shows under the button that asked for it.
        page.locator("#purge-prefix .purge-outcome", has_text="Purged").wait_for()
        shot(page, "cache")

        # --- abuse: block the key, see it blocked, unblock it -----------------------------------
        nav(page, "Keys")
        row = page.locator("#keys-table tbody tr", has_text=key_name)
        row.get_by_role("button", name="Block").click()
        page.locator("#block-reason").fill("browser test")
        page.locator("#block-confirm").click()
        page.locator(".toast", has_text="Blocked").wait_for()
        wait_until(lambda: proxied(gateway, "/g/demo/items", key).status_code == 429, 10)

        nav(page, "Abuse")
        blocked = page.locator("#blocked-table tbody tr", has_text=key_name)
        blocked.wait_for()
        assert "browser test" in blocked.inner_text()
        page.locator("#events-table tbody tr", has_text="browser test").first.wait_for()
        shot(page, "abuse")
        blocked.get_by_role("button", name="Unblock").click()
        page.locator("#confirm-ok").click()
        page.locator("#blocked-table tbody", has_text="No key is blocked.").wait_for()
        wait_until(lambda: proxied(gateway, "/g/demo/items", key).status_code == 200, 10)

        # --- keys: edit limits, rotate (the new key shown once), revoke the old one --------------
        nav(page, "Keys")
        old_id = next(
            k["id"] for k in admin.get("/admin/keys").json()["items"] if k["name"] == key_name
        )
        old_row = page.locator(f"#keys-table tbody tr[data-id='{old_id}']")
        old_row.get_by_role("button", name="Edit").click()
        page.locator("#key-rate_limit_rps").fill("50")
        page.locator("#key-rate_limit_burst").fill("100")
        page.locator("#key-monthly_quota").fill("5000")
        page.locator("#key-save").click()
        old_row.get_by_text("50 req/s").wait_for()
        old_row.locator(".quota[data-quota=monthly]").wait_for()

        old_row.get_by_role("button", name="Rotate").click()
        expect(page.locator("#rotate-grace_seconds")).to_have_value("3600")
        page.locator("#rotate-confirm").click()
        page.locator("#secret-dialog[open]").wait_for()
        new_key = page.locator("#secret-value").inner_text().strip()
        assert new_key and new_key != key
        page.locator("#secret-done").click()
        old_row.get_by_text("expiring").wait_for()
        assert proxied(gateway, "/g/demo/items", new_key).status_code == 200
        assert proxied(gateway, "/g/demo/items", key).status_code == 200  # within its grace

        old_row.get_by_role("button", name="Revoke").click()
        page.locator("#confirm-ok").click()
        old_row.wait_for(state="detached")
        wait_until(lambda: proxied(gateway, "/g/demo/items", key).status_code == 401, 10)
        assert proxied(gateway, "/g/demo/items", new_key).status_code == 200
        key = new_key

        # --- the dashboard, for the README: a little traffic while it draws ----------------------
        nav(page, "Dashboard")
        with Traffic(gateway, [key, *SEEDED_KEYS[:3]], seconds=8):
            page.locator("#top-keys table", has_text=key_name).wait_for()
        expect(page.locator("#kpi-rps")).not_to_have_text("\u2013")
        # The cluster figures refresh every few seconds: wait for the ones that include the wave.
        page.locator("#top-keys table", has_text="Acme Production").wait_for()
        page.locator("#top-routes table", has_text="products").wait_for()
        expect(page.locator("#chart-rps canvas")).to_have_count(1)
        # The README's dashboard picture (with an hour of history) is taken by
        # test_ui_detail_browser.py.
        shot(page, "dashboard")

        # --- a narrow screen ---------------------------------------------------------------------
        page.set_viewport_size({"width": 390, "height": 844})
        for name in ("dashboard", "keys", "logs", "routes"):
            page.goto(f"{gateway.url}/ui/{name}")
            page.get_by_role("link", name="Cache", exact=True).wait_for()
            if name == "dashboard":
                page.locator("#top-keys table").wait_for()
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, f"{name} scrolls sideways on a narrow screen"
            shot(page, f"narrow-{name}")
        page.set_viewport_size({"width": 1280, "height": 900})

        # --- sign out -----------------------------------------------------------------------------
        page.goto(gateway.url + "/ui/keys")
        page.locator("#logout").click()
        page.wait_for_url(at("/ui/login"))
        page.goto(gateway.url + "/ui/keys")
        page.wait_for_url(at("/ui/login?next=/ui/keys"))
        assert page.request.get(gateway.url + "/admin/tenants").status == 401
    except Exception:
        # What the page looked like when the flow broke, and what the browser said.
        shot(page, "failure")
        print("console errors:", watch.console_errors, "5xx:", watch.server_errors)
        raise
    finally:
        admin.close()
        context.close()
    assert watch.console_errors == []
    assert watch.server_errors == []
    assert watch.dialogs == []


def test_the_admin_api_docs_work_with_no_network_but_the_gateway(
    browser: Any, gateway: Gateway
) -> None:
    """/admin/docs in the browser with every request to another origin blocked: Swagger UI
    (vendored) renders every operation of the document and the Authorize button of the
    X-Admin-Key scheme, and the page asks nothing of any other host."""
    local = urlsplit(gateway.url).netloc
    elsewhere: list[str] = []

    def only_the_gateway(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc == local:
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    context = browser.new_context(extra_http_headers={"X-Admin-Key": ADMIN_KEY})
    context.set_default_timeout(TIMEOUT_MS)
    context.route("**/*", only_the_gateway)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    try:
        page.goto(gateway.url + "/admin/docs")
        page.locator(".swagger-ui .opblock").first.wait_for()
        operations = page.locator(".swagger-ui .opblock").count()
        expect(page.locator(".swagger-ui button.authorize")).to_be_visible()
        shot(page, "admin-docs")
    finally:
        context.close()
    document = httpx.get(
        gateway.url + "/admin/openapi.json", headers={"X-Admin-Key": ADMIN_KEY}, timeout=10
    ).json()
    assert operations == sum(len(item) for item in document["paths"].values())
    assert elsewhere == []
    assert watch.console_errors == []
    assert watch.server_errors == []


def test_open_streams_do_not_keep_a_stopping_gateway_alive(gateway: Gateway) -> None:
    """A dashboard left open must not hold up shutdown: streams end within their lifetime.

    Last in this module: it stops the module's gateway.
    """
    with gateway.client(follow_redirects=False) as client:
        page = client.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        login = client.post(
            "/ui/login", data={"admin_key": ADMIN_KEY, "login_token": token.group(1)}
        )
        assert login.status_code == 303
        opened = threading.Event()
        ended: list[str] = []

        def listen() -> None:
            try:
                with client.stream("GET", "/ui/stream/dashboard", timeout=60) as stream:
                    for _ in stream.iter_bytes():
                        opened.set()
                ended.append("closed")
            except httpx.HTTPError as exc:
                ended.append(type(exc).__name__)

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert opened.wait(15), "the stream sent nothing"
        # Stop's own deadline (15 s, then SIGKILL) is the bound: a clean exit is the check.
        code = gateway.proc.stop(sig=signal.SIGTERM, timeout=15)
        assert code == 0, f"the gateway did not exit by itself (exit code {code})"
        reader.join(5)
        assert ended, "the stream was still open after the gateway stopped"
