"""``turboseq batch --ray`` and the predictors on Ray Data, on a local Ray started once for this module: outputs
equal the task helpers in order; a killed actor is retried without losing or duplicating rows."""

import json
import os
import sys

import pytest
import ray
import ray.cloudpickle

from tests.batch.test_batch import GEN, _read_jsonl_dir, _sentences, _write_jsonl
from turboseq.batch import Predictor, run_job
from turboseq.batch import job as job_module

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests.*


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_job_equals_translate(marian_one, tmp_path):
    model, path = marian_one
    texts = _sentences(300)
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, texts)
    result = run_job(
        path, src, tmp_path / "out", use_ray=True, concurrency=2, num_cpus=1, shard_rows=100, batch_size=16,
        progress=False, **GEN,
    )  # fmt: skip
    assert (result.rows, result.written) == (300, 3)
    rows = _read_jsonl_dir(tmp_path / "out")
    expected = model.translate(texts, **GEN)
    assert rows == [{"id": i, "text": t, "translation": e} for i, (t, e) in enumerate(zip(texts, expected))]


def test_ray_embed_and_transcribe(minilm, whisper, ct2_dir, clips, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    model, _, _, path = minilm
    texts = [t for t in _sentences(40)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet")
    run_job(path, tmp_path / "in.parquet", tmp_path / "emb", use_ray=True, num_cpus=2, batch_size=8, progress=False)
    got = np.array(pq.read_table(tmp_path / "emb" / "part-00000.parquet").column("embedding").to_pylist())
    # the same vectors, up to float32 rounding: the products' sums depend on how many rows a batch has (~1e-7)
    assert got.shape == (40, 384)
    assert np.abs(got - model.embed(texts).numpy()).max() < 1e-6

    audio = tmp_path / "audio.jsonl"
    audio.write_text("".join(json.dumps({"audio": str(c)}) + "\n" for c in clips[:4]))
    run_job(ct2_dir, audio, tmp_path / "asr", use_ray=True, batch_size=2, progress=False)
    rows = _read_jsonl_dir(tmp_path / "asr")
    assert [r["transcription"] for r in rows] == [t.text for t in whisper.transcribe([str(c) for c in clips[:4]])]
    assert all(r["transcription"] for r in rows)


def test_threads_follow_assigned_cpus():
    from turboseq.runtime.threads import set_worker_threads

    def threads():
        return set_worker_threads()

    got = [ray.get(ray.remote(num_cpus=cpus)(threads).remote()) for cpus in (2, 1, 0.5)]
    assert got == [2, 1, 1]
    assert ray.get(ray.remote(num_cpus=2)(lambda: set_worker_threads(1)).remote()) == 1
    with pytest.raises(ValueError, match=r"`num_threads` must be an integer >= 1, got 0"):
        set_worker_threads(0)


class DiesOnce(Predictor):
    """Kills its own process the first time it is handed row 150 (once per test: a marker file remembers)."""

    def __init__(self, model, *, marker: str, **kwargs):
        super().__init__(model, **kwargs)
        self.marker = marker

    def __call__(self, batch):
        if 150 in batch[job_module.ROW].tolist() and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


def test_killed_actor_is_retried(marian_one, tmp_path, monkeypatch):
    model, path = marian_one
    texts = _sentences(240)
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, texts)
    marker = tmp_path / "killed"
    monkeypatch.setattr(job_module, "Predictor", DiesOnce)
    run_job(
        path, src, tmp_path / "out", use_ray=True, concurrency=2, shard_rows=60, batch_size=16, progress=False,
        marker=str(marker), **GEN,
    )  # fmt: skip
    assert marker.exists()  # an actor did die mid-job
    rows = _read_jsonl_dir(tmp_path / "out")
    expected = model.translate(texts, **GEN)
    assert [r["id"] for r in rows] == list(range(240))
    assert [r["translation"] for r in rows] == expected
