"""Search: greedy, sampling and beam search loops over the logits processors (``generation.processors``).

Every loop mirrors its transformers counterpart (same order and arithmetic) so that float32 results are
token-identical. What differs is the work done: finished sentences leave the batch at every step, the
decoder cache is reordered in place, and nothing is computed for rows whose result is already fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.generation.batching import RowHooks
from turboseq.generation.outputs import Trace
from turboseq.generation.processors import WARPERS, LogSoftmax, apply, only_bans
from turboseq.generation.settings import GenerationSettings

# step(tokens [rows, new_len]) -> hidden [rows, d_model]; select(rows, sentences) keeps/reorders decoder rows
Step = Callable[[Tensor], Tensor]
Select = Callable[[Tensor, Tensor], None]


def _length_norm(length: int, penalty: float) -> float:
    """``length ** penalty`` as transformers computes it, or infinity where a huge penalty overflows a float."""
    try:
        return length**penalty
    except OverflowError:
        return math.inf


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
    hooks: RowHooks | None = None,
    stop: Callable[[Tensor], Tensor] | None = None,
    trace: Trace | None = None,
    sums: Tensor | None = None,
) -> list[Tensor]:
    """One row per sequence. Returns each row's tokens (prompt included, up to and including EOS).

    ``stop(seqs [rows, length]) -> bool [rows]`` ends rows on other grounds than EOS (stop strings).

    ``hooks`` (over the prompt's rows): streamed tokens of the rows still decoding go to ``hooks.emit`` after
    every step; rows ``hooks.gone()`` marks (nobody waits for them any more) leave the batch at the next step,
    with whatever they have.

    With a ``trace`` the loop runs as transformers' does: rows stay until all are done (a finished row is fed
    the pad token where EOS ends rows), and every step's scores are recorded for every row.

    ``sums`` (float [batch]) receives each row's sum of the log-probabilities of its chosen tokens (the
    log-softmax of the processed scores, before temperature and top-k/top-p), EOS included: Whisper's average
    log-probability."""
    batch, prompt_len = prompt.shape
    device = prompt.device
    seqs = torch.full((batch, s.max_length), s.pad_token_id, dtype=torch.long, device=device)
    seqs[:, :prompt_len] = prompt
    lengths = torch.full((batch,), s.max_length, dtype=torch.long)
    eos = torch.tensor(s.eos_token_ids, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)  # original row of each decoder row
    tokens = prompt
    cur_len = prompt_len
    screen = not s.do_sample and only_bans(procs) and trace is None and sums is None
    # a processor that cannot change an argmax (renormalize_logits' whole-row shift): greedy skips it, unless
    # the scores are reported
    argmax_procs = [p for p in procs if not p.argmax_invariant] if trace is None else procs
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)  # with a trace: rows not done yet
    while cur_len < s.max_length:
        hidden = step(tokens)
        input_ids = seqs[active, :cur_len]
        next_tokens = None
        if screen:
            next_tokens = head.greedy(hidden, input_ids, lambda ids, x: apply(argmax_procs, ids, x))
        if next_tokens is None:
            logits = head.logits(hidden).float()
            raw = logits.clone() if trace is not None and trace.want_logits else None
            if sums is not None and s.do_sample:  # the log-probabilities before the sampling warpers
                warp = next((k for k, p in enumerate(procs) if isinstance(p, WARPERS)), len(procs))
                processed = apply(procs[:warp], input_ids, logits)
                scores = apply(procs[warp:], input_ids, processed.clone())
            else:
                scores = processed = apply(procs if s.do_sample else argmax_procs, input_ids, logits)
            if trace is not None:
                trace.record(raw, scores)
            if s.do_sample:
                probs = F.softmax(scores, dim=-1)
                noise = _exponential_noise((batch, probs.shape[1]), generator, device)
                next_tokens = (probs / noise[active]).argmax(dim=-1)
            else:
                next_tokens = scores.argmax(dim=-1)
            if sums is not None:
                picked = torch.log_softmax(processed, dim=-1).gather(1, next_tokens[:, None])[:, 0]
                sums[active] += picked.to(sums.device)
        if trace is not None and eos.numel():
            next_tokens = torch.where(unfinished, next_tokens, s.pad_token_id)
        seqs[active, cur_len] = next_tokens
        if hooks is not None:
            hooks.emit(active, next_tokens)
        cur_len += 1
        done = torch.isin(next_tokens, eos)
        if stop is not None:
            done |= stop(seqs[active, :cur_len])
        gone = hooks.gone(active) if hooks is not None else None
        if gone is not None:
            done |= gone
        if trace is not None:  # rows stay; the loop ends when all are done
            lengths[(done & unfinished).cpu()] = cur_len
            unfinished &= ~done
            if not unfinished.any():
                break
        elif done.any():
            lengths[active[done].cpu()] = cur_len
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active = active[keep]
            next_tokens = next_tokens[keep]
            select(keep, keep)
        tokens = next_tokens[:, None]
    return [seqs[i, : min(int(lengths[i]), cur_len)] for i in range(batch)]


def _top_candidates(scores: Tensor, nb: int, vocab: int, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(scores, k)`` over each sentence's [nb * vocab] candidates, in two rounds: the best k of
    every beam, then the best k of those (the same k values; on one sentence's row, where one long row keeps a
    single core busy, this takes about two thirds of the time)."""
    n = scores.shape[0]
    if vocab <= k:
        return torch.topk(scores, k)
    values, idx = torch.topk(scores.view(n * nb, vocab), k)  # [n * nb, k]
    idx += (torch.arange(nb, device=scores.device) * vocab).repeat(n)[:, None]
    best, pos = torch.topk(values.view(n, nb * k), k)
    return best, idx.view(n, nb * k).gather(1, pos)


def beam_search(
    step: Step,
    select: Select,
    head,
    prompt: Tensor,
    s: GenerationSettings,
    procs,
    generator: torch.Generator | None = None,
    hooks: RowHooks | None = None,
    trace: Trace | None = None,
    sums: list | None = None,
) -> list[list[Tensor]]:
    """Beam search (and beam sampling) with transformers' semantics, one sentence per prompt row.

    The decoder holds ``num_beams`` consecutive rows per sentence. A sentence leaves the batch as soon as its
    finished hypotheses can no longer change. Returns, per sentence, its best ``num_return_sequences``
    hypotheses (prompt included). ``hooks.gone()`` as in ``greedy_or_sample`` (beams are not streamed).

    With a ``trace``, sentences stay until transformers' loop would stop the whole batch, and the trace gets
    every step's scores, the beam scores and the beam indices.

    ``sums`` (a list of ``batch`` entries) receives per sentence the sum of the log-probabilities of each
    returned hypothesis' tokens, EOS included, renormalised after the logits rules (as CTranslate2 scores;
    the search itself ranks as transformers does).
    """
    batch, prompt_len = prompt.shape
    nb = s.num_beams
    device = prompt.device
    keep_k = max(2, 1 + len(s.eos_token_ids)) * nb
    top_nb = torch.zeros(keep_k, dtype=torch.bool, device=device)
    top_nb[:nb] = True
    fill = s.beam_fill_token_id
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
    renormalized = bool(procs) and isinstance(procs[-1], LogSoftmax)
    if sums is not None:  # per hypothesis: the sum of the log-normalisers of the processed scores on its path
        running_norm = torch.zeros((batch, nb), device=device)
        finished_norm = torch.zeros((batch, nb), device=device)
    if trace is not None:  # per hypothesis, the decoder row each generated token came from (-1: none yet)
        running_bi = torch.full((batch, nb, s.max_length - prompt_len), -1, dtype=torch.int32, device=device)
        finished_bi = running_bi.clone()
        offsets = (torch.arange(batch, device=device) * nb)[:, None]

    results: list = [None] * batch
    early_true = s.early_stopping is True
    cur_len = prompt_len
    tokens = prompt.repeat_interleave(nb, dim=0)
    while True:
        n = active.numel()
        logits = head.logits(step(tokens)).float()  # [n * nb, vocab], owned here: updated in place
        vocab = logits.shape[-1]
        raw = logits.clone() if trace is not None and trace.want_logits else None
        log_probs = torch.log_softmax(logits, dim=-1, out=logits)
        log_probs = apply(procs, running[:, :, :cur_len].reshape(n * nb, cur_len), log_probs)
        if trace is not None:
            trace.record(raw, log_probs)
        if sums is not None:  # (renormalized scores: their log-normaliser is 0)
            step_norm = 0.0 if renormalized else torch.logsumexp(log_probs, dim=-1).view(n, nb)
            path_norm = running_norm + step_norm
        log_probs = log_probs.view(n, nb, vocab).add_(running_scores[:, :, None]).view(n, nb * vocab)

        if s.do_sample:
            noise = _exponential_noise((batch, nb * vocab), generator, device)[active]
            topk_idx = torch.topk(F.softmax(log_probs, dim=-1) / noise, keep_k)[1]
            topk_scores = torch.gather(log_probs, 1, topk_idx)
        else:
            topk_scores, topk_idx = _top_candidates(log_probs, nb, vocab, keep_k)
        src_beam = topk_idx // vocab  # [n, keep_k]
        topk_tokens = topk_idx % vocab
        topk_seqs = torch.gather(running, 1, src_beam[:, :, None].expand(-1, -1, s.max_length)).clone()
        topk_seqs[:, :, cur_len] = topk_tokens
        if trace is not None:
            topk_bi = torch.gather(running_bi, 1, src_beam[:, :, None].expand(-1, -1, running_bi.shape[2])).clone()
            topk_bi[:, :, cur_len - prompt_len] = (src_beam + offsets).int()
        hits = torch.isin(topk_tokens, eos)
        if cur_len + 1 >= s.max_length:
            hits = torch.ones_like(hits)

        # running beams for the next step: the best candidates that did not finish
        run_scores = topk_scores + hits.float() * -1.0e9
        next_idx = torch.topk(run_scores, nb)[1]
        running = torch.gather(topk_seqs, 1, next_idx[:, :, None].expand(-1, -1, s.max_length))
        running_scores = torch.gather(run_scores, 1, next_idx)
        running_src = torch.gather(src_beam, 1, next_idx)
        if sums is not None:
            cand_norm = torch.gather(path_norm, 1, src_beam)
            running_norm = torch.gather(cand_norm, 1, next_idx)
        if trace is not None:
            running_bi = torch.gather(topk_bi, 1, next_idx[:, :, None].expand(-1, -1, topk_bi.shape[2]))

        # finished hypotheses: merge the candidates that just finished among the top nb
        just_finished = hits & top_nb[None, :]
        cand = topk_scores / _length_norm(cur_len + 1 - prompt_len, s.length_penalty)
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
        if sums is not None:
            finished_norm = torch.gather(torch.cat((finished_norm, cand_norm), 1), 1, best)
        if trace is not None:
            merged_bi = torch.cat((finished_bi, topk_bi), 1)
            finished_bi = torch.gather(merged_bi, 1, best[:, :, None].expand(-1, -1, merged_bi.shape[2]))

        cur_len += 1
        # can a running beam still beat the worst finished one? (transformers' heuristic, verbatim)
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_len = s.max_length - prompt_len
        else:
            best_len = cur_len - prompt_len
        best_running = running_scores[:, :1] / _length_norm(best_len, s.length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)

        done = ~improvable[:, 0] | (is_finished.all(dim=-1) & early_true) | hits.all(dim=-1)
        if cur_len >= s.max_length:
            done[:] = True
        if trace is not None:  # transformers' stopping rule, over the whole batch
            stop_all = not bool(improvable.any()) or bool(is_finished.all() and early_true) or bool(hits.all())
            done[:] = stop_all or cur_len >= s.max_length
        gone = hooks.gone(active) if hooks is not None else None
        if gone is not None:
            done |= gone  # see greedy_or_sample
        if done.any():
            for j in done.nonzero().squeeze(1).tolist():
                results[int(active[j])] = [
                    finished[j, r, : prompt_len + int(finished_lens[j, r])] for r in range(s.num_return_sequences)
                ]
                if sums is not None:  # the finished score is the sum over length ** length_penalty
                    sums[int(active[j])] = [
                        float(finished_scores[j, r]) * _length_norm(int(finished_lens[j, r]), s.length_penalty)
                        - float(finished_norm[j, r])
                        for r in range(s.num_return_sequences)
                    ]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active = active[keep]
            running, running_scores, running_src = running[keep], running_scores[keep], running_src[keep]
            finished, finished_scores = finished[keep], finished_scores[keep]
            finished_lens, is_finished, improvable = finished_lens[keep], is_finished[keep], improvable[keep]
            if sums is not None:
                running_norm, finished_norm = running_norm[keep], finished_norm[keep]
            rows = (keep[:, None] * nb + running_src).reshape(-1)
            select(rows, keep)
        else:
            rows = (torch.arange(n, device=device)[:, None] * nb + running_src).reshape(-1)
            select(rows, None)
        tokens = running[:, :, cur_len - 1].reshape(-1, 1)
    if trace is not None:
        nrs = s.num_return_sequences
        trace.sequences_scores = finished_scores[:, :nrs].reshape(-1)
        indices = finished_bi[:, :nrs].reshape(batch * nrs, -1)
        trace.beam_indices = indices[:, : int((indices + 1).bool().sum(dim=1).max())]
    return results
