"""Serving tasks: everything the HTTP server needs to know about one kind of model.

The server (``server.py``) owns HTTP, the queue, dynamic batching, timeouts, disconnects, drain and metrics,
and knows nothing of text, audio or vectors. A ``Task`` says how a request body becomes engine rows, how
much of the batch budget a row takes, which requests may share a batch, how a batch runs, how answers are
shaped, which extra routes (OpenAI's) exist and how to warm up. Tasks are registered per model class
(``@register(ModelClass)``): a new kind of model plugs in by registering its task, with no server change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from turboseq.encoder import EncoderModel
from turboseq.generation import check_seed
from turboseq.model import Seq2SeqModel
from turboseq.speech import SpeechModel

# turboseq-only arguments a client may not set (the server owns batching)
SERVER_OWNED = {"max_batch_size", "max_batch_tokens", "progress", "batch_size", "on_tokens", "abandoned"}


class RequestError(Exception):
    """An error answered with ``status`` and JSON ``{"error": message, "error_type": kind}``."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def invalid(message: str) -> RequestError:
    return RequestError(422, message, "validation_error")


# --- request bodies ---------------------------------------------------------------------------------------------


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise RequestError(413, f"request body of {size} bytes is over the limit of {limit}", "payload_too_large")


def check_not_server_owned(params: dict) -> None:
    owned = SERVER_OWNED & set(params)
    if owned:
        raise ValueError(f"parameter(s) set by the server, not per request: {', '.join(sorted(owned))}")


def decode_json(raw: bytes, limit: int):
    check_size(len(raw), limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not valid UTF-8 ({err.reason} at byte {err.start})", "invalid_utf8")
    try:
        return json.loads(text)
    except ValueError as err:
        raise RequestError(400, f"malformed JSON: {err}", "invalid_json") from None


def text_list(value, name: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise invalid(f"`{name}` must be a string or a list of strings")
    for i, t in enumerate(value):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800" in the JSON
            raise invalid(f"`{name}` item {i} is not valid Unicode (a lone surrogate)") from None
    return value


def json_fields(body, allowed: set[str], required: str) -> dict:
    if not isinstance(body, dict):
        raise invalid(f"body must be a JSON object with `{required}`")
    unknown = set(body) - allowed
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
    if required not in body:
        raise invalid(f"`{required}` is required")
    return body


def task_body(raw: bytes, limit: int) -> tuple[list[str], dict, bool]:
    """Hugging Face's task format ``{"inputs": str | [str], "parameters": {...}}``: (inputs, parameters,
    whether ``inputs`` was a single string)."""
    body = json_fields(decode_json(raw, limit), {"inputs", "parameters"}, "inputs")
    params = body.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise invalid("`parameters` must be a JSON object")
    return text_list(body["inputs"], "inputs"), params, isinstance(body["inputs"], str)


@dataclass
class Parsed:
    """A request turned into engine rows: ``rows`` are the non-blank inputs, answered at ``slots`` among the
    ``count`` answers; blank inputs get the task's empty answer without running the model."""

    rows: list
    slots: list[int]
    count: int
    params: dict
    single: bool = False  # ``inputs`` was one value, not a list


@dataclass
class Route:
    """An extra endpoint of a task: ``handler(service, request)`` is awaited; ``service`` is the server's
    (``server.Service``: ``ensure_ready``, ``infer``, ``config``, ``metrics``)."""

    path: str
    handler: Callable


# --- the task interface -----------------------------------------------------------------------------------------


class Task:
    name = "unknown"  # Hugging Face pipeline task, shown by /info
    payload_bytes = 1 << 20  # default body limit
    streams = False  # whether /generate_stream serves this task

    def __init__(self, model):
        self.model = model
        self.max_input_tokens = model.spec.max_positions  # the server lowers it to --max-input-tokens
        self.max_batch_size = 32  # the server sets --max-batch-size

    def parse(self, raw: bytes, content_type: str, limit: int) -> Parsed:
        """The body of ``POST /`` as engine rows; raises RequestError."""
        raise NotImplementedError

    def validate(self, params: dict) -> None:
        """Raises ValueError/TypeError naming a bad parameter."""

    def batch_key(self, params: dict) -> str | None:
        """Requests with equal keys may share an engine batch; None: this request runs alone."""
        return json.dumps(params, sort_keys=True)

    def input_size(self, row) -> int:
        """A row's share of the batch budget (``--max-batch-tokens``)."""
        return len(row)

    def run(self, rows: list, params: dict, abandoned=None, on_tokens=None) -> tuple[list, int]:
        """One engine batch: (one answer per row, tokens generated). ``abandoned()`` names rows nobody waits
        for any more; ``on_tokens(rows, tokens)`` receives streamed tokens (streaming tasks only)."""
        raise NotImplementedError

    def empty(self, params: dict):
        """The answer to a blank input."""
        return None

    def respond(self, answers: list, parsed: Parsed):
        """The JSON body of ``POST /`` from one answer per input."""
        return answers

    def warm(self, batch_size: int) -> None:
        """Run a small and a full-size batch: kernels initialize and memory reaches its working set."""

    # streaming tasks (``streams = True``) also give:
    def check_stream(self, params: dict) -> None:
        """Raises RequestError when these parameters cannot be streamed."""
        raise NotImplementedError

    def stream_decoder(self, params: dict):
        """An object with ``push(token) -> {"id", "text", "special"}``, ``rest(final_text) -> str`` and
        ``finish_reason`` (see ``TextStream``)."""
        raise NotImplementedError

    def routes(self) -> list[Route]:
        return []


TASKS: dict[type, type[Task]] = {}


def register(model_class: type):
    """Class decorator: serve models of ``model_class`` (and subclasses) with this task."""

    def add(task_class: type[Task]) -> type[Task]:
        TASKS[model_class] = task_class
        return task_class

    return add


def task_for(model) -> Task:
    for cls in type(model).__mro__:  # the most specific registration wins (SpeechModel over Seq2SeqModel)
        if cls in TASKS:
            return TASKS[cls](model)
    raise ValueError(f"no serving task is registered for {type(model).__name__}")


# --- text in ----------------------------------------------------------------------------------------------------


class TextTask(Task):
    def parse(self, raw: bytes, content_type: str, limit: int) -> Parsed:
        inputs, params, single = task_body(raw, limit)
        return self.tokenize(inputs, params, single)

    def tokenize(self, inputs: list[str], params: dict, single: bool = False) -> Parsed:
        """Token ids of the non-blank inputs, each within the input token limit (or cut with truncation)."""
        truncation = params.get("truncation", False)
        if not isinstance(truncation, bool):
            raise invalid("`parameters.truncation` must be a boolean")
        slots = [i for i, t in enumerate(inputs) if t.strip()]
        rows, limit = [], self.max_input_tokens
        if slots:
            rows = self.model.tokenizer([inputs[i] for i in slots], truncation=truncation,
                                        max_length=limit if truncation else None)["input_ids"]
        for i, ids in zip(slots, rows):
            if len(ids) > limit:
                raise RequestError(422, f"input {i} has {len(ids)} tokens; the limit is {limit} "
                                   "(set parameters.truncation to cut it)", "input_too_long")
        return Parsed(rows, slots, len(inputs), params, single)

    def warm_text(self) -> list[int]:
        text = "Warm up the engine with a sentence of ordinary length, like the ones the server will see."
        return self.model.tokenizer(text)["input_ids"]


@register(Seq2SeqModel)
class GenerationTask(TextTask):
    """Translation (Marian) and text-to-text generation: ``[{"translation_text" | "generated_text": ...}]``."""

    streams = True

    def __init__(self, model):
        super().__init__(model)
        self.name = "translation" if model.config.get("model_type") == "marian" else "text2text-generation"
        self.field = "translation_text" if self.name == "translation" else "generated_text"

    def _settings(self, params: dict):
        """The request's generation settings (model defaults applied); raises ValueError naming a bad one."""
        return self.model.settings(**{k: v for k, v in params.items() if k not in ("truncation", "seed")})

    def validate(self, params: dict) -> None:
        check_not_server_owned(params)
        check_seed(params.get("seed"))
        self._settings(params)

    def batch_key(self, params: dict) -> str | None:
        if self._settings(params).do_sample:
            return None  # sampled requests run alone, so that a seed means the same as when sent alone
        return json.dumps({k: v for k, v in params.items() if k != "truncation"}, sort_keys=True)

    def check_stream(self, params: dict) -> None:
        s = self._settings(params)
        if s.is_beam or s.num_return_sequences != 1:
            raise invalid("streaming supports num_beams=1 and num_return_sequences=1")

    def run(self, rows, params, abandoned=None, on_tokens=None):
        gen = {k: v for k, v in params.items() if k != "truncation"}
        outputs = self.model.generate_rows(rows, max_batch_size=None, abandoned=abandoned, on_tokens=on_tokens, **gen)
        decode = self.model.tokenizer.batch_decode
        texts = [decode([s.tolist() for s in seqs], skip_special_tokens=True) for seqs in outputs]
        generated = sum(len(s) - 1 for seqs in outputs for s in seqs)  # minus the decoder start token
        nrs = self._settings(params).num_return_sequences
        return [t[0] if nrs == 1 else t for t in texts], generated

    def empty(self, params):
        nrs = self._settings(params).num_return_sequences
        return "" if nrs == 1 else [""] * nrs

    def respond(self, answers, parsed):
        return [{self.field: a} for a in answers]

    def stream_decoder(self, params: dict) -> TextStream:
        s = self._settings(params)
        return TextStream(self.model.tokenizer, s.eos_token_ids)

    def warm(self, batch_size):
        # batches of 1, 2, 4, ... up to batch_size rows, the model's default beams, 32 forced new tokens: the
        # allocator's heap grows to the working set of varied batches here, not under the first minutes of
        # load (measured on the opus-mt-shaped model: RSS then grows about 2% over a run of varied batches,
        # instead of 10% and still climbing)
        row = self.warm_text()
        for n in _doubling(batch_size):
            self.model.generate_rows([row] * n, max_batch_size=None, min_new_tokens=32, max_new_tokens=32)


def _doubling(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit``."""
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    return sizes + ([limit] if limit > 1 else [])


class TextStream:
    """Incremental detokenization for streaming: each pushed token yields the text it adds, never half a
    character (a byte-level or byte-fallback token that ends inside a UTF-8 sequence adds nothing until the
    character completes), so that the pieces concatenate to the full decoded text."""

    def __init__(self, tokenizer, eos_token_ids):
        self.tokenizer, self.eos = tokenizer, set(eos_token_ids)
        self.special = set(tokenizer.all_special_ids)
        self.ids: list[int] = []
        self.sent = ""  # a prefix of the decoded text

    def push(self, token: int) -> dict:
        self.ids.append(token)
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
class EmbeddingTask(TextTask):
    """Sentence embeddings: ``[[float, ...], ...]``; OpenAI's ``/v1/embeddings``."""

    name = "feature-extraction"

    def validate(self, params):
        unknown = set(params) - {"normalize", "truncation"}
        if unknown:
            raise ValueError(f"unknown parameter(s) for an embedding model: {', '.join(sorted(unknown))}")
        if not isinstance(params.get("normalize", False), bool):
            raise ValueError("`normalize` must be a boolean")

    def run(self, rows, params, abandoned=None, on_tokens=None):
        normalize = params.get("normalize", self.model.spec.pooling.normalize)
        return self.model.embed_ids(rows, normalize=normalize).tolist(), 0

    def empty(self, params):
        return []

    def warm(self, batch_size):
        row = self.warm_text()
        for n in _doubling(batch_size):
            self.run([row] * n, {})

    def routes(self):
        return [Route("/v1/embeddings", self.openai_embeddings)]

    async def openai_embeddings(self, service, request):
        service.ensure_ready()
        body = json_fields(decode_json(await request.body(), service.config.max_payload_bytes),
                           {"input", "model", "encoding_format", "user"}, "input")
        if body.get("encoding_format", "float") != "float":
            raise invalid('`encoding_format`: only "float" is supported')
        parsed = self.tokenize(text_list(body["input"], "input"), {})
        vectors = await service.infer(request, parsed)
        tokens = sum(len(ids) for ids in parsed.rows)
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v}
                                           for i, v in enumerate(vectors)],
                "model": service.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# --- audio in ---------------------------------------------------------------------------------------------------


@register(SpeechModel)
class SpeechTask(Task):
    """Speech recognition: raw audio bytes (``audio/*``) or JSON with base64 ``inputs``; answers
    ``{"text", "chunks": [{"timestamp": [start, end], "text"}]}`` per input. OpenAI's transcription route."""

    name = "automatic-speech-recognition"
    payload_bytes = 25 << 20  # OpenAI's limit

    def parse(self, raw, content_type, limit):
        import base64
        import binascii

        check_size(len(raw), limit)
        ctype = content_type.split(";")[0].strip().lower()
        if ctype == "application/json":
            inputs, params, single = task_body(raw, limit)
            try:
                blobs = [base64.b64decode(b, validate=True) for b in inputs]
            except (binascii.Error, ValueError):
                raise RequestError(400, "`inputs` must be base64-encoded audio", "invalid_audio") from None
        elif ctype in ("", "application/octet-stream") or ctype.startswith(("audio/", "video/")):
            blobs, params, single = [raw], {}, True
        else:
            raise RequestError(415, f"unsupported content type {ctype!r}: send audio bytes (audio/*) or JSON",
                               "unsupported_media_type")
        return Parsed(self.decode(blobs), list(range(len(blobs))), len(blobs), params, single)

    @staticmethod
    def decode(blobs: list[bytes]) -> list:
        from turboseq.audio import AudioError, load_audio

        waves = []
        for i, blob in enumerate(blobs):
            try:
                waves.append(load_audio(blob, name=f"input {i}"))
            except AudioError as err:
                raise RequestError(400, str(err), "invalid_audio") from None
        return waves

    @staticmethod
    def transcribe_kwargs(params: dict) -> dict:
        """Request parameters -> ``SpeechModel.transcribe`` arguments (transformers' names accepted)."""
        kwargs = {k: v for k, v in params.items() if k not in ("return_timestamps", "num_beams", "truncation", "seed")}
        kwargs["timestamps"] = bool(params.get("return_timestamps", False))
        kwargs["beam_size"] = params.get("num_beams", 1)
        return kwargs

    def validate(self, params):
        check_not_server_owned(params)
        if not isinstance(params.get("return_timestamps", False), bool):
            raise ValueError("`return_timestamps` must be a boolean")
        if "seed" in params:
            raise ValueError("`seed` is not supported for speech requests")
        self._settings(params)

    def _settings(self, params: dict):
        return self.model.settings(**{k: v for k, v in params.items() if k != "truncation"})

    def batch_key(self, params):
        if self._settings(params).do_sample:
            return None  # sampled requests run alone
        return super().batch_key(params)

    def input_size(self, row):
        from turboseq.audio import CHUNK_SAMPLES

        windows = max(1, -(-len(row) // CHUNK_SAMPLES))
        return windows * self.model.spec.encoder.embed.positions.shape[0]

    def run(self, rows, params, abandoned=None, on_tokens=None):
        # long audio is several 30 s windows: they share engine batches of up to max_batch_size windows
        results = self.model.transcribe(list(rows), batch_size=self.max_batch_size, abandoned=abandoned,
                                        **self.transcribe_kwargs(params))
        answers = [
            {"text": r.text, "chunks": [{"timestamp": [round(c.start, 2), round(c.end, 2)], "text": c.text}
                                        for c in r.segments]}
            for r in results
        ]
        return answers, sum(len(c.tokens) for r in results for c in r.segments)

    def respond(self, answers, parsed):
        return answers[0] if parsed.single else answers  # one audio in: one object out, as Hugging Face's API

    def warm(self, batch_size):
        import numpy as np

        # one window alone, then a batch of windows (silence is skipped without decoding: use noise)
        noise = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)
        for rows in ([noise], [noise] * min(batch_size, 4)):
            self.run(rows, {"max_new_tokens": 8})

    def routes(self):
        return [Route("/v1/audio/transcriptions", self.openai_transcriptions)]

    async def openai_transcriptions(self, service, request):
        """OpenAI's transcription API: multipart form with ``file``; response_format json | text | srt | vtt |
        verbose_json; optional ``language``, ``model``, ``temperature`` (0 only: decoding is deterministic)."""
        from fastapi.responses import PlainTextResponse

        from turboseq.speech import Segment, Transcription, to_srt, to_vtt

        service.ensure_ready()
        limit = service.config.max_payload_bytes
        check_size(int(request.headers.get("content-length") or 0), limit)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(415, "send multipart/form-data with a `file` field", "unsupported_media_type")
        form = await request.form()
        unknown = set(form) - {"file", "model", "response_format", "language", "temperature", "prompt"}
        if unknown:
            raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise invalid("`file` (an audio file upload) is required")
        fmt = form.get("response_format", "json")
        if fmt not in ("json", "text", "srt", "vtt", "verbose_json"):
            raise invalid(f"`response_format` must be json, text, srt, vtt or verbose_json, got {fmt!r}")
        try:
            temperature = float(form.get("temperature", 0) or 0)
        except ValueError:
            raise invalid("`temperature` must be a number") from None
        if temperature != 0:
            raise invalid("`temperature`: only 0 is supported")
        if form.get("prompt"):
            raise invalid("`prompt` is not supported yet")
        params = {"return_timestamps": fmt not in ("text", "json")}
        if form.get("language"):
            params["language"] = form["language"]
        blob = await upload.read()
        parsed = Parsed(self.decode([blob]), [0], 1, params, True)
        (answer,) = await service.infer(request, parsed)
        if fmt == "json":
            return {"text": answer["text"]}
        if fmt == "text":
            return PlainTextResponse(answer["text"] + "\n")
        segments = [Segment(c["timestamp"][0], c["timestamp"][1], c["text"]) for c in answer["chunks"]]
        result = Transcription(answer["text"], segments, 0.0)
        if fmt == "srt":
            return PlainTextResponse(to_srt(result), media_type="application/x-subrip")
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result), media_type="text/vtt")
        return {"task": "transcribe", "language": params.get("language", "en"), "text": answer["text"],
                "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(segments)]}
