"""Search: greedy, sampling and beam search loops over composable logits processors.

Every rule mirrors its transformers counterpart (same names, order and arithmetic) so that float32 results
are token-identical. What differs is the work done: finished sentences leave the batch at every step, the
decoder cache is reordered in place, and nothing is computed for rows whose result is already fixed.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.generation import GenerationSettings

NEG_INF = -math.inf


# --- logits processors: (input_ids [rows, cur_len], scores [rows, vocab]) -> scores -------------------------


class RepetitionPenalty:
    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        score = torch.gather(scores, 1, input_ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        return scores.scatter(1, input_ids, score)


class NoRepeatNGram:
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


class BadWords:
    """Bans single tokens always and the last token of longer words whose prefix ends the sequence.

    Like all processors here it may write into ``scores``: the search loops own the tensors they pass."""

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


class MinLength:
    """Bans EOS while the sequence (``skip`` prompt tokens excluded) is shorter than ``min_length``."""

    def __init__(self, min_length: int, eos_ids: list[int], skip: int = 0):
        self.min_length, self.eos_ids, self.skip = min_length, eos_ids, skip

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] - self.skip < self.min_length:
            scores[:, self.eos_ids] = NEG_INF
        return scores


class ForcedToken:
    """Forces ``token`` when the sequence has ``at_length`` tokens (BOS after the start, EOS at the end)."""

    def __init__(self, token: int | list[int], at_length: int):
        self.token, self.at_length = token, at_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] == self.at_length:
            scores.fill_(NEG_INF)
            scores[:, self.token] = 0
        return scores


class SuppressTokens:
    """Bans ``tokens`` at every step, or only at the first generated position when ``at_length`` is set
    (Whisper's suppress_tokens and begin_suppress_tokens)."""

    def __init__(self, tokens: list[int], at_length: int | None = None):
        self.tokens, self.at_length = sorted(set(tokens)), at_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.at_length is None or input_ids.shape[1] == self.at_length:
            scores[:, [t for t in self.tokens if t < scores.shape[1]]] = NEG_INF
        return scores


class TimestampRules:
    """Whisper's timestamp grammar (transformers' WhisperTimeStampLogitsProcessor, after openai/whisper).

    Timestamps come in pairs (segment end, next segment start) except right before EOS, never decrease, the
    first generated token is a timestamp no later than ``max_initial`` steps, and where the timestamps together
    are more likely than the best text token, a timestamp is forced.
    """

    def __init__(self, no_timestamps: int, eos: int, begin_index: int, max_initial: int | None):
        self.no_timestamps, self.first = no_timestamps, no_timestamps + 1
        self.eos, self.begin_index, self.max_initial = eos, begin_index, max_initial

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
        vocab_ids = torch.arange(scores.shape[1], device=scores.device)
        lowest_t = torch.tensor(lowest_allowed, device=scores.device)[:, None]
        scores.masked_fill_((vocab_ids >= self.first) & (vocab_ids < lowest_t), NEG_INF)
        if input_ids.shape[1] == self.begin_index:
            scores[:, : self.first] = NEG_INF
            if self.max_initial is not None:
                scores[:, self.first + self.max_initial + 1 :] = NEG_INF
        logprobs = F.log_softmax(scores.float(), dim=-1)
        timestamp_logprob = logprobs[:, self.first :].logsumexp(dim=-1)
        best_text = logprobs[:, : self.first].max(dim=-1).values
        scores[:, : self.first].masked_fill_((timestamp_logprob > best_text)[:, None], NEG_INF)
        return scores


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores / self.temperature


class TopK:
    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        self.top_k = max(top_k, min_tokens_to_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP:
    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p, self.min_tokens_to_keep = top_p, min_tokens_to_keep

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - self.top_p)
        remove[..., -self.min_tokens_to_keep :] = False
        return scores.masked_fill(remove.scatter(1, sorted_idx, remove), NEG_INF)


class LogSoftmax:
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # in place: a fresh [rows, vocab] tensor per step costs more in page faults than the arithmetic
        return torch.log_softmax(scores, dim=-1, out=scores)


def build_processors(s: GenerationSettings, vocab_size: int) -> list[Callable[[Tensor, Tensor], Tensor]]:
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


def apply(procs, input_ids: Tensor, scores: Tensor) -> Tensor:
    for proc in procs:
        scores = proc(input_ids, scores)
    return scores


def only_bans(procs) -> bool:
    """True when every processor only bans or forces tokens (or shifts a whole row): greedy's argmax can
    then be screened with bounded approximate logits (``LMHead.greedy``)."""
    return all(isinstance(p, (NoRepeatNGram, BadWords, MinLength, ForcedToken, LogSoftmax, SuppressTokens)) for p in procs)


# --- the decoder the loops drive --------------------------------------------------------------------------

# step(tokens [rows, new_len]) -> hidden [rows, d_model]; select(rows, sentences) keeps/reorders decoder rows
Step = Callable[[Tensor], Tensor]
Select = Callable[[Tensor, Tensor], None]


def _exponential_noise(shape, generator: torch.Generator | None, device) -> Tensor:
    # torch.multinomial(probs, n) draws exactly this noise and takes the top n of probs / noise; drawing it
    # ourselves for the *whole* batch keeps the random stream identical to transformers' while finished
    # rows are no longer computed.
    return torch.empty(shape, device=device).exponential_(1, generator=generator)


def greedy_or_sample(
    step: Step,
    select: Select,
    head,
    prompt: Tensor,
    s: GenerationSettings,
    procs,
    generator: torch.Generator | None = None,
    on_tokens: Callable[[Tensor, Tensor], None] | None = None,
    abandoned: Callable[[], Tensor | None] | None = None,
) -> list[Tensor]:
    """One row per sequence. Returns each row's tokens (prompt included, up to and including EOS).

    ``on_tokens(rows, tokens)``, if given, is called after every step with the original row index and the new
    token of each row still decoding (streaming); an exception it raises stops the generation.
    ``abandoned()``, if given, returns None or a bool tensor over the batch marking rows nobody waits for any
    more (a server's client left): they leave the batch at the next step, with whatever they have."""
    batch, prompt_len = prompt.shape
    device = prompt.device
    seqs = torch.full((batch, s.max_length), s.pad_token_id, dtype=torch.long, device=device)
    seqs[:, :prompt_len] = prompt
    lengths = torch.full((batch,), s.max_length, dtype=torch.long)
    eos = torch.tensor(s.eos_token_ids, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)  # original row of each decoder row
    tokens = prompt
    cur_len = prompt_len
    screen = not s.do_sample and only_bans(procs)
    # a whole-row shift (renormalize_logits) cannot change an argmax: greedy skips it
    argmax_procs = [p for p in procs if not isinstance(p, LogSoftmax)]
    while cur_len < s.max_length:
        hidden = step(tokens)
        input_ids = seqs[active, :cur_len]
        next_tokens = None
        if screen:
            next_tokens = head.greedy(hidden, input_ids, lambda ids, x: apply(argmax_procs, ids, x))
        if next_tokens is None:
            scores = apply(procs if s.do_sample else argmax_procs, input_ids, head.logits(hidden).float())
            if s.do_sample:
                probs = F.softmax(scores, dim=-1)
                noise = _exponential_noise((batch, probs.shape[1]), generator, device)
                next_tokens = (probs / noise[active]).argmax(dim=-1)
            else:
                next_tokens = scores.argmax(dim=-1)
        seqs[active, cur_len] = next_tokens
        if on_tokens is not None:
            on_tokens(active, next_tokens)
        cur_len += 1
        done = torch.isin(next_tokens, eos)
        gone = abandoned() if abandoned is not None else None
        if gone is not None:
            done |= gone[active]
        if done.any():
            lengths[active[done].cpu()] = cur_len
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active = active[keep]
            next_tokens = next_tokens[keep]
            select(keep, keep)
        tokens = next_tokens[:, None]
    return [seqs[i, : min(int(lengths[i]), cur_len)] for i in range(batch)]


def beam_search(
    step: Step,
    select: Select,
    head,
    prompt: Tensor,
    s: GenerationSettings,
    procs,
    generator: torch.Generator | None = None,
    abandoned: Callable[[], Tensor | None] | None = None,
) -> list[list[Tensor]]:
    """Beam search (and beam sampling) with transformers' semantics, one sentence per prompt row.

    The decoder holds ``num_beams`` consecutive rows per sentence. A sentence leaves the batch as soon as its
    finished hypotheses can no longer change. Returns, per sentence, its best ``num_return_sequences``
    hypotheses (prompt included).
    """
    batch, prompt_len = prompt.shape
    nb = s.num_beams
    device = prompt.device
    keep_k = max(2, 1 + len(s.eos_token_ids)) * nb
    top_nb = torch.zeros(keep_k, dtype=torch.bool, device=device)
    top_nb[:nb] = True
    # transformers fills unused positions with pad, or with EOS where pad is id 0
    fill = s.pad_token_id if s.pad_token_id else (s.eos_token_ids[0] if s.eos_token_ids else -1)
    eos = torch.tensor(s.eos_token_ids, dtype=torch.long, device=device)

    # per active sentence: running hypotheses and the best finished ones
    running = torch.full((batch, nb, s.max_length), fill, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = prompt[:, None, :]
    finished = running.clone()
    running_scores = torch.zeros((batch, nb), device=device)
    running_scores[:, 1:] = -1e9
    finished_scores = torch.full((batch, nb), -1e9, device=device)
    finished_lens = torch.zeros((batch, nb), dtype=torch.long, device=device)  # generated tokens
    is_finished = torch.zeros((batch, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    active = torch.arange(batch, device=device)

    results: list = [None] * batch
    early_true = s.early_stopping is True
    cur_len = prompt_len
    tokens = prompt.repeat_interleave(nb, dim=0)
    while True:
        n = active.numel()
        logits = head.logits(step(tokens)).float()  # [n * nb, vocab], owned here: updated in place
        vocab = logits.shape[-1]
        log_probs = torch.log_softmax(logits, dim=-1, out=logits)
        log_probs = apply(procs, running[:, :, :cur_len].reshape(n * nb, cur_len), log_probs)
        log_probs = log_probs.view(n, nb, vocab).add_(running_scores[:, :, None]).view(n, nb * vocab)

        if s.do_sample:
            noise = _exponential_noise((batch, nb * vocab), generator, device)[active]
            topk_idx = torch.topk(F.softmax(log_probs, dim=-1) / noise, keep_k)[1]
            topk_scores = torch.gather(log_probs, 1, topk_idx)
        else:
            topk_scores, topk_idx = torch.topk(log_probs, keep_k)
        src_beam = topk_idx // vocab  # [n, keep_k]
        topk_tokens = topk_idx % vocab
        topk_seqs = torch.gather(running, 1, src_beam[:, :, None].expand(-1, -1, s.max_length)).clone()
        topk_seqs[:, :, cur_len] = topk_tokens
        hits = torch.isin(topk_tokens, eos)
        if cur_len + 1 >= s.max_length:
            hits = torch.ones_like(hits)

        # running beams for the next step: the best candidates that did not finish
        run_scores = topk_scores + hits.float() * -1.0e9
        next_idx = torch.topk(run_scores, nb)[1]
        running = torch.gather(topk_seqs, 1, next_idx[:, :, None].expand(-1, -1, s.max_length))
        running_scores = torch.gather(run_scores, 1, next_idx)
        running_src = torch.gather(src_beam, 1, next_idx)

        # finished hypotheses: merge the candidates that just finished among the top nb
        just_finished = hits & top_nb[None, :]
        cand = topk_scores / ((cur_len + 1 - prompt_len) ** s.length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & early_true
        cand = cand + full.float() * -1.0e9
        cand = cand + (~improvable).float() * -1.0e9
        cand = cand + (~just_finished) * -1.0e9
        merged_scores = torch.cat((finished_scores, cand), dim=1)
        best = torch.topk(merged_scores, nb)[1]
        finished = torch.gather(torch.cat((finished, topk_seqs), 1), 1, best[:, :, None].expand(-1, -1, s.max_length))
        finished_scores = torch.gather(merged_scores, 1, best)
        cand_lens = torch.full_like(topk_tokens, cur_len + 1 - prompt_len)
        finished_lens = torch.gather(torch.cat((finished_lens, cand_lens), 1), 1, best)
        is_finished = torch.gather(torch.cat((is_finished, just_finished), 1), 1, best)

        cur_len += 1
        # can a running beam still beat the worst finished one? (transformers' heuristic, verbatim)
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_len = s.max_length - prompt_len
        else:
            best_len = cur_len - prompt_len
        best_running = running_scores[:, :1] / (best_len**s.length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)

        done = ~improvable[:, 0] | (is_finished.all(dim=-1) & early_true) | hits.all(dim=-1)
        if cur_len >= s.max_length:
            done[:] = True
        gone = abandoned() if abandoned is not None else None
        if gone is not None:
            done |= gone[active]  # see greedy_or_sample
        if done.any():
            for j in done.nonzero().squeeze(1).tolist():
                results[int(active[j])] = [
                    finished[j, r, : prompt_len + int(finished_lens[j, r])] for r in range(s.num_return_sequences)
                ]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active = active[keep]
            running, running_scores, running_src = running[keep], running_scores[keep], running_src[keep]
            finished, finished_scores = finished[keep], finished_scores[keep]
            finished_lens, is_finished, improvable = finished_lens[keep], is_finished[keep], improvable[keep]
            rows = (keep[:, None] * nb + running_src).reshape(-1)
            select(rows, keep)
        else:
            rows = (torch.arange(n, device=device)[:, None] * nb + running_src).reshape(-1)
            select(rows, None)
        tokens = running[:, :, cur_len - 1].reshape(-1, 1)
    return results
