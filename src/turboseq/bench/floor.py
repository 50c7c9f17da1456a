"""How far a decode step is from its GEMM floor (``turboseq bench --floor``).

The floor of one greedy decode step at ``rows`` rows is the time its linears take stand-alone: every linear the
step runs (self-attention q/k/v and output, cross-attention query and output, the feed-forward products, the LM
head; not the cross-attention K/V, computed once per sentence) timed on its own, prepared as the model holds it
(packed, in the model's compute type), on a [rows, in_features] input. The step is measured in the engine: the
time of ``new_tokens`` greedy tokens minus that of one, over ``new_tokens - 1``. Their ratio is what attention,
the vocabulary-wide work and per-operator overhead add on top of the products.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from turboseq.runtime.layers import linear
from turboseq.runtime.spec import Linear


@dataclass(frozen=True)
class Floor:
    rows: int
    flops: float  # of the step's linears
    floor_s: float  # their stand-alone time
    step_s: float  # one decode step in the engine

    @property
    def ratio(self) -> float:
        return self.step_s / self.floor_s

    def text(self) -> str:
        return (
            f"{self.rows} rows: step {self.step_s * 1e3:.2f} ms, GEMM floor {self.floor_s * 1e3:.2f} ms "
            f"({self.flops / 1e9:.2f} GFLOP at {self.flops / self.floor_s / 1e9:.0f} GFLOP/s stand-alone): "
            f"{self.ratio:.1f}x the floor"
        )


def step_linears(spec) -> list[Linear]:
    """The linears one decode step runs, in order (the LM head last)."""
    out = []
    for layer in spec.decoder.layers:
        out += [layer.self_attn.qkv, layer.self_attn.out]
        if layer.cross_attn is not None:
            out += [layer.cross_attn.q, layer.cross_attn.out]
        ffn = layer.ffn
        out += [ffn.fc1, *([ffn.up] if ffn.up is not None else []), ffn.fc2]
    return out + [spec.lm_head]


def _median(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def gemm_floor(spec, rows: int, runs: int = 20) -> tuple[float, float]:
    """(FLOPs, seconds) of the step's linears at ``rows`` rows, each timed alone (median of ``runs``)."""
    flops = seconds = 0.0
    timed: dict[tuple, float] = {}
    for lin in step_linears(spec):
        out_features, in_features = lin.weight.shape
        key = (id(lin.packed), id(lin.weight))
        if key not in timed:
            x = torch.randn(rows, in_features)
            timed[key] = _median(lambda x=x, lin=lin: linear(x, lin), runs)
        flops += 2.0 * rows * in_features * out_features
        seconds += timed[key]
    return flops, seconds


@torch.inference_mode()
def measure(model, input_ids, attention_mask, new_tokens: int = 32, runs: int = 3) -> Floor:
    """The greedy decode step of ``model`` on this batch against its GEMM floor."""

    def tokens(n: int):
        return lambda: model.generate(
            input_ids, attention_mask, num_beams=1, min_new_tokens=n, max_new_tokens=n, max_batch_size=None
        )

    whole = min(_median(tokens(new_tokens), 1) for _ in range(runs))
    first = min(_median(tokens(1), 1) for _ in range(runs))
    step = (whole - first) / (new_tokens - 1)
    flops, floor = gemm_floor(model.spec, input_ids.shape[0])
    return Floor(input_ids.shape[0], flops, floor, step)
