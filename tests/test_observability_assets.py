"""The shipped Prometheus rules and Grafana dashboard (deploy/), the named metrics beside
heliox_events_total, process_* of several workers, and the log formats (LOG_FORMAT, ACCESS_LOG),
in process. The running gateway is checked in tests/e2e/test_structured_logs.py."""

from __future__ import annotations

import ast
import fcntl
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from heliox.gateway.exchange import AnswerAborted
from heliox.metrics import EVENT_METRICS, PROCESS_STALE_SECONDS, Metrics
from heliox.structured_log import (
    ACCESS_FIELDS,
    SERVER_ERROR_LOGGERS,
    AbortedAnswerFilter,
    AccessLog,
    JsonFormatter,
    access_line,
    logging_config,
    quiet_aborted_answers,
)
from tests.e2e.harness import wait_until

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "heliox-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "heliox-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "heliox-dashboard.json"

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither a function (one
    followed by "("), a keyword, a label (inside {...} or a by/without/on list), a duration
    ([5m]), a string nor a Grafana variable ($job, $__rate_interval)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for m in _NAME.finditer(text):
        name = m.group()
        if name.lower() in _KEYWORDS or text[m.end() :].lstrip().startswith("("):
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3)
        names.add(name)
    return names


def rule_expressions() -> tuple[list[str], set[str]]:
    """Every expression of the rules file, and the names its recording rules define."""
    doc = yaml.safe_load(RULES.read_text())
    exprs, recorded = [], set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            exprs.append(rule["expr"])
            if "record" in rule:
                recorded.add(rule["record"])
    return exprs, recorded


def dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            # label_values(metric, label): the metric must exist, the label is a label.
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert m, query
            exprs.append(m.group(1))
    return exprs


def referenced_metrics() -> set[str]:
    """Every metric name the dashboard and the alert rules read (recorded names excluded)."""
    exprs, recorded = rule_expressions()
    names: set[str] = set()
    for expr in exprs + dashboard_expressions():
        names |= metric_names(expr)
    return names - recorded


def exposed_names(text: str) -> set[str]:
    """The sample names of an exposition (heliox_requests_total, ..._bucket, ...)."""
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(heliox_request_duration_seconds_bucket"
        '{job=~"$job",route!="a b"}[$__rate_interval]))) / on(job) group_left(version) '
        "heliox_build_info > 1e3 and ignoring(pid) process_open_fds offset 5m or vector(0)"
    )
    assert metric_names(expr) == {
        "heliox_request_duration_seconds_bucket",
        "heliox_build_info",
        "process_open_fds",
    }


# --- Prometheus rules and the dashboard ----------------------------------------------------------
def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("HELIOX_REQUIRE_SERVICES") == "1":
            pytest.fail(
                "promtool is not installed (Debian package prometheus; .ci/run installs it)"
            )
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_the_rules_alert_on_what_operators_must_hear_about() -> None:
    doc = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    expected = {
        "HelioxHigh5xxRatio": "job:heliox_requests_5xx:rate5m",
        "HelioxUpstreamErrors": "heliox_upstream_errors_total",
        "HelioxDatabaseDown": "heliox_database_up",
        "HelioxRedisDown": "heliox_redis_up",
        "HelioxRedisBreakerOpen": "heliox_redis_breaker_open",
        "HelioxLogRowsSpilled": "heliox_log_rows_spilled_total",
        "HelioxLogRowsLost": "heliox_log_rows_dropped_total",
        "HelioxCacheHitRatioCollapse": "job:heliox_cache_hit_ratio:rate15m",
        "HelioxAbuseBlocksSpike": "heliox_abuse_blocks_total",
    }
    for name, metric in expected.items():
        assert name in alerts, name
        assert metric in alerts[name]["expr"], name
        assert alerts[name]["labels"]["severity"] in ("warning", "critical")
        assert alerts[name]["annotations"]["summary"]


def test_the_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "job"}
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            # Every query follows the job selector, so one dashboard serves several gateways.
            assert 'job=~"$job"' in t["expr"], (p["title"], t["expr"])


def test_every_metric_the_dashboard_and_rules_read_is_one_heliox_declares() -> None:
    """In process, against the families the exposition declares (the e2e test checks the same
    names on a running gateway's /metrics/prometheus, with samples)."""
    m = Metrics.merged([_busy_dump()])
    m.gauges.update(database_up=1, redis_up=1, redis_breaker_open=0, log_queue_length=0)
    text = m.prometheus_text().decode()
    missing = referenced_metrics() - exposed_names(text)
    assert not missing, f"read by deploy/ but not exported: {sorted(missing)}"


# --- named metrics -----------------------------------------------------------------------------
def _strings(node: ast.expr) -> set[str]:
    """The string constants an argument can be: "a", or "a" if x else "b"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    return set()


def _counted_events() -> set[str]:
    """Every event name the code passes to Metrics.count (`.count("name")`, or
    `partial(....count, "name")`)."""
    found: set[str] = set()
    for path in (ROOT / "src" / "heliox").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first = node.args[0]
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "count":
                target = func.value
                if not (isinstance(target, ast.Attribute) and target.attr == "metrics") and not (
                    isinstance(target, ast.Attribute) and target.attr == "_metrics"
                ):
                    continue
                found |= _strings(first)
            elif isinstance(func, ast.Name) and func.id == "partial" and len(node.args) > 1:
                second = node.args[1]
                if isinstance(first, ast.Attribute) and first.attr == "count":
                    found |= _strings(second)
    return found


def test_every_counted_event_has_a_named_metric() -> None:
    counted = _counted_events()
    assert {"log_rows_spilled", "abuse_blocks", "upstream_retries"} <= counted  # the scan works
    unnamed = counted - set(EVENT_METRICS)
    assert not unnamed, f"add these events to heliox.metrics.EVENT_METRICS: {sorted(unnamed)}"


def test_named_metrics_follow_the_prometheus_naming_conventions() -> None:
    names = [metric for metric, _ in EVENT_METRICS.values()]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"heliox_[a-z0-9_]+_total", name), name


def test_each_event_is_exported_under_both_names() -> None:
    m = Metrics()
    m.count("log_rows_spilled", 7)
    m.count("abuse_blocks")
    m.count("some_future_event")  # not named yet: in heliox_events_total only
    families = {
        s.name: s for f in text_string_to_metric_families(m.prometheus_text().decode())
        for s in f.samples if not s.labels
    }  # fmt: skip
    events = {
        s.labels["event"]: s.value
        for f in text_string_to_metric_families(m.prometheus_text().decode())
        for s in f.samples
        if s.name == "heliox_events_total"
    }
    assert events == {"log_rows_spilled": 7, "abuse_blocks": 1, "some_future_event": 1}
    assert families["heliox_log_rows_spilled_total"].value == 7
    assert families["heliox_abuse_blocks_total"].value == 1
    assert families["heliox_log_rows_lost_total"].value == 0  # written before the first event
    build = [
        s
        for f in text_string_to_metric_families(m.prometheus_text().decode())
        for s in f.samples
        if s.name == "heliox_build_info"
    ]
    assert len(build) == 1 and build[0].value == 1
    assert set(build[0].labels) == {"version", "python"}


def _busy_dump(pid: int = 0, at: float | None = None) -> dict[str, Any]:
    m = Metrics()
    m.observe_request("demo", 200, 0.01, "HIT", 0.004)
    m.observe_request("demo", 502, 0.01, "MISS", 0.004)
    m.upstream_errors[("demo", 502)] += 1
    m.admission[("demo", "limited", "rate")] += 1
    dump = m.dump()
    if pid:
        dump["process"]["pid"] = pid
    if at is not None:
        dump["process"]["at"] = at
    return dump


def test_process_metrics_are_per_live_worker_and_up_gauges_take_the_lowest() -> None:
    now = 1_000_000.0
    a, b, gone = _busy_dump(101, now), _busy_dump(102, now - 0.5), _busy_dump(99, now - 60)
    a["gauges"] = {"database_up": 1.0, "redis_breaker_open": 0.0}
    b["gauges"] = {"database_up": 0.0, "redis_breaker_open": 1.0}
    merged = Metrics.merged([a, b, gone])
    assert merged.gauges == {"database_up": 0.0, "redis_breaker_open": 1.0}
    samples = {
        (s.name, s.labels.get("pid")): s.value
        for f in text_string_to_metric_families(merged.prometheus_text().decode())
        for s in f.samples
    }
    assert samples[("heliox_worker_processes", None)] == 2
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert {pid for n, pid in samples if n == name} == {"101", "102"}  # not 99: gone
    assert samples[("process_resident_memory_bytes", "101")] > 0
    # A gone worker's counters still count (a counter must not go down); not its process.
    assert samples[("heliox_upstream_errors_total", None)] == 3
    assert PROCESS_STALE_SECONDS < 60


# --- LOG_FORMAT --------------------------------------------------------------------------------
def test_json_formatter_writes_one_object_per_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "heliox.gateway", logging.WARNING, __file__, 1, "upstream %s\nfailed", ("a",),
            sys.exc_info(),
        )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning" and out["logger"] == "heliox.gateway"
    assert out["message"] == "upstream a\nfailed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["ts"])
    assert "ValueError: boom" in out["exception"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.captureWarnings(False)


def test_logging_config_sends_every_logger_to_stderr_as_json(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    logging.config.dictConfig(logging_config("json", "INFO"))
    logging.getLogger("heliox.gateway").info("one")
    logging.getLogger("_granian").info("two")  # granian's own logger, as its workers use it
    logging.getLogger("heliox.gateway").debug("below LOG_LEVEL")
    lines = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [(x["logger"], x["message"]) for x in lines] == [
        ("heliox.gateway", "one"),
        ("_granian", "two"),
    ]

    stderr.truncate(0)
    stderr.seek(0)
    logging.config.dictConfig(logging_config("text", "WARNING"))
    logging.getLogger("heliox.gateway").warning("three")
    assert re.fullmatch(r"\S+ \S+ WARNING heliox\.gateway: three\n", stderr.getvalue())


def test_the_servers_reports_of_an_aborted_answer_are_left_out(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """granian reports every exception out of the app as an application error with its
    traceback as text, uvicorn with the exception attached; an answer Heliox aborted on
    purpose (AnswerAborted) is not one."""
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    logging.config.dictConfig(logging_config("text", "INFO"))
    loggers = [logging.getLogger(name) for name in SERVER_ERROR_LOGGERS]
    saved = [logger.filters[:] for logger in loggers]
    try:
        for logger in loggers:  # as in a fresh process (an app built by another test put it on)
            logger.filters[:] = [
                f for f in logger.filters if not isinstance(f, AbortedAnswerFilter)
            ]
        quiet_aborted_answers()
        quiet_aborted_answers()  # once per process, whoever calls it
        counts = [sum(isinstance(f, AbortedAnswerFilter) for f in lg.filters) for lg in loggers]
        assert counts == [1, 1]
        granian, uvicorn = loggers
        report = "Application callable raised an exception\nTraceback (most recent call last):\n"
        granian.error(report + f"  ...\n{AnswerAborted.__name__}: upstream broke off, granian")
        granian.error(report + "  ...\nValueError: a real failure in granian")
        for exc in (AnswerAborted("upstream broke off, uvicorn"), ValueError("real, uvicorn")):
            uvicorn.error("Exception in ASGI application\n", exc_info=exc)
        logging.getLogger("heliox.gateway").warning("AnswerAborted: another logger's line")
    finally:
        for logger, filters in zip(loggers, saved, strict=True):
            logger.filters[:] = filters
    out = stderr.getvalue()
    assert "upstream broke off" not in out
    assert "ValueError: a real failure in granian" in out and "ValueError: real, uvicorn" in out
    assert "another logger's line" in out


# --- ACCESS_LOG ----------------------------------------------------------------------------------
def _row(n: int, **over: Any) -> tuple[Any, ...]:
    fields: dict[str, Any] = dict(
        ts=1_700_000_000.5, request_id=f"req-{n}", tenant_id=3, key_id=9, route_id=2,
        route="demo", method="GET", path="/items", status=200, cache_status="HIT",
        latency_ms=1.25, upstream_latency_ms=None, bytes_in=0, bytes_out=941,
        client_ip="203.0.113.7", user_agent="curl/8", error=None, cache_key="c:0f1e",
        upstream_status=None, refused_by=None, refusal=None,
    )  # fmt: skip
    fields.update(over)
    return tuple(fields[name] for name in ACCESS_FIELDS)


def test_an_access_line_names_every_field_and_no_key() -> None:
    line = json.loads(access_line(_row(1)))
    assert line["ts"] == "2023-11-14T22:13:20.500Z"
    assert (line["level"], line["logger"]) == ("info", "heliox.access")
    assert line["message"] == "GET /g/demo/items 200"
    for name in ACCESS_FIELDS[1:]:
        assert name in line, name
    assert line["request_id"] == "req-1" and line["key_id"] == 9 and line["tenant_id"] == 3
    # The cache entry's key is a hash of the request, not an API key.
    assert not any("key" in name and name not in ("key_id", "cache_key") for name in line)


def test_an_access_line_nests_the_refusing_limits_numbers() -> None:
    refusal = '{"quota":5,"window_seconds":1,"retry_after":2}'  # as the log row holds it
    line = json.loads(access_line(_row(2, status=429, refused_by="rate", refusal=refusal)))
    assert line["refused_by"] == "rate"
    assert line["refusal"] == {"quota": 5, "window_seconds": 1, "retry_after": 2}
    assert json.loads(access_line(_row(3)))["refusal"] is None


def _pipe(size: int = 4096) -> tuple[int, int]:
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)  # the smallest pipe: a page
    return r, w


def test_an_unread_stdout_drops_lines_instead_of_blocking_requests() -> None:
    """The reader of stdout has stopped: `add` (on the event loop) never waits; lines beyond
    the buffer are dropped and counted, and the ones kept are written once the reader is back."""
    r, w = _pipe()
    metrics = Metrics()
    log = AccessLog(metrics, fd=w, capacity=50)
    log.start()
    try:
        total = 2000  # about 400 KB of lines: a hundred times what the pipe holds
        for n in range(total):
            log.add(_row(n))  # would hang here if a line waited for the reader
        # The writer thread is stuck on the full pipe; everything beyond its buffer is dropped.
        assert log.dropped >= total - 50 - 256  # kept: the buffer, and a batch being written
        assert metrics.events["access_log_dropped"] == log.dropped
        assert (
            metrics.prometheus_text()
            .decode()
            .count(f"heliox_access_log_lines_dropped_total {log.dropped}.0")
            == 1
        )

        received = bytearray()

        def read_all() -> None:
            while chunk := os.read(r, 65536):
                received.extend(chunk)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        wait_until(lambda: log.written == total - log.dropped, timeout=30)
        log.add(_row(999_999))  # after the reader is back, lines flow again
        wait_until(lambda: b'"req-999999"' in received, timeout=30)
        lines = [json.loads(x) for x in received.decode().splitlines()]
        assert len(lines) == total - log.dropped + 1
        assert lines[0]["request_id"] == "req-0"  # the first ones were kept, in order
        assert [x["request_id"] for x in lines] == sorted(
            (x["request_id"] for x in lines), key=lambda s: int(s.split("-")[1])
        )
    finally:
        log.close()
        os.close(w)
        os.close(r)


def test_heliox_worker_logs_json_lines_with_log_format_json(tmp_path: Path) -> None:
    """`heliox worker` (its progress lines and its loggers') with LOG_FORMAT=json, on SQLite."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(LOG_FORMAT="json", LOG_LEVEL="INFO", DEPLOYMENT_MODE="demo")
    done = subprocess.run(
        [sys.executable, "-m", "heliox", "worker", "--once"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.strip()]
    assert {(x["level"], x["logger"]) for x in lines} >= {
        ("info", "heliox.cli"),  # "migrating database"
        ("info", "heliox.jobs"),  # "job log-retention ran ..."
    }
    assert any(x["message"].startswith("job log-retention ran") for x in lines)


def test_access_fields_name_the_request_log_row_column_by_column() -> None:
    """The access line is the log row named (structured_log.ACCESS_FIELDS), kept beside the
    writer's COLUMNS in a lower layer: a column added to one and not the other fails here."""
    from heliox.db.logwriter import COLUMNS

    assert tuple("route" if c == "route_name" else c for c in COLUMNS) == ACCESS_FIELDS
