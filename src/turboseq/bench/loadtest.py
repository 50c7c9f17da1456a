"""Load test for `turboseq serve`: N concurrent clients for T seconds against a server on a loopback port.

    python -m turboseq.bench.loadtest [--model DIR] [--clients 16] [--seconds 30] [--mix]
        [--batching continuous|request|off|both|all]
    python -m turboseq.bench.loadtest --soak [--seconds 60]     (normal load with and without hostile traffic)

Starts the server (the opus-mt-shaped bench model by default), asks it for every sentence's answer alone,
then lets the clients send single sentences back to back (``--mix``: with mixed lengths and beams). Batching:
``continuous`` (the server's default: requests join the running batch), ``request`` (request-level:
``--no-continuous-batching``), ``off`` (``--no-batching``); ``both`` runs the first two, ``all`` the three. Reports throughput, p50/p95/p99 latency, errors,
answers that differ from the single-request answer, and the server's RSS (sampled ten times during the run)
from before the load to after it. Bounded: it stops
by itself after ``--seconds`` and stops the server with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from turboseq.bench.clients import normal_load, requests_of, rss_mb
from turboseq.serving.process import ServerProcess

MODES = {"continuous": (), "request": ("--no-continuous-batching",), "off": ("--no-batching",)}
# --mix: short and long answers, greedy and beam search (lengths forced where the random weights would stop early)
MIX = [
    {"num_beams": 4, "max_new_tokens": 32},
    {"num_beams": 1, "max_new_tokens": 8},
    {"num_beams": 4, "max_new_tokens": 64, "min_new_tokens": 48},
    {"num_beams": 1, "max_new_tokens": 32, "min_new_tokens": 24},
    {"num_beams": 2, "max_new_tokens": 16},
]


def run(
    model_dir: Path,
    clients: int,
    seconds: float,
    batching: str,
    params: dict | list[dict],
    sentences: list[str],
    server_args: tuple[str, ...] = (),
    expected: dict | None = None,
) -> dict:
    """One server (``turboseq serve`` with ``server_args``, batching as ``MODES[batching]``) under ``clients``
    clients for ``seconds``. Answers are checked against ``expected`` (sentence, or (sentence, parameter set) with
    a list of them -> answer), by default each request's answer alone from this server."""
    import httpx

    server = ServerProcess(model_dir, *MODES[batching], *server_args, capture=False)
    url = server.url
    try:
        alone = {}
        mix = params if isinstance(params, list) else [params]
        for text, p in dict.fromkeys(requests_of(sentences, params)):  # every answer alone, before any load
            r = httpx.post(url + "/", json={"inputs": text, "parameters": mix[p]}, timeout=120)
            if r.status_code != 200:
                raise RuntimeError(f"single request failed ({r.status_code}): {r.text}")
            alone[(text, p) if isinstance(params, list) else text] = r.json()[0]
        expected = expected or alone
        rss_before = rss_mb(server.pid)  # the server as it is once ready (it warms itself up)
        result = asyncio.run(normal_load(url, sentences, expected, params, clients, seconds, server.pid))
        rss_after = rss_mb(server.pid)
    finally:
        code = server.stop()
    result.update(
        batching=batching,
        clients=clients,
        mixed=isinstance(params, list),
        answers_alone={f"{k[0]} | {mix[k[1]]}" if isinstance(k, tuple) else k: v for k, v in alone.items()},
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        rss_max_mb=max(result["rss_samples_mb"] + [rss_after]),
        rss_growth=(rss_after - rss_before) / rss_before,
        exit_code=code,
    )
    return result


def format_results(results: list[dict]) -> str:
    head = (
        "| batching | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors | mismatches | "
        "RSS before / max / after MB | RSS growth |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in results:
        lines.append(
            f"| {r['batching']}{' (mixed)' if r.get('mixed') else ''} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.1f} | "
            f"{r['p50_s'] * 1e3:.0f} | {r['p95_s'] * 1e3:.0f} | {r['p99_s'] * 1e3:.0f} | {r['errors']} | "
            f"{r['mismatches']} | {r['rss_before_mb']:.0f} / {r['rss_max_mb']:.0f} / {r['rss_after_mb']:.0f} | "
            f"{r['rss_growth'] * 100:+.1f}% |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from turboseq.bench.models import bench_model_dir, bench_sentences

    parser = argparse.ArgumentParser(prog="python -m turboseq.bench.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the opus-mt-shaped bench model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--calm-seconds", type=float, help="--soak: the normal-load-only phase (default: --seconds)")
    parser.add_argument("--batching", choices=[*MODES, "both", "all"], default="both")
    parser.add_argument(
        "--parameters",
        default='{"num_beams": 4, "max_new_tokens": 32}',
        help="generation parameters of every request, JSON (a list: request i takes item i, cycled)",
    )
    parser.add_argument("--mix", action="store_true", help="requests of mixed lengths and beams (the list MIX)")
    parser.add_argument("--out", default="bench-out/loadtest.json")
    parser.add_argument(
        "--soak",
        action="store_true",
        help="normal load alone, then beside hostile traffic, on one server (turboseq.bench.soak)",
    )
    args = parser.parse_args(argv)
    model_dir = Path(args.model) if args.model else bench_model_dir("marian")
    params = MIX if args.mix else json.loads(args.parameters)
    if args.soak:
        from turboseq.bench.soak import format_soak, passed, run_soak

        report = run_soak(model_dir, args.clients, args.seconds, params, bench_sentences(), args.calm_seconds)
        print(json.dumps(report), flush=True)
        print("\n" + format_soak(report))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_name("soak.json").write_text(json.dumps(report, indent=2))
        return 0 if passed(report) else 1
    modes = {"both": ["continuous", "request"], "all": list(MODES)}.get(args.batching, [args.batching])
    results = []
    for batching in modes:
        r = run(model_dir, args.clients, args.seconds, batching, params, bench_sentences())
        print(json.dumps({k: v for k, v in r.items() if k != "answers_alone"}), flush=True)
        results.append(r)
    table = format_results(results)
    print("\n" + table)
    for r in results[1:]:
        ratio = results[0]["requests_per_s"] / r["requests_per_s"]
        print(f"\n{results[0]['batching']} / {r['batching']} throughput: {ratio:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["errors"] == 0 and r["mismatches"] == 0 and r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
