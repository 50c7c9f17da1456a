"""LibreTranslate's routes, for translation models: a client written against LibreTranslate switches by
changing its URL.

``POST /translate`` (``q`` a text or a list, ``source`` including ``auto``, ``target``, ``format``,
``alternatives``, ``api_key``), ``POST /detect``, ``GET /languages`` and ``GET /frontend/settings``, with bodies
as JSON, a URL-encoded form (what ``libretranslatepy`` sends) or a multipart form (LibreTranslate's page). Errors
are LibreTranslate's ``{"error": ...}`` with status 400 for a bad request (``error_type`` rides along). The
server translates the one pair its model names (``formats.languages.language_pair``); ``source: auto`` detects
the language, reports it, and refuses a text confidently detected as another language than the model's source.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from turboseq.formats.documents import FORMATS, split_document
from turboseq.formats.languages import detect, language_name
from turboseq.serving.requests import RequestError, decode_json

MAX_ALTERNATIVES = 8
# a text whose most likely language is another than the model's source with at least this probability is refused
REFUSE_CONFIDENCE = 0.5


def bad_request(message: str) -> RequestError:
    return RequestError(400, message, "bad_request")


async def _fields(service, request) -> dict:
    """The body's fields, from JSON or a form; a field repeated in a form is a list."""
    service.ensure_ready()
    raw = await service.read_body(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise bad_request("the form is not valid UTF-8") from None
        return {k: v[0] if len(v) == 1 else v for k, v in form.items()}
    if ctype == "multipart/form-data":
        form = await request.form()
        return {k: (lambda vs: vs[0] if len(vs) == 1 else vs)(form.getlist(k)) for k in form.keys()}
    if ctype and ctype != "application/json":
        raise RequestError(415, f"unsupported content type {ctype!r}: send JSON or a form", "unsupported_media_type")
    if not raw.strip():
        return {}
    body = decode_json(raw, service.config.max_payload_bytes)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _texts(value) -> tuple[list[str], bool]:
    if value is None:
        raise bad_request("Invalid request: missing q parameter")
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value, False
    raise bad_request("`q` must be a text or a list of texts")


def _code(fields: dict, name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"Invalid request: missing {name} parameter")
    return value.strip().lower()


def _alternatives(fields: dict) -> int:
    value = fields.get("alternatives", 0)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise bad_request("`alternatives` must be a whole number") from None
    if not 0 <= count <= MAX_ALTERNATIVES:
        raise bad_request(f"`alternatives` must be from 0 to {MAX_ALTERNATIVES}")
    return count


def _detected(text: str) -> dict:
    (code, p), *_ = detect(text, 1)
    return {"language": code, "confidence": round(100 * p, 1)}


def _check_pair(task, source: str, target: str) -> None:
    if task.pair is None:
        return
    src, tgt = task.pair
    if source not in (src, "auto") or target != tgt:
        raise bad_request(
            f"this server translates {language_name(src)} ({src}) to {language_name(tgt)} ({tgt}), "
            f"not {source} to {target}"
        )


async def translate(task, service, request):
    """``q`` translated as documents: cut into sentences (``format`` text or html), all sentences queued as
    engine batches, put back around the markup and whitespace. With ``alternatives``, each ``q`` is one
    sentence and beam search's next-best translations come with it."""
    fields = await _fields(service, request)
    texts, single = _texts(fields.get("q"))
    source, target = _code(fields, "source"), _code(fields, "target")
    _check_pair(task, source, target)
    fmt = fields.get("format", "text")
    if fmt not in FORMATS:
        raise bad_request('`format` must be "text", "html" or "markdown"')
    alternatives = _alternatives(fields)
    task.check_count(len(texts))
    language = source if source != "auto" else task.pair[0] if task.pair else None
    documents = await service.off_loop(_documents, task, texts, fmt, language)
    detected = None
    if source == "auto":
        detected = [await service.off_loop(_detected, " ".join(d.units)) for d in documents]
        _refuse_other_language(task, detected, single)
    if alternatives:
        params = {"num_beams": max(task.model.settings().num_beams, alternatives + 1)}
        parsed = await service.off_loop(task.tokenize, texts, {**params, "num_return_sequences": alternatives + 1})
        answers = await service.infer(request, parsed)
        firsts, rest = [a[0] for a in answers], [list(a[1:]) for a in answers]
    else:
        units = [unit for d in documents for unit in d.units]
        translated = iter((await service.infer_in_batches(request, units, {}))[0])
        firsts = [d.join([next(translated) for _ in d.slots]) for d in documents]
    body: dict = {"translatedText": firsts[0] if single else firsts}
    if alternatives:
        body["alternatives"] = rest[0] if single else rest
    if detected is not None:
        body["detectedLanguage"] = detected[0] if single else detected
    return body


def _documents(task, texts: list[str], fmt: str, language: str | None) -> list:
    limit = task.max_input_tokens

    def fits(sentence: str) -> bool:
        with task.tokenizer_lock:
            return len(task.model.tokenizer(sentence)["input_ids"]) <= limit

    return [split_document(t, fmt, language, fits) for t in texts]


def _refuse_other_language(task, detected: list[dict], single: bool) -> None:
    if task.pair is None:
        return
    for i, d in enumerate(detected):
        if d["language"] != task.pair[0] and d["confidence"] >= 100 * REFUSE_CONFIDENCE:
            where = "the text" if single else f"text {i}"
            raise bad_request(
                f"{where} was detected as {language_name(d['language'])} ({d['language']}, "
                f"{d['confidence']:g}% confident); this server translates from "
                f"{language_name(task.pair[0])} ({task.pair[0]})"
            )


async def detect_language(task, service, request):
    fields = await _fields(service, request)
    texts, _single = _texts(fields.get("q"))
    ranked = await service.off_loop(detect, "\n".join(texts), 3)
    return [{"language": code, "confidence": round(100 * p, 1)} for code, p in ranked]


async def languages(task, service, request):
    service.ensure_ready()
    if task.pair is None:
        return []
    src, tgt = task.pair
    return [{"code": src, "name": language_name(src), "targets": [tgt]}]


async def frontend_settings(task, service, request):
    src, tgt = task.pair or ("auto", "auto")
    return {
        "charLimit": 64 * task.max_input_tokens * task.max_batch_size,
        "frontendTimeout": 500,
        "apiKeys": False,
        "keyRequired": False,
        "suggestions": False,
        "filesTranslation": False,
        "supportedFilesFormat": [],
        "language": {
            "source": {"code": src, "name": language_name(src)},
            "target": {"code": tgt, "name": language_name(tgt)},
        },
    }
