"""HTTP inference server: FastAPI + uvicorn, dynamic batching, streaming, metrics, backpressure, graceful drain.

The server is the same for every kind of model: what is specific to text, audio or vectors lives in the
model's ``serving.tasks.Task`` (parsing, settings, batch budget, running a batch, answer shape, extra routes).

Requests wait in one bounded queue (``serving.batcher``). A single worker takes the oldest request and, after
``batch_wait_ms`` (longer, up to 4x, while requests keep arriving), merges every queued request with the same
batch key (equal generation parameters) into one engine batch (``max_batch_size`` inputs, ``max_batch_tokens``
of budget), runs it in a thread and routes each answer back. Streamed requests go through the same queue and
may share a batch with plain ones; their tokens are routed to their event stream as they are chosen. Batch
invariance of the engine makes a request's answer equal to its answer when sent alone (sampled requests are never merged, so that a seed
means the same as alone).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fastapi import Request, WebSocket  # module level: FastAPI resolves handler annotations here

import turboseq.serving.causal  # noqa: F401  (registers the built-in tasks)
import turboseq.serving.encoders  # noqa: F401
import turboseq.serving.speech  # noqa: F401
import turboseq.serving.text  # noqa: F401
from turboseq.runtime.cpu import cpu_info
from turboseq.serving.batcher import Batcher, Cancelled, Job, Metrics
from turboseq.serving.config import ServerConfig
from turboseq.serving.requests import Parsed, RequestError, check_parameter_size, internal_error, read_body
from turboseq.serving.tasks import StreamEvents, Task, task_for
from turboseq.version import __version__

__all__ = ["ServerConfig", "RequestError", "create_app"]


class Service:
    """What every route shares: the task, limits, metrics, readiness, and running requests through the queue.
    Task routes (``Task.routes``) receive it."""

    def __init__(self, task: Task, name: str, config: ServerConfig):
        self.task, self.name, self.config = task, name, config
        self.metrics = Metrics()
        self.ready = self.draining = False
        self.warmup_error: str | None = None
        self.on_warmup_failure: Callable[[], None] | None = None  # serve(): stop the process
        self.on_ready: Callable[[], None] | None = None  # serve(): say so in the log
        self.batcher: Batcher | None = None
        self.parser = None  # the parser thread's executor (set by the app's lifespan)
        self.live_hub = None  # the live streams' hub (``serving.live.hub_of``), made by the first stream

    # --- admission ---------------------------------------------------------------------------------------------

    async def read_body(self, request: Request) -> bytes:
        """The body, within the payload limit and the body timeout."""
        return await read_body(request, self.config.max_payload_bytes, self.config.body_timeout_s)

    async def off_loop(self, fn, *args):
        """``fn(*args)`` in the parser thread: tokenizing or decoding a large body never blocks other requests."""
        return await asyncio.get_running_loop().run_in_executor(self.parser, fn, *args)

    def ensure_ready(self) -> None:
        if self.draining or not self.ready:
            why = "draining" if self.draining else "warming up" if not self.warmup_error else "broken: warm-up failed"
            raise RequestError(503, f"server is {why}", "unavailable")

    def admit(self, parsed: Parsed) -> None:
        """Check the request's size, resolve its parameters once (``parsed.prepared``), and check its cost."""
        self.task.check_count(parsed.count)
        check_parameter_size(parsed.params, self.config.max_parameter_items, self.config.max_parameter_chars)
        try:
            parsed.prepared = self.task.prepare(parsed.params, **parsed.options)
        except (ValueError, TypeError) as err:
            raise RequestError(422, str(err), "validation_error") from None
        self.task.check_cost(parsed, self.config)

    # --- running -----------------------------------------------------------------------------------------------

    async def infer(self, request: Request, parsed: Parsed) -> list:
        """One answer per input of ``parsed`` (blank inputs get the task's empty answer)."""
        try:
            self.admit(parsed)
            answers = [self.task.empty(parsed.prepared.settings)] * parsed.count
            if parsed.rows:
                job = self._submit(request, parsed)
                try:
                    outputs = await asyncio.wait_for(asyncio.shield(job.future), job.timeout_s)
                except asyncio.TimeoutError:
                    job.cancelled = True
                    raise self._timeout(job) from None
                except Cancelled:
                    raise self._client_closed() from None
                finally:
                    job.watcher.cancel()
                self.metrics.request_duration.observe(time.perf_counter() - job.enqueued)
                for slot, out in zip(parsed.slots, outputs):
                    answers[slot] = out
            return answers
        finally:
            if parsed.release is not None:
                parsed.release()

    async def infer_in_batches(self, request: Request, inputs: list[str], params: dict) -> tuple[list, int]:
        """One answer per input of a request larger than an engine batch, and its input token count: tokenized
        in chunks of ``--max-batch-size`` in the parser thread, each chunk queued as a job of its own."""
        size = self.task.max_batch_size
        chunks = [inputs[i : i + size] for i in range(0, len(inputs), size)] or [[]]
        parsed = [await self.off_loop(self.task.tokenize, chunk, params) for chunk in chunks]
        answers = await asyncio.gather(*(self.infer(request, p) for p in parsed))
        return [a for answer in answers for a in answer], sum(len(ids) for p in parsed for ids in p.rows)

    def _submit(self, request: Request, parsed: Parsed, on_token=None) -> Job:
        future = asyncio.get_running_loop().create_future()
        job = Job(parsed.rows, parsed.prepared, future, on_token, timeout_s=self.task.time_allowed(parsed, self.config))
        self.batcher.submit(job)
        job.watcher = asyncio.create_task(self._watch_disconnect(request, job))
        return job

    async def _watch_disconnect(self, request: Request, job: Job) -> None:
        while not job.future.done():
            if await request.is_disconnected():
                job.cancelled = True  # queued: it never reaches the engine; running: its rows leave the batch
                if job in self.batcher.queue and not job.future.done():
                    job.future.set_exception(Cancelled())  # still queued: release its handler now
                return
            await asyncio.sleep(0.05)

    @staticmethod
    def _timeout(job: Job) -> RequestError:
        return RequestError(504, f"request took over {job.timeout_s:g} s", "timeout")

    @staticmethod
    def _client_closed() -> RequestError:
        return RequestError(499, "client closed the request", "client_closed")

    # --- streaming ---------------------------------------------------------------------------------------------

    async def stream(self, request: Request, parsed: Parsed, events: StreamEvents | None = None):
        """Server-sent events for one input: one event per token ``{"token": {"id", "text", "special"}}``, then
        ``{"generated_text", "finish_reason"}``. The request waits in the queue like any other (429 when full)
        and may share a batch; the response starts with its first token (504 if none came within the request
        timeout). The timeout covers the whole stream: errors after the first token, a timeout included, arrive
        as a last event ``{"error", "error_type"}``."""
        from fastapi.responses import StreamingResponse

        events = events or StreamEvents()
        self.admit(parsed)
        if parsed.count != 1:
            raise RequestError(422, "`inputs` must be one string for streaming", "validation_error")
        self.task.check_stream(parsed.prepared.settings)
        decoder = self.task.stream_decoder(parsed.prepared.settings)
        media = "text/event-stream"
        if not parsed.rows:  # a blank input: no tokens

            async def blank():
                for event in events.end("", "length"):
                    yield event

            return StreamingResponse(blank(), media_type=media)
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        job = self._submit(request, parsed, lambda _row, token: loop.call_soon_threadsafe(tokens.put_nowait, token))
        job.future.add_done_callback(lambda _: tokens.put_nowait(None))  # after every token of the batch
        deadline = job.enqueued + job.timeout_s
        try:
            first = await self._next_token(tokens, job, deadline)
        except BaseException:
            job.cancelled = True
            job.watcher.cancel()
            raise
        self.metrics.time_to_first_token.observe(time.perf_counter() - job.enqueued)
        return StreamingResponse(self._events(job, tokens, first, decoder, deadline, events), media_type=media)

    async def _next_token(self, tokens: asyncio.Queue, job: Job, deadline: float) -> int | None:
        """The job's next token; None when it finished. Raises on timeout, departure or engine failure."""
        try:
            token = await asyncio.wait_for(tokens.get(), max(0.0, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            job.cancelled = True
            raise self._timeout(job) from None
        if token is None:
            try:
                job.future.result()
            except Cancelled:
                raise self._client_closed() from None
        return token

    async def _events(
        self, job: Job, tokens: asyncio.Queue, token: int | None, decoder, deadline: float, events: StreamEvents
    ):
        try:
            while token is not None:
                for event in events.token(decoder.push(token)):
                    yield event
                token = await self._next_token(tokens, job, deadline)
            (answer,) = job.future.result()
            final, reason = self.task.stream_end(answer, decoder)
            rest = decoder.rest(final)
            if rest:  # a trailing incomplete character, resolved by the final decode
                for event in events.token({"id": None, "text": rest, "special": False}):
                    yield event
            for event in events.end(final, reason):
                yield event
            self.metrics.request_duration.observe(time.perf_counter() - job.enqueued)
        except RequestError as err:  # the headers are sent: report it as the last event
            self.metrics.rejected.labels(err.kind).inc()
            for event in events.error({"error": err.message, "error_type": err.kind}):
                yield event
        except Exception as err:
            self.metrics.rejected.labels("internal").inc()
            for event in events.error(internal_error(err)):
                yield event
        finally:
            if not job.future.done() and not job.cancelled:  # the client left mid-stream
                job.cancelled = True  # its row leaves the batch at the next step
                self.metrics.rejected.labels("client_closed").inc()
            job.watcher.cancel()


def create_app(model, name: str | None = None, config: ServerConfig | None = None, warmup: bool = True):
    """The FastAPI app serving ``model`` (a loaded turboseq model) with its registered task: the error
    handlers, the operations routes (``/health``, ``/info``, ``/metrics``) and the task's routes."""
    from fastapi import FastAPI

    config = replace(config or ServerConfig())  # a copy: defaults below are this app's
    config.check()
    task = task_for(model, config)
    if config.max_payload_bytes is None:
        config.max_payload_bytes = task.payload_bytes
    service = Service(task, name or Path(str(model.path)).name, config)
    app = FastAPI(title="turboseq", version=__version__, lifespan=_lifespan(service, warmup))
    app.state.service = service
    _add_error_handlers(app, service.metrics)
    _add_operations_routes(app, service, model)
    _add_task_routes(app, service)
    return app


def _lifespan(service: Service, warmup: bool):
    """Start the parser thread, the batcher and the warm-up with the app; on shutdown give up what still runs."""
    task, config = service.task, service.config

    async def warm_up(executor):
        try:
            if warmup:
                await asyncio.get_running_loop().run_in_executor(executor, task.warm, config.max_batch_size)
        except Exception as err:  # a model that cannot run one batch must not report ready
            import logging

            service.warmup_error = f"{type(err).__name__}: {err}"
            logging.getLogger("uvicorn.error").error("turboseq: warm-up failed: %s", service.warmup_error)
            if service.on_warmup_failure is not None:
                service.on_warmup_failure()
            return
        service.ready = True
        if service.on_ready is not None:
            service.on_ready()

    async def lifespan(app):
        from concurrent.futures import ThreadPoolExecutor

        # bodies are parsed (tokenized, audio decoded) in a thread of their own, off the event loop
        service.parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turboseq-parse")
        batcher = service.batcher = Batcher(task, config, service.metrics)
        batcher.task_handle = asyncio.create_task(batcher.run_forever())
        # warm up in the background: the server listens meanwhile and answers 503 "warming up"
        warming = asyncio.create_task(warm_up(batcher.executor))
        yield
        warming.cancel()
        batcher.task_handle.cancel()
        batcher.cancel_all()  # what is still running after the drain leaves the engine at its next step
        batcher.executor.shutdown(wait=False, cancel_futures=True)
        service.parser.shutdown(wait=False, cancel_futures=True)
        ending = [warming, batcher.task_handle]
        if service.live_hub is not None and service.live_hub.runner is not None:
            service.live_hub.runner.cancel()  # the live streams' loop, waiting for audio
            ending.append(service.live_hub.runner)
        # these tasks' frames hold the model: once they have ended (an engine thread still in a step lets go when
        # the step ends), an unloaded model's memory can be freed
        await asyncio.gather(*ending, return_exceptions=True)

    return lifespan


def _add_error_handlers(app, metrics: Metrics) -> None:
    """Every error as JSON ``{"error", "error_type"}``: a request's own, a bug's (500 with an id), a route's."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestError)
    async def _request_error(request, err: RequestError):
        metrics.rejected.labels(err.kind).inc()
        return JSONResponse({"error": err.message, "error_type": err.kind}, status_code=err.status, headers=err.headers)

    @app.exception_handler(Exception)
    async def _bug(request, err: Exception):
        metrics.rejected.labels("internal").inc()
        return JSONResponse(internal_error(err), status_code=500, headers={"Connection": "close"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        kind = "not_found" if err.status_code == 404 else "http_error"
        message = f"no route {request.method} {request.url.path}" if err.status_code == 404 else str(err.detail)
        return JSONResponse({"error": message, "error_type": kind}, status_code=err.status_code)


def _health(service: Service):
    """``/health``'s answer: (body, status)."""
    stalled = service.batcher.stalled_for() if service.batcher is not None else None
    if stalled is not None:  # the engine holds a batch whose every request has timed out: not progressing
        return {
            "status": "stalled",
            "error": f"the engine has run one batch {stalled:.0f} s past its requests' timeout",
        }, 503
    if service.draining:
        return {"status": "draining"}, 503
    if service.warmup_error:
        return {"status": "failed", "error": f"warm-up failed: {service.warmup_error}"}, 503
    if not service.ready:
        return {"status": "warming up"}, 503
    return {"status": "ok"}, 200


def _add_operations_routes(app, service: Service, model) -> None:
    """``/health`` (GET and HEAD), ``/info`` and ``/metrics``."""
    from fastapi.responses import JSONResponse, Response

    task, config = service.task, service.config

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        body, status = _health(service)
        return JSONResponse(body, status_code=status)

    @app.get("/info")
    async def info():
        return {
            "model": service.name,
            "model_type": model.config.get("model_type"),
            "task": task.name,
            "compute_type": getattr(model, "compute_type", "float32"),
            "dtype": getattr(model, "compute_type", "float32"),
            "version": __version__,
            "cpu": cpu_info().as_dict(),
            "streaming": task.streams,
            "routes": ["/", f"/models/{service.name}"]
            + (["/generate_stream"] if task.streams else [])
            + [r.path for r in task.routes()]
            + ["/v1/models"],
            "docs": "/docs",  # FastAPI's interactive page of every route
            "limits": {**config.limits(), "max_input_tokens": task.max_input_tokens},
            **task.info(service),
        }

    created = int(time.time())

    def card() -> dict:
        return {"id": service.name, "object": "model", "created": created, "owned_by": "turboseq"}

    # OpenAI's model list: stock SDKs and UIs ask it first (what the `model` field of a request may name)
    @app.get("/v1/models")
    async def openai_models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id:path}")
    async def openai_model(model_id: str):
        if model_id != service.name:
            raise RequestError(404, f"unknown model {model_id!r}; this server serves {service.name!r}", "not_found")
        return card()

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_task_routes(app, service: Service) -> None:
    """``POST /`` and ``/models/{name}`` in the task's format, ``/generate_stream``, and the task's own routes."""
    from fastapi.responses import JSONResponse

    task, config = service.task, service.config

    async def parse(request: Request) -> Parsed:
        service.ensure_ready()
        body = await service.read_body(request)
        return await service.off_loop(
            task.parse, body, request.headers.get("content-type", ""), config.max_payload_bytes
        )

    async def handle(request: Request):
        parsed = await parse(request)
        return JSONResponse(task.respond(await service.infer(request, parsed), parsed))

    @app.post("/")
    async def root(request: Request):
        return await handle(request)

    @app.get("/")
    async def playground():
        from fastapi.responses import HTMLResponse

        from turboseq.serving.playground import page

        return HTMLResponse(page(task.name, service.name, __version__))

    @app.post("/models/{model_name:path}")
    async def named(model_name: str, request: Request):
        if model_name != service.name:
            raise RequestError(404, f"unknown model {model_name!r}; this server serves {service.name!r}", "not_found")
        return await handle(request)

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        if not task.streams:
            raise RequestError(
                404, f"{service.name} is a {task.name} model: streaming is for text generation", "not_found"
            )
        return await service.stream(request, await parse(request))

    def endpoint(handler):
        async def run(request: Request):
            return await handler(service, request)

        return run

    def socket(handler):
        async def run(websocket: WebSocket):
            return await handler(service, websocket)

        return run

    for route in task.routes():
        if route.websocket:
            app.add_api_websocket_route(route.path, socket(route.handler))
        else:
            app.add_api_route(route.path, endpoint(route.handler), methods=list(route.methods))
