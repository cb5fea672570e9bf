"""The process's own log lines (LOG_FORMAT) and the access log (ACCESS_LOG).

- LOG_FORMAT=text (default): `2026-01-01 12:00:00,000 WARNING heliox.gateway: message` on
  standard error. LOG_FORMAT=json: one JSON object per line instead, with `ts` (RFC 3339, UTC),
  `level`, `logger` and `message` (and `exception` with the traceback, when there is one), for
  Loki, Elasticsearch or any collector that reads JSON lines. It covers heliox's loggers,
  granian's and the libraries', in every worker (`heliox serve` hands `logging_config` to
  granian, which applies it in each worker it starts).
- ACCESS_LOG=true: one JSON line per data-plane request on standard output, written after the
  response (see `AccessLog`), with the same fields as the request log row in the database. The
  API key and the admin key are never in it (only the key's and the tenant's ids), nor the query
  string (where clients sometimes put credentials).
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import threading
import time
from collections import deque
from typing import Any

from heliox.metrics import Metrics

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Lines the access log holds while standard output is slow; beyond them lines are dropped and
# counted (heliox_access_log_lines_dropped_total), never waited for.
ACCESS_LOG_BUFFER = 10_000
# Lines written to standard output per write call.
_BATCH = 256
# The request log row (db/logwriter.py, built in gateway/app.py) field by field: the access line
# is that same tuple, named. Anything added to the row must be added here too.
ACCESS_FIELDS = (
    "ts",
    "request_id",
    "tenant_id",
    "key_id",
    "route_id",
    "route",
    "method",
    "path",
    "status",
    "cache_status",
    "latency_ms",
    "upstream_latency_ms",
    "bytes_in",
    "bytes_out",
    "client_ip",
    "user_agent",
    "error",
    "cache_key",
    "upstream_status",
    "refused_by",
    "refusal",
)
log = logging.getLogger("heliox.access")
_json_output = False  # LOG_FORMAT=json in this process (set by `configure`)


def timestamp(t: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-01-01T12:00:00.123Z."""
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def json_line(level: str, logger: str, message: str, t: float | None = None) -> str:
    """One log line as LOG_FORMAT=json writes it (without the newline)."""
    out = {"ts": timestamp(time.time() if t is None else t), "level": level}
    out["logger"] = logger
    out["message"] = message
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line (a traceback is a field, not more lines)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for LOG_FORMAT and LOG_LEVEL: every logger (heliox's,
    granian's, the libraries') writes to standard error in that format."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"heliox": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "heliox",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # granian's own logger writes to stdout with a handler of its own by default: here
            # it joins the others (stdout is left to the access log).
            "_granian": {"level": level, "handlers": ["stderr"], "propagate": False},
            "granian.access": {"level": level, "handlers": ["stderr"], "propagate": False},
            "alembic": {"level": "WARNING"},  # `heliox serve` prints its own progress lines
        },
    }


# `heliox.gateway.exchange.AnswerAborted`'s name (not imported: this module loads without the
# gateway).
ABORTED_ANSWER = "AnswerAborted"
# Where the servers report an exception out of the app: granian (its traceback as text), uvicorn.
SERVER_ERROR_LOGGERS = ("_granian.utils", "uvicorn.error")


class AbortedAnswerFilter(logging.Filter):
    """Leaves out a server's report of an answer Heliox aborted on purpose (AnswerAborted,
    raised when an upstream breaks off mid-body after the head went out): the servers log it as
    an application error with a traceback, one per broken answer, while Heliox has logged the
    cause itself (one warning per route and interval) and written it to the request log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return type(exc).__name__ != ABORTED_ANSWER
        return f"\n{ABORTED_ANSWER}: " not in record.getMessage()  # granian: the text ends so


def quiet_aborted_answers() -> None:
    """Install AbortedAnswerFilter on the servers' error loggers (once per process): on the
    loggers themselves, so that it holds whoever configured the handlers (`heliox serve`,
    granian or uvicorn run by hand)."""
    for name in SERVER_ERROR_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, AbortedAnswerFilter) for f in logger.filters):
            logger.addFilter(AbortedAnswerFilter())


def configure(log_format: str, level: str) -> None:
    """Apply `logging_config` to this process (and route `warnings` through logging, so that
    a JSON log stays JSON), unless the root logger already has a handler: whoever runs us has
    set logging up (as `logging.basicConfig`, it then does nothing)."""
    global _json_output
    _json_output = log_format == "json"
    if logging.getLogger().handlers:
        return
    logging.config.dictConfig(logging_config(log_format, level))
    logging.captureWarnings(True)


def json_output() -> bool:
    """Whether this process logs JSON lines (LOG_FORMAT=json, once `configure` has run)."""
    return _json_output


class AccessLog:
    """ACCESS_LOG: one JSON line per request, written to `fd` (standard output) by a thread of
    its own, so that a slow or blocked reader never stalls the event loop.

    The loop only appends the request's log row to a bounded buffer (`add`, about 0.2 us); the
    thread turns rows into JSON and writes them in batches. A reader that stops reading (a full
    pipe) blocks the thread only: the buffer fills, further lines are dropped and counted
    (heliox_access_log_lines_dropped_total) until the reader catches up. Requests never wait.
    """

    def __init__(self, metrics: Metrics, fd: int = 1, capacity: int = ACCESS_LOG_BUFFER) -> None:
        self._metrics = metrics
        self._fd = fd
        self._capacity = capacity
        self._rows: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0  # lines handed to the operating system (read by tests)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heliox-access-log", daemon=True)
        self._thread.start()

    def add(self, row: tuple[Any, ...]) -> None:
        """A request's log row; on the event loop, after the response."""
        if len(self._rows) >= self._capacity:
            self.dropped += 1
            self._metrics.count("access_log_dropped")
            return
        self._rows.append(row)
        if not self._wake.is_set():  # a plain read; set() takes a lock
            self._wake.set()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered, waiting at most `timeout` seconds (a blocked standard output
        cannot hold the exit up: the thread is a daemon)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        rows = self._rows
        while True:
            self._wake.wait()
            self._wake.clear()
            while rows:
                batch = [rows.popleft() for _ in range(min(len(rows), _BATCH))]
                data = "".join(access_line(row) + "\n" for row in batch).encode("utf-8")
                try:
                    self._write(data)
                except OSError as exc:  # standard output closed: nothing can be written
                    log.error("access log stopped: cannot write to standard output: %s", exc)
                    return
                self.written += len(batch)
            if self._stopping:
                return

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)  # blocks this thread only, while the reader is slow
            view = view[n:]


def access_line(row: tuple[Any, ...]) -> str:
    """The access log line of a request log row (without the newline)."""
    fields = dict(zip(ACCESS_FIELDS, row, strict=True))
    line: dict[str, Any] = {
        "ts": timestamp(fields.pop("ts")),
        "level": "info",
        "logger": "heliox.access",
        "message": f"{fields['method']} /g/{fields['route']}{fields['path']} {fields['status']}",
    }
    line.update(fields)
    refusal = fields["refusal"]
    if refusal is not None:  # already JSON (the log row's form): nested, not a string
        line["refusal"] = json.loads(refusal)
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))
