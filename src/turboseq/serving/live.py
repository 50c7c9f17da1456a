"""Live transcription over WebSockets (Whisper models): the streams, the hub that decodes them, and the plain mode
at ``/v1/audio/live`` (binary PCM16 frames in, JSON messages out); OpenAI's Realtime protocol at ``/v1/realtime``
is ``serving.realtime``.

Each connection holds a ``speech.live.LiveTranscriber``. One hub per server decodes every stream that has new
audio in one batch (``speech.live.step``) on the engine thread, between the batches of ordinary requests, so
that concurrent streams share the encoder's and the decoder's batches. A connection's frames are not read
while its undecoded audio is over ``BACKLOG_SECONDS`` (the socket's flow control then holds the client back), so
memory stays bounded whatever a client sends. Limits (``--max-live-streams``, ``--live-idle-timeout-s``,
``--max-live-seconds``, ``--max-live-frame-bytes``) are answered with error events.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

from turboseq.formats.audio import SAMPLE_RATE, Resampler, decode_pcm
from turboseq.serving.requests import RequestError, internal_error
from turboseq.speech.live import LiveUpdate, step

BACKLOG_SECONDS = 30.0  # undecoded audio a stream may hold before its frames wait
MAX_LIVE_BEAMS = 10  # a stream's ``beam_size`` at most (streams of other beam sizes decode in groups of their own)


class LiveError(Exception):
    """A client's mistake, answered with an error event (``code``); a ``fatal`` one then closes the socket."""

    def __init__(self, message: str, code: str, fatal: bool = False, close_code: int = 1008):
        super().__init__(message)
        self.message, self.code, self.fatal, self.close_code = message, code, fatal, close_code


class _Disconnected(Exception):
    pass


class Hub:
    """The server's live streams; decodes the due ones together on the engine thread."""

    def __init__(self, service):
        from prometheus_client import Counter, Gauge, Histogram

        registry = service.metrics.registry
        self.streams = Gauge("turboseq_live_streams", "open live transcription streams", registry=registry)
        self.batch = Histogram(
            "turboseq_live_decode_batch", "live streams per decode", buckets=(1, 2, 4, 8, 16, 32), registry=registry
        )
        self.decode_seconds = Histogram("turboseq_live_decode_seconds", "one live decode batch", registry=registry)
        self.audio_seconds = Counter("turboseq_live_audio_seconds", "live audio received", registry=registry)
        self.service = service
        self.sessions: set[Session] = set()
        self.wake = asyncio.Event()
        self.runner: asyncio.Task | None = None
        self.busy: set[Session] = set()  # in the decode running now

    def open(self, session: Session) -> None:
        limit = self.service.config.max_live_streams
        if len(self.sessions) >= limit:
            raise LiveError(
                f"{limit} live streams are open, the server's limit (--max-live-streams); try again later",
                "too_many_streams",
                fatal=True,
                close_code=1013,
            )
        self.sessions.add(session)
        self.streams.set(len(self.sessions))
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._run())

    def close(self, session: Session) -> None:
        self.sessions.discard(session)
        self.streams.set(len(self.sessions))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        model = self.service.task.model
        while True:
            await self.wake.wait()
            self.wake.clear()
            for final in (True, False):  # turns that end first: their clients wait for the transcript
                group = [s for s in self.sessions if (s.flushing if final else s.stream.due and not s.flushing)]
                if not group:
                    continue
                # several streams share the engine: each decode's encoder reads its buffer, not a whole 30 s
                # window (a third of the work or less), so that they keep pace; a stream alone gets full windows
                shared = len(self.sessions) > 1
                for s in group:
                    if s.stream.live.full_window == shared:
                        s.stream.live = replace(s.stream.live, full_window=not shared)
                start = time.perf_counter()
                self.busy = set(group)
                try:
                    updates = await loop.run_in_executor(
                        self.service.batcher.executor, step, model, [s.stream for s in group], final
                    )
                except Exception as err:  # noqa: BLE001 (every stream of the batch is told)
                    for s in group:
                        s.inbox.put_nowait(err)
                    continue
                finally:
                    self.busy = set()
                    for s in group:
                        if s.clearing is not None:
                            s.stream.clear(s.clearing)
                            s.clearing = None
                self.decode_seconds.observe(time.perf_counter() - start)
                self.batch.observe(len(group))
                for s, update in zip(group, updates):
                    s.flushing = s.flushing and not final
                    s.inbox.put_nowait((update, final))
            if any(s.flushing or s.stream.due for s in self.sessions):
                self.wake.set()


def hub_of(service) -> Hub:
    """The service's hub, made by its first stream (held by the service: it goes with the model's app)."""
    if service.live_hub is None:
        service.live_hub = Hub(service)
    return service.live_hub


class Session:
    """One WebSocket stream. A protocol (``PlainSession``, ``RealtimeSession``) gives ``start`` (the stream from
    the connection's parameters), ``handle`` (one client message) and ``updated`` (one decode's words)."""

    def __init__(self, service, websocket):
        self.service, self.ws, self.config = service, websocket, service.config
        self.hub = hub_of(service)
        self.model = service.task.model
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.room = asyncio.Event()
        self.sending = asyncio.Lock()
        self.stream = None
        self.resampler = Resampler(SAMPLE_RATE)
        self.encoding = "pcm16"  # or G.711's pcmu / pcma (formats.audio.decode_pcm)
        self.flushing = False  # a flush (end of a turn or of the stream) is asked of the hub
        self.ending = False  # the stream ends after the flush
        self.clearing: int | None = None  # a clear (up to this sample) waits for the decode in progress
        self.active = time.monotonic()  # the last client message or words sent (the idle timeout's start)

    async def serve(self) -> None:
        await self.ws.accept()
        tasks: list[asyncio.Task] = []
        try:
            try:
                self.service.ensure_ready()
            except RequestError as err:
                raise LiveError(err.message, err.kind, fatal=True, close_code=1013) from None
            try:
                self.stream = self.start()
            except ValueError as err:
                raise LiveError(str(err), "invalid_request", fatal=True) from None
            self.hub.open(self)
            await self.opened()
            tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._send())]
            await asyncio.gather(*tasks)
            await self.ws.close(1000)
        except _Disconnected:
            pass
        except LiveError as err:
            await self._close_with(err)
        except Exception as err:  # noqa: BLE001 (a bug: logged with an id, the client gets the id)
            body = internal_error(err)
            await self._close_with(LiveError(body["error"], "internal", fatal=True, close_code=1011))
        finally:
            for task in tasks:
                task.cancel()
            self.hub.close(self)  # the stream and its audio go with the session

    async def _close_with(self, err: LiveError) -> None:
        try:
            await self.send_error(err)
            await self.ws.close(err.close_code)
        except Exception:  # noqa: BLE001 (the client is gone already)
            pass

    async def send(self, body: dict) -> None:
        from starlette.websockets import WebSocketDisconnect

        async with self.sending:
            try:
                await self.ws.send_text(json.dumps(body))
            except (WebSocketDisconnect, RuntimeError, OSError):
                raise _Disconnected from None

    async def _receive(self) -> None:
        idle, limit = self.config.live_idle_timeout_s, self.config.max_live_frame_bytes
        while not self.ending:
            try:
                message = await asyncio.wait_for(self.ws.receive(), idle)
            except asyncio.TimeoutError:
                if time.monotonic() - self.active < idle:  # the server was still sending words
                    continue
                raise LiveError(
                    f"no message for {idle:g} s: the stream is closed (--live-idle-timeout-s)", "idle_timeout", True
                ) from None
            self.active = time.monotonic()
            if message["type"] == "websocket.disconnect":
                raise _Disconnected
            data = message.get("bytes")
            data = message.get("text") if data is None else data
            try:
                if data is None:
                    raise LiveError("empty WebSocket message", "invalid_message")
                if len(data) > limit:
                    raise LiveError(
                        f"message of {len(data)} bytes is over the limit of {limit} (--max-live-frame-bytes): "
                        "send audio in smaller pieces",
                        "message_too_large",
                    )
                await self.handle(data)
            except LiveError as err:
                if err.fatal:
                    raise
                await self.send_error(err)

    async def _send(self) -> None:
        while True:
            item = await self.inbox.get()
            if isinstance(item, Exception):
                raise item
            update, final = item
            self.room.set()
            if update.confirmed or final:
                self.active = time.monotonic()
            await self.updated(update, final)
            if final and self.ending:
                return

    async def add_audio(self, pcm: bytes) -> None:
        """Mono audio in the session's encoding (PCM16 little-endian, or G.711) at its rate: resampled, buffered,
        the hub woken; waits while the stream's undecoded audio is over ``BACKLOG_SECONDS``."""
        try:
            decoded = decode_pcm(pcm, self.encoding)
        except ValueError as err:
            raise LiveError(str(err), "invalid_audio") from None
        samples = self.resampler.push(decoded)
        seconds = samples.size / SAMPLE_RATE
        if self.stream.received / SAMPLE_RATE + seconds > self.config.max_live_seconds:
            await self.send_error(
                LiveError(
                    f"the stream is over the limit of {self.config.max_live_seconds:g} s of audio "
                    "(--max-live-seconds): it ends here",
                    "stream_too_long",
                )
            )
            self.end()
            return
        self.stream.append(samples)
        self.hub.audio_seconds.inc(seconds)
        if self.stream.due:
            self.hub.wake.set()
        while len(self.stream.audio) - self.stream.decoded > BACKLOG_SECONDS * SAMPLE_RATE:
            self.room.clear()
            self.hub.wake.set()
            await self.room.wait()

    def clear(self) -> None:
        """Drop the audio buffered so far; a stream in a decode right now is cleared when it returns."""
        self.clearing = self.stream.received
        if self not in self.hub.busy:
            self.stream.clear(self.clearing)
            self.clearing = None

    def flush(self) -> None:
        self.flushing = True
        self.hub.wake.set()

    def end(self) -> None:
        self.ending = True
        self.flush()

    # -- a protocol's part
    def start(self):
        raise NotImplementedError

    async def opened(self) -> None:
        pass

    async def handle(self, data: bytes | str) -> None:
        raise NotImplementedError

    async def updated(self, update: LiveUpdate, final: bool) -> None:
        raise NotImplementedError

    async def send_error(self, err: LiveError) -> None:
        raise NotImplementedError


def _words(update: LiveUpdate) -> list[dict]:
    return [
        {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "probability": round(w.probability, 4)}
        for w in update.confirmed
    ]


class PlainSession(Session):
    """``/v1/audio/live?language=&prompt=&sample_rate=&beam_size=``: binary frames of PCM16 mono audio (16 kHz
    unless ``sample_rate`` says otherwise; beam 5 unless ``beam_size``, 1-10, says otherwise); a text frame
    ``{"type": "end"}`` ends the stream. Messages out: ``{"type": "ready", "model", "sample_rate", "beam_size"}``,
    ``{"type": "final", "text", "words"}`` (newly confirmed words), ``{"type": "partial", "text"}`` (the
    unconfirmed tail), ``{"type": "done", "text", "duration"}`` and ``{"type": "error", "error", "error_type"}``."""

    def start(self):
        params = self.ws.query_params
        unknown = sorted(set(params) - {"language", "prompt", "sample_rate", "beam_size", "model"})
        if unknown:
            known = "language, prompt, sample_rate, beam_size"
            raise ValueError(f"unknown parameter(s): {', '.join(unknown)}; known: {known}")
        rate = params.get("sample_rate", str(SAMPLE_RATE))
        if not rate.isdecimal() or not 8000 <= int(rate) <= 192000:
            raise ValueError(f"`sample_rate` must be an integer from 8000 to 192000 (Hz), got {rate!r}")
        beams = params.get("beam_size", "5")
        if not beams.isdecimal() or not 1 <= int(beams) <= MAX_LIVE_BEAMS:
            raise ValueError(f"`beam_size` must be an integer from 1 to {MAX_LIVE_BEAMS}, got {beams!r}")
        self.rate = int(rate)
        self.resampler = Resampler(self.rate)
        self.text, self.partial = "", ""
        language, prompt = params.get("language") or None, params.get("prompt")
        return self.model.live(language=language, initial_prompt=prompt, beam_size=int(beams))

    async def opened(self) -> None:
        ready = {"type": "ready", "model": self.service.name, "sample_rate": self.rate}
        await self.send({**ready, "beam_size": self.stream.opts.beam_size})

    async def handle(self, data) -> None:
        if isinstance(data, bytes):
            return await self.add_audio(data)
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if message != {"type": "end"}:
            raise LiveError('text messages are {"type": "end"}; audio goes in binary frames', "invalid_message")
        self.end()

    async def updated(self, update: LiveUpdate, final: bool) -> None:
        if update.confirmed:
            self.text += update.text
            await self.send({"type": "final", "text": update.text, "words": _words(update)})
        if update.partial_text != self.partial:
            self.partial = update.partial_text
            await self.send({"type": "partial", "text": self.partial})
        if final and self.ending:
            seconds = round(self.stream.received / SAMPLE_RATE, 3)
            await self.send({"type": "done", "text": self.text.strip(), "duration": seconds})

    async def send_error(self, err: LiveError) -> None:
        await self.send({"type": "error", "error": err.message, "error_type": err.code})


async def plain(service, websocket) -> None:
    await PlainSession(service, websocket).serve()
