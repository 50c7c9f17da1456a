"""Many models in one server: each model is the single-model app of ``serving.app`` (its own queue, batcher,
engine thread and metrics), loaded on its first request or at start, unloaded when idle or when a memory budget
needs room, and chosen per request.

A request goes to:
- ``/models/NAME`` and ``/models/NAME/<route>``: the model NAME (``/models/NAME/v1/embeddings`` is NAME's
  ``/v1/embeddings``);
- any other route: the model its ``model`` field names (a JSON body, a multipart form or the query string, as the
  OpenAI and Realtime clients send it), else the default model. A name this server does not hold goes to the
  default model where that model serves the route (clients send names such as ``tgi`` or ``whisper-1``), and is
  a 404 naming the models otherwise.

The hub answers ``/health`` (200 while any model can be asked, whatever is loading), ``/v1/models`` (every model,
loaded or not), ``/info`` and ``/metrics`` (every loaded model's metrics with a ``model`` label, plus loads,
unloads and resident bytes) itself. Loading runs in a thread of its own: other models keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from turboseq.serving.config import ServerConfig
from turboseq.serving.requests import RequestError
from turboseq.serving.routing import body_fields, content_type, no_body, query_model, replay

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OWN = ("/health", "/info", "/metrics", "/v1/models", "/languages")  # answered by the hub itself
_BUFFERED = ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
_log = logging.getLogger("uvicorn.error")
LOAD_HANDOFF_S = 5.0


@dataclass
class ModelEntry:
    """One model the server may serve: ``NAME=DIR[:COMPUTE_TYPE]`` on the command line."""

    name: str
    path: Path
    compute_type: str | None = None

    @classmethod
    def parse(cls, text: str, compute_types: tuple[str, ...]) -> ModelEntry:
        name, sep, rest = text.partition("=")
        if not sep:
            name, rest = "", text
        path, colon, kind = rest.rpartition(":")
        if not colon or kind not in compute_types:
            path, kind = rest, None
        return cls(check_name(name or Path(path).name), Path(path), kind)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (it is part of /models/NAME)")
    return name


def models_in(folder: str | Path) -> list[ModelEntry]:
    """Every model directory directly under ``folder`` (one holding a ``config.json`` or a CTranslate2
    ``model.bin``), named by its folder, in name order."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--models-dir {folder}: not a directory")
    found = [
        ModelEntry(check_name(d.name), d)
        for d in sorted(root.iterdir())
        if d.is_dir() and ((d / "config.json").is_file() or (d / "model.bin").is_file())
    ]
    if not found:
        raise ValueError(f"--models-dir {folder}: no model directory in it (one with a config.json or model.bin)")
    return found


def parse_bytes(text: str) -> int:
    """``4G``, ``512M``, ``1.5GB``, ``800000000`` as bytes (powers of 1024 for the suffixes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 4G, 512M, 800000000)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


@dataclass(eq=False)
class Slot:
    """A model's place in the hub: its state (``unloaded``, ``loading``, ``ready``, ``failed``) and, once
    ready, its app and the bytes it holds."""

    entry: ModelEntry
    state: str = "unloaded"
    app: object = None
    lifespan: object = None  # the app's lifespan context, entered while the model is loaded
    error: str | None = None
    failed_at: float = 0.0
    resident: int = 0  # bytes its weights hold as loaded (what --memory-budget counts)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # requests and streams using it: never unloaded while above 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set at each state change, then replaced
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: asyncio.Task | None = None  # the load asked for

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def service(self):
        return self.app.state.service if self.app is not None else None

    def set_state(self, state: str) -> None:
        self.state = state
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class HubOptions:
    default: str | None = None  # the model of the routes without a name (default: the first)
    preload: tuple[str, ...] = ()
    idle_unload_s: float | None = None
    memory_budget: int | None = None  # bytes of models held at once; least recently used idle ones leave first
    load_wait_s: float = 60.0  # a request for a loading model waits this long, then gets 503 + Retry-After
    retry_failed_s: float = 30.0  # a model that failed to load is tried again by a request after this
    warmup: bool = True


class Hub:
    """The ASGI app of a many-model server."""

    def __init__(self, entries: list[ModelEntry], config: ServerConfig, options: HubOptions):
        from concurrent.futures import ThreadPoolExecutor

        from turboseq.serving.hub_routes import HubMetrics, operations_app

        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"two models are named {next(n for n in names if names.count(n) > 1)!r}")
        for name in (*options.preload, *([options.default] if options.default else [])):
            if name not in names and name != "all":
                raise ValueError(f"no model named {name!r} (models: {', '.join(names)})")
        self.config, self.options = config, options
        self.slots = {e.name: Slot(e) for e in entries}
        self.default = self.slots[options.default or names[0]]
        self.pairs = {e.name: _pair_of(e) for e in entries}  # translation models' (source, target)
        self.loader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="turboseq-load")
        self.load_lock = threading.Lock()
        self.metrics = HubMetrics(self)
        self.draining = False
        self.preloads: list[asyncio.Task] = []  # /health is 503 until they end
        self.on_started = None  # serve_many(): say where it listens
        self.ops = operations_app(self)
        self._reaper: asyncio.Task | None = None

    # --- ASGI --------------------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["path"] in _OWN or scope["path"].startswith(("/v1/models/", "/download_file/")):
            return await self.ops(scope, receive, send)
        try:
            slot, scope, receive = await self._route(scope, receive)
        except RequestError as err:
            return await self._refuse(scope, send, err)
        slot.in_flight += 1
        try:
            await self._ready(slot)
            slot.last_used = time.monotonic()
            await slot.app(scope, receive, send)
        except RequestError as err:
            await self._refuse(scope, send, err)
        finally:
            slot.in_flight -= 1
            slot.last_used = time.monotonic()

    async def _refuse(self, scope, send, err: RequestError) -> None:
        from fastapi.responses import JSONResponse

        self.metrics.rejected.labels(err.kind).inc()
        if scope["type"] == "websocket":  # before the handshake: refused as the ASGI spec says
            await send({"type": "websocket.close", "code": 1013 if err.status == 503 else 1008})
            return
        body = {"error": err.message, "error_type": err.kind}
        response = JSONResponse(body, status_code=err.status, headers=err.headers)
        await response(scope, no_body, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                names = list(self.slots) if "all" in self.options.preload else list(self.options.preload)
                self.preloads = [asyncio.create_task(self._load(self.slots[name])) for name in names]
                if self.options.idle_unload_s:
                    self._reaper = asyncio.create_task(self._unload_idle())
                await send({"type": "lifespan.startup.complete"})
                if self.on_started is not None:
                    self.on_started()
            elif message["type"] == "lifespan.shutdown":
                if self._reaper is not None:
                    self._reaper.cancel()
                for slot in self.slots.values():
                    if slot.state == "ready":
                        await self._unload(slot, why="shutdown")
                self.loader.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- routing -----------------------------------------------------------------------------------------------

    async def _route(self, scope, receive):
        """(slot, scope, receive) of a request: the body read ahead is replayed to the model's app."""
        path = scope["path"]
        if path.startswith("/models/"):
            name, slash, rest = path[len("/models/") :].partition("/")
            slot = self._named(name)
            if slash:  # /models/NAME/v1/embeddings: NAME's /v1/embeddings; /models/NAME/: its playground
                scope = dict(scope, path="/" + rest, raw_path=("/" + rest).encode())
            elif scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
                # the playground, whose links are relative: at /models/NAME/ they reach NAME's routes
                raise RequestError(
                    307, "the playground is at " + path + "/", "redirect", headers={"Location": path + "/"}
                )
            return slot, scope, receive
        wanted = query_model(scope)
        if wanted is None and scope["type"] == "http" and content_type(scope).startswith(_BUFFERED):
            body = await self._read_body(receive)
            fields = body_fields(content_type(scope), body)
            wanted = fields.get("model") if isinstance(fields.get("model"), str) else None
            if wanted is None and path in ("/translate", "/translate_file"):  # LibreTranslate: the pair's model
                wanted = await self._by_pair(fields)
            receive = replay(body, receive)
        if wanted is None or wanted == self.default.name:
            return self.default, scope, receive
        if wanted in self.slots:
            return self.slots[wanted], scope, receive
        if _serves(self.default, scope):
            return self.default, scope, receive
        raise RequestError(404, f"unknown model {wanted!r}; this server serves {self.names()}", "not_found")

    async def _by_pair(self, fields: dict) -> str | None:
        """The model translating ``source`` (``auto``: the language detected in ``q``) to ``target``; None where no
        model does (the default model then answers, naming its pair)."""
        source, target = fields.get("source"), fields.get("target")
        if not isinstance(source, str) or not isinstance(target, str):
            return None
        if source == "auto":
            from turboseq.formats.languages import detect

            q = fields.get("q")
            text = (
                q if isinstance(q, str) else " ".join(t for t in q if isinstance(t, str)) if isinstance(q, list) else ""
            )
            if not text.strip():
                return None
            source = (await asyncio.get_running_loop().run_in_executor(None, detect, text[:2000], 1))[0][0]
        return next((name for name, pair in self.pairs.items() if pair == (source, target)), None)

    def _named(self, name: str) -> Slot:
        if name not in self.slots:
            raise RequestError(404, f"unknown model {name!r}; this server serves {self.names()}", "not_found")
        return self.slots[name]

    def names(self) -> str:
        return ", ".join(repr(n) for n in self.slots)

    async def _read_body(self, receive) -> bytes:
        limit = self.config.max_payload_bytes or 25 << 20
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(499, "client closed the request", "client_closed")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise RequestError(413, f"request body over {limit} bytes", "payload_too_large")
            if not message.get("more_body"):
                return b"".join(chunks)

    # --- loading and unloading ---------------------------------------------------------------------------------

    async def _ready(self, slot: Slot, wait: bool = True) -> None:
        """Returns once ``slot`` is loaded (loading it if needed); 503 with Retry-After past ``load_wait_s``."""
        if self.draining:
            raise RequestError(503, "server is draining", "unavailable")
        deadline = time.monotonic() + self.options.load_wait_s
        while slot.state != "ready":
            if slot.state == "failed" and time.monotonic() - slot.failed_at < self.options.retry_failed_s:
                raise RequestError(503, f"model {slot.name!r} failed to load: {slot.error}", "model_load_failed")
            if slot.state in ("unloaded", "failed") and (slot.pending is None or slot.pending.done()):
                slot.pending = asyncio.create_task(self._load(slot))
            if not wait:
                return
            changed, left = slot.changed, deadline - time.monotonic()
            try:
                await asyncio.wait_for(changed.wait(), max(left, 0.0))
            except asyncio.TimeoutError:
                raise RequestError(
                    503, f"model {slot.name!r} is loading", "loading", headers={"Retry-After": "5"}
                ) from None

    async def _load(self, slot: Slot) -> None:
        async with slot.lock:
            if slot.state in ("ready", "loading"):
                return
            slot.set_state("loading")
            started = time.perf_counter()
            try:
                await self._make_room(slot, slot.resident or _estimate(slot.entry))
                loop = asyncio.get_running_loop()
                slot.app, slot.resident = await loop.run_in_executor(self.loader, self._load_model, slot.entry)
                await self._make_room(slot, 0)  # the estimate was short: the others make room now
                slot.lifespan = slot.app.router.lifespan_context(slot.app)
                await slot.lifespan.__aenter__()
                while not slot.service.ready:  # its lifespan marks it ready in a task of its own
                    await asyncio.sleep(0.005)
            except Exception as err:  # a broken directory: its requests get one line, the others go on
                slot.app = slot.lifespan = None
                slot.error, slot.failed_at = _one_line(err), time.monotonic()
                self.metrics.loads.labels(slot.name, "failed").inc()
                _log.error("turboseq: model %r failed to load: %s", slot.name, slot.error)
                slot.set_state("failed")
                return
            slot.last_used = time.monotonic()
            self.metrics.loads.labels(slot.name, "ok").inc()
            self.metrics.load_seconds.labels(slot.name).observe(time.perf_counter() - started)
            _log.info("turboseq: loaded %r (%.0f MB)", slot.name, slot.resident / 1e6)
            slot.set_state("ready")

    def _load_model(self, entry: ModelEntry):
        """In a loader thread: the model, its app, warmed up (its requests wait for it), and its bytes. Loads run
        one at a time (transformers' lazy imports are not safe in two threads at once, and peaks add up), but one
        that takes over ``LOAD_HANDOFF_S`` (a slow disk, a stuck network mount) holds up the next no longer."""
        got = self.load_lock.acquire(timeout=LOAD_HANDOFF_S)
        try:
            return self._build(entry)
        finally:
            if got:
                self.load_lock.release()

    def _build(self, entry: ModelEntry):
        from turboseq.load import load
        from turboseq.runtime.compute import weight_bytes
        from turboseq.runtime.memory import release_free_memory
        from turboseq.serving.app import create_app

        model = load(entry.path, compute_type=entry.compute_type)
        release_free_memory()  # the staging copies of a reduced compute type
        app = create_app(model, name=entry.name, config=self.config, warmup=False)
        if self.options.warmup:
            app.state.service.task.warm(self.config.max_batch_size)
            release_free_memory()  # the warm-up batch's activations
        spec = getattr(model, "spec", None)
        return app, weight_bytes(spec) if spec is not None else _estimate(entry)

    async def _make_room(self, coming: Slot, need: int) -> None:
        """Unloads the least recently used idle models until ``need`` more bytes fit in the memory budget beside
        ``coming`` (counted once its weights are in ``coming.resident``)."""
        budget = self.options.memory_budget
        if budget is None:
            return
        while True:
            held = [s for s in self.slots.values() if s.state == "ready"]
            loading = [s for s in self.slots.values() if s.state == "loading" and s is not coming]
            total = sum(s.resident for s in held) + sum(s.resident or _estimate(s.entry) for s in loading)
            if total + (coming.resident if coming.app is not None else 0) + need <= budget:
                return
            idle = sorted((s for s in held if s.in_flight == 0), key=lambda s: s.last_used)
            if not idle:
                _log.warning("turboseq: loading %r goes over --memory-budget: every loaded model is busy", coming.name)
                return
            await self._unload(idle[0], why="budget")

    async def _unload(self, slot: Slot, why: str) -> None:
        async with slot.lock:
            if slot.state != "ready" or (slot.in_flight and why != "shutdown"):
                return
            slot.set_state("unloaded")
            lifespan, slot.app, slot.lifespan = slot.lifespan, None, None
            await lifespan.__aexit__(None, None, None)
            del lifespan
            await asyncio.get_running_loop().run_in_executor(self.loader, _free_memory)
            self.metrics.unloads.labels(slot.name, why).inc()
            _log.info("turboseq: unloaded %r (%s)", slot.name, why)

    async def _unload_idle(self) -> None:
        limit = self.options.idle_unload_s
        while True:
            await asyncio.sleep(min(limit / 4, 5.0))
            now = time.monotonic()
            for slot in self.slots.values():
                if slot.state == "ready" and slot.in_flight == 0 and now - slot.last_used >= limit:
                    await self._unload(slot, why="idle")

    def drain(self) -> None:
        """SIGTERM: new requests get 503; each loaded model drains its own."""
        self.draining = True
        for slot in self.slots.values():
            if slot.service is not None:
                slot.service.draining = True


def _free_memory() -> None:
    import sys

    from turboseq.runtime.memory import release_free_memory

    # FastAPI caches facts about route handlers in functools caches that hold the handlers, and with them every
    # closure of an unloaded model's app (its model included): let them go
    for name, module in list(sys.modules.items()):
        if name.startswith("fastapi") and module is not None:
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
                    value.cache_clear()
    gc.collect()
    release_free_memory()


def _pair_of(entry: ModelEntry) -> tuple[str, str] | None:
    """A translation model's language pair, read from its directory without loading it."""
    from turboseq.formats.languages import language_pair

    path = entry.path / "config.json"
    if not path.is_file():  # a CTranslate2 directory, or one being written: no pair
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return language_pair(entry.path, config if isinstance(config, dict) else {})


def _estimate(entry: ModelEntry) -> int:
    """Bytes a model not loaded yet will hold: its weight files, scaled by its compute type."""
    files = [f for f in entry.path.glob("*") if f.suffix in (".safetensors", ".bin", ".pt")]
    size = sum(f.stat().st_size for f in files if f.is_file())
    return int(size * {"int8": 0.3, "bfloat16": 0.5}.get(entry.compute_type or "", 1.0))


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _serves(slot: Slot, scope) -> bool:
    """Whether the default model's app has a route for this request (it need not be loaded: its kind says)."""
    from starlette.routing import Match

    if slot.app is None:
        return True  # not loaded: its own app answers a route it lacks with a 404 naming the route
    return any(route.matches(scope)[0] == Match.FULL for route in slot.app.router.routes)
