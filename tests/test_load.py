"""``turboseq.load`` and ``turboseq.inspect``: the kind of model decided once, options checked at the edge."""

import gc
import sys
from pathlib import Path

import pytest

import turboseq
from turboseq.errors import ModelLoadError


def test_bad_dtype_and_no_tokenizer(tmp_path, marian_one):
    _, good = marian_one
    with pytest.raises(ValueError, match="dtype"):
        turboseq.load(good, dtype="int3")
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((good / name).read_bytes())
    model = turboseq.load(tmp_path)
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        model.translate(["Hello."])


def test_inspect_tells_the_kind_from_the_config_alone(marian_one, minilm, ct2_dir, tmp_path):
    """The kind is decided once, from config.json (no weights read): a directory without weights still inspects."""
    _, marian = marian_one
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((marian / "config.json").read_text())
    for path, kind, model_type in (
        (marian, "seq2seq", "marian"),
        (bare, "seq2seq", "marian"),
        (minilm[3], "encoder", "bert"),
        (ct2_dir, "speech", "whisper"),
    ):
        info = turboseq.inspect(path)
        assert (info.kind, info.model_type) == (kind, model_type)
    assert turboseq.inspect(marian).describe() == "a text-to-text model (marian)"
    loaded = {type(turboseq.load(p)).__name__ for p in (marian, minilm[3], ct2_dir)}
    assert loaded == {"Seq2SeqModel", "EncoderModel", "SpeechModel"}


def test_a_file_that_is_not_an_export_is_refused_before_torch_reads_it(tmp_path):
    file = tmp_path / "weights.pt2"
    file.write_bytes(b"not a zip archive at all")
    with pytest.raises(ModelLoadError, match="a file, but not a turboseq export"):
        turboseq.load(file)
    file.write_bytes(b"PK\x03\x04 a truncated zip")
    with pytest.raises(ModelLoadError, match="not a readable turboseq export"):
        turboseq.load(file)


def test_a_remote_code_tokenizer_is_named_as_such(marian_one, tmp_path):
    import json

    _, good = marian_one
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "source.spm",
        "target.spm",
        "vocab.json",
    ):
        (tmp_path / name).write_bytes((good / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["x.MyTok", None]}}))
    model = turboseq.load(tmp_path)
    with pytest.raises(
        ModelLoadError,
        match=r"tokenizer_config\.json: the tokenizer is custom code \(auto_map\), "
        "which turboseq never runs",
    ):
        model.translate(["Hello."])


def test_generation_numbers_must_be_finite(marian_one):
    import math

    model, _ = marian_one
    for kwargs in (
        dict(temperature=math.nan, do_sample=True),
        dict(length_penalty=-math.inf, num_beams=2),
        dict(repetition_penalty=math.nan),
        dict(num_beams=10**30),
    ):
        with pytest.raises(ValueError, match="finite number|must be <="):
            model.settings(**kwargs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("compute_type", ["float32", "int8"])
def test_a_loaded_model_keeps_no_mapping_of_its_weights_file(tmp_path, compute_type):
    """safetensors maps the file it reads; a model that kept one tensor on that storage would keep the whole
    file resident beside its own copies of the weights."""
    from tests.helpers import make_marian_with_tokenizer

    make_marian_with_tokenizer(tmp_path, "swish-untied-4h")
    model = turboseq.load(tmp_path, compute_type=compute_type)
    gc.collect()
    weights = str(tmp_path / "model.safetensors")
    assert weights not in Path("/proc/self/maps").read_text()
    assert model.translate(["a b c"], max_new_tokens=3)
