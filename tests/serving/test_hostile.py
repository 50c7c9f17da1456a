"""Hostile input against live loopback servers of each task (text, speech, embeddings): every request gets a
clear 4xx with a JSON error naming the problem, never a 500 or a hang, and afterwards /health and a normal
request still answer correctly. Slow, idle and too many connections are cut; a bounded hypothesis fuzz of the
request bodies never finds a 5xx."""

import base64
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest

from tests.helpers import hostile_json, raw_http
from turboseq.serving.process import ServerProcess

TIMEOUTS = ("--header-timeout-s", "1", "--body-timeout-s", "1")

# generation parameters a hostile client sends, for text and speech alike: (id, parameters as raw JSON text,
# status, error_type, words the error must contain)
PARAM_CASES = [
    ("beams-1e6", '{"num_beams": 1000000}', 422, "over_limit", "--max-beams"),
    ("beams-5000", '{"num_beams": 5000}', 422, "over_limit", "--max-beams"),
    ("beams-1e30", '{"num_beams": 1000000000000000000000000000000}', 422, "validation_error", "`num_beams` must be <="),
    ("beams-0", '{"num_beams": 0}', 422, "validation_error", "`num_beams` must be >= 1"),
    ("beams-negative", '{"num_beams": -3}', 422, "validation_error", "`num_beams`"),
    ("beams-string", '{"num_beams": "4"}', 422, "validation_error", "`num_beams` must be an integer"),
    ("beams-float", '{"num_beams": 4.5}', 422, "validation_error", "`num_beams` must be an integer"),
    ("beams-bool", '{"num_beams": true}', 422, "validation_error", "`num_beams` must be an integer"),
    ("sequences-500", '{"do_sample": true, "num_return_sequences": 500}', 422, "over_limit", "--max-return-sequences"),
    (
        "temperature-nan",
        '{"do_sample": true, "temperature": NaN}',
        422,
        "validation_error",
        "`temperature` must be a finite",
    ),
    ("temperature-inf", '{"do_sample": true, "temperature": Infinity}', 422, "validation_error", "`temperature`"),
    ("repetition-nan", '{"repetition_penalty": NaN}', 422, "validation_error", "`repetition_penalty`"),
    ("length-penalty-neg-inf", '{"length_penalty": -Infinity}', 422, "validation_error", "`length_penalty`"),
    ("top-p-nan", '{"do_sample": true, "top_p": NaN}', 422, "validation_error", "`top_p`"),
    ("top-k-negative", '{"top_k": -1}', 422, "validation_error", "`top_k`"),
    ("top-k-string", '{"top_k": "many"}', 422, "validation_error", "`top_k`"),
    ("max-new-tokens-1e9", '{"max_new_tokens": 1000000000}', 422, "validation_error", "positions"),
    ("max-new-tokens-0", '{"max_new_tokens": 0}', 422, "validation_error", "`max_new_tokens`"),
    ("max-length-0", '{"max_length": 0}', 422, "validation_error", "`max_length`"),
    ("min-length-negative", '{"min_length": -1}', 422, "validation_error", "`min_length`"),
    ("early-stopping-bad", '{"early_stopping": "sometimes"}', 422, "validation_error", "`early_stopping`"),
    ("do-sample-string", '{"do_sample": "yes"}', 422, "validation_error", "`do_sample`"),
    ("eos-huge", '{"eos_token_id": 1000000000}', 422, "validation_error", "`eos_token_id`"),
    ("pad-negative", '{"pad_token_id": -5}', 422, "validation_error", "`pad_token_id`"),
    ("bad-words-negative", '{"bad_words_ids": [[-1]]}', 422, "validation_error", "`bad_words_ids`"),
    ("bad-words-string", '{"bad_words_ids": "x"}', 422, "validation_error", "`bad_words_ids`"),
    ("forced-bos-string", '{"forced_bos_token_id": "a"}', 422, "validation_error", "`forced_bos_token_id`"),
    ("renormalize-int", '{"renormalize_logits": 1}', 422, "validation_error", "`renormalize_logits`"),
    ("unknown-parameter", '{"num_beemz": 2}', 422, "validation_error", "num_beemz"),
    ("server-owned", '{"max_batch_size": 1000}', 422, "validation_error", "max_batch_size"),
    ("seed-negative", '{"seed": -1}', 422, "validation_error", "`seed`"),
    ("parameters-not-object", '"fast please"', 422, "validation_error", "`parameters` must be a JSON object"),
]


def _raw_params(inputs: str, params: str) -> dict:
    """httpx arguments for a task body whose ``parameters`` are raw JSON text (NaN and Infinity literals pass)."""
    return dict(
        content=f'{{"inputs": "{inputs}", "parameters": {params}}}'.encode(),
        headers={"content-type": "application/json"},
    )


def _chunks(total: int, size: int = 65536):
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# bodies of POST / for the text tasks: (id, httpx keyword arguments, status, error_type, words)
def _text_body_cases(payload_limit: int, token_limit: int):
    j = {"content-type": "application/json"}
    return [
        ("malformed-json", dict(content=b'{"inputs": ', headers=j), 400, "invalid_json", "malformed JSON"),
        ("invalid-utf8", dict(content=b'{"inputs": "\xff\xfe"}', headers=j), 400, "invalid_utf8", "UTF-8"),
        ("nested-100000", dict(content=_deep_json(100_000), headers=j), 400, "invalid_json", "nested too deeply"),
        ("empty-body", dict(content=b"", headers=j), 400, "invalid_json", "malformed JSON"),
        ("body-is-list", dict(json=["hello"]), 422, "validation_error", "body must be a JSON object"),
        ("inputs-missing", dict(json={"parameters": {}}), 422, "validation_error", "`inputs` is required"),
        (
            "extra-field",
            dict(json={"inputs": "a", "stream": True}),
            422,
            "validation_error",
            "unknown field(s): stream",
        ),
        ("inputs-number", dict(json={"inputs": 42}), 422, "validation_error", "`inputs` must be a string"),
        ("inputs-numbers", dict(json={"inputs": [1, 2]}), 422, "validation_error", "`inputs` must be a string"),
        ("inputs-nested", dict(json={"inputs": [["a"]]}), 422, "validation_error", "`inputs` must be a string"),
        ("lone-surrogate", dict(content=b'{"inputs": "a\\ud800b"}', headers=j), 422, "validation_error", "surrogate"),
        ("too-many-inputs", dict(json={"inputs": ["hi"] * 1000}), 413, "too_many_inputs", "the limit is 4"),
        (
            "payload-over-limit",
            dict(json={"inputs": "x" * (payload_limit + 10)}),
            413,
            "payload_too_large",
            "over the limit",
        ),
        (
            "chunked-over-limit",
            dict(content=_chunks(payload_limit + 100_000), headers=j),
            413,
            "payload_too_large",
            "over the limit",
        ),
        (
            "content-type-png",
            dict(content=b'{"inputs": "a"}', headers={"content-type": "image/png"}),
            415,
            "unsupported_media_type",
            "image/png",
        ),
        (
            "content-type-form",
            dict(content=b"inputs=a", headers={"content-type": "application/x-www-form-urlencoded"}),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        ("huge-input-text", dict(json={"inputs": "word " * 20_000}), 422, "input_too_long", "characters"),
        (
            "input-over-tokens",
            dict(json={"inputs": " ".join(["pharmacy"] * (token_limit + 20))}),
            422,
            "input_too_long",
            f"at most {token_limit}",
        ),
        (
            "truncation-string",
            dict(json={"inputs": "a", "parameters": {"truncation": "yes"}}),
            422,
            "validation_error",
            "truncation",
        ),
    ]


def _status_ok(server, normal) -> None:
    assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    normal()


def _check(r: httpx.Response, status: int, kind: str, words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error_type"] == kind, body
    assert words in body["error"], body


def _post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url, timeout=30, **kwargs)


# --- text generation ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_server(marian_one):
    _, path = marian_one
    srv = ServerProcess(
        path,
        "--max-batch-size",
        "4",
        "--max-payload-bytes",
        "200000",
        "--max-input-tokens",
        "40",
        "--max-beams",
        "8",
        "--max-request-cost",
        "1000",
        "--max-connections",
        "30",
        *TIMEOUTS,
    )
    normal = {"inputs": "The weather is nice today.", "parameters": {"max_new_tokens": 6}}
    expected = _post(srv.url + "/", json=normal).json()

    def check_normal():
        assert _post(srv.url + "/", json=normal).json() == expected

    srv.normal = check_normal
    yield srv
    srv.stop()


def _text_cases():
    cases = [
        (
            f"param-{name}",
            "/",
            _raw_params("Hello there.", params),
            status,
            kind,
            words,
        )
        for name, params, status, kind, words in PARAM_CASES
    ]
    cases += [
        (f"body-{name}", "/", kwargs, status, kind, words)
        for name, kwargs, status, kind, words in _text_body_cases(200000, 40)
    ]
    stream = [
        (
            "stream-beams",
            {"inputs": "Hi.", "parameters": {"num_beams": 4}},
            422,
            "validation_error",
            "streaming supports",
        ),
        ("stream-two-inputs", {"inputs": ["a", "b"]}, 422, "validation_error", "one string"),
        ("stream-beams-1e6", {"inputs": "Hi.", "parameters": {"num_beams": 1000000}}, 422, "over_limit", "--max-beams"),
        ("stream-unknown", {"inputs": "Hi.", "parameters": {"x": 1}}, 422, "validation_error", "unknown generation"),
    ]
    cases += [
        (name, "/generate_stream", dict(json=body), status, kind, words) for name, body, status, kind, words in stream
    ]
    cases += [
        (
            "cost-over-limit",
            "/",
            dict(json={"inputs": ["a", "b", "c", "d"], "parameters": {"num_beams": 8}}),
            422,
            "over_limit",
            "--max-request-cost",
        ),
        ("unknown-route", "/admin", dict(json={}), 404, "not_found", "no route POST /admin"),
        ("unknown-model", "/models/other", dict(json={"inputs": "a"}), 404, "not_found", "unknown model 'other'"),
        ("embeddings-route", "/v1/embeddings", dict(json={"input": "a"}), 404, "not_found", "no route"),
        ("transcriptions-route", "/v1/audio/transcriptions", dict(content=b"x"), 404, "not_found", "no route"),
    ]
    return cases


TEXT_CASES = _text_cases()


def test_at_least_sixty_distinct_hostile_text_requests():
    assert len({c[0] for c in TEXT_CASES}) == len(TEXT_CASES) >= 60


@pytest.mark.parametrize("name, path, kwargs, status, kind, words", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_hostile_text_request(text_server, name, path, kwargs, status, kind, words):
    _check(_post(text_server.url + path, **kwargs), status, kind, words)
    _status_ok(text_server, text_server.normal)


def test_get_on_a_post_route_is_405_json(text_server):
    r = httpx.get(text_server.url + "/generate_stream")  # (GET / is the playground page)
    assert r.status_code == 405 and r.json()["error_type"] == "http_error"
    _status_ok(text_server, text_server.normal)


@pytest.mark.pace
def test_a_lying_content_length_times_out_with_408(text_server):
    """The header says 1000 bytes, 10 arrive: the body deadline answers 408 and closes."""
    t0 = time.time()
    out = raw_http(
        text_server.port,
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inputs":',
        wait_s=10,
    )
    assert out.startswith(b"HTTP/1.1 408") and b'"error_type":"timeout"' in out.replace(b" ", b"")
    assert time.time() - t0 < 8
    _status_ok(text_server, text_server.normal)


@pytest.mark.pace
def test_partial_headers_and_idle_connections_are_cut(text_server):
    t0 = time.time()
    out = raw_http(text_server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le", wait_s=10)
    assert out.startswith(b"HTTP/1.1 408") and b"request headers not received in time" in out
    out = raw_http(text_server.port, b"", wait_s=10)  # connects and says nothing
    assert out.startswith(b"HTTP/1.1 408")
    assert time.time() - t0 < 10
    _status_ok(text_server, text_server.normal)


def test_connections_beyond_the_limit_get_503_and_the_server_stays_up(text_server):
    socks = [socket.create_connection(("127.0.0.1", text_server.port)) for _ in range(40)]
    try:
        refused = 0
        for s in socks:
            s.settimeout(0.5)
            try:
                refused += s.recv(4096).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                pass
        assert refused >= 9  # 30 allowed (the limit counts each open connection)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    _status_ok(text_server, text_server.normal)


def test_fuzzed_bodies_never_get_a_5xx(text_server):
    """hypothesis: arbitrary JSON bodies and parameter dicts with hostile values; bounded to 150 examples."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = hostile_json(max_leaves=12)
    keys = st.sampled_from(
        [
            "num_beams",
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "do_sample",
            "seed",
            "repetition_penalty",
            "no_repeat_ngram_size",
            "bad_words_ids",
            "eos_token_id",
            "num_return_sequences",
            "early_stopping",
            "length_penalty",
            "truncation",
            "min_length",
        ]
    )
    bodies = st.one_of(
        st.fixed_dictionaries(
            {
                "inputs": st.one_of(st.text(max_size=50), st.lists(st.text(max_size=20), max_size=5), values),
                "parameters": st.dictionaries(keys, values, max_size=4),
            }
        ),
        values,
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=bodies)
    def run(body):
        content = json.dumps(body, allow_nan=True).encode()
        r = httpx.post(text_server.url + "/", content=content, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code < 500, (body, r.text)
        if r.status_code != 200:
            assert set(r.json()) == {"error", "error_type"}

    run()
    _status_ok(text_server, text_server.normal)


# --- embeddings -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_server(minilm):
    path = minilm[3]
    srv = ServerProcess(
        path, "--max-batch-size", "4", "--max-payload-bytes", "200000", "--max-input-tokens", "64", *TIMEOUTS
    )
    expected = _post(srv.url + "/", json={"inputs": "hello"}).json()

    def check_normal():
        got = _post(srv.url + "/", json={"inputs": "hello"}).json()
        assert np.allclose(got, expected, atol=1e-6)

    srv.normal = check_normal
    yield srv
    srv.stop()


def _embed_cases():
    cases = [
        (f"body-{name}", "/", kwargs, status, kind, words)
        for name, kwargs, status, kind, words in _text_body_cases(200000, 64)
    ]
    params = [
        ("normalize-string", {"normalize": "yes"}, "`normalize` must be a boolean"),
        ("normalize-number", {"normalize": 1}, "`normalize` must be a boolean"),
        ("generation-parameter", {"num_beams": 4}, "unknown parameter(s) for an embedding model: num_beams"),
        ("server-owned", {"max_batch_size": 4}, "max_batch_size"),
        ("nan", '{"normalize": NaN}', "`normalize`"),
    ]
    cases += [
        (
            f"param-{name}",
            "/",
            _raw_params("a", p if isinstance(p, str) else json.dumps(p)),
            422,
            "validation_error",
            words,
        )
        for name, p, words in params
    ]
    j = {"content-type": "application/json"}
    openai = [
        ("missing-input", dict(json={"model": "x"}), 422, "validation_error", "`input` is required"),
        ("input-number", dict(json={"input": 3}), 422, "validation_error", "`input` must be a string"),
        ("int8-format", dict(json={"input": "a", "encoding_format": "int8"}), 422, "validation_error", "base64"),
        ("zero-dimensions", dict(json={"input": "a", "dimensions": 0}), 422, "validation_error", "from 1 to"),
        ("bool-dimensions", dict(json={"input": "a", "dimensions": True}), 422, "validation_error", "dimensions"),
        ("extra-field", dict(json={"input": "a", "truncate": True}), 422, "validation_error", "truncate"),
        ("malformed", dict(content=b"{", headers=j), 400, "invalid_json", "malformed"),
        ("nested", dict(content=_deep_json(50_000), headers=j), 400, "invalid_json", "nested too deeply"),
        (
            "content-type-png",
            dict(content=b'{"input": "a"}', headers={"content-type": "image/png"}),
            415,
            "unsupported_media_type",
            "image/png",
        ),
        ("chunked-over-limit", dict(content=_chunks(300_000), headers=j), 413, "payload_too_large", "over the limit"),
        ("too-many", dict(json={"input": ["a"] * 2049}), 413, "too_many_inputs", "limit is 2048"),
        ("over-tokens", dict(json={"input": "word " * 200}), 422, "input_too_long", "at most 64"),
    ]
    cases += [
        (f"openai-{name}", "/v1/embeddings", kwargs, status, kind, words)
        for name, kwargs, status, kind, words in openai
    ]
    cases += [
        ("stream-route", "/generate_stream", dict(json={"inputs": "a"}), 404, "not_found", "streaming is for text"),
        ("unknown-model", "/models/nope", dict(json={"inputs": "a"}), 404, "not_found", "unknown model"),
        ("transcriptions", "/v1/audio/transcriptions", dict(content=b"x"), 404, "not_found", "no route"),
    ]
    # a generation client pointed at an embedding server: every generation parameter is refused by name
    # (every key of PARAM_CASES is a generation parameter)
    for name, params, _status, _kind, _words in PARAM_CASES:
        if name == "parameters-not-object":
            continue
        cases.append(
            (
                f"generation-{name}",
                "/",
                _raw_params("a", params),
                422,
                "validation_error",
                "unknown parameter(s) for an embedding model",
            )
        )
    return cases


EMBED_CASES = _embed_cases()


def test_at_least_sixty_distinct_hostile_embedding_requests():
    assert len({c[0] for c in EMBED_CASES}) == len(EMBED_CASES) >= 60


@pytest.mark.parametrize("name, path, kwargs, status, kind, words", EMBED_CASES, ids=[c[0] for c in EMBED_CASES])
def test_hostile_embedding_request(embed_server, name, path, kwargs, status, kind, words):
    _check(_post(embed_server.url + path, **kwargs), status, kind, words)
    _status_ok(embed_server, embed_server.normal)


# --- speech ---------------------------------------------------------------------------------------------------


def _wav_header_claiming(nbytes: int) -> bytes:
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + nbytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", nbytes)
    )


def _flac_silence(seconds: int) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=16000, layout="mono")
        frame_samples = 16000
        for i in range(seconds):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, frame_samples), np.int16), format="s16", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * frame_samples
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def speech_server(ct2_dir, clips):
    srv = ServerProcess(
        ct2_dir,
        "--max-batch-size",
        "4",
        "--max-payload-bytes",
        "3000000",
        "--max-beams",
        "5",
        "--max-audio-seconds",
        "40",
        *TIMEOUTS,
    )
    clip = clips[2].read_bytes()
    srv.clip = clip
    expected = _post(srv.url + "/", content=clip, headers={"content-type": "audio/wav"}).json()
    assert "raining" in expected["text"].lower()

    def check_normal():
        assert _post(srv.url + "/", content=clip, headers={"content-type": "audio/wav"}).json() == expected

    srv.normal = check_normal
    yield srv
    srv.stop()


def _multipart(fields: list[tuple[str, str | tuple]]) -> tuple[bytes, dict]:
    """A multipart/form-data body; a tuple value is a file part (filename, bytes)."""
    boundary = "turboseqboundary"
    out = b""
    for name, value in fields:
        if isinstance(value, tuple):
            out += (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{value[0]}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + value[1]
                + b"\r\n"
            )
        else:
            out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return out, {"content-type": f"multipart/form-data; boundary={boundary}"}


# transcription parameters a hostile client sends (faster-whisper's names, and transformers' num_beams)
SPEECH_PARAM_CASES = [
    ("beams-1e6", '{"num_beams": 1000000}', 422, "over_limit", "--max-beams"),
    ("beam-size-5000", '{"beam_size": 5000}', 422, "over_limit", "--max-beams"),
    ("beams-0", '{"beam_size": 0}', 422, "validation_error", "`beam_size` must be a positive integer"),
    ("beams-string", '{"beam_size": "4"}', 422, "validation_error", "`beam_size` must be a positive integer"),
    ("beams-bool", '{"num_beams": true}', 422, "validation_error", "`beam_size` must be a positive integer"),
    ("best-of-float", '{"best_of": 2.5}', 422, "validation_error", "`best_of` must be a positive integer"),
    ("temperature-nan", '{"temperature": NaN}', 422, "validation_error", "`temperature` must be a number >= 0"),
    ("temperature-list-inf", '{"temperature": [0, Infinity]}', 422, "validation_error", "`temperature`"),
    ("temperature-negative", '{"temperature": -0.5}', 422, "validation_error", "`temperature`"),
    ("repetition-nan", '{"repetition_penalty": NaN}', 422, "validation_error", "`repetition_penalty`"),
    ("length-penalty-neg-inf", '{"length_penalty": -Infinity}', 422, "validation_error", "`length_penalty`"),
    ("threshold-string", '{"no_speech_threshold": "high"}', 422, "validation_error", "`no_speech_threshold`"),
    ("max-new-tokens-1e9", '{"max_new_tokens": 1000000000}', 422, "validation_error", "positions"),
    ("max-new-tokens-0", '{"max_new_tokens": 0}', 422, "validation_error", "`max_new_tokens`"),
    ("ngram-negative", '{"no_repeat_ngram_size": -1}', 422, "validation_error", "`no_repeat_ngram_size`"),
    ("flag-int", '{"word_timestamps": 1}', 422, "validation_error", "`word_timestamps` must be true or false"),
    ("prompt-number", '{"initial_prompt": 7}', 422, "validation_error", "`initial_prompt`"),
    ("prefix-list", '{"prefix": ["a"]}', 422, "validation_error", "`prefix` must be a string"),
    ("vad-unknown-key", '{"vad_filter": true, "vad_parameters": {"x": 1}}', 422, "validation_error", "vad_parameters"),
    ("patience", '{"patience": 2}', 422, "validation_error", "`patience`"),
    ("generate-argument", '{"do_sample": true}', 422, "validation_error", "unknown transcribe option(s): do_sample"),
    ("unknown-parameter", '{"num_beemz": 2}', 422, "validation_error", "num_beemz"),
    ("server-owned", '{"max_batch_size": 1000}', 422, "validation_error", "max_batch_size"),
    ("batched-string", '{"batched": "yes"}', 422, "validation_error", "`batched` must be a boolean"),
    ("seed", '{"seed": 1}', 422, "validation_error", "`seed`"),
    ("parameters-not-object", '"fast please"', 422, "validation_error", "`parameters` must be a JSON object"),
]


def _speech_cases(clip: bytes):
    b64 = base64.b64encode(clip).decode()
    cases = [
        (
            f"param-{name}",
            "/",
            _raw_params(b64, params),
            status,
            kind,
            words,
        )
        for name, params, status, kind, words in SPEECH_PARAM_CASES
    ]
    whisper = [
        ("language-unknown", '{"language": "xx"}', "English-only"),
        ("language-number", '{"language": 7}', "`language` must be a string"),
        ("task-translate", '{"task": "translate"}', "English-only"),
        ("timestamps-string", '{"return_timestamps": "yes"}', "`return_timestamps` must be a boolean"),
        ("suppress-string", '{"suppress_tokens": "abc"}', "`suppress_tokens` must be a list of token ids"),
        ("suppress-huge", '{"suppress_tokens": [100000000]}', "`suppress_tokens`"),
        ("suppress-nested", '{"suppress_tokens": [[1]]}', "`suppress_tokens`"),
        ("prompt-ids-huge", '{"initial_prompt": [100000000]}', "`initial_prompt`"),
    ]
    cases += [
        (
            f"whisper-{name}",
            "/",
            _raw_params(b64, params),
            422,
            "validation_error",
            words,
        )
        for name, params, words in whisper
    ]
    wav = {"content-type": "audio/wav"}
    body = [
        ("not-base64", dict(json={"inputs": "%%%"}), 400, "invalid_audio", "base64"),
        (
            "base64-garbage",
            dict(json={"inputs": base64.b64encode(b"garbage" * 50).decode()}),
            400,
            "invalid_audio",
            "input 0",
        ),
        ("raw-garbage", dict(content=b"garbage" * 50, headers=wav), 400, "invalid_audio", "not a recognised audio"),
        ("empty", dict(content=b"", headers=wav), 400, "invalid_audio", "empty"),
        (
            "wav-claims-2gb",
            dict(content=_wav_header_claiming(2_000_000_000), headers=wav),
            400,
            "invalid_audio",
            "no audio samples",
        ),
        (
            "content-type-png",
            dict(content=clip, headers={"content-type": "image/png"}),
            415,
            "unsupported_media_type",
            "image/png",
        ),
        (
            "too-long",
            dict(content=_flac_silence(120), headers={"content-type": "audio/flac"}),
            413,
            "audio_too_long",
            "longer than the limit of 40 s",
        ),
        (
            "payload-over-limit",
            dict(content=b"\0" * 3_100_000, headers=wav),
            413,
            "payload_too_large",
            "over the limit",
        ),
        (
            "chunked-over-limit",
            dict(content=_chunks(3_200_000), headers=wav),
            413,
            "payload_too_large",
            "over the limit",
        ),
        (
            "malformed-json",
            dict(content=b'{"inputs": [', headers={"content-type": "application/json"}),
            400,
            "invalid_json",
            "malformed",
        ),
        ("too-many-inputs", dict(json={"inputs": [b64] * 5}), 413, "too_many_inputs", "limit is 4"),
    ]
    cases += [(f"body-{name}", "/", kwargs, status, kind, words) for name, kwargs, status, kind, words in body]
    upload = ("a.wav", clip)
    forms = [
        ("no-multipart", dict(content=clip, headers=wav), 415, "unsupported_media_type", "multipart/form-data"),
        ("missing-file", _multipart([("model", "whisper-1")]), 422, "validation_error", "`file`"),
        (
            "field-as-file",
            _multipart([("file", upload), ("model", ("m.txt", b"whisper-1"))]),
            422,
            "validation_error",
            "`model` must be a plain form field",
        ),
        (
            "two-files",
            _multipart([("file", upload), ("file", upload)]),
            422,
            "validation_error",
            "`file` appears 2 times",
        ),
        (
            "bad-format",
            _multipart([("file", upload), ("response_format", "xml")]),
            422,
            "validation_error",
            "`response_format`",
        ),
        (
            "temperature-high",
            _multipart([("file", upload), ("temperature", "1.5")]),
            422,
            "validation_error",
            "between 0 and 1",
        ),
        ("temperature-neg", _multipart([("file", upload), ("temperature", "-1")]), 422, "validation_error", "between"),
        (
            "temperature-text",
            _multipart([("file", upload), ("temperature", "warm")]),
            422,
            "validation_error",
            "must be a number",
        ),
        ("unknown-field", _multipart([("file", upload), ("voice", "x")]), 422, "validation_error", "voice"),
        (
            "granularity-char",
            _multipart([("file", upload), ("response_format", "verbose_json"), ("timestamp_granularities[]", "char")]),
            422,
            "validation_error",
            "must be word or segment",
        ),
        (
            "granularity-json",
            _multipart([("file", upload), ("timestamp_granularities[]", "word")]),
            422,
            "validation_error",
            "needs response_format=verbose_json",
        ),
        ("file-garbage", _multipart([("file", ("a.wav", b"garbage" * 20))]), 400, "invalid_audio", "input 0"),
        (
            "malformed-form",
            (b"--x\r\nnonsense", {"content-type": "multipart/form-data; boundary=x"}),
            422,
            "validation_error",
            "`file`",
        ),
        (
            "chunked-over-limit",
            (_chunks(3_200_000), {"content-type": "multipart/form-data; boundary=x"}),
            413,
            "payload_too_large",
            "over the limit",
        ),
    ]
    for name, form, status, kind, words in forms:
        kwargs = form if isinstance(form, dict) else dict(content=form[0], headers=form[1])
        cases.append((f"openai-{name}", "/v1/audio/transcriptions", kwargs, status, kind, words))
    cases += [
        ("stream-route", "/generate_stream", dict(json={"inputs": "a"}), 404, "not_found", "streaming is for text"),
        ("embeddings-route", "/v1/embeddings", dict(json={"input": "a"}), 404, "not_found", "no route"),
    ]
    return cases


def test_at_least_sixty_distinct_hostile_speech_requests(clips):
    cases = _speech_cases(clips[2].read_bytes())
    assert len({c[0] for c in cases}) == len(cases) >= 60


def test_hostile_speech_requests(speech_server):
    """One test over every case (the clip is built once): each answered as expected, the server still correct."""
    failures = []
    for name, path, kwargs, status, kind, words in _speech_cases(speech_server.clip):
        r = _post(speech_server.url + path, **kwargs)
        try:
            _check(r, status, kind, words)
        except (AssertionError, ValueError) as err:
            failures.append(f"{name}: {err}")
        _status_ok(speech_server, speech_server.normal)
    assert not failures, "\n".join(failures)
