"""The second hardening round, one test per class of abuse: a request that would hold the engine (fallback
temperatures, best_of, stop strings, bad words, compressed audio), one input that fails its batch mates,
engine-time errors, hostile HTTP framing, slow floods, signals while busy, and CLI configs that crashed."""

import asyncio
import base64
import json
import signal
import socket
import time

import httpx
import numpy as np
import pytest

from tests.helpers import raw_http, run_cli, wav_bytes
from turboseq.formats.audio import load_audio
from turboseq.serving.process import ServerProcess

# --- the engine is shared: a failing input fails only its own request ---------------------------------------------


class _PoisonTask:
    """A task whose batch fails when it holds the row "poison" (as a NaN waveform made every batch fail)."""

    def __init__(self):
        self.batches = []

    def input_size(self, row):
        return 1

    def joinable(self, settings):  # its requests run as batches of their own
        return False

    def run(self, rows, settings, abandoned=None, on_tokens=None):
        self.batches.append(list(rows))
        if "poison" in rows:
            raise ValueError("input holds poison")
        return [r.upper() for r in rows], len(rows)


def test_one_bad_input_fails_only_its_own_request():
    from turboseq.serving.batcher import Batcher, Job, Metrics
    from turboseq.serving.config import ServerConfig
    from turboseq.serving.requests import Prepared, RequestError

    async def scenario():
        task = _PoisonTask()
        batcher = Batcher(task, ServerConfig(batch_wait_ms=50), Metrics())
        loop = asyncio.get_running_loop()
        jobs = [Job(rows, Prepared(None, "same"), loop.create_future()) for rows in (["a", "b"], ["poison"], ["c"])]
        runner = asyncio.create_task(batcher.run_forever())
        for job in jobs:
            batcher.submit(job)
        results = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        runner.cancel()
        batcher.executor.shutdown()
        return task, results

    task, results = asyncio.run(scenario())
    assert task.batches[0] == ["a", "b", "poison", "c"]  # merged first, then each request alone
    assert results[0] == ["A", "B"] and results[2] == ["C"]
    assert isinstance(results[1], RequestError) and results[1].status == 422
    assert results[1].message == "input holds poison"


@pytest.mark.pace
def test_a_stalled_engine_is_reported():
    from turboseq.serving.batcher import STALL_GRACE_S, Batcher, Metrics
    from turboseq.serving.config import ServerConfig

    async def scenario():
        batcher = Batcher(_PoisonTask(), ServerConfig(request_timeout_s=5), Metrics())
        assert batcher.stalled_for() is None  # idle
        batcher.running_since = time.perf_counter() - 4
        assert batcher.stalled_for() is None  # busy within its requests' time
        batcher.running_since = time.perf_counter() - 5 - STALL_GRACE_S - 3
        stalled = batcher.stalled_for()
        batcher.executor.shutdown()
        return stalled

    assert 2.5 < asyncio.run(scenario()) < 4


def test_fallback_stops_at_once_for_an_abandoned_input(whisper, waves, monkeypatch):
    """Every temperature fails (log-probability threshold 0): once its input is given up, no further attempt."""
    from turboseq.speech import decoding

    calls = []
    real = decoding.decode

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "decode", counting)
    whisper.transcribe([waves[0]], temperature=[1.0] * 8, log_prob_threshold=0.0, best_of=1)
    assert len(calls) == 8  # the hazard: one decode per temperature
    calls.clear()
    whisper.transcribe(
        [waves[0]], temperature=[1.0] * 8, log_prob_threshold=0.0, best_of=1, abandoned=lambda: {0} if calls else ()
    )
    assert len(calls) == 1


def test_speech_options_are_bounded(whisper):
    with pytest.raises(ValueError, match="`temperature` lists at most 32 fallback temperatures, got 20000"):
        whisper.transcribe([], temperature=[1.0] * 20000)
    with pytest.raises(ValueError, match=r"`length_penalty` must be a finite number in \[-100, 100\]"):
        whisper.transcribe([], length_penalty=-1e308)
    for bad, words in (
        ("fast", "`vad_parameters` must be an object"),
        ({"threshold": "high"}, "`vad_parameters.threshold` must be a number"),
        ({"min_silence_duration_ms": -5}, "`vad_parameters.min_silence_duration_ms` must be a finite number >= 0"),
        ({"speech_pad_ms": float("nan")}, "`vad_parameters.speech_pad_ms` must be a number"),
    ):
        with pytest.raises(ValueError, match=words.replace(".", r"\.")):
            whisper.transcribe([], vad_filter=True, vad_parameters=bad)


def test_a_long_prefix_after_long_context_still_decodes(whisper, waves):
    """A prefix and the previous window's text together past the decoder's positions: the oldest context gives
    way (it raised ValueError mid-batch, a 500 when served)."""
    result = whisper.transcribe([np.concatenate([waves[0]] * 12)], prefix="word " * 300, beam_size=1)[0]
    assert result.segments


def test_nan_audio_is_refused_at_parse_time():
    from turboseq.errors import AudioError

    samples = np.zeros(16000, np.float32)
    samples[100] = np.nan
    with pytest.raises(AudioError, match="input 0: samples contain NaN or infinity"):
        load_audio(wav_bytes(samples, float32=True), name="input 0")
    samples[100] = 1e30
    with pytest.raises(AudioError, match=r"samples far outside \[-1, 1\]"):
        load_audio(wav_bytes(samples, float32=True), name="input 0")


# --- live speech server ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_server(ct2_dir, clips):
    srv = ServerProcess(
        ct2_dir,
        "--max-batch-size",
        "4",
        "--max-audio-seconds",
        "600",
        "--max-request-audio-seconds",
        "900",
        "--request-timeout-s",
        "10",
        "--max-parameter-items",
        "256",
    )
    srv.clip = clips[2].read_bytes()
    srv.expected = httpx.post(srv.url + "/", content=srv.clip, headers={"content-type": "audio/wav"}, timeout=60).json()
    yield srv
    srv.stop()


def _speech(srv, params: dict | str, clip: bytes | None = None, timeout: float = 60) -> httpx.Response:
    b64 = base64.b64encode(clip or srv.clip).decode()
    params = params if isinstance(params, str) else json.dumps(params)
    return httpx.post(
        srv.url + "/",
        content=f'{{"inputs": "{b64}", "parameters": {params}}}'.encode(),
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


def _normal(srv) -> None:
    r = httpx.post(srv.url + "/", content=srv.clip, headers={"content-type": "audio/wav"}, timeout=30)
    assert r.status_code == 200 and r.json() == srv.expected


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"temperature": [1.0] * 20000, "log_prob_threshold": 0.0}, 422, "--max-parameter-items"),
        ({"temperature": [1.0] * 200, "log_prob_threshold": 0.0}, 422, "at most 32 fallback temperatures"),
        ({"best_of": 1000, "temperature": 1.0}, 422, "`best_of` 1000 is over the server's limit of 16"),
        ({"best_of": 16, "temperature": [0.1 * k for k in range(1, 11)]}, 422, "--max-request-cost"),
        ({"prefix": "word " * 300}, 200, ""),
        ({"length_penalty": -1e308}, 422, "`length_penalty`"),
        ({"vad_filter": True, "vad_parameters": "x"}, 422, "`vad_parameters` must be an object"),
        ({"vad_filter": True, "vad_parameters": {"min_silence_duration_ms": -1}}, 422, "must be a finite number >= 0"),
        ({"suppress_tokens": [1] * 300}, 422, "--max-parameter-items"),
    ],
)
def test_hostile_speech_parameters(speech_server, params, status, words):
    r = _speech(speech_server, params)
    assert r.status_code == status, r.text
    if words:
        assert words in r.json()["error"]
    _normal(speech_server)


@pytest.mark.pace
def test_fallback_abuse_times_out_and_frees_the_engine(ct2_dir, clips):
    """Every attempt fails (32 temperatures, 3 samples each: about 12 s of decoding here); the request gets 504
    at its 2 s timeout and its work stops there: the next request is answered at once, and /health never
    reports the engine stalled."""
    srv = ServerProcess(ct2_dir, "--request-timeout-s", "2")
    try:
        srv.clip = clips[2].read_bytes()
        srv.expected = httpx.post(srv.url + "/", content=srv.clip, headers={"content-type": "audio/wav"}).json()
        r = _speech(srv, {"temperature": [1.0] * 32, "best_of": 3, "beam_size": 1, "log_prob_threshold": 0.0})
        assert r.status_code == 504, r.text
        t0 = time.time()
        _normal(srv)
        assert time.time() - t0 < 6  # the abandoned request's attempts would hold the engine ~10 s more
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()


def test_nan_audio_gets_400_and_spares_its_batch_mates(speech_server):
    samples = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    samples[5] = np.inf
    bad = wav_bytes(samples, float32=True)

    async def both():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                client.post(speech_server.url + "/", content=bad, headers={"content-type": "audio/wav"}),
                client.post(speech_server.url + "/", content=speech_server.clip, headers={"content-type": "audio/wav"}),
            )

    for _ in range(3):
        poisoned, innocent = asyncio.run(both())
        assert poisoned.status_code == 400 and poisoned.json()["error_type"] == "invalid_audio"
        assert "NaN or infinity" in poisoned.json()["error"]
        assert innocent.status_code == 200 and innocent.json() == speech_server.expected


def test_compressed_audio_is_bounded_per_request(speech_server):
    from tests.serving.test_hostile import _flac_silence

    silence = base64.b64encode(_flac_silence(590)).decode()  # under the per-input limit, 9.8 minutes each
    r = httpx.post(speech_server.url + "/", json={"inputs": [silence] * 2}, timeout=60)
    assert r.status_code == 413, r.text
    assert "--max-request-audio-seconds" in r.json()["error"]
    _normal(speech_server)


def test_decoded_audio_held_at_once_is_bounded(whisper):
    from tests.serving.test_hostile import _flac_silence
    from turboseq.serving.requests import RequestError
    from turboseq.serving.speech import SpeechTask

    task = SpeechTask(whisper)
    task.queued_audio_limit = 100 * 16000
    blob = _flac_silence(60)
    waves, release = task.decode([blob])
    assert task.audio_held == len(waves[0]) >= 60 * 16000
    with pytest.raises(RequestError) as err:
        task.decode([blob])  # 120 s would be held at once
    assert err.value.status == 503 and "--max-queued-audio-seconds" in err.value.message
    assert task.audio_held == len(waves[0])  # the refused request holds nothing
    release()
    assert task.audio_held == 0
    task.decode([blob])[1]()  # room again


# --- live text servers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_server(gpt2_text):
    srv = ServerProcess(gpt2_text[3], "--max-batch-size", "4", "--max-new-tokens", "40")
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "body, words",
    [
        ({"inputs": "Hi", "parameters": {"stop": ["zz"] * 60000}}, "--max-parameter-items"),
        ({"inputs": "Hi", "parameters": {"stop": ["zz"] * 17}}, "17 stop strings are over the server's limit of 16"),
        ({"inputs": "Hi", "parameters": {"stop": ["z" * 20000]}}, "--max-parameter-chars"),
        ({"inputs": "Hi", "parameters": {"bad_words_ids": [[5, 6, 7]] * 50000}}, "--max-parameter-items"),
        ({"inputs": "Hi", "parameters": {"length_penalty": -1e308, "num_beams": 2}}, "`length_penalty`"),
    ],
)
def test_cheap_requests_that_would_hold_the_engine(lm_server, body, words):
    r = httpx.post(lm_server.url + "/", json=body, timeout=30)
    assert r.status_code == 422 and words in r.json()["error"], r.text


def test_internal_fields_and_bad_completion_numbers(lm_server):
    r = httpx.post(lm_server.url + "/", json={"inputs": "Hi", "parameters": {"_trim_stop": True}})
    assert r.status_code == 422 and "_trim_stop" in r.json()["error"]
    for body, words in (
        ('{"prompt": "Hi", "temperature": NaN}', "`temperature` must be a number in [0, 2]"),
        ('{"prompt": "Hi", "temperature": 0, "top_p": 5}', "`top_p` must be a number in [0, 1]"),
        ('{"prompt": "Hi", "temperature": 0, "top_p": 0}', "`top_p` must be > 0"),
    ):
        r = httpx.post(lm_server.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and words in r.json()["error"], r.text


def test_a_lone_surrogate_in_a_key_is_quoted_not_a_500(lm_server):
    r = httpx.post(
        lm_server.url + "/",
        content=b'{"inputs": "Hi", "parameters": {"\\ud800": 1}}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "\\ud800" in r.json()["error"]
    r = httpx.post(
        lm_server.url + "/", content=b'{"inputs": "Hi", "\\udfff": 1}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "\\udfff" in r.json()["error"]


def test_head_health(lm_server):
    assert httpx.head(lm_server.url + "/health").status_code == 200


# --- HTTP framing and connections ---------------------------------------------------------------------------------

_NEXT = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "head, words",
    [
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"both Transfer-Encoding and Content-Length",
        ),
        (b"GET /health HTTP/1.1\nHost: x\n\n", b"lines must end with CRLF"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\n\r\n", b"lines must end with CRLF"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", b"obsolete line folding"),
    ],
)
def test_ambiguous_framing_gets_400_and_a_closed_connection(lm_server, head, words):
    out = raw_http(lm_server.port, head + _NEXT, wait_s=5)
    assert out.startswith(b"HTTP/1.1 400") and words in out, out
    assert out.count(b"HTTP/1.1") == 1  # the pipelined request behind it is never served


@pytest.mark.pace
def test_a_body_over_the_limit_closes_the_connection(lm_server):
    t0 = time.time()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % 300_000 + b"x" * 300_000 + b"\r\n"
    out = raw_http(lm_server.port, head + chunk * 5, wait_s=15)
    assert out.startswith(b"HTTP/1.1 413") and out.count(b"HTTP/1.1") == 1  # no unsolicited 408 later
    assert time.time() - t0 < 10


@pytest.mark.pace
def test_a_slow_flood_from_one_address_leaves_room_for_others(marian_one):
    srv = ServerProcess(marian_one[1], "--max-connections-per-client", "8", "--first-byte-timeout-s", "1")
    try:
        flood = [socket.create_connection(("127.0.0.1", srv.port), source_address=("127.0.0.2", 0)) for _ in range(12)]
        refused = 0
        for s in flood[8:]:
            s.settimeout(5)
            refused += b"too many open connections from this address" in s.recv(4096)
        assert refused == 4
        # another address is served meanwhile
        assert httpx.get(srv.url + "/health").status_code == 200
        # idle sockets that never sent a byte are closed after --first-byte-timeout-s
        flood[0].settimeout(5)
        t0 = time.time()
        assert flood[0].recv(4096).startswith(b"HTTP/1.1 408")
        assert time.time() - t0 < 3
        for s in flood:
            s.close()
    finally:
        srv.stop()


# --- signals while busy ----------------------------------------------------------------------------------------


def _busy_speech_server(ct2_dir, *args):
    return ServerProcess(ct2_dir, "--request-timeout-s", "120", *args)


def _send_abuse(srv, clip):
    import threading

    body = {
        "inputs": base64.b64encode(clip).decode(),
        "parameters": {"temperature": [1.0] * 32, "best_of": 1, "beam_size": 1, "log_prob_threshold": 0.0},
    }
    thread = threading.Thread(target=_swallow, args=(lambda: httpx.post(srv.url + "/", json=body, timeout=180),))
    thread.daemon = True
    thread.start()
    time.sleep(2)  # the request is in the engine


def _swallow(fn):
    try:
        fn()
    except httpx.HTTPError:
        pass


@pytest.mark.pace
def test_a_second_signal_exits_at_once(ct2_dir, clips):
    srv = _busy_speech_server(ct2_dir)
    _send_abuse(srv, clips[2].read_bytes())
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    t0 = time.time()
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(10) != 0
    assert time.time() - t0 < 5


@pytest.mark.pace
def test_sigterm_exits_within_the_drain_timeout_mid_abuse(ct2_dir, clips):
    srv = _busy_speech_server(ct2_dir, "--drain-timeout-s", "2")
    _send_abuse(srv, clips[2].read_bytes())
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(30)
    assert time.time() - t0 < 2 + 10  # the drain, then the engine leaves at its next step


# --- CLI: configs that crashed ----------------------------------------------------------------------------------


def _gpt2_copy(gpt2_text, tmp_path, **changes):
    import shutil

    path = tmp_path / "gpt2"
    shutil.copytree(gpt2_text[3], path)
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"n_head": 0}, "`n_head` must be a whole number in [1,"),
        ({"n_layer": 10**12}, "`n_layer` must be a whole number in [0,"),
        ({"n_embd": "64"}, "`n_embd` must be a whole number"),
        ({"n_positions": 4096}, "the config allows 4096 positions, the weights hold"),
    ],
)
def test_configs_that_do_not_fit_are_one_line_errors(gpt2_text, tmp_path, changes, words):
    path = _gpt2_copy(gpt2_text, tmp_path, **changes)
    res = run_cli("generate", "--model", path, "--max-new-tokens", "4", stdin="Hello\n")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_deeply_nested_config_is_a_one_line_error(gpt2_text, tmp_path):
    path = _gpt2_copy(gpt2_text, tmp_path)
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    res = run_cli("generate", "--model", path, stdin="Hello\n")
    assert res.returncode == 2 and "nested too deeply" in res.stderr and "Traceback" not in res.stderr


def test_cli_usage_errors_are_one_line(gpt2_text, tmp_path):
    res = run_cli("serve", "--model", gpt2_text[3], "--port", "99999")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "turboseq serve: error: argument --port: must be a port number in 0-65535, got 99999 "
        "(see `turboseq serve --help`)"
    )
    res = run_cli("translate", "--model", gpt2_text[3], "--beams", "4")
    assert res.stderr.strip() == (
        "turboseq translate: error: unrecognized arguments: --beams 4 (see `turboseq translate --help`)"
    )
    res = run_cli("export", "--model", gpt2_text[3], "--out", tmp_path)
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"turboseq: error: {tmp_path}: is a directory; --out takes the path of the .pt2 file to write"
    )


@pytest.mark.pace
def test_a_huge_chunk_size_is_refused_at_once(lm_server):
    t0 = time.time()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    out = raw_http(lm_server.port, head + b"ffffffffffff\r\n" + b"x" * 100, wait_s=10)
    assert out.startswith(b"HTTP/1.1 413") and b"chunk of 281474976710655 bytes is over the limit" in out, out
    assert time.time() - t0 < 3
    # a small chunked body still works
    body = b'{"inputs": "Hi", "parameters": {"max_new_tokens": 2}}'
    out = raw_http(lm_server.port, head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", wait_s=2)
    assert out.startswith(b"HTTP/1.1 200"), out


def test_ambiguous_framing_after_a_good_request_on_the_same_connection(lm_server):
    bad = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    out = raw_http(lm_server.port, _NEXT + bad + _NEXT, wait_s=5)
    assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1 400") == 1 and out.count(b"HTTP/1.1") == 2, out
