"""T5 v1.0, T5 v1.1 (flan-T5), BART, mBART and PEGASUS: token-identical to transformers in float32.

The models are random-init, shrunk from the real configs with every architectural switch kept
(tests/helpers.FAMILY_CONFIGS), weights drawn large so that top-2 logits are far apart (checked below).
"""

import pytest
import torch
from conftest import source_batch

CASES = {
    "greedy": dict(num_beams=1),
    "beam4-nrs3": dict(num_beams=4, num_return_sequences=3),
    "beam4-es-true-lp0.7": dict(num_beams=4, early_stopping=True, length_penalty=0.7),
    "greedy-no-repeat-2": dict(num_beams=1, no_repeat_ngram_size=2),
    "beam4-no-repeat-3-nrs2": dict(num_beams=4, no_repeat_ngram_size=3, num_return_sequences=2),
    "beam3-min-new-6-repetition": dict(num_beams=3, min_new_tokens=6, repetition_penalty=1.3),
}


def _batch(model, seed=0, lengths=(12, 3, 9, 1, 15, 6)):
    return source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed, lengths, eos=model.spec.eos_token_id, low=3)


def _reference(ref, ids, mask, **kwargs):
    with torch.no_grad():
        return ref.generate(ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(family, case):
    _, model, ref, _ = family
    ids, mask = _batch(model, seed=len(case))
    expected = _reference(ref, ids, mask, **CASES[case])
    got = model.generate(ids, mask, **CASES[case])
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(do_sample=True, top_k=20),
        dict(do_sample=True, top_k=0, top_p=0.8, temperature=0.8, num_return_sequences=2),
        dict(do_sample=True, num_beams=2, top_k=10),
    ],
)
def test_sampling_matches_transformers_with_seed(family, kwargs):
    _, model, ref, _ = family
    ids, mask = _batch(model, seed=7)
    torch.manual_seed(99)
    expected = _reference(ref, ids, mask, **kwargs)
    torch.manual_seed(99)
    assert torch.equal(model.generate(ids, mask, max_batch_size=None, **kwargs), expected)


def test_model_generation_defaults_apply(family):
    """No arguments: the checkpoint's generation_config.json applies (bart: beam 4, no_repeat 3, forced BOS)."""
    _, model, ref, _ = family
    ids, mask = _batch(model, seed=2)
    assert torch.equal(model.generate(ids, mask), _reference(ref, ids, mask))


def test_greedy_margins_are_not_ties(family):
    _, model, ref, _ = family
    ids, mask = _batch(model)
    out = _reference(ref, ids, mask, num_beams=1, no_repeat_ngram_size=0, forced_bos_token_id=None)
    with torch.no_grad():
        logits = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=out[:, :-1]).logits
    top2 = logits.topk(2, dim=-1).values
    eos = model.spec.eos_token_id
    # positions up to each row's first EOS (after it the reference only pads)
    live = (out[:, 1:] == eos).long().cumsum(1) - (out[:, 1:] == eos).long() == 0
    assert (top2[..., 0] - top2[..., 1])[live].min().item() > 1e-4


def test_lengths_vary(family):
    """Sentences must end at different steps, or the paths that drop finished rows go untested."""
    _, model, _, _ = family
    ids, mask = _batch(model, lengths=(12, 3, 9, 1, 15, 6, 8, 4))
    eos = model.spec.eos_token_id
    for kwargs in (dict(num_beams=1), dict(num_beams=4)):
        out = model.generate(ids, mask, **kwargs)
        ends = {int((row[1:] == eos).nonzero()[0]) if (row[1:] == eos).any() else -1 for row in out}
        assert len(ends) > 1, kwargs


@pytest.mark.parametrize("kwargs", [dict(num_beams=1), dict(num_beams=4, num_return_sequences=2)])
def test_batch_invariance(family, kwargs):
    _, model, _, _ = family
    ids, mask = _batch(model, seed=5, lengths=(14, 2, 8, 5, 11, 1, 7))
    batched = model.generate(ids, mask, **kwargs)
    nrs = kwargs.get("num_return_sequences", 1)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = model.generate(ids[i : i + 1, :n], **kwargs)
        rows = batched[i * nrs : (i + 1) * nrs]
        assert torch.equal(rows[:, : alone.shape[1]], alone)


def test_bfloat16_runs_and_float16_is_refused(family):
    """T5 overflows in float16 (a known transformers issue): turboseq offers bfloat16 (float32's range)
    and refuses float16 with an explanation."""
    import turboseq

    kind, model, _, path = family
    fast = turboseq.load(path, dtype="bfloat16")
    ids, mask = _batch(model, seed=1)
    out = fast.generate(ids, mask, num_beams=2, max_new_tokens=12)
    assert out.dtype == torch.long and out.shape[0] == ids.shape[0]
    assert ((out >= 0) & (out < model.spec.vocab_size)).all()
    with pytest.raises(ValueError, match="float16.*bfloat16"):
        turboseq.load(path, dtype="float16")


@pytest.fixture(scope="session", params=["t5", "bart"])
def text_model(request, tmp_path_factory):
    """A T5 or BART test model with a real tokenizer (trained on the bundled sentences) of the model's vocab."""
    import turboseq
    from helpers import make_family_model
    from transformers import AutoTokenizer

    from turboseq.benchmodel import build_bart_tokenizer, build_t5_tokenizer

    path = tmp_path_factory.mktemp(request.param + "-text")
    if request.param == "t5":
        build_t5_tokenizer(path, spm_pieces=400)
        vocab = len(AutoTokenizer.from_pretrained(path))
    else:
        vocab = 512
        build_bart_tokenizer(path, vocab, bpe_size=400)
    seed = {"t5": 3, "bart": 4}[request.param]
    ref = make_family_model(path, request.param, seed=seed, vocab_size=vocab)
    return turboseq.load(path), ref, AutoTokenizer.from_pretrained(path), path


TEXTS = [
    "summarize: The committee will publish its final report next spring.",
    "",
    "translate English to German: The train to Berlin leaves at half past eight.",
    "   ",
    "Could you tell me where the nearest pharmacy is?",
]


def test_generate_text_equals_transformers_pipeline(text_model):
    """tokenize -> generate -> decode(skip_special_tokens) as a transformers user would; blank inputs give ""."""
    model, ref, tok, _ = text_model
    kwargs = dict(num_beams=3, max_new_tokens=10)
    got = model.generate_text(TEXTS, **kwargs)
    live = [t for t in TEXTS if t.strip()]
    enc = tok(live, return_tensors="pt", padding=True)
    expected = tok.batch_decode(_reference(ref, enc["input_ids"], enc["attention_mask"], **kwargs), skip_special_tokens=True)
    assert [g for g, t in zip(got, TEXTS) if t.strip()] == expected
    assert got[1] == "" and got[3] == ""
    assert any(expected)  # the comparison is over real text, not only empty strings
    assert model.translate(TEXTS, **kwargs) == got


def test_cli_generate(text_model, tmp_path, capsys):
    from turboseq.cli import main

    model, _, _, path = text_model
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    args = ["--model", str(path), "-i", str(src), "-o", str(out), "--num-beams", "2", "--max-new-tokens", "8"]
    assert main(["generate", *args, "--no-progress"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines == model.generate_text(TEXTS, num_beams=2, max_new_tokens=8)
    assert main(["translate", *args, "--no-progress"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == lines
