"""The speech task: Whisper transcription of raw audio or base64 JSON, and OpenAI's transcription route."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from turboseq.errors import AudioError, AudioTooLong
from turboseq.formats.audio import CHUNK_SAMPLES, load_audio
from turboseq.generation.settings import GenerationSettings
from turboseq.models.speech import SpeechModel
from turboseq.models.transcript import Transcription, to_srt, to_vtt
from turboseq.serving.requests import (
    Parsed,
    Prepared,
    RequestError,
    check_not_server_owned,
    check_size,
    invalid,
    task_body,
)
from turboseq.serving.tasks import Route, Task, check_generation_cost, register


@dataclass
class SpeechRequest:
    """A transcription request's ``transcribe`` arguments and its generation settings, resolved once."""

    kwargs: dict
    settings: GenerationSettings


@register(SpeechModel)
class SpeechTask(Task):
    """Speech recognition: raw audio bytes (``audio/*``) or JSON with base64 ``inputs``; answers
    ``{"text", "chunks": [{"timestamp": [start, end], "text"}]}`` per input. OpenAI's transcription route."""

    name = "automatic-speech-recognition"
    payload_bytes = 25 << 20  # OpenAI's limit
    max_audio_seconds = 3600.0  # the server sets --max-audio-seconds

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
        return Parsed(self.decode(blobs), list(range(len(blobs))), len(blobs), params, single)

    def decode(self, blobs: list[bytes]) -> list:
        """16 kHz waveforms of the audio files; decoding stops as soon as one passes --max-audio-seconds."""
        waves = []
        for i, blob in enumerate(blobs):
            try:
                waves.append(load_audio(blob, name=f"input {i}", max_seconds=self.max_audio_seconds))
            except AudioTooLong as err:
                raise RequestError(413, f"{err} (--max-audio-seconds)", "audio_too_long") from None
            except AudioError as err:
                raise RequestError(400, str(err), "invalid_audio") from None
        return waves

    def check_cost(self, parsed, limits) -> None:
        # per 30 s window: long audio is bounded by --max-audio-seconds, and its windows by --max-batch-size
        check_generation_cost(parsed.prepared.settings.settings, 1, limits)

    def prepare(self, params):
        """``SpeechModel.transcribe`` arguments from the request's parameters (transformers' names accepted)."""
        check_not_server_owned(params)
        if not isinstance(params.get("return_timestamps", False), bool):
            raise ValueError("`return_timestamps` must be a boolean")
        if "seed" in params:
            raise ValueError("`seed` is not supported for speech requests")
        kwargs = {k: v for k, v in params.items() if k not in ("return_timestamps", "num_beams", "truncation")}
        kwargs["timestamps"] = params.get("return_timestamps", False)
        kwargs["beam_size"] = params.get("num_beams", 1)
        s = self.model.settings(**{k: v for k, v in params.items() if k != "truncation"})
        # sampled requests run alone
        return Prepared(SpeechRequest(kwargs, s), None if s.do_sample else json.dumps(params, sort_keys=True))

    def input_size(self, row):
        windows = max(1, -(-len(row) // CHUNK_SAMPLES))
        return windows * self.model.spec.encoder.embed.positions.shape[0]

    def run(self, rows, request: SpeechRequest, abandoned=None, on_tokens=None) -> tuple[list[Transcription], int]:
        # long audio is several 30 s windows: they share engine batches of up to max_batch_size windows
        results = self.model.transcribe(
            list(rows), batch_size=self.max_batch_size, abandoned=abandoned, **request.kwargs
        )
        return results, sum(len(c.tokens) for r in results for c in r.segments)

    def respond(self, answers: list[Transcription], parsed):
        objects = [
            {
                "text": r.text,
                "chunks": [{"timestamp": [round(c.start, 2), round(c.end, 2)], "text": c.text} for c in r.segments],
            }
            for r in answers
        ]
        return objects[0] if parsed.single else objects  # one audio in: one object out, as Hugging Face's API

    def warm(self, batch_size):
        # one window alone, then a batch of windows (silence is skipped without decoding: use noise)
        noise = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)
        for rows in ([noise], [noise] * min(batch_size, 4)):
            self.run(rows, self.prepare({"max_new_tokens": 8}).settings)

    def routes(self):
        return [Route("/v1/audio/transcriptions", self.openai_transcriptions)]

    async def openai_transcriptions(self, service, request):
        """OpenAI's transcription API: multipart form with ``file``; response_format json | text | srt | vtt |
        verbose_json; optional ``language``, ``model``, ``temperature`` (0 only: decoding is deterministic)."""
        from fastapi.responses import PlainTextResponse

        service.ensure_ready()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(415, "send multipart/form-data with a `file` field", "unsupported_media_type")
        await service.read_body(request)  # counted as it arrives; the form parser then reads it from memory
        try:
            form = await request.form(max_files=2, max_fields=16)
        except Exception as err:  # starlette's parser raises its own types for malformed or oversized forms
            raise RequestError(
                400, f"malformed multipart form ({getattr(err, 'detail', err)})", "invalid_form"
            ) from None
        unknown = set(form) - {"file", "model", "response_format", "language", "temperature", "prompt"}
        if unknown:
            raise invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
        for name in form:
            values = form.getlist(name)
            if len(values) > 1:
                raise invalid(f"`{name}` appears {len(values)} times; send it once")
            if name != "file" and not isinstance(values[0], str):
                raise invalid(f"`{name}` must be a plain form field, not a file")
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
        parsed = Parsed(await service.off_loop(self.decode, [blob]), [0], 1, params, True)
        (result,) = await service.infer(request, parsed)
        if fmt == "json":
            return {"text": result.text}
        if fmt == "text":
            return PlainTextResponse(result.text + "\n")
        if fmt == "srt":
            return PlainTextResponse(to_srt(result), media_type="application/x-subrip")
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result), media_type="text/vtt")
        return {
            "task": "transcribe",
            "language": params.get("language", "en"),
            "text": result.text,
            "duration": round(result.duration, 3),
            "segments": [
                {"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                for i, s in enumerate(result.segments)
            ],
        }
