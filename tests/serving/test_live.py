"""Live transcription over WebSockets with the real tiny.en weights: the ``openai`` SDK's Realtime client, a plain
``websockets`` client, concurrent streams at real-time pace, limits and hostile input."""

import base64
import json
import threading
import time

import httpx
import numpy as np
import pytest

from turboseq.bench.quality import word_error_rate
from turboseq.serving.process import ServerProcess

pytestmark = pytest.mark.pace  # streams at real-time pace: run with the machine to itself


@pytest.fixture(scope="module")
def server(ct2_dir):
    srv = ServerProcess(
        ct2_dir,
        "--max-live-streams", "6",
        "--live-idle-timeout-s", "4",
        "--max-live-seconds", "400",
        "--max-live-frame-bytes", "300000",
    )  # fmt: skip
    yield srv
    srv.stop()


def ulaw8k(samples) -> bytes:
    """16 kHz float samples as G.711 mu-law at 8 kHz (pairs averaged, encoded by Python's audioop)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    half = np.asarray(samples, np.float32)[: len(samples) // 2 * 2].reshape(-1, 2).mean(axis=1)
    return audioop.lin2ulaw((np.clip(half, -1, 1) * 32767).astype("<i2").tobytes(), 2)


def pcm16(samples, rate: int = 16000) -> bytes:
    if rate != 16000:
        from scipy.signal import resample_poly

        samples = resample_poly(samples, rate // 1000, 16)
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def plain(server, query: str = ""):
    from websockets.sync.client import connect

    return connect(server.url.replace("http", "ws") + "/v1/audio/live" + query, max_size=None, open_timeout=30)


def read_until(ws, kind: str, timeout: float = 60) -> list[dict]:
    messages = []
    while True:
        message = json.loads(ws.recv(timeout=timeout))
        messages.append(message)
        assert message["type"] != "error", message
        if message["type"] == kind:
            return messages


def live_streams(server) -> float:
    metrics = httpx.get(server.url + "/metrics").text
    lines = [line for line in metrics.splitlines() if line.startswith("turboseq_live_streams ")]
    return float(lines[0].split()[-1]) if lines else 0.0  # no line before the first stream


def offline(whisper, wave) -> str:
    return whisper.transcribe(wave).text


def test_openai_sdk_receives_deltas_and_completed_turns(server, waves, whisper):
    """The `openai` SDK's Realtime client, transcription session with server VAD: two sentences with a pause
    between them are two turns; each turn's deltas add up to its completed transcript."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    audio = np.concatenate([waves[0], np.zeros(24000, np.float32), waves[2], np.zeros(24000, np.float32)])
    pcm = pcm16(audio, 24000)
    events = []
    with client.realtime.connect(model="tiny.en", extra_query={"intent": "transcription"}) as conn:
        created = conn.recv()
        assert created.type == "session.created"
        conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "tiny.en", "language": "en"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                    }
                },
            }
        )
        assert conn.recv().type == "session.updated"
        step, start = 24000 * 2 // 5, time.monotonic()  # 0.2 s pieces at real-time pace
        for i in range(0, len(pcm), step):
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())
            time.sleep(max(0.0, (i + step) / 48000 - (time.monotonic() - start)))
        while sum(e.type.endswith(".completed") for e in events) < 2:
            events.append(conn.recv())
            assert events[-1].type != "error", events
    kinds = [e.type for e in events]
    assert kinds.count("input_audio_buffer.speech_started") == 2 and kinds.count("input_audio_buffer.committed") == 2
    completed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    from turboseq.bench.speech import SENTENCES

    for turn, k in zip(completed, [0, 2]):
        deltas = [e.delta for e in events if e.type.endswith(".delta") and e.item_id == turn.item_id]
        assert "".join(deltas).strip() == turn.transcript
        # against what was said, beside the offline transcription's own errors on these short clips (on a Zen 3
        # live heard "round-fark ... lazy dog" where offline heard "roundfark ... lazy nog")
        heard = word_error_rate([SENTENCES[k]], [offline(whisper, waves[k])])
        assert word_error_rate([SENTENCES[k]], [turn.transcript]) <= heard + 0.25, turn.transcript
        assert turn.usage.type == "duration" and turn.usage.seconds > 1
    assert completed[0].item_id != completed[1].item_id


def test_manual_commit_clear_and_error_events(server, waves, whisper):
    """turn_detection null: the client commits; clear drops the buffer; mistakes are error events, the session
    goes on."""
    from websockets.sync.client import connect

    ws = connect(server.url.replace("http", "ws") + "/v1/realtime?intent=transcription", max_size=None)
    try:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"

        def send(event):
            ws.send(json.dumps(event))

        def next_event():
            return json.loads(ws.recv(timeout=60))

        send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}})  # fmt: skip
        assert next_event()["session"]["audio"]["input"]["turn_detection"] is None
        send({"type": "input_audio_buffer.commit", "event_id": "c1"})
        error = next_event()
        assert error["type"] == "error" and error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "c1"
        for bad, code in [
            ("not json", "invalid_json"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}), "invalid_audio"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
             "invalid_audio"),
            (json.dumps({"type": "response.create"}), "unsupported_event"),
            (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "unsupported_session_type"),
            (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}}),
             "unsupported_format"),
            (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu",
                                                                                               "rate": 16000}}}}}),
             "unsupported_format"),
        ]:  # fmt: skip
            ws.send(bad)
            event = next_event()
            assert event["type"] == "error" and event["error"]["code"] == code, event
        ws.send(b"\x00\x00")
        assert next_event()["error"]["code"] == "invalid_message"
        # a clip, cleared, then another, committed: only the second is transcribed
        send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16(waves[1])).decode()})
        send({"type": "input_audio_buffer.clear"})
        assert next_event()["type"] == "input_audio_buffer.cleared"
        # the second as G.711 mu-law at 8 kHz (the beta protocol's name for it)
        send({"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}})
        assert next_event()["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu", "rate": 8000}
        send({"type": "input_audio_buffer.append", "audio": base64.b64encode(ulaw8k(waves[3])).decode()})
        send({"type": "input_audio_buffer.commit"})
        events = [next_event()]
        while events[-1]["type"] != "conversation.item.input_audio_transcription.completed":
            events.append(next_event())
        assert events[0]["type"] == "input_audio_buffer.committed"
        assert word_error_rate([offline(whisper, waves[3])], [events[-1]["transcript"]]) <= 0.25, events[-1]
    finally:
        ws.close()


def test_plain_mode_streams_final_and_partial_words(server, waves, whisper):
    audio = np.concatenate([waves[4], np.zeros(16000, np.float32), waves[5]])
    with plain(server, "?language=en&sample_rate=16000") as ws:
        ready = {"type": "ready", "model": server_name(server), "sample_rate": 16000, "beam_size": 5}
        assert json.loads(ws.recv(timeout=30)) == ready
        pcm = pcm16(audio)
        for i in range(0, len(pcm), 6400):
            ws.send(pcm[i : i + 6400])
        ws.send(json.dumps({"type": "end"}))
        messages = read_until(ws, "done")
    finals = [m for m in messages if m["type"] == "final"]
    done = messages[-1]
    assert "".join(m["text"] for m in finals).strip() == done["text"]
    assert word_error_rate([offline(whisper, audio)], [done["text"]]) <= 0.2, done
    words = [w for m in finals for w in m["words"]]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert done["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)


def server_name(server) -> str:
    return httpx.get(server.url + "/info").json()["model"]


def test_four_streams_at_real_time_pace_keep_up(server, recording):
    """Four clients stream 40 s each at real-time pace at once: every stream's words keep coming, and its
    transcript is done within seconds of its audio's end. The streams share the engine, so the server gives them
    short windows (``full_window=False``). Four streams on 2 cores do not keep a flat delay yet (the roadmap's
    first live item; ``turboseq bench --arch whisper-live`` measures it): on an AVX2-only AMD EPYC Zen 3 the last
    transcript came 16 s after the audio's end and words waited up to 42 s while other work shared the machine,
    on a Zen 4 12 s (before the streams were batched together). The bounds here catch a starved stream, not lag."""
    seconds = 40
    results: dict[int, dict] = {}

    def client(k: int):
        start_at = 30 * k  # different stretches of the recording
        audio = recording[start_at * 16000 : (start_at + seconds) * 16000]
        with plain(server) as ws:
            json.loads(ws.recv(timeout=30))
            received, t0 = [], time.monotonic()
            done = threading.Event()

            def reader():
                while True:
                    message = json.loads(ws.recv(timeout=60))
                    received.append((time.monotonic() - t0, message))
                    if message["type"] in ("done", "error"):
                        done.set()
                        return

            thread = threading.Thread(target=reader)
            thread.start()
            pcm = pcm16(audio)
            for i in range(0, len(pcm), 3200):  # 0.1 s pieces when they have been spoken
                time.sleep(max(0.0, (i + 3200) / 32000 - (time.monotonic() - t0)))
                ws.send(pcm[i : i + 3200])
            sent = time.monotonic() - t0
            ws.send(json.dumps({"type": "end"}))
            done.wait(60)
            thread.join(5)
        lags = [at - w["end"] for at, m in received if m["type"] == "final" for w in m["words"]]
        results[k] = {"sent": sent, "done": received[-1][0], "lags": lags, "last": received[-1][1]}

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert sorted(results) == [0, 1, 2, 3]
    for k, r in results.items():
        assert r["last"]["type"] == "done", r["last"]
        assert r["sent"] < seconds + 3  # the sender itself kept pace (the server read its frames)
        assert r["done"] - r["sent"] < 40, r  # bounded: what was left to decode at the end
        # words keep coming throughout; four streams share 2 cores, so words wait far longer than alone, and
        # longer as the streams go on (the roadmap's first live item): bounded here, not yet flat
        assert len(r["lags"]) > 40 and max(r["lags"]) < 60, (k, r["lags"])
    # the server decoded streams together
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    batches = [line for line in metrics.splitlines() if line.startswith("turboseq_live_decode_batch_bucket")]
    one = next(float(line.split()[-1]) for line in batches if 'le="1.0"' in line)
    total = next(float(line.split()[-1]) for line in batches if 'le="+Inf"' in line)
    assert one < total, batches


def test_disconnect_frees_the_stream_and_stream_limit(server, waves):
    from websockets.sync.client import connect

    for _ in range(50):  # streams of an earlier test may still be closing
        if live_streams(server) == 0:
            break
        time.sleep(0.1)
    sockets = [plain(server) for _ in range(6)]
    for ws in sockets:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(pcm16(waves[0][:32000]))
    assert live_streams(server) == 6
    with connect(server.url.replace("http", "ws") + "/v1/audio/live") as extra:
        message = json.loads(extra.recv(timeout=30))
        assert message["error_type"] == "too_many_streams"
        assert "6 live streams are open, the server's limit (--max-live-streams)" in message["error"]
    for ws in sockets:
        ws.close()  # mid-stream: no end message
    for _ in range(100):
        if live_streams(server) == 0:
            break
        time.sleep(0.1)
    assert live_streams(server) == 0
    # the per-client connection count is given back too: many short streams in a row are all served
    for _ in range(12):
        with plain(server) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"


def test_hostile_streams(server):
    # wrong parameters: refused in one line, then closed
    with plain(server, "?sample_rate=abc") as ws:
        message = json.loads(ws.recv(timeout=30))
        assert message == {
            "type": "error",
            "error": "`sample_rate` must be an integer from 8000 to 192000 (Hz), got 'abc'",
            "error_type": "invalid_request",
        }
    for beams in ("0", "11", "2.5", "\u00b2"):
        with plain(server, f"?beam_size={beams}") as ws:
            assert (
                json.loads(ws.recv(timeout=30))["error"]
                == f"`beam_size` must be an integer from 1 to 10, got {beams!r}"
            )
    with plain(server, "?beam_size=1&sample_rate=8000") as ws:  # greedy, for a client that wants the engine's time
        ready = {"type": "ready", "model": server_name(server), "sample_rate": 8000, "beam_size": 1}
        assert json.loads(ws.recv(timeout=30)) == ready
    with plain(server, "?language=de") as ws:
        assert json.loads(ws.recv(timeout=30))["error_type"] == "invalid_request"
    with plain(server) as ws:
        json.loads(ws.recv(timeout=30))
        ws.send(b"\x00\x01\x02")  # odd byte count: not PCM16
        assert json.loads(ws.recv(timeout=30)) == {
            "type": "error",
            "error": "PCM16 audio comes in whole 2-byte samples, got 3 bytes",
            "error_type": "invalid_audio",
        }
        ws.send(b"\x00" * 300002)  # over --max-live-frame-bytes
        message = json.loads(ws.recv(timeout=30))
        assert message["error_type"] == "message_too_large" and "over the limit of 300000" in message["error"]
        ws.send("hello")
        assert json.loads(ws.recv(timeout=30))["error_type"] == "invalid_message"
        # the stream still works after its errors; then it goes idle and is closed
        ws.send(b"\x00\x00" * 16000)
        message = json.loads(ws.recv(timeout=30))
        assert message["error_type"] == "idle_timeout", message
    # six and a half minutes of silence sent at once (compressed time): no word, bounded memory, and the
    # stream ends at --max-live-seconds (400) with its transcript
    rss_before = _server_rss(server)
    with plain(server) as ws:
        json.loads(ws.recv(timeout=30))
        silence = pcm16(np.zeros(16000 * 5, np.float32))
        messages = []
        for _ in range(82):
            ws.send(silence)
        while not messages or messages[-1]["type"] != "done":
            messages.append(json.loads(ws.recv(timeout=60)))
    assert [m["type"] for m in messages] == ["error", "done"]
    assert messages[0]["error_type"] == "stream_too_long"
    assert messages[1]["text"] == "" and messages[1]["duration"] == pytest.approx(400, abs=5)
    assert _server_rss(server) - rss_before < 200e6


def _server_rss(server) -> float:
    with open(f"/proc/{server.pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
