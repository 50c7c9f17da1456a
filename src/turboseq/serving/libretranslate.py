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

import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from urllib.parse import parse_qs, quote

from turboseq.formats.documents import FORMATS, split_document, translate_documents
from turboseq.formats.languages import detect, language_name
from turboseq.serving.requests import RequestError, decode_json

MAX_ALTERNATIVES = 8
# the files /translate_file takes, by extension, and the format each is translated as
FILE_FORMATS = {".txt": "text", ".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}
MEDIA_TYPES = {"text": "text/plain", "html": "text/html", "markdown": "text/markdown"}
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
    terms = _terms(fields)
    if terms and alternatives:
        raise bad_request("`glossary` and `keep_spans` do not combine with `alternatives`")
    task.check_count(len(texts))
    documents, detected = await _read_documents(task, service, texts, fmt, source, single)
    if alternatives:
        params = {"num_beams": max(task.model.settings().num_beams, alternatives + 1)}
        parsed = await service.off_loop(task.tokenize, texts, {**params, "num_return_sequences": alternatives + 1})
        answers = await service.infer(request, parsed)
        firsts, rest = [a[0] for a in answers], [list(a[1:]) for a in answers]
    else:
        firsts = await _translate_documents(service, request, documents, terms)
    body: dict = {"translatedText": firsts[0] if single else firsts}
    if alternatives:
        body["alternatives"] = rest[0] if single else rest
    if detected is not None:
        body["detectedLanguage"] = detected[0] if single else detected
    return body


def _terms(fields: dict) -> dict:
    """turboseq's own fields: ``glossary`` (an object of source terms to target terms; in a form, as JSON) and
    ``keep_spans`` (URLs, e-mail addresses, numbers and ``{variables}`` kept as they are)."""
    glossary, keep = fields.get("glossary"), fields.get("keep_spans", False)
    if isinstance(glossary, str):
        try:
            glossary = json.loads(glossary) if glossary.strip() else None
        except ValueError:
            raise bad_request("`glossary` must be a JSON object of source terms to target terms") from None
    if isinstance(keep, str):
        if keep.lower() not in ("true", "false", "1", "0", ""):
            raise bad_request("`keep_spans` must be true or false")
        keep = keep.lower() in ("true", "1")
    if glossary is not None and not (
        isinstance(glossary, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in glossary.items())
    ):
        raise bad_request("`glossary` must be an object of source terms to target terms (strings)")
    if not isinstance(keep, bool):
        raise bad_request("`keep_spans` must be true or false")
    return ({"glossary": glossary} if glossary else {}) | ({"keep_spans": True} if keep else {})


async def _read_documents(task, service, texts: list[str], fmt: str, source: str, single: bool):
    """The texts as documents, and with ``source`` auto, the language detected in each (a text confidently in
    another language than the model's source is refused)."""
    language = source if source != "auto" else task.pair[0] if task.pair else None
    documents = await service.off_loop(_documents, task, texts, fmt, language)
    detected = None
    if source == "auto":
        detected = [await service.off_loop(_detected, " ".join(d.units)) for d in documents]
        _refuse_other_language(task, detected, single)
    return documents, detected


async def _translate_documents(service, request, documents: list, params: dict) -> list[str]:
    """Every sentence of every document queued as engine batches, each document put back together (in two
    rounds where inline markup is not placed in the first: ``formats.documents.translate_documents``)."""
    rounds = translate_documents(documents)
    try:
        units = next(rounds)
        while True:
            units = rounds.send((await service.infer_in_batches(request, units, params))[0])
    except StopIteration as done:
        return done.value
    except RequestError as err:  # LibreTranslate answers a bad request with 400
        raise bad_request(err.message) if err.status == 422 else err from None


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
        "filesTranslation": True,
        "supportedFilesFormat": list(FILE_FORMATS),
        "language": {
            "source": {"code": src, "name": language_name(src)},
            "target": {"code": tgt, "name": language_name(tgt)},
        },
    }


class TranslatedFiles:
    """Translated files kept for their download (``/translate_file`` answers a URL, as LibreTranslate does):
    each for ``keep_s`` seconds, at most ``max_files`` of them and ``max_bytes`` together (the oldest leave
    first). One store per process: every model's app and the many-model server's own routes serve it."""

    def __init__(self, keep_s: float = 1800.0, max_files: int = 256, max_bytes: int = 256 << 20):
        self.keep_s, self.max_files, self.max_bytes = keep_s, max_files, max_bytes
        self._files: OrderedDict[str, tuple[float, str, bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes, media_type: str) -> str:
        """Keeps ``data`` under a new unguessable key (which ends with the file's name) and returns the key."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-120:] or "file"
        key = f"{uuid.uuid4().hex}.{safe}"
        with self._lock:
            self._files[key] = (time.monotonic(), name, data, media_type)
            self._expire()
        return key

    def get(self, key: str) -> tuple[str, bytes, str] | None:
        """(the file's name, its bytes, its media type), or None where there is no such file (any more)."""
        with self._lock:
            self._expire()
            found = self._files.get(key)
        return None if found is None else found[1:]

    def _expire(self) -> None:
        now = time.monotonic()
        size = sum(len(f[2]) for f in self._files.values())
        while self._files:
            key, (made, _, data, _) = next(iter(self._files.items()))
            if now - made <= self.keep_s and len(self._files) <= self.max_files and size <= self.max_bytes:
                break
            del self._files[key]
            size -= len(data)


FILES = TranslatedFiles()


async def translate_file(task, service, request):
    """LibreTranslate's ``/translate_file``: a multipart form's ``file`` (``.txt``, ``.html``/``.htm``,
    ``.md``, UTF-8) translated as a document of its format; answers ``translatedFileUrl``, where the
    translation can be downloaded (``/download_file/...``) for 30 minutes."""
    fields = await _fields(service, request)
    upload = fields.get("file")
    if upload is None:
        raise bad_request("Invalid request: missing file parameter")
    if isinstance(upload, (str, list)) or not hasattr(upload, "read"):
        raise bad_request("`file` must be one file uploaded in a multipart form")
    name = os.path.basename((upload.filename or "").replace("\\", "/"))
    if not name:
        raise bad_request("Invalid request: empty file")
    extension = os.path.splitext(name)[1].lower()
    fmt = FILE_FORMATS.get(extension)
    if fmt is None:
        raise bad_request(
            f"Invalid request: file format {extension or '(none)'} not supported; supported: {', '.join(FILE_FORMATS)}"
        )
    source, target = _code(fields, "source"), _code(fields, "target")
    _check_pair(task, source, target)
    terms = _terms(fields)
    try:
        text = (await upload.read()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request(f"{name} is not UTF-8 text") from None
    documents, _ = await _read_documents(task, service, [text], fmt, source, True)
    translated = (await _translate_documents(service, request, documents, terms))[0]
    key = FILES.put(name, translated.encode("utf-8"), MEDIA_TYPES[fmt] + "; charset=utf-8")
    return {"translatedFileUrl": f"{str(request.base_url).rstrip('/')}/download_file/{quote(key)}"}


async def download_file(key: str):
    """A translated file, as an attachment under its original name; 404 where there is none by ``key``."""
    from fastapi.responses import Response

    found = FILES.get(key)
    if found is None:
        raise RequestError(
            404, "Invalid filename: no translated file by that name (they are kept for 30 minutes)", "not_found"
        )
    name, data, media_type = found
    disposition = f"attachment; filename*=UTF-8''{quote(name)}"
    return Response(data, media_type=media_type, headers={"Content-Disposition": disposition})
