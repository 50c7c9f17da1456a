"""Documents cut into sentences and rebuilt (``formats.documents``), and ``translate(format=...)`` on them: the
markup and whitespace come back byte for byte, code and ``translate="no"`` are untouched, every other text node
is translated, and a paragraph longer than the model's positions translates whole."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from turboseq.formats.documents import run_rounds, split_document, translate_documents

# the random test model often ends at once: a few forced tokens make every translation visible
FORCED = {"min_new_tokens": 3, "max_new_tokens": 6}
PARAGRAPH = (
    "The committee met on Monday. It discussed the budget for next year!  Dr. Smith asked about the costs?\n"
    "A second line follows here."
)


def in_rounds(doc, translate):
    """``doc`` translated by ``translate(texts)`` in its rounds, and every (text, translation) it was given."""
    seen = []

    def record(texts):
        out = translate(texts)
        seen.extend(zip(texts, out))
        return out

    return run_rounds(translate_documents([doc]), record)[0], seen


def html_page(paragraphs: int = 20) -> str:
    body = []
    for i in range(paragraphs):
        body.append(
            f'  <p class="p{i}" data-n="{i}">The train number {i} leaves at eight. '
            f'It stops in <b>three</b> towns &amp; one <a href="https://example.org/{i}?a=1&amp;b=2" '
            f'title="a link">village</a>.</p>\n'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><title>Timetable of the trains</title>\n'
        "<style>p { color: red; }</style></head>\n<body>\n<!-- a comment stays -->\n"
        + "".join(body)
        + "  <pre>keep   this\n  as it is</pre>\n  <p>Call <code>make test</code> before you leave.</p>\n"
        + '  <div translate="no">Brand Name Here</div><span class="notranslate">x y z</span><br/>\n'
        + "  <ul><li>First item in the list</li><li>Second item</li></ul>\n</body>\n</html>\n"
    )


class Markup(HTMLParser):
    """Everything of a page but its text nodes: tags with their attributes as written, comments, declarations."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.items = []

    def handle_starttag(self, tag, attrs):
        self.items.append(self.get_starttag_text())

    def handle_startendtag(self, tag, attrs):
        self.items.append(self.get_starttag_text())

    def handle_endtag(self, tag):
        self.items.append(f"</{tag}>")

    def handle_comment(self, data):
        self.items.append(f"<!--{data}-->")

    def handle_decl(self, decl):
        self.items.append(decl)


def markup(page: str) -> list[str]:
    parser = Markup()
    parser.feed(page)
    parser.close()
    return parser.items


@pytest.mark.parametrize("fmt", ["text", "html"])
def test_split_then_join_gives_the_document_back(fmt):
    doc_text = html_page() if fmt == "html" else PARAGRAPH + "\n\n\n  Indented paragraph. With two sentences.  \n"
    doc = split_document(doc_text, fmt)
    # html: the units are decoded text, escaped again on the way back
    units = [u.replace("&", "&amp;") if fmt == "html" else u for u in doc.units]
    assert doc.join([u.replace("&amp;", "&") for u in units]) == doc_text


def test_sentences_and_skipped_elements():
    doc = split_document(PARAGRAPH, "text")
    assert doc.units == [
        "The committee met on Monday.",
        "It discussed the budget for next year!",
        "Dr. Smith asked about the costs?",
        "A second line follows here.",
    ]
    page = split_document(html_page(1), "html")
    assert page.units == [
        "Timetable of the trains",
        "Call",
        "before you leave.",
        "First item in the list",
        "Second item",
        # a run with inline elements: its sentences whole, then each element's text
        "The train number 0 leaves at eight.",
        "It stops in three towns & one village.",
        "three",
        "village",
    ]  # no code, pre, style, translate="no" or notranslate text; entities decoded
    out, seen = in_rounds(page, lambda texts: ["<x> & y"] * len(texts))
    # the elements' translations are not found in their sentence's: the run's nodes are translated one by one
    assert [t for t, _ in seen[len(page.units) :]] == [
        "The train number 0 leaves at eight.", "It stops in", "three", "towns & one", "village", ".",
    ]  # fmt: skip
    assert out.count("&lt;x&gt; &amp; y") == len(seen) - 4 and "<x>" not in out
    with pytest.raises(ValueError, match="`format` must be one of text, html, markdown, not 'pdf'"):
        split_document("x", "pdf")


def test_an_overlong_sentence_is_cut_at_words():
    words = " ".join(f"word{i}" for i in range(40))
    doc = split_document(words + ". Short one.", "text", fits=lambda s: len(s.split()) <= 10)
    assert all(len(u.split()) <= 10 for u in doc.units) and len(doc.units) == 5
    assert " ".join(doc.units[:-1]) == words + "."


def test_translate_documents(marian_one):
    model, _ = marian_one
    page = html_page()
    out = model.translate([page], format="html", **FORCED)[0]
    assert markup(out) == markup(page)  # every tag, attribute, comment and declaration as it was
    assert "<pre>keep   this\n  as it is</pre>" in out and "<code>make test</code>" in out
    assert '<div translate="no">Brand Name Here</div><span class="notranslate">x y z</span>' in out
    doc = split_document(page, "html")
    alone, seen = in_rounds(doc, lambda texts: model.translate(texts, **FORCED))  # each sentence alone: the same
    assert out == alone
    assert all(a and a != u for u, a in seen)  # every text node translated

    # a paragraph far over the model's 128 positions translates whole, each sentence once
    sentences = [f"The train number {i} leaves the station at eight in the morning." for i in range(40)]
    paragraph = " ".join(sentences) + "\n\nThe end."
    assert len(model.tokenizer(paragraph)["input_ids"]) > 128
    got = model.translate([paragraph, ""], format="text", **FORCED)
    expected = " ".join(model.translate(sentences, **FORCED)) + "\n\n" + model.translate(["The end."], **FORCED)[0]
    assert got == [expected, ""]
    with pytest.raises(ValueError, match="a document is translated once"):
        model.translate([paragraph], format="text", num_return_sequences=2, num_beams=2)


def test_cli_translates_a_page(marian_one, tmp_path):
    from tests.helpers import run_cli

    model, path = marian_one
    page = tmp_path / "page.html"
    page.write_text(html_page(3), encoding="utf-8")
    out = tmp_path / "out.html"
    res = run_cli("translate", "--model", path, "-i", page, "-o", out, "--format", "html", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert out.read_text(encoding="utf-8") == model.translate([html_page(3)], format="html")[0]
    res = run_cli("translate", "--model", path, "--format", "pdf", stdin="x")
    assert res.returncode == 2 and "invalid choice: 'pdf'" in res.stderr


MARKDOWN = (Path(__file__).parent / "sample.md").read_text(encoding="utf-8")


def test_markdown_keeps_code_markers_and_links(marian_one):
    model, _ = marian_one
    doc = split_document(MARKDOWN, "markdown")
    assert doc.join(doc.units) == MARKDOWN
    assert doc.units[:3] == ["Getting started with the trains", "First item in the list", "A finished task with"]
    # emphasis and a link's text move with their words: the sentence whole, then the elements' texts
    assert doc.units[-7:] == [
        "The train leaves at eight o'clock.", "See the timetable for details.", "eight", "timetable",
        "Final words with struck text and bold text.", "struck", "bold",
    ]  # fmt: skip
    joined = "\n".join(doc.units)
    for kept in ("do not translate", "indented code", "inline code", "https://", "img.png", "ref", "---"):
        assert kept not in joined
    out = model.translate([MARKDOWN], format="markdown", **FORCED)[0]
    alone, seen = in_rounds(doc, lambda texts: model.translate(texts, **FORCED))
    assert out == alone and all(a and a != u for u, a in seen)
    for kept in (
        '```python\nprint("do not translate me")\n```\n',
        "\n    indented code stays\n",
        "`inline code`",
        '](https://example.org/t?a=1 "Times")',
        "![a picture](img.png)",
        "<https://example.org>",
        "https://example.com/x",
        "\n|---|:---:|\n",
        "\n[ref]: https://example.org/ref\n***\n",
    ):
        assert kept in out
    # every line keeps its block markers
    markers = re.compile(r"^(\s*(?:>\s?)*\s*(?:#{1,6}\s+|[-*+]\s+(?:\[[ xX]\]\s+)?|\d{1,9}[.)]\s+)?)")
    for before, after in zip(MARKDOWN.splitlines(), out.splitlines()):
        assert markers.match(after).group(1) == markers.match(before).group(1)
    assert len(out.splitlines()) == len(MARKDOWN.splitlines())


def _reverse_words(texts):
    """A stand-in translator whose word order is the reverse of the source's, each word in upper case."""
    return [" ".join(w.upper() for w in reversed(t.split())) for t in texts]


def test_inline_markup_moves_with_its_words():
    page = '<p>Take <b>the</b> <a href="/x">early</a> train &amp; go.</p>\n<p>Plain words.</p>'
    out, seen = in_rounds(split_document(page, "html"), _reverse_words)
    assert out == '<p>GO. &amp; TRAIN <a href="/x">EARLY</a> <b>THE</b> TAKE</p>\n<p>WORDS. PLAIN</p>'
    assert len(seen) == 4  # one round: two sentences and the two elements
    md = "Take **the** [early](https://x.org) train now.\n"
    out, _ = in_rounds(split_document(md, "markdown"), _reverse_words)
    assert out == "NOW. TRAIN [EARLY](https://x.org) **THE** TAKE\n"
    # an element whose translation is not in its sentence's: the run is translated node by node instead
    out, seen = in_rounds(split_document(page, "html"), lambda texts: [t + " x" for t in texts])
    assert out == '<p>Take x <b>the x</b> <a href="/x">early x</a> train &amp; go. x</p>\n<p>Plain words. x</p>'
    assert [t for t, _ in seen[4:]] == ["Take", "the", "early", "train & go."]
    # the n-th occurrence of a word gets the n-th's markup; an element that is a whole sentence is one unit; a
    # lone * (no emphasis) stays as it is
    out, _ = in_rounds(split_document("<p>The cat saw the <b>cat</b>.</p>", "html"), lambda texts: list(texts))
    assert out == "<p>The cat saw the <b>cat</b>.</p>"
    nav = split_document('<ul><li><a href="/">Home</a></li><li><b>Big</b> news</li></ul>', "html")
    assert nav.units == ["Home", "Big news", "Big"]
    for text in ("2 * 3 * 4 = 24\n", "a* and b*\n"):
        assert in_rounds(split_document(text, "markdown"), lambda texts: list(texts))[0] == text
