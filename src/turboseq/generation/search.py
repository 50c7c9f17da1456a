"""Search: greedy, sampling and beam search loops over the logits processors (``generation.processors``).

Every loop mirrors its transformers counterpart (same order and arithmetic) so that float32 results are
token-identical. What differs is the work done: finished sentences leave the batch at every step, the
decoder cache is reordered in place, and nothing is computed for rows whose result is already fixed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.generation.listeners import Listeners, length_norm
from turboseq.generation.processors import WARPERS, apply, only_bans
from turboseq.generation.settings import GenerationSettings
from turboseq.runtime.head import argmax_rows, top_k_rows

# step(tokens [rows, new_len]) -> hidden [rows, d_model]; select(rows, sentences) keeps/reorders decoder rows
Step = Callable[[Tensor], Tensor]
Select = Callable[[Tensor, Tensor], None]
# a search loop as a generator: it yields each step's tokens and is sent their hidden states; it returns its result
Steps = Generator[Tensor, Tensor, list]
NO_LISTENERS = Listeners()


def drive(loop: Steps, step: Step) -> list:
    """Run a search loop to its end, each of its steps through ``step``; returns its result."""
    tokens = next(loop)
    try:
        while True:
            tokens = loop.send(step(tokens))
    except StopIteration as end:
        return end.value


@lru_cache(maxsize=1)
def sorts_beam_samples() -> bool:
    """Whether the installed transformers sorts beam sampling's drawn candidates by their score before the first
    ``num_beams`` of them may finish (5.24 and later); earlier versions keep the order of the draws. The tests
    compare with the installed transformers, so turboseq follows it (read from its package metadata: the
    generation layer does not import transformers)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = re.match(r"(\d+)\.(\d+)", version("transformers"))
    except PackageNotFoundError:
        return True
    return found is None or (int(found[1]), int(found[2])) >= (5, 24)


def _exponential_noise(shape, generator: torch.Generator | None, device) -> Tensor:
    # torch.multinomial(probs, n) draws exactly this noise and takes the top n of probs / noise; drawing it
    # ourselves for the *whole* batch keeps the random stream identical to transformers' while finished
    # rows are no longer computed.
    return torch.empty(shape, device=device).exponential_(1, generator=generator)


def greedy_or_sample(step: Step, select: Select, head, prompt: Tensor, s: GenerationSettings, procs, generator=None,
                     listeners: Listeners = NO_LISTENERS) -> list[Tensor]:  # fmt: skip
    """``greedy_steps`` run to its end through ``step``."""
    return drive(greedy_steps(select, head, prompt, s, procs, generator, listeners), step)


def greedy_steps(
    select: Select,
    head,
    prompt: Tensor,
    s: GenerationSettings,
    procs,
    generator: torch.Generator | None = None,
    listeners: Listeners = NO_LISTENERS,
) -> Steps:
    """Greedy search or sampling, as a loop that yields each step's tokens for their hidden states. One row per
    sequence. Returns each row's tokens (prompt included, up to and including EOS). Finished
    rows leave the batch, unless a listener keeps them (``return_dict_in_generate``: transformers' loop, a
    finished row fed the pad token where EOS ends rows); ``listeners`` (``generation.listeners``) see every
    step's scores, chosen and emitted tokens, and may end rows (stop strings, abandoned rows)."""
    batch, prompt_len = prompt.shape
    device = prompt.device
    seqs = torch.full((batch, s.max_length), s.pad_token_id, dtype=torch.long, device=device)
    seqs[:, :prompt_len] = prompt
    lengths = torch.full((batch,), s.max_length, dtype=torch.long)
    eos = torch.tensor(s.eos_token_ids, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)  # original row of each decoder row
    tokens = prompt
    cur_len = prompt_len
    listeners.start(batch, prompt_len, s, False, device)
    screen = not s.do_sample and only_bans(procs) and not listeners.needs_logits
    # a processor that cannot change an argmax (renormalize_logits' whole-row shift): greedy skips it, unless
    # the scores are reported
    argmax_procs = procs if listeners.needs_every_processor else [p for p in procs if not p.argmax_invariant]
    warp = next((k for k, p in enumerate(procs) if isinstance(p, WARPERS)), len(procs))
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)  # rows kept: not done yet
    while cur_len < s.max_length:
        hidden = yield tokens
        input_ids = seqs[active, :cur_len]
        next_tokens = head.greedy(hidden, input_ids, lambda ids, x: apply(argmax_procs, ids, x)) if screen else None
        if next_tokens is None:
            logits = head.logits(hidden).float()
            listeners.raw(logits)
            if s.do_sample:  # the scores before the sampling warpers, apart where a listener reads them
                processed = apply(procs[:warp], input_ids, logits)
                scores = apply(procs[warp:], input_ids, processed.clone() if listeners.needs_processed else processed)
            else:
                scores = processed = apply(argmax_procs, input_ids, logits)
            listeners.scored(scores)
            if s.do_sample:
                probs = F.softmax(scores, dim=-1)
                noise = _exponential_noise((batch, probs.shape[1]), generator, device)
                next_tokens = argmax_rows(probs / noise[active])
            else:
                next_tokens = argmax_rows(scores)
            listeners.picked(active, processed, next_tokens)
        if listeners.keeps_rows and eos.numel():
            next_tokens = torch.where(unfinished, next_tokens, s.pad_token_id)
        seqs[active, cur_len] = next_tokens
        listeners.emitted(active, next_tokens)
        cur_len += 1
        seen = lambda rows=active, length=cur_len: seqs[rows, :length]  # noqa: E731 (read only if a listener asks)
        done = listeners.leaving(active, seen, torch.isin(next_tokens, eos))
        if listeners.keeps_rows:  # rows stay; the loop ends when all are done
            lengths[(done & unfinished).cpu()] = cur_len
            unfinished &= ~done
            if not unfinished.any():
                break
        elif done.any():
            leaving = active[done].cpu()
            lengths[leaving] = cur_len
            for row in leaving.tolist():
                listeners.ended(row, seqs[row, :cur_len])
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active = active[keep]
            next_tokens = next_tokens[keep]
            select(keep, keep)
        tokens = next_tokens[:, None]
    return [seqs[i, : min(int(lengths[i]), cur_len)] for i in range(batch)]


def _sampled_candidates(log_probs: Tensor, k: int, generator, batch: int, active: Tensor) -> tuple[Tensor, Tensor]:
    """Beam sampling's ``k`` candidates per sentence, as ``torch.multinomial`` draws them without replacement
    from the noise of the whole batch (transformers' random stream); ranked by score where the installed
    transformers does (5.24 and later), else in draw order."""
    noise = _exponential_noise((batch, log_probs.shape[1]), generator, log_probs.device)[active]
    topk_idx = torch.topk(F.softmax(log_probs, dim=-1) / noise, k)[1]  # in draw order
    topk_scores = torch.gather(log_probs, 1, topk_idx)
    if sorts_beam_samples():
        topk_scores, order = topk_scores.sort(dim=-1, descending=True)
        topk_idx = topk_idx.gather(-1, order)
    return topk_scores, topk_idx


def _top_candidates(scores: Tensor, nb: int, vocab: int, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(scores, k)`` over each sentence's [nb * vocab] candidates, in two rounds: the best k of
    every beam, then the best k of those (the same k values; on one sentence's row, where one long row keeps a
    single core busy, this takes about two thirds of the time)."""
    n = scores.shape[0]
    if vocab <= k:
        return torch.topk(scores, k)
    values, idx = top_k_rows(scores.view(n * nb, vocab), k)  # [n * nb, k]
    idx += (torch.arange(nb, device=scores.device) * vocab).repeat(n)[:, None]
    best, pos = torch.topk(values.view(n, nb * k), k)
    return best, idx.view(n, nb * k).gather(1, pos)


@dataclass
class _Beams:
    """Per active sentence: its running hypotheses [sentences, beams, max_length] with their scores, and the best
    finished ones with their scores and lengths (generated tokens); the row bookkeeping of ``beam_search``."""

    running: Tensor
    running_scores: Tensor
    running_src: Tensor | None
    finished: Tensor
    finished_scores: Tensor
    finished_lens: Tensor
    is_finished: Tensor
    improvable: Tensor  # [sentences, 1]: a running beam can still beat the worst finished one

    @classmethod
    def start(cls, prompt: Tensor, s: GenerationSettings) -> _Beams:
        batch, prompt_len = prompt.shape
        nb, device = s.num_beams, prompt.device
        running = torch.full((batch, nb, s.max_length), s.beam_fill_token_id, dtype=torch.long, device=device)
        running[:, :, :prompt_len] = prompt[:, None, :]
        scores = torch.zeros((batch, nb), device=device)
        scores[:, 1:] = -1e9
        return cls(
            running,
            scores,
            None,
            running.clone(),
            torch.full((batch, nb), -1e9, device=device),
            torch.zeros((batch, nb), dtype=torch.long, device=device),
            torch.zeros((batch, nb), dtype=torch.bool, device=device),
            torch.ones((batch, 1), dtype=torch.bool, device=device),
        )

    def run_on(self, seqs: Tensor, scores: Tensor, src_beam: Tensor, hits: Tensor, nb: int) -> Tensor:
        """The best candidates that did not finish run on; returns their indices among the candidates."""
        run_scores = scores + hits.float() * -1.0e9
        next_idx = torch.topk(run_scores, nb)[1]
        self.running = torch.gather(seqs, 1, next_idx[:, :, None].expand(-1, -1, seqs.shape[2]))
        self.running_scores = torch.gather(run_scores, 1, next_idx)
        self.running_src = torch.gather(src_beam, 1, next_idx)
        return next_idx

    def merge_finished(self, seqs, scores, just_finished, generated: int, s: GenerationSettings) -> Tensor:
        """Merge the candidates that just finished into the best ``num_beams`` finished hypotheses (transformers'
        arithmetic); returns the indices of the kept ones among [finished, candidates]."""
        nb = s.num_beams
        cand = scores / length_norm(generated, s.length_penalty)
        full = self.is_finished.all(dim=-1, keepdim=True) & (s.early_stopping is True)
        cand = cand + full.float() * -1.0e9
        cand = cand + (~self.improvable).float() * -1.0e9
        cand = cand + (~just_finished) * -1.0e9
        merged_scores = torch.cat((self.finished_scores, cand), dim=1)
        best = torch.topk(merged_scores, nb)[1]
        merged = torch.cat((self.finished, seqs), 1)
        self.finished = torch.gather(merged, 1, best[:, :, None].expand(-1, -1, merged.shape[2]))
        self.finished_scores = torch.gather(merged_scores, 1, best)
        lens = torch.full_like(just_finished, generated, dtype=torch.long)
        self.finished_lens = torch.gather(torch.cat((self.finished_lens, lens), 1), 1, best)
        self.is_finished = torch.gather(torch.cat((self.is_finished, just_finished), 1), 1, best)
        return best

    def done(self, hits: Tensor, cur_len: int, prompt_len: int, s: GenerationSettings, whole_batch: bool) -> Tensor:
        """Which sentences are done once their hypotheses are ``cur_len`` tokens long: none of their running beams can
        beat their worst finished hypothesis any more (transformers' heuristic, verbatim), or every beam
        finished. ``whole_batch``: transformers' stopping rule, all sentences at once."""
        never = s.early_stopping == "never" and s.length_penalty > 0.0
        best_len = (s.max_length if never else cur_len) - prompt_len
        best_running = self.running_scores[:, :1] / length_norm(best_len, s.length_penalty)
        worst_finished = torch.where(self.is_finished, self.finished_scores.min(dim=1, keepdim=True)[0], -1.0e9)
        self.improvable = self.improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        early_true = s.early_stopping is True
        done = ~self.improvable[:, 0] | (self.is_finished.all(dim=-1) & early_true) | hits.all(dim=-1)
        at_end = cur_len >= s.max_length
        if whole_batch:
            stop_all = (
                not bool(self.improvable.any()) or bool(self.is_finished.all() and early_true) or bool(hits.all())
            )
            done[:] = stop_all or at_end
        elif at_end:
            done[:] = True
        return done

    def keep(self, keep: Tensor) -> None:
        for name in ("running", "running_scores", "running_src", "finished", "finished_scores", "finished_lens",
                     "is_finished", "improvable"):  # fmt: skip
            setattr(self, name, getattr(self, name)[keep])


def beam_search(step: Step, select: Select, head, prompt: Tensor, s: GenerationSettings, procs, generator=None,
                listeners: Listeners = NO_LISTENERS) -> list[list[Tensor]]:  # fmt: skip
    """``beam_steps`` run to its end through ``step``."""
    return drive(beam_steps(select, head, prompt, s, procs, generator, listeners), step)


def beam_steps(
    select: Select,
    head,
    prompt: Tensor,
    s: GenerationSettings,
    procs,
    generator: torch.Generator | None = None,
    listeners: Listeners = NO_LISTENERS,
) -> Steps:
    """Beam search (and beam sampling) with transformers' semantics, one sentence per prompt row.

    The decoder holds ``num_beams`` consecutive rows per sentence. A sentence leaves the batch as soon as its
    finished hypotheses can no longer change, or a listener ends it; a listener that keeps rows (the trace of
    ``return_dict_in_generate``) keeps every sentence until transformers' loop would stop the whole batch.
    Returns, per sentence, its best ``num_return_sequences`` hypotheses (prompt included). ``listeners`` follow
    the hypotheses through the step (``candidates``, ``running``, ``finished``, ``result``)."""
    batch, prompt_len = prompt.shape
    nb, device = s.num_beams, prompt.device
    keep_k = max(2, 1 + len(s.eos_token_ids)) * nb
    top_nb = torch.zeros(keep_k, dtype=torch.bool, device=device)
    top_nb[:nb] = True
    eos = torch.tensor(s.eos_token_ids, dtype=torch.long, device=device)
    beams = _Beams.start(prompt, s)
    active = torch.arange(batch, device=device)
    listeners.start(batch, prompt_len, s, True, device)
    results: list = [None] * batch
    cur_len = prompt_len
    tokens = prompt.repeat_interleave(nb, dim=0)
    while True:
        n = active.numel()
        hidden = yield tokens
        logits = head.logits(hidden).float()  # [n * nb, vocab], owned here: updated in place
        vocab = logits.shape[-1]
        listeners.raw(logits)
        log_probs = torch.log_softmax(logits, dim=-1, out=logits)
        log_probs = apply(procs, beams.running[:, :, :cur_len].reshape(n * nb, cur_len), log_probs)
        listeners.scored(log_probs)
        log_probs = log_probs.view(n, nb, vocab).add_(beams.running_scores[:, :, None]).view(n, nb * vocab)
        if s.do_sample:
            topk_scores, topk_idx = _sampled_candidates(log_probs, keep_k, generator, batch, active)
        else:
            topk_scores, topk_idx = _top_candidates(log_probs, nb, vocab, keep_k)
        src_beam = topk_idx // vocab  # [n, keep_k]
        topk_tokens = topk_idx % vocab
        topk_seqs = torch.gather(beams.running, 1, src_beam[:, :, None].expand(-1, -1, s.max_length)).clone()
        topk_seqs[:, :, cur_len] = topk_tokens
        listeners.candidates(src_beam, cur_len, topk_tokens)
        hits = (
            torch.isin(topk_tokens, eos)
            if cur_len + 1 < s.max_length
            else torch.ones_like(topk_tokens, dtype=torch.bool)
        )
        listeners.running(beams.run_on(topk_seqs, topk_scores, src_beam, hits, nb))
        listeners.finished(
            beams.merge_finished(topk_seqs, topk_scores, hits & top_nb[None, :], cur_len + 1 - prompt_len, s)
        )
        cur_len += 1
        done = beams.done(hits, cur_len, prompt_len, s, listeners.keeps_rows)
        done = listeners.leaving(active, lambda b=beams.running, length=cur_len: b[:, 0, :length], done)
        if done.any():
            for j in done.nonzero().squeeze(1).tolist():
                lens = beams.finished_lens[j]
                row = int(active[j])
                results[row] = [
                    beams.finished[j, r, : prompt_len + int(lens[r])] for r in range(s.num_return_sequences)
                ]
                listeners.result(row, j, beams.finished_scores, beams.finished_lens, s.num_return_sequences)
                listeners.ended(row, results[row])
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active = active[keep]
            beams.keep(keep)
            listeners.kept(keep)
            select((keep[:, None] * nb + beams.running_src).reshape(-1), keep)
        else:
            select((torch.arange(n, device=device)[:, None] * nb + beams.running_src).reshape(-1), None)
        tokens = beams.running[:, :, cur_len - 1].reshape(-1, 1)
    listeners.end(beams.finished_scores)
    return results
