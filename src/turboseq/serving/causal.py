"""Text generation with decoder-only models: Hugging Face's text-generation format (``POST /``,
``/generate_stream``, as TGI answers it) and OpenAI's ``/v1/completions``."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from turboseq.errors import InputTooLong
from turboseq.generation.settings import check_seed
from turboseq.models.causal import CausalLM
from turboseq.serving.logprobs import Detailed, check_one_row, pop_detail_parameters
from turboseq.serving.openai_text import (
    COMPLETION_FIELDS,
    CompletionChunks,
    answer_head,
    completion_body,
    completion_params,
    cut_at_stop,
)
from turboseq.serving.requests import (
    Parsed,
    Prepared,
    RequestError,
    check_json_content_type,
    check_not_server_owned,
    decode_json,
    invalid,
    json_fields,
)
from turboseq.serving.tasks import Route, check_generation_cost, over_limit, register
from turboseq.serving.text import GenerationRequest, GenerationTask, truncation_of

DEFAULT_NEW_TOKENS = 100  # TGI's default where a request sets no length


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
                    new_text = cut_at_stop(new_text, s.stop_strings)
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
            COMPLETION_FIELDS,
            "prompt",
        )
        prompts, params, stream = completion_params(body)
        self.check_count(len(prompts))
        parsed = await service.off_loop(self.tokenize, prompts, {})
        parsed.params = params
        parsed.options = {"trim_stop": True}
        head = answer_head("cmpl-", "text_completion", service.name)
        if stream:
            if len(prompts) != 1 or params["num_return_sequences"] != 1:
                raise invalid("streaming takes one prompt and n=1")
            return await service.stream(
                request, parsed, CompletionChunks(head, params["stop_strings"], "details" in params)
            )
        answers = await service.infer(request, parsed)
        return completion_body(head, answers, params["num_return_sequences"])
