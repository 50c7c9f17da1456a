"""The trained synthetic Marian (``bench.trained``: each word mapped through a fixed bijection, the order
reversed), whose right translation of every text is known. Documents: a 20-paragraph HTML page and a markdown
file come back with their markup identical outside text nodes, code untouched, every text node translated
right, and inline markup around the right words, moved where the word order changed. Glossaries: a term stands
where the model's own word for its source term stood, every other word as without it. The model learned sentences of 4-16
words only (shorter ones come out wrong), so each inline element here holds 4 words of a sentence of 8 or more."""

import random
import re

import pytest

from tests.formats.test_documents import markup
from turboseq.bench.trained import _bijection, task_pairs, trained_model


@pytest.fixture(scope="module")
def trained():
    import turboseq

    return turboseq.load(trained_model("marian", progress=False))


def _reference(words: list[str]) -> list[str]:
    mapping = _bijection()
    return [mapping[w] for w in reversed(words)]


SPAN = 4  # words in an inline element


def _cases(n: int, seed: int):
    """(source words, the index where an inline element starts) for ``n`` held-out sentences of 8+ words."""
    rng = random.Random(seed)
    sentences = [s.split() for s, _ in task_pairs(4 * n, seed) if len(s.split()) >= 2 * SPAN][:n]
    assert len(sentences) == n
    return [(words, rng.randrange(len(words) - SPAN + 1)) for words in sentences]


def _plain(page: str) -> str:
    return re.sub(r"<[^>]+>", "", page)


def test_a_20_paragraph_page_round_trips(trained):
    cases = _cases(20, 11)
    paragraphs, expected = [], []
    for i, (words, at) in enumerate(cases):
        bold = " ".join(words[at : at + SPAN])
        inner = " ".join(words[:at]) + f' <b class="k{i}">{bold}</b> ' + " ".join(words[at + SPAN :])
        paragraphs.append(f'  <p id="p{i}">{inner.strip()}</p>\n')
        expected.append((_reference(words), _reference(words[at : at + SPAN])))
    code = " ".join(cases[0][0])
    page = (
        "<!DOCTYPE html>\n<html><head><title>" + " ".join(cases[1][0]) + "</title></head>\n<body>\n"
        + "".join(paragraphs)
        + f"  <pre>{code}</pre>\n  <p translate=\"no\">{code}</p>\n</body>\n</html>\n"
    )  # fmt: skip
    out = trained.translate([page], format="html")[0]
    assert markup(out) == markup(page)  # tags and attributes as they were
    assert f"<pre>{code}</pre>" in out and f'<p translate="no">{code}</p>' in out
    assert f"<title>{' '.join(_reference(cases[1][0]))}</title>" in out
    for i, (whole, bold) in enumerate(expected):
        got = re.search(rf'<p id="p{i}">(.*?)</p>', out).group(1)
        assert _plain(got).split() == whole, i  # the paragraph translated right, as one sentence
        assert re.search(rf'<b class="k{i}">(.*?)</b>', got).group(1).split() == bold, i  # its markup moved along


def test_a_markdown_file_round_trips(trained):
    (a, at_a), (b, at_b), (c, _), (d, _) = _cases(4, 12)
    code = " ".join(d)
    text = (
        f"# {' '.join(c)}\n\n"
        + " ".join(a[:at_a]) + f" **{' '.join(a[at_a : at_a + SPAN])}** " + " ".join(a[at_a + SPAN :]) + "\n\n"
        + f"- [{' '.join(b)}](https://example.org/{b[0]})\n- {' '.join(c)}\n\n"
        + f"```\n{code}\n```\n\n    {code}\n\nend `{code}` here\n"
    )  # fmt: skip
    out = trained.translate([text], format="markdown")[0]
    lines = out.splitlines()
    assert lines[0] == "# " + " ".join(_reference(c))
    bold = _reference(a[at_a : at_a + SPAN])
    assert lines[2].replace("**", "").split() == _reference(a)
    assert f"**{' '.join(bold)}**" in lines[2]
    assert lines[4] == f"- [{' '.join(_reference(b))}](https://example.org/{b[0]})"
    assert lines[5] == "- " + " ".join(_reference(c))
    assert f"```\n{code}\n```\n\n    {code}\n" in out and f"`{code}`" in out
    assert len(lines) == len(text.splitlines())


@pytest.mark.parametrize("num_beams", [1, 4])
def test_glossary_terms_take_the_place_of_the_models_words(trained, num_beams):
    """One glossary entry per sentence maps a source word to a target word the model never learned for it:
    the output is the reference with that one word replaced (the library, and the same for a batch)."""
    mapping, rng = _bijection(), random.Random(5)
    targets = list(mapping.values())
    cases = []
    for source, reference in task_pairs(30, 21):
        word = rng.choice(source.split())
        term = rng.choice([t for t in targets if t not in reference.split()])
        cases.append((source, {word: term}, " ".join(term if w == mapping[word] else w for w in reference.split())))
    outputs = [trained.translate([s], glossary=g, num_beams=num_beams)[0] for s, g, _ in cases]
    assert outputs == [ideal for _, _, ideal in cases]
    # sentences with different terms in one call: each as alone
    merged = {k: v for _, g, _ in cases[:6] for k, v in g.items()}
    alone = [trained.translate([s], glossary=merged, num_beams=num_beams)[0] for s, _, _ in cases[:6]]
    assert trained.translate([s for s, _, _ in cases[:6]], glossary=merged, num_beams=num_beams) == alone


def test_a_forced_first_token_stays_before_a_placed_term(trained):
    """mBART and NLLB force their target language as the first token: a term is never put in its place (this
    model never saw a forced token, so the term's place moves; it still appears)."""
    words = list(_bijection().values())
    forced = trained.tokenizer.convert_tokens_to_ids(words[0])
    for source, reference in task_pairs(10, 31):
        last = source.split()[-1]  # its word comes first in the reversed output
        term = next(w for w in words[1:] if w not in reference.split())
        out = trained.translate([source], glossary={last: term}, forced_bos_token_id=forced)[0].split()
        assert out[0] == words[0] and term in out, (source, out)
