"""Reading what a request asks for before it is routed (``serving.hub``): its ``model`` (query string, JSON body
or form) and the body, read ahead and replayed to the model's app."""

from __future__ import annotations

import json
import re


def content_type(scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return value.decode("latin-1").lower()
    return ""


def query_model(scope) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("model")
    return values[0] if values else None


def body_fields(content_type: str, body: bytes) -> dict:
    """The top-level fields of a JSON body or a form (not its files); empty where the body is not readable (the
    model's own app answers that)."""
    from urllib.parse import parse_qs

    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[0] for k, v in parse_qs(body.decode("latin-1")).items()}
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if boundary is None:
        return {}
    fields = {}
    for part in body.split(b"--" + boundary.group(1).encode("latin-1"))[1:]:
        head, sep, value = part.partition(b"\r\n\r\n")
        named = re.search(rb'content-disposition:[^\r\n]*\bname="([^"]+)"', head, re.IGNORECASE)
        if sep and named and b"filename=" not in head.lower():
            fields[named.group(1).decode("utf-8", "replace")] = value.removesuffix(b"\r\n").decode("utf-8", "replace")
    return fields


def replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # the client leaving

    return replay


async def no_body():
    return {"type": "http.request", "body": b"", "more_body": False}
