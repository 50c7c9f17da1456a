"""Text generation with decoder-only models: Hugging Face's text-generation format (``POST /``,
``/generate_stream``, as TGI answers it) and OpenAI's ``/v1/completions``."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, replace

from turboseq.errors import InputTooLong
from turboseq.generation.settings import check_seed
from turboseq.models.causal import CausalLM
from turboseq.serving.logprobs import MAX_TOP_N_TOKENS, Detailed, check_one_row, openai_logprobs, pop_detail_parameters
from turboseq.serving.requests import (
    Parsed,
    Prepared,
    RequestError,
    check_json_content_type,
    check_not_server_owned,
    decode_json,
    invalid,
    json_fields,
    text_list,
)
from turboseq.serving.tasks import Route, StreamEvents, check_generation_cost, over_limit, register, sse_event
from turboseq.serving.text import GenerationRequest, GenerationTask, truncation_of

DEFAULT_NEW_TOKENS = 100  # TGI's default where a request sets no length
OPENAI_DEFAULT_TOKENS = 16  # OpenAI's max_tokens default


@dataclass(frozen=True)
class CompletionRequest(GenerationRequest):
    """A completion request's settings, resolved once; the server's own fields beside the client's."""

    return_full_text: bool = False
    trim_stop: bool = False  # OpenAI: the text ends before the stop string
    default_length: bool = False  # the request set no length: TGI's default, cut to what fits after the prompt


@dataclass
class Continuation:
    """One prompt's answer: its texts (one per returned sequence), why each ended, and token counts."""

    texts: list[str]
    reasons: list[str]  # "eos_token" | "stop_sequence" | "length"
    prompt_tokens: int
    new_tokens: list[int]
    details: Detailed | None = None  # the tokens' log-probabilities (one sequence) where asked for


def _cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to its first stop string (OpenAI's answers end before it)."""
    hits = [i for i in (text.find(t) for t in stops) if i >= 0]
    return text[: min(hits)] if hits else text


@register(CausalLM)
class CompletionTask(GenerationTask):
    """Prompt continuation: ``[{"generated_text": ...}]`` (``return_full_text`` false by default, as TGI), a blank
    prompt starting from the BOS token; ``/generate_stream``; OpenAI's ``/v1/completions``."""

    def __init__(self, model, config=None):
        super().__init__(model, config)
        self.name, self.field = "text-generation", "generated_text"

    def tokenize(self, inputs: list[str], params: dict, single: bool = False) -> Parsed:
        truncation = truncation_of(params)
        limit = self.max_input_tokens
        for i, text in enumerate(inputs):
            if len(text) > 64 * limit and not truncation:
                raise RequestError(
                    422,
                    f"input {i} has {len(text)} characters, far over the server's limit of {limit} tokens "
                    "(set parameters.truncation to keep its end)",
                    "input_too_long",
                )
        try:
            with self.tokenizer_lock:
                rows = self.model.encode_prompts(inputs, limit, truncation)
        except InputTooLong as err:
            raise RequestError(
                422,
                f"input {err.index} has {err.tokens} tokens; the server accepts at most {err.limit} "
                "(set parameters.truncation to keep its end)",
                "input_too_long",
            ) from None
        return Parsed(rows, list(range(len(inputs))), len(inputs), params, single)

    def prepare(self, params: dict, trim_stop: bool = False) -> Prepared[GenerationRequest]:
        """``trim_stop`` (OpenAI's routes, never a client's parameter): answers end before the stop string."""
        check_not_server_owned(params)
        params = dict(params)
        seed = params.pop("seed", None)
        check_seed(seed)
        full = params.pop("return_full_text", False)
        if not isinstance(full, bool):
            raise ValueError(f"`return_full_text` must be a boolean, got {full!r}")
        if "stop" in params:  # TGI's name
            params["stop_strings"] = params.pop("stop") or None
        params.pop("truncation", None)
        params, details, top_n = pop_detail_parameters(params)
        default_length = params.get("max_new_tokens") is None and params.get("max_length") is None
        if default_length:  # TGI's default, within the model's positions (the prompt is counted at check_cost)
            params["max_new_tokens"] = min(DEFAULT_NEW_TOKENS, self.model.spec.max_positions - 1)
        s = self.model.settings(**params)
        if details:
            check_one_row(s)
        # sampled requests run alone, so that a seed means the same as when sent alone
        key = None if s.do_sample else json.dumps([params, full, trim_stop, details, top_n], sort_keys=True)
        request = CompletionRequest(
            s, seed, details, top_n, return_full_text=full, trim_stop=trim_stop, default_length=default_length
        )
        return Prepared(request, key)

    def check_cost(self, parsed: Parsed, limits) -> None:
        request: CompletionRequest = parsed.prepared.settings
        s = request.settings
        longest = max((len(r) or 1 for r in parsed.rows), default=1)
        positions = self.model.spec.max_positions
        if request.default_length and longest < positions:
            # a request that asked for no length gets what fits after its prompt and within the server's limit,
            # not a refusal
            fits = min(s.max_new_tokens, positions - longest, limits.max_new_tokens or positions)
            if fits != s.max_new_tokens:
                s = replace(s, max_new_tokens=fits)
                key = parsed.prepared.key
                parsed.prepared = Prepared(replace(request, settings=s), None if key is None else f"{key}|{fits}")
        if s.max_new_tokens is None and longest >= s.max_length:
            raise over_limit(f"`max_length` {s.max_length} leaves no room after a prompt of {longest} tokens")
        total = longest + s.max_new_tokens if s.max_new_tokens is not None else s.max_length
        if total > positions:
            raise over_limit(
                f"a prompt of {longest} tokens plus {total - longest} new tokens exceeds the model's {positions} "
                "positions"
            )
        check_generation_cost(replace(s, max_length=total, prompt_length=longest), len(parsed.rows), limits)

    def run(self, rows, request: CompletionRequest, abandoned=None, on_tokens=None):
        outputs, collector = self.generate(rows, request, abandoned, on_tokens)
        return self.answer(rows, request, outputs, collector)

    def answer(self, rows, request: CompletionRequest, outputs: list, collector, indices=None):
        s = request.settings
        answers, generated = [], 0
        eos = set(s.eos_token_ids)
        indices = indices if indices is not None else range(len(rows))
        for row, seqs, index in zip(rows, outputs, indices):
            start = len(row) or 1  # an empty prompt started from BOS
            texts, reasons, counts = [], [], []
            for seq in seqs:
                new = seq[start:].tolist()
                with self.tokenizer_lock:
                    new_text = self.model.tokenizer.decode(new, skip_special_tokens=True)
                    full = (
                        self.model.tokenizer.decode(seq.tolist(), skip_special_tokens=True)
                        if request.return_full_text
                        else ""
                    )
                # the prompt's text as the full decode has it (a tokenizer may join the two differently)
                prompt_text = full[: len(full) - len(new_text)] if full.endswith(new_text) else full
                reason = "eos_token" if new and new[-1] in eos else "length"
                if reason == "length" and s.stop_strings and any(t in new_text for t in s.stop_strings):
                    reason = "stop_sequence"
                if request.trim_stop and s.stop_strings:
                    new_text = _cut_at_stop(new_text, s.stop_strings)
                text = prompt_text + new_text if request.return_full_text else new_text
                texts.append(text)
                reasons.append(reason)
                counts.append(len(new))
            generated += sum(counts)
            details = None
            if collector is not None:  # one sequence
                details = self.detailed(request, collector, index, texts[0], seqs[0][start:].tolist(), reasons[0])
            answers.append(Continuation(texts, reasons, len(row), counts, details))
        return answers, generated

    def respond(self, answers, parsed):
        return [
            {self.field: a.texts[0] if len(a.texts) == 1 else a.texts}
            | ({} if a.details is None else {"details": a.details.details()})
            for a in answers
        ]

    def stream_end(self, answer: Continuation, decoder) -> tuple[str, str]:
        return answer.texts[0], answer.reasons[0]

    def warm(self, batch_size):
        row = self.warm_text()
        for n in (1, batch_size) if batch_size > 1 else (1,):
            self.model.generate_rows([row] * n, max_batch_size=None, max_new_tokens=16, min_new_tokens=16)
        beams = min(8, self.max_beams)  # the widest batch a request may make
        if beams > 1:
            self.model.generate_rows(
                [row] * batch_size, max_batch_size=None, num_beams=beams, max_new_tokens=8, min_new_tokens=8
            )

    # --- OpenAI /v1/completions -----------------------------------------------------------------------------

    def routes(self):
        from turboseq.serving.chat import chat_completions

        return [Route("/v1/completions", self.openai_completions), Route("/v1/chat/completions", chat_completions)]

    async def openai_completions(self, service, request):
        """OpenAI's ``/v1/completions``: plain or streamed (completion chunks, then ``[DONE]``)."""
        service.ensure_ready()
        check_json_content_type(request.headers.get("content-type", ""))
        body = json_fields(
            decode_json(await service.read_body(request), service.config.max_payload_bytes),
            _COMPLETION_FIELDS,
            "prompt",
        )
        prompts, params, stream = _completion_params(body)
        self.check_count(len(prompts))
        parsed = await service.off_loop(self.tokenize, prompts, {})
        parsed.params = params
        parsed.options = {"trim_stop": True}
        head = {
            "id": "cmpl-" + uuid.uuid4().hex[:24],
            "object": "text_completion",
            "created": int(time.time()),
            "model": service.name,
        }
        if stream:
            if len(prompts) != 1 or params["num_return_sequences"] != 1:
                raise invalid("streaming takes one prompt and n=1")
            return await service.stream(
                request, parsed, _CompletionChunks(head, params["stop_strings"], "details" in params)
            )
        answers = await service.infer(request, parsed)
        return _completion_body(head, answers, params["num_return_sequences"])


_COMPLETION_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "stream", "seed", "echo",
    "user", "presence_penalty", "frequency_penalty", "logprobs", "best_of", "suffix",
}  # fmt: skip


def _completion_params(body: dict) -> tuple[list[str], dict, bool]:
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


class _CompletionChunks(StreamEvents):
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
            cut = _cut_at_stop(self.sent + self.pending, self.stops)
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


def _completion_body(head: dict, answers: list[Continuation], n: int) -> dict:
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
