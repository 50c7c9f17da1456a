"""Log-probabilities over HTTP: TGI's ``details`` and ``top_n_tokens``, OpenAI's ``logprobs``; a generation
request's ``prefix``, ``alternatives`` and ``return_confidence``.

The engine reports each chosen token's log-probability as it is chosen (``RowHooks.on_logprobs``: the log-softmax
of the step's fully processed scores, what ``compute_transition_scores(..., normalize_logits=True)`` gives for
the same request) with the most likely tokens. A ``Collector`` keeps them per row of an engine batch; streamed
tokens carry theirs, and a finished row's list becomes its answer's ``details``. Beam search reports its best
hypothesis' when the input ends (not streamed), as beam search scores tokens: the log-softmax with the logits
rules applied after it, not renormalized (a temperature of 2 halves them). One sequence per input (the engine's
rule); a token the logits rules ruled out (``-inf``) is never listed among the top tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_TOP_N_TOKENS = 5  # TGI's default --max-top-n-tokens, and OpenAI's logprobs limit


def pop_detail_parameters(params: dict) -> tuple[dict, bool, int]:
    """``params`` without TGI's ``details``, ``top_n_tokens`` and ``decoder_input_details``, whether the request
    wants token details, and how many top tokens per step; ValueError naming a bad one."""
    params = dict(params)
    details = params.pop("details", False)
    top_n = params.pop("top_n_tokens", None)
    decoder_input = params.pop("decoder_input_details", False)
    if not isinstance(details, bool):
        raise ValueError("`details` must be a boolean")
    if top_n is None:
        top_n = 0
    if type(top_n) is not int or not 0 <= top_n <= MAX_TOP_N_TOKENS:
        raise ValueError(f"`top_n_tokens` must be an integer from 0 to {MAX_TOP_N_TOKENS}")
    if decoder_input not in (False, None):
        raise ValueError("`decoder_input_details` (the prompt's log-probabilities) is not supported yet")
    return params, details or top_n > 0, top_n


def check_one_row(s) -> None:
    """Log-probabilities follow one returned sequence per input, as the engine reports them."""
    if s.num_return_sequences != 1:
        raise ValueError("log-probabilities need one sequence per input (num_return_sequences=1)")


class Collector:
    """One engine batch's log-probabilities, per row: ``entries[row]`` is a list of (logprob, top) per
    generated token, ``top`` a list of (token id, logprob) or None. ``stream(inputs, tokens)`` passes streamed
    tokens on to the batcher's ``on_tokens`` with their entries."""

    def __init__(self, on_tokens=None):
        self.entries: dict[int, list[tuple[float, list | None]]] = {}
        self.on_tokens = on_tokens

    def on_logprobs(self, inputs, logprobs, top_ids, top_logprobs) -> None:
        for n, row in enumerate(inputs.tolist()):
            top = None
            if top_ids is not None:
                top = [(i, lp) for i, lp in zip(top_ids[n].tolist(), top_logprobs[n].tolist()) if math.isfinite(lp)]
            self.entries.setdefault(row, []).append((float(logprobs[n]), top))

    def stream(self, inputs, tokens) -> None:
        self.on_tokens(inputs, tokens, [self.entries[row][-1] for row in inputs.tolist()])

    def tokens(self, row: int, new_ids: list[int], decoder) -> list[dict]:
        """Each generated token of ``row``: ``{"id", "text", "logprob", "special"}`` (its text as streaming
        gives it: the pieces join to the decoded answer), with ``top_tokens`` where asked for."""
        return [decoder.push((token, entry)) for token, entry in zip(new_ids, self.entries.get(row, []))]


def token_fields(entry: tuple[float, list | None], tokenizer, special: set[int], lock) -> dict:
    """A token's ``logprob`` and, where asked for, ``top_tokens`` ``[{"id", "text", "logprob", "special"}]``."""
    logprob, top = entry
    fields: dict = {"logprob": logprob}
    if top is not None:
        with lock:
            texts = [tokenizer.decode([i]) for i, _ in top]
        fields["top_tokens"] = [
            {"id": i, "text": text, "logprob": lp, "special": i in special} for (i, lp), text in zip(top, texts)
        ]
    return fields


@dataclass
class Detailed:
    """A generated text with TGI's ``details`` of its tokens."""

    text: str
    tokens: list[dict]
    finish_reason: str
    seed: int | None

    def details(self) -> dict:
        body = {
            "finish_reason": self.finish_reason,
            "generated_tokens": len(self.tokens),
            "seed": self.seed,
            "prefill": [],
            "tokens": [{k: t[k] for k in ("id", "text", "logprob", "special")} for t in self.tokens],
        }
        if any("top_tokens" in t for t in self.tokens):
            body["top_tokens"] = [t.get("top_tokens", []) for t in self.tokens]
        return body


def openai_logprobs(tokens: list[dict], text: str, start: int = 0) -> dict:
    """OpenAI's completion ``logprobs`` for the tokens whose text begins within ``text`` (an answer cut at a stop
    string keeps the tokens before it; a token with no text of its own, EOS, counts at the end); offsets count
    from ``start``."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for t in tokens:
        if offset > len(text) or (offset == len(text) and t["text"]):
            break
        out["tokens"].append(t["text"])
        out["token_logprobs"].append(t["logprob"])
        out["top_logprobs"].append({top["text"]: top["logprob"] for top in t.get("top_tokens", [])})
        out["text_offset"].append(start + offset)
        offset += len(t["text"])
    return out


MAX_ALTERNATIVES = 16


def pop_output_options(params: dict) -> tuple[dict, int, float, bool]:
    """``params`` without ``prefix`` (read when tokenizing), ``alternatives``, ``min_alternative_expansion_prob``
    and ``return_confidence``; and the last three, checked (ValueError naming a bad one)."""
    params = dict(params)
    params.pop("prefix", None)
    alternatives = params.pop("alternatives", None) or 0
    min_prob = params.pop("min_alternative_expansion_prob", None) or 0.0
    confidence = params.pop("return_confidence", False)
    if type(alternatives) is not int or not 0 <= alternatives <= MAX_ALTERNATIVES:
        raise ValueError(f"`alternatives` must be an integer from 1 to {MAX_ALTERNATIVES}")
    if isinstance(min_prob, bool) or not isinstance(min_prob, (int, float)) or not 0 <= min_prob <= 1:
        raise ValueError("`min_alternative_expansion_prob` must be a number from 0 to 1")
    if not isinstance(confidence, bool):
        raise ValueError("`return_confidence` must be a boolean")
    return params, alternatives, float(min_prob), confidence


class Prefixed(list):
    """A row of source token ids that carries the token ids its outputs start with (``prefix``, or None) and the
    target phrases its outputs must hold (``phrases``: glossary terms and protected spans, token id tuples)."""

    def __init__(self, ids, prefix=None, phrases: tuple = ()):
        super().__init__(ids)
        self.prefix, self.phrases = prefix, phrases


@dataclass
class Alternatives:
    """A row's alternatives: (text, score) pairs, best first."""

    options: list


@dataclass
class Scored:
    """An answer with its confidence (a float, or one per returned sequence)."""

    answer: object
    confidence: object


def answer_body(field: str, answer) -> dict:
    """The JSON of one generation answer: ``{field: text}`` plus what the request asked for."""
    extra: dict = {}
    if isinstance(answer, Scored):
        answer, extra = answer.answer, {"confidence": answer.confidence}
    if isinstance(answer, Alternatives):
        first = answer.options[0][0] if answer.options else ""
        options = [{"text": t, "score": score} for t, score in answer.options]
        return {field: first, "alternatives": options, **extra}
    if isinstance(answer, Detailed):
        return {field: answer.text, "details": answer.details(), **extra}
    return {field: answer, **extra}
