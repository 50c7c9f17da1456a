"""LibreTranslate's routes with its real Python client (``libretranslatepy``, which sends URL-encoded forms), and
with JSON and multipart bodies as LibreTranslate's own page sends them. Answers equal ``model.translate``."""

import re

import httpx
import pytest

from tests.helpers import make_marian_with_tokenizer
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
    keys = ["q", "source", "target", "format", "alternatives", "api_key"]
    _fuzz(srv.url, ["/translate", "/detect"], keys, 60)
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
