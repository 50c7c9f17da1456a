"""What ``generate(..., return_dict_in_generate=True)`` reports besides the tokens: per-step scores and
logits, beam scores and beam indices, as transformers reports them; and ``transition_scores``, transformers'
``compute_transition_scores``.

A ``Trace`` handed to a search loop makes the loop run as transformers' does: no row leaves the batch
before the whole batch is done (finished rows are fed the pad token), so every step has a score for every
row, and the loop records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Trace:
    """Filled by one search loop over one batch. ``scores``: per step, the processed scores [rows, vocab]
    (beam search: log-probabilities after the logits rules, before the running beam scores are added);
    ``logits``: per step, the raw float32 logits [rows, vocab]. Beam search also sets ``sequences_scores``
    [sentences * num_return_sequences] and ``beam_indices`` [sentences * num_return_sequences, steps]."""

    want_scores: bool = False
    want_logits: bool = False
    scores: list[Tensor] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)
    sequences_scores: Tensor | None = None
    beam_indices: Tensor | None = None

    def record(self, logits: Tensor | None, scores: Tensor) -> None:
        """One step: a copy of the raw ``logits`` (None unless ``want_logits``) and the processed ``scores``
        (copied here: the loops reuse their buffers)."""
        if self.want_logits:
            self.logits.append(logits)
        if self.want_scores:
            self.scores.append(scores.clone())


def transition_scores(
    sequences: Tensor,
    scores: tuple[Tensor, ...] | list[Tensor],
    beam_indices: Tensor | None = None,
    normalize_logits: bool = False,
) -> Tensor:
    """The score of each generated token, [rows, steps], as transformers' ``compute_transition_scores``:
    ``scores`` from ``generate(..., output_scores=True)``, ``beam_indices`` from a beam search (None for greedy
    and sampling), ``normalize_logits`` to log-softmax the scores first. Steps after a beam ended are 0."""
    if not scores:
        raise ValueError("`scores` is empty: call generate with return_dict_in_generate=True, output_scores=True")
    vocab = scores[0].shape[-1]
    if beam_indices is None:
        beam_indices = torch.arange(scores[0].shape[0], device=sequences.device).view(-1, 1).expand(-1, len(scores))
    stacked = torch.stack(list(scores)).reshape(len(scores), -1).transpose(0, 1)
    if normalize_logits:
        stacked = torch.log_softmax(stacked.reshape(-1, vocab, stacked.shape[-1]), dim=1).reshape(-1, stacked.shape[-1])
    ended = beam_indices < 0
    longest = int((~ended).long().sum(-1).max())
    beam_indices = beam_indices.clone()[:, :longest].long()
    ended = ended[:, :longest]
    beam_indices[ended] = 0
    indices = sequences[:, sequences.shape[-1] - longest :] + beam_indices * vocab
    out = stacked.gather(0, indices)
    out[ended] = 0
    return out
