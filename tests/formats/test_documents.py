"""Documents cut into sentences and rebuilt (``formats.documents``), and ``translate(format=...)`` on them: the
markup and whitespace come back byte for byte, code and ``translate="no"`` are untouched, every other text node
is translated, and a paragraph longer than the model's positions translates whole."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from turboseq.formats.documents import split_document

# the random test model often ends at once: a few forced tokens make every translation visible
FORCED = {"min_new_tokens": 3, "max_new_tokens": 6}
PARAGRAPH = (
    "The committee met on Monday. It discussed the budget for next year!  Dr. Smith asked about the costs?\n"
    "A second line follows here."
)


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
        "The train number 0 leaves at eight.",
        "It stops in",
        "three",
        "towns & one",
        "village",
        ".",
        "Call",
        "before you leave.",
        "First item in the list",
        "Second item",
    ]  # no code, pre, style, translate="no" or notranslate text; entities decoded
    assert page.join(["<x> & y"] * len(page.units)).count("&lt;x&gt; &amp; y") == len(page.units)
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
    alone = model.translate(doc.units, **FORCED)  # each sentence translated alone: the same words
    assert out == doc.join(alone)
    assert all(a and a != u for a, u in zip(alone, doc.units))  # every text node translated

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
    assert doc.units[:7] == [
        "Getting started with the trains",
        "The train leaves at",
        "eight",
        "o'clock.",
        "See the",
        "timetable",
        "for details.",
    ]
    joined = "\n".join(doc.units)
    for kept in ("do not translate", "indented code", "inline code", "https://", "img.png", "ref", "---"):
        assert kept not in joined
    out = model.translate([MARKDOWN], format="markdown", **FORCED)[0]
    alone = model.translate(doc.units, **FORCED)
    assert out == doc.join(alone) and all(a and a != u for a, u in zip(alone, doc.units))
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
