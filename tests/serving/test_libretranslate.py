"""LibreTranslate's routes with its real Python client (``libretranslatepy``, which sends URL-encoded forms), and
with JSON and multipart bodies as LibreTranslate's own page sends them. Answers equal ``model.translate``."""

import json
import re

import httpx
import pytest

from tests.helpers import make_marian_with_tokenizer
from turboseq.models.glossary import phrase_ids
from turboseq.serving.process import ServerProcess

ENGLISH = ["The train to Berlin leaves at half past eight.", "Could you tell me where the nearest pharmacy is?"]


@pytest.fixture(scope="module")
def opus(tmp_path_factory):
    """A small random Marian whose directory is named like Helsinki-NLP's en->de model, served."""
    import turboseq

    path = tmp_path_factory.mktemp("opus-mt-en-de")
    make_marian_with_tokenizer(path, "swish-untied-4h")
    srv = ServerProcess(path, "--max-batch-size", "4")
    yield srv, turboseq.load(path)
    srv.stop()


def test_libretranslatepy_translates_detects_and_lists(opus):
    from libretranslatepy import LibreTranslateAPI

    srv, model = opus
    client = LibreTranslateAPI(srv.url)
    assert client.translate(ENGLISH[0], "en", "de") == model.translate(ENGLISH[:1])[0]
    assert client.languages() == [{"code": "en", "name": "English", "targets": ["de"]}]
    detected = client.detect("Wie spät ist es? Der Zug nach Berlin fährt um halb neun.")
    assert detected[0]["language"] == "de" and detected[0]["confidence"] > 90
    assert len(detected) == 3 and detected[0]["confidence"] >= detected[1]["confidence"]


def test_translate_lists_alternatives_auto_and_forms(opus):
    srv, model = opus
    r = httpx.post(srv.url + "/translate", json={"q": ENGLISH + [""], "source": "en", "target": "de"})
    assert r.status_code == 200
    assert r.json() == {"translatedText": model.translate(ENGLISH) + [""]}
    # alternatives: beam search's next-best translations, as num_return_sequences gives them
    r = httpx.post(srv.url + "/translate", json={"q": ENGLISH[0], "source": "en", "target": "de", "alternatives": 2})
    expected = model.translate(ENGLISH[:1], num_beams=4, num_return_sequences=3)[0]
    assert r.json() == {"translatedText": expected[0], "alternatives": expected[1:]}
    # source auto: the detected language is reported
    r = httpx.post(srv.url + "/translate", json={"q": ENGLISH, "source": "auto", "target": "de"})
    body = r.json()
    assert body["translatedText"] == model.translate(ENGLISH)
    assert [d["language"] for d in body["detectedLanguage"]] == ["en", "en"]
    # LibreTranslate's page sends multipart forms; api_key is accepted and ignored
    r = httpx.post(
        srv.url + "/translate",
        files={"q": (None, ENGLISH[1]), "source": (None, "en"), "target": (None, "de"), "api_key": (None, "k")},
    )
    assert r.json() == {"translatedText": model.translate(ENGLISH[1:])[0]}
    # documents: HTML keeps its markup, a paragraph over the model's 128 positions translates whole
    page = '<p class="x">The train leaves at eight. It stops <b>twice</b>.</p><code>make test</code>'
    r = httpx.post(srv.url + "/translate", json={"q": page, "source": "en", "target": "de", "format": "html"})
    assert r.json() == {"translatedText": model.translate([page], format="html")[0]}
    assert r.json()["translatedText"].startswith('<p class="x">') and "<code>make test</code>" in r.text
    long = " ".join(f"The train number {i} leaves the station at eight in the morning." for i in range(40))
    r = httpx.post(srv.url + "/translate", data={"q": long, "source": "en", "target": "de"})
    assert r.json() == {"translatedText": model.translate([long], format="text")[0]}
    settings = httpx.get(srv.url + "/frontend/settings").json()
    assert settings["language"] == {
        "source": {"code": "en", "name": "English"},
        "target": {"code": "de", "name": "German"},
    }


def test_translate_errors_are_libretranslates(opus):
    srv, _ = opus

    def error(body, **kwargs):
        r = httpx.post(srv.url + "/translate", json=body, **kwargs)
        return r.status_code, r.json()["error"]

    assert error({"source": "en", "target": "de"}) == (400, "Invalid request: missing q parameter")
    assert error({"q": "x", "target": "de"}) == (400, "Invalid request: missing source parameter")
    assert error({"q": "x", "source": "fr", "target": "de"}) == (
        400,
        "this server translates English (en) to German (de), not fr to de",
    )
    assert error({"q": "x", "source": "en", "target": "de", "alternatives": 99}) == (
        400,
        "`alternatives` must be from 0 to 8",
    )
    status, message = error({"q": ["Hello there.", "Der Zug fährt um halb neun ab."], "source": "auto", "target": "de"})
    assert status == 400
    assert re.fullmatch(
        r"text 1 was detected as German \(de, \d+(\.\d)?% confident\); this server translates from English \(en\)",
        message,
    )
    assert error({"q": "x", "source": "en", "target": "de", "format": "pdf"}) == (
        400,
        '`format` must be "text", "html" or "markdown"',
    )
    r = httpx.post(srv.url + "/translate", content=b"q=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_fuzzed_libretranslate_bodies_never_get_a_5xx(opus):
    from tests.serving.test_tei import _fuzz

    srv, _ = opus
    keys = ["q", "source", "target", "format", "alternatives", "api_key", "glossary", "keep_spans", "file"]
    _fuzz(srv.url, ["/translate", "/detect", "/translate_file"], keys, 80)
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}


def _writable(model, words):
    return [w for w in words if phrase_ids(model.tokenizer, w) is not None]


def test_glossary_over_http_equals_the_library(opus):
    """``glossary`` and ``keep_spans`` on LibreTranslate's /translate (JSON, or JSON in a form field) and in the
    parameters of POST /: each equal to ``model.translate(..., glossary=...)``."""
    srv, model = opus
    first, second = _writable(model, ["Zug", "Bahnhof", "der", "und", "station", "train"])[:2]
    glossary = {"train": first, "pharmacy": second}
    expected = model.translate(ENGLISH, glossary=glossary)
    assert first in expected[0] and second in expected[1]
    body = {"q": ENGLISH, "source": "en", "target": "de", "glossary": glossary, "keep_spans": True}
    assert httpx.post(srv.url + "/translate", json=body).json() == {
        "translatedText": model.translate(ENGLISH, glossary=glossary, keep_spans=True)
    }
    form = {"q": ENGLISH[0], "source": "en", "target": "de", "glossary": json.dumps(glossary)}
    assert httpx.post(srv.url + "/translate", data=form).json() == {"translatedText": expected[0]}
    r = httpx.post(srv.url + "/", json={"inputs": ENGLISH, "parameters": {"glossary": glossary}})
    assert r.json() == [{"translation_text": t} for t in expected]

    def error(url, body):
        r = httpx.post(srv.url + url, json=body)
        return r.status_code, r.json()["error"]

    assert error("/translate", {**body, "glossary": ["train"]}) == (
        400,
        "`glossary` must be an object of source terms to target terms (strings)",
    )
    assert error("/translate", {**body, "alternatives": 2}) == (
        400,
        "`glossary` and `keep_spans` do not combine with `alternatives`",
    )
    assert error("/", {"inputs": ENGLISH, "parameters": {"glossary": {"train": "☃"}}}) == (
        422,
        "glossary term '☃' cannot be written with this model's target vocabulary",
    )
    assert error("/", {"inputs": ENGLISH, "parameters": {"glossary": glossary, "details": True}}) == (
        422,
        "`glossary` and `keep_spans` do not combine with details, logprobs or `alternatives`",
    )


PAGE = (
    "<!DOCTYPE html>\n<html><head><title>The train</title></head><body>\n"
    '<h1 class="t">Where is the station?</h1>\n<p>The train leaves at eight. It stops <b>twice</b>.</p>\n'
    "<pre>make   test</pre>\n</body></html>\n"
)
MARKDOWN = (
    "# The train\n\nThe train leaves at eight.\n\n```\nmake test\n```\n\n- Where is the [station](https://x.org)?\n"
)


@pytest.mark.parametrize(
    "name, content, fmt",
    [("page.html", PAGE, "html"), ("notes.md", MARKDOWN, "markdown"), ("plain.txt", "\n".join(ENGLISH) + "\n", "text")],
)
def test_translate_file_and_download(opus, name, content, fmt):
    """LibreTranslate's /translate_file as its page sends it (a multipart form): the answer's URL downloads the
    translated document, equal to ``model.translate([text], format=...)``, under the file's own name."""
    srv, model = opus
    r = httpx.post(
        srv.url + "/translate_file",
        files={"file": (name, content.encode()), "source": (None, "en"), "target": (None, "de"), "api_key": (None, "")},
    )
    assert r.status_code == 200, r.text
    url = r.json()["translatedFileUrl"]
    assert url.startswith(srv.url + "/download_file/") and url.endswith("." + name)
    download = httpx.get(url)
    assert download.status_code == 200
    assert download.text == model.translate([content], format=fmt)[0]
    assert download.headers["content-disposition"] == f"attachment; filename*=UTF-8''{name}"
    assert download.headers["content-type"].startswith(
        {"html": "text/html", "markdown": "text/markdown"}.get(fmt, "text/plain")
    )
    settings = httpx.get(srv.url + "/frontend/settings").json()
    assert settings["filesTranslation"] is True and "." + name.split(".")[1] in settings["supportedFilesFormat"]


def test_translate_file_errors(opus):
    srv, _ = opus

    def error(files):
        r = httpx.post(srv.url + "/translate_file", files={"source": (None, "en"), "target": (None, "de"), **files})
        return r.status_code, r.json()["error"]

    assert error({}) == (400, "Invalid request: missing file parameter")
    assert error({"file": ("report.pdf", b"%PDF")}) == (
        400,
        "Invalid request: file format .pdf not supported; supported: .txt, .html, .htm, .md, .markdown",
    )
    assert error({"file": ("latin.txt", "Déjà vu".encode("latin-1"))}) == (400, "latin.txt is not UTF-8 text")
    r = httpx.get(srv.url + "/download_file/0123.page.html")
    assert r.status_code == 404
    assert r.json()["error"] == "Invalid filename: no translated file by that name (they are kept for 30 minutes)"
