"""Serving tasks: a new kind of model plugs into the server by registering a Task (no server change), and
the streaming detokenizer never emits half a character."""

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest


class Reverser:
    """A stand-in for a new kind of model: it 'generates' its input reversed."""

    def __init__(self):
        self.spec = SimpleNamespace(max_positions=64)
        self.config = {"model_type": "reverser"}
        self.path = Path("/models/reverser")
        self.dtype = "float32"
        self.batches = []
        self.warm_gate = threading.Event()  # warm-up waits for it
        self.warm_gate.set()
        self.warm_error = None


@pytest.fixture()
def reverser_task():
    from turboseq.serving.requests import task_body
    from turboseq.serving.tasks import TASKS, Parsed, Prepared, Route, Task, register

    @register(Reverser)
    class ReverseTask(Task):
        name = "text-reversal"

        def parse(self, raw, content_type, limit):
            inputs, params, single = task_body(raw, limit)
            slots = [i for i, t in enumerate(inputs) if t]
            return Parsed([inputs[i] for i in slots], slots, len(inputs), params, single)

        def prepare(self, params):
            if set(params) - {"upper"}:
                raise ValueError(f"unknown parameter(s): {', '.join(sorted(set(params) - {'upper'}))}")
            upper = bool(params.get("upper"))
            return Prepared(upper, str(upper))  # settings, batch key

        def run(self, rows, upper, abandoned=None, on_tokens=None):
            self.model.batches.append(list(rows))
            out = [r[::-1] for r in rows]
            return [o.upper() if upper else o for o in out], 0

        def empty(self, upper):
            return ""

        def respond(self, answers, parsed):
            return [{"reversed": a} for a in answers]

        def warm(self, batch_size):
            self.model.warm_gate.wait(30)
            if self.model.warm_error:
                raise RuntimeError(self.model.warm_error)

        def routes(self):
            return [Route("/v1/reverse", self.reverse)]

        async def reverse(self, service, request):
            service.ensure_ready()
            body = await request.json()
            (answer,) = await service.infer(request, Parsed([body["text"]], [0], 1, {}))
            return {"text": answer}

    yield ReverseTask
    del TASKS[Reverser]


def test_a_registered_task_is_served_without_server_changes(reverser_task):
    from fastapi.testclient import TestClient

    from turboseq.serving.app import ServerConfig, create_app

    model = Reverser()
    app = create_app(model, config=ServerConfig(max_batch_size=3))
    with TestClient(app) as client:  # runs the lifespan: batcher and warm-up
        _wait_healthy(client)
        info = client.get("/info").json()
        assert info["task"] == "text-reversal" and info["model"] == "reverser" and not info["streaming"]
        assert "/v1/reverse" in info["routes"]
        r = client.post("/", json={"inputs": ["abc", "", "xy"]})
        assert r.status_code == 200 and r.json() == [{"reversed": "cba"}, {"reversed": ""}, {"reversed": "yx"}]
        assert client.post("/models/reverser", json={"inputs": "ab", "parameters": {"upper": True}}).json() == [
            {"reversed": "BA"}
        ]
        assert model.batches[-1] == ["ab"]
        r = client.post("/", json={"inputs": "ab", "parameters": {"lower": True}})
        assert r.status_code == 422 and "lower" in r.json()["error"]
        r = client.post("/", json={"inputs": ["a", "b", "c", "d"]})
        assert r.status_code == 413 and r.json()["error_type"] == "too_many_inputs"
        assert client.post("/v1/reverse", json={"text": "hello"}).json() == {"text": "olleh"}
        r = client.post("/generate_stream", json={"inputs": "ab"})
        assert r.status_code == 404 and "text-reversal" in r.json()["error"]
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 404
        assert 'turboseq_rejected_requests_total{reason="validation_error"} 1.0' in client.get("/metrics").text


def _wait_healthy(client, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        r = client.get("/health")
        if r.status_code == 200:
            return r
        time.sleep(0.02)
    raise AssertionError(f"not healthy: {r.json()}")


def test_health_is_503_while_warming_up_and_draining(reverser_task):
    from fastapi.testclient import TestClient

    from turboseq.serving.app import create_app

    model = Reverser()
    model.warm_gate.clear()
    app = create_app(model)
    with TestClient(app) as client:  # the server answers while the warm-up runs
        assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "warming up"
        r = client.post("/", json={"inputs": "ab"})
        assert r.status_code == 503 and r.json() == {"error": "server is warming up", "error_type": "unavailable"}
        model.warm_gate.set()
        _wait_healthy(client)
        assert client.post("/", json={"inputs": "ab"}).json() == [{"reversed": "ba"}]
        app.state.service.draining = True  # what SIGTERM sets (the signal itself: test_server.py)
        assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "draining"
        assert client.post("/", json={"inputs": "ab"}).status_code == 503


def test_failed_warm_up_never_reports_ready(reverser_task):
    from fastapi.testclient import TestClient

    from turboseq.serving.app import create_app

    model = Reverser()
    model.warm_error = "kernel exploded"
    app = create_app(model)
    failed = []
    app.state.service.on_warmup_failure = lambda: failed.append(True)
    with TestClient(app) as client:
        deadline = time.time() + 10
        while not failed and time.time() < deadline:
            time.sleep(0.02)
        r = client.get("/health")
        assert failed and r.status_code == 503 and "kernel exploded" in r.json()["error"]
        assert client.post("/", json={"inputs": "ab"}).status_code == 503


def test_unregistered_model_class_is_a_clear_error():
    from turboseq.serving.tasks import task_for

    with pytest.raises(ValueError, match="no serving task is registered for Reverser"):
        task_for(Reverser())


def test_registered_tasks_cover_every_model_class():
    import turboseq.serving.app  # noqa: F401  (the server registers the built-in tasks)
    from turboseq import EncoderModel, Seq2SeqModel, SpeechModel
    from turboseq.serving.encoders import encoder_task
    from turboseq.serving.speech import SpeechTask
    from turboseq.serving.tasks import TASKS
    from turboseq.serving.text import GenerationTask

    assert TASKS[Seq2SeqModel] is GenerationTask and TASKS[EncoderModel] is encoder_task
    assert TASKS[SpeechModel] is SpeechTask
    assert not issubclass(SpeechModel, Seq2SeqModel)  # sibling front ends on one engine


@pytest.fixture(scope="module")
def byte_level_tokenizer(tmp_path_factory):
    from turboseq.bench.models import build_bart_tokenizer
    from turboseq.formats.tokenizer import load_tokenizer

    path = tmp_path_factory.mktemp("bytebpe")
    build_bart_tokenizer(path, 400, bpe_size=300)
    return load_tokenizer(path)


def test_text_stream_never_sends_half_a_character(byte_level_tokenizer):
    from turboseq.serving.text import TextStream

    tok = byte_level_tokenizer
    text = "Grüße aus Köln, 東京 and 👋🏽 — done."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # the case under test must occur: some character's bytes are split across tokens
    assert any(tok.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))
    stream = TextStream(tok, eos_token_ids=[2])
    pieces = [stream.push(t)["text"] for t in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + stream.rest(text) == text and stream.rest(text) == ""
    assert stream.finish_reason == "length"
    stream.push(2)
    assert stream.finish_reason == "eos_token"


def test_text_stream_resolves_a_trailing_partial_character_at_the_end(byte_level_tokenizer):
    from turboseq.serving.text import TextStream

    tok = byte_level_tokenizer
    ids = tok("ok 東", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, eos_token_ids=[2])
    cut = ids[:-1]  # generation stopped inside the last character
    sent = "".join(stream.push(t)["text"] for t in cut)
    final = tok.decode(cut)
    assert final.endswith("\ufffd") and "\ufffd" not in sent
    assert sent + stream.rest(final) == final
