"""Ray Serve against the plain server, under the load test's clients, one configuration after another:

    python -m turboseq.bench.rayserve [--model DIR] [--clients 16] [--seconds 30] [--repeats 2]

Configurations: ``turboseq serve`` (one process, torch's default threads: one per core), and ``turboseq serve
--ray`` with 1 replica x 2 CPUs (2 threads) and with 2 replicas x 1 CPU (1 thread each). Every answer is
checked against the plain server's answer to the sentence sent alone. Reports throughput, latency
percentiles, errors and wrong answers per run, and each Ray configuration's throughput relative to the plain
server measured in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

CONFIGS = {
    "plain": (),
    "ray 1x2": ("--ray", "--replicas", "1", "--num-cpus-per-replica", "2"),
    "ray 2x1": ("--ray", "--replicas", "2", "--num-cpus-per-replica", "1"),
}


def run_rounds(model_dir: Path, clients: int, seconds: float, repeats: int, params: dict) -> list[dict]:
    from turboseq.bench.loadtest import run
    from turboseq.bench.models import bench_sentences

    sentences = bench_sentences()
    results, expected = [], None
    for round_ in range(repeats):
        for name, args in CONFIGS.items():
            r = run(model_dir, clients, seconds, True, params, sentences, server_args=args, expected=expected)
            alone = r.pop("answers_alone")
            expected = expected or alone  # the plain server's answers alone, for every later run
            r.update(config=name, round=round_)
            print(json.dumps({k: v for k, v in r.items() if k != "rss_samples_mb"}), flush=True)
            results.append(r)
    return results


def format_table(results: list[dict]) -> str:
    lines = [
        "| configuration | threads | req/s (runs) | vs plain, same round | p50 ms | p95 ms | errors | wrong answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    plain = {r["round"]: r["requests_per_s"] for r in results if r["config"] == "plain"}
    threads = {"plain": "2 (one process)", "ray 1x2": "1 replica x 2", "ray 2x1": "2 replicas x 1"}
    for name in CONFIGS:
        runs = [r for r in results if r["config"] == name]
        rates = [r["requests_per_s"] for r in runs]
        ratios = [r["requests_per_s"] / plain[r["round"]] for r in runs]
        lines.append(
            f"| {name} | {threads[name]} | {' / '.join(f'{x:.1f}' for x in rates)} | "
            + (f"{min(ratios):.2f}-{max(ratios):.2f}x" if name != "plain" else "1.00x")
            + f" | {statistics.median(r['p50_s'] for r in runs) * 1e3:.0f} | "
            f"{statistics.median(r['p95_s'] for r in runs) * 1e3:.0f} | {sum(r['errors'] for r in runs)} | "
            f"{sum(r['mismatches'] for r in runs)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from turboseq.bench.models import bench_model_dir

    parser = argparse.ArgumentParser(prog="python -m turboseq.bench.rayserve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the opus-mt-shaped bench model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parameters", default='{"num_beams": 4, "max_new_tokens": 32}')
    parser.add_argument("--out", default="bench-out/rayserve.json")
    args = parser.parse_args(argv)
    model_dir = Path(args.model) if args.model else bench_model_dir("marian")
    results = run_rounds(model_dir, args.clients, args.seconds, args.repeats, json.loads(args.parameters))
    print("\n" + format_table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["errors"] == 0 and r["mismatches"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
