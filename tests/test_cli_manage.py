"""`heliox tenants`, `heliox routes`, `heliox keys rotate` and `heliox config export/apply`,
in-process on a seeded SQLite database: the admin API's rules, its audit (actor cli:<user>),
the exit statuses the help texts document."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from heliox.cli import EXIT_CHANGES_PENDING, main
from heliox.config import Settings
from heliox.snapshot import hash_key

ACME = "hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def seeded_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A migrated and seeded SQLite database named by DATABASE_URL."""
    from heliox.config import load_settings
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.db.migrate import upgrade_database
    from heliox.seed import seed

    path = tmp_path / "heliox.db"
    url = f"sqlite+aiosqlite:///{path}"
    monkeypatch.setenv("DATABASE_URL", url)

    async def prepare() -> None:
        await upgrade_database(url)
        engine = make_engine(url)
        await seed(make_session_factory(engine), load_settings(deployment_mode="demo"))
        await engine.dispose()

    asyncio.run(prepare())
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def query(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def config_version(path: Path) -> int:
    return int(query(path, "SELECT version FROM config_version")[0][0])


def last_audit(path: Path) -> tuple[Any, ...]:
    return query(path, "SELECT actor, action, entity_type FROM audit_log ORDER BY id DESC")[0]


# --- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (("config", "export"), ("digest", "never the plaintext", "fixed order", "DATABASE_URL")),
        (("config", "apply"), ("--dry-run", "--prune", "one transaction", "exit status",
                               f"{EXIT_CHANGES_PENDING}  --dry-run", "cli:<user>")),
        (("tenants", "delete"), ("every key",)),
        (("routes", "update"), ("none", "--cache-policy", "--upstream")),
        (("keys", "rotate"), ("grace", "KEY_ROTATION_GRACE_SECONDS", "--grace")),
    ],
)  # fmt: skip
def test_help_texts(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], mentions: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for mention in mentions:
        assert " ".join(mention.split()) in text, mention


# --- tenants ------------------------------------------------------------------------------------
def test_tenants_create_list_update_delete(
    capsys: pytest.CaptureFixture[str], seeded_db: Path
) -> None:
    version = config_version(seeded_db)
    status, _, err = run(capsys, "tenants", "create", "Globex", "--description", "labs")
    assert status == 0, err
    assert "created tenant" in err
    assert last_audit(seeded_db)[1:] == ("tenant.create", "tenant")
    assert str(last_audit(seeded_db)[0]).startswith("cli:")
    assert config_version(seeded_db) == version + 1

    status, out, _ = run(capsys, "tenants", "list", "--json")
    assert status == 0
    listed = {t["name"]: t for t in json.loads(out)}
    assert listed["Globex"]["description"] == "labs" and listed["Globex"]["is_active"]
    status, out, _ = run(capsys, "tenants", "list")
    assert out.splitlines()[0].split() == ["ID", "NAME", "ACTIVE", "KEYS", "LIVE", "KEYS", "ABUSE"]
    assert any("Globex" in line for line in out.splitlines())

    status, _, err = run(capsys, "tenants", "update", "globex", "--no-active", "--name", "Initech")
    assert status == 0, err
    assert query(seeded_db, "SELECT is_active FROM tenants WHERE name = 'Initech'") == [(0,)]
    assert last_audit(seeded_db)[1] == "tenant.update"

    # A unique start of a name finds a tenant but is not enough to delete one.
    status, _, err = run(capsys, "tenants", "delete", "Init")
    assert status == 1 and "give its exact name or id" in err
    status, _, err = run(capsys, "tenants", "delete", "Initech")
    assert status == 0, err
    assert query(seeded_db, "SELECT count(*) FROM tenants WHERE name = 'Initech'") == [(0,)]
    assert last_audit(seeded_db)[1] == "tenant.delete"


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (("tenants", "create", "Acme Corporation"), 1, "already exists"),
        (("tenants", "create", "X", "--abuse-mode", "custom"), 1, "needs abuse_zscore_threshold"),
        (("tenants", "create", "X", "--abuse-threshold", "0.5"), 2, "--abuse-threshold:"),
        (("tenants", "create", " "), 2, "NAME:"),
        (("tenants", "update", "Acme"), 2, "nothing to change"),
        (("tenants", "update", "nobody", "--no-active"), 1, "no tenant matches 'nobody'"),
    ],
)
def test_tenants_refuse_what_the_admin_api_refuses(
    capsys: pytest.CaptureFixture[str],
    seeded_db: Path,
    argv: tuple[str, ...],
    status: int,
    says: str,
) -> None:
    before = query(seeded_db, "SELECT * FROM tenants ORDER BY id")
    version = config_version(seeded_db)
    got, _, err = run(capsys, *argv)
    assert got == status and says in err, err
    assert query(seeded_db, "SELECT * FROM tenants ORDER BY id") == before
    assert config_version(seeded_db) == version


# --- routes -------------------------------------------------------------------------------------
def test_routes_create_list_update_delete(
    capsys: pytest.CaptureFixture[str], seeded_db: Path
) -> None:
    status, _, err = run(
        capsys, "routes", "create", "orders", "--upstream", "http://127.0.0.1:9/Base/",
        "--methods", "GET,HEAD", "--cache-policy", "standard", "--rps", "5", "--public",
    )  # fmt: skip
    assert status == 0, err
    assert "/g/orders/... -> http://127.0.0.1:9/Base" in err
    status, out, _ = run(capsys, "routes", "list", "--json")
    route = next(r for r in json.loads(out) if r["name"] == "orders")
    assert route["methods"] == ["GET", "HEAD"] and route["cache_policy"] == "standard"
    assert route["rate_limit_rps"] == 5 and route["is_public"] is True
    status, out, _ = run(capsys, "routes", "list")
    assert any(line.split()[:2] == [str(route["id"]), "orders"] for line in out.splitlines())

    status, _, err = run(
        capsys, "routes", "update", "orders", "--rps", "none", "--cache-policy", "none",
        "--no-public", "--timeout", "2.5",
    )  # fmt: skip
    assert status == 0, err
    assert query(
        seeded_db,
        "SELECT rate_limit_rps, cache_policy_id, is_public, timeout_seconds FROM routes "
        "WHERE name = 'orders'",
    ) == [(None, None, 0, 2.5)]
    assert last_audit(seeded_db)[1:] == ("route.update", "route")

    status, _, err = run(capsys, "routes", "delete", str(route["id"]))
    assert status == 0, err
    assert query(seeded_db, "SELECT count(*) FROM routes WHERE name = 'orders'") == [(0,)]
    assert last_audit(seeded_db)[1] == "route.delete"


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (("routes", "create", "meta", "--upstream", "http://169.254.169.254/"), 1,
         "cloud metadata address"),
        (("routes", "create", "x", "--upstream", "http://a", "--methods", "get"), 2,
         "--methods: 'get' is not an upper-case HTTP method token"),
        (("routes", "create", "x", "--upstream", "http://a", "--cache-policy", "nope"), 1,
         "no cache policy named 'nope'"),
        (("routes", "create", "demo", "--upstream", "http://a"), 1, "already exists"),
        (("routes", "update", "nowhere", "--rps", "1"), 1, "no route named 'nowhere'"),
        (("routes", "update", "demo", "--rps", "0"), 2, "--rps:"),
    ],
)  # fmt: skip
def test_routes_refuse_what_the_admin_api_refuses(
    capsys: pytest.CaptureFixture[str],
    seeded_db: Path,
    argv: tuple[str, ...],
    status: int,
    says: str,
) -> None:
    before = query(seeded_db, "SELECT * FROM routes ORDER BY id")
    got, _, err = run(capsys, *argv)
    assert got == status and says in err, err
    assert query(seeded_db, "SELECT * FROM routes ORDER BY id") == before


# --- keys rotate --------------------------------------------------------------------------------
def test_keys_rotate_prints_the_new_key_once_and_keeps_the_old_for_the_grace(
    capsys: pytest.CaptureFixture[str], seeded_db: Path
) -> None:
    (old_id,) = query(seeded_db, "SELECT id FROM api_keys WHERE key_hash = ?", hash_key(ACME))[0]
    status, out, err = run(capsys, "keys", "rotate", str(old_id), "--grace", "120", "--json")
    assert status == 0, err
    rotated = json.loads(out)
    assert rotated["previous_key"]["id"] == old_id and rotated["name"] == "Acme Production"
    stored = query(seeded_db, "SELECT key_hash, rotated_from_id FROM api_keys WHERE id = ?",
                   rotated["id"])  # fmt: skip
    assert stored == [(hash_key(rotated["key"]), old_id)]
    (expires,) = query(seeded_db, "SELECT expires_at FROM api_keys WHERE id = ?", old_id)[0]
    created = datetime.fromisoformat(rotated["created_at"]).replace(tzinfo=None)
    assert (datetime.fromisoformat(str(expires)).replace(tzinfo=None) - created).seconds == 120
    actions = query(seeded_db, "SELECT action, actor FROM audit_log ORDER BY id DESC LIMIT 2")
    assert {a for a, _ in actions} == {"key.rotate", "key.create"}
    assert all(str(actor).startswith("cli:") for _, actor in actions)

    status, out, err = run(capsys, "keys", "rotate", str(rotated["id"]))
    assert status == 0 and out.strip().startswith("hx_live_") and "works until" in err
    status, _, err = run(capsys, "keys", "revoke", str(old_id))
    status, _, err = run(capsys, "keys", "rotate", str(old_id))
    assert status == 1 and "the key is revoked" in err
    status, _, err = run(capsys, "keys", "rotate", "1", "--grace", "-1")
    assert status == 2 and "--grace:" in err


# --- config export / apply ----------------------------------------------------------------------
def test_config_export_then_apply_is_a_no_op_and_edits_apply_once(
    capsys: pytest.CaptureFixture[str], seeded_db: Path, tmp_path: Path
) -> None:
    status, exported, _ = run(capsys, "config", "export")
    assert status == 0 and ACME not in exported
    out_file = tmp_path / "heliox.yaml"
    status, _, err = run(capsys, "config", "export", "-o", str(out_file))
    assert status == 0 and "3 tenants, 4 keys" in err
    assert out_file.read_text() == exported

    version = config_version(seeded_db)
    status, out, _ = run(capsys, "config", "apply", str(out_file))
    assert (status, out) == (0, "no changes\n")
    status, out, _ = run(capsys, "config", "apply", "--dry-run", str(out_file))
    assert (status, out) == (0, "no changes\n")
    assert config_version(seeded_db) == version

    document = yaml.safe_load(exported)
    document["routes"][0]["timeout_seconds"] = 3.0
    first = document["routes"][0]["name"]
    document["routes"].pop()
    out_file.write_text(yaml.safe_dump(document))
    status, out, err = run(capsys, "config", "apply", "--dry-run", "--prune", str(out_file))
    assert status == EXIT_CHANGES_PENDING, err
    assert f"~ update route {first!r}\n    timeout_seconds: null -> 3.0\n" in out
    assert out.splitlines()[-1] == "0 to create, 1 to update, 1 to delete"
    assert "nothing was changed" in err and config_version(seeded_db) == version

    status, out, err = run(capsys, "config", "apply", str(out_file))
    assert status == 0 and "kept (--prune deletes them" in out and "applied" in err
    assert config_version(seeded_db) == version + 1
    assert last_audit(seeded_db)[1] == "route.update"
    assert str(last_audit(seeded_db)[0]).startswith("cli:")
    status, out, _ = run(capsys, "config", "apply", str(out_file))
    assert status == 0 and out.endswith("no changes\n")


def test_config_apply_refuses_a_bad_file_naming_entity_and_field(
    capsys: pytest.CaptureFixture[str],
    seeded_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, exported, _ = run(capsys, "config", "export")
    document = yaml.safe_load(exported)
    document["routes"][0]["fail_mode"] = "sideways"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    version = config_version(seeded_db)
    status, out, err = run(capsys, "config", "apply", str(bad))
    assert status == 1 and out == ""
    route = document["routes"][0]["name"]
    assert f"route {route!r}: fail_mode: Input should be 'open' or 'closed'" in err
    assert "refused, nothing was changed" in err
    status, _, err = run(capsys, "config", "apply", str(tmp_path / "missing.yaml"))
    assert status == 1 and "cannot read" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("format: heliox/v1\nroutes: {}\n"))
    status, _, err = run(capsys, "config", "apply", "-")
    assert status == 1 and "routes: must be a list" in err and "standard input" in err
    assert config_version(seeded_db) == version
