"""Request bodies and errors: everything the server checks before a request reaches a task's engine.

Nothing here touches tensors: bodies are decoded and checked, and every failure is a ``RequestError`` with its
HTTP status and a JSON ``{"error", "error_type"}`` body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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
        raise RequestError(
            400, f"request body is not valid UTF-8 ({err.reason} at byte {err.start})", "invalid_utf8"
        ) from None
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
class Prepared:
    """A request's parameters, resolved once by its task (``Task.prepare``) and carried with its job:
    ``settings`` are the task's own (the server never looks inside); requests with equal ``key`` may share an
    engine batch, and a None key runs alone."""

    settings: Any
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
    prepared: Prepared | None = None
