"""A short request sent while a long batch runs: how long it takes, against the same request on an idle server.

    python -m turboseq.bench.joinlatency [--model DIR] [--long-inputs 1] [--long-tokens 200] [--rounds 3]

Starts the server (the opus-mt-shaped bench model by default) with continuous batching and, for comparison,
without it (``--no-continuous-batching``). Per server: the short request's latency idle (best of five), then
``--rounds`` times: a long beam-4 request (``--long-inputs`` sentences, ``--long-tokens`` forced new tokens), and
1.5 s into it the short one (4 new tokens, beam 4); its latency, whether it came before the long one ended, and
whether its answer equals the idle one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from turboseq.serving.process import ServerProcess

SHORT = {"inputs": "Good morning.", "parameters": {"num_beams": 4, "max_new_tokens": 4, "min_new_tokens": 4}}


def _long(inputs: int, tokens: int) -> dict:
    return {
        "inputs": ["The committee will publish its final report next spring."] * inputs,
        "parameters": {"num_beams": 4, "max_new_tokens": tokens, "min_new_tokens": tokens},
    }


async def _timed(client, url: str, body: dict) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = await client.post(url + "/", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()


async def _measure(url: str, long_body: dict, rounds: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        idle = []
        for _ in range(5):
            seconds, answer = await _timed(client, url, SHORT)
            idle.append(seconds)
        runs = []
        for _ in range(rounds):
            long = asyncio.create_task(_timed(client, url, long_body))
            await asyncio.sleep(1.5)
            seconds, joined = await _timed(client, url, SHORT)
            before_end = not long.done()
            long_seconds, _ = await long
            runs.append(
                dict(short_s=seconds, before_long_ended=before_end, equal=joined == answer, long_s=long_seconds)
            )
    return dict(idle_s=min(idle), runs=runs)


def run(model_dir: Path, continuous: bool, long_inputs: int, long_tokens: int, rounds: int) -> dict:
    server = ServerProcess(model_dir, *(() if continuous else ("--no-continuous-batching",)), capture=False)
    try:
        result = asyncio.run(_measure(server.url, _long(long_inputs, long_tokens), rounds))
    finally:
        server.stop()
    best = min(r["short_s"] for r in result["runs"])
    return dict(
        result, continuous=continuous, long_inputs=long_inputs, long_tokens=long_tokens, ratio=best / result["idle_s"]
    )


def format_results(results: list[dict]) -> str:
    lines = [
        "| batching | long request | short idle ms | short during the long one, ms (best / worst) | x idle | "
        "before it ended | equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        shorts = [x["short_s"] * 1e3 for x in r["runs"]]
        lines.append(
            f"| {'continuous' if r['continuous'] else 'request'} | {r['long_inputs']} x beam 4 x "
            f"{r['long_tokens']} tokens | {r['idle_s'] * 1e3:.0f} | {min(shorts):.0f} / {max(shorts):.0f} | "
            f"{r['ratio']:.2f} | {sum(x['before_long_ended'] for x in r['runs'])}/{len(r['runs'])} | "
            f"{sum(x['equal'] for x in r['runs'])}/{len(r['runs'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from turboseq.bench.models import bench_model_dir

    parser = argparse.ArgumentParser(prog="python -m turboseq.bench.joinlatency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the opus-mt-shaped bench model)")
    parser.add_argument("--long-inputs", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--long-tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench-out/joinlatency.json")
    args = parser.parse_args(argv)
    model_dir = Path(args.model) if args.model else bench_model_dir("marian")
    results = []
    for continuous in (True, False):
        for inputs in args.long_inputs:
            results.append(run(model_dir, continuous, inputs, args.long_tokens, args.rounds))
            print(json.dumps(results[-1]), flush=True)
    print("\n" + format_results(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(x["equal"] for r in results for x in r["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
