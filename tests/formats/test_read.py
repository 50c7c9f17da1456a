"""Reading model directories and files: every failure names the file; CTranslate2's model.bin read directly."""

import json
import struct

import numpy as np
import pytest
import torch

import turboseq
from turboseq.errors import ModelLoadError
from turboseq.formats.audio import log_mel
from turboseq.formats.ct2 import read_model_bin
from turboseq.speech.model import SpeechModel


def test_missing_and_corrupt_model_dirs(tmp_path, marian_one):
    _, good = marian_one
    with pytest.raises(ModelLoadError, match="no such model directory"):
        turboseq.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json: file not found"):
        turboseq.load(empty)

    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json: not valid JSON"):
        turboseq.load(bad_json)

    unsupported = tmp_path / "unsupported"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    with pytest.raises(
        ModelLoadError,
        match=r"unsupported model_type 'falcon'; supported: bart, bert, gpt2, llama, marian, mbart, mistral, mt5, pegasus, qwen2, roberta, t5, whisper, xlm-roberta",
    ):
        turboseq.load(unsupported)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="no weights found"):
        turboseq.load(no_weights)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((good / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: cannot read weights"):
        turboseq.load(corrupt)

    corrupt_bin = tmp_path / "corrupt_bin"
    corrupt_bin.mkdir()
    (corrupt_bin / "config.json").write_text((good / "config.json").read_text())
    (corrupt_bin / "pytorch_model.bin").write_bytes(b"garbage" * 100)
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin: cannot read weights"):
        turboseq.load(corrupt_bin)


def test_pytorch_bin_and_missing_tensor(tmp_path, marian_one):
    from safetensors.torch import load_file

    model, good = marian_one
    state = load_file(str(good / "model.safetensors"))
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_text((good / name).read_text())
    torch.save(state, tmp_path / "pytorch_model.bin")
    other = turboseq.load(tmp_path)
    ids = torch.tensor([[5, 9, 33, 0]])
    assert torch.equal(other.generate(ids, max_new_tokens=6), model.generate(ids, max_new_tokens=6))

    del state["model.decoder.layers.0.fc1.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        ModelLoadError, match=r"pytorch_model\.bin: missing weight model\.decoder\.layers\.0\.fc1\.weight"
    ):
        turboseq.load(tmp_path)


def test_ct2_reader_reads_every_variable(ct2_dir):
    name, revision, variables = read_model_bin(ct2_dir / "model.bin")
    assert name == "WhisperSpec" and revision >= 1
    assert variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # the alias
    assert variables["decoder/embeddings/weight"].dtype == torch.float16  # stored as float16 here
    assert int(variables["encoder/num_heads"].item()) == 6


def test_ct2_int8_weights_are_dequantized(tmp_path):
    # a hand-written model.bin with an int8 weight and its per-row scale, as CTranslate2 writes them
    weight = np.array([[0.5, -1.0], [0.25, 0.125]], dtype=np.float32)
    scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)
    quantized = np.rint(weight * scale[:, None]).astype(np.int8)

    def string(s):
        b = s.encode()
        return struct.pack("<H", len(b) + 1) + b + b"\0"

    def var(name, array, dtype_id):
        return (
            string(name)
            + struct.pack("<B", array.ndim)
            + b"".join(struct.pack("<I", d) for d in array.shape)
            + struct.pack("<BI", dtype_id, array.nbytes)
            + array.tobytes()
        )

    data = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, 2)
    data += var("w/weight", quantized, 1) + var("w/weight_scale", scale, 0) + struct.pack("<I", 0)
    (tmp_path / "model.bin").write_bytes(data)
    _, _, variables = read_model_bin(tmp_path / "model.bin")
    assert set(variables) == {"w/weight"}
    assert torch.allclose(variables["w/weight"], torch.from_numpy(weight), atol=1e-2)

    (tmp_path / "model.bin").write_bytes(data[:-20])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_model_bin(tmp_path / "model.bin")


def test_ct2_dir_of_another_model_is_refused(tmp_path):
    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    (tmp_path / "model.bin").write_bytes(
        struct.pack("<I", 6) + string("TransformerSpec") + struct.pack("<III", 1, 0, 0)
    )
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="TransformerSpec.*not supported"):
        turboseq.load(tmp_path)


def test_hf_and_ct2_directories_give_the_same_model(whisper, hf_whisper, waves):
    from_hf = turboseq.load(hf_whisper[1])
    assert isinstance(from_hf, SpeechModel)
    feats = log_mel(waves[:2])
    assert torch.equal(from_hf.generate(feats), whisper.generate(feats))
