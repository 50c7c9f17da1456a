"""The load tests' normal clients: single sentences sent back to back, answers checked, RSS sampled."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def requests_of(sentences: list[str], params: dict | list[dict]) -> list[tuple[str, int]]:
    """The (sentence, parameter set) pairs the clients send, in order: request i is sentence i and parameter set i
    (each list cycled), so the pairs repeat after the least common multiple of the two lengths."""
    mix = params if isinstance(params, list) else [params]
    return [(sentences[i % len(sentences)], i % len(mix)) for i in range(math.lcm(len(sentences), len(mix)))]


async def normal_load(
    url: str, sentences: list[str], expected: dict, params: dict | list[dict], clients: int, seconds: float, pid: int
) -> dict:
    """``clients`` clients for ``seconds``; ``params``: every request's generation parameters, or a list of
    parameter sets (``requests_of``), then ``expected`` is keyed by (sentence, index of its parameter set)."""
    import httpx

    rss_samples = []

    async def sample_rss():
        while True:
            rss_samples.append(round(rss_mb(pid), 1))
            await asyncio.sleep(seconds / 10)

    latencies, errors, mismatches, by_set = [], 0, 0, {}
    pairs, mix = requests_of(sentences, params), params if isinstance(params, list) else [params]
    stop = time.perf_counter() + seconds

    async def client(k: int, http: httpx.AsyncClient):
        nonlocal errors, mismatches
        i = k
        while time.perf_counter() < stop:
            text, p = pairs[i % len(pairs)]
            key = (text, p) if isinstance(params, list) else text
            i += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/", json={"inputs": text, "parameters": mix[p]})
            except httpx.HTTPError:
                errors += 1
                continue
            if r.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            by_set.setdefault(p, []).append(latencies[-1])
            if r.json()[0] != expected[key]:
                mismatches += 1

    start = time.perf_counter()
    sampler = asyncio.create_task(sample_rss())
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    sampler.cancel()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return dict(
        requests=len(latencies),
        seconds=wall,
        requests_per_s=len(latencies) / wall,
        p50_s=q[49],
        p95_s=q[94],
        p99_s=q[98],
        errors=errors,
        mismatches=mismatches,
        rss_samples_mb=rss_samples,
        # per parameter set: requests, p50 and p99 seconds
        by_parameters={
            p: dict(requests=len(v), p50_s=statistics.median(v), p99_s=max(v) if len(v) < 100 else _p99(v))
            for p, v in sorted(by_set.items())
        },
    )


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]
