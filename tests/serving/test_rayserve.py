"""The Ray Serve deployment (2 replicas, on a local Ray started once for this module) answers on loopback exactly
as the plain server does: same bodies, same errors, same streams; replicas label their metrics; a model that
cannot load never becomes healthy."""

import asyncio
import shutil

import httpx
import pytest
import ray
from ray import serve

from tests.serving.test_server import SENTENCES
from turboseq.serving.config import ServerConfig
from turboseq.serving.process import ServerProcess, free_port
from turboseq.serving.rayserve import APP_NAME, deploy_failure, deployment

LIMITS = dict(max_batch_size=4, max_payload_bytes=20000, max_input_tokens=40)
FLAGS = ("--max-batch-size", "4", "--max-payload-bytes", "20000", "--max-input-tokens", "40")


@pytest.fixture(scope="module")
def servers(marian_one):
    """(Ray Serve URL, plain server URL) for the same model and limits."""
    _, path = marian_one
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # 0.9 CPU each (one torch thread): the failing deployment below gets the rest of this Ray's two CPUs
    app = deployment(path, config=ServerConfig(**LIMITS), replicas=2, num_cpus=0.9)
    serve.run(app, name=APP_NAME, route_prefix="/")
    plain = ServerProcess(path, *FLAGS)
    yield f"http://127.0.0.1:{port}", plain.url
    plain.stop()
    serve.shutdown()
    ray.shutdown()


def _requests(name: str) -> list[tuple]:
    kw = {"num_beams": 2, "max_new_tokens": 12}
    json_type = {"content-type": "application/json"}
    return [
        ("GET", "/health", None, {}),
        ("GET", "/info", None, {}),
        ("POST", "/", {"inputs": SENTENCES[:3], "parameters": kw}, {}),
        ("POST", f"/models/{name}", {"inputs": SENTENCES[3], "parameters": kw}, {}),
        ("POST", "/", {"inputs": ["", SENTENCES[4]], "parameters": kw}, {}),
        ("POST", "/", {"inputs": []}, {}),
        ("POST", "/", b'{"inputs": "x"', json_type),
        ("POST", "/", b'{"inputs": "\xff\xfe"}', json_type),
        ("POST", "/", {"inputs": 5}, {}),
        ("POST", "/", {"inputs": "x", "parameters": {"num_beans": 2}}, {}),
        ("POST", "/", {"inputs": "word " * 60}, {}),
        ("POST", "/", {"inputs": "x" * 30000}, {}),
        ("POST", "/", {"inputs": "x", "parameters": {"num_beams": 99}}, {}),
        ("POST", "/models/other", {"inputs": "x"}, {}),
        ("GET", "/nope", None, {}),
        ("POST", "/generate_stream", {"inputs": SENTENCES[0], "parameters": kw}, {}),
    ]


def _send(url: str, method: str, path: str, body, headers: dict) -> tuple:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    r = httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def test_same_answers_and_errors(servers, marian_one):
    ray_url, plain_url = servers
    checked = 0
    for method, path, body, headers in _requests(marian_one[1].name):
        on_ray, plain = _send(ray_url, method, path, body, headers), _send(plain_url, method, path, body, headers)
        assert on_ray == plain, (path, body)
        checked += on_ray[0] >= 400
    assert checked >= 10  # the list does reach the error paths


def _events(url: str, body: dict) -> tuple:
    with httpx.stream("POST", url + "/generate_stream", json=body, timeout=60) as r:
        return r.status_code, r.headers["content-type"], [line for line in r.iter_lines() if line]


def test_same_streams(servers):
    ray_url, plain_url = servers
    body = {"inputs": SENTENCES[1], "parameters": {"num_beams": 1, "max_new_tokens": 10, "min_new_tokens": 6}}
    on_ray = _events(ray_url, body)
    assert on_ray == _events(plain_url, body)
    assert on_ray[0] == 200 and len(on_ray[2]) > 3 and "generated_text" in on_ray[2][-1]


def test_concurrent_requests_equal_single(servers):
    """16 requests at once, merged into batches inside the replicas: each answer equals its answer alone."""
    ray_url, plain_url = servers
    kw = {"num_beams": 2, "max_new_tokens": 12}
    alone = {s: httpx.post(plain_url + "/", json={"inputs": s, "parameters": kw}).json() for s in SENTENCES}

    async def run():
        async with httpx.AsyncClient(timeout=60) as http:
            bodies = [{"inputs": SENTENCES[i % len(SENTENCES)], "parameters": kw} for i in range(16)]
            return await asyncio.gather(*(http.post(ray_url + "/", json=b) for b in bodies))

    answers = asyncio.run(run())
    assert [r.status_code for r in answers] == [200] * 16
    assert [r.json() for r in answers] == [alone[SENTENCES[i % len(SENTENCES)]] for i in range(16)]
    assert len({r.headers["x-turboseq-replica"] for r in answers}) == 2  # both replicas took some


def test_metrics_per_replica(servers):
    """Each replica labels its own metrics. Requests go out 8 at a time, as Ray's router sends sequential requests
    to whichever replica has answered fastest, so one-by-one requests can all land on one replica."""
    ray_url, _ = servers

    async def burst():
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(*(http.get(ray_url + "/metrics") for _ in range(8)))

    labels = set()
    for _ in range(10):
        for r in asyncio.run(burst()):
            assert r.status_code == 200 and "turboseq_generated_tokens" in r.text
            labels |= {line.split('"')[1] for line in r.text.splitlines() if line.startswith("turboseq_replica_info{")}
        if len(labels) == 2:
            break
    assert len(labels) == 2


def test_broken_model_never_healthy(servers, marian_one, tmp_path):
    ray_url, _ = servers
    broken = tmp_path / "broken"
    shutil.copytree(marian_one[1], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(RuntimeError):
        serve.run(deployment(broken, num_cpus=0.1), name="broken", route_prefix="/broken")
    reason = deploy_failure("broken")
    assert reason.startswith("turboseq.errors.ModelLoadError: ") and "cannot read weights" in reason
    assert httpx.get(ray_url + "/broken/health").status_code != 200
    serve.delete("broken")
    assert httpx.get(ray_url + "/health").json() == {"status": "ok"}  # the other application is untouched


def test_app_builder_arguments(marian_one):
    """``serve run turboseq.serving.rayserve:app_builder key=value ...``: strings become the settings' types."""
    from ray.serve import Application

    from turboseq.serving.rayserve import app_builder

    _, path = marian_one
    app = app_builder({"model": str(path), "replicas": "2", "max_batch_size": "8", "batching": "false"})
    assert isinstance(app, Application)
    kwargs_config = app._bound_deployment.init_args[1]
    assert kwargs_config["max_batch_size"] == 8 and kwargs_config["batching"] is False
    assert kwargs_config["batch_wait_ms"] == 20.0  # Ray's default: requests come through the proxy spread out
    with pytest.raises(ValueError, match="unknown argument"):
        app_builder({"model": str(path), "max_batch_sise": "8"})
    with pytest.raises(ValueError, match=r"`max_batch_size` must be an integer >= 1, got 0"):
        app_builder({"model": str(path), "max_batch_size": "0"})
    with pytest.raises(ValueError, match="app_builder needs model=DIR"):
        app_builder({})
