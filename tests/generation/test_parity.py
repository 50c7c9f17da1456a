"""Token-identical to transformers' generate in float32, for every decoding strategy, on every text-to-text
family: Marian (three configs covering its switches), T5 v1.0, T5 v1.1 (flan-T5), BART, mBART and PEGASUS.

The models are random-init, shrunk from the real configs with every architectural switch kept
(tests/helpers.py), weights drawn large so that top-2 logits are far apart (checked below: parity between
near ties would be luck).
"""

import pytest
import torch

from tests.helpers import runs, source_batch

CASES = {
    "greedy": dict(num_beams=1),
    "beam2-nrs2-lp0.6": dict(num_beams=2, num_return_sequences=2, length_penalty=0.6),
    "beam4-nrs3": dict(num_beams=4, num_return_sequences=3),
    "beam4-nrs3-es-false-lp1.4": dict(num_beams=4, num_return_sequences=3, early_stopping=False, length_penalty=1.4),
    "beam4-es-true": dict(num_beams=4, early_stopping=True),
    "beam4-es-true-lp0.7": dict(num_beams=4, early_stopping=True, length_penalty=0.7),
    "beam4-es-never-lp0.8": dict(num_beams=4, early_stopping="never", length_penalty=0.8),
    "beam4-es-never-lp2": dict(num_beams=4, num_return_sequences=2, early_stopping="never", length_penalty=2.0),
    "greedy-no-repeat-2": dict(num_beams=1, no_repeat_ngram_size=2),
    "beam4-no-repeat-3": dict(num_beams=4, no_repeat_ngram_size=3),
    "beam4-no-repeat-3-nrs2": dict(num_beams=4, no_repeat_ngram_size=3, num_return_sequences=2),
    "greedy-repetition-1.5": dict(num_beams=1, repetition_penalty=1.5),
    "beam4-repetition-0.8": dict(num_beams=4, repetition_penalty=0.8),
    "beam3-min-new-6-repetition": dict(num_beams=3, min_new_tokens=6, repetition_penalty=1.3),
    "greedy-min-new-12": dict(num_beams=1, min_new_tokens=12, max_new_tokens=20),
    "beam3-min-length-8": dict(num_beams=3, min_length=8, max_length=30),
    "beam4-renormalize": dict(num_beams=4, renormalize_logits=True),
    "greedy-bad-words-multi": dict(num_beams=1, bad_words_ids=[[127], [5, 6], [40]]),
}

SAMPLING = [
    dict(do_sample=True),
    dict(do_sample=True, top_k=20),
    dict(do_sample=True, top_k=10, top_p=0.9, temperature=0.7, num_return_sequences=3),
    dict(do_sample=True, top_k=0, top_p=0.8, temperature=0.8, num_return_sequences=2),
    dict(do_sample=True, top_k=0, top_p=0.5, temperature=1.3, repetition_penalty=1.2),
    dict(do_sample=True, num_beams=2, top_k=10),
    dict(do_sample=True, num_beams=3, num_return_sequences=2, top_k=20),
]


def _batch(name, model, seed=0, lengths=(12, 3, 9, 1, 15, 6)):
    """Source ids of the model's vocabulary (Marian's test configs have EOS 0 and no other special ids)."""
    low = 1 if name.startswith("marian") else 3
    return source_batch(
        model.spec.vocab_size, model.spec.pad_token_id, seed, lengths, eos=model.spec.eos_token_id, low=low
    )


def _reference(ref, ids, mask, **kwargs):
    with torch.no_grad():
        return ref.generate(ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(seq2seq, case):
    name, model, ref, _ = seq2seq
    ids, mask = _batch(name, model, seed=len(case))
    expected = _reference(ref, ids, mask, **CASES[case])
    got = model.generate(ids, mask, **CASES[case])
    assert got.dtype == torch.long
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kwargs", SAMPLING, ids=[f"sampling-{i}" for i in range(len(SAMPLING))])
def test_sampling_matches_transformers_with_seed(seq2seq, kwargs):
    """turboseq draws the same exponential noise torch.multinomial uses, for the whole batch even after rows
    finish, so with the same global seed it samples transformers' tokens."""
    name, model, ref, _ = seq2seq
    ids, mask = _batch(name, model, seed=7)
    torch.manual_seed(1234)
    expected = _reference(ref, ids, mask, **kwargs)
    torch.manual_seed(1234)
    assert torch.equal(model.generate(ids, mask, max_batch_size=None, **kwargs), expected)


def test_model_generation_defaults_apply(seq2seq):
    """No arguments: the checkpoint's generation_config.json applies (Marian: beam 4, max_length 64; bart: beam
    4, no_repeat 3, forced BOS)."""
    name, model, ref, _ = seq2seq
    ids, mask = _batch(name, model, seed=2)
    assert torch.equal(model.generate(ids, mask), _reference(ref, ids, mask))
    if name.startswith("marian"):
        assert (model.settings().num_beams, model.settings().max_length) == (4, 64)


def test_greedy_margins_are_not_ties(seq2seq):
    """The parity above means something only if the reference's choices are not near ties."""
    name, model, ref, _ = seq2seq
    ids, mask = _batch(name, model)
    out = _reference(ref, ids, mask, num_beams=1, no_repeat_ngram_size=0, forced_bos_token_id=None)
    with torch.no_grad():
        logits = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=out[:, :-1]).logits
    top2 = logits.topk(2, dim=-1).values
    eos = model.spec.eos_token_id
    # positions up to each row's first EOS (after it the reference only pads)
    live = (out[:, 1:] == eos).long().cumsum(1) - (out[:, 1:] == eos).long() == 0
    assert (top2[..., 0] - top2[..., 1])[live].min().item() > 1e-4


def test_lengths_vary(seq2seq):
    """Sentences must end at different steps, or the paths that drop finished rows go untested."""
    name, model, _, _ = seq2seq
    ids, mask = _batch(name, model, lengths=(12, 3, 9, 1, 15, 6, 8, 4))
    eos = model.spec.eos_token_id
    for kwargs in (dict(num_beams=1), dict(num_beams=4, num_return_sequences=4)):
        out = model.generate(ids, mask, **kwargs)
        ends = {int((row[1:] == eos).nonzero()[0]) if (row[1:] == eos).any() else -1 for row in out}
        assert len(ends) > 1, kwargs


@pytest.mark.parametrize("kwargs", [dict(num_beams=1), dict(num_beams=4, num_return_sequences=2)])
def test_batch_invariance(seq2seq, kwargs):
    """Each sentence alone equals the same sentence inside a padded, length-mixed batch."""
    name, model, _, _ = seq2seq
    ids, mask = _batch(name, model, seed=5, lengths=(14, 2, 8, 5, 11, 1, 7))
    batched = model.generate(ids, mask, **kwargs)
    nrs = kwargs.get("num_return_sequences", 1)
    fill = model.settings(**kwargs).output_fill_token_id
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = model.generate(ids[i : i + 1, :n], **kwargs)
        rows = batched[i * nrs : (i + 1) * nrs]
        assert torch.equal(rows[:, : alone.shape[1]], alone)
        assert (rows[:, alone.shape[1] :] == fill).all()


def test_bfloat16_runs_and_float16_is_refused(seq2seq):
    """T5 overflows in float16 (a known transformers issue): turboseq offers bfloat16 (float32's range)
    and refuses float16 with an explanation."""
    import turboseq

    name, model, _, path = seq2seq
    with pytest.raises(ValueError, match="float16.*bfloat16"):
        turboseq.load(path, dtype="float16")
    if not runs("bfloat16"):
        pytest.skip("this CPU runs no bfloat16")
    fast = turboseq.load(path, dtype="bfloat16")
    ids, mask = _batch(name, model, seed=1)
    out = fast.generate(ids, mask, num_beams=2, max_new_tokens=12)
    assert out.dtype == torch.long and out.shape[0] == ids.shape[0]
    assert ((out >= 0) & (out < model.spec.vocab_size)).all()
