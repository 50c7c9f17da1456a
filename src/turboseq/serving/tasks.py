"""Serving tasks: everything the HTTP server needs to know about one kind of model.

The server (``serving.app``, ``serving.batcher``) owns HTTP, the queue, dynamic batching, timeouts,
disconnects, drain and metrics, and knows nothing of text, audio or vectors. A ``Task`` says how a request
body becomes engine rows, how its parameters resolve into settings (once, carried with the job), how much
of the batch budget a row takes, how a batch runs, how answers are shaped, which extra routes (OpenAI's)
exist and how to warm up. Tasks are registered per model class (``@register(ModelClass)``): a new kind of
model plugs in by registering its task, with no server change. The built-in ones live in ``serving.text``,
``serving.encoders``, ``serving.causal`` and ``serving.speech``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic

from turboseq.serving.requests import Parsed, Prepared, RequestError, S, invalid, over_limit

__all__ = [
    "Task",
    "Joining",
    "S",
    "Route",
    "register",
    "task_for",
    "Parsed",
    "Prepared",
    "RequestError",
    "invalid",
    "TASKS",
]


@dataclass
class Route:
    """An extra endpoint of a task: ``handler(service, request)`` is awaited; ``service`` is the server's
    (``app.Service``: ``ensure_ready``, ``infer``, ``config``, ``metrics``). ``websocket``: a WebSocket route,
    ``handler(service, websocket)``."""

    path: str
    handler: Callable
    methods: tuple[str, ...] = ("POST",)
    websocket: bool = False


@dataclass
class Joining:
    """Requests (their rows one after the other) as searches that join the running batch (continuous
    batching): ``searches`` as ``Engine.searches`` gives them (``(inputs, build)`` each), and
    ``finish(indices, outputs)``, which turns the outputs of the rows ``indices`` into (one answer per row, tokens
    generated) as ``Task.run`` returns them (each request is finished apart, when its rows are done)."""

    searches: list
    finish: Callable[[list[int], list], tuple[list, int]]


class Task(Generic[S]):
    """One kind of model behind the server; ``S``: the type of its resolved request settings (``prepare``)."""

    name = "unknown"  # Hugging Face pipeline task, shown by /info
    payload_bytes = 1 << 20  # default body limit
    streams = False  # whether /generate_stream serves this task

    def __init__(self, model, config=None):
        """``config``: the server's ``ServerConfig`` (its limits), or None for the defaults."""
        from turboseq.serving.config import ServerConfig

        config = config or ServerConfig()
        self.model = model
        positions = model.spec.max_positions
        self.max_input_tokens = min(config.max_input_tokens or positions, positions)  # --max-input-tokens
        self.max_batch_size = config.max_batch_size  # inputs per engine batch and per request
        self.max_beams = config.max_beams  # the widest batch a warm-up runs
        self.max_new_tokens = config.max_new_tokens  # --max-new-tokens

    def parse(self, raw: bytes, content_type: str, limit: int) -> Parsed:
        """The body of ``POST /`` as engine rows; raises RequestError."""
        raise NotImplementedError

    def prepare(self, params: dict, **options) -> Prepared[S]:
        """The request's parameters resolved into the task's settings, and its batch key; raises
        ValueError/TypeError naming a bad parameter. ``options`` are a route's own (``Parsed.options``). By default the parameters are the settings, and requests
        with equal parameters share batches."""
        return Prepared(params, json.dumps(params, sort_keys=True))

    def check_count(self, count: int) -> None:
        """413 for more inputs than one engine batch takes (``Service.admit`` checks it too; tasks call it
        before tokenizing or decoding anything)."""
        if count > self.max_batch_size:
            raise RequestError(
                413, f"{count} inputs in one request; the limit is {self.max_batch_size}", "too_many_inputs"
            )

    def time_allowed(self, parsed: Parsed, config) -> float:
        """Seconds the request may take, queue included, before it is answered 504 (``--request-timeout-s``;
        tasks whose work grows with the input add to it)."""
        return config.request_timeout_s

    def check_cost(self, parsed: Parsed, limits) -> None:
        """Raises RequestError (422, naming the limit) when the request asks for more work than the server's
        ``limits`` (``ServerConfig``) allow. Called once its settings are resolved, before it is queued."""

    def input_size(self, row) -> int:
        """A row's share of the batch budget (``--max-batch-tokens``)."""
        return len(row)

    def run(self, rows: list, settings: S, abandoned=None, on_tokens=None) -> tuple[list, int]:
        """One engine batch: (one answer per row, tokens generated). ``abandoned()`` names rows nobody waits
        for any more; ``on_tokens(rows, tokens)`` receives streamed tokens (streaming tasks only)."""
        raise NotImplementedError

    def joinable(self, settings: S) -> bool:
        """Whether requests with these settings may join a running batch (``join``) instead of waiting for it."""
        return False

    def joined_batch(self):
        """An empty continuous batch of the model (``generation.joining.JoinedBatch``), for ``join``'s searches."""
        return self.model.joined_batch()

    def join(self, rows: list, settings: S, abandoned=None, on_tokens=None) -> Joining | None:
        """``run``'s work as searches that join a running batch (engine thread), or None where this request must
        run as a batch of its own."""
        return None

    def empty(self, settings: S):
        """The answer to a blank input."""
        return None

    def respond(self, answers: list, parsed: Parsed):
        """The JSON body of ``POST /`` from one answer per input."""
        return answers

    def warm(self, batch_size: int) -> None:
        """Run a small and a full-size batch: kernels initialize and memory reaches its working set."""

    # streaming tasks (``streams = True``) also give:
    def check_stream(self, settings: S) -> None:
        """Raises RequestError when these settings cannot be streamed."""
        raise NotImplementedError

    def stream_end(self, answer, decoder) -> tuple[str, str]:
        """A finished stream's full text and finish reason, from its answer and its decoder."""
        return answer, decoder.finish_reason

    def stream_decoder(self, settings: S):
        """An object with ``push(token) -> {"id", "text", "special"}``, ``rest(final_text) -> str`` and
        ``finish_reason`` (see ``serving.text.TextStream``)."""
        raise NotImplementedError

    def routes(self) -> list[Route]:
        return []

    def info(self, service) -> dict:
        """Fields this task adds to ``GET /info`` (the ones its API's clients read)."""
        return {}


def sse_event(data: dict) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n"


class StreamEvents:
    """How a stream's events are written: TGI's ``/generate_stream`` format (a task route may pass another, e.g.
    OpenAI's completion chunks)."""

    def token(self, token: dict) -> list[str]:
        token = dict(token)
        top = token.pop("top_tokens", None)  # TGI sends them beside the token
        return [sse_event({"token": token} if top is None else {"token": token, "top_tokens": top})]

    def end(self, text: str, reason: str) -> list[str]:
        return [sse_event({"generated_text": text, "finish_reason": reason})]

    def error(self, body: dict) -> list[str]:
        return [sse_event(body)]


TASKS: dict[type, type[Task]] = {}


def register(model_class: type):
    """Class decorator: serve models of ``model_class`` (and subclasses) with this task."""

    def add(task_class: type[Task]) -> type[Task]:
        TASKS[model_class] = task_class
        return task_class

    return add


def task_for(model, config=None) -> Task:
    """The registered task of ``model``, with the limits of ``config`` (a ``ServerConfig``; None: defaults)."""
    for cls in type(model).__mro__:  # the most specific registration wins
        if cls in TASKS:
            return TASKS[cls](model, config)
    raise ValueError(f"no serving task is registered for {type(model).__name__}")


def check_generation_cost(s, inputs: int, limits) -> None:
    """The limits every generation request meets (``s``: its ``GenerationSettings``; ``inputs``: the engine rows
    it brings, before beams or sampled copies): beams, return sequences, new tokens, and their product."""
    if s.num_beams > limits.max_beams:
        raise over_limit(f"`num_beams` {s.num_beams} is over the server's limit of {limits.max_beams} (--max-beams)")
    if s.num_return_sequences > limits.max_return_sequences:
        raise over_limit(
            f"`num_return_sequences` {s.num_return_sequences} is over the server's limit of "
            f"{limits.max_return_sequences} (--max-return-sequences)"
        )
    new_tokens = s.max_length - s.prompt_length
    if limits.max_new_tokens is not None and new_tokens > limits.max_new_tokens:
        raise over_limit(
            f"{new_tokens} new tokens (max_new_tokens or max_length) is over the server's limit of "
            f"{limits.max_new_tokens} (--max-new-tokens)"
        )
    stops = s.stop_strings or ()
    if len(stops) > limits.max_stop_sequences:
        raise over_limit(
            f"{len(stops)} stop strings are over the server's limit of {limits.max_stop_sequences} "
            "(--max-stop-sequences)"
        )
    rows = max(s.num_beams, s.num_return_sequences)
    cost = inputs * rows * s.max_length
    if cost > limits.max_request_cost:
        raise over_limit(
            f"request cost {cost} ({inputs} inputs x {rows} beams or sequences x {s.max_length} "
            f"positions) is over the server's limit of {limits.max_request_cost} (--max-request-cost)"
        )


def doubling(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit``: the batch sizes a warm-up runs."""
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    return sizes + ([limit] if limit > 1 else [])
