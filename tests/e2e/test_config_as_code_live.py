"""`heliox config export` / `heliox config apply` against a running gateway on PostgreSQL + Redis:
what the file adds (a route, a tenant, a key known only by its digest) is served without a
restart, the key's holder is let in with the plaintext the database never saw, and applying the
same file again changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from heliox.snapshot import hash_key
from tests.e2e.harness import Gateway, wait_until

# A key minted elsewhere (another instance, a secrets manager): only its digest travels.
PLAINTEXT = "hx_live_MovedFromAnotherInstance2345"


def heliox(gw: Gateway, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in gw.env.items() if k not in ("ADMIN_API_KEY", "SECRET_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "heliox", *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _status(gw: Gateway, key: str | None) -> int:
    headers = {"X-API-Key": key} if key else {}
    return httpx.get(f"{gw.url}/g/as-code/items", headers=headers, timeout=10).status_code


def test_apply_reaches_the_running_gateway_and_is_idempotent(
    pg_gateway: Gateway, workdir: Path
) -> None:
    exported = heliox(pg_gateway, workdir, "config", "export")
    assert exported.returncode == 0, exported.stderr
    document = yaml.safe_load(exported.stdout)
    document["routes"].append(
        {"name": "as-code", "upstream_url": pg_gateway.env["EXAMPLE_UPSTREAM_URL"]}
    )
    document["tenants"].append(
        {
            "name": "As Code Ltd",
            "keys": [
                {
                    "name": "moved",
                    "prefix": PLAINTEXT[:12],
                    "digest": "sha256:" + hash_key(PLAINTEXT),
                }
            ],
        }
    )
    path = workdir / "as-code.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert _status(pg_gateway, PLAINTEXT) == 404

    applied = heliox(pg_gateway, workdir, "config", "apply", str(path))
    assert applied.returncode == 0, applied.stderr
    assert "+ create route 'as-code'" in applied.stdout
    assert "+ create key 'moved' (hx_live_Move…) of tenant 'As Code Ltd'" in applied.stdout
    wait_until(lambda: _status(pg_gateway, PLAINTEXT) == 200, timeout=10)
    assert _status(pg_gateway, None) == 401
    assert _status(pg_gateway, "hx_live_NotTheKeyAtAll23456789abcd") == 401

    again = heliox(pg_gateway, workdir, "config", "apply", str(path))
    assert (again.returncode, again.stdout) == (0, "no changes\n"), again.stderr
    with pg_gateway.admin() as admin:
        audit = admin.get("/admin/audit", params={"action": "key.create"}).json()["items"]
    made = [row for row in audit if row["after"].get("from_digest")]
    assert len(made) == 1 and made[0]["actor"].startswith("cli:")
    assert made[0]["after"]["key_prefix"] == PLAINTEXT[:12]
