"""Documents on the trained synthetic Marian (``bench.trained``: each word mapped through a fixed bijection, the
order reversed), whose right translation of every text is known: a 20-paragraph HTML page and a markdown file
come back with their markup identical outside text nodes, code untouched, every text node translated right, and
inline markup around the right words, moved where the word order changed. The model learned sentences of 4-16
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
