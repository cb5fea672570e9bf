"""Noisy neighbours: does one tenant, or one dead upstream, slow down everybody else?

Starts the example upstream, an upstream that accepts connections and never answers (a "black
hole"), and Heliox in embedded mode. Then, for each scenario, it measures another tenant's
requests to another route (`--probes` of them, sent together) while the noise is in flight:

  baseline  no noise
  uploads   `--uploads` slow uploads with ONE key (each sends 1 byte every 2 s)
  hung      `--hung` requests to a route whose upstream never answers (spread over 4 keys)

The other tenant's route is a pass-through route on the example upstream, so every probe goes
upstream. A probe that gets no answer within `--probe-timeout` seconds counts as that timeout.

    .venv/bin/python bench/noisy_neighbour.py                     # about a minute
    .venv/bin/python bench/noisy_neighbour.py --env UPSTREAM_POOL_TIMEOUT=1

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway
from benchkit.procs import Processes, exit_on_signals, wait_until
from benchkit.swr import percentile

UPLOAD_ROUTE = "nn-upload"
HUNG_ROUTE = "nn-hung"
OTHER_ROUTE = "nn-other"
UPLOAD_BYTES = 1000  # declared; a byte every 2 s keeps each upload open for the whole run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--uploads", type=int, default=260, help="slow uploads with one key (260)")
    p.add_argument("--hung", type=int, default=300, help="requests to the dead upstream (300)")
    p.add_argument("--probes", type=int, default=10, help="other tenant's requests per case (10)")
    p.add_argument("--probe-timeout", type=float, default=30.0, help="seconds (30)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds for the noise to land (3)")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


# --- raw HTTP/1.1 on asyncio streams ------------------------------------------------------------
async def fetch(port: int, path: str, key: str, within: float) -> tuple[int, float]:
    """(status, seconds) of one GET on its own connection; status 0 when it timed out."""
    t0 = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await reader.read()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else -1
    except TimeoutError:
        status = 0
    except OSError:
        status = -1
    finally:
        if writer is not None:
            writer.close()
    return status, time.perf_counter() - t0


async def slow_upload(port: int, key: str, statuses: Counter[int], stop: asyncio.Event) -> None:
    """POST a body one byte every 2 s until `stop`; records the status if an answer comes."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        statuses[-1] += 1
        return
    try:
        writer.write(
            f"POST /g/{UPLOAD_ROUTE}/upload HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n"
            f"Content-Length: {UPLOAD_BYTES}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        read = asyncio.ensure_future(reader.read(12))
        while not stop.is_set() and not read.done():
            writer.write(b"x")
            with contextlib.suppress(OSError):
                await writer.drain()
            await asyncio.wait({read}, timeout=2.0)
        if read.done() and not read.cancelled() and read.exception() is None:
            head = read.result()
            statuses[int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else -1] += 1
        else:
            read.cancel()
            statuses[0] += 1  # still in flight when the case ended
    finally:
        writer.close()


async def black_hole(connections: list[asyncio.StreamWriter]) -> asyncio.Server:
    """A server that accepts, reads and never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            while await reader.read(65536):
                pass

    return await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)


# --- the cases ----------------------------------------------------------------------------------
async def probe(args: argparse.Namespace, port: int, key: str) -> dict[str, object]:
    results = await asyncio.gather(
        *(
            fetch(port, f"/g/{OTHER_ROUTE}/items", key, args.probe_timeout)
            for _ in range(args.probes)
        )
    )
    seconds = [s for _, s in results]
    return {
        "statuses": dict(Counter(st for st, _ in results)),
        "p50_s": round(percentile(seconds, 50), 4),
        "max_s": round(max(seconds), 4),
    }


async def noise_uploads(
    args: argparse.Namespace, port: int, keys: dict[str, str]
) -> dict[str, object]:
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()
    uploads = [
        asyncio.ensure_future(slow_upload(port, keys["noisy0"], statuses, stop))
        for _ in range(args.uploads)
    ]
    await asyncio.sleep(args.settle)
    result = await probe(args, port, keys["other"])
    stop.set()
    await asyncio.gather(*uploads)
    result["noise_statuses"] = dict(statuses)
    return result


async def noise_hung(
    args: argparse.Namespace, port: int, keys: dict[str, str]
) -> dict[str, object]:
    hung = [
        asyncio.ensure_future(fetch(port, f"/g/{HUNG_ROUTE}/x", keys[f"noisy{i % 4}"], 120))
        for i in range(args.hung)
    ]
    await asyncio.sleep(args.settle)
    result = await probe(args, port, keys["other"])
    # Those refused are answered by now; the rest wait for the read timeout: not worth waiting.
    await asyncio.wait(hung, timeout=args.settle + 5)
    noise: Counter[int | str] = Counter()
    for task in hung:
        noise[task.result()[0] if task.done() else "pending"] += 1
        task.cancel()
    result["noise_statuses"] = dict(noise)
    return result


async def no_noise(args: argparse.Namespace, port: int, keys: dict[str, str]) -> dict[str, object]:
    return await probe(args, port, keys["other"])


CASES = {"baseline": no_noise, "uploads": noise_uploads, "hung": noise_hung}


def prepare(gw: gateway.Gateway, urls: dict[str, str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for name, count in (("noisy", 4), ("other", 1)):
        tenant = gateway.admin(gw, "POST", "/admin/tenants", {"name": f"nn-{name}"})
        for i in range(count):
            key = gateway.admin(
                gw,
                "POST",
                "/admin/keys",
                {
                    "tenant_id": tenant["id"],
                    "name": f"{name}{i}",
                    "rate_limit_rps": 100_000,
                    "rate_limit_burst": 200_000,
                },
            )
            keys[name if count == 1 else f"{name}{i}"] = str(key["key"])
    for route, url in urls.items():
        gateway.admin(gw, "POST", "/admin/routes", {"name": route, "upstream_url": url})

    # Checked through the upload route: the other tenant's upstream starts with no idle
    # connection in the gateway's pool, as it would after a quiet spell.
    def live() -> bool:
        status, _ = asyncio.run(fetch(gw.port, f"/g/{UPLOAD_ROUTE}/items", keys["other"], 5))
        return status == 200

    wait_until(live, "routes and keys", timeout=30, interval=0.2)
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    extra = dict(item.split("=", 1) for item in args.env)
    workdir = Path(tempfile.mkdtemp(prefix="heliox-noisy-"))
    procs = Processes(workdir)
    results: dict[str, dict[str, object]] = {}
    try:
        upstream = gateway.start_upstream(procs, None)
        other = gateway.start_upstream(procs, None)

        async def one_case(case: str) -> dict[str, object]:
            connections: list[asyncio.StreamWriter] = []
            hole = await black_hole(connections)
            hole_port = hole.sockets[0].getsockname()[1]
            urls = {
                UPLOAD_ROUTE: upstream.url,
                HUNG_ROUTE: f"http://127.0.0.1:{hole_port}",
                OTHER_ROUTE: other.url,
            }
            # A fresh gateway per case: nothing one case leaves behind colours the next.
            gw = await asyncio.to_thread(gateway.start_gateway, procs, case, upstream, extra, None)
            try:
                keys = await asyncio.to_thread(prepare, gw, urls)
                return await CASES[case](args, gw.port, keys)
            finally:
                for w in connections:
                    w.transport.abort()
                hole.close()
                procs.stop(gw.proc)

        for case in CASES:
            results[case] = asyncio.run(one_case(case))
            for db in workdir.glob("heliox.db*"):
                db.unlink()
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'case':10} {'p50 s':>8} {'max s':>8}  other tenant  noise")
    for case, r in results.items():
        print(
            f"{case:10} {r['p50_s']:>8} {r['max_s']:>8}  {r['statuses']}  "
            f"{r.get('noise_statuses', '')}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
