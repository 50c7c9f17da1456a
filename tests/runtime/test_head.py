"""The LM head's exact greedy shortcut: a bfloat16 screen with a proven error bound, then float32 on the
candidates, must give the float32 argmax."""

import pytest
import torch

from tests.helpers import source_batch


def _reference(ref, ids, mask, **kwargs):
    with torch.no_grad():
        return ref.generate(ids, attention_mask=mask, **kwargs)


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


def test_screening_bound_holds_on_random_hidden_states(marian, monkeypatch):
    """For arbitrary hidden states, every token outside the candidate set is provably below the winner:
    check the bound directly against float32 logits."""
    model, _, _ = marian
    head = model.head
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, model.spec.d_model, generator=g) * 3
    exact = head.logits(h)
    hb = h.to(torch.bfloat16)
    approx = torch.nn.functional.linear(hb, head.weight_bf16).float() + head.lin.bias
    err = (
        h.norm(dim=1, keepdim=True) * (head.rounding + head.slack)
        + (h - hb.float()).norm(dim=1, keepdim=True) * head.norm_bf16
    )
    assert ((approx - exact).abs() <= err).all()
    monkeypatch.setattr(type(head), "MAX_CANDIDATE_FRACTION", 1.0)
    ids = torch.zeros((32, 1), dtype=torch.long)
    assert torch.equal(head.greedy(h, ids, lambda i, x: x), exact.argmax(-1))
