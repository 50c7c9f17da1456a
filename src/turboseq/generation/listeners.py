"""What a search loop reports to, and how the side channels attach to it: the ``return_dict_in_generate``
trace, Whisper's and CTranslate2's sums of log-probabilities, streaming and abandoned rows, stop strings.

The loops in ``generation.search`` call every hook of one ``Listeners`` at fixed points of each step and have
no branch of their own for any channel. A listener declares what it needs from the loop (``keeps_rows``,
``needs_logits``, ``needs_every_processor``, ``needs_processed``); the loop reads those once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def length_norm(length: int, penalty: float) -> float:
    """``length ** penalty`` as transformers computes it, or infinity where a huge penalty overflows a float."""
    try:
        return length**penalty
    except OverflowError:
        return math.inf


class Listener:
    """One side channel. Every hook does nothing unless a subclass says otherwise."""

    keeps_rows = False  # rows stay until transformers' loop would stop the whole batch (every row reported)
    needs_logits = False  # the full float32 product every step (greedy's screened head cannot be used)
    needs_every_processor = False  # argmax-invariant processors run too (their scores are reported)
    needs_processed = False  # sampling: the scores before the warpers are kept apart from the warped ones

    def start(self, batch: int, prompt_len: int, s, beam: bool, device) -> None:
        """The loop begins: ``batch`` sentences (of ``s.num_beams`` rows each where ``beam``) with prompts of
        ``prompt_len`` tokens, under settings ``s``."""

    # both loops
    def raw(self, logits: Tensor) -> None:
        """A step's float32 logits, before the processors change them in place."""

    def scored(self, scores: Tensor) -> None:
        """A step's processed scores (beam search: log-probabilities after the logits rules)."""

    def leaving(self, rows: Tensor, seqs: Callable[[], Tensor], done: Tensor) -> Tensor:
        """``done`` with the rows (of the batch rows ``rows``) that end now on this listener's grounds."""
        return done

    # greedy and sampling
    def picked(self, rows: Tensor, processed: Tensor, tokens: Tensor) -> None:
        """The chosen ``tokens`` of ``rows``, with the scores before the sampling warpers."""

    def emitted(self, rows: Tensor, tokens: Tensor) -> None:
        """Tokens appended to ``rows`` (finished rows' padding included where rows are kept)."""

    # beam search: per-hypothesis state follows the loop's gathers
    def candidates(self, src_beam: Tensor, cur_len: int, tokens: Tensor) -> None:
        """The step's candidates [sentences, k]: the running beam each comes from and the token it adds."""

    def running(self, next_idx: Tensor) -> None:
        """The candidates [sentences, beams] that run on."""

    def finished(self, best: Tensor) -> None:
        """The finished hypotheses: ``best`` indexes [finished, candidates] per sentence."""

    def result(self, sentence: int, j: int, finished_scores: Tensor, finished_lens: Tensor, count: int) -> None:
        """Sentence ``sentence`` (row ``j`` of the active ones) is done; its first ``count`` finished
        hypotheses are returned."""

    def kept(self, keep: Tensor) -> None:
        """Only the active sentences ``keep`` go on."""

    def end(self, finished_scores: Tensor) -> None:
        """The loop is over."""

    def ended(self, row: int, result) -> None:
        """Row ``row`` (beam search: sentence) is final before the loop ends: ``result`` is what the loop will
        return for it (greedy and sampling: its tokens; beam search: its hypotheses). Not called for rows that
        end with the loop."""


class Listeners:
    """Every listener of one loop, called together; what they need is the union of what each declares."""

    def __init__(self, *items: Listener | None):
        self.items = [item for item in items if item is not None]
        self.keeps_rows = any(i.keeps_rows for i in self.items)
        self.needs_logits = any(i.needs_logits for i in self.items)
        self.needs_every_processor = any(i.needs_every_processor for i in self.items)
        self.needs_processed = any(i.needs_processed for i in self.items)

    def start(self, *args) -> None:
        for item in self.items:
            item.start(*args)

    def raw(self, logits: Tensor) -> None:
        for item in self.items:
            item.raw(logits)

    def scored(self, scores: Tensor) -> None:
        for item in self.items:
            item.scored(scores)

    def leaving(self, rows: Tensor, seqs: Callable[[], Tensor], done: Tensor) -> Tensor:
        for item in self.items:
            done = item.leaving(rows, seqs, done)
        return done

    def picked(self, rows: Tensor, processed: Tensor, tokens: Tensor) -> None:
        for item in self.items:
            item.picked(rows, processed, tokens)

    def emitted(self, rows: Tensor, tokens: Tensor) -> None:
        for item in self.items:
            item.emitted(rows, tokens)

    def candidates(self, src_beam: Tensor, cur_len: int, tokens: Tensor) -> None:
        for item in self.items:
            item.candidates(src_beam, cur_len, tokens)

    def running(self, next_idx: Tensor) -> None:
        for item in self.items:
            item.running(next_idx)

    def finished(self, best: Tensor) -> None:
        for item in self.items:
            item.finished(best)

    def result(self, *args) -> None:
        for item in self.items:
            item.result(*args)

    def kept(self, keep: Tensor) -> None:
        for item in self.items:
            item.kept(keep)

    def end(self, finished_scores: Tensor) -> None:
        for item in self.items:
            item.end(finished_scores)

    def ended(self, row: int, result) -> None:
        for item in self.items:
            item.ended(row, result)


def listeners_for(trace=None, hooks=None, stop: Callable[[Tensor], Tensor] | None = None, *more: Listener) -> Listeners:
    """The listeners of a call's optional side channels: a ``Trace`` (``return_dict_in_generate``), ``RowHooks``
    (streaming, abandoned rows), stop strings, and any ``more``."""
    return Listeners(
        *more,
        None if trace is None else TraceListener(trace),
        None if hooks is None else RowHooksListener(hooks),
        None if hooks is None or hooks.on_logprobs is None else BeamLogprobs(hooks),
        None if stop is None else StopListener(stop),
    )


def _gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """``t`` [sentences, n, ...] gathered along dim 1 by ``index`` [sentences, m]."""
    return torch.gather(t, 1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))


class TraceListener(Listener):
    """``return_dict_in_generate``: every step's scores (and raw logits) for every row, as transformers
    reports them; beam search also the sequences' scores and beam indices (``generation.outputs.Trace``)."""

    keeps_rows = needs_logits = needs_every_processor = True

    def __init__(self, trace):
        self.trace = trace
        self.raw_logits = None

    def start(self, batch, prompt_len, s, beam, device) -> None:
        self.beam, self.prompt_len, self.batch, self.returns = beam, prompt_len, batch, s.num_return_sequences
        beams, max_length = s.num_beams, s.max_length
        # per hypothesis, the decoder row each generated token came from (-1: none yet)
        self.running_bi = torch.full((batch, beams, max_length - prompt_len), -1, dtype=torch.int32, device=device)
        self.finished_bi = self.running_bi.clone()
        self.offsets = (torch.arange(batch, device=device) * beams)[:, None]

    def raw(self, logits: Tensor) -> None:
        self.raw_logits = logits.clone() if self.trace.want_logits else None

    def scored(self, scores: Tensor) -> None:
        self.trace.record(self.raw_logits, scores)

    def candidates(self, src_beam: Tensor, cur_len: int, tokens: Tensor) -> None:
        self.cand_bi = _gather_rows(self.running_bi, src_beam).clone()
        self.cand_bi[:, :, cur_len - self.prompt_len] = (src_beam + self.offsets).int()

    def running(self, next_idx: Tensor) -> None:
        self.running_bi = _gather_rows(self.cand_bi, next_idx)

    def finished(self, best: Tensor) -> None:
        self.finished_bi = _gather_rows(torch.cat((self.finished_bi, self.cand_bi), 1), best)

    def kept(self, keep: Tensor) -> None:
        self.running_bi, self.finished_bi = self.running_bi[keep], self.finished_bi[keep]
        self.offsets = self.offsets[keep]

    def end(self, finished_scores: Tensor) -> None:
        if not self.beam:
            return
        nrs = self.returns
        self.trace.sequences_scores = finished_scores[:, :nrs].reshape(-1)
        indices = self.finished_bi[:, :nrs].reshape(self.batch * nrs, -1)
        self.trace.beam_indices = indices[:, : int((indices + 1).bool().sum(dim=1).max())]


class RowHooksListener(Listener):
    """Streaming and abandoned rows (``generation.batching.RowHooks``): new tokens go to the caller; rows nobody
    waits for any more leave at the next step, with whatever they have."""

    def __init__(self, hooks):
        self.hooks = hooks
        # a caller that asks for log-probabilities needs every step's full, fully processed scores
        self.needs_logits = self.needs_every_processor = hooks.on_logprobs is not None
        self.scores: Tensor | None = None

    def scored(self, scores: Tensor) -> None:
        if self.hooks.on_logprobs is not None:
            self.scores = scores

    def picked(self, rows: Tensor, processed: Tensor, tokens: Tensor) -> None:
        if self.hooks.on_logprobs is not None:
            self.hooks.report_logprobs(rows, self.scores, tokens)

    def emitted(self, rows: Tensor, tokens: Tensor) -> None:
        self.hooks.emit(rows, tokens)

    def leaving(self, rows: Tensor, seqs, done: Tensor) -> Tensor:
        gone = self.hooks.gone(rows)
        return done if gone is None else done | gone


class BeamLogprobs(Listener):
    """Beam search for a caller that asks for log-probabilities (``RowHooks.on_logprobs``): per hypothesis, each
    token's score where it was chosen (the step's log-softmax with the logits rules applied after it, not
    renormalized, at the beam it extended: what ``compute_transition_scores`` reads from a trace's scores and
    beam indices) and the most likely tokens there; a sentence's best hypothesis is reported, token by token,
    when it ends. Each step gathers every hypothesis' history (cost grows with the output's length: for requests
    that ask, not for plain beam search)."""

    def __init__(self, hooks):
        self.hooks, self.top = hooks, hooks.top_logprobs

    def start(self, batch, prompt_len, s, beam, device) -> None:
        self.beam, self.beams, self.prompt_len = beam, s.num_beams, prompt_len
        if not beam:
            return
        shape = (batch, s.num_beams, s.max_length - prompt_len)
        # per hypothesis and generated position: the token's log-probability; with ``top``, the top tokens
        self.live = {"lp": torch.zeros(shape, device=device)}
        if self.top:
            self.live["ids"] = torch.zeros((*shape, self.top), dtype=torch.long, device=device)
            self.live["top"] = torch.zeros((*shape, self.top), device=device)
        self.finished_ = {k: v.clone() for k, v in self.live.items()}

    def scored(self, scores: Tensor) -> None:
        if self.beam:
            self.scores = scores.clone()  # the loop adds the running beam scores to them in place
            if self.top:
                self.step_top = self.scores.topk(min(self.top, scores.shape[1]), dim=-1)

    def candidates(self, src_beam: Tensor, cur_len: int, tokens: Tensor) -> None:
        rows = src_beam + (torch.arange(src_beam.shape[0], device=src_beam.device) * self.beams)[:, None]
        t = cur_len - self.prompt_len
        step = {"lp": self.scores[rows, tokens]}
        if self.top:
            top_lp, top_ids = self.step_top
            width = top_ids.shape[1]
            step["ids"] = torch.zeros((*rows.shape, self.top), dtype=torch.long, device=rows.device)
            step["top"] = torch.full((*rows.shape, self.top), -math.inf, device=rows.device)
            step["ids"][..., :width], step["top"][..., :width] = top_ids[rows], top_lp[rows]
        self.scores = self.step_top = None  # a step's full scores are held from ``scored`` to here only
        self.cand = {}
        for k, v in self.live.items():
            self.cand[k] = _gather_rows(v, src_beam)  # a new tensor
            self.cand[k][:, :, t] = step[k]

    def running(self, next_idx: Tensor) -> None:
        self.live = {k: _gather_rows(v, next_idx) for k, v in self.cand.items()}

    def finished(self, best: Tensor) -> None:
        self.finished_ = {k: _gather_rows(torch.cat((v, self.cand[k]), 1), best) for k, v in self.finished_.items()}

    def result(self, sentence, j, finished_scores, finished_lens, count) -> None:
        length = int(finished_lens[j, 0])
        row = self.hooks.caller_rows(torch.tensor([sentence]))
        path = {k: v[j, 0, :length].cpu() for k, v in self.finished_.items()}  # one copy off the device
        for t in range(length):
            ids = top = None
            if self.top:
                ids, top = path["ids"][t][None], path["top"][t][None]
            self.hooks.on_logprobs(row, path["lp"][t][None], ids, top)

    def kept(self, keep: Tensor) -> None:
        self.live = {k: v[keep] for k, v in self.live.items()}
        self.finished_ = {k: v[keep] for k, v in self.finished_.items()}


class StopListener(Listener):
    """Stop strings: ``stop(seqs [rows, length]) -> bool [rows]`` ends rows whose text completes one."""

    def __init__(self, stop: Callable[[Tensor], Tensor]):
        self.stop = stop

    def leaving(self, rows: Tensor, seqs, done: Tensor) -> Tensor:
        return done | self.stop(seqs())


class SampledSums(Listener):
    """Greedy and sampling: each row's sum of the log-probabilities of its chosen tokens (the log-softmax of the
    processed scores, before temperature and top-k/top-p), EOS included, in ``totals`` [rows]: Whisper's
    average log-probability."""

    needs_logits = needs_processed = True

    def start(self, batch, prompt_len, s, beam, device) -> None:
        self.totals = torch.zeros(batch)

    def picked(self, rows: Tensor, processed: Tensor, tokens: Tensor) -> None:
        picked = torch.log_softmax(processed, dim=-1).gather(1, tokens[:, None])[:, 0]
        self.totals[rows] += picked.to(self.totals.device)


class BeamSums(Listener):
    """Beam search: per sentence, the sum of the log-probabilities of each returned hypothesis' tokens, EOS
    included, renormalised after the logits rules (as CTranslate2 scores), in ``sums`` [sentences]."""

    def start(self, batch, prompt_len, s, beam, device) -> None:
        self.sums: list = [None] * batch
        self.renormalized = s.renormalize_logits  # the processors end with a log-softmax: log-normalisers are 0
        # per hypothesis: the sum of the log-normalisers of the processed scores on its path
        self.beams, self.penalty = s.num_beams, s.length_penalty
        self.running_norm = torch.zeros((batch, self.beams), device=device)
        self.finished_norm = torch.zeros((batch, self.beams), device=device)

    def scored(self, scores: Tensor) -> None:  # renormalized scores: their log-normaliser is 0
        n = scores.shape[0] // self.beams
        step_norm = 0.0 if self.renormalized else torch.logsumexp(scores, dim=-1).view(n, self.beams)
        self.path_norm = self.running_norm + step_norm

    def candidates(self, src_beam: Tensor, cur_len: int, tokens: Tensor) -> None:
        self.cand_norm = torch.gather(self.path_norm, 1, src_beam)

    def running(self, next_idx: Tensor) -> None:
        self.running_norm = torch.gather(self.cand_norm, 1, next_idx)

    def finished(self, best: Tensor) -> None:
        self.finished_norm = torch.gather(torch.cat((self.finished_norm, self.cand_norm), 1), 1, best)

    def result(self, sentence, j, finished_scores, finished_lens, count) -> None:
        # the finished score is the sum over length ** length_penalty
        self.sums[sentence] = [
            float(finished_scores[j, r]) * length_norm(int(finished_lens[j, r]), self.penalty)
            - float(self.finished_norm[j, r])
            for r in range(count)
        ]

    def kept(self, keep: Tensor) -> None:
        self.running_norm, self.finished_norm = self.running_norm[keep], self.finished_norm[keep]
