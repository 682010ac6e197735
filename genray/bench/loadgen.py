"""A load generator that costs its server little CPU: one asyncio process, aiohttp, one keep-alive
connection per simulated client, closed-loop (each client sends its next request when the last
answer is in). Run as its own process so that it never shares an interpreter (or a GIL) with a
server under test:

    python -m genray.bench.loadgen URL --body '{"n": 1}' --requests 2000 --concurrency 32

prints one JSON object: requests, errors (non-200 or exception, by kind), wall seconds,
throughput, and p50/p99/mean latency in ms. A `seed` field in the body is replaced by the
request's index, so seeded endpoints do different work for each request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarise(latencies: list[float], errors: list[str], total: int, concurrency: int, wall: float) -> dict[str, Any]:
    ms = [1000 * v for v in latencies]
    return {
        "requests": total,
        "concurrency": concurrency,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 1) if wall > 0 else None,
        "p50_ms": round(percentile(ms, 50), 2) if ms else None,
        "p99_ms": round(percentile(ms, 99), 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
    }


async def _load(url: str, body: dict, total: int, concurrency: int, headers: dict[str, str],
                timeout_s: float) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    next_index = iter(range(total))
    seeded = "seed" in body
    payloads = [json.dumps({**body, "seed": i} if seeded else body).encode() for i in range(total)]
    headers = {"Content-Type": "application/json", **headers}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def client() -> None:
            for i in next_index:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=payloads[i], headers=headers) as response:
                        await response.read()
                        ok, what = response.status == 200, str(response.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    ok, what = False, type(err).__name__
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors.append(what)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, errors, wall


def load(url: str, body: dict, *, total: int, concurrency: int, warmup: int = 0,
         headers: dict[str, str] | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
    """`warmup` requests first (not counted), then `total` from `concurrency` clients."""
    headers = headers or {}
    if warmup:
        asyncio.run(_load(url, body, warmup, concurrency, headers, timeout_s))
    latencies, errors, wall = asyncio.run(_load(url, body, total, concurrency, headers, timeout_s))
    return summarise(latencies, errors, total, concurrency, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--body", default="{}", help="JSON request body")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE (repeatable)")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    print(json.dumps(load(args.url, json.loads(args.body), total=args.requests, concurrency=args.concurrency,
                          warmup=args.warmup, headers=headers)))


if __name__ == "__main__":
    main()
