"""``generate(..., return_dict_in_generate=True)``: transformers' output objects with equal scores, logits,
beam scores and beam indices, and ``compute_transition_scores`` equal to transformers', for every
encoder-decoder family, the decoder-only family and the real Whisper tiny.en.

Scores are compared with ``torch.allclose`` at 1e-5 relative to the step's largest finite score: the test
models' weights are drawn large (so that top-2 logits are far apart) and their logits reach about 50, where
float32 rounding alone differs by about 3e-5 between two summation orders.
"""

import pytest
import torch

from tests.generation.test_parity import _batch

CASES = {
    "greedy": dict(num_beams=1),
    "greedy-penalties": dict(num_beams=1, repetition_penalty=1.3, renormalize_logits=True),
    "beam4-nrs3": dict(num_beams=4, num_return_sequences=3),
    "beam3-es-true-lp0.7": dict(num_beams=3, early_stopping=True, length_penalty=0.7),
    "beam3-es-never-nrs2": dict(num_beams=3, early_stopping="never", num_return_sequences=2),
    "sample-top-k-nrs2": dict(do_sample=True, num_beams=1, top_k=10, num_return_sequences=2),
    "sample-top-p": dict(do_sample=True, num_beams=1, top_k=0, top_p=0.8, temperature=0.7),
}
FLAGS = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    finite = torch.isfinite(b)
    scale = max(1.0, float(b[finite].abs().max())) if finite.any() else 1.0
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def assert_same_output(got, expected, model, ref, per_hypothesis_scores=False):
    """``per_hypothesis_scores``: Whisper's beam scores are already picked per hypothesis, so transition scores
    are computed without beam indices (with them transformers' own call fails on its Whisper output)."""
    assert type(got).__name__ == type(expected).__name__
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) and len(got.logits) == len(expected.logits)
    assert all(_close(a, b) for a, b in zip(got.scores, expected.scores))
    assert all(_close(a, b) for a, b in zip(got.logits, expected.logits))
    beam = getattr(expected, "beam_indices", None)
    if beam is not None:
        assert got.beam_indices.dtype == beam.dtype and torch.equal(got.beam_indices, beam)
        assert torch.allclose(got.sequences_scores, expected.sequences_scores, atol=1e-5)
    beams = (None, None) if per_hypothesis_scores else (getattr(got, "beam_indices", None), beam)
    for normalize in (False, True):
        mine = model.compute_transition_scores(got.sequences, got.scores, beams[0], normalize)
        theirs = ref.compute_transition_scores(expected.sequences, expected.scores, beams[1], normalize)
        assert mine.shape == theirs.shape and _close(mine, theirs)


def _generate_both(model, ref, ids, mask, kwargs):
    torch.manual_seed(99)
    with torch.no_grad():
        expected = ref.generate(ids, attention_mask=mask, **kwargs, **FLAGS)
    torch.manual_seed(99)
    got = model.generate(ids, mask, **kwargs, **FLAGS)
    return got, expected


@pytest.mark.parametrize("case", list(CASES))
def test_seq2seq_outputs_match_transformers(seq2seq, case):
    name, model, ref, _ = seq2seq
    ids, mask = _batch(name, model, seed=5)
    got, expected = _generate_both(model, ref, ids, mask, dict(CASES[case], max_new_tokens=24))
    assert_same_output(got, expected, model, ref)
    # the tokens are those of the plain call
    torch.manual_seed(99)
    assert torch.equal(got.sequences, model.generate(ids, mask, max_batch_size=None, **CASES[case], max_new_tokens=24))


def _prompts(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.spec.vocab_size - 10, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[3, :5] = 0
    return ids.masked_fill(mask == 0, model.settings().pad_token_id), mask


@pytest.mark.parametrize("case", list(CASES))
def test_causal_outputs_match_transformers(causal, case):
    _, model, ref, _ = causal
    ids, mask = _prompts(model)
    got, expected = _generate_both(model, ref, ids, mask, dict(CASES[case], max_new_tokens=15))
    assert_same_output(got, expected, model, ref)


def test_beam_sampling_outputs_match_transformers(seq2seq, causal):
    """Beam sampling draws one noise tensor per step for the whole batch, kept while rows finish."""
    name, model, ref, _ = seq2seq
    ids, mask = _batch(name, model, seed=7)
    got, expected = _generate_both(
        model, ref, ids, mask, dict(do_sample=True, num_beams=2, top_k=10, max_new_tokens=16)
    )
    assert_same_output(got, expected, model, ref)
    _, model, ref, _ = causal
    ids, mask = _prompts(model)
    got, expected = _generate_both(
        model, ref, ids, mask, dict(do_sample=True, num_beams=2, top_k=10, max_new_tokens=12)
    )
    assert_same_output(got, expected, model, ref)


def test_return_dict_without_scores(marian):
    model, ref, _ = marian
    ids, mask = _batch("marian", model, seed=1)
    got = model.generate(ids, mask, num_beams=3, return_dict_in_generate=True)
    expected = ref.generate(ids, attention_mask=mask, num_beams=3, return_dict_in_generate=True)
    assert got.scores is None and got.logits is None and got.sequences_scores is None
    assert torch.equal(got.sequences, expected.sequences) and torch.equal(got.beam_indices, expected.beam_indices)
    # the flags alone (no return_dict_in_generate) change nothing, as in transformers
    plain = model.generate(ids, mask, num_beams=3, output_scores=True)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, expected.sequences)


def test_output_flag_errors(marian):
    model, _, _ = marian
    with pytest.raises(ValueError, match=r"^`output_scores` must be true or false, got 'yes'$"):
        model.generate([[5, 6, 0]], return_dict_in_generate=True, output_scores="yes")
    with pytest.raises(ValueError, match=r"^`scores` is empty: call generate with return_dict_in_generate=True"):
        model.compute_transition_scores(torch.zeros((1, 2), dtype=torch.long), ())


@pytest.mark.parametrize(
    "kwargs", [{}, {"num_beams": 3}, {"num_beams": 3, "num_return_sequences": 2}], ids=["greedy", "beam3", "beam3-nrs2"]
)
def test_whisper_outputs_match_transformers(whisper, hf_whisper, waves, kwargs):
    from tests.speech.test_model import log_mel

    feats = log_mel(waves[:3])
    with torch.inference_mode():
        expected = hf_whisper[0].generate(feats, **kwargs, **FLAGS)
    got = whisper.generate(feats, **kwargs, **FLAGS)
    assert_same_output(got, expected, whisper, hf_whisper[0], per_hypothesis_scores=True)


def test_whisper_return_dict_with_timestamps_is_refused(whisper, waves):
    from tests.speech.test_model import log_mel

    with pytest.raises(ValueError, match=r"^`return_dict_in_generate` works without timestamps"):
        whisper.generate(log_mel(waves[:1]), return_timestamps=True, return_dict_in_generate=True)
