"""The metrics port (METRICS_PORT): the Prometheus text of every worker, without a key, on an
address of its own that only the scraper needs to reach.

`heliox serve` binds it once, in its main process, before granian starts the workers: however
many workers run, none of them binds it (so none can fail on it), and a scrape never runs on a
worker's event loop. The workers' counters arrive through the shared metrics folder (see
`SharedMetrics`), which each worker rewrites every 0.5 s, so a scrape is at most that old.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from heliox.metrics import PROMETHEUS_CONTENT_TYPE, Metrics, read_dumps

# Prometheus scrapes /metrics by default; /metrics/prometheus is the gateway port's name for it.
PATHS = frozenset({"/metrics", "/metrics/prometheus"})
# A scraper that stalls mid-request cannot hold the listener longer than this.
SOCKET_TIMEOUT = 10.0


class _Server(HTTPServer):
    folder = ""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "heliox-metrics"
    timeout = SOCKET_TIMEOUT

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in PATHS:
            self._reply(404, b"not found: scrape /metrics\n", "text/plain; charset=utf-8")
            return
        text = Metrics.merged(read_dumps(self.server.folder)).prometheus_text()
        self._reply(200, text, PROMETHEUS_CONTENT_TYPE)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None  # one line per scrape on stderr would drown the gateway's own log


class MetricsPort:
    """A small HTTP listener on its own thread; `OSError` from the constructor means the address
    cannot be bound (in use, not local, no permission)."""

    def __init__(self, host: str, port: int, folder: str) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.folder = folder
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="heliox-metrics-port", daemon=True
        )
        # Workers forked after this must not keep the listening socket open: only this process
        # answers on it.
        os.register_at_fork(after_in_child=self._server.socket.close)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
