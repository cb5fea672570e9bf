"""What the soak watches: the gateway's processes (/proc), its /metrics, and its Redis.

Resident memory is read for the granian worker (the process that serves requests and holds the
in-process cache) and for the whole tree (worker plus the server's supervisor). A background
`RssWatch` reads it every half second, so the reported maximum is not just the maximum of the
coarse per-interval samples.

Redis, per sample, costs O(1): INFO keyspace gives the number of keys and of keys with an expiry,
so "keys without a TTL" is their difference minus the cache store's bookkeeping keys present. At
the end `scan_ttls` walks every key with SCAN and checks each one's PTTL.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import http
from benchkit.gateway import ADMIN_KEY
from benchkit.procs import children

# The response cache's bookkeeping (heliox/state/lua/cache_common.lua): one sorted set of every
# entry by expiry, one hash of their sizes, one counter of the sum, and the removal generation (a
# single counter). The first two hold one member per live entry and are checked for boundedness
# instead of a TTL; the counters are one integer each.
BOOKKEEPING = ("cache:i:all", "cache:sz", "cache:bytes", "cache:gen")


def rss_kib(pid: int) -> int:
    return proc_status(pid, "VmRSS")


def proc_status(pid: int, name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    pids = [root]
    for pid in pids:
        pids += children(pid)
    return pids


@dataclass
class Memory:
    worker_mib: float
    tree_mib: float


def memory(root: int) -> Memory:
    pids = tree(root)
    workers = children(root)
    return Memory(sum(rss_kib(p) for p in workers) / 1024, sum(rss_kib(p) for p in pids) / 1024)


class RssWatch:
    """Polls the gateway's RSS in a thread; keeps the maxima (and when they happened)."""

    def __init__(self, root: int, period: float = 0.5) -> None:
        self.root = root
        self.period = period
        self.worker_max = 0.0
        self.worker_max_at = 0.0
        self.tree_max = 0.0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    def start(self, started: float) -> None:
        self.started = started
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.poll()

    def poll(self) -> Memory:
        m = memory(self.root)
        if m.worker_mib > self.worker_max:
            self.worker_max, self.worker_max_at = m.worker_mib, time.monotonic() - self.started
        self.tree_max = max(self.tree_max, m.tree_mib)
        return m

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


@dataclass
class Sample:
    at: float  # seconds since the traffic started
    worker_mib: float
    tree_mib: float
    fds: int
    threads: int
    cache_entries: int
    cache_bytes: int
    log_queue: int
    tasks: int  # asyncio tasks in the worker that answered /metrics
    inflight: int  # cache fills in flight there
    log_dropped: int
    redis: RedisSample | None
    keys_touched: int


@dataclass
class RedisSample:
    used_mib: float
    keys: int
    no_ttl: int  # keys without an expiry, bookkeeping keys left out
    index_members: int  # entries listed in cache:i:all
    index_expired: int  # of those, already past their expiry (not yet trimmed)
    sizes: int  # fields of cache:sz


def gateway_metrics(url: str) -> dict[str, Any]:
    # Production mode keeps the metrics behind the admin key; demo mode accepts it too.
    reply = http.get(url + "/metrics", headers={"X-Admin-Key": ADMIN_KEY}, timeout=30)
    if reply.status != 200:
        raise RuntimeError(f"GET /metrics -> {reply.status}")
    data: dict[str, Any] = reply.json()
    return data


def take_sample(
    root: int, url: str, redis_client: Any, prefix: str, at: float, keys_touched: int
) -> Sample:
    pids = tree(root)
    mem = memory(root)
    fds = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fds += len(os.listdir(f"/proc/{p}/fd"))
    threads = sum(proc_status(p, "Threads") for p in pids)
    metrics = gateway_metrics(url)
    gauges = metrics.get("gauges", {})
    process = metrics.get("process", {})
    return Sample(
        at, mem.worker_mib, mem.tree_mib, fds, threads,
        int(gauges.get("cache_entries", 0)), int(gauges.get("cache_bytes", 0)),
        int(metrics.get("log_queue_length", 0)), int(process.get("asyncio_tasks", -1)),
        int(process.get("inflight_fills", -1)),
        int(metrics.get("events", {}).get("log_queue_dropped", 0)),
        redis_sample(redis_client, prefix) if redis_client is not None else None,
        keys_touched,
    )  # fmt: skip


def redis_sample(client: Any, prefix: str) -> RedisSample:
    used = int(client.info("memory")["used_memory"]) / 2**20
    space = client.info("keyspace").get("db0", {})
    keys, expires = int(space.get("keys", 0)), int(space.get("expires", 0))
    bookkeeping = int(client.exists(*(prefix + name for name in BOOKKEEPING)))
    index = prefix + "cache:i:all"
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return RedisSample(
        used,
        keys,
        keys - expires - bookkeeping,
        int(client.zcard(index)),
        int(client.zcount(index, "-inf", now_ms)),
        int(client.hlen(prefix + "cache:sz")),
    )


@dataclass
class TtlScan:
    keys: int = 0
    without_ttl: list[str] = field(default_factory=list)  # outside the bookkeeping keys
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    entries: int = 0  # cache entries (cache:e:*)


def kind_of(key: str, prefix: str) -> str:
    """A readable class of a gateway key, for the scan's breakdown."""
    rest = key[len(prefix) :] if key.startswith(prefix) else key
    if rest.startswith("{") and "}:" in rest:
        principal, _, tail = rest.partition("}:")
        if principal == "{blocks":
            return "block list"
        head = tail.split(":", 2)
        if head[0] == "q":
            return "quota counter (" + ("daily" if head[1] == "d" else "monthly") + ")"
        return {"tb": "rate limit (token bucket)", "sw": "rate limit (window)", "blk": "block"}.get(
            head[0], "admission (other)"
        )
    for start, name in (
        ("cache:e:", "cache entry"),
        ("cache:i:all", "cache bookkeeping"),
        ("cache:sz", "cache bookkeeping"),
        ("cache:bytes", "cache bookkeeping"),
        ("cache:gen", "cache bookkeeping"),
        ("cache:i:", "cache index"),
        ("cache:lock:", "cache fill lock"),
        ("neg:", "negative cache (Bloom)"),
        ("jobs:", "job lock"),
    ):
        if rest.startswith(start):
            return name
    return "other"


def scan_ttls(client: Any, prefix: str, progress: Any = None) -> TtlScan:
    """SCAN every key and PTTL each (pipelined); keys with no expiry are listed."""
    out = TtlScan()
    t0 = time.monotonic()
    batch: list[bytes] = []
    permanent = {(prefix + name).encode() for name in BOOKKEEPING}
    last_report = t0

    def check() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.pttl(key)
        for key, ttl in zip(batch, pipe.execute(), strict=True):
            if ttl == -2:  # expired between SCAN and PTTL: it had a TTL
                continue
            text = key.decode("utf-8", "replace")
            out.keys += 1
            kind = kind_of(text, prefix)
            out.kinds[kind] += 1
            if kind == "cache entry":
                out.entries += 1
            if ttl == -1 and key not in permanent:
                out.without_ttl.append(text)

    for key in client.scan_iter(count=10000):
        batch.append(key)
        if len(batch) >= 10000:
            check()
            batch.clear()
            now = time.monotonic()
            if progress is not None and now - last_report >= 10:
                progress(f"scanned {out.keys:,} keys ...")
                last_report = now
    if batch:
        check()
    out.seconds = time.monotonic() - t0
    return out
