"""The text tasks: generation (translation, text-to-text, streamed token by token) and embeddings."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import threading
from dataclasses import dataclass

from turboseq.errors import InputTooLong
from turboseq.formats.tokenizer import encode_texts
from turboseq.generation.settings import GenerationSettings, check_seed
from turboseq.models.encoder import EncoderModel
from turboseq.models.text import Seq2SeqModel
from turboseq.serving.requests import (
    Parsed,
    Prepared,
    RequestError,
    check_json_content_type,
    check_not_server_owned,
    decode_json,
    invalid,
    json_fields,
    task_body,
    text_list,
)
from turboseq.serving.tasks import Route, S, Task, check_generation_cost, doubling, register


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

    def tokenize(self, inputs: list[str], params: dict, single: bool = False) -> Parsed:
        """Token ids of the non-blank inputs, each within the input token limit (or cut with truncation)."""
        truncation = params.get("truncation", False)
        if not isinstance(truncation, bool):
            raise invalid("`parameters.truncation` must be a boolean")
        slots = [i for i, t in enumerate(inputs) if t.strip()]
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
            with self.tokenizer_lock:
                rows = encode_texts(
                    self.model.tokenizer,
                    [inputs[i] for i in slots],
                    self.max_input_tokens,
                    truncation,
                    slots,
                    hint="set parameters.truncation to cut it",
                )
        except InputTooLong as err:
            raise RequestError(
                422,
                f"input {err.index} has {err.tokens} tokens; the server accepts at most "
                f"{err.limit} (set parameters.truncation to cut it)",
                "input_too_long",
            ) from None
        return Parsed(rows, slots, len(inputs), params, single)

    def warm_text(self) -> list[int]:
        text = "Warm up the engine with a sentence of ordinary length, like the ones the server will see."
        with self.tokenizer_lock:
            return self.model.tokenizer(text)["input_ids"]


@dataclass(frozen=True)
class GenerationRequest:
    """A generation request's settings, resolved once."""

    settings: GenerationSettings
    seed: int | None


@register(Seq2SeqModel)
class GenerationTask(TextTask[GenerationRequest]):
    """Translation (Marian) and text-to-text generation: ``[{"translation_text" | "generated_text": ...}]``."""

    streams = True

    def __init__(self, model, config=None):
        super().__init__(model, config)
        self.name = "translation" if model.config.get("model_type") == "marian" else "text2text-generation"
        self.field = "translation_text" if self.name == "translation" else "generated_text"

    def prepare(self, params: dict) -> Prepared[GenerationRequest]:
        check_not_server_owned(params)
        seed = params.get("seed")
        check_seed(seed)
        s = self.model.settings(**{k: v for k, v in params.items() if k not in ("truncation", "seed")})
        # sampled requests run alone, so that a seed means the same as when sent alone
        key = (
            None if s.do_sample else json.dumps({k: v for k, v in params.items() if k != "truncation"}, sort_keys=True)
        )
        return Prepared(GenerationRequest(s, seed), key)

    def check_cost(self, parsed: Parsed, limits) -> None:
        check_generation_cost(parsed.prepared.settings.settings, len(parsed.rows), limits)

    def check_stream(self, request: GenerationRequest) -> None:
        if request.settings.is_beam or request.settings.num_return_sequences != 1:
            raise invalid("streaming supports num_beams=1 and num_return_sequences=1")

    def run(self, rows, request: GenerationRequest, abandoned=None, on_tokens=None):
        outputs = self.model.generate_rows(
            rows,
            max_batch_size=None,
            abandoned=abandoned,
            on_tokens=on_tokens,
            seed=request.seed,
            settings=request.settings,
        )
        decode = self.model.tokenizer.batch_decode
        with self.tokenizer_lock:
            texts = [decode([s.tolist() for s in seqs], skip_special_tokens=True) for seqs in outputs]
        generated = sum(len(s) - 1 for seqs in outputs for s in seqs)  # minus the decoder start token
        nrs = request.settings.num_return_sequences
        return [t[0] if nrs == 1 else t for t in texts], generated

    def empty(self, request: GenerationRequest):
        nrs = request.settings.num_return_sequences
        return "" if nrs == 1 else [""] * nrs

    def respond(self, answers, parsed):
        return [{self.field: a} for a in answers]

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

    def push(self, token: int) -> dict:
        self.ids.append(token)
        with self.lock:
            decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = ""
        if not decoded.endswith("\ufffd") and decoded.startswith(self.sent):
            piece, self.sent = decoded[len(self.sent) :], decoded
        return {"id": token, "text": piece, "special": token in self.special}

    def rest(self, final: str) -> str:
        """What is left to send of ``final`` (a trailing incomplete character resolved at the end)."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""

    @property
    def finish_reason(self) -> str:
        return "eos_token" if self.ids and self.ids[-1] in self.eos else "length"


@register(EncoderModel)
class EmbeddingTask(TextTask[bool]):
    """Sentence embeddings: ``[[float, ...], ...]``; OpenAI's ``/v1/embeddings``."""

    name = "feature-extraction"

    def prepare(self, params) -> Prepared[bool]:
        unknown = set(params) - {"normalize", "truncation"}
        if unknown:
            raise ValueError(f"unknown parameter(s) for an embedding model: {', '.join(sorted(unknown))}")
        normalize = params.get("normalize", self.model.spec.pooling.normalize)
        if not isinstance(normalize, bool):
            raise ValueError("`normalize` must be a boolean")
        return Prepared(normalize, json.dumps(normalize))

    def run(self, rows, normalize: bool, abandoned=None, on_tokens=None):
        return self.model.embed_ids(rows, normalize=normalize).tolist(), 0

    def empty(self, normalize: bool):
        return []

    def warm(self, batch_size):
        row = self.warm_text()
        for n in doubling(batch_size):
            self.run([row] * n, self.model.spec.pooling.normalize)

    def routes(self):
        return [Route("/v1/embeddings", self.openai_embeddings)]

    async def openai_embeddings(self, service, request):
        """OpenAI's embeddings: ``encoding_format`` float or base64 (the ``openai`` SDK asks for base64 unless
        told otherwise), ``dimensions`` (the first ones, normalized again where the model normalizes, as
        text-embeddings-inference does), and up to ``MAX_EMBEDDING_INPUTS`` inputs, queued in engine batches."""
        service.ensure_ready()
        check_json_content_type(request.headers.get("content-type", ""))
        body = json_fields(
            decode_json(await service.read_body(request), service.config.max_payload_bytes),
            {"input", "model", "encoding_format", "dimensions", "user"},
            "input",
        )
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise invalid('`encoding_format` must be "float" or "base64"')
        width, dimensions = self.model.spec.d_model, body.get("dimensions")
        if dimensions is not None and (type(dimensions) is not int or not 1 <= dimensions <= width):
            raise invalid(f"`dimensions` must be an integer from 1 to {width} (the model's size)")
        inputs = text_list(body["input"], "input")
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise RequestError(
                413,
                f"{len(inputs)} inputs in one request; the limit is {MAX_EMBEDDING_INPUTS}",
                "too_many_inputs",
            )
        size = self.max_batch_size
        chunks = [inputs[i : i + size] for i in range(0, len(inputs), size)] or [[]]
        parsed = [await service.off_loop(self.tokenize, chunk, {}) for chunk in chunks]
        answers = await asyncio.gather(*(service.infer(request, p) for p in parsed))
        vectors = [vector for answer in answers for vector in answer]
        tokens = sum(len(ids) for p in parsed for ids in p.rows)
        if dimensions is not None:
            vectors = [_shortened(v, dimensions, self.model.spec.pooling.normalize) for v in vectors]
        if encoding == "base64":  # little-endian float32, as OpenAI sends them
            vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii") for v in vectors]
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": service.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


# OpenAI's limit of inputs per embeddings request (each engine batch still takes at most --max-batch-size)
MAX_EMBEDDING_INPUTS = 2048


def _shortened(vector: list[float], dimensions: int, normalize: bool) -> list[float]:
    """The first ``dimensions`` values, scaled back to unit length when the model's vectors are normalized."""
    head = vector[:dimensions]
    if not normalize:
        return head
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head
