"""Alternatives after a forced prefix, with CTranslate2's semantics (``return_alternatives`` with
``target_prefix``): the decoder reads the start token and the prefix, the ``n`` most likely next tokens
(after the logits rules) are the alternatives, and each is then completed on its own by the call's search
(greedy, sampling or beam). As in CTranslate2 the expansion never picks EOS. An alternative's score is the sum of
the model's log-probabilities (before any logits rule) of its tokens after the prefix, EOS included.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from turboseq.generation.batching import pad_rows
from turboseq.generation.outputs import Trace, transition_scores
from turboseq.generation.processors import apply, build_processors
from turboseq.generation.settings import GenerationSettings, for_prompt


def _expand(model, source: Tensor, prompt: Tensor, n: int, s: GenerationSettings) -> list[tuple[int, float]]:
    """The ``n`` best next tokens after ``prompt`` with their log-probabilities (impossible ones left out);
    ``s``: the settings counted from ``prompt`` (``for_prompt``)."""
    hidden, cross_mask = model.encode(source[None], None)
    state = model.decoder_state(hidden, cross_mask, 1, len(prompt) + 1)
    ids = prompt[None].to(model.device)
    model_log_probs = torch.log_softmax(model.head.logits(state.step(ids)).float(), dim=-1)
    procs = build_processors(s, model.spec.vocab_size)
    ranked = apply(procs, ids, model_log_probs.clone())
    ranked[:, s.eos_token_ids] = -math.inf
    scores, tokens = torch.topk(ranked[0], min(n, ranked.shape[1]))
    return [(int(t), float(model_log_probs[0, t])) for t, v in zip(tokens, scores) if math.isfinite(float(v))]


def _completion_scores(seqs: list[Tensor], trace: Trace, s: GenerationSettings, start: int) -> list[float]:
    """Per completed row, the sum of the model's log-probabilities of its tokens from ``start`` on."""
    if s.is_beam:  # along each hypothesis' beam indices
        padded = pad_rows(seqs, s.beam_fill_token_id)
        steps = transition_scores(padded, trace.logits, trace.beam_indices, normalize_logits=True)
        return [float(row.sum()) for row in steps]
    log_probs = [torch.log_softmax(step, dim=-1) for step in trace.logits]
    return [
        sum(float(log_probs[t][i, int(seq[start + t])]) for t in range(len(seq) - start)) for i, seq in enumerate(seqs)
    ]


@torch.inference_mode()
def alternatives(
    model, source: Tensor, prompt: Tensor, n: int, s: GenerationSettings, min_expansion_prob: float = 0.0
) -> list[tuple[list[int], float]]:
    """Up to ``n`` alternatives for one input: (tokens after the start token, score), in the order of their
    expanded token's probability; expansions less likely than ``min_expansion_prob`` are left out."""
    from_prompt = for_prompt(s, len(prompt), model.spec.max_positions)
    expanded = [(t, v) for t, v in _expand(model, source, prompt, n, from_prompt) if math.exp(v) >= min_expansion_prob]
    prefix = prompt.tolist()
    results: list = [(prefix[1:] + [t], v) for t, v in expanded]
    ended = set(s.eos_token_ids)
    todo = [j for j, (t, _) in enumerate(expanded) if t not in ended]
    if not todo or len(prompt) + 1 >= from_prompt.max_length:
        return results
    prompts = torch.stack([torch.tensor(prefix + [expanded[j][0]], dtype=torch.long) for j in todo])
    trace = Trace(want_logits=True)
    inputs = source[None].expand(len(todo), -1)
    seqs = [per_input[0] for per_input in model.decode_batch(inputs, None, s, None, None, trace, prompts)]
    for j, seq, score in zip(todo, seqs, _completion_scores(seqs, trace, s, prompts.shape[1])):
        results[j] = (seq[1:].tolist(), expanded[j][1] + score)
    return results
