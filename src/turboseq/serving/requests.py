"""Request bodies and errors: everything the server checks before a request reaches a task's engine.

Nothing here touches tensors: bodies are decoded and checked, and every failure is a ``RequestError`` with its
HTTP status and a JSON ``{"error", "error_type"}`` body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

# turboseq-only arguments a client may not set (the server owns batching)
SERVER_OWNED = {"max_batch_size", "max_batch_tokens", "progress", "batch_size", "on_tokens", "abandoned"}


class RequestError(Exception):
    """An error answered with ``status`` and JSON ``{"error": message, "error_type": kind}``."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        # a message may quote the client's own text: a lone surrogate in it could not be encoded as UTF-8
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def internal_error(err: BaseException) -> dict:
    """A bug's answer: a generic body with an id; the details go to the log under that id, not to the client."""
    import logging
    import uuid

    error_id = uuid.uuid4().hex[:12]
    logging.getLogger("turboseq.server").error("internal error %s", error_id, exc_info=err)
    return {"error": f"internal error (id {error_id})", "error_type": "internal"}


def invalid(message: str) -> RequestError:
    return RequestError(422, message, "validation_error")


def over_limit(message: str) -> RequestError:
    return RequestError(422, message, "over_limit")


def check_parameter_size(params, max_items: int, max_chars: int) -> None:
    """422 when a request's parameters hold more list items (``bad_words_ids``, ``stop``, ``suppress_tokens``,
    ... counted through nesting) or more characters of text than the server allows: each one costs the
    engine work at every step, so a small body must not buy minutes of it."""
    items = chars = 0
    stack = [params]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            items += len(value)
            chars += sum(len(k) for k in value)
            stack.extend(value.values())
        elif isinstance(value, list):
            items += len(value)
            stack.extend(value)
        elif isinstance(value, str):
            chars += len(value)
        if items > max_items:
            raise over_limit(
                f"the parameters hold over {max_items} list items; the server's limit is {max_items} "
                "(--max-parameter-items)"
            )
        if chars > max_chars:
            raise over_limit(
                f"the parameters hold over {max_chars} characters of text; the server's limit is {max_chars} "
                "(--max-parameter-chars)"
            )


# --- request bodies ---------------------------------------------------------------------------------------------


def check_size(size: int, limit: int) -> None:
    if size > limit:  # the rest of the body is not read: the connection closes after the answer
        raise RequestError(
            413,
            f"request body of {size} bytes is over the limit of {limit}",
            "payload_too_large",
            {"Connection": "close"},
        )


def check_not_server_owned(params: dict) -> None:
    owned = SERVER_OWNED & set(params)
    if owned:
        raise ValueError(f"parameter(s) set by the server, not per request: {', '.join(sorted(owned))}")


async def read_body(request, limit: int, timeout_s: float) -> bytes:
    """The request's body, counted as it arrives: 413 as soon as it passes ``limit`` bytes (chunked uploads
    included, whatever Content-Length says), 408 when it has not fully arrived within ``timeout_s``."""
    import asyncio

    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_size(int(declared), limit)
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(deadline - loop.time(), 0.0))
        except StopAsyncIteration:
            break
        except ClientDisconnect:  # the client left mid-body (or its connection was refused below HTTP)
            raise RequestError(499, "client closed the request", "client_closed") from None
        except asyncio.TimeoutError:
            raise RequestError(
                408, f"request body not received within {timeout_s:g} s", "timeout", {"Connection": "close"}
            ) from None
        size += len(chunk)
        check_size(size, limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # starlette reads a consumed body from here (request.body(), request.form())
    return body


def decode_json(raw: bytes, limit: int):
    check_size(len(raw), limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(
            400, f"request body is not valid UTF-8 ({err.reason} at byte {err.start})", "invalid_utf8"
        ) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply", "invalid_json") from None
    except ValueError as err:
        raise RequestError(400, f"malformed JSON: {err}", "invalid_json") from None


def check_json_content_type(content_type: str) -> None:
    """JSON bodies must say so (or say nothing): an image or a form is not parsed as JSON."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in ("", "application/json") and not ctype.endswith("+json"):
        raise RequestError(415, f"unsupported content type {ctype!r}: send application/json", "unsupported_media_type")


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


S = TypeVar("S")  # a task's resolved request settings (``Task.prepare``)


@dataclass(frozen=True)
class Prepared(Generic[S]):
    """A request's parameters, resolved once by its task (``Task.prepare``) and carried with its job:
    ``settings`` are the task's own type (the server never looks inside); requests with equal ``key`` may share
    an engine batch, and a None key runs alone. Frozen: a task that narrows them (``check_cost``) replaces them."""

    settings: S
    key: str | None


@dataclass
class Parsed:
    """A request turned into engine rows: ``rows`` are the non-blank inputs, answered at ``slots`` among the
    ``count`` answers; blank inputs get the task's empty answer without running the model. ``prepared`` is
    set once the parameters are checked (``Service.admit``)."""

    rows: list
    slots: list[int]
    count: int
    params: dict
    single: bool = False  # ``inputs`` was one value, not a list
    prepared: Prepared[Any] | None = None
    release: Callable[[], None] | None = None  # gives back what parsing holds (decoded audio), once answered
    options: dict = field(default_factory=dict)  # a route's own settings for ``Task.prepare`` (never a client's)
