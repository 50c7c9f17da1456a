"""Documents cut into the sentences a translation model reads, and put back together around their translations.

A ``Document`` is its text's pieces in order: the ``units`` to translate (sentences) and, between them, what is
kept as it is (whitespace, line breaks, markup). ``join(translations)`` rebuilds it with each unit replaced.

- ``text``: lines are hard boundaries; each line is cut into sentences by pysbd (rule-based, maintained, pure
  Python, 23 languages with English rules for the others: its spans give each sentence's exact place, so the
  whitespace between sentences survives as it was).
- ``html``: Python's HTML parser walks the markup; every tag, comment, declaration and entity outside text
  stays byte for byte. Text nodes are translated, except inside ``<code>``, ``<pre>``, ``<script>``,
  ``<style>``, ``<textarea>`` and any element marked ``translate="no"`` or ``class="notranslate"``. A
  translated node is escaped again (``&``, ``<``, ``>``). Inline markup moves with its words where it can
  (below).

- ``markdown``: fenced and indented code blocks, table rules, thematic breaks and link definitions stay as they
  are; a line's block markers (headings, quotes, list items, task boxes, table pipes) and its inline markup (code
  spans, emphasis markers, link and image targets, autolinks and bare URLs) are kept, and the text between them
  is translated. Emphasis and links move with their words where they can (below).

Inline markup (``<b>``, ``<a href>``, ``<em>``, markdown's ``**`` and ``[text](url)``, each holding plain text):
the sentence is translated whole, and so is each element's text alone; where each element's translation is
found in its sentence's translation, the element's markup is put around it there (so it moves with its words
when the word order changes). Where one is not found, that run of text is translated a second time node by
node, each node on its own, its markup where it was. ``translate_documents`` runs the rounds.

A sentence longer than the model's input limit (``fits``) is cut at word boundaries into parts that fit,
each translated once, so a long paragraph translates whole, never truncated.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from html.parser import HTMLParser

FORMATS = ("text", "html", "markdown")
SKIPPED_ELEMENTS = {"code", "pre", "script", "style", "textarea", "kbd", "samp", "var"}
# elements that never hold text of their own and need no end tag
VOID_ELEMENTS = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
}  # fmt: skip
# elements inside a sentence whose markup moves with their words
INLINE_ELEMENTS = {
    "a", "abbr", "b", "bdi", "bdo", "cite", "del", "dfn", "em", "font", "i", "ins", "mark", "q", "s", "small",
    "span", "strong", "sub", "sup", "time", "u",
}  # fmt: skip


@dataclass
class Document:
    """``pieces`` in order; ``slots[i]`` is the index in ``pieces`` of unit ``i``; ``runs``: the runs of text
    with inline markup, each at its own index in ``pieces``; ``escape`` applies to a translation before it takes
    its place."""

    pieces: list = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    escape: Callable[[str], str] = staticmethod(lambda s: s)
    runs: list[tuple[int, _Inline]] = field(default_factory=list)

    @property
    def units(self) -> list[str]:
        """What the first round translates: the sentences, then each run's sentences and element texts."""
        return [self.pieces[i] for i in self.slots] + [u for _, run in self.runs for u in run.units]

    def keep(self, text: str) -> None:
        if text:
            self.pieces.append(text)

    def unit(self, text: str) -> None:
        self.slots.append(len(self.pieces))
        self.pieces.append(text)

    def run(self, parts: list[tuple[str, str]], sentences: _Sentences) -> None:
        """A run of text and inline markup: ``parts`` in order, each ("text", text), ("open", markup) or
        ("close", markup). Where every element is one piece of text between an opening and a closing markup,
        each within one sentence, the run moves its markup with its words (``_Inline``); otherwise each piece
        of text is translated on its own, the markup kept where it is."""
        alone = Document(escape=self.escape)
        for kind, value in parts:
            sentences.add(alone, value) if kind == "text" else alone.keep(value)
        inline = _Inline.of(parts, sentences, alone)
        if inline is None:
            base = len(self.pieces)
            self.pieces.extend(alone.pieces)
            self.slots.extend(base + i for i in alone.slots)
        else:
            self.runs.append((len(self.pieces), inline))
            self.pieces.append("")

    def join(self, translations: list[str], alone: list[str] | None = None) -> str:
        """The document with each unit replaced by its translation; ``alone``: the second round's translations
        (``retry``), where it has one."""
        if len(translations) != len(self.units):
            raise ValueError(f"{len(translations)} translations for {len(self.units)} sentences")
        pieces = list(self.pieces)
        for slot, text in zip(self.slots, translations):
            pieces[slot] = self.escape(text)
        placed = self._placed(translations)
        second = sum(len(run.alone.slots) for (_, run), p in zip(self.runs, placed) if p is None)
        if len(alone or []) != second:
            raise ValueError(f"{len(alone or [])} second-round translations for {second} (see `retry`)")
        again = iter(alone or [])
        for (index, run), p in zip(self.runs, placed):
            pieces[index] = p if p is not None else run.alone.join([next(again) for _ in run.alone.slots])
        return "".join(pieces)

    def retry(self, translations: list[str]) -> list[str]:
        """The second round's units, given the first round's translations: the text nodes of each run whose
        elements were not all found in their sentence's translation."""
        return [
            unit for (_, run), p in zip(self.runs, self._placed(translations)) if p is None for unit in run.alone.units
        ]

    def _placed(self, translations: list[str]) -> list[str | None]:
        """Each run with its markup placed in the first round's translations (None: not placed)."""
        rest = iter(translations[len(self.slots) :])
        return [run.place([next(rest) for _ in run.units]) for _, run in self.runs]


def translate_documents(documents: list[Document]) -> Generator[list[str], list[str], list[str]]:
    """The rounds of translating ``documents``: yields the texts to translate, is sent their translations, and
    returns the documents put back together. Round one: every sentence and inline element's text; round two
    (only where needed): the text nodes of the runs whose markup could not be placed."""
    first = [u for d in documents for u in d.units]
    translated = (yield first) if first else []
    cuts, at = [], 0
    for d in documents:
        cuts.append(translated[at : at + len(d.units)])
        at += len(d.units)
    retries = [d.retry(t) for d, t in zip(documents, cuts)]
    flat = [u for r in retries for u in r]
    second = iter((yield flat) if flat else [])
    return [d.join(t, [next(second) for _ in r]) for d, t, r in zip(documents, cuts, retries)]


def run_rounds(rounds: Generator[list[str], list[str], list[str]], translate: Callable[[list[str]], list[str]]):
    """``translate_documents``' rounds with a synchronous ``translate(texts) -> translations``."""
    try:
        texts = next(rounds)
        while True:
            texts = rounds.send(translate(texts))
    except StopIteration as done:
        return done.value


@dataclass
class _Inline:
    """A run of text whose inline elements move with their words: ``text`` (the elements' text included) cut
    into ``spans`` (sentences), ``elements`` as (start, end, opening markup, closing markup) in ``text``, and
    ``alone``: the same run with each text node translated on its own (the second round's fallback, whose
    ``escape`` the run's translations take too)."""

    text: str
    spans: list[tuple[int, int]]
    elements: list[tuple[int, int, str, str]]
    alone: Document

    @classmethod
    def of(cls, parts: list[tuple[str, str]], sentences: _Sentences, alone: Document) -> _Inline | None:
        kinds = [k for k, _ in parts]
        if "open" not in kinds and "close" not in kinds:
            return None
        text, elements, i = "", [], 0
        while i < len(parts):
            kind, value = parts[i]
            if kind == "text":
                text += value
                i += 1
                continue
            window = parts[i : i + 3]
            if kind != "open" or [k for k, _ in window] != ["open", "text", "close"] or not window[1][1].strip():
                return None  # nested, empty or unbalanced markup
            inner = window[1][1]
            start = len(text) + len(inner) - len(inner.lstrip())
            elements.append((start, start + len(inner.strip()), value, window[2][1]))
            text += inner
            i += 3
        spans = sentences.spans(text)
        if spans is None or not all(any(s <= a and b <= e for s, e in spans) for a, b, _, _ in elements):
            return None
        return cls(text, spans, elements, alone)

    @property
    def units(self) -> list[str]:
        """The sentences, then the text of each element that is not a whole sentence."""
        return [self.text[s:e] for s, e in self.spans] + [self.text[a:b] for a, b, _, _ in self._parts()]

    def _parts(self) -> list[tuple[int, int, str, str]]:
        return [el for el in self.elements if (el[0], el[1]) not in self.spans]

    def place(self, translations: list[str]) -> str | None:
        """The run translated with its markup around each element's words, or None where an element's
        translation is not found in its sentence's."""
        sentences = translations[: len(self.spans)]
        found = dict(zip(self._parts(), translations[len(self.spans) :]))
        escape = self.alone.escape
        out, end = [], 0
        for (s, e), sentence in zip(self.spans, sentences):
            out.append(escape(self.text[end:s]))
            marks = []  # (start, end, opening, closing) in the translated sentence
            for a, b, opening, closing in self.elements:
                if (a, b) == (s, e):  # the element is the whole sentence
                    marks.append((0, len(sentence), opening, closing))
                elif s <= a and b <= e:
                    # the n-th of its words' occurrences in the source sentence: the n-th in the translation,
                    # where it holds as many
                    nth = len(_matches(self.text[s:a], self.text[a:b], 0))
                    count = len(_matches(self.text[s:e], self.text[a:b], 0))
                    word = found[(a, b, opening, closing)].strip()
                    where = _find(sentence, word, [(x, y) for x, y, _, _ in marks], nth, count)
                    if where is None:
                        return None
                    marks.append((*where, opening, closing))
            at = 0
            for x, y, opening, closing in sorted(marks):
                out += [escape(sentence[at:x]), opening, escape(sentence[x:y]), closing]
                at = y
            out.append(escape(sentence[at:]))
            end = e
        out.append(escape(self.text[end:]))
        return "".join(out)


def _find(sentence: str, word: str, taken: list[tuple[int, int]], nth: int, count: int) -> tuple[int, int] | None:
    """Where ``word`` stands in ``sentence`` as whole words (exactly, else in any case), clear of ``taken``: its
    ``nth`` occurrence where it occurs ``count`` times, else its first free one."""
    if not word:
        return None
    for flags in (0, re.IGNORECASE):
        every = _matches(sentence, word, flags)
        found = [m for m in every if all(m[1] <= x or m[0] >= y for x, y in taken)]
        if found:
            return found[nth] if len(every) == count and nth < len(found) else found[0]
    return None


def _matches(text: str, word: str, flags: int) -> list[tuple[int, int]]:
    """Each whole-word occurrence of ``word`` in ``text``: (start, end)."""
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags)]


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
        end = 0
        for start, stop in self._spans(text):
            doc.keep(text[end:start])
            for n, part in enumerate(self._parts(text[start:stop])):
                if n:
                    doc.keep(" ")
                doc.unit(part)
            end = stop
        doc.keep(text[end:])

    def spans(self, text: str) -> list[tuple[int, int]] | None:
        """Each sentence's (start, end) in ``text``; None where one is over the input limit."""
        spans = self._spans(text)
        return spans if all(len(self._parts(text[s:e])) == 1 for s, e in spans) else None

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Lines are hard boundaries; pysbd cuts each line, its spans trimmed of whitespace."""
        spans, base = [], 0
        for line in re.split(r"(\r?\n)", text):
            end = 0
            if line.strip():
                for span in self.segmenter.segment(line):
                    sentence = span.sent.strip()
                    if sentence:
                        start = line.index(sentence, end)
                        end = start + len(sentence)
                        spans.append((base + start, base + end))
            base += len(line)
        return spans

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
    """Records every parser event's raw source; text nodes outside skipped elements become sentences, and with
    the inline elements between them, runs (``Document.run``)."""

    def __init__(self, doc: Document, sentences: _Sentences):
        super().__init__(convert_charrefs=True)
        self.doc, self.sentences = doc, sentences
        self.skipping: list[str] = []  # open elements whose text is kept as it is
        # (raw start offset, decoded text of a text node or None, "text", "open" or "close" for a run's part)
        self.events: list[tuple[int, str | None, str | None]] = []

    def run(self, source: str) -> None:
        lines = [0]
        for m in re.finditer("\n", source):
            lines.append(m.end())
        self._offset = lambda: lines[self.getpos()[0] - 1] + self.getpos()[1]
        self.feed(source)
        self.close()
        bounds = [start for start, _, _ in self.events] + [len(source)]
        self.doc.keep(source[: bounds[0]])
        run: list[tuple[str, str, str]] = []  # (kind, decoded text or markup, raw source)
        for (start, text, kind), end in zip(self.events, bounds[1:]):
            raw = source[start:end]
            if kind is not None:
                run.append((kind, text if kind == "text" else raw, raw))
                continue
            self._flush(run)
            self.doc.keep(raw)
        self._flush(run)

    def _flush(self, run: list[tuple[str, str, str]]) -> None:
        if any(kind != "text" for kind, _, _ in run):
            self.doc.run([(kind, value) for kind, value, _ in run], self.sentences)
        else:
            for _, text, raw in run:
                self.doc.keep(raw) if not text.strip() else self.sentences.add(self.doc, text)
        run.clear()

    def _event(self, text: str | None = None, kind: str | None = None) -> None:
        self.events.append((self._offset(), text, kind))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        marked = attrs.get("translate") == "no" or "notranslate" in (attrs.get("class") or "").split()
        inline = tag in INLINE_ELEMENTS and not self.skipping and not marked
        self._event(kind="open" if inline else None)
        if tag not in VOID_ELEMENTS and (self.skipping or tag in SKIPPED_ELEMENTS or marked):
            self.skipping.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._event()

    def handle_endtag(self, tag):
        inline = tag in INLINE_ELEMENTS and not self.skipping
        self._event(kind="close" if inline else None)
        if self.skipping and tag in self.skipping:
            while self.skipping and self.skipping.pop() != tag:
                pass

    def handle_data(self, data):
        self._event(None if self.skipping else data, None if self.skipping else "text")

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
        _markdown_line(doc, body[len(marker) :], sentences)
        doc.keep(ending)


def _markdown_line(doc: Document, rest: str, sentences: _Sentences) -> None:
    """A line's text and inline markup: emphasis markers (paired as they come) and a link's brackets are the
    runs' opening and closing markup; code spans, images, URLs and tags are kept where they are, between runs."""
    run: list[tuple[str, str]] = []
    opened: list[str] = []
    end = 0

    def flush():
        if run:
            doc.run(list(run), sentences)
            run.clear()

    def text(value: str) -> None:
        if value:
            run.append(("text", value))

    for found in _MD_INLINE.finditer(rest):
        text(rest[end : found.start()])
        mark = found.group(0)
        before = rest[found.start() - 1] if found.start() else " "
        after = rest[found.end()] if found.end() < len(rest) else " "
        emphasis = mark.strip("*_~") == ""
        if emphasis and opened and opened[-1] == mark and not before.isspace():  # closes (right-flanking)
            run.append(("close", mark))
            opened.pop()
        elif mark == "[" or (emphasis and not after.isspace()):  # opens (left-flanking)
            run.append(("open", mark))
            opened.append(mark)
        elif mark.startswith("]") and opened and opened[-1] == "[":
            run.append(("close", mark))
            opened.pop()
        else:
            flush()
            opened.clear()
            doc.keep(mark)
        end = found.end()
    text(rest[end:])
    flush()


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
