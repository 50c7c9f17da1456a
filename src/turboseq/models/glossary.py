"""Glossary terms and protected spans put where the model translates their source words.

A required target phrase (``Phrase``) knows the source token positions it stands for. Placing it:

1. The sentence is searched as without terms.
2. The output is teacher-forced through the decoder and each output token is aligned to the source position
   the last decoder layer's cross-attention (its heads averaged) weighs most when producing it (fairseq's and
   Marian's way of reading alignments from an attention model).
3. A missing phrase whose source positions some output tokens align to replaces them: the output up to the
   first of those tokens (widened to whole words) followed by the phrase becomes a forced decoder prompt,
   the model's own first token there is banned right after it (``BanAfterPrompts``), and the search goes on
   from there. One phrase per round, the earliest in the output first.
4. A phrase still missing (no output token aligns to its source words, or a model without them) is required
   by ``RequiredPhrases``, which writes it before the end.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from turboseq.formats.documents import protected_spans
from turboseq.generation.processors import BanAfterPrompts, RequiredPhrases, contains_phrase
from turboseq.runtime.cache import DecoderState
from turboseq.runtime.decoding import decode_step
from turboseq.runtime.layers import build_cross_kv

ALIGN_BATCH = 32  # rows teacher-forced at once to read their alignments


@dataclass(frozen=True)
class Phrase:
    """Target token ids every output holds, and the source token positions they translate (empty: unknown)."""

    ids: tuple[int, ...]
    source: tuple[int, ...] = ()


def required_phrases(tokenizer, text: str, glossary: dict, keep_spans: bool) -> tuple[Phrase, ...]:
    """The target phrases ``text`` requires: its glossary terms (ValueError for a term the target vocabulary
    cannot write) and, with ``keep_spans``, its protected spans that the vocabulary can write; each with the
    source token positions of its first occurrence."""
    phrases = []
    lead = None  # special tokens before the text's own (read once, where a phrase needs it)
    for source, target in glossary.items():
        found = _find(text, source) if source.strip() else None
        if found is not None:
            ids = phrase_ids(tokenizer, target)
            if ids is None:
                raise ValueError(f"glossary term {target!r} cannot be written with this model's target vocabulary")
            lead = _lead(tokenizer, text) if lead is None else lead
            phrases.append(Phrase(ids, source_positions(tokenizer, text, *found, lead)))
    for span in protected_spans(text) if keep_spans else []:
        ids = phrase_ids(tokenizer, span)
        if ids is not None:
            at = text.find(span)
            lead = _lead(tokenizer, text) if lead is None else lead
            phrases.append(Phrase(ids, source_positions(tokenizer, text, at, at + len(span), lead)))
    unique: dict[tuple, Phrase] = {}
    for p in phrases:
        unique.setdefault(p.ids, p)
    return tuple(unique.values())


def phrase_ids(tokenizer, term: str) -> tuple[int, ...] | None:
    """``term``'s target token ids, or None where they do not decode back to it (unknown characters)."""
    ids = tokenizer(text_target=term, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    return tuple(ids) if ids and decoded.strip() == term.strip() else None


def check_terms(glossary, keep_spans) -> None:
    """TypeError unless ``glossary`` is None or a dict of strings to strings and ``keep_spans`` a boolean."""
    if glossary is not None and not (
        isinstance(glossary, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in glossary.items())
    ):
        raise TypeError("`glossary` must be a dict of source terms to target terms (strings)")
    if not isinstance(keep_spans, bool):
        raise TypeError("`keep_spans` must be a boolean")


def _find(text: str, term: str) -> tuple[int, int] | None:
    """Where ``term`` first occurs in ``text`` as whole words, in any case."""
    m = re.search(rf"(?<!\w){re.escape(term.strip())}(?!\w)", text, re.IGNORECASE)
    return None if m is None else (m.start(), m.end())


def _lead(tokenizer, text: str) -> int:
    """How many special tokens ``text``'s encoding has before its own (BART's ``<s>``: 1)."""
    full = tokenizer(text)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    return 1 if plain and full and full[0] != plain[0] else 0


def source_positions(tokenizer, text: str, start: int, end: int, lead: int) -> tuple[int, ...]:
    """The token positions in ``text``'s encoding (``lead`` special tokens first) of its characters
    ``start:end``."""
    before = len(tokenizer(text[:start].rstrip(), add_special_tokens=False)["input_ids"]) if text[:start].strip() else 0
    through = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
    return tuple(range(lead + before, lead + max(through, before + 1)))


def place_phrases(model, rows: list[Tensor], phrases: list[tuple[Phrase, ...]], search, settings, prompts,
                  lock=None):  # fmt: skip
    """Per row its sequences (as ``search`` gives them), each holding the row's ``phrases``.
    ``search(rows, prompts, rules)`` runs the model's search (``settings``) over ``rows`` with per-row decoder
    ``prompts`` and extra logits ``rules``; ``prompts``: the rows' own (the start token, and a user's prefix);
    ``lock``: held while the tokenizer decodes (a server's other threads use it too)."""
    prompts = list(prompts)
    outputs = search(rows, prompts, [])
    eos = set(settings.eos_token_ids)
    lock = lock if lock is not None else nullcontext()
    # the forced first token (mBART's and NLLB's target language) is never replaced
    first = 2 if settings.forced_bos_token_id is not None else 1
    placed: list[set[Phrase]] = [set() for _ in rows]

    for _ in range(max((len(p) for p in phrases), default=0)):
        todo, bans = [], {}  # bans: prompt -> the tokens that may not follow it
        ys = [out[0].tolist() for out in outputs]
        unplaced = [
            [p for p in ps if p.source and p not in done and not contains_phrase(y, list(p.ids))]
            for ps, done, y in zip(phrases, placed, ys)
        ]
        aligned = _alignments(model, rows, [out[0] for out in outputs], [bool(u) for u in unplaced])
        for i, align in enumerate(aligned):
            if align is None:
                continue
            y = ys[i]
            fixed = max(len(prompts[i]), first)
            spots = [(s, p) for p in unplaced[i] if (s := _hits(y, align, p, eos, fixed))]
            if not spots:
                continue
            with lock:
                starts = _word_starts(model.tokenizer, y)
            spots = sorted(((_widen(h, starts, fixed), p) for h, p in spots), key=lambda spot: spot[0])
            (begin, end), phrase = spots[0]
            prompt = y[:begin] + list(phrase.ids)
            prompts[i] = torch.tensor(prompt, dtype=torch.long)
            placed[i].add(phrase)
            # the model's own words there do not follow the phrase at once
            own = {y[j] for j in range(begin, end) if starts[j]} - {phrase.ids[0]}
            if own:
                bans.setdefault(tuple(prompt), set()).update(own)
            todo.append(i)
        if not todo:
            break
        again = search([rows[i] for i in todo], [prompts[i] for i in todo], [BanAfterPrompts(bans)] if bans else [])
        for i, out in zip(todo, again):
            outputs[i] = out
    groups: dict[tuple, list[int]] = {}
    for i, (ps, out) in enumerate(zip(phrases, outputs)):
        if any(not contains_phrase(out[0].tolist(), list(p.ids)) for p in ps):
            groups.setdefault(ps, []).append(i)
    for ps, members in groups.items():  # what found no place: written before the end
        rule = RequiredPhrases([list(p.ids) for p in ps], settings.eos_token_ids, settings.max_length)
        again = search([rows[i] for i in members], [prompts[i] for i in members], [rule])
        for i, out in zip(members, again):
            outputs[i] = out
    return outputs


def _hits(y: list[int], align: list[int], phrase: Phrase, eos: set, fixed: int) -> tuple[int, int] | None:
    """(first, last + 1) of the output tokens aligned to the phrase's source positions; tokens before ``fixed``
    (the prompt) and EOS are never replaced."""
    hits = [j for j, a in enumerate(align, 1) if a in phrase.source and j >= fixed and y[j] not in eos]
    return (min(hits), max(hits) + 1) if hits else None


def _widen(span: tuple[int, int], starts: list[bool], fixed: int) -> tuple[int, int]:
    """``span`` widened to whole words (``starts``: whether each token begins a word)."""
    start, end = span
    while start > fixed and not starts[start]:
        start -= 1
    while end < len(starts) and not starts[end]:
        end += 1
    return start, end


def _word_starts(tokenizer, y: list[int]) -> list[bool]:
    """Whether each output token begins a word: its text starts with a space where it follows the tokens
    before it. In a text without spaces (Chinese, Japanese, Thai) every token counts as a word."""
    texts = [tokenizer.decode(y[1:j], skip_special_tokens=True) for j in range(len(y) + 1)]
    if not any(c.isspace() for c in texts[-1].strip()):
        return [True] * len(y)
    return [j <= 1 or not texts[j] or texts[j + 1][len(texts[j]) : len(texts[j]) + 1].isspace() for j in range(len(y))]


@torch.inference_mode()
def _alignments(model, rows: list[Tensor], outputs: list[Tensor], wanted: list[bool]) -> list[list[int] | None]:
    """Per row (where ``wanted``), the source position each output token after the first aligns to: the
    argmax of the last decoder layer's cross-attention, heads averaged, at the step that produced it. The rows
    run in padded batches of ``ALIGN_BATCH``."""
    result: list[list[int] | None] = [None] * len(rows)
    picked = [i for i, w in enumerate(wanted) if w]
    if not picked or not getattr(model.backend, "teacher_forcing", False):  # an export decodes only
        return result
    for at in range(0, len(picked), ALIGN_BATCH):
        chunk = picked[at : at + ALIGN_BATCH]
        for i, align in zip(chunk, _align_chunk(model, [rows[i] for i in chunk], [outputs[i] for i in chunk])):
            result[i] = align
    return result


def _align_chunk(model, rows: list[Tensor], outputs: list[Tensor]) -> list[list[int]]:
    """``_alignments`` of a few rows, as one padded batch (padding at the ends changes no earlier position)."""
    spec = model.spec
    last = len(spec.decoder.layers) - 1
    attn = spec.decoder.layers[0].self_attn
    sources = [torch.as_tensor(r, dtype=torch.long) for r in rows]
    source = torch.full((len(rows), max(len(r) for r in sources)), spec.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(source)
    for j, r in enumerate(sources):
        source[j, : len(r)], mask[j, : len(r)] = r, 1
    lengths = [len(out) for out in outputs]
    target = torch.zeros((len(rows), max(lengths)), dtype=torch.long)
    for j, out in enumerate(outputs):
        target[j, : lengths[j]] = out
    hidden, cross_mask = model.encode(source.to(model.device), mask.to(model.device))
    state = DecoderState(build_cross_kv(spec, hidden), cross_mask, 1, attn.kv_heads, attn.head_dim, target.shape[1])
    state.capture = {last: list(range(spec.decoder.layers[last].cross_attn.num_heads))}
    decode_step(spec, state, target.to(model.device), all_positions=True)
    scores = state.captured[0].masked_fill(mask[:, None, None, :].to(model.device) == 0, float("-inf"))
    best = scores.softmax(dim=-1).mean(dim=1).argmax(dim=-1)  # [rows, target]
    return [best[j, : lengths[j] - 1].tolist() for j in range(len(rows))]  # position t produced token t + 1
