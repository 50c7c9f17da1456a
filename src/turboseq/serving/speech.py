"""The speech task: Whisper transcription of raw audio or base64 JSON, and OpenAI's transcription route."""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from turboseq.errors import AudioError, AudioTooLong
from turboseq.formats.audio import CHUNK_SAMPLES, SAMPLE_RATE, load_audio
from turboseq.generation.settings import GenerationSettings
from turboseq.serving.config import ServerConfig
from turboseq.serving.requests import (
    Parsed,
    Prepared,
    RequestError,
    check_not_server_owned,
    check_size,
    invalid,
    over_limit,
    task_body,
)
from turboseq.serving.tasks import Route, Task, check_generation_cost, register
from turboseq.speech.decoding import DEFAULT_TEMPERATURES
from turboseq.speech.model import SpeechModel
from turboseq.speech.transcript import Transcription, to_srt, to_vtt


@dataclass(frozen=True)
class SpeechRequest:
    """A transcription request's ``transcribe`` arguments and its generation settings, resolved once."""

    kwargs: dict
    settings: GenerationSettings  # for the server's cost limits (beams, new tokens per window)
    chunks: bool = False  # answer with timed chunks (Hugging Face's return_timestamps)


@register(SpeechModel)
class SpeechTask(Task[SpeechRequest]):
    """Speech recognition: raw audio bytes (``audio/*``) or JSON with base64 ``inputs``; answers
    ``{"text", "chunks": [{"timestamp": [start, end], "text"}]}`` per input. OpenAI's transcription route."""

    name = "automatic-speech-recognition"
    payload_bytes = 25 << 20  # OpenAI's limit

    def __init__(self, model, config=None):
        super().__init__(model, config)
        config = config or ServerConfig()
        self.max_audio_seconds = config.max_audio_seconds  # per input: decoding stops past it
        self.request_audio_seconds = config.request_audio_seconds  # all inputs of a request
        self.queued_audio_limit = int(config.max_queued_audio_seconds * SAMPLE_RATE)  # held at once, in samples
        self.audio_lock = threading.Lock()  # the parser thread adds, the event loop's answers give back
        self.audio_held = 0  # samples decoded for requests not answered yet

    def parse(self, raw, content_type, limit):
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
            raise RequestError(
                415, f"unsupported content type {ctype!r}: send audio bytes (audio/*) or JSON", "unsupported_media_type"
            )
        self.check_count(len(blobs))  # before any decoding
        waves, release = self.decode(blobs)
        return Parsed(waves, list(range(len(blobs))), len(blobs), params, single, release=release)

    def decode(self, blobs: list[bytes]) -> tuple[list, Callable[[], None]]:
        """16 kHz waveforms of the audio files, and the function that gives back the samples they hold.
        Decoding stops as soon as one input passes --max-audio-seconds, the request's inputs together
        --max-request-audio-seconds (413), or all requests' audio held at once --max-queued-audio-seconds
        (503: a compressed file of silence is small, its samples are not)."""
        waves: list = []
        held = 0

        def release() -> None:
            nonlocal held
            with self.audio_lock:
                self.audio_held -= held
                held = 0

        for i, blob in enumerate(blobs):
            request_left = self.request_audio_seconds - held / SAMPLE_RATE
            with self.audio_lock:
                queue_left = (self.queued_audio_limit - self.audio_held) / SAMPLE_RATE
            limits = [
                (self.max_audio_seconds, 413, "audio_too_long", "--max-audio-seconds"),
                (request_left, 413, "audio_too_long", "--max-request-audio-seconds: all inputs of the request"),
                (queue_left, 503, "busy", "--max-queued-audio-seconds: audio held by all requests; retry later"),
            ]
            seconds, status, kind, why = min(limits, key=lambda limit: limit[0])
            try:
                wave = load_audio(blob, name=f"input {i}", max_seconds=max(seconds, 0.0))
            except AudioTooLong as err:
                release()
                headers = {"Retry-After": "5"} if status == 503 else None
                raise RequestError(status, f"{err} ({why})", kind, headers) from None
            except AudioError as err:
                release()
                raise RequestError(400, str(err), "invalid_audio") from None
            with self.audio_lock:
                self.audio_held += len(wave)
            held += len(wave)
            waves.append(wave)
        return waves, release

    def time_allowed(self, parsed, config) -> float:
        """``--request-timeout-s`` plus ``--timeout-per-audio-second`` for each second of the request's audio:
        the time follows the work (a 30-minute recording is not cut off at 60 s)."""
        seconds = sum(len(wave) for wave in parsed.rows) / SAMPLE_RATE
        return config.request_timeout_s + config.timeout_per_audio_second * seconds

    def check_cost(self, parsed, limits) -> None:
        # per 30 s window: long audio is bounded by --max-audio-seconds, and its windows by --max-batch-size;
        # a window is decoded again at each fallback temperature, with best_of samples at those above 0
        request: SpeechRequest = parsed.prepared.settings
        s = request.settings
        temperatures = request.kwargs.get("temperature", DEFAULT_TEMPERATURES)
        temperatures = list(temperatures) if isinstance(temperatures, (list, tuple)) else [temperatures]
        best_of = request.kwargs.get("best_of", 5)
        sampled = any(t > 0 for t in temperatures)
        if sampled and best_of > limits.max_return_sequences:
            raise over_limit(
                f"`best_of` {best_of} is over the server's limit of {limits.max_return_sequences} "
                "(--max-return-sequences)"
            )
        check_generation_cost(s, 1, limits)  # beams and new tokens first: their limits name their flags
        rows = max(s.num_beams, best_of if sampled else 1)
        cost = rows * s.max_length * len(temperatures)
        if cost > limits.max_request_cost:
            raise over_limit(
                f"request cost {cost} per 30 s window ({rows} beams or samples x {s.max_length} positions x "
                f"{len(temperatures)} temperatures) is over the server's limit of {limits.max_request_cost} "
                "(--max-request-cost)"
            )

    def prepare(self, params) -> Prepared[SpeechRequest]:
        """``SpeechModel.transcribe`` arguments from the request's parameters: faster-whisper's names
        (``beam_size``, ``temperature``, ``word_timestamps``, ``vad_filter``, ...), ``batched: true`` for the
        batched pipeline, and transformers' ``num_beams`` and ``return_timestamps`` (chunks in the answer)."""
        check_not_server_owned(params)
        params = dict(params)
        params.pop("truncation", None)
        chunks = params.pop("return_timestamps", False)
        if not isinstance(chunks, bool):
            raise ValueError("`return_timestamps` must be a boolean")
        if "seed" in params:
            raise ValueError("`seed` is not supported for speech requests")
        if "num_beams" in params:
            params["beam_size"] = params.pop("num_beams")
        batched = params.pop("batched", False)
        if not isinstance(batched, bool):
            raise ValueError("`batched` must be a boolean")
        if batched:
            params["batch_size"] = self.max_batch_size
        positions = self.model.spec.max_positions
        if "max_new_tokens" not in params and (self.max_new_tokens or positions) < positions - 4:
            # a server whose --max-new-tokens is below a window's default budget cuts the budget to it
            params["max_new_tokens"] = min(self.max_new_tokens, positions // 2)
        self.model.transcribe([], **params)  # the options are checked here, once, before any audio is decoded
        beams = params.get("beam_size", 5)
        s = self.model.settings(num_beams=beams, max_new_tokens=params.get("max_new_tokens"))
        return Prepared(SpeechRequest(params, s, chunks), json.dumps(params, sort_keys=True, default=str))

    def input_size(self, row):
        windows = max(1, -(-len(row) // CHUNK_SAMPLES))
        return windows * self.model.spec.encoder.embed.positions.shape[0]

    def run(self, rows, request: SpeechRequest, abandoned=None, on_tokens=None) -> tuple[list[Transcription], int]:
        # long audio is several 30 s windows: they share engine batches of up to max_batch_size windows
        results = self.model.transcribe(
            list(rows), max_batch_size=self.max_batch_size, abandoned=abandoned, **request.kwargs
        )
        return results, sum(len(c.tokens) for r in results for c in r.segments)

    def respond(self, answers: list[Transcription], parsed):
        request = parsed.prepared.settings
        objects = []
        for r in answers:
            out = {"text": r.text}
            if request.chunks:
                out["chunks"] = [
                    {"timestamp": [round(c.start, 2), round(c.end, 2)], "text": c.text.strip()} for c in r.segments
                ]
            objects.append(out)
        return objects[0] if parsed.single else objects  # one audio in: one object out, as Hugging Face's API

    def warm(self, batch_size):
        # one window alone, then a batch of windows (silence is skipped without decoding: use noise)
        noise = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)
        for rows in ([noise], [noise] * min(batch_size, 4)):
            self.run(rows, self.prepare({"max_new_tokens": 8, "temperature": 0.0}).settings)

    def routes(self):
        from turboseq.serving import live, realtime

        return [
            Route("/v1/audio/transcriptions", self.openai_transcriptions),
            Route("/v1/audio/translations", self.openai_translations),
            Route("/v1/realtime", realtime.realtime, websocket=True),  # OpenAI's Realtime API, transcription sessions
            Route("/v1/audio/live", live.plain, websocket=True),  # PCM16 frames in, JSON words out
        ]

    async def openai_transcriptions(self, service, request):
        """OpenAI's transcription API: multipart form with ``file``; response_format json | text | srt | vtt |
        verbose_json; optional ``language``, ``model``, ``prompt`` (the first window's initial prompt),
        ``temperature`` (0: the fallback temperatures 0, 0.2, ..., 1.0, as OpenAI; above: that temperature)
        and ``timestamp_granularities[]`` (segment and/or word; verbose_json only)."""
        return await self._openai_audio(service, request, "transcribe")

    async def openai_translations(self, service, request):
        """OpenAI's translation API: the speech in English, with the transcription API's fields but ``language``
        (a multilingual model; an English-only one refuses it)."""
        return await self._openai_audio(service, request, "translate")

    async def _openai_audio(self, service, request, task: str):
        from fastapi.responses import PlainTextResponse

        form = await _read_form(service, request, task)
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
        if not 0 <= temperature <= 1:
            raise invalid(f"`temperature` must be between 0 and 1, got {temperature}")
        granularities = [g for name in _GRANULARITIES for g in form.getlist(name)]
        bad = sorted(set(granularities) - {"word", "segment"})
        if bad:
            raise invalid(f"`timestamp_granularities[]` must be word or segment, got {', '.join(map(repr, bad))}")
        if granularities and fmt != "verbose_json":
            raise invalid("`timestamp_granularities[]` needs response_format=verbose_json")
        words = "word" in granularities
        params = {"temperature": temperature if temperature > 0 else list(DEFAULT_TEMPERATURES)}
        if words:
            params["word_timestamps"] = True
        if form.get("language"):
            params["language"] = form["language"]
        if form.get("prompt"):
            params["initial_prompt"] = form["prompt"]
        if task == "translate":
            params["task"] = "translate"
        blob = await upload.read()
        waves, release = await service.off_loop(self.decode, [blob])
        parsed = Parsed(waves, [0], 1, params, True, release=release)
        (result,) = await service.infer(request, parsed)
        if fmt == "json":
            return {"text": result.text}
        if fmt == "text":
            return PlainTextResponse(result.text + "\n")
        if fmt == "srt":
            return PlainTextResponse(to_srt(result), media_type="application/x-subrip")
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result), media_type="text/vtt")
        out = {
            "task": params.get("task", "transcribe"),
            "language": result.language,
            "duration": round(result.duration, 3),
            "text": result.text,
        }
        if "segment" in granularities or not granularities:
            out["segments"] = [{k: v for k, v in seg.to_dict().items() if k != "words"} for seg in result.segments]
        if words:
            out["words"] = [
                {"word": w.word.strip(), "start": round(w.start, 2), "end": round(w.end, 2)}
                for seg in result.segments
                for w in seg.words or []
            ]
        return out


async def _read_form(service, request, task: str):
    """The request's multipart form, its fields checked (one of each, plain text but ``file``)."""
    service.ensure_ready()
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(415, "send multipart/form-data with a `file` field", "unsupported_media_type")
    await service.read_body(request)  # counted as it arrives; the form parser then reads it from memory
    try:
        form = await request.form(max_files=2, max_fields=16)
    except Exception as err:  # starlette's parser raises its own types for malformed or oversized forms
        raise RequestError(400, f"malformed multipart form ({getattr(err, 'detail', err)})", "invalid_form") from None
    allowed = {"file", "model", "response_format", "temperature", "prompt"} | set(_GRANULARITIES) | _IGNORED
    if task == "transcribe":
        allowed.add("language")
    unknown = set(form) - allowed
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
    for name in form:
        values = form.getlist(name)
        if len(values) > 1 and name not in _GRANULARITIES and name not in _IGNORED:
            raise invalid(f"`{name}` appears {len(values)} times; send it once")
        if name != "file" and not all(isinstance(v, str) for v in values):
            raise invalid(f"`{name}` must be a plain form field, not a file")
    return form


_GRANULARITIES = ("timestamp_granularities[]", "timestamp_granularities")
# what OpenAI ignores for whisper-1, as newer SDKs and clients send it: streaming (one answer at the end),
# log-probabilities of the gpt-4o transcribe models, and its own VAD chunking
_IGNORED = {"stream", "include[]", "include", "chunking_strategy"}
