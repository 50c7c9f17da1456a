"""OpenAI's Realtime API for transcription sessions at ``/v1/realtime`` (a ``serving.live.Session`` protocol), so
that its clients (the ``openai`` SDK's ``client.realtime.connect``, browser and telephony clients) stream audio
to turboseq as they stream it to OpenAI."""

from __future__ import annotations

import base64
import binascii
import json
import uuid

from turboseq.formats.audio import SAMPLE_RATE, Resampler
from turboseq.serving.live import LiveError, Session
from turboseq.speech.live import LiveUpdate


def _event_id() -> str:
    return "event_" + uuid.uuid4().hex[:20]


# the audio formats a session takes, by the GA protocol's type, and the beta protocol's names for them
ENCODINGS = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
BETA_FORMATS = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}


class RealtimeSession(Session):
    """OpenAI's Realtime API, transcription sessions (``session.type = "transcription"``): ``session.update``
    (audio format, transcription language and prompt, turn detection), ``input_audio_buffer.append`` / ``commit``
    / ``clear``; out: ``session.created`` / ``updated``, ``input_audio_buffer.speech_started`` / ``speech_stopped``
    / ``committed`` / ``cleared``, ``conversation.item.input_audio_transcription.delta`` (words as they are
    confirmed) and ``.completed`` (a turn's transcript), and ``error``. Audio: base64 PCM16, 24 kHz by default,
    or G.711 mu-law / A-law at 8 kHz."""

    def start(self):
        self.id, self.rate, self.format_type = "sess_" + uuid.uuid4().hex[:20], 24000, "audio/pcm"
        self.resampler = Resampler(self.rate)
        self.transcription = {"model": self.service.name, "language": None, "prompt": ""}
        self.turn_detection: dict | None = {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
        }
        self.previous_item: str | None = None
        self.pending = False  # audio appended since the last commit or clear
        self.turn_start, self.turn_until = 0.0, None  # the current turn's audio (stream seconds)
        self._new_item()
        stream = self._stream()
        stream.turn_silence_seconds = self.turn_detection["silence_duration_ms"] / 1000
        return stream

    def _stream(self, settings: dict | None = None):
        settings = settings or self.transcription
        prompt = settings.get("prompt") or None
        return self.model.live(language=settings.get("language"), initial_prompt=prompt)

    def _new_item(self) -> None:
        self.item, self.item_text, self.speaking = "item_" + uuid.uuid4().hex[:20], "", False

    def session_object(self) -> dict:
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.id,
            "audio": {
                "input": {
                    "format": {"type": self.format_type, "rate": self.rate},
                    "transcription": dict(self.transcription),
                    "turn_detection": self.turn_detection,
                    "noise_reduction": None,
                }
            },
            "include": None,
        }

    async def opened(self) -> None:
        await self.send({"type": "session.created", "event_id": _event_id(), "session": self.session_object()})

    async def handle(self, data) -> None:
        if isinstance(data, bytes):
            raise LiveError("Realtime events are JSON text messages; audio goes base64 in input_audio_buffer.append",
                            "invalid_message")  # fmt: skip
        try:
            event = json.loads(data)
        except ValueError:
            raise LiveError("the message is not JSON", "invalid_json") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise LiveError("an event is a JSON object with a string `type`", "invalid_event")
        self.client_event = event.get("event_id")
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            audio = event.get("audio")
            if not isinstance(audio, str):
                raise LiveError("`audio` must be base64-encoded PCM16 audio", "invalid_audio")
            try:
                pcm = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise LiveError("`audio` must be base64-encoded PCM16 audio", "invalid_audio") from None
            self.pending = True
            await self.add_audio(pcm)
        elif kind == "input_audio_buffer.commit":
            self.commit()
            await self.send_committed()
        elif kind == "input_audio_buffer.clear":
            self.clear()
            self.pending, self.turn_start = False, self.stream.received / SAMPLE_RATE
            await self.send({"type": "input_audio_buffer.cleared", "event_id": _event_id()})
        elif kind in ("session.update", "transcription_session.update"):
            self.configure(event.get("session"))
            await self.send({"type": "session.updated", "event_id": _event_id(), "session": self.session_object()})
        else:
            raise LiveError(
                f"unsupported event {kind!r}: this server transcribes (session.update, input_audio_buffer.append, "
                "input_audio_buffer.commit, input_audio_buffer.clear)",
                "unsupported_event",
            )

    def configure(self, session) -> None:
        if not isinstance(session, dict):
            raise LiveError("`session` must be an object", "invalid_session")
        if session.get("type", "transcription") != "transcription":
            raise LiveError(f"session type {session.get('type')!r}: this server has transcription sessions only",
                            "unsupported_session_type")  # fmt: skip
        audio = session.get("audio") or {}
        inputs = audio.get("input") if isinstance(audio, dict) else None
        if not isinstance(inputs, dict):
            inputs = {  # the beta protocol's names
                "format": session.get("input_audio_format"),
                "transcription": session.get("input_audio_transcription"),
                **({"turn_detection": session["turn_detection"]} if "turn_detection" in session else {}),
            }
        fmt = inputs.get("format")
        if fmt is not None:
            self._set_format(fmt)
        if "turn_detection" in inputs:
            self.turn_detection = self._turn_detection(inputs["turn_detection"])
        self._set_turns()
        transcription = inputs.get("transcription")
        if transcription is not None:
            if not isinstance(transcription, dict):
                raise LiveError("`transcription` must be an object", "invalid_session")
            wanted = {**self.transcription, **{k: transcription[k] for k in ("model", "language", "prompt")
                                                if k in transcription}}  # fmt: skip
            if wanted == self.transcription:
                return
            if self.stream.received:
                raise LiveError("`transcription` (language, prompt) is set before the first audio: one stream per "
                                "session", "session_update_after_audio")  # fmt: skip
            try:
                stream = self._stream(wanted)
            except ValueError as err:
                raise LiveError(str(err), "invalid_transcription") from None
            self.transcription, self.stream = wanted, stream
            self._set_turns()

    def _set_format(self, fmt) -> None:
        """``audio/pcm`` (PCM16 at ``rate``, 24 kHz by default) or G.711's ``audio/pcmu`` / ``audio/pcma`` (8 kHz);
        the beta protocol's names ``pcm16``, ``g711_ulaw`` and ``g711_alaw``."""
        if isinstance(fmt, str):
            fmt = BETA_FORMATS.get(fmt, fmt)
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ENCODINGS:
            raise LiveError(f"audio format {fmt!r}: audio/pcm (PCM16), audio/pcmu or audio/pcma (G.711) are taken",
                            "unsupported_format")  # fmt: skip
        rate = fmt.get("rate", 24000 if kind == "audio/pcm" else 8000)
        if kind != "audio/pcm" and rate != 8000:
            raise LiveError(f"audio rate {rate!r}: G.711 audio is 8000 Hz", "unsupported_format")
        if not isinstance(rate, int) or not 8000 <= rate <= 192000:
            raise LiveError(f"audio rate {rate!r}: an integer from 8000 to 192000 Hz", "unsupported_format")
        self.encoding, self.format_type = ENCODINGS[kind], kind
        if rate != self.rate:
            self.rate, self.resampler = rate, Resampler(rate)

    def _set_turns(self) -> None:
        vad = self.turn_detection
        self.stream.turn_silence_seconds = None if vad is None else vad["silence_duration_ms"] / 1000

    def _turn_detection(self, value) -> dict | None:
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
            raise LiveError("turn_detection: server_vad or null (semantic_vad is not supported)", "invalid_session")
        merged = {**(self.turn_detection or {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}),
                  **value, "type": "server_vad"}  # fmt: skip
        threshold, silence = merged.get("threshold"), merged.get("silence_duration_ms")
        if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise LiveError(f"turn_detection.threshold must be in (0, 1), got {threshold!r}", "invalid_session")
        if not isinstance(silence, int) or not 0 < silence <= 10000:
            raise LiveError(f"turn_detection.silence_duration_ms must be 1-10000, got {silence!r}", "invalid_session")
        return merged

    def commit(self, until: float | None = None) -> None:
        """End the turn at ``until`` (stream seconds; None: all audio received)."""
        if until is None and not self.pending:
            raise LiveError("the input audio buffer is empty: nothing to commit", "input_audio_buffer_commit_empty")
        self.pending = False
        self.turn_until = self.stream.received / SAMPLE_RATE if until is None else until
        self.stream.flush_until = until
        self.flush()

    async def send_committed(self) -> None:
        await self.send({"type": "input_audio_buffer.committed", "event_id": _event_id(),
                         "previous_item_id": self.previous_item, "item_id": self.item})  # fmt: skip

    async def updated(self, update: LiveUpdate, final: bool) -> None:
        if update.confirmed:
            self.item_text += update.text
            await self.send({"type": "conversation.item.input_audio_transcription.delta", "event_id": _event_id(),
                             "item_id": self.item, "content_index": 0, "delta": update.text})  # fmt: skip
        if final:
            until = self.turn_until if self.turn_until is not None else self.stream.received / SAMPLE_RATE
            seconds, self.turn_start, self.turn_until = round(max(0.0, until - self.turn_start), 3), until, None
            await self.send({"type": "conversation.item.input_audio_transcription.completed",
                             "event_id": _event_id(), "item_id": self.item, "content_index": 0,
                             "transcript": self.item_text.strip(),
                             "usage": {"type": "duration", "seconds": seconds}})  # fmt: skip
            self.previous_item = self.item
            self._new_item()
            return
        vad = self.turn_detection
        self.stream.turn_silence_seconds = None if vad is None else vad["silence_duration_ms"] / 1000
        if vad is None or self.flushing:
            return
        start = update.speech_start
        if not self.speaking and start is not None:
            self.speaking = True
            await self.send({"type": "input_audio_buffer.speech_started", "event_id": _event_id(),
                             "audio_start_ms": int(start * 1000), "item_id": self.item})  # fmt: skip
        if self.speaking and update.turn_end is not None:
            await self.send({"type": "input_audio_buffer.speech_stopped", "event_id": _event_id(),
                             "audio_end_ms": int(update.turn_end * 1000), "item_id": self.item})  # fmt: skip
            self.commit(update.turn_end)
            await self.send_committed()

    async def send_error(self, err: LiveError) -> None:
        await self.send({"type": "error", "event_id": _event_id(),
                         "error": {"type": "invalid_request_error" if err.code != "internal" else "server_error",
                                   "code": err.code, "message": err.message, "param": None,
                                   "event_id": getattr(self, "client_event", None)}})  # fmt: skip


async def realtime(service, websocket) -> None:
    await RealtimeSession(service, websocket).serve()
