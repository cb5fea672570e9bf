"""The real application (create_app) in process, on a SQLite file, with a signed-in client."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from heliox.config import Settings, load_settings
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database
from heliox.gateway.app import Gateway
from heliox.main import create_app
from heliox.seed import seed
from heliox.ui.streams import StreamTiming
from heliox.ui.views import UiState

ADMIN_KEY = "ui-test-admin-key-0123456789"
SECRET = "ui-test-secret-key-0123456789"
BASE_URL = "http://gateway.test"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}",
        admin_api_key=ADMIN_KEY,
        secret_key=SECRET,
        auto_seed=True,
        background_jobs=False,
        **overrides,
    )


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated and seeded SQLite file; each test gets a copy (migrating per test is slow)."""
    folder = tmp_path_factory.mktemp("ui-db")
    settings = make_settings(folder)

    async def prepare() -> None:
        await upgrade_database(settings.effective_database_url)
        engine = make_engine(settings.effective_database_url)
        try:
            await seed(make_session_factory(engine), settings)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    return folder / "heliox.db"


@pytest.fixture
async def app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seeded_template: Path
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("HELIOX_SPILL_DIR", str(tmp_path / "spill"))
    shutil.copyfile(seeded_template, tmp_path / "heliox.db")
    gateway = create_app(make_settings(tmp_path, trusted_proxies="10.0.0.0/8"))
    # Streams end quickly here, so a test reads a whole one.
    ui_state(gateway).timing = StreamTiming(
        lifetime=1.0, sample_interval=0.1, log_poll_interval=0.1, keepalive=0.5, top_interval=0.5
    )
    ui_state(gateway).feed.timing = ui_state(gateway).timing
    await gateway.runtime.start()
    try:
        yield gateway
    finally:
        await gateway.runtime.stop()


def ui_state(gateway: Gateway) -> UiState:
    state: UiState = gateway.fallback.state.ui  # type: ignore[attr-defined]
    return state


def client_for(gateway: Gateway, base_url: str = BASE_URL) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def anon(app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, admin_key: str = ADMIN_KEY) -> httpx.Response:
    page = await client.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    return await client.post(
        "/ui/login",
        data={"admin_key": admin_key, "login_token": token.group(1), "next": ""},
    )


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert match is not None
    return match.group(1)


@pytest.fixture
async def signed_in(app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        answer = await sign_in(client)
        assert answer.status_code == 303
        yield client
