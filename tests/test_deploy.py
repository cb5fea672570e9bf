"""The deployment artefacts: Kubernetes manifests, systemd units, the production compose file.

None of them runs here (no cluster, no systemd as PID 1, no Docker engine), so each is checked for
what would break it: the YAML parses, every variable it sets is a Heliox setting and every value
is one the gateway accepts, names and ports refer to things that exist, the shutdown budgets cover
the gateway's drain, nothing publishes PostgreSQL or Redis or seeds the demo's public keys, and
`systemd-analyze verify` accepts the units. tests/e2e/test_deploy_config.py runs a gateway with
the manifests' settings.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from heliox.cli import STOP_GRACE_SECONDS
from heliox.config import ConfigError, Settings, load_settings
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database_sync
from heliox.seed import KEYS as SEEDED_KEYS
from heliox.seed import seed
from tests.conftest import fresh_pg_database

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = ROOT / "infra" / "docker-compose.yml"
REQUIRE_SERVICES = os.environ.get("HELIOX_REQUIRE_SERVICES", "") not in ("", "0", "false")

# Read by the gateway where it is used rather than through Settings (see config.py's docstring).
EXTRA_VARIABLES = frozenset({"HELIOX_SPILL_DIR", "HELIOX_METRICS_DIR"})
SECRET_VARIABLES = frozenset({"DATABASE_URL", "REDIS_URL", "ADMIN_API_KEY", "SECRET_KEY"})
# Values a test puts where the templates hold placeholders: strong enough for production mode.
TEST_SECRETS = {
    "ADMIN_API_KEY": "Zq8vN2mK7xR4tW9pL3sB6yH1",
    "SECRET_KEY": "Jf5cT8nQ2wE7rU4iO9pA3sD6",
    "DATABASE_URL": "postgresql://heliox:pw@db.internal:5432/heliox?sslmode=verify-full",
    "REDIS_URL": "rediss://default:pw@redis.internal:6379/0",
    "POSTGRES_PASSWORD": "4f1c9a7e2b8d",
}


# --- loading ----------------------------------------------------------------------------------
def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return doc


def k8s_objects() -> list[dict[str, Any]]:
    """Every object the two kustomizations apply (the manifests and the migration Job)."""
    objects = []
    for folder in (K8S, K8S / "migrate"):
        for name in kustomization(folder)["resources"]:
            objects.extend(yaml_documents(folder / name))
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job"):
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def container(deployment: str) -> dict[str, Any]:
    spec = k8s_object("Deployment", deployment)["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    c: dict[str, Any] = only
    return c


def configmap() -> dict[str, str]:
    data: dict[str, str] = k8s_object("ConfigMap", "heliox-config")["data"]
    return data


def secret_example() -> dict[str, str]:
    (doc,) = yaml_documents(K8S / "secret.example.yaml")
    assert doc["kind"] == "Secret"
    data: dict[str, str] = doc["stringData"]
    return data


def env_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile (KEY=value lines, # comments)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: {line!r} is not NAME=value"
            values[name.strip()] = value.strip()
    return values


def unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit's `Key=value` settings (all sections together; repeated keys listed)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def compose_environment(service: str) -> dict[str, str]:
    """A compose service's environment with `${VAR:?message}` filled from TEST_SECRETS."""
    env = compose()["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping, please"

    def fill(match: re.Match[str]) -> str:
        return TEST_SECRETS[match.group(1)]

    return {k: re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", fill, str(v)) for k, v in env.items()}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the gateway would read them from exactly `env` (nothing else of ours)."""
    for name in list(os.environ):
        if name.lower() in Settings.model_fields or name in EXTRA_VARIABLES:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def assert_known_variables(names: set[str], where: str) -> None:
    unknown = {n for n in names if n.lower() not in Settings.model_fields} - EXTRA_VARIABLES
    assert not unknown, f"{where} sets variables Heliox does not read: {sorted(unknown)}"


# --- YAML ---------------------------------------------------------------------------------------
def test_every_yaml_file_parses() -> None:
    paths = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *ROOT.glob("infra/*.yml")})
    assert len(paths) >= 10, paths  # the manifests are where this test looks for them
    for path in paths:
        assert yaml_documents(path), f"{path} holds no document"


def test_every_manifest_is_applied_by_a_kustomization_except_the_secret_template() -> None:
    listed = {
        (folder / name).resolve()
        for folder in (K8S, K8S / "migrate")
        for name in kustomization(folder)["resources"]
    }
    manifests = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert all(p.is_file() for p in listed), listed - manifests
    # `kubectl apply -k` must never overwrite the real Secret with the template's placeholders.
    assert manifests - listed == {(K8S / "secret.example.yaml").resolve()}
    assert not any(o["kind"] == "Secret" for o in k8s_objects())


def test_both_kustomizations_deploy_the_same_image() -> None:
    images = [kustomization(folder)["images"] for folder in (K8S, K8S / "migrate")]
    assert images[0] == images[1]
    assert [i["name"] for i in images[0]] == ["heliox"]
    for name, spec in pod_specs():
        assert {c["image"] for c in spec["containers"]} == {"heliox"}, name


def test_kubectl_builds_the_kustomizations() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the other checks here do not need it)")
    for folder in (K8S, K8S / "migrate"):
        built = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
        )
        assert built.returncode == 0, built.stderr
        docs = [d for d in yaml.safe_load_all(built.stdout) if d]
        assert docs and all(d["metadata"]["namespace"] == "heliox" for d in docs)


# --- settings: names and values -----------------------------------------------------------------
def test_the_manifests_set_only_heliox_settings() -> None:
    assert_known_variables(set(configmap()), "the ConfigMap")
    assert_known_variables(set(secret_example()), "secret.example.yaml")
    for name, spec in pod_specs():
        for c in spec["containers"]:
            assert_known_variables({e["name"] for e in c.get("env", [])}, f"{name}'s env")
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                assert ref["name"] in ("heliox-config", "heliox-secrets"), ref


def test_the_variables_not_in_settings_are_read_by_the_gateway() -> None:
    # The allowance above must not hide a misspelling: each extra name is read in the code.
    code = "\n".join(p.read_text() for p in (ROOT / "src" / "heliox").rglob("*.py"))
    for name in EXTRA_VARIABLES:
        assert re.search(rf"os\.environ(?:\.get\(|\[)\"{name}\"", code), name


def test_secrets_are_in_the_secret_not_the_configmap() -> None:
    assert not SECRET_VARIABLES & set(configmap())
    assert set(secret_example()) == SECRET_VARIABLES
    gateway = container("heliox-gateway")
    assert {"secretRef": {"name": "heliox-secrets"}} in gateway["envFrom"]
    (job_env,) = k8s_object("Job", "heliox-migrate")["spec"]["template"]["spec"]["containers"]
    assert job_env["env"] == [
        {
            "name": "DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "heliox-secrets", "key": "DATABASE_URL"}},
        }
    ]


def test_the_manifests_settings_start_a_production_gateway_that_seeds_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**configmap(), **{k: TEST_SECRETS[k] for k in SECRET_VARIABLES}}
    settings = settings_from(env, monkeypatch)
    assert settings.deployment_mode == "production"
    assert settings.auto_seed is False
    assert settings.background_jobs is False  # the worker Deployment runs the jobs
    assert settings.metrics_public is False
    assert settings.trusted_proxy_networks  # the session cookie can be Secure behind a balancer
    assert settings.metrics_port == port_of(container("heliox-gateway"), "metrics")


def test_the_secret_template_is_refused_as_it_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template applied unedited stops the gateway, naming both secrets to replace."""
    with pytest.raises(ConfigError) as refused:
        settings_from({**configmap(), **secret_example()}, monkeypatch)
    assert "ADMIN_API_KEY:" in str(refused.value) and "SECRET_KEY:" in str(refused.value)


def test_the_systemd_environment_file_is_valid_once_its_secrets_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = env_file(SYSTEMD / "heliox.env.example")
    assert_known_variables(set(example), "heliox.env.example")
    with pytest.raises(ConfigError, match="ADMIN_API_KEY:"):
        settings_from(example, monkeypatch)
    settings = settings_from({**example, "ADMIN_API_KEY": TEST_SECRETS["ADMIN_API_KEY"],
                              "SECRET_KEY": TEST_SECRETS["SECRET_KEY"]}, monkeypatch)  # fmt: skip
    assert (settings.deployment_mode, settings.auto_seed) == ("production", False)
    assert settings.background_jobs is False  # heliox-worker.service runs the jobs
    assert settings.metrics_host == "127.0.0.1"


def test_no_artefact_carries_the_demo_keys() -> None:
    files = [COMPOSE, *K8S.rglob("*.yaml"), *SYSTEMD.iterdir()]
    for path in files:
        text = path.read_text()
        for key in SEEDED_KEYS:
            assert key.key not in text, path
        assert "admin-secret-key" not in text, path


# --- the production compose file ----------------------------------------------------------------
def test_compose_publishes_only_the_gateway() -> None:
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"gateway": ["8000:8000"]}
    for name in ("postgres", "redis"):
        assert "ports" not in services[name] and "network_mode" not in services[name]


def test_compose_runs_production_mode_without_seeding(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in ("gateway", "worker"):
        env = compose_environment(service)
        assert_known_variables(set(env), f"compose service {service}")
        assert env.get("AUTO_SEED", "false") == "false" and "DEPLOYMENT_MODE" not in env
        settings = settings_from(env, monkeypatch)
        assert (settings.deployment_mode, settings.auto_seed) == ("production", False)
    # No default for a secret: compose refuses to start until each is set.
    raw = compose()["services"]["gateway"]["environment"]
    for name in ("ADMIN_API_KEY", "SECRET_KEY"):
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", raw[name])
    assert ":${POSTGRES_PASSWORD:?" in raw["DATABASE_URL"]
    postgres = compose()["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_compose_gives_the_gateway_time_to_drain() -> None:
    gateway = compose()["services"]["gateway"]
    grace = int(str(gateway["stop_grace_period"]).removesuffix("s"))
    assert grace >= float(compose_environment("gateway")["SHUTDOWN_TIMEOUT"]) + STOP_GRACE_SECONDS
    assert "spill:/data/var" in gateway["volumes"]  # HELIOX_SPILL_DIR's default, under /data


# --- Kubernetes: probes, ports, names, shutdown, security, scaling -------------------------------
def port_of(c: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    return int(ports[name])


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_probes_ask_the_gateway_port_for_health() -> None:
    gateway = container("heliox-gateway")
    assert gateway["command"][:2] == ["heliox", "serve"]
    assert port_of(gateway, "http") == int(option(gateway["command"], "--port"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = gateway[probe]["httpGet"]
        assert (check["path"], check["port"]) == ("/health", "http"), probe
    # Liveness gives a stuck process longer than readiness takes to drop it from the Service.
    live, ready = gateway["livenessProbe"], gateway["readinessProbe"]
    assert (
        live["periodSeconds"] * live["failureThreshold"]
        > ready["periodSeconds"] * ready["failureThreshold"]
    )


def test_the_service_pdb_and_hpa_point_at_the_gateway_pods() -> None:
    deployment = k8s_object("Deployment", "heliox-gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s_object("Service", "heliox-gateway")
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in container("heliox-gateway")["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    pdb = k8s_object("PodDisruptionBudget", "heliox-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = k8s_object("HorizontalPodAutoscaler", "heliox-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "heliox-gateway"
    }  # fmt: skip
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB can let one go
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # Utilisation is a share of the request; the HPA fights any fixed replica count.
    assert container("heliox-gateway")["resources"]["requests"]["cpu"]
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_grace_period_covers_the_pause_the_drain_and_the_flush() -> None:
    spec = k8s_object("Deployment", "heliox-gateway")["spec"]["template"]["spec"]
    pre_stop = container("heliox-gateway")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + float(configmap()["SHUTDOWN_TIMEOUT"]) + STOP_GRACE_SECONDS
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_the_worker_runs_the_jobs_and_the_job_migrates() -> None:
    worker = container("heliox-worker")
    assert worker["command"] == ["heliox", "worker"]
    assert configmap()["BACKGROUND_JOBS"] == "false"
    (job,) = k8s_object("Job", "heliox-migrate")["spec"]["template"]["spec"]["containers"]
    assert job["command"] == ["heliox", "db", "upgrade"]


def test_every_pod_runs_unprivileged_on_a_read_only_root() -> None:
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        mounted_volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "memory" in c["resources"]["limits"], name
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/tmp") in mounted_volumes, f"{name}: a writable /tmp"
    # The gateway writes its request-log spill files where HELIOX_SPILL_DIR points.
    gateway_mounts = {m["mountPath"] for m in container("heliox-gateway")["volumeMounts"]}
    assert configmap()["HELIOX_SPILL_DIR"] in gateway_mounts


# --- systemd --------------------------------------------------------------------------------------
UNITS = ("heliox.service", "heliox-worker.service")


def test_the_units_run_heliox_hardened_with_a_state_directory() -> None:
    env = env_file(SYSTEMD / "heliox.env.example")
    for name in UNITS:
        u = unit(SYSTEMD / name)
        assert u["EnvironmentFile"] == ["/etc/heliox/heliox.env"], name
        assert u["DynamicUser"] == ["yes"] and u["User"] == ["heliox"], name
        assert u["StateDirectory"] == ["heliox"], name
        for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "RestrictSUIDSGID"):
            assert u[key] == ["yes"], f"{name}: {key}"
        assert u["ProtectSystem"] == ["strict"], name
        assert u["Restart"] == ["always"] and u["RestartPreventExitStatus"] == ["2"], name
        for assignment in u.get("Environment", []):
            assert_known_variables({assignment.partition("=")[0]}, name)
    gateway = unit(SYSTEMD / "heliox.service")
    assert gateway["ExecStart"][0].split()[1] == "serve"
    assert unit(SYSTEMD / "heliox-worker.service")["ExecStart"][0].split()[1:] == ["worker"]
    # The spill files live in the state directory, which outlives every restart.
    assert gateway["Environment"] == ["HELIOX_SPILL_DIR=%S/heliox/spill"]
    # SIGTERM to granian's main process, which drains and stops its workers; then the kill.
    assert gateway["KillMode"] == ["mixed"]
    stop = int(gateway["TimeoutStopSec"][0])
    assert stop >= float(env["SHUTDOWN_TIMEOUT"]) + STOP_GRACE_SECONDS


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if REQUIRE_SERVICES:
            pytest.fail("systemd-analyze is missing; HELIOX_REQUIRE_SERVICES is set", pytrace=False)
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return found


def installed_units(tmp_path: Path) -> list[Path]:
    """The units as installed here: `verify` checks that ExecStart's program exists, so the
    virtual environment and the environment file of this checkout stand in for /opt and /etc."""
    heliox = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "heliox"
    if not heliox.exists():
        heliox = Path(shutil.which("heliox") or "/nonexistent/heliox")
    assert heliox.exists(), "the heliox command of this installation"
    paths = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        text = text.replace("/opt/heliox/venv/bin/heliox", str(heliox))
        text = text.replace("/etc/heliox/heliox.env", str(SYSTEMD / "heliox.env.example"))
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    return paths


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    tool = systemd_analyze()
    units = installed_units(tmp_path)
    checked = subprocess.run(
        [tool, "verify", "--man=no", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    # Unknown keys and bad values are warnings with exit status 0: any output is a failure.
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing program are both reported."""
    tool = systemd_analyze()
    (broken,) = [p for p in installed_units(tmp_path) if p.name == "heliox.service"]
    broken.write_text(broken.read_text().replace("KillMode=mixed", "KilMode=mixed"))
    checked = subprocess.run(
        [tool, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert "KilMode" in checked.stderr
    missing = tmp_path / "missing.service"
    missing.write_text((SYSTEMD / "heliox.service").read_text())  # /opt/heliox is not here
    checked = subprocess.run(
        [tool, "verify", "--man=no", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode != 0 and "/opt/heliox/venv/bin/heliox" in checked.stderr


def test_the_units_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security` scores the sandboxing: 0 is locked down, 10 is none (a unit
    with no hardening scores 9.6). The units stay at 2 or below."""
    tool = systemd_analyze()
    for path in installed_units(tmp_path):
        scored = subprocess.run(
            [tool, "security", "--offline=yes", "--threshold=20", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert scored.returncode == 0, scored.stderr
        level = re.search(r"Overall exposure level for \S+: ([\d.]+)", scored.stdout)
        assert level is not None, scored.stdout
        assert float(level.group(1)) <= 2.0, f"{path.name}: {level.group(1)}"


# --- upgrade and rollback (docs/upgrades.md) -----------------------------------------------------
def heliox_command(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def migrated_sqlite(tmp_path: Path) -> dict[str, str]:
    """A database at this release's head (migrated in process), and the environment naming it."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"
    upgrade_database_sync(env["DATABASE_URL"])
    return env


def revision(tmp_path: Path) -> str:
    with sqlite3.connect(tmp_path / "heliox.db") as db:
        (row,) = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return str(row[0])


def test_an_older_release_refuses_a_schema_migrated_by_a_newer_one(tmp_path: Path) -> None:
    """Why a rollback downgrades the schema first: the revision is unknown to older code."""
    env = migrated_sqlite(tmp_path)
    with sqlite3.connect(tmp_path / "heliox.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")  # a release from the future
    refused = heliox_command("heliox", "db", "upgrade", env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert "No such revision or branch '9999'" in refused.stderr


def test_the_documented_downgrade_steps_back_and_upgrade_returns(tmp_path: Path) -> None:
    """`alembic -c <release>/alembic.ini downgrade REV` (in the image: /app/alembic.ini), run from
    anywhere, then `heliox db upgrade` to come back."""
    env = migrated_sqlite(tmp_path)
    head = revision(tmp_path)
    ini = str(ROOT / "alembic.ini")
    stepped = heliox_command("alembic", "-c", ini, "downgrade", "-1", env=env, cwd=tmp_path)
    assert stepped.returncode == 0, stepped.stderr
    assert f"Running downgrade {head} -> " in stepped.stderr
    assert revision(tmp_path) != head
    upgrade_database_sync(env["DATABASE_URL"])  # what `heliox db upgrade` runs
    assert revision(tmp_path) == head


# --- backup and restore (docs/backup.md) ---------------------------------------------------------
def pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{name} is missing; HELIOX_REQUIRE_SERVICES is set", pytrace=False)
        pytest.skip(f"{name} is not installed (Debian package postgresql-client)")
    return found


async def _seeded(url: str) -> list[tuple[str, ...]]:
    """Seed the sample data into `url`; return what a restore must bring back."""
    engine = make_engine(url)
    try:
        await seed(make_session_factory(engine), load_settings(deployment_mode="demo"))
        return await _configuration(url)
    finally:
        await engine.dispose()


async def _configuration(url: str) -> list[tuple[str, ...]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT t.name, k.key_hash, r.name, v.version_num FROM api_keys k "
                    "JOIN tenants t ON t.id = k.tenant_id CROSS JOIN routes r "
                    "CROSS JOIN alembic_version v ORDER BY 1, 2, 3"
                )
            )
            return [tuple(str(v) for v in row) for row in rows]
    finally:
        await engine.dispose()


def test_pg_dump_and_pg_restore_as_documented(pg_server: str, tmp_path: Path) -> None:
    """The guide's commands: a full custom-format dump restored into an empty database brings
    back tenants, keys, routes and the schema revision; the smaller dump leaves out the rows of the
    request log, its partitions and its roll-ups, and keeps the rest."""
    pg_dump, pg_restore = pg_tool("pg_dump"), pg_tool("pg_restore")
    with fresh_pg_database(pg_server) as source, fresh_pg_database(pg_server) as target:
        upgrade_database_sync(source)
        before = asyncio.run(_seeded(source))
        assert before, "the seed created keys and routes"
        libpq = {
            url: url.replace("postgresql+asyncpg://", "postgresql://") for url in (source, target)
        }
        full, small = tmp_path / "heliox.dump", tmp_path / "heliox-config.dump"
        for out, extra in ((full, []), (small, ["--exclude-table-data=request_log*"])):
            dumped = subprocess.run(
                [pg_dump, "--format=custom", "--no-owner", *extra, "-f", str(out), libpq[source]],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert dumped.returncode == 0, dumped.stderr
        contents = {
            out: subprocess.run(
                [pg_restore, "--list", str(out)], capture_output=True, text=True, check=True
            ).stdout
            for out in (full, small)
        }
        logs = r"TABLE DATA public request_log\w* "  # the log, its partitions, its roll-ups
        assert len(re.findall(logs, contents[full])) >= 3, contents[full]
        assert not re.search(logs, contents[small])
        assert "TABLE DATA public api_keys " in contents[small]
        restored = subprocess.run(
            [pg_restore, "--no-owner", "--exit-on-error", "-d", libpq[target], str(full)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert asyncio.run(_configuration(target)) == before
        upgrade_database_sync(target)  # what a gateway does first: nothing left to migrate
        assert asyncio.run(_configuration(target)) == before
