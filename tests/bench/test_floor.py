"""The GEMM floor of a decode step (``bench.floor``): the linears one greedy step runs, their FLOPs, and the step
measured in the engine."""

import torch

from tests.helpers import source_batch
from turboseq.bench import floor


def test_the_floor_counts_every_linear_of_a_step_once_per_use(marian_one):
    model, _ = marian_one
    spec = model.spec
    lins = floor.step_linears(spec)
    layers = len(spec.decoder.layers)
    assert len(lins) == 6 * layers + 1 and lins[-1] is spec.lm_head  # q/k/v, out, cross q, cross out, fc1, fc2
    assert not any(lin is layer.cross_attn.kv for layer in spec.decoder.layers for lin in lins)
    rows = 5
    flops, seconds = floor.gemm_floor(spec, rows, runs=2)
    assert flops == sum(2 * rows * lin.weight.shape[0] * lin.weight.shape[1] for lin in lins)
    assert seconds > 0


def test_the_step_is_measured_in_the_engine(marian_one):
    model, _ = marian_one
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=1)
    result = floor.measure(model, ids, mask, new_tokens=4, runs=1)
    assert result.rows == ids.shape[0] and result.step_s > 0 and result.ratio == result.step_s / result.floor_s
    assert result.text().startswith(f"{ids.shape[0]} rows: step ") and "x the floor" in result.text()
    assert torch.is_inference_mode_enabled() is False
