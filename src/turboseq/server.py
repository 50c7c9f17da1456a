"""HTTP inference server: FastAPI + uvicorn, dynamic batching, metrics, backpressure, graceful drain.

Requests wait in one bounded queue. A single worker takes the oldest request and, for at most
``batch_wait_ms``, merges every queued request with the same generation parameters into one engine batch
(``max_batch_size`` inputs, ``max_batch_tokens`` padded input tokens), runs it in a thread and routes each
answer back. Batch invariance of the engine makes a request's answer equal to its answer when sent alone
(sampled requests are never merged, so that a seed means the same as alone).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves handler annotations here


# turboseq-only arguments a client may not set (the server owns batching)
_SERVER_OWNED = {"max_batch_size", "max_batch_tokens", "progress", "batch_size"}


class _Cancelled(Exception):
    """Raised inside the engine thread to stop a stream whose client left."""


class RequestError(Exception):
    """An error answered with ``status`` and JSON ``{"error": message, "error_type": kind}``."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


@dataclass
class ServerConfig:
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    batch_wait_ms: float = 5.0
    max_queue: int = 256
    request_timeout_s: float = 60.0
    max_input_tokens: int | None = None  # default: the model's position limit
    max_payload_bytes: int | None = None  # default: 1 MiB for text models, 25 MiB for speech (OpenAI's limit)
    batching: bool = True  # False: one request per engine call (for comparison)


@dataclass
class _Job:
    rows: list  # token id lists, one per non-empty input
    params: dict
    key: str  # requests with equal keys may share an engine batch
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.queue_size = Gauge("turboseq_queue_size", "requests waiting for the engine", registry=r)
        self.batch_size = Histogram("turboseq_batch_size", "inputs per engine batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.request_duration = Histogram("turboseq_request_duration_seconds", "request latency", registry=r)
        self.queue_wait = Histogram("turboseq_queue_wait_seconds", "time from arrival to engine start", registry=r)
        self.time_to_first_token = Histogram("turboseq_time_to_first_token_seconds", "streaming: first token",
                                             registry=r)
        self.input_tokens = Counter("turboseq_input_tokens", "input tokens processed", registry=r)
        self.generated_tokens = Counter("turboseq_generated_tokens", "tokens generated", registry=r)
        self.rejected = Counter("turboseq_rejected_requests", "rejected requests", ["reason"], registry=r)


class Engine:
    """The model plus what the server needs to know about it (task, limits, how to run a batch)."""

    def __init__(self, model, name: str):
        import turboseq

        from turboseq.speech import SpeechModel

        self.model, self.name = model, name
        self.is_encoder = isinstance(model, turboseq.EncoderModel)
        self.is_speech = isinstance(model, SpeechModel)
        model_type = model.config.get("model_type")
        if self.is_speech:
            self.task = "automatic-speech-recognition"
        elif self.is_encoder:
            self.task = "feature-extraction"
        else:
            self.task = "translation" if model_type == "marian" else "text2text-generation"
        self.max_positions = model.spec.max_positions

    def input_size(self, row) -> int:
        """A row's share of the batch budget: its tokens, or for audio the encoder positions of its windows."""
        if self.is_speech:
            from turboseq.audio import CHUNK_SAMPLES

            windows = max(1, -(-len(row) // CHUNK_SAMPLES))
            return windows * self.model.spec.encoder.embed.positions.shape[0]
        return len(row)

    @staticmethod
    def speech_kwargs(params: dict) -> dict:
        """Request parameters -> ``SpeechModel.transcribe`` arguments (transformers' names accepted)."""
        kwargs = {k: v for k, v in params.items() if k not in ("return_timestamps", "num_beams", "truncation")}
        kwargs["timestamps"] = bool(params.get("return_timestamps", False))
        kwargs["beam_size"] = params.get("num_beams", 1)
        return kwargs

    def validate(self, params: dict) -> None:
        if self.is_encoder:
            unknown = set(params) - {"normalize", "truncation"}
            if unknown:
                raise ValueError(f"unknown parameter(s) for an embedding model: {', '.join(sorted(unknown))}")
            if not isinstance(params.get("normalize", False), bool):
                raise ValueError("`normalize` must be a boolean")
            return
        owned = _SERVER_OWNED & set(params)
        if owned:
            raise ValueError(f"parameter(s) set by the server, not per request: {', '.join(sorted(owned))}")
        gen = {k: v for k, v in params.items() if k not in ("truncation", "seed")}
        if self.is_speech and not isinstance(gen.get("return_timestamps", False), bool):
            raise ValueError("`return_timestamps` must be a boolean")
        self.model.settings(**gen)  # raises ValueError naming the argument

    def run(self, rows: list, params: dict, abandoned=None) -> tuple[list, int]:
        """One engine call for ``rows`` (token id lists) with ``params``: (one result per row, tokens
        generated). ``abandoned()`` names rows whose requests were given up: they leave the batch at the
        next decoding step."""
        if self.is_encoder:
            normalize = params.get("normalize", self.model.spec.pooling.normalize)
            return self.model.embed_ids(rows, normalize=normalize).tolist(), 0
        if self.is_speech:  # rows are 16 kHz waveforms
            kwargs = self.speech_kwargs(params)
            kwargs.pop("seed", None)
            results = self.model.transcribe(list(rows), batch_size=len(rows), **kwargs)
            answers = [
                {"text": r.text, "chunks": [{"timestamp": [round(c.start, 2), round(c.end, 2)], "text": c.text}
                                            for c in r.segments]}
                for r in results
            ]
            return answers, sum(len(c.tokens) for r in results for c in r.segments)
        gen = {k: v for k, v in params.items() if k != "truncation"}
        outputs = self.model.generate_rows(rows, max_batch_size=None, abandoned=abandoned, **gen)
        tok = self.model.tokenizer
        nrs = self.model.settings(**{k: v for k, v in gen.items() if k != "seed"}).num_return_sequences
        texts = [tok.batch_decode([s.tolist() for s in seqs], skip_special_tokens=True) for seqs in outputs]
        generated = sum(len(s) - 1 for seqs in outputs for s in seqs)  # minus the decoder start token
        return [t[0] if nrs == 1 else t for t in texts], generated


class Batcher:
    def __init__(self, engine: Engine, config: ServerConfig, metrics: Metrics):
        from concurrent.futures import ThreadPoolExecutor

        self.engine, self.config, self.metrics = engine, config, metrics
        # one engine thread: batches run one at a time anyway, and one thread means one malloc arena, so memory
        # freed by a batch is reused by the next instead of being held per thread
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turboseq-engine")
        self.queue: list[_Job] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None

    def submit(self, job: _Job) -> None:
        self.queue = [j for j in self.queue if not j.cancelled]
        if len(self.queue) >= self.config.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise RequestError(429, f"queue full ({self.config.max_queue} requests waiting)", "overloaded",
                               {"Retry-After": "1"})
        self.queue.append(job)
        self.metrics.queue_size.set(len(self.queue))
        self.wakeup.set()

    def _take(self) -> list[_Job]:
        """The oldest live job plus every queued job it may share a batch with, within the limits."""
        self.queue = [j for j in self.queue if not j.cancelled]
        self.metrics.queue_size.set(len(self.queue))
        if not self.queue:
            return []
        first = self.queue[0]
        if not self.config.batching or first.params.get("do_sample"):
            taken = [first]
        else:
            taken, rows, longest = [], 0, 0
            for job in self.queue:
                if job.key != first.key:
                    continue
                n = len(job.rows)
                width = max([longest] + [self.engine.input_size(r) for r in job.rows])
                if taken and (rows + n > self.config.max_batch_size or (rows + n) * width > self.config.max_batch_tokens):
                    break
                taken.append(job)
                rows, longest = rows + n, width
        ids = {id(j) for j in taken}
        self.queue = [j for j in self.queue if id(j) not in ids]
        self.metrics.queue_size.set(len(self.queue))
        return taken

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self.config.batching:
                await asyncio.sleep(self.config.batch_wait_ms / 1000)  # let concurrent requests arrive
            jobs = self._take()
            if not jobs:
                continue
            rows = [r for j in jobs for r in j.rows]
            now = time.perf_counter()
            for job in jobs:
                self.metrics.queue_wait.observe(now - job.enqueued)
            self.metrics.batch_size.observe(len(rows))
            self.metrics.input_tokens.inc(sum(self.engine.input_size(r) for r in rows))
            owners = [job for job in jobs for _ in job.rows]

            def abandoned() -> set[int]:
                # rows of requests whose client left or whose time ran out, read from the engine thread
                return {i for i, job in enumerate(owners) if job.cancelled}

            try:
                results, generated = await loop.run_in_executor(
                    self.executor, self.engine.run, rows, jobs[0].params, abandoned
                )
            except Exception as err:  # an engine failure fails the batch's requests, not the server
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.metrics.generated_tokens.inc(generated)
            start = 0
            for job in jobs:
                part = results[start : start + len(job.rows)]
                start += len(job.rows)
                if not job.future.done():
                    if job.cancelled:  # cut short: not an answer
                        job.future.set_exception(_Cancelled())
                    else:
                        job.future.set_result(part)


def _decode_json(raw: bytes, limit: int):
    if len(raw) > limit:
        raise RequestError(413, f"request body of {len(raw)} bytes is over the limit of {limit}", "payload_too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not valid UTF-8 ({err.reason} at byte {err.start})", "invalid_utf8")
    try:
        return json.loads(text)
    except ValueError as err:
        raise RequestError(400, f"malformed JSON: {err}", "invalid_json") from None


def _text_list(value, name: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise RequestError(422, f"`{name}` must be a string or a list of strings", "validation_error")
    return value


def _fields(body, allowed: set[str], required: str) -> dict:
    if not isinstance(body, dict):
        raise RequestError(422, f"body must be a JSON object with `{required}`", "validation_error")
    unknown = set(body) - allowed
    if unknown:
        raise RequestError(422, f"unknown field(s): {', '.join(sorted(unknown))}", "validation_error")
    if required not in body:
        raise RequestError(422, f"`{required}` is required", "validation_error")
    return body


def _parse_body(raw: bytes, limit: int) -> dict:
    """Hugging Face task format: {"inputs": str | [str], "parameters": {...}}."""
    body = _fields(_decode_json(raw, limit), {"inputs", "parameters"}, "inputs")
    params = body.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise RequestError(422, "`parameters` must be a JSON object", "validation_error")
    return {"inputs": _text_list(body["inputs"], "inputs"), "parameters": params}


def create_app(model, name: str | None = None, config: ServerConfig | None = None, warmup: bool = True):
    """The FastAPI app serving ``model`` (a loaded turboseq model)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import turboseq

    config = config or ServerConfig()
    engine = Engine(model, name or Path(str(model.path)).name)
    metrics = Metrics()
    limit = min(config.max_input_tokens or engine.max_positions, engine.max_positions)
    if config.max_payload_bytes is None:
        config.max_payload_bytes = (25 << 20) if engine.is_speech else (1 << 20)
    state = {"ready": False, "draining": False, "batcher": None}

    async def lifespan(app):
        batcher = Batcher(engine, config, metrics)
        state["batcher"] = batcher
        batcher.task = asyncio.create_task(batcher.run_forever())
        if warmup:
            await asyncio.get_running_loop().run_in_executor(batcher.executor, _warm, engine, config.max_batch_size)
        state["ready"] = True
        yield
        batcher.task.cancel()
        batcher.executor.shutdown(wait=True)

    app = FastAPI(title="turboseq", version=turboseq.__version__, lifespan=lifespan)
    app.state.turboseq = state
    app.state.metrics = metrics

    def error(err: RequestError) -> JSONResponse:
        return JSONResponse({"error": err.message, "error_type": err.kind}, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestError)
    async def _request_error(request, err: RequestError):
        return error(err)

    @app.exception_handler(Exception)
    async def _internal_error(request, err: Exception):
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}", "error_type": "internal"},
                            status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        kind = "not_found" if err.status_code == 404 else "http_error"
        message = f"no route {request.method} {request.url.path}" if err.status_code == 404 else str(err.detail)
        return JSONResponse({"error": message, "error_type": kind}, status_code=err.status_code)

    @app.get("/health")
    async def health():
        if state["draining"]:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not state["ready"]:
            return JSONResponse({"status": "warming up"}, status_code=503)
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return {
            "model": engine.name, "model_type": model.config.get("model_type"), "task": engine.task,
            "dtype": model.dtype, "version": turboseq.__version__,
            "limits": {"max_batch_size": config.max_batch_size, "max_batch_tokens": config.max_batch_tokens,
                       "batch_wait_ms": config.batch_wait_ms, "max_queue": config.max_queue,
                       "request_timeout_s": config.request_timeout_s, "max_input_tokens": limit,
                       "max_payload_bytes": config.max_payload_bytes},
        }

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def admit(params: dict) -> bool:
        """Checks shared by every inference route: ready, valid parameters. Returns ``truncation``."""
        if state["draining"] or not state["ready"]:
            metrics.rejected.labels("not_ready").inc()
            raise RequestError(503, "server is draining" if state["draining"] else "server is warming up", "unavailable")
        truncation = params.get("truncation", False)
        if not isinstance(truncation, bool):
            raise RequestError(422, "`parameters.truncation` must be a boolean", "validation_error")
        try:
            engine.validate(params)
        except (ValueError, TypeError) as err:
            metrics.rejected.labels("invalid_parameters").inc()
            raise RequestError(422, str(err), "validation_error") from None
        return truncation

    def encode(inputs: list[str], truncation: bool) -> tuple[list[int], list]:
        """(indices of the non-blank inputs, their token ids), each within the input token limit."""
        live = [i for i, t in enumerate(inputs) if t.strip()]
        rows = []
        if live:
            texts = [inputs[i] for i in live]
            rows = model.tokenizer(texts, truncation=truncation, max_length=limit if truncation else None)["input_ids"]
        for i, ids in zip(live, rows):
            if len(ids) > limit:
                metrics.rejected.labels("input_too_long").inc()
                raise RequestError(422, f"input {i} has {len(ids)} tokens; the limit is {limit} "
                                   "(set parameters.truncation to cut it)", "input_too_long")
        return live, rows

    async def infer(request: Request, inputs: list[str], params: dict):
        truncation = admit(params)
        if len(inputs) > config.max_batch_size:
            metrics.rejected.labels("too_many_inputs").inc()
            raise RequestError(413, f"{len(inputs)} inputs in one request; the limit is {config.max_batch_size}",
                               "too_many_inputs")
        live, rows = encode(inputs, truncation)
        empty = [] if engine.is_encoder else ""
        results: list = [empty] * len(inputs)
        if rows:
            outputs = await run_job(request, rows, params)
            for i, out in zip(live, outputs):
                results[i] = out
        if engine.is_encoder:
            return results  # a blank input gets an empty vector
        field_name = "translation_text" if engine.task == "translation" else "generated_text"
        return [{field_name: r} for r in results]

    async def _watch_disconnect(request: Request, job: _Job) -> None:
        while not job.future.done():
            if await request.is_disconnected():
                job.cancelled = True  # queued: it never reaches the engine; running: its rows leave the batch
                metrics.rejected.labels("client_disconnected").inc()
                if job in state["batcher"].queue and not job.future.done():
                    job.future.set_exception(_Cancelled())  # still queued: release its handler now
                return
            await asyncio.sleep(0.05)

    async def handle(request: Request):
        if engine.is_speech:
            return JSONResponse(await transcribe(request))
        body = _parse_body(await request.body(), config.max_payload_bytes)
        return JSONResponse(await infer(request, body["inputs"], body["parameters"]))

    async def run_job(request: Request, rows: list, params: dict) -> list:
        """Queue ``rows`` as one job and wait for its answers (timeout, client departure and rejections)."""
        key = json.dumps({k: v for k, v in params.items() if k != "truncation"}, sort_keys=True)
        job = _Job(rows, params, key, asyncio.get_running_loop().create_future())
        start = time.perf_counter()
        state["batcher"].submit(job)
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        try:
            outputs = await asyncio.wait_for(asyncio.shield(job.future), config.request_timeout_s)
        except asyncio.TimeoutError:
            job.cancelled = True
            metrics.rejected.labels("timeout").inc()
            raise RequestError(504, f"request took over {config.request_timeout_s} s", "timeout") from None
        except _Cancelled:  # the client left; nobody reads this answer
            raise RequestError(499, "client closed the request", "client_closed") from None
        finally:
            watcher.cancel()
        metrics.request_duration.observe(time.perf_counter() - start)
        return outputs

    def decode_audio(blobs: list[bytes]) -> list:
        from turboseq.audio import AudioError, load_audio

        waves = []
        for i, blob in enumerate(blobs):
            try:
                waves.append(load_audio(blob, name=f"input {i}"))
            except AudioError as err:
                metrics.rejected.labels("invalid_audio").inc()
                raise RequestError(400, str(err), "invalid_audio") from None
        return waves

    async def transcribe(request: Request, blob: bytes | None = None, params: dict | None = None):
        """Speech requests: raw audio bytes as the body, or JSON {"inputs": base64 | [base64], "parameters"}."""
        import base64
        import binascii

        if blob is None:
            raw = await request.body()
            if len(raw) > config.max_payload_bytes:
                metrics.rejected.labels("payload_too_large").inc()
                raise RequestError(413, f"request body of {len(raw)} bytes is over the limit of "
                                   f"{config.max_payload_bytes}", "payload_too_large")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype == "application/json":
                body = _parse_body(raw, config.max_payload_bytes)
                single = isinstance(json.loads(raw).get("inputs"), str)
                params = body["parameters"]
                try:
                    blobs = [base64.b64decode(b, validate=True) for b in body["inputs"]]
                except (binascii.Error, ValueError):
                    raise RequestError(400, "`inputs` must be base64-encoded audio", "invalid_audio") from None
            elif ctype in ("", "application/octet-stream") or ctype.startswith(("audio/", "video/")):
                blobs, params, single = [raw], {}, True
            else:
                metrics.rejected.labels("unsupported_media_type").inc()
                raise RequestError(415, f"unsupported content type {ctype!r}: send audio bytes (audio/*) or JSON",
                                   "unsupported_media_type")
        else:
            blobs, single = [blob], False
        params = params or {}
        admit(params)
        if len(blobs) > config.max_batch_size:
            metrics.rejected.labels("too_many_inputs").inc()
            raise RequestError(413, f"{len(blobs)} inputs in one request; the limit is {config.max_batch_size}",
                               "too_many_inputs")
        waves = decode_audio(blobs)
        answers = await run_job(request, waves, params) if waves else []
        return answers[0] if single else answers  # one audio in: one object out, as Hugging Face's API

    @app.post("/")
    async def root(request: Request):
        return await handle(request)

    @app.post("/models/{model_name:path}")
    async def named(model_name: str, request: Request):
        if model_name != engine.name:
            raise RequestError(404, f"unknown model {model_name!r}; this server serves {engine.name!r}", "not_found")
        return await handle(request)

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        """Server-sent events: one per generated token ({"token": {"id", "text", "special"}}), then
        {"generated_text", "finish_reason"}. Greedy or sampling only; the request runs as its own batch."""
        from fastapi.responses import StreamingResponse

        if engine.is_encoder or engine.is_speech:
            raise RequestError(404, f"{engine.name} is a {engine.task} model: streaming is for text generation",
                               "not_found")
        body = _parse_body(await request.body(), config.max_payload_bytes)
        if len(body["inputs"]) != 1:
            raise RequestError(422, "`inputs` must be one string for streaming", "validation_error")
        params = body["parameters"]
        truncation = admit(params)
        settings = model.settings(**{k: v for k, v in params.items() if k not in ("truncation", "seed")})
        if settings.is_beam or settings.num_return_sequences != 1:
            raise RequestError(422, "streaming supports num_beams=1 and num_return_sequences=1", "validation_error")
        _, rows = encode(body["inputs"], truncation)
        return StreamingResponse(_stream(request, rows[0] if rows else None, params, settings),
                                 media_type="text/event-stream")

    async def _stream(request: Request, ids, params: dict, settings):
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        stop = {"cancelled": False}
        start = time.perf_counter()
        gen = {k: v for k, v in params.items() if k != "truncation"}

        def on_tokens(rows, new):
            if stop["cancelled"]:
                raise _Cancelled()  # the client left: stop decoding now
            loop.call_soon_threadsafe(tokens.put_nowait, int(new[0]))

        def work():
            try:
                model.generate_rows([ids], max_batch_size=None, on_tokens=on_tokens, **gen)
            finally:
                loop.call_soon_threadsafe(tokens.put_nowait, None)

        tok = model.tokenizer
        special = set(tok.all_special_ids)
        eos = set(settings.eos_token_ids)
        out_ids: list[int] = []
        sent = ""  # text already sent: a prefix of the decoded text, never half a character
        finish = "length"
        future = loop.run_in_executor(state["batcher"].executor, work) if ids is not None else None
        try:
            while future is not None:
                token = await tokens.get()
                if token is None:
                    break
                if not out_ids:
                    metrics.time_to_first_token.observe(time.perf_counter() - start)
                out_ids.append(token)
                if token in eos:
                    finish = "eos_token"
                decoded = tok.decode(out_ids, skip_special_tokens=True)
                piece = ""
                if not decoded.endswith("\ufffd") and decoded.startswith(sent):
                    piece, sent = decoded[len(sent) :], decoded
                event = {"token": {"id": token, "text": piece, "special": token in special}}
                yield f"data: {json.dumps(event)}\n\n"
                if await request.is_disconnected():
                    stop["cancelled"] = True
                    metrics.rejected.labels("client_disconnected").inc()
                    return
            if future is not None:
                try:
                    await future
                except Exception as err:  # headers are sent: report the failure as the last event
                    yield f"data: {json.dumps({'error': str(err), 'error_type': type(err).__name__})}\n\n"
                    return
            metrics.generated_tokens.inc(len(out_ids))
            final = tok.decode(out_ids, skip_special_tokens=True)
            if final != sent:  # a trailing partial character resolved at the end
                yield f"data: {json.dumps({'token': {'id': None, 'text': final[len(sent):], 'special': False}})}\n\n"
            yield f"data: {json.dumps({'generated_text': final, 'finish_reason': finish})}\n\n"
        except _Cancelled:
            return
        finally:
            stop["cancelled"] = True

    @app.post("/v1/audio/transcriptions")
    async def openai_transcriptions(request: Request):
        """OpenAI's transcription API: multipart form with `file`; response_format json | text | srt | vtt |
        verbose_json; optional `language`, `model`, `temperature` (0 only: decoding is deterministic)."""

        from turboseq.speech import Segment, Transcription, to_srt, to_vtt

        if not engine.is_speech:
            raise RequestError(404, f"{engine.name} is a {engine.task} model: no transcription endpoint", "not_found")
        size = int(request.headers.get("content-length") or 0)
        if size > config.max_payload_bytes:
            metrics.rejected.labels("payload_too_large").inc()
            raise RequestError(413, f"request body of {size} bytes is over the limit of {config.max_payload_bytes}",
                               "payload_too_large")
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise RequestError(415, "send multipart/form-data with a `file` field", "unsupported_media_type")
        form = await request.form()
        unknown = set(form) - {"file", "model", "response_format", "language", "temperature", "prompt"}
        if unknown:
            raise RequestError(422, f"unknown field(s): {', '.join(sorted(unknown))}", "validation_error")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(422, "`file` (an audio file upload) is required", "validation_error")
        fmt = form.get("response_format", "json")
        if fmt not in ("json", "text", "srt", "vtt", "verbose_json"):
            raise RequestError(422, f"`response_format` must be json, text, srt, vtt or verbose_json, got {fmt!r}",
                               "validation_error")
        try:
            temperature = float(form.get("temperature", 0) or 0)
        except ValueError:
            raise RequestError(422, "`temperature` must be a number", "validation_error") from None
        if temperature != 0:
            raise RequestError(422, "`temperature`: only 0 is supported", "validation_error")
        if form.get("prompt"):
            raise RequestError(422, "`prompt` is not supported yet", "validation_error")
        params = {"return_timestamps": fmt != "text" and fmt != "json"}
        if form.get("language"):
            params["language"] = form["language"]
        blob = await upload.read()
        (answer,) = await transcribe(request, blob, params)  # a list: called with one upload
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

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request):
        if not engine.is_encoder:
            raise RequestError(404, f"{engine.name} is a {engine.task} model: no embeddings endpoint", "not_found")
        body = _fields(_decode_json(await request.body(), config.max_payload_bytes),
                       {"input", "model", "encoding_format", "user"}, "input")
        texts = _text_list(body["input"], "input")
        if body.get("encoding_format", "float") != "float":
            raise RequestError(422, "`encoding_format`: only \"float\" is supported", "validation_error")
        vectors = await infer(request, texts, {})
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        live = [t for t in texts if t.strip()]
        tokens = sum(len(ids) for ids in model.tokenizer(live)["input_ids"]) if live else 0
        return {"object": "list", "data": data, "model": engine.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


def _warm(engine: Engine, batch_size: int) -> None:
    """One small and one full-size batch before reporting ready: kernels are initialized and the process
    reaches its working set, so the first requests are not slow and memory does not climb under load."""
    if engine.is_speech:  # one window alone, then a full batch of windows (silence is skipped: use noise)
        import numpy as np

        noise = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)
        for rows in ([noise], [noise] * min(batch_size, 4)):
            engine.run(rows, {"max_new_tokens": 8})
        return
    text = "Warm up the engine with a sentence of ordinary length, like the ones the server will see."
    row = engine.model.tokenizer(text)["input_ids"]
    for rows in ([row], [row] * batch_size):
        if engine.is_encoder:
            engine.run(rows, {})
        else:
            engine.model.generate_rows(rows, max_batch_size=None, max_new_tokens=8)


def serve(model_dir: str, host: str, port: int, config: ServerConfig, dtype: str = "float32", log_level="info"):
    """Run the server until SIGTERM/SIGINT; on either, /health turns 503, new requests get 503, requests in
    flight finish, and the process exits 0."""
    import os

    import uvicorn

    import turboseq

    # oneDNN keeps a compiled kernel per matmul shape; a server sees every row count as batches shrink, and the
    # default cache (1024 kernels) grew RSS by about 60 MB in the first seconds of load. 64 recent shapes keep
    # the same throughput here (measured with python -m turboseq.loadtest). The environment wins if set.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    model = turboseq.load(model_dir, dtype=dtype)
    app = create_app(model, config=config)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None))
    original = server.handle_exit

    def handle_exit(sig, frame):
        app.state.turboseq["draining"] = True
        original(sig, frame)

    server.handle_exit = handle_exit
    # uvicorn re-raises the captured signal after its graceful shutdown, to the handler that was installed
    # before it: make that a no-op so that a drained server exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0

