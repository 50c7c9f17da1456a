"""The routes of Hugging Face text-embeddings-inference (TEI) and OpenAI's embeddings, for encoder models.

A client written against TEI switches by changing its URL: ``/embed``, ``/embed_all``, ``/similarity``,
``/predict``, ``/rerank``, ``/tokenize``, ``/decode`` take TEI's bodies and answer in its shapes, and ``/info``
carries the fields TEI clients read. Errors are TEI's ``{"error", "error_type"}`` with its status codes (413 for
too many inputs, 422 for a bad one). Each handler gets the model's task (``serving.encoders``) and the server's
``Service``; the engine batches are the task's.
"""

from __future__ import annotations

import base64
import math
import struct

from turboseq.serving.requests import (
    Parsed,
    RequestError,
    check_json_content_type,
    decode_json,
    invalid,
    json_fields,
    text_list,
)
from turboseq.version import __version__

# OpenAI's limit of inputs per embeddings request (each engine batch still takes at most --max-batch-size)
MAX_EMBEDDING_INPUTS = 2048
TOKENIZING = ("truncate", "truncation_direction", "prompt_name")


async def _body(service, request, allowed: set[str], required: str) -> dict:
    service.ensure_ready()
    check_json_content_type(request.headers.get("content-type", ""))
    raw = await service.read_body(request)
    return json_fields(decode_json(raw, service.config.max_payload_bytes), allowed, required)


def _params(body: dict, names) -> dict:
    """The body's fields among ``names`` that are set (a JSON null is the default)."""
    return {n: body[n] for n in names if body.get(n) is not None}


async def embed(task, service, request):
    """``{"inputs": str | [str] | [int] | [[int]], "normalize": true, "truncate", "truncation_direction",
    "dimensions"}`` -> one vector per input (normalized unless ``normalize`` is false, as TEI does)."""
    body = await _body(service, request, {"inputs", "normalize", "dimensions", *TOKENIZING}, "inputs")
    params = {"normalize": True, **_params(body, ("normalize", "dimensions", *TOKENIZING))}
    parsed = await _inputs(task, service, body["inputs"], params)
    return task.respond(await service.infer(request, parsed), parsed)


async def embed_all(task, service, request):
    """``{"inputs", "truncate", "truncation_direction"}`` -> each input's token states ``[[[float]]]``."""
    body = await _body(service, request, {"inputs", *TOKENIZING}, "inputs")
    parsed = await _inputs(task, service, body["inputs"], _params(body, TOKENIZING))
    parsed.options = {"output": "states"}
    return await service.infer(request, parsed)


async def _inputs(task, service, value, params: dict) -> Parsed:
    """TEI's ``inputs``: texts (tokenized here), or token ids already (one list, or a list of lists; used as
    they are, special tokens included or not as the client made them, cut to the limit with ``truncate``)."""
    rows = token_rows(value)
    if rows is None:
        inputs = text_list(value, "inputs")
        task.check_count(len(inputs))
        return await service.off_loop(task.tokenize, inputs, params, False, True)
    from turboseq.serving.text import truncation_of, truncation_side_of

    task.check_count(len(rows))
    task.check_prompt(params)
    vocab, limit = len(task.model.tokenizer), task.max_input_tokens
    truncate, left = truncation_of(params), truncation_side_of(params) == "left"
    for i, row in enumerate(rows):
        if not row or any(isinstance(t, bool) or not 0 <= t < vocab for t in row):
            raise invalid(f"`inputs` {i}: token ids must be a non-empty list of integers from 0 to {vocab - 1}")
        if len(row) > limit:
            if not truncate:
                raise RequestError(
                    422,
                    f"input {i} has {len(row)} tokens; the server accepts at most {limit} (set truncate to cut it)",
                    "input_too_long",
                )
            rows[i] = row[-limit:] if left else row[:limit]
    return Parsed(rows, list(range(len(rows))), len(rows), params, False)


def token_rows(value) -> list[list[int]] | None:
    """``value`` as lists of token ids where it is TEI's ids input (``[int]`` or ``[[int]]``), else None."""
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [list(value)]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(r, list) and all(isinstance(t, int) for t in r) for r in value)
    ):
        return [list(r) for r in value]
    return None


async def similarity(task, service, request):
    """``{"inputs": {"source_sentence", "sentences"}, "parameters": {...}}`` -> one cosine per sentence."""
    body = await _body(service, request, {"inputs", "parameters"}, "inputs")
    params = body.get("parameters") or {}
    if not isinstance(params, dict) or not isinstance(body["inputs"], dict):
        raise invalid('`inputs` must be {"source_sentence": ..., "sentences": [...]} and `parameters` an object')
    parsed = await service.off_loop(task.parse_similarity, body["inputs"], params)
    return task.respond(await service.infer(request, parsed), parsed)


def _is_pair(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def predict_items(value) -> tuple[list, bool]:
    """TEI's ``/predict`` inputs: a text or a pair ``[text, text]`` (one answer), or a list of texts and pairs
    (a list of answers). A list of exactly two texts is a pair, as TEI reads it."""
    if isinstance(value, str):
        return [value], True
    if _is_pair(value):
        return [tuple(value)], True
    if isinstance(value, list) and value and all(isinstance(v, str) or _is_pair(v) for v in value):
        return [v if isinstance(v, str) else tuple(v) for v in value], False
    raise invalid("`inputs` must be a text, a pair [text, text], or a non-empty list of texts and pairs")


async def predict(task, service, request):
    """``{"inputs", "raw_scores": false, "truncate", "truncation_direction"}`` -> every label with its score,
    best first (softmax, or sigmoid for one output; the logits with ``raw_scores``)."""
    body = await _body(service, request, {"inputs", "raw_scores", *TOKENIZING}, "inputs")
    items, single = predict_items(body["inputs"])
    task.check_count(len(items))
    raw = _flag(body, "raw_scores")
    parsed = await service.off_loop(task.tokenize_items, items, _params(body, TOKENIZING))
    answers = [_scored(task, logits, raw) for logits in await service.infer(request, parsed)]
    return answers[0] if single else answers


def _scored(task, logits: list[float], raw: bool) -> list[dict]:
    ranked = task.ranked(logits, "none" if raw else "default")
    return [{"score": r["score"], "label": r["label"]} for r in ranked]


def _flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"`{name}` must be a boolean")
    return value


async def rerank(task, service, request):
    """``{"query", "texts", "raw_scores": false, "return_text": false, "truncate", "truncation_direction"}`` ->
    ``[{"index", "score", "text"?}]``, most relevant first (the re-ranker's sigmoid, or its logit)."""
    body = await _body(service, request, {"query", "texts", "raw_scores", "return_text", *TOKENIZING}, "query")
    query = body["query"]
    if not isinstance(query, str):
        raise invalid("`query` must be a string")
    texts = text_list(body.get("texts"), "texts") if "texts" in body else []
    if not texts:
        raise invalid("`texts` must be a non-empty list of strings")
    task.check_count(len(texts))
    raw, with_text = _flag(body, "raw_scores"), _flag(body, "return_text")
    parsed = await service.off_loop(task.tokenize_items, [(query, t) for t in texts], _params(body, TOKENIZING))
    logits = [row[0] for row in await service.infer(request, parsed)]
    scores = logits if raw else [1 / (1 + math.exp(-x)) for x in logits]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    return [{"index": i, "score": scores[i], **({"text": texts[i]} if with_text else {})} for i in order]


async def tokenize(task, service, request):
    """``{"inputs": str | [str], "add_special_tokens": true}`` -> per input, its tokens
    ``{"id", "text", "special", "start", "stop"}`` (character offsets; none for special tokens)."""
    body = await _body(service, request, {"inputs", "add_special_tokens", "prompt_name"}, "inputs")
    inputs = text_list(body["inputs"], "inputs")
    task.check_count(len(inputs))
    task.check_prompt(body)
    specials = _flag(body, "add_special_tokens", True)
    return await service.off_loop(_tokens, task, inputs, specials)


def _tokens(task, texts: list[str], add_special_tokens: bool) -> list[list[dict]]:
    tokenizer = task.model.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise RequestError(
            422, "this model's tokenizer gives no character offsets (not a fast tokenizer)", "validation"
        )
    with task.tokenizer_lock:
        out = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        special = set(tokenizer.all_special_ids)
        result = []
        for text, ids, offsets in zip(texts, out["input_ids"], out["offset_mapping"]):
            names = tokenizer.convert_ids_to_tokens(ids)
            tokens = []
            for token, name, (start, stop) in zip(ids, names, offsets):
                is_special = token in special
                tokens.append(
                    {
                        "id": token,
                        "text": name if is_special else text[start:stop],
                        "special": is_special,
                        "start": None if is_special else start,
                        "stop": None if is_special else stop,
                    }
                )
            result.append(tokens)
    return result


async def decode(task, service, request):
    """``{"ids": [int] | [[int]], "skip_special_tokens": true}`` -> one text per list of ids."""
    body = await _body(service, request, {"ids", "skip_special_tokens"}, "ids")
    ids = body["ids"]
    rows = ids if isinstance(ids, list) and ids and all(isinstance(r, list) for r in ids) else [ids]
    vocab = len(task.model.tokenizer)
    for row in rows:
        if not isinstance(row, list) or not all(type(i) is int and 0 <= i < vocab for i in row):
            raise invalid(f"`ids` must be a list (or a list of lists) of token ids from 0 to {vocab - 1}")
    task.check_count(len(rows))
    skip = _flag(body, "skip_special_tokens", True)

    def run():
        with task.tokenizer_lock:
            return task.model.tokenizer.batch_decode(rows, skip_special_tokens=skip)

    return await service.off_loop(run)


def info(task, service, model_type: dict) -> dict:
    """The fields of TEI's ``/info`` (``version`` stays turboseq's)."""
    config = service.config
    return {
        "model_id": service.name,
        "model_sha": None,
        "model_dtype": getattr(task.model, "compute_type", "float32"),
        "model_type": model_type,
        "prompts": None,
        "max_concurrent_requests": config.max_queue,
        "max_input_length": task.max_input_tokens,
        "max_batch_tokens": config.max_batch_tokens,
        "max_batch_requests": config.max_batch_size,
        "max_client_batch_size": task.max_batch_size,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "sha": None,
        "docker_label": f"turboseq-{__version__}",
    }


async def openai_embeddings(task, service, request):
    """OpenAI's embeddings: ``encoding_format`` float or base64 (the ``openai`` SDK asks for base64 unless told
    otherwise), ``dimensions`` (the first ones, normalized again where the model normalizes, as TEI does), and
    up to ``MAX_EMBEDDING_INPUTS`` inputs, queued in engine batches."""
    body = await _body(service, request, {"input", "model", "encoding_format", "dimensions", "user"}, "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid('`encoding_format` must be "float" or "base64"')
    dimensions = body.get("dimensions")
    try:
        task.check_dimensions(dimensions)
    except ValueError as err:
        raise invalid(str(err)) from None
    inputs = text_list(body["input"], "input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise RequestError(
            413, f"{len(inputs)} inputs in one request; the limit is {MAX_EMBEDDING_INPUTS}", "too_many_inputs"
        )
    vectors, tokens = await service.infer_in_batches(request, inputs, {})
    if dimensions is not None:
        vectors = [shortened(v, dimensions, task.model.spec.pooling.normalize) for v in vectors]
    if encoding == "base64":  # little-endian float32, as OpenAI sends them
        vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii") for v in vectors]
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": service.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def cosines(source: list[float], others: list[list[float]]) -> list[float]:
    """The cosine of ``source`` with each of ``others`` (0 where either is empty or zero)."""

    def norm(v):
        return math.sqrt(sum(x * x for x in v))

    base = norm(source)
    out = []
    for v in others:
        n = norm(v) * base
        out.append(sum(a * b for a, b in zip(source, v)) / n if n > 0 else 0.0)
    return out


def shortened(vector: list[float], dimensions: int, normalize: bool) -> list[float]:
    """The first ``dimensions`` values, scaled back to unit length when the model's vectors are normalized."""
    head = vector[:dimensions]
    if not normalize:
        return head
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head
