"""The UI in process: login, the session cookie, CSRF on the admin API, pages, static files."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from http.cookies import SimpleCookie

import httpx
import pytest

from heliox.gateway.app import Gateway
from heliox.ui import auth, views
from tests.ui.conftest import ADMIN_KEY, client_for, csrf_of, sign_in

PAGES = ("dashboard", "tenants", "keys", "routes", "logs", "abuse", "cache", "audit")
NAV_NAMES = ("Dashboard", "Tenants", "Keys", "Routes", "Logs", "Abuse", "Cache", "Audit")


def _cookies(response: httpx.Response, name: str) -> list[dict[str, str | bool]]:
    """Each Set-Cookie header for `name`, its attributes lower-cased."""
    found = []
    for header in response.headers.get_list("set-cookie"):
        jar = SimpleCookie()
        jar.load(header)
        if name in jar:
            morsel = jar[name]
            attrs: dict[str, str | bool] = {"value": morsel.value}
            attrs.update({k: v for k, v in morsel.items() if v})
            found.append(attrs)
    return found


# --- login --------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
async def test_pages_send_a_visitor_without_a_session_to_the_login(
    anon: httpx.AsyncClient, page: str
) -> None:
    answer = await anon.get(f"/ui/{page}")
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/ui/login?next=/ui/{page}"


async def test_login_sets_a_strict_httponly_session_cookie_for_ui_and_admin_only(
    anon: httpx.AsyncClient,
) -> None:
    answer = await sign_in(anon)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/dashboard"
    cookies = _cookies(answer, auth.COOKIE_NAME)
    assert sorted(str(c["path"]) for c in cookies) == ["/admin", "/ui"]
    for cookie in cookies:
        assert cookie["httponly"] is True
        assert str(cookie["samesite"]).lower() == "strict"
        assert "secure" not in cookie  # plain http: a Secure cookie would never come back
        assert int(str(cookie["max-age"])) == 8 * 3600
        # Never for /g/: the gateway forwards request headers to upstreams.
        assert not str(cookie["path"]).startswith("/g")
    assert ADMIN_KEY not in answer.text and all(ADMIN_KEY not in str(c) for c in cookies)


async def test_the_cookie_is_secure_over_https(app: Gateway) -> None:
    async with client_for(app, "https://gateway.test") as client:
        answer = await sign_in(client)
    assert answer.status_code == 303
    cookies = _cookies(answer, auth.COOKIE_NAME)
    assert sorted(str(c["path"]) for c in cookies) == ["/admin", "/ui"]  # both, so none unchecked
    assert all(c.get("secure") is True for c in cookies)


@pytest.mark.parametrize(("peer", "secure"), [("10.1.2.3", True), ("192.0.2.7", False)])
async def test_forwarded_https_counts_only_from_a_trusted_proxy(
    app: Gateway, peer: str, secure: bool
) -> None:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway.test", headers={"X-Forwarded-Proto": "https"}
    ) as client:
        page = await client.get("/ui/login")
        login_cookie = _cookies(page, views.LOGIN_COOKIE)[0]
    assert (login_cookie.get("secure") is True) is secure


async def test_a_wrong_admin_key_gets_no_session(anon: httpx.AsyncClient) -> None:
    answer = await sign_in(anon, "not-the-admin-key")
    assert answer.status_code == 401
    assert "That admin key is not valid." in answer.text
    assert _cookies(answer, auth.COOKIE_NAME) == []


async def test_a_login_without_the_form_token_is_refused(anon: httpx.AsyncClient) -> None:
    await anon.get("/ui/login")
    answer = await anon.post("/ui/login", data={"admin_key": ADMIN_KEY, "login_token": "forged"})
    assert answer.status_code == 400
    assert _cookies(answer, auth.COOKIE_NAME) == []
    # Nor without the form's cookie, even with a token copied from a form.
    fresh = client_for_no_cookies(anon)
    async with fresh:
        page = await anon.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        answer = await fresh.post(
            "/ui/login", data={"admin_key": ADMIN_KEY, "login_token": token.group(1)}
        )
    assert answer.status_code == 400


def client_for_no_cookies(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=client._transport, base_url=client.base_url)


@pytest.mark.parametrize(
    ("next_path", "target"),
    [
        ("/ui/keys?tenant=2", "/ui/keys?tenant=2"),
        ("https://evil.example/", "/ui/dashboard"),
        ("//evil.example/ui/keys", "/ui/dashboard"),
        ("/ui//evil.example", "/ui/dashboard"),
        ("/admin/tenants", "/ui/dashboard"),
        ("/ui/login", "/ui/dashboard"),
    ],
)
async def test_login_returns_only_to_a_ui_page(
    anon: httpx.AsyncClient, next_path: str, target: str
) -> None:
    page = await anon.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    answer = await anon.post(
        "/ui/login",
        data={"admin_key": ADMIN_KEY, "login_token": token.group(1), "next": next_path},
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == target


async def test_templates_escape_what_they_are_given(app: Gateway) -> None:
    env = views._environment()
    html = env.get_template("login.html").render(
        title="Sign in", login_token="t", next_path="", error="<img src=x onerror=alert(1)>"
    )
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


# --- pages --------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
async def test_pages_render_with_a_strict_policy_and_the_navigation(
    signed_in: httpx.AsyncClient, page: str
) -> None:
    answer = await signed_in.get(f"/ui/{page}")
    assert answer.status_code == 200
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    for name in NAV_NAMES:
        assert re.search(
            rf'<a href="/ui/{name.lower()}"[^>]*>\s*<svg[^>]*>.*?</svg><span>{name}</span>',
            answer.text,
            re.S,
        )
    assert f'<a href="/ui/{page}" aria-current="page">' in answer.text
    # No inline script: only JSON data and files from this origin.
    for tag in re.findall(r"<script[^>]*>", answer.text):
        assert 'type="application/json"' in tag or re.search(r'src="/ui/static/', tag)


async def test_optional_sections_say_when_the_gateway_lacks_them(
    signed_in: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        views, "features", lambda app: dict.fromkeys(views.OPTIONAL_ENDPOINTS, False)
    )
    for page, text in (
        ("logs", "Request logs not available."),
        ("abuse", "Blocked keys not available."),
        ("cache", "Cache purge not available."),
        ("audit", "The audit log not available."),
    ):
        answer = await signed_in.get(f"/ui/{page}")
        assert answer.status_code == 200
        assert text in answer.text


def test_every_optional_endpoint_is_served_by_this_gateway(app: Gateway) -> None:
    assert views.features(app.fallback) == dict.fromkeys(views.OPTIONAL_ENDPOINTS, True)


async def test_static_files_are_served_with_nosniff_and_nothing_else(
    anon: httpx.AsyncClient,
) -> None:
    css = await anon.get("/ui/static/app.css")
    assert css.status_code == 200
    assert css.headers["x-content-type-options"] == "nosniff"
    assert (await anon.get("/ui/static/vendor/uplot/LICENSE")).status_code == 200
    assert (await anon.get("/ui/static/../views.py")).status_code == 404
    assert (await anon.get("/ui/static/%2e%2e/views.py")).status_code == 404


# --- the admin API with the session cookie ------------------------------------------------------
async def test_the_session_reads_the_admin_api_but_writes_need_the_csrf_token(
    app: Gateway, signed_in: httpx.AsyncClient
) -> None:
    csrf = csrf_of((await signed_in.get("/ui/tenants")).text)
    assert (await signed_in.get("/admin/tenants")).status_code == 200

    body = {"name": "Made in the UI"}
    missing = await signed_in.post("/admin/tenants", json=body)
    assert missing.status_code == 403
    assert "CSRF" in missing.json()["detail"]
    wrong = await signed_in.post("/admin/tenants", json=body, headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    made = await signed_in.post("/admin/tenants", json=body, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201
    tid = made.json()["id"]
    for method in ("PATCH", "DELETE"):
        refused = await signed_in.request(method, f"/admin/tenants/{tid}", json={"name": "y"})
        assert refused.status_code == 403
    audit = (await signed_in.get("/admin/audit", params={"entity_type": "tenant"})).json()
    assert audit["items"][0]["actor"] == auth.ui_actor(app.runtime.settings)


async def test_a_tampered_session_cookie_is_no_session(app: Gateway) -> None:
    async with client_for(app) as client:
        await sign_in(client)
        token = next(c.value for c in client.cookies.jar if c.name == auth.COOKIE_NAME)
        assert token is not None
        client.cookies.clear()
        head, payload, sig = token.split(".")
        forged = f"{head}.{payload[:-2]}AA.{sig}"
        for path in ("/ui", "/admin"):
            client.cookies.set(auth.COOKIE_NAME, forged, domain="gateway.test", path=path)
        assert (await client.get("/admin/tenants")).status_code == 401
        assert (await client.get("/ui/dashboard")).status_code == 303


async def test_the_admin_key_header_still_works_without_csrf(anon: httpx.AsyncClient) -> None:
    answer = await anon.post(
        "/admin/tenants", json={"name": "By header"}, headers={"X-Admin-Key": ADMIN_KEY}
    )
    assert answer.status_code == 201


# --- logout -------------------------------------------------------------------------------------
async def test_logout_needs_the_csrf_token_then_clears_both_cookies(
    signed_in: httpx.AsyncClient,
) -> None:
    csrf = csrf_of((await signed_in.get("/ui/dashboard")).text)
    refused = await signed_in.post("/ui/logout", data={"csrf_token": "wrong"})
    assert refused.status_code == 403
    assert (await signed_in.get("/ui/dashboard")).status_code == 200

    answer = await signed_in.post("/ui/logout", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login"
    cleared = _cookies(answer, auth.COOKIE_NAME)
    assert sorted(str(c["path"]) for c in cleared) == ["/admin", "/ui"]
    assert all(c["value"] == "" and str(c["max-age"]) == "0" for c in cleared)
    assert (await signed_in.get("/ui/dashboard")).status_code == 303
    assert (await signed_in.get("/admin/tenants")).status_code == 401


class _Controls(HTMLParser):
    """Form controls, labels and ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: dict[str, str] = {}
        self.ids: list[str] = []
        self._label: str | None = None
        self._label_text: list[str] = []
        self._wrapped = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "label":
            self._label, self._label_text = a.get("for"), []
            self._wrapped += 1
        elif tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append({**a, "wrapped": "1" if self._wrapped else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            if self._label:
                self.label_for[self._label] = "".join(self._label_text).strip()
            self._label = None
            self._wrapped -= 1

    def handle_data(self, data: str) -> None:
        if self._wrapped:
            self._label_text.append(data)


@pytest.mark.parametrize("page", PAGES)
async def test_every_form_control_has_a_readable_label(
    signed_in: httpx.AsyncClient, page: str
) -> None:
    parsed = _Controls()
    parsed.feed((await signed_in.get(f"/ui/{page}")).text)
    assert len(parsed.ids) == len(set(parsed.ids)), "duplicate ids"
    for control in parsed.controls:
        if control.get("hidden") is not None or control.get("wrapped"):
            continue
        cid = control.get("id")
        assert cid and cid in parsed.label_for, f"{control} has no label"
        text = parsed.label_for[cid]
        assert text and not text.startswith(("[", "(")), f"label of {cid}: {text!r}"
