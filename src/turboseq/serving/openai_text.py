"""OpenAI's text completion format, shared by ``/v1/completions`` and ``/v1/chat/completions``: the request's
fields as generation parameters, the answer's body, and its stream of chunks."""

from __future__ import annotations

import math

from turboseq.serving.logprobs import MAX_TOP_N_TOKENS, openai_logprobs
from turboseq.serving.requests import invalid, text_list
from turboseq.serving.tasks import StreamEvents, sse_event

OPENAI_DEFAULT_TOKENS = 16  # OpenAI's max_tokens default


def answer_head(id_prefix: str, kind: str, model: str) -> dict:
    """The fields every OpenAI completion answer and chunk starts with."""
    import time
    import uuid

    return {"id": id_prefix + uuid.uuid4().hex[:24], "object": kind, "created": int(time.time()), "model": model}


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to its first stop string (OpenAI's answers end before it)."""
    hits = [i for i in (text.find(t) for t in stops) if i >= 0]
    return text[: min(hits)] if hits else text


COMPLETION_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "stream", "seed", "echo",
    "user", "presence_penalty", "frequency_penalty", "logprobs", "best_of", "suffix",
}  # fmt: skip


def completion_params(body: dict) -> tuple[list[str], dict, bool]:
    """A completion request's prompts, its generation parameters (TGI's names), and whether it streams; 422
    for what turboseq does not support or a value out of OpenAI's ranges."""
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("suffix", None)):
        if body.get(name, neutral) not in (neutral, None):
            raise invalid(f"`{name}` is not supported")
    logprobs = body.get("logprobs")
    if logprobs is not None and (type(logprobs) is not int or not 0 <= logprobs <= MAX_TOP_N_TOKENS):
        raise invalid(f"`logprobs` must be an integer from 0 to {MAX_TOP_N_TOKENS}")
    if logprobs is not None and body.get("echo"):
        raise invalid("`logprobs` with `echo` (the prompt's log-probabilities) is not supported yet")
    n = body.get("n", 1)
    if body.get("best_of") not in (None, n):
        raise invalid("`best_of` is not supported (other than equal to `n`)")
    prompts = text_list(body["prompt"], "prompt")
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    for name, value, low, high in (("temperature", temperature, 0.0, 2.0), ("top_p", top_p, 0.0, 1.0)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise invalid(f"`{name}` must be a number in [{low:g}, {high:g}], got {value!r}")
    if top_p == 0:
        raise invalid("`top_p` must be > 0, got 0")
    stream = body.get("stream", False)
    echo = body.get("echo", False)
    for name, value in (("stream", stream), ("echo", echo)):
        if not isinstance(value, bool):
            raise invalid(f"`{name}` must be a boolean")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None and (
        not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(t, str) and t for t in stops)
    ):
        raise invalid("`stop` must be a string or a list of up to 4 non-empty strings")
    params = {
        "max_new_tokens": body.get("max_tokens", OPENAI_DEFAULT_TOKENS),
        "num_return_sequences": n,
        "return_full_text": echo,
        "stop_strings": stops or None,
    }
    if logprobs is not None:
        params.update(details=True, top_n_tokens=logprobs)
    if temperature > 0:
        params.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    elif n != 1:
        raise invalid("`n` > 1 needs `temperature` > 0 (greedy decoding gives one answer)")
    if body.get("seed") is not None:
        params["seed"] = body["seed"]
    return prompts, params, stream


def _completion_chunk(head: dict, text: str, reason: str | None, logprobs: dict | None = None) -> dict:
    return {**head, "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": reason}]}


class CompletionChunks(StreamEvents):
    """OpenAI's completion chunks; with stop strings, text is held back until it cannot start one."""

    def __init__(self, head: dict, stops: list[str] | None, logprobs: bool = False):
        self.head, self.stops, self.logprobs = head, stops, logprobs
        self.hold = max((len(t) for t in stops or ()), default=1) - 1
        self.sent = self.pending = ""
        self.tokens: list[dict] = []  # tokens whose text is not sent yet (with log-probabilities)

    def _logprobs(self, text: str) -> dict | None:
        """The log-probabilities of the held tokens that begin within ``text``, which is sent now."""
        if not self.logprobs:
            return None
        out = openai_logprobs(self.tokens, text, len(self.sent) - len(text))
        self.tokens = self.tokens[len(out["tokens"]) :]
        return out

    def token(self, token: dict) -> list[str]:
        self.pending += token["text"]
        if self.logprobs:
            self.tokens.append(token)
        if self.stops:
            cut = cut_at_stop(self.sent + self.pending, self.stops)
            ready = cut[len(self.sent) : max(len(self.sent), len(cut) - self.hold)]
        else:
            ready = self.pending
        if not ready:
            return []
        self.sent += ready
        self.pending = self.pending[len(ready) :]
        return [sse_event(self.chunk(ready, None, self._logprobs(ready)))]

    def chunk(self, text: str, reason: str | None, logprobs: dict | None) -> dict:
        return _completion_chunk(self.head, text, reason, logprobs)

    def end(self, text: str, reason: str) -> list[str]:
        rest = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent += rest
        final = self.chunk(rest, "length" if reason == "length" else "stop", self._logprobs(rest))
        return [sse_event(final), "data: [DONE]\n\n"]


def completion_body(head: dict, answers: list, n: int) -> dict:
    choices = []
    for i, answer in enumerate(answers):
        for j, (text, reason) in enumerate(zip(answer.texts, answer.reasons)):
            choices.append(
                {
                    "text": text,
                    "index": i * n + j,
                    "logprobs": None if answer.details is None else openai_logprobs(answer.details.tokens, text),
                    "finish_reason": "length" if reason == "length" else "stop",
                }
            )
    prompt_tokens = sum(a.prompt_tokens for a in answers)
    completion_tokens = sum(sum(a.new_tokens) for a in answers)
    return {
        **head,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
