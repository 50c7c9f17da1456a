"""Timing one benchmark cell."""

from __future__ import annotations

import statistics
import time

import torch

from turboseq.runtime.cpu import cpu_info


def machine() -> str:
    """The CPU, its capability and the threads: the line every bench prints first and writes with its tables."""
    return f"cpu: {cpu_info().describe()} | threads: {torch.get_num_threads()}"


def median_seconds(fn, min_runs: int, min_seconds: float) -> float:
    """Median wall time of ``fn()`` over at least ``min_runs`` runs and ``min_seconds``, after one warm-up run."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
