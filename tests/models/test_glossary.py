"""Glossaries and protected spans (``translate(glossary=..., keep_spans=True)``): each required target phrase
appears in every output whose source holds its term, in greedy, beam and sampled search; outputs of sentences
without a term are untouched. The trained-model measurement (term rate and placement) is ``bench.glossary``."""

import re

import pytest

from turboseq.bench.models import bench_sentences
from turboseq.models.glossary import phrase_ids

SENTENCES = bench_sentences()[:16]


def _writable(model, words):
    return [w for w in words if phrase_ids(model.tokenizer, w) is not None]


@pytest.mark.parametrize("search", [{}, {"num_beams": 1}, {"do_sample": True, "seed": 3}])
def test_glossary_terms_appear(marian_one, search):
    model, _ = marian_one
    targets = _writable(model, ["Zug", "Bahnhof", "der", "und", "station", "train", "coffee", "report"])
    assert len(targets) >= 2
    glossary = {"the": targets[0], "train": targets[1]}
    short = {"max_new_tokens": 24, **search}
    out = model.translate(SENTENCES, glossary=glossary, **short)
    plain = model.translate(SENTENCES, **short)
    hits = 0
    for source, got, alone in zip(SENTENCES, out, plain):
        wanted = [t for s, t in glossary.items() if re.search(rf"\b{s}\b", source, re.IGNORECASE)]
        for term in wanted:
            assert term in got, (source, term, got)
            hits += 1
        if not wanted and not search.get("do_sample"):  # sampled draws depend on the batch's other rows
            assert got == alone
    assert hits >= 4


def test_protected_spans(marian_one, monkeypatch):
    from turboseq.formats.documents import protected_spans

    text = "See https://example.org/a?b=1. Mail jo.doe@mail.com about {count} items, 3.5 km at 12:30 in 2026."
    assert protected_spans(text) == ["https://example.org/a?b=1", "jo.doe@mail.com", "{count}", "3.5", "12:30", "2026"]
    model, _ = marian_one
    # the test vocabulary writes no digit, URL or brace (such spans are skipped): a word stands in for a span
    (word,) = _writable(model, ["station"])
    monkeypatch.setattr("turboseq.models.glossary.protected_spans", lambda text: [word] if "8:30" in text else [])
    out = model.translate(["The train leaves at 8:30.", "The train leaves."], keep_spans=True, max_new_tokens=24)
    assert word in out[0] and out[1] == model.translate(["The train leaves."], max_new_tokens=24)[0]


def test_glossary_errors(marian_one):
    model, _ = marian_one
    with pytest.raises(ValueError, match="glossary term '☃' cannot be written with this model's target vocabulary"):
        model.translate(["The train leaves."], glossary={"train": "☃"})
    with pytest.raises(TypeError, match="`glossary` must be a dict"):
        model.translate(["The train leaves."], glossary=[("train", "Zug")])
