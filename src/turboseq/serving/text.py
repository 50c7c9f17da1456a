"""The text tasks' shared parsing, and generation (translation, text-to-text, streamed token by token)."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from turboseq.errors import InputTooLong
from turboseq.formats.languages import language_pair
from turboseq.formats.tokenizer import encode_texts
from turboseq.generation.settings import GenerationSettings, check_seed
from turboseq.models.glossary import check_terms
from turboseq.models.text import Seq2SeqModel
from turboseq.serving import libretranslate
from turboseq.serving.logprobs import (
    Alternatives,
    Collector,
    Detailed,
    Prefixed,
    Scored,
    answer_body,
    check_one_row,
    pop_detail_parameters,
    pop_output_options,
    token_fields,
)
from turboseq.serving.requests import (
    Parsed,
    Prepared,
    RequestError,
    check_json_content_type,
    check_not_server_owned,
    invalid,
    task_body,
)
from turboseq.serving.tasks import Joining, Route, S, Task, check_generation_cost, doubling, register


class TextTask(Task[S]):
    def __init__(self, model, config=None):
        super().__init__(model, config)
        # the parser thread encodes, the engine thread and the streams decode: a fast tokenizer's state may not
        # be used from two threads at once
        self.tokenizer_lock = threading.Lock()

    def parse(self, raw: bytes, content_type: str, limit: int) -> Parsed:
        check_json_content_type(content_type)
        inputs, params, single = task_body(raw, limit)
        self.check_count(len(inputs))  # before any tokenizing
        return self.tokenize(inputs, params, single)

    def tokenize(self, inputs: list[str], params: dict, single: bool = False, keep_blank: bool = False) -> Parsed:
        """Token ids of the non-blank inputs (every input with ``keep_blank``), each within the input token limit
        (or cut with truncation: ``truncation``, or text-embeddings-inference's ``truncate`` and
        ``truncation_direction``)."""
        truncation = truncation_of(params)
        left = truncation_side_of(params) == "left"
        slots = [i for i, t in enumerate(inputs) if keep_blank or t.strip()]
        # a text far longer than any allowed token count is refused before the tokenizer spends time on it
        chars = 64 * self.max_input_tokens
        for i in slots:
            if len(inputs[i]) > chars and not truncation:
                raise RequestError(
                    422,
                    f"input {i} has {len(inputs[i])} characters, far over the server's limit of "
                    f"{self.max_input_tokens} tokens (set parameters.truncation to cut it)",
                    "input_too_long",
                )
        try:
            with self.tokenizer_lock, truncation_side(self.model.tokenizer, left):
                rows = encode_texts(
                    self.model.tokenizer,
                    [inputs[i] for i in slots],
                    self.max_input_tokens,
                    truncation,
                    slots,
                    hint="set parameters.truncation to cut it",
                )
        except InputTooLong as err:
            raise too_long(err) from None
        return Parsed(rows, slots, len(inputs), params, single)

    def warm_text(self) -> list[int]:
        text = "Warm up the engine with a sentence of ordinary length, like the ones the server will see."
        with self.tokenizer_lock:
            return self.model.tokenizer(text)["input_ids"]


def terms_of(params: dict) -> tuple[dict | None, bool]:
    """A request's ``glossary`` (``{"source term": "target term"}``) and ``keep_spans``, checked."""
    glossary, keep_spans = params.get("glossary"), params.get("keep_spans", False)
    try:
        check_terms(glossary, keep_spans)
    except TypeError as err:
        raise invalid(str(err)) from None
    return glossary, keep_spans


def truncation_of(params: dict) -> bool:
    """Whether a request cuts inputs over the token limit: ``truncation`` (Hugging Face's name) or ``truncate``
    (text-embeddings-inference's)."""
    name = "truncation" if "truncation" in params else "truncate"
    truncation = params.get(name, False)
    if not isinstance(truncation, bool):
        raise invalid(f"`{'parameters.truncation' if name == 'truncation' else name}` must be a boolean")
    return truncation


def truncation_side_of(params: dict) -> str:
    """``truncation_direction``: ``right`` (the default, the end is cut) or ``left``, in any case."""
    side = params.get("truncation_direction", "right")
    if not isinstance(side, str) or side.lower() not in ("left", "right"):
        raise invalid('`truncation_direction` must be "right" or "left"')
    return side.lower()


@contextmanager
def truncation_side(tokenizer, left: bool):
    """The tokenizer cuts from the left for the duration (callers hold the tokenizer lock)."""
    if not left:
        yield
        return
    before = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        yield
    finally:
        tokenizer.truncation_side = before


def too_long(err: InputTooLong) -> RequestError:
    return RequestError(
        422,
        f"input {err.index} has {err.tokens} tokens; the server accepts at most "
        f"{err.limit} (set parameters.truncation to cut it)",
        "input_too_long",
    )


@dataclass(frozen=True)
class GenerationRequest:
    """A generation request's settings, resolved once."""

    settings: GenerationSettings
    seed: int | None
    details: bool = False  # TGI's details / OpenAI's logprobs: each generated token's log-probability
    top_n_tokens: int = 0  # and the most likely tokens at each step
    alternatives: int = 0  # translations: the n most likely next tokens after the prefix, each completed
    min_alternative_expansion_prob: float = 0.0
    confidence: bool = False  # translations: each output's mean token log-probability
    terms: bool = False  # a glossary or protected spans: each row carries its required phrases


@register(Seq2SeqModel)
class GenerationTask(TextTask[GenerationRequest]):
    """Translation (Marian) and text-to-text generation: ``[{"translation_text" | "generated_text": ...}]``."""

    streams = True

    def __init__(self, model, config=None):
        super().__init__(model, config)
        self.name = "translation" if model.config.get("model_type") == "marian" else "text2text-generation"
        self.field = "translation_text" if self.name == "translation" else "generated_text"
        # the (source, target) languages LibreTranslate's routes serve, where the directory names them
        self.pair = language_pair(model.path, model.config) if self.name == "translation" else None

    def tokenize(self, inputs: list[str], params: dict, single: bool = False, keep_blank: bool = False) -> Parsed:
        """``TextTask.tokenize``; a ``prefix`` (one text for every input, or one per input) travels with each
        row as token ids (rows with different prefixes share batches), and so do the target phrases a
        ``glossary`` and ``keep_spans`` require of each input."""
        parsed = super().tokenize(inputs, params, single, keep_blank)
        glossary, keep_spans = terms_of(params)
        if glossary or keep_spans:
            try:
                with self.tokenizer_lock:
                    phrases = [self.model.required_phrases(inputs[i], glossary or {}, keep_spans) for i in parsed.slots]
            except ValueError as err:
                raise invalid(str(err)) from None
            parsed.rows = [Prefixed(row, None, p) for row, p in zip(parsed.rows, phrases)]
        prefix = params.get("prefix")
        if prefix is not None:
            texts = [prefix] * len(inputs) if isinstance(prefix, str) else prefix
            if (
                not isinstance(texts, list)
                or len(texts) != len(inputs)
                or not all(t is None or isinstance(t, str) for t in texts)
            ):
                raise invalid("`prefix` must be a text, or a list with one text (or null) per input")
            with self.tokenizer_lock:
                ids = self.model.encode_prefixes(texts, len(texts), self.model.settings())
            parsed.rows = [
                Prefixed(row, ids[slot], getattr(row, "phrases", ())) for row, slot in zip(parsed.rows, parsed.slots)
            ]
        return parsed

    def prepare(self, params: dict) -> Prepared[GenerationRequest]:
        check_not_server_owned(params)
        seed = params.get("seed")
        check_seed(seed)
        rest, details, top_n = pop_detail_parameters(params)
        rest, alternatives, min_prob, confidence = pop_output_options(rest)
        glossary, keep_spans = terms_of(rest)
        terms = bool(glossary) or keep_spans
        rest = {k: v for k, v in rest.items() if k not in ("glossary", "keep_spans")}
        if terms and (details or alternatives):
            raise ValueError("`glossary` and `keep_spans` do not combine with details, logprobs or `alternatives`")
        s = self.model.settings(**{k: v for k, v in rest.items() if k not in ("truncation", "seed")})
        if details:
            check_one_row(s)
        if alternatives and s.num_return_sequences != 1:
            raise ValueError("`alternatives` replaces `num_return_sequences`: leave it at 1")
        # sampled requests run alone, so that a seed means the same as when sent alone; so do alternatives
        # (searched one input at a time)
        key = (
            None
            if s.do_sample or alternatives
            else json.dumps({k: v for k, v in params.items() if k not in ("truncation", "prefix")}, sort_keys=True)
        )
        return Prepared(GenerationRequest(s, seed, details, top_n, alternatives, min_prob, confidence, terms), key)

    def check_cost(self, parsed: Parsed, limits) -> None:
        check_generation_cost(parsed.prepared.settings.settings, len(parsed.rows), limits)

    def check_stream(self, request: GenerationRequest) -> None:
        if request.settings.is_beam or request.settings.num_return_sequences != 1:
            raise invalid("streaming supports num_beams=1 and num_return_sequences=1")
        if request.alternatives or request.confidence or request.terms:
            raise invalid("`alternatives`, `return_confidence`, `glossary` and `keep_spans` are not streamed")

    def generate(self, rows, request: GenerationRequest, abandoned, on_tokens) -> tuple[list, Collector | None]:
        """The engine's sequences for ``rows``, and the log-probabilities where the request asks for them."""
        collector, kwargs = self.generate_arguments(rows, request, abandoned, on_tokens)
        if request.terms:
            return self.generate_with_phrases(rows, kwargs), collector
        return self.model.generate_rows(rows, max_batch_size=None, **kwargs), collector

    def generate_with_phrases(self, rows, kwargs: dict) -> list:
        """The engine's sequences for rows that carry required phrases (``Prefixed.phrases``), each phrase put
        where the model translates its source words (``Seq2SeqModel.generate_rows_with_phrases``)."""
        return self.model.generate_rows_with_phrases(
            rows,
            [getattr(row, "phrases", ()) for row in rows],
            settings=kwargs["settings"],
            seed=kwargs["seed"],
            prefixes=kwargs.get("prefixes"),
            max_batch_size=None,
            lock=self.tokenizer_lock,
        )

    def generate_arguments(
        self, rows, request: GenerationRequest, abandoned, on_tokens
    ) -> tuple[Collector | None, dict]:
        """The log-probability collector (None where the request asks for none) and ``generate_rows``' arguments."""
        collector = Collector(on_tokens) if request.details else None
        prefixes = [getattr(r, "prefix", None) for r in rows]
        extra = {"prefixes": prefixes} if any(p is not None for p in prefixes) else {}
        return collector, dict(
            abandoned=abandoned,
            on_tokens=collector.stream if collector is not None and on_tokens is not None else on_tokens,
            on_logprobs=None if collector is None else collector.on_logprobs,
            top_logprobs=request.top_n_tokens,
            seed=request.seed,
            settings=request.settings,
            **extra,
        )

    def detailed(self, request, collector: Collector, row: int, text: str, new: list[int], reason: str) -> Detailed:
        tokens = collector.tokens(row, new, self.stream_decoder(request))
        return Detailed(text, tokens, reason, request.seed)

    def joinable(self, request: GenerationRequest) -> bool:
        return not request.alternatives and not request.terms and self.model.joins

    def join(self, rows, request: GenerationRequest, abandoned=None, on_tokens=None) -> Joining | None:
        if not self.joinable(request):
            return None
        collector, kwargs = self.generate_arguments(rows, request, abandoned, on_tokens)
        searches = self.model.row_searches(rows, **kwargs)
        if searches is None:
            return None
        return Joining(
            searches,
            lambda indices, outputs: self.answer([rows[i] for i in indices], request, outputs, collector, indices),
        )

    def run(self, rows, request: GenerationRequest, abandoned=None, on_tokens=None):
        if request.alternatives:
            return self.run_alternatives(rows, request)
        outputs, collector = self.generate(rows, request, abandoned, on_tokens)
        return self.answer(rows, request, outputs, collector)

    def answer(self, rows, request: GenerationRequest, outputs: list, collector: Collector | None, indices=None):
        """(one answer per row, tokens generated) from the engine's sequences. ``indices``: the rows' places in
        the batch the collector numbers (None: 0, 1, ...)."""
        indices = indices if indices is not None else range(len(rows))
        scores = (
            [self.model.mean_logprobs([row] * len(seqs), seqs) for row, seqs in zip(rows, outputs)]
            if request.confidence
            else None
        )
        decode = self.model.tokenizer.batch_decode
        with self.tokenizer_lock:
            texts = [decode([s.tolist() for s in seqs], skip_special_tokens=True) for seqs in outputs]
        generated = sum(len(s) - 1 for seqs in outputs for s in seqs)  # minus the decoder start token
        if collector is not None:  # one sequence per input
            eos = set(request.settings.eos_token_ids)
            answers = []
            for row, source, seqs, text in zip(indices, rows, outputs, texts):
                # the generated tokens: after the start token and the forced prefix, whose tokens have no scores
                new = seqs[0][1 + len(getattr(source, "prefix", None) or ()) :].tolist()
                reason = "eos_token" if new and new[-1] in eos else "length"
                answers.append(self.detailed(request, collector, row, text[0], new, reason))
            return self.with_confidence(answers, scores), generated
        nrs = request.settings.num_return_sequences
        answers = [t[0] if nrs == 1 else t for t in texts]
        return self.with_confidence(answers, scores), generated

    def with_confidence(self, answers: list, scores: list[list[float]] | None) -> list:
        if scores is None:
            return answers
        return [Scored(a, s[0] if len(s) == 1 else s) for a, s in zip(answers, scores)]

    def run_alternatives(self, rows, request: GenerationRequest):
        """Per row, up to ``alternatives`` outputs: the most likely tokens after its prefix, each completed by
        the search (``Seq2SeqModel.alternatives``), best first, with their scores."""
        prefixes = [getattr(r, "prefix", None) for r in rows]
        found = self.model.alternatives(
            rows,
            prefixes,
            request.alternatives,
            min_expansion_prob=request.min_alternative_expansion_prob,
            settings=request.settings,
        )
        answers, generated = [], 0
        with self.tokenizer_lock:
            for options in found:
                texts = self.model.tokenizer.batch_decode([ids for ids, _ in options], skip_special_tokens=True)
                answers.append(Alternatives([(t, score) for t, (_, score) in zip(texts, options)]))
                generated += sum(len(ids) for ids, _ in options)
        return answers, generated

    def empty(self, request: GenerationRequest):
        if request.alternatives:
            return Alternatives([])
        nrs = request.settings.num_return_sequences
        return "" if nrs == 1 else [""] * nrs

    def respond(self, answers, parsed):
        return [answer_body(self.field, a) for a in answers]

    def stream_end(self, answer, decoder) -> tuple[str, str]:
        if isinstance(answer, Scored):
            answer = answer.answer
        return (answer.text if isinstance(answer, Detailed) else answer), decoder.finish_reason

    def routes(self) -> list[Route]:
        if self.name != "translation":
            return []
        return [
            Route("/translate", lambda service, request: libretranslate.translate(self, service, request)),
            Route("/detect", lambda service, request: libretranslate.detect_language(self, service, request)),
            Route("/languages", lambda s, r: libretranslate.languages(self, s, r), ("GET",)),
            Route("/frontend/settings", lambda s, r: libretranslate.frontend_settings(self, s, r), ("GET",)),
            Route("/translate_file", lambda service, request: libretranslate.translate_file(self, service, request)),
            Route("/download_file/{key}", lambda s, r: libretranslate.download_file(r.path_params["key"]), ("GET",)),
        ]

    def stream_decoder(self, request: GenerationRequest) -> TextStream:
        return TextStream(self.model.tokenizer, request.settings.eos_token_ids, self.tokenizer_lock)

    def warm(self, batch_size):
        # batches of 1, 2, 4, ... up to batch_size rows, the model's default beams, 32 forced new tokens: the
        # allocator's heap grows to the working set of varied batches here, not under the first minutes of load
        row = self.warm_text()
        for n in doubling(batch_size):
            self.model.generate_rows([row] * n, max_batch_size=None, min_new_tokens=32, max_new_tokens=32)
        # and the widest batch a request may make: the most beams allowed (up to 8) over a full batch
        beams = min(8, self.max_beams)
        if beams > 1:
            self.model.generate_rows(
                [row] * batch_size, max_batch_size=None, num_beams=beams, min_new_tokens=16, max_new_tokens=16
            )


class TextStream:
    """Incremental detokenization for streaming: each pushed token yields the text it adds, never half a
    character (a byte-level or byte-fallback token that ends inside a UTF-8 sequence adds nothing until the
    character completes), so that the pieces concatenate to the full decoded text."""

    def __init__(self, tokenizer, eos_token_ids, lock=None):
        self.tokenizer, self.eos = tokenizer, set(eos_token_ids)
        self.lock = lock or threading.Lock()
        self.special = set(tokenizer.all_special_ids)
        self.ids: list[int] = []
        self.sent = ""  # a prefix of the decoded text

    def push(self, token) -> dict:
        """``token``: an id, or (id, its log-probability entry from ``logprobs.Collector``)."""
        token, entry = token if isinstance(token, tuple) else (token, None)
        self.ids.append(token)
        with self.lock:
            decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = ""
        if not decoded.endswith("\ufffd") and decoded.startswith(self.sent):
            piece, self.sent = decoded[len(self.sent) :], decoded
        out = {"id": token, "text": piece, "special": token in self.special}
        if entry is not None:
            out.update(token_fields(entry, self.tokenizer, self.special, self.lock))
        return out

    def rest(self, final: str) -> str:
        """What is left to send of ``final`` (a trailing incomplete character resolved at the end)."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""

    @property
    def finish_reason(self) -> str:
        return "eos_token" if self.ids and self.ids[-1] in self.eos else "length"
