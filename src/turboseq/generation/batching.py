"""Batching: inputs sorted by length into batches, outputs padded back, and the hooks a caller hands a batch.

A caller (the server, a transcription of several files) numbers its rows its own way; the engine regroups
them into batches, and sampled sequences or beams into more rows. ``RowHooks`` carries the caller's two
callbacks through every regrouping as one index map, so each layer translates rows once, by ``select``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence

import torch
from torch import Tensor


def make_batches(
    order: list[int], lengths: Sequence[int], max_size: int | None, max_tokens: int | None
) -> Iterator[list[int]]:
    """Split ``order`` into consecutive batches of at most ``max_size`` rows and ``max_tokens`` padded tokens."""
    if max_size is not None and max_size < 1:
        raise ValueError(f"`max_batch_size` must be >= 1, got {max_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"`max_batch_tokens` must be >= 1, got {max_tokens}")
    batch: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        too_many = max_size is not None and len(batch) + 1 > max_size
        too_big = max_tokens is not None and new_width * (len(batch) + 1) > max_tokens
        if batch and (too_many or too_big):
            yield batch
            batch, new_width = [], lengths[i]
        batch.append(i)
        width = new_width
    if batch:
        yield batch


def pad_rows(rows: list[Tensor], fill: int) -> torch.LongTensor:
    """Right-pad token rows with ``fill`` into one LongTensor [len(rows), longest]."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.cpu()
    return out


def pad_batch(rows: Sequence[Tensor], chunk: list[int], fill: int, left: bool = False) -> tuple[Tensor, Tensor]:
    """The rows ``chunk`` of ``rows`` padded with ``fill`` to the longest of them, on the right (or the
    ``left``, as decoder-only prompts are): ids and mask, each a LongTensor [len(chunk), longest]."""
    width = max(len(rows[i]) for i in chunk)
    ids = torch.full((len(chunk), width), fill, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for j, i in enumerate(chunk):
        where = slice(width - len(rows[i]), width) if left else slice(0, len(rows[i]))
        ids[j, where] = rows[i]
        mask[j, where] = 1
    return ids, mask


class RowHooks:
    """A caller's callbacks into a running batch, seen through the map from batch rows to the caller's rows.

    ``abandoned()`` returns the caller's rows nobody waits for any more (a collection, possibly empty, or
    None): their batch rows leave at the next decoding step. ``on_tokens(rows, tokens)`` receives each new
    token with its caller row (tensors), for streaming.
    """

    def __init__(
        self,
        abandoned: Callable[[], Collection[int] | None] | None = None,
        on_tokens: Callable[[Tensor, Tensor], None] | None = None,
        index: Tensor | None = None,
        on_logprobs: Callable[[Tensor, Tensor, Tensor | None, Tensor | None], None] | None = None,
        top_logprobs: int = 0,
    ):
        self.abandoned, self.on_tokens = abandoned, on_tokens
        self.index = index  # [batch rows] -> caller row; None: the identity
        # ``on_logprobs(rows, logprobs, top_ids, top_logprobs)``: each chosen token's log-probability (the
        # log-softmax of the step's scores after every logits rule, as ``compute_transition_scores`` with
        # ``normalize_logits=True`` gives it) and the ``top_logprobs`` most likely tokens, before the tokens
        # are emitted; beam search: its best hypothesis' when the input ends, its scores as beam search keeps
        # them (the log-softmax, then the logits rules, not renormalized: ``generation.listeners.BeamLogprobs``)
        self.on_logprobs, self.top_logprobs = on_logprobs, top_logprobs

    def select(self, rows: Sequence[int] | Tensor) -> RowHooks:
        """The hooks of a batch whose row j is this batch's row ``rows[j]``."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        index = rows if self.index is None else self.index[rows]
        return RowHooks(self.abandoned, self.on_tokens, index, self.on_logprobs, self.top_logprobs)

    def lost(self) -> set[int]:
        """The caller's rows given up so far."""
        return set(self.abandoned() or ()) if self.abandoned is not None else set()

    def caller_rows(self, rows: Tensor) -> Tensor:
        rows = rows.cpu()
        return rows if self.index is None else self.index[rows]

    def gone(self, rows: Tensor) -> Tensor | None:
        """Bool mask over this batch's ``rows`` of those given up, or None when none is."""
        lost = self.lost()
        if not lost:
            return None
        return torch.tensor([i in lost for i in self.caller_rows(rows).tolist()], dtype=torch.bool, device=rows.device)

    def emit(self, rows: Tensor, tokens: Tensor) -> None:
        """Pass the new ``tokens`` of this batch's ``rows`` to the caller."""
        if self.on_tokens is not None:
            self.on_tokens(self.caller_rows(rows), tokens)

    def report_logprobs(self, rows: Tensor, scores: Tensor, tokens: Tensor) -> None:
        """The log-probabilities of the ``tokens`` chosen for this batch's ``rows`` from the step's ``scores``."""
        logp = torch.log_softmax(scores.float(), dim=-1)
        chosen = logp.gather(1, tokens[:, None]).squeeze(1).cpu()
        top_ids = top_lp = None
        if self.top_logprobs:
            top_lp, top_ids = logp.topk(min(self.top_logprobs, logp.shape[1]), dim=-1)
            top_lp, top_ids = top_lp.cpu(), top_ids.cpu()
        self.on_logprobs(self.caller_rows(rows), chosen, top_ids, top_lp)


def row_hooks(s, abandoned=None, on_tokens=None, on_logprobs=None, top_logprobs: int = 0) -> RowHooks | None:
    """A ``generate_rows`` call's hooks, or None when it has none (``s``: its ``GenerationSettings``). Streaming
    follows one row per input (greedy or sampling with one return sequence); log-probabilities one returned
    sequence per input (beam search reports its best hypothesis' when the input ends)."""
    one_row = not s.is_beam and s.num_return_sequences == 1
    if on_tokens is not None and not one_row:
        raise ValueError("streaming needs num_beams=1 and num_return_sequences=1")
    if on_logprobs is not None and s.num_return_sequences != 1:
        raise ValueError("log-probabilities need num_return_sequences=1")
    if abandoned is None and on_tokens is None and on_logprobs is None:
        return None
    return RowHooks(abandoned, on_tokens, None, on_logprobs, top_logprobs)
