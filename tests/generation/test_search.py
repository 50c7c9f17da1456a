"""The search loops beyond parity: seeds, regrouping into batches, and rows that leave a running batch."""

import pytest
import torch

from tests.helpers import source_batch


def test_sampling_seed_is_reproducible(marian):
    model, _, _ = marian
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=3)
    a = model.generate(ids, mask, do_sample=True, top_k=0, seed=11)
    b = model.generate(ids, mask, do_sample=True, top_k=0, seed=11)
    c = model.generate(ids, mask, do_sample=True, top_k=0, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_small_batches_equal_one_batch(marian):
    """Regrouping by length (max_batch_size, max_batch_tokens) gives the same tensor as one batch."""
    model, _, _ = marian
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=9)
    whole = model.generate(ids, mask, num_beams=3, max_batch_size=None)
    assert torch.equal(model.generate(ids, mask, num_beams=3, max_batch_size=2), whole)
    assert torch.equal(model.generate(ids, mask, num_beams=3, max_batch_tokens=20), whole)


@pytest.mark.parametrize(
    "kwargs", [dict(num_beams=1), dict(num_beams=3), dict(num_beams=1, num_return_sequences=2, do_sample=True)]
)
def test_abandoned_rows_leave_without_changing_the_others(marian, kwargs):
    """generate_rows(abandoned=...) drops the named inputs from the running batch (a server's client left);
    every other input gets exactly the result it gets without the drop."""
    model, _, _ = marian
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=6)
    rows = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
    full = model.generate_rows(rows, seed=3, **kwargs)
    calls = []

    def abandoned():
        calls.append(1)
        return {0, 4} if len(calls) > 2 else set()

    dropped = model.generate_rows(rows, seed=3, abandoned=abandoned, **kwargs)
    assert calls
    for i in range(len(rows)):
        if i in (0, 4):
            assert all(len(a) <= len(b) for a, b in zip(dropped[i], full[i]))
        else:  # sampling draws noise for the whole batch, so the others keep their random stream too
            assert all(torch.equal(a, b) for a, b in zip(dropped[i], full[i]))


def test_row_hooks_map_rows_through_every_regrouping():
    """A caller's rows seen through two selections (a batch of inputs, then sampled copies of each)."""
    from turboseq.generation.batching import RowHooks

    streamed = []
    hooks = RowHooks(
        abandoned=lambda: {7}, on_tokens=lambda rows, tokens: streamed.append((rows.tolist(), tokens.tolist()))
    )
    batch = hooks.select([7, 3, 5])  # batch row j = caller row [7, 3, 5][j]
    copies = batch.select(torch.tensor([0, 0, 1, 1, 2, 2]))  # two sampled rows per input
    assert copies.gone(torch.tensor([0, 1, 2, 5])).tolist() == [True, True, False, False]
    copies.emit(torch.tensor([2, 4]), torch.tensor([11, 12]))
    assert streamed == [([3, 5], [11, 12])]
    assert RowHooks().gone(torch.tensor([0, 1])) is None and RowHooks().lost() == set()


def test_processors_declare_what_greedy_screening_needs():
    """Greedy's exact shortcut needs processors that only ban or force tokens; the others make it fall back."""
    from turboseq.generation import processors as p

    assert p.only_bans(
        [
            p.NoRepeatNGram(2),
            p.BadWords([[3]], 10),
            p.MinLength(2, [0]),
            p.ForcedToken(1, 1),
            p.SuppressTokens([4]),
            p.LogSoftmax(),
        ]
    )
    for proc in (p.RepetitionPenalty(1.2), p.Temperature(0.5), p.TopK(5), p.TopP(0.9), p.TimestampRules(5, 4, 1, None)):
        assert not p.only_bans([p.MinLength(2, [0]), proc]), proc
    assert [type(x).__name__ for x in (p.LogSoftmax(),) if x.argmax_invariant] == ["LogSoftmax"]
    assert not p.RepetitionPenalty(1.2).argmax_invariant


@pytest.mark.parametrize("n, nb, vocab, k", [(3, 5, 51864, 10), (2, 4, 7, 8), (1, 1, 100, 2), (4, 2, 30, 6)])
def test_beam_candidates_equal_one_topk_over_every_beam(n, nb, vocab, k):
    """The two-round candidate pick (best k per beam, then of those) returns torch.topk's values and indices
    over each sentence's nb * vocab scores, -inf (banned tokens) included."""
    from turboseq.generation.search import _top_candidates

    g = torch.Generator().manual_seed(n * 1000 + vocab)
    scores = torch.randn(n, nb * vocab, generator=g)
    scores[:, ::3] = float("-inf")
    values, idx = _top_candidates(scores, nb, vocab, k)
    expected_values, expected_idx = torch.topk(scores, k)
    assert torch.equal(values, expected_values)
    finite = expected_values.isfinite()
    assert torch.equal(idx[finite], expected_idx[finite])
    assert torch.equal(scores.gather(1, idx), values)
