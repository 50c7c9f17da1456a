"""``turboseq serve --ray``: the command starts a local Ray, serves, and exits 0 on SIGTERM; a model that cannot
load ends it with one line naming the cause."""

import shutil

import httpx

from tests.helpers import run_cli
from turboseq.serving.process import ServerProcess, free_port


def test_serve_ray_command(marian_one):
    model, path = marian_one
    kw = {"num_beams": 2, "max_new_tokens": 8, "min_new_tokens": 3}
    server = ServerProcess(path, "--ray", "--replicas", "1", "--num-cpus-per-replica", "2")
    try:
        r = httpx.post(server.url + "/", json={"inputs": ["hello world"], "parameters": kw}, timeout=60)
        assert r.status_code == 200 and r.headers["x-turboseq-replica"]
        assert r.json() == [{"translation_text": model.translate(["hello world"], **kw)[0]}]
        assert httpx.get(server.url + "/info").json()["limits"]["batch_wait_ms"] == 20.0  # Ray's default
    finally:
        assert server.stop() == 0


def test_serve_ray_errors(marian_one, tmp_path):
    _, path = marian_one
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:1000])
    res = run_cli("serve", "--model", broken, "--ray", "--port", free_port())
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert last.startswith(f"turboseq: error: Ray Serve could not start {broken}: turboseq.errors.ModelLoadError: ")
    assert "model.safetensors: cannot read weights" in last
    res = run_cli("serve", "--model", path, "--replicas", "2")
    assert res.returncode == 2
    assert res.stderr == (
        "turboseq: error: --replicas, --max-replicas, --num-cpus-per-replica and --ray-address need --ray\n"
    )
