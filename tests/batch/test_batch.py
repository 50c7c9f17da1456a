"""``turboseq batch`` without Ray: outputs equal the task helpers row for row, in order, in every input format;
shards resume; bad jobs fail with one line that names the problem."""

import json
import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import run_cli
from turboseq.batch import Predictor, Translator, run_job

GEN = dict(max_new_tokens=6, min_new_tokens=3, num_beams=2)


def _sentences(n: int) -> list[str]:
    from turboseq.bench.models import bench_sentences

    s = bench_sentences()
    return [s[i % len(s)] if i % 7 else "" for i in range(n)]  # every 7th row blank


def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))


def _read_jsonl_dir(out):
    rows = []
    for f in sorted(out.glob("part-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines()]
    return rows


def test_local_job_equals_translate_and_resumes(marian_one, tmp_path):
    model, path = marian_one
    texts = _sentences(45)
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, texts)
    out = tmp_path / "out"
    result = run_job(path, src, out, shard_rows=10, batch_size=8, progress=False, **GEN)
    assert (result.rows, result.shards, result.written, result.skipped) == (45, 5, 5, 0)
    rows = _read_jsonl_dir(out)
    expected = model.translate(texts, **GEN)
    assert any(expected) and "" in expected
    assert rows == [{"id": i, "text": t, "translation": e} for i, (t, e) in enumerate(zip(texts, expected))]
    # a rerun skips every shard; a lost shard is the only one written again, with the same content
    again = run_job(path, src, out, shard_rows=10, batch_size=8, progress=False, **GEN)
    assert (again.written, again.skipped) == (0, 5)
    lost = out / "part-00003.jsonl"
    before = lost.read_bytes()
    lost.unlink()
    again = run_job(path, src, out, shard_rows=10, batch_size=8, progress=False, **GEN)
    assert (again.written, again.skipped) == (1, 4) and lost.read_bytes() == before
    # the same output directory for another job is refused, naming what differs
    with pytest.raises(ValueError, match=r"holds shards of another job \(it differs in: shard_rows\)"):
        run_job(path, src, out, shard_rows=20, progress=False, **GEN)


def test_formats_and_embeddings(minilm, tmp_path):
    model, _, _, path = minilm
    texts = ["a cat sat on the mat", "1", "true", "", "Ein Satz auf Deutsch."]
    expected = model.embed(texts).numpy()
    # parquet: vectors as fixed-size float32 lists
    pq.write_table(pa.table({"text": texts, "n": list(range(5))}), tmp_path / "in.parquet")
    run_job(path, tmp_path / "in.parquet", tmp_path / "pq", shard_rows=2, progress=False)
    table = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "pq").glob("part-*.parquet"))])
    assert table.column_names == ["text", "n", "embedding"] and table.column("n").to_pylist() == list(range(5))
    assert np.array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32), expected)
    # csv: numbers-looking text stays text; vectors are JSON arrays
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n")
    run_job(path, tmp_path / "in.csv", tmp_path / "csv", column="text", progress=False)
    import csv

    with open(tmp_path / "csv" / "part-00000.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["text"] for r in got] == texts
    assert np.array_equal(np.array([json.loads(r["embedding"]) for r in got], dtype=np.float32), expected)


def test_predictor_batches(marian_one):
    """The map_batches callable: numpy dict and pandas batches, order kept, None as blank."""
    import pandas as pd

    model, path = marian_one
    texts = ["The weather is nice today.", None, "hello"]
    p = Translator(str(path), **GEN)
    out = p({"text": np.array(texts, dtype=object), "k": np.arange(3)})
    expected = model.translate(["" if t is None else t for t in texts], **GEN)
    assert list(out["translation"]) == expected and list(out["k"]) == [0, 1, 2]
    frame = p(pd.DataFrame({"text": texts}))
    assert list(frame["translation"]) == expected
    with pytest.raises(ValueError, match=r"the batch has no column 'text' \(columns: sentence\)"):
        p({"sentence": np.array(["x"], dtype=object)})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="embed"), "is a seq2seq model: task 'embed' needs encoder or export model"),
        (dict(task="summarize"), "unknown task 'summarize'; valid: translate, generate, embed, transcribe"),
        (dict(num_beans=2), "unknown generation argument(s): num_beans"),
        (dict(input_column="text", output_column="text"), "the output column must differ from the input column"),
    ],
)
def test_predictor_errors(marian_one, kwargs, message):
    with pytest.raises(ValueError) as err:
        Predictor(str(marian_one[1]), **kwargs)
    assert message in str(err.value)


def test_cli_batch(marian_one, tmp_path):
    model, path = marian_one
    texts = _sentences(12)
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, texts)
    out = tmp_path / "out"
    params = json.dumps({"min_new_tokens": 3})
    res = run_cli(
        "batch", "--model", str(path), "--input", str(src), "--output", str(out), "--shard-rows", "5",
        "--num-beams", "2", "--max-new-tokens", "6", "--parameters", params, "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().endswith(f"12 rows in 3 shards (3 shards written) in {out}")
    assert [r["translation"] for r in _read_jsonl_dir(out)] == model.translate(texts, **GEN)
    cases = [
        (["--input", str(tmp_path / "nope.jsonl")], f"{tmp_path / 'nope.jsonl'}: no such file"),
        (["--input", str(tmp_path / "in.txt")], "unknown input format; name it .parquet, .jsonl (or .ndjson) or .csv"),
        (["--column", "sentence"], f"{src} has no column 'sentence' (columns: id, text)"),
        (["--output-column", "text"], f"{src} already has a column 'text'; name another with --output-column"),
        (["--parameters", "[1]"], "--parameters: expected a JSON object of option names and values"),
        (["--concurrency", "2"], "--ray-address, --concurrency and --num-cpus need --ray"),
        (["--task", "transcribe"], "is a seq2seq model: task 'transcribe' needs speech model"),
    ]
    for extra, message in cases:
        args = ["batch", "--model", str(path), "--input", str(src), "--output", str(tmp_path / "o2"), *extra]
        res = run_cli(*args)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr, (extra, res.stderr)


def test_without_ray_installed(marian_one, tmp_path, monkeypatch, capsys):
    """Without the extra, the Ray features fail in one line that names it; the local job needs no Ray."""
    from turboseq.cli import main
    from turboseq.errors import MissingExtra
    from turboseq.serving.rayserve import deployment

    _, path = marian_one
    for name in ("ray", "ray.data", "ray.serve"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, ["hello"])
    message = "needs `ray`, which is not installed: pip install 'turboseq[ray]'"
    with pytest.raises(MissingExtra, match=re.escape("turboseq batch --ray " + message)):
        run_job(path, src, tmp_path / "out", use_ray=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingExtra, match=re.escape("Ray Serve deployment " + message)):
        deployment(path)
    assert main(["batch", "--model", str(path), "--input", str(src), "--output", str(tmp_path / "o"), "--ray"]) == 2
    assert capsys.readouterr().err == f"turboseq: error: turboseq batch --ray {message}\n"
    assert run_job(path, src, tmp_path / "local", progress=False).written == 1


def test_generation_tasks(gpt2_text, marian_one):
    """Decoder-only continuation (the default task of a causal model) and text-to-text `generate`."""
    from turboseq.batch import TextGenerator

    model, _, _, path = gpt2_text
    prompts = ["hello there", "", "the quick brown fox"]
    out = Predictor(str(path), max_new_tokens=5, output_column="continuation")({"text": prompts})
    expected = model.generate_text(prompts, max_new_tokens=5)
    assert list(out["continuation"]) == expected and all(expected)
    assert Predictor(str(path)).task_name == "generate"
    seq2seq, spath = marian_one
    out = TextGenerator(str(spath), **GEN)({"text": np.array(prompts, dtype=object)})
    assert list(out["generated_text"]) == seq2seq.generate_text(prompts, **GEN)
