"""Documents cut into the sentences a translation model reads, and put back together around their translations.

A ``Document`` is its text's pieces in order: the ``units`` to translate (sentences) and, between them, what is
kept as it is (whitespace, line breaks, markup). ``join(translations)`` rebuilds it with each unit replaced.

- ``text``: lines are hard boundaries; each line is cut into sentences by pysbd (rule-based, maintained, pure
  Python, 23 languages with English rules for the others: its spans give each sentence's exact place, so the
  whitespace between sentences survives as it was).
- ``html``: Python's HTML parser walks the markup; every tag, comment, declaration and entity outside text
  stays byte for byte. Text nodes are translated, except inside ``<code>``, ``<pre>``, ``<script>``,
  ``<style>``, ``<textarea>`` and any element marked ``translate="no"`` or ``class="notranslate"``. A
  translated node is escaped again (``&``, ``<``, ``>``). Inline markup splits a sentence into nodes, each
  translated on its own.

- ``markdown``: fenced and indented code blocks, table rules, thematic breaks and link definitions stay as they
  are; a line's block markers (headings, quotes, list items, task boxes, table pipes) and its inline markup (code
  spans, emphasis markers, link and image targets, autolinks and bare URLs) are kept, and the text between them
  is translated. A link's text is translated on its own.

A sentence longer than the model's input limit (``fits``) is cut at word boundaries into parts that fit,
each translated once, so a long paragraph translates whole, never truncated.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

FORMATS = ("text", "html", "markdown")
SKIPPED_ELEMENTS = {"code", "pre", "script", "style", "textarea", "kbd", "samp", "var"}
# elements that never hold text of their own and need no end tag
VOID_ELEMENTS = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
}  # fmt: skip


@dataclass
class Document:
    """``pieces`` in order; ``slots[i]`` is the index in ``pieces`` of unit ``i``; ``escape`` applies to a
    translation before it takes its place."""

    pieces: list[str] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    escape: Callable[[str], str] = staticmethod(lambda s: s)

    @property
    def units(self) -> list[str]:
        return [self.pieces[i] for i in self.slots]

    def keep(self, text: str) -> None:
        if text:
            self.pieces.append(text)

    def unit(self, text: str) -> None:
        self.slots.append(len(self.pieces))
        self.pieces.append(text)

    def join(self, translations: list[str]) -> str:
        if len(translations) != len(self.slots):
            raise ValueError(f"{len(translations)} translations for {len(self.slots)} sentences")
        pieces = list(self.pieces)
        for slot, text in zip(self.slots, translations):
            pieces[slot] = self.escape(text)
        return "".join(pieces)


def split_document(
    text: str, format: str = "text", language: str | None = None, fits: Callable[[str], bool] | None = None
) -> Document:
    """``text`` as a ``Document`` of ``format`` (``text`` or ``html``); ``language``: the source language's
    code (pysbd's rules; English for others); ``fits(sentence)``: whether a sentence is within the model's
    input limit (longer ones are cut at words)."""
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {', '.join(FORMATS)}, not {format!r}")
    doc = Document()
    splitter = _Sentences(language, fits)
    if format == "html":
        doc.escape = lambda s: html.escape(s, quote=False)
        _HTMLWalker(doc, splitter).run(text)
    elif format == "markdown":
        _markdown(doc, text, splitter)
    else:
        splitter.add(doc, text)
    return doc


class _Sentences:
    """Cuts a run of text into sentences, keeping the whitespace around and between them."""

    def __init__(self, language: str | None, fits: Callable[[str], bool] | None):
        import pysbd
        from pysbd.languages import LANGUAGE_CODES

        code = (language or "en").lower()
        self.segmenter = pysbd.Segmenter(language=code if code in LANGUAGE_CODES else "en", clean=False, char_span=True)
        self.fits = fits

    def add(self, doc: Document, text: str) -> None:
        for line in re.split(r"(\r?\n)", text):
            if not line.strip():
                doc.keep(line)
                continue
            end = 0
            for span in self.segmenter.segment(line):
                sentence = span.sent.strip()
                if not sentence:
                    continue
                start = line.index(sentence, end)
                doc.keep(line[end:start])
                for n, part in enumerate(self._parts(sentence)):
                    if n:
                        doc.keep(" ")
                    doc.unit(part)
                end = start + len(sentence)
            doc.keep(line[end:])

    def _parts(self, sentence: str) -> list[str]:
        """The sentence, or its word-bounded parts where it is over the input limit."""
        if self.fits is None or self.fits(sentence):
            return [sentence]
        words = sentence.split()
        if len(words) < 2:
            return [sentence]  # one huge word: the model's own limit answers it
        half = len(words) // 2
        return self._parts(" ".join(words[:half])) + self._parts(" ".join(words[half:]))


class _HTMLWalker(HTMLParser):
    """Records every parser event's raw source; text nodes outside skipped elements become sentences."""

    def __init__(self, doc: Document, sentences: _Sentences):
        super().__init__(convert_charrefs=True)
        self.doc, self.sentences = doc, sentences
        self.skipping: list[str] = []  # open elements whose text is kept as it is
        self.events: list[tuple[int, str | None]] = []  # (raw start offset, decoded text of a text node or None)

    def run(self, source: str) -> None:
        lines = [0]
        for m in re.finditer("\n", source):
            lines.append(m.end())
        self._offset = lambda: lines[self.getpos()[0] - 1] + self.getpos()[1]
        self.feed(source)
        self.close()
        bounds = [start for start, _ in self.events] + [len(source)]
        self.doc.keep(source[: bounds[0]])
        for (start, text), end in zip(self.events, bounds[1:]):
            raw = source[start:end]
            if text is None or not text.strip():
                self.doc.keep(raw)
            else:
                self.sentences.add(self.doc, text)

    def _event(self, text: str | None = None) -> None:
        self.events.append((self._offset(), text))

    def handle_starttag(self, tag, attrs):
        self._event()
        attrs = dict(attrs)
        marked = attrs.get("translate") == "no" or "notranslate" in (attrs.get("class") or "").split()
        if tag not in VOID_ELEMENTS and (self.skipping or tag in SKIPPED_ELEMENTS or marked):
            self.skipping.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._event()

    def handle_endtag(self, tag):
        self._event()
        if self.skipping and tag in self.skipping:
            while self.skipping and self.skipping.pop() != tag:
                pass

    def handle_data(self, data):
        self._event(None if self.skipping else data)

    def handle_comment(self, data):
        self._event()

    def handle_decl(self, decl):
        self._event()

    def handle_pi(self, data):
        self._event()

    def unknown_decl(self, data):
        self._event()


# a line kept whole: a table's rule row, a thematic break, a link reference definition
_MD_KEPT_LINE = re.compile(r"^\s*(\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?|([-*_])(\s*\3){2,}|\[[^\]]+\]:\s+\S.*)\s*$")
_MD_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
# a line's block markers: quotes, a heading's hashes, a list item's marker and task box
_MD_BLOCK = re.compile(r"^(\s*(?:>\s?)*\s*(?:#{1,6}\s+|[-*+]\s+(?:\[[ xX]\]\s+)?|\d{1,9}[.)]\s+)?)")
# inline markup kept as written
_MD_INLINE = re.compile(
    r"(`+).+?\1"  # code span
    r"|!\[[^\]]*\]\([^)]*\)"  # image
    r"|\]\([^)]*\)|\]\[[^\]]*\]"  # a link's target (inline or reference)
    r"|\["  # a link's text begins
    r"|<[a-z][a-z0-9+.-]*:[^>\s]*>"  # autolink
    r"|https?://[^\s)>\]]+"  # bare URL
    r"|\*{1,3}|_{2,3}|~~"  # emphasis and strike-through markers
    r"|(?<=\s)\|(?=\s)|^\||\|$"  # table pipes
    r"|<[^>]+>"  # inline HTML tags
)


def _markdown(doc: Document, text: str, sentences: _Sentences) -> None:
    fence = None  # the open code fence, if any
    previous_blank = True
    for line in re.split(r"(?<=\n)", text):
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        opened = _MD_FENCE.match(body)
        if fence is not None or opened:
            doc.keep(line)
            if fence is None:
                fence = opened.group(1)
            elif body.strip().startswith(fence[0] * len(fence)) and not body.strip().strip(fence[0]):
                fence = None
            continue
        indented_code = previous_blank and (body.startswith("    ") or body.startswith("\t"))
        previous_blank = not body.strip()
        if not body.strip() or indented_code or _MD_KEPT_LINE.match(body):
            previous_blank = previous_blank or indented_code
            doc.keep(line)
            continue
        marker = _MD_BLOCK.match(body).group(1)
        doc.keep(marker)
        rest, end = body[len(marker) :], 0
        for found in _MD_INLINE.finditer(rest):
            sentences.add(doc, rest[end : found.start()])
            doc.keep(found.group(0))
            end = found.end()
        sentences.add(doc, rest[end:])
        doc.keep(ending)


# spans a translation keeps as they are (``translate(..., keep_spans=True)``): URLs, e-mail addresses,
# {variables} and numbers (a trailing sentence mark is not part of a URL)
_PROTECTED = re.compile(
    r"[a-z][a-z0-9+.-]*://[^\s<>\"]*[^\s<>\".,;:!?)\]]"
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|\{[^{}\s]+\}"
    r"|(?<![\w.])\d+(?:[.,:]\d+)*(?![\w])"
)


def protected_spans(text: str) -> list[str]:
    """The URLs, e-mail addresses, ``{variables}`` and numbers of ``text``, in order, each once."""
    return list(dict.fromkeys(m.group(0) for m in _PROTECTED.finditer(text)))
