"""Forced prefixes (``decoder_input_ids``, ``prefix``) and alternatives after them.

``decoder_input_ids`` is checked against transformers, and ``translate(prefix=...)`` against it. Alternatives are checked
for what they promise: the expansions are the most likely non-EOS tokens after the prefix, each completion
is the search's own output after prefix + expansion, and each score is the teacher-forced sum of the
model's log-probabilities.
"""

import pytest
import torch

from tests.generation.test_parity import _batch
from tests.helpers import make_marian_with_tokenizer

TEXTS = ["The quick brown fox jumps.", "Please call Stella.", "It is raining today in the city.", "Hello."]
PREFIXES = ["The", None, "It is", "Hel"]


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A tied-embedding Marian with a tokenizer: (turboseq model, tokenizer, directory)."""
    from transformers import AutoTokenizer

    import turboseq

    path = tmp_path_factory.mktemp("marian-tied")
    make_marian_with_tokenizer(path, "gelu-tied-2h")
    return turboseq.load(path), AutoTokenizer.from_pretrained(path), path


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("with_start", [True, False])
def test_decoder_input_ids_match_transformers(marian, num_beams, with_start):
    model, ref, _ = marian
    ids, mask = _batch("marian", model, seed=2)
    forced = torch.randint(1, 100, (ids.shape[0], 3), generator=torch.Generator().manual_seed(0))
    if with_start:
        forced = torch.cat((torch.full((ids.shape[0], 1), model.spec.decoder_start_token_id), forced), dim=1)
    kwargs = dict(num_beams=num_beams, max_new_tokens=12)
    with torch.no_grad():
        expected = ref.generate(ids, attention_mask=mask, decoder_input_ids=forced, **kwargs)
    assert torch.equal(model.generate(ids, mask, decoder_input_ids=forced, **kwargs), expected)


def test_prefix_equals_decoder_input_ids(tied):
    """``translate(prefix=...)``: the target tokenizer's ids of each prefix forced after the start token, as
    ``generate(decoder_input_ids=...)`` does for one input at a time."""
    model, tok, _ = tied
    got = model.translate(TEXTS, prefix=PREFIXES, num_beams=3, max_length=31)
    for text, prefix, out in zip(TEXTS, PREFIXES, got):
        enc = tok([text], return_tensors="pt")
        forced = tok(text_target=prefix, add_special_tokens=False)["input_ids"] if prefix else []
        ids = model.generate(enc["input_ids"], decoder_input_ids=[[1023] + forced], num_beams=3, max_length=31)
        assert out == tok.decode(ids[0], skip_special_tokens=True)
        assert out.startswith(prefix or "")


def test_prefixes_of_mixed_lengths_are_batch_invariant(tied):
    model, tok, _ = tied
    rows = [tok(t)["input_ids"] for t in TEXTS]
    prefixes = [tok(text_target=p, add_special_tokens=False)["input_ids"] if p else None for p in PREFIXES]
    together = model.generate_rows(rows, prefixes=prefixes, num_beams=2, max_new_tokens=10)
    for i in range(len(rows)):
        alone = model.generate_rows(rows[i : i + 1], prefixes=prefixes[i : i + 1], num_beams=2, max_new_tokens=10)
        assert torch.equal(alone[0][0], together[i][0])
        start = [model.spec.decoder_start_token_id] + (prefixes[i] or [])
        assert together[i][0][: len(start)].tolist() == start


def _teacher_forced(model, source_ids, target_ids, start: int) -> float:
    """Sum of the model's log-probabilities of ``target_ids[start:]`` after ``target_ids[:start]``."""
    logits = model.forward_logits(torch.tensor([source_ids]), None, torch.tensor([target_ids[:-1]]))[0]
    log_probs = torch.log_softmax(logits, dim=-1)
    return sum(float(log_probs[t - 1, target_ids[t]]) for t in range(start, len(target_ids)))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_alternatives(tied, num_beams):
    model, tok, _ = tied
    text, prefix = TEXTS[2], PREFIXES[2]
    source = tok(text)["input_ids"]
    prefix_ids = tok(text_target=prefix, add_special_tokens=False)["input_ids"]
    start = model.spec.decoder_start_token_id
    found = model.translate([text], prefix=[prefix], alternatives=4, num_beams=num_beams, max_length=24)[0]
    assert len(found) == 4 and all(isinstance(t, str) and isinstance(sc, float) for t, sc in found)
    tokens = [
        ids.tolist()
        for ids in model.generate_rows([source], prefixes=[prefix_ids], num_beams=num_beams, max_length=24)[0]
    ]
    assert found[0][0] == tok.decode(tokens[0], skip_special_tokens=True) or num_beams > 1
    # the expansions: the four most likely non-EOS tokens after the prefix, best first
    logits = model.forward_logits(torch.tensor([source]), None, torch.tensor([[start] + prefix_ids]))[0, -1].clone()
    logits[[model.spec.eos_token_id, model.spec.pad_token_id]] = -float("inf")
    best = logits.topk(4).indices.tolist()
    per_alt = model.alternatives([source], [prefix_ids], 4, num_beams=num_beams, max_length=24)[0]
    assert [ids[len(prefix_ids)] for ids, _ in per_alt] == best
    for (ids, score), (text_out, text_score) in zip(per_alt, found):
        # each completion is the search's own output after prefix + expansion, scored by teacher forcing
        alone = model.generate_rows([source], prefixes=[ids[: len(prefix_ids) + 1]], num_beams=num_beams, max_length=24)
        assert alone[0][0].tolist() == [start] + ids
        assert score == pytest.approx(_teacher_forced(model, source, [start] + ids, 1 + len(prefix_ids)), abs=1e-4)
        assert text_out == tok.decode(ids, skip_special_tokens=True) and text_score == score


def test_prefix_and_alternatives_errors(tied):
    model, _, _ = tied
    with pytest.raises(ValueError, match=r"^`prefix` needs a list with one text \(or None\) per input$"):
        model.translate(TEXTS, prefix=["The"])
    with pytest.raises(ValueError, match=r"^`alternatives` must be an integer >= 1, got 0$"):
        model.translate(TEXTS, alternatives=0)
    with pytest.raises(ValueError, match=r"^`alternatives` replaces `num_return_sequences`: leave it at 1$"):
        model.translate(TEXTS, alternatives=2, num_beams=3, num_return_sequences=2)
    with pytest.raises(ValueError, match=r"^`decoder_input_ids` must be \[batch=1, length\], got shape \(2, 2\)$"):
        model.generate([[5, 0]], decoder_input_ids=[[1, 2], [3, 4]])
    assert model.translate(["", "Hello."], prefix=["x", None], alternatives=2)[0] == []
