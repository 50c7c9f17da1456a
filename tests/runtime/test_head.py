"""The LM head's exact greedy shortcut: a bfloat16 screen with a proven error bound, then float32 on the
candidates, must give the float32 argmax."""

import pytest
import torch

from tests.helpers import source_batch
from turboseq.runtime.packed import fast_bf16

# the screen runs where bfloat16 products are native (AVX-512, AMX); an AVX2-only CPU computes the float32 head
needs_screen = pytest.mark.skipif(not fast_bf16("cpu"), reason="no native bfloat16 products: no screen")


def _reference(ref, ids, mask, **kwargs):
    with torch.no_grad():
        return ref.generate(ids, attention_mask=mask, **kwargs)


@needs_screen
@pytest.mark.parametrize("kwargs", [dict(), dict(no_repeat_ngram_size=2, min_new_tokens=5, renormalize_logits=True)])
def test_screened_greedy_is_exact(marian, monkeypatch, kwargs):
    """Greedy's bfloat16 screening (LMHead.greedy) must give the float32 argmax. The small test vocabulary
    usually makes screening fall back to the full product, so allow any candidate count here."""
    from turboseq.runtime.head import LMHead

    model, ref, _ = marian
    monkeypatch.setattr(LMHead, "MAX_CANDIDATE_FRACTION", 1.0)
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=4)
    model.head.screened_steps = 0
    got = model.generate(ids, mask, num_beams=1, **kwargs)
    assert model.head.screened_steps > 0
    assert torch.equal(got, _reference(ref, ids, mask, num_beams=1, **kwargs))


@needs_screen
def test_screening_bound_holds_on_random_hidden_states(marian, monkeypatch):
    """For arbitrary hidden states, every token outside the candidate set is provably below the winner:
    check the bound directly against float32 logits."""
    model, _, _ = marian
    head = model.head
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, model.spec.d_model, generator=g) * 3
    exact = head.logits(h)
    hb = h.to(torch.bfloat16)
    screen = head.lin_bf16
    weight_bf16 = screen.weight if screen.packed is None else screen.packed.to_dense()
    approx = torch.nn.functional.linear(hb, weight_bf16).float() + head.lin.bias
    err = (
        h.norm(dim=1, keepdim=True) * (head.rounding + head.slack)
        + (h - hb.float()).norm(dim=1, keepdim=True) * head.norm_bf16
    )
    assert ((approx - exact).abs() <= err).all()
    monkeypatch.setattr(type(head), "MAX_CANDIDATE_FRACTION", 1.0)
    ids = torch.zeros((32, 1), dtype=torch.long)
    assert torch.equal(head.greedy(h, ids, lambda i, x: x), exact.argmax(-1))


def _hard_rows(columns: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """64 rows of scores with what a vocabulary-wide reduction can get wrong: the maximum repeated (in one
    block, across blocks, in the columns after the last whole block), -inf bans, NaN, a row of all -inf."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(64, columns, generator=g) * 3).to(dtype)
    x[:, ::7] = float("-inf")
    top = x.max().item() + 1
    x[1, [5, 300]] = top  # the same maximum in two blocks
    x[2, [700, columns - 1]] = top  # in a block and in the tail
    x[3, columns - 2] = top  # in the tail only
    x[4, [3000, 3001]] = top  # twice in one block
    x[5, [10, columns - 3]] = float("nan")  # NaN counts as the largest
    x[6, columns - 1] = float("nan")
    x[6, 12] = top
    x[7] = float("-inf")
    return x


@pytest.mark.parametrize("columns", [58101, 32128, 50257, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_rows_is_argmax(columns, dtype):
    """The blocked argmax returns ``argmax(dim=-1)``'s index on every row: first index on ties, NaN first,
    vocabularies that are and are not a multiple of the block, few and many rows."""
    from turboseq.runtime.head import argmax_rows

    x = _hard_rows(columns, dtype, seed=columns)
    assert torch.equal(argmax_rows(x), x.argmax(dim=-1))
    assert torch.equal(argmax_rows(x[:3].contiguous()), x[:3].argmax(dim=-1))
    assert torch.equal(argmax_rows(x[:, : columns - 5]), x[:, : columns - 5].argmax(dim=-1))  # a strided view


@pytest.mark.parametrize("k", [1, 8, 20])
@pytest.mark.parametrize("columns", [58101, 50257, 5000])
def test_top_k_rows_is_topk(k, columns):
    """The blocked top-k returns ``torch.topk``'s values in order and, on rows where none of them is repeated,
    its indices; the indices always point at the values."""
    from turboseq.runtime.head import top_k_rows

    x = _hard_rows(columns, torch.float32, seed=k)
    x = x[~x.isnan().any(dim=1)]  # NaN rows: topk ranks NaN first too, but their order is not comparable
    values, index = top_k_rows(x, k)
    expected_values, expected_index = torch.topk(x, k)
    assert torch.equal(values, expected_values)
    assert torch.equal(x.gather(1, index), values)
    # rows where each of the k values occurs once in the whole row
    distinct = torch.tensor(
        [int(torch.isin(row, top).sum()) == top.unique().numel() == k for row, top in zip(x, values)]
    )
    distinct &= expected_values.isfinite().all(dim=1)
    assert torch.equal(index[distinct], expected_index[distinct])
    assert distinct.sum() >= x.shape[0] - 8


def test_no_screen_without_native_bfloat16(marian, monkeypatch):
    """A CPU without native bfloat16 products (AVX2 only) gets no screen: greedy takes the float32 product and
    loading a float32 model does not ask oneDNN for bfloat16 kernels it lacks (it refused: "bf16 path needs the
    cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq")."""
    import turboseq

    _, ref, path = marian
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    plain = turboseq.load(path)
    assert not plain.head.screen and plain.head.panels.screen is None
    ids, mask = source_batch(plain.spec.vocab_size, plain.spec.pad_token_id, seed=4)
    assert torch.equal(plain.generate(ids, mask, num_beams=1), _reference(ref, ids, mask, num_beams=1))
    assert plain.head.screened_steps == 0
