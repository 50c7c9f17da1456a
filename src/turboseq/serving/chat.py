"""OpenAI's ``/v1/chat/completions`` for decoder-only models with a chat template: the conversation rendered by the
tokenizer's template (``CausalLM.encode_chat``), then generated as a completion; plain or streamed
(``chat.completion.chunk`` events, then ``[DONE]``), with ``logprobs``/``top_logprobs``."""

from __future__ import annotations

from turboseq.errors import InputTooLong
from turboseq.serving.logprobs import MAX_TOP_N_TOKENS, openai_logprobs
from turboseq.serving.openai_text import CompletionChunks, answer_head, completion_params
from turboseq.serving.requests import (
    Parsed,
    RequestError,
    check_json_content_type,
    decode_json,
    invalid,
    json_fields,
)

_CHAT_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "stream",
    "stream_options", "seed", "logprobs", "top_logprobs", "user", "presence_penalty", "frequency_penalty",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "metadata", "store",
}  # fmt: skip
_ROLES = ("system", "developer", "user", "assistant", "tool")


async def chat_completions(service, request):
    task = service.task
    service.ensure_ready()
    check_json_content_type(request.headers.get("content-type", ""))
    body = json_fields(
        decode_json(await service.read_body(request), service.config.max_payload_bytes), _CHAT_FIELDS, "messages"
    )
    messages = _messages(body["messages"])
    _, params, stream = completion_params(_as_completion(body))

    def encode():
        with task.tokenizer_lock:
            return task.model.encode_chat(messages, task.max_input_tokens)

    try:
        ids = await service.off_loop(encode)
    except InputTooLong as err:
        raise RequestError(
            422, f"the conversation has {err.tokens} tokens; the server accepts at most {err.limit}", "input_too_long"
        ) from None
    except ValueError as err:
        raise invalid(str(err)) from None
    except Exception as err:  # the template's own checks (jinja2 raise_exception: roles out of order, ...)
        raise invalid(f"the chat template refused the messages: {err}") from None
    parsed = Parsed([ids], [0], 1, params, False)
    parsed.options = {"trim_stop": True}
    head = answer_head("chatcmpl-", "chat.completion", service.name)
    if stream:
        if params["num_return_sequences"] != 1:
            raise invalid("streaming takes n=1")
        chunks = _ChatChunks({**head, "object": "chat.completion.chunk"}, params["stop_strings"], "details" in params)
        return await service.stream(request, parsed, chunks)
    (answer,) = await service.infer(request, parsed)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": None
            if answer.details is None
            else _chat_logprobs(openai_logprobs(answer.details.tokens, text)),
            "finish_reason": "length" if reason == "length" else "stop",
        }
        for i, (text, reason) in enumerate(zip(answer.texts, answer.reasons))
    ]
    new = sum(answer.new_tokens)
    usage = {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": new,
        "total_tokens": answer.prompt_tokens + new,
    }
    return {**head, "choices": choices, "usage": usage}


def _messages(value) -> list[dict]:
    """The conversation as the template takes it: roles and text contents (text parts joined)."""
    if not isinstance(value, list) or not value:
        raise invalid("`messages` must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise invalid(f"`messages[{i}]` must be an object whose `role` is one of {', '.join(_ROLES)}")
        content = message.get("content")
        if isinstance(content, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise invalid(f"`messages[{i}].content`: only text parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise invalid(f"`messages[{i}].content` must be a string or a list of text parts")
        if message.get("tool_calls"):
            raise invalid("tool calls are not supported")
        out.append({"role": message["role"], "content": content})
    return out


def _as_completion(body: dict) -> dict:
    """The chat request's generation fields under /v1/completions' names, checked there."""
    if body.get("tools") or body.get("tool_choice") not in (None, "none"):
        raise invalid("`tools` are not supported")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise invalid("`response_format` other than {'type': 'text'} is not supported")
    logprobs, top = body.get("logprobs", False), body.get("top_logprobs")
    if not isinstance(logprobs, bool):
        raise invalid("`logprobs` must be a boolean")
    if top is not None and (not logprobs or type(top) is not int or not 0 <= top <= MAX_TOP_N_TOKENS):
        raise invalid(f"`top_logprobs` must be an integer from 0 to {MAX_TOP_N_TOKENS}, with `logprobs` true")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise invalid("give `max_completion_tokens` or `max_tokens`, not both")
    length = body.get("max_completion_tokens", body.get("max_tokens"))
    fields = {k: body[k] for k in ("temperature", "top_p", "n", "stop", "stream", "seed") if k in body}
    # no length: TGI's default of 100 new tokens, within what the positions leave after the conversation
    fields.update(prompt="", max_tokens=length)
    if logprobs:
        fields["logprobs"] = top or 0
    return fields


def _chat_logprobs(completion: dict) -> dict:
    """OpenAI's chat ``logprobs`` from the completion form of the same tokens."""
    return {
        "content": [
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in top.items()
                ],
            }
            for token, logprob, top in zip(
                completion["tokens"], completion["token_logprobs"], completion["top_logprobs"]
            )
        ]
    }


class _ChatChunks(CompletionChunks):
    """Chat completion chunks: the first says the role, each carries a ``delta``."""

    first = True

    def chunk(self, text: str, reason: str | None, logprobs: dict | None) -> dict:
        delta = {"role": "assistant", "content": text} if self.first else ({"content": text} if text else {})
        self.first = False
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None if logprobs is None else _chat_logprobs(logprobs),
            "finish_reason": reason,
        }
        return {**self.head, "choices": [choice]}
