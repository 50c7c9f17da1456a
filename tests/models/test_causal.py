"""Decoder-only generation (GPT-2, Llama, Qwen2) against transformers' ``*ForCausalLM.generate``: exact tokens
for every strategy on left-padded batches of mixed lengths, batch invariance, and the documented edges
(prompts longer than the positions, empty prompts, stop strings).

The test models have large random weights whose top-2 logits are far apart (``tests.helpers.make_causal``),
so float32 summation order cannot flip a token."""

import pytest
import torch

from turboseq import InputTooLong
from turboseq.bench.models import bench_sentences
from turboseq.generation.batching import pad_rows

STRATEGIES = {
    "greedy": dict(),
    "beam4-nrs2": dict(num_beams=4, num_return_sequences=2),
    "beam3-lp-early-ngram": dict(num_beams=3, length_penalty=0.5, early_stopping=True, no_repeat_ngram_size=3),
    "sample-topk-topp-temp": dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, num_return_sequences=2),
    "beam-sample": dict(do_sample=True, num_beams=2, top_k=10),
    "ngram-repetition": dict(no_repeat_ngram_size=2, repetition_penalty=1.3),
    "min-new-bad-words": dict(min_new_tokens=5, bad_words_ids=[[5], [7, 8]]),
    "eos-list": dict(eos_token_id=[3, 9]),
}


def left_padded(model, vocab: int, paddings=(0, 3, 5, 0, 8, 1), width: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (len(paddings), width), generator=g)
    mask = torch.ones_like(ids)
    pad = model.settings().pad_token_id
    for i, p in enumerate(paddings):
        mask[i, :p] = 0
        ids[i, :p] = pad
    return ids, mask


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_generate_matches_transformers(causal, strategy):
    name, model, ref, _ = causal
    ids, mask = left_padded(model, ref.config.vocab_size)
    kwargs = dict(STRATEGIES[strategy], max_new_tokens=24)
    if strategy == "eos-list":
        kwargs["eos_token_id"] = [ref.config.eos_token_id, *kwargs["eos_token_id"]]
    torch.manual_seed(5)
    expected = ref.generate(ids, attention_mask=mask, **kwargs)
    torch.manual_seed(5)
    got = model.generate(ids, attention_mask=mask, **kwargs)
    assert torch.equal(got, expected), name


def test_rows_finish_at_different_steps(causal):
    """The configs make EOS win mid-sequence, so finished rows really leave the batch in the tests above."""
    _, model, ref, _ = causal
    ids, mask = left_padded(model, ref.config.vocab_size)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=24)
    lengths = {
        int((row == ref.config.eos_token_id).nonzero()[0]) if (row == ref.config.eos_token_id).any() else -1
        for row in out[:, 9:]
    }
    assert len(lengths) >= 2


def test_unpadded_and_no_mask(causal):
    _, model, ref, _ = causal
    ids = torch.randint(0, ref.config.vocab_size - 1, (3, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.generate(ids, max_length=20), ref.generate(ids, max_length=20))


@pytest.mark.parametrize("strategy", ["greedy", "beam4-nrs2", "ngram-repetition"])
def test_batch_invariance(causal, strategy):
    """Prompts regrouped into length-sorted left-padded batches give what each prompt gives alone."""
    _, model, ref, _ = causal
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, ref.config.vocab_size - 1, (n,), generator=g).tolist() for n in (9, 2, 6, 1, 4, 7, 3)]
    kwargs = dict(STRATEGIES[strategy], max_new_tokens=16)
    together = model.generate_rows(prompts, max_batch_size=3, **kwargs)
    for prompt, seqs in zip(prompts, together):
        alone = model.generate_rows([prompt], **kwargs)[0]
        assert [s.tolist() for s in seqs] == [s.tolist() for s in alone]
        assert seqs[0][: len(prompt)].tolist() == prompt
        expected = ref.generate(torch.tensor([prompt]), **kwargs)
        assert torch.equal(pad_rows(alone, model.settings(**kwargs).output_fill_token_id), expected)


def test_prompt_errors(causal):
    _, model, ref, _ = causal
    limit = (
        ref.config.max_position_embeddings if hasattr(ref.config, "max_position_embeddings") else ref.config.n_positions
    )
    long = torch.zeros((1, limit - 4), dtype=torch.long)
    with pytest.raises(
        ValueError, match=rf"a prompt of {limit - 4} tokens plus 8 new tokens exceeds the model's {limit} positions"
    ):
        model.generate(long, max_new_tokens=8)
    ids = torch.tensor([[4, 5, 6], [7, 8, 9]])
    with pytest.raises(ValueError, match=r"decoder-only models need left-padded prompts"):
        model.generate(ids, attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"prompt 1 is empty"):
        model.generate(ids, attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"`input_ids` has ids outside the vocabulary"):
        model.generate(torch.tensor([[ref.config.vocab_size]]), max_new_tokens=2)


def test_empty_prompt_starts_from_bos(causal):
    _, model, ref, _ = causal
    bos = ref.config.bos_token_id
    expected = ref.generate(torch.tensor([[bos]]), max_new_tokens=10)
    assert torch.equal(model.generate(torch.zeros((1, 0), dtype=torch.long), max_new_tokens=10), expected)
    assert model.generate_rows([[]], max_new_tokens=10)[0][0].tolist() == expected[0].tolist()


def test_generate_text_continuations(gpt2_text):
    model, ref, tok, _ = gpt2_text
    prompts = bench_sentences()[:5] + [""]
    got = model.generate_text(prompts, max_new_tokens=12)
    full = model.generate_text(prompts, max_new_tokens=12, return_full_text=True)
    for prompt, text, whole in zip(prompts, got, full):
        ids = tok(prompt, return_tensors="pt")["input_ids"] if prompt else torch.tensor([[tok.bos_token_id]])
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12)
        assert text == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert whole == tok.decode(out[0], skip_special_tokens=True)
    assert model.generate_text([], max_new_tokens=3) == []
    with pytest.raises(TypeError, match="not a single string"):
        model.generate_text("one prompt")


def test_generate_text_too_long(gpt2_text):
    model, _, tok, _ = gpt2_text
    long_prompt = " ".join(bench_sentences()[:40])
    n = len(tok(long_prompt)["input_ids"])
    assert n > 96
    with pytest.raises(
        InputTooLong,
        match=rf"input 1 has {n} tokens; the model accepts at most 88 \(pass truncation=True to keep its end\)",
    ):
        model.generate_text(["short", long_prompt], max_new_tokens=8)
    kept = model.generate_text([long_prompt], max_new_tokens=8, truncation=True, return_full_text=True)[0]
    end = tok.decode(tok(long_prompt)["input_ids"][-88:])
    assert kept.startswith(end)


def test_stop_strings_match_transformers(gpt2_text):
    model, ref, tok, _ = gpt2_text
    prompt = bench_sentences()[3]
    plain = model.generate_text([prompt], max_new_tokens=20)[0]
    stop = plain[len(plain) // 2 : len(plain) // 2 + 3]
    assert stop.strip(), plain
    ids = tok([prompt], return_tensors="pt")["input_ids"]
    expected = ref.generate(ids, max_new_tokens=20, stop_strings=[stop], tokenizer=tok)
    got = model.generate(ids, max_new_tokens=20, stop_strings=[stop])
    assert torch.equal(got, expected)
    assert got.shape[1] < ids.shape[1] + 20
    text = model.generate_text([prompt], max_new_tokens=20, stop_strings=stop)[0]
    assert stop in text and text.index(stop) + len(stop) > len(text) - 8
    # a stop string that never occurs changes nothing
    assert model.generate_text([prompt], max_new_tokens=20, stop_strings=["\u2603never"])[0] == plain
    with pytest.raises(ValueError, match=r"`stop_strings` works with num_beams=1"):
        model.generate_text([prompt], max_new_tokens=5, stop_strings=[stop], num_beams=2)
