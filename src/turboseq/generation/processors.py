"""Logits processors: one class per rule, called as ``proc(input_ids [rows, cur_len], scores [rows, vocab])``.

``input_ids`` may hold ids >= vocab where a decoder-only prompt was left-padded: no rule matches them.

Every rule mirrors its transformers counterpart (same names, order and arithmetic), so float32 results are
token-identical. A processor may write into ``scores``: the search loops own the tensors they pass.

Each class declares what greedy's exact shortcut (``runtime.head.LMHead.greedy``) needs to know about it:
``bans_only``: it only bans or forces tokens (sets scores to -inf, or forces one), so bounds on approximate
logits stay valid through it; ``argmax_invariant``: it never changes a row's argmax (a whole-row shift), so
greedy may skip it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.generation.settings import GenerationSettings

NEG_INF = -math.inf


class LogitsProcessor:
    bans_only = False
    argmax_invariant = False

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        raise NotImplementedError


class RepetitionPenalty(LogitsProcessor):
    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # ids >= vocab (left padding of decoder-only prompts) are not penalized, as transformers ignores padding
        vocab = scores.shape[1]
        seen = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
        seen.scatter_(1, input_ids.clamp(max=vocab), True)
        penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen[:, :vocab], penalized, scores)


class NoRepeatNGram(LogitsProcessor):
    bans_only = True

    def __init__(self, size: int):
        self.size = size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        cur_len = input_ids.shape[1]
        if cur_len < self.size:
            return scores
        # a window whose first n-1 tokens equal the current suffix bans its last token
        prefix = input_ids[:, cur_len + 1 - self.size :]
        windows = input_ids.unfold(1, self.size, 1)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
        vocab = scores.shape[1]
        banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], NEG_INF)


class BadWords(LogitsProcessor):
    """Bans single tokens always and the last token of longer words whose prefix ends the sequence.

    Like all processors here it may write into ``scores``: the search loops own the tensors they pass."""

    bans_only = True

    def __init__(self, bad_words_ids: list[list[int]], vocab_size: int):
        too_big = sorted({t for w in bad_words_ids for t in w if t >= vocab_size})
        if too_big:
            raise ValueError(f"`bad_words_ids` has token ids {too_big} outside the vocabulary of {vocab_size}")
        self.single = sorted({w[0] for w in bad_words_ids if len(w) == 1})
        self.multi = [w for w in bad_words_ids if len(w) > 1]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.single:
            scores[:, self.single] = NEG_INF
        for word in self.multi:
            prefix = torch.tensor(word[:-1], device=input_ids.device)
            if len(prefix) <= input_ids.shape[1]:
                scores[(input_ids[:, -len(prefix) :] == prefix).all(dim=1), word[-1]] = NEG_INF
        return scores


class MinLength(LogitsProcessor):
    """Bans EOS while the sequence (``skip`` prompt tokens excluded) is shorter than ``min_length``."""

    bans_only = True

    def __init__(self, min_length: int, eos_ids: list[int], skip: int = 0):
        self.min_length, self.eos_ids, self.skip = min_length, eos_ids, skip

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] - self.skip < self.min_length:
            scores[:, self.eos_ids] = NEG_INF
        return scores


class ForcedToken(LogitsProcessor):
    """Forces ``token`` when the sequence has ``at_length`` tokens (BOS after the start, EOS at the end)."""

    bans_only = True

    def __init__(self, token: int | list[int], at_length: int):
        self.token, self.at_length = token, at_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] == self.at_length:
            scores.fill_(NEG_INF)
            scores[:, self.token] = 0
        return scores


class SuppressTokens(LogitsProcessor):
    """Bans ``tokens`` at every step, or only at the first generated position when ``at_length`` is set
    (Whisper's suppress_tokens and begin_suppress_tokens)."""

    bans_only = True

    def __init__(self, tokens: list[int], at_length: int | None = None):
        self.tokens, self.at_length = sorted(set(tokens)), at_length
        self._index: Tensor | None = None  # the tokens inside the vocabulary, made once per device

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.at_length is None or input_ids.shape[1] == self.at_length:
            index = self._index
            if index is None or index.device != scores.device:
                inside = [t for t in self.tokens if t < scores.shape[1]]
                index = self._index = torch.tensor(inside, dtype=torch.long, device=scores.device)
            scores.index_fill_(1, index, NEG_INF)
        return scores


class TimestampRules(LogitsProcessor):
    """Whisper's timestamp grammar (transformers' WhisperTimeStampLogitsProcessor, after openai/whisper).

    Timestamps come in pairs (segment end, next segment start) except right before EOS, never decrease, the
    first generated token is a timestamp no later than ``max_initial`` steps, and where the timestamps together
    are more likely than the best text token, a timestamp is forced.
    """

    def __init__(self, no_timestamps: int, eos: int, begin_index: int, max_initial: int | None,
                 force_initial: bool | None = True):  # fmt: skip
        self.no_timestamps, self.first = no_timestamps, no_timestamps + 1
        self.eos, self.begin_index, self.max_initial = eos, begin_index, max_initial
        # False after a forced prefix (CTranslate2's Whisper): the first generated token need not be a timestamp;
        # None: decided per row, by its prompt's last token (a start-sequence token: forced; text or a timestamp,
        # a prefix: not), for rows whose prompts have one length but not one layout
        self.force_initial = force_initial

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores[:, self.no_timestamps] = NEG_INF
        lowest_allowed = []
        for k, seq in enumerate(input_ids[:, self.begin_index :].tolist()):
            last_was_ts = len(seq) >= 1 and seq[-1] >= self.first
            penultimate_was_ts = len(seq) < 2 or seq[-2] >= self.first
            if last_was_ts:
                if penultimate_was_ts:  # a pair just closed: text next
                    scores[k, self.first :] = NEG_INF
                else:  # a segment just ended: its closing timestamp or EOS, no text
                    scores[k, : self.eos] = NEG_INF
            lowest = self.first
            stamps = [t for t in seq if t >= self.first]
            if stamps:
                lowest = stamps[-1] if last_was_ts and not penultimate_was_ts else stamps[-1] + 1
            lowest_allowed.append(lowest)
        for k, lowest in enumerate(lowest_allowed):  # (row slices: a vocabulary-wide mask costs 10x more)
            scores[k, self.first : lowest] = NEG_INF
        if input_ids.shape[1] == self.begin_index and self.force_initial is not False:
            rows = slice(None)
            if self.force_initial is None:
                last = input_ids[:, self.begin_index - 1]
                rows = ((last >= self.eos) & (last < self.first)).nonzero().squeeze(1)
            scores[rows, : self.first] = NEG_INF
            if self.max_initial is not None:
                scores[rows, self.first + self.max_initial + 1 :] = NEG_INF
        logprobs = F.log_softmax(scores.float(), dim=-1)
        timestamp_logprob = logprobs[:, self.first :].logsumexp(dim=-1)
        best_text = logprobs[:, : self.first].amax(dim=-1)
        forced = (timestamp_logprob > best_text).nonzero().squeeze(1).tolist()
        for k in forced:  # (row slices again: most rows are not forced)
            scores[k, : self.first] = NEG_INF
        return scores


class Temperature(LogitsProcessor):
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores / self.temperature


class TopK(LogitsProcessor):
    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        self.top_k = max(top_k, min_tokens_to_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP(LogitsProcessor):
    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p, self.min_tokens_to_keep = top_p, min_tokens_to_keep

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - self.top_p)
        remove[..., -self.min_tokens_to_keep :] = False
        return scores.masked_fill(remove.scatter(1, sorted_idx, remove), NEG_INF)


class LogSoftmax(LogitsProcessor):
    bans_only = True  # a whole-row shift keeps the order of the bounds
    argmax_invariant = True

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # in place: a fresh [rows, vocab] tensor per step costs more in page faults than the arithmetic
        return torch.log_softmax(scores, dim=-1, out=scores)


def build_processors(s: GenerationSettings, vocab_size: int) -> list[LogitsProcessor]:
    """The processors transformers would build for these settings, in transformers' order."""
    procs: list = []
    if s.repetition_penalty != 1.0:
        procs.append(RepetitionPenalty(s.repetition_penalty))
    if s.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGram(s.no_repeat_ngram_size))
    if s.bad_words_ids:
        procs.append(BadWords(s.bad_words_ids, vocab_size))
    if s.eos_token_ids and s.min_length > 0:
        procs.append(MinLength(s.min_length, s.eos_token_ids))
    if s.eos_token_ids and s.min_new_tokens:
        procs.append(MinLength(s.min_new_tokens, s.eos_token_ids, skip=s.prompt_length))
    if s.forced_bos_token_id is not None:
        procs.append(ForcedToken(s.forced_bos_token_id, at_length=1))
    if s.forced_eos_token_id is not None:
        procs.append(ForcedToken(s.forced_eos_token_id, at_length=s.max_length - 1))
    procs.extend(s.rules)
    if s.do_sample:
        keep = (len(s.eos_token_ids) + 1) if s.is_beam else 1
        if s.temperature != 1.0:
            procs.append(Temperature(s.temperature))
        if s.top_k != 0:
            procs.append(TopK(s.top_k, keep))
        if s.top_p < 1.0:
            procs.append(TopP(s.top_p, keep))
    if s.renormalize_logits:
        procs.append(LogSoftmax())
    return procs


class RequiredPhrases(LogitsProcessor):
    """Every output holds each of ``phrases`` (token id lists): turboseq's own rule for glossaries and protected
    spans, not transformers' constrained beam search (``force_words_ids``), and not token-identical to it.

    Per row, from its tokens so far: a phrase begun (the row ends with a proper prefix of a missing phrase) is
    continued; while a phrase is missing, EOS is banned, and where the row would end (EOS is its best token) or
    has only room left for the missing phrases, the first missing phrase is started. Where the model starts a
    phrase on its own, it stands where the model put it; otherwise it comes before the end."""

    def __init__(self, phrases: list[list[int]], eos_ids: list[int], max_length: int):
        self.phrases = [list(p) for p in phrases if p]
        self.eos_ids, self.max_length = list(eos_ids), max_length

    def _forced(self, ids: list[int], top: int) -> tuple[int | None, bool]:
        """(the token to force or None, whether phrases are still missing)."""
        missing = [p for p in self.phrases if not contains_phrase(ids, p)]
        if not missing:
            return None, False
        best, forced = 0, None
        for p in missing:
            for k in range(min(len(p) - 1, len(ids)), best, -1):
                if ids[-k:] == p[:k]:
                    best, forced = k, p[k]
                    break
        if forced is None and (top in self.eos_ids or self.max_length - len(ids) <= sum(map(len, missing))):
            forced = missing[0][0]
        return forced, True

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        tops = scores.argmax(dim=1).tolist()
        for row, (ids, top) in enumerate(zip(input_ids.tolist(), tops)):
            forced, missing = self._forced(ids, top)
            if forced is not None:
                scores[row].fill_(NEG_INF)
                scores[row, forced] = 0
            elif missing:
                scores[row, self.eos_ids] = NEG_INF
        return scores


class BanAfterPrompts(LogitsProcessor):
    """A row that is exactly one of ``bans``' prompts (just forced) may not write that prompt's tokens next: where
    a glossary term was put in place of the model's own words for it, they do not follow the term."""

    bans_only = True

    def __init__(self, bans: dict[tuple[int, ...], set[int]]):
        self.bans = bans
        self.lengths = {len(p) for p in bans}

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] in self.lengths:
            for row, ids in enumerate(input_ids.tolist()):
                tokens = self.bans.get(tuple(ids))
                if tokens:
                    scores[row, sorted(tokens)] = NEG_INF
        return scores


def contains_phrase(ids: list[int], phrase: list[int]) -> bool:
    """Whether ``phrase`` occurs in ``ids`` as a contiguous run."""
    n = len(phrase)
    return any(ids[i : i + n] == phrase for i in range(len(ids) - n + 1))


# the sampling warpers: build_processors puts them after every other processor
WARPERS = (Temperature, TopK, TopP)


def apply(procs, input_ids: Tensor, scores: Tensor) -> Tensor:
    for proc in procs:
        scores = proc(input_ids, scores)
    return scores


def only_bans(procs) -> bool:
    """True when every processor declares ``bans_only``: greedy's argmax can then be screened with bounded
    approximate logits (``runtime.head.LMHead.greedy``)."""
    return all(getattr(p, "bans_only", False) for p in procs)
