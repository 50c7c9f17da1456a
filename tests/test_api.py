"""The text API, bad input and loading errors."""

import json
import subprocess
import sys

import pytest
import torch

import turboseq
from turboseq import ModelLoadError


def test_translate_matches_generate_and_keeps_empty_lines(marian_one):
    model, _ = marian_one
    texts = ["Thank you very much for your help.", "", "   ", "The train to Berlin leaves at half past eight."]
    out = model.translate(texts, max_new_tokens=8, num_beams=2)
    assert len(out) == 4 and out[1] == "" and out[2] == ""
    enc = model.tokenizer([texts[0], texts[3]], return_tensors="pt", padding=True)
    ids = model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=8, num_beams=2)
    assert out[0] == model.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert out[3] == model.tokenizer.decode(ids[1], skip_special_tokens=True)


def test_translate_matches_transformers_text(marian_one):
    from transformers import MarianMTModel

    model, path = marian_one
    ref = MarianMTModel.from_pretrained(path).eval()
    texts = ["Where did you spend your last summer holiday?", "Is there a bank near the station?"]
    enc = model.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model.tokenizer.batch_decode(ref.generate(**enc, max_new_tokens=10), skip_special_tokens=True)
    assert model.translate(texts, max_new_tokens=10) == expected


def test_translate_num_return_sequences_gives_lists(marian_one):
    model, _ = marian_one
    out = model.translate(["Hello there.", ""], num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert len(out) == 2 and len(out[0]) == 2 and out[1] == ["", ""]


def test_too_long_input_names_count_and_limit(marian_one):
    model, _ = marian_one
    long_text = " ".join(["word"] * 400)
    n = len(model.tokenizer(long_text)["input_ids"])
    with pytest.raises(ValueError, match=rf"input 0 has {n} tokens; the model accepts at most 128"):
        model.translate([long_text], max_new_tokens=4)
    assert len(model.translate([long_text], truncation=True, max_new_tokens=4)) == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(top_p=0.0, do_sample=True), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=0.0, do_sample=True), "temperature"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_length=-3), "max_length"),
        (dict(min_new_tokens=-2), "min_new_tokens"),
        (dict(min_length=-1), "min_length"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(early_stopping="sometimes"), "early_stopping"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(num_beemz=2), "num_beemz"),
        (dict(max_length=10_000), "max_length"),
    ],
)
def test_invalid_arguments_name_the_argument(marian_one, kwargs, name):
    model, _ = marian_one
    ids = torch.tensor([[5, 6, 7, 0]])
    with pytest.raises(ValueError, match=name):
        model.generate(ids, **kwargs)
    with pytest.raises(ValueError, match=name):
        model.translate(["Hello."], **kwargs)


def test_generate_input_checks(marian_one):
    model, _ = marian_one
    with pytest.raises(ValueError, match="2-D"):
        model.generate(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(torch.tensor([[1, 5000, 0]]))
    with pytest.raises(ValueError, match="input has 200 tokens; the model accepts at most 128"):
        model.generate(torch.ones((1, 200), dtype=torch.long))
    with pytest.raises(TypeError, match="list of strings"):
        model.translate("a single string")


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
    (unsupported / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match=r"unsupported model_type 'llama'; supported: bart, bert, marian, mbart, mt5, pegasus, roberta, t5, whisper, xlm-roberta"):
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
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin: missing weight model\.decoder\.layers\.0\.fc1\.weight"):
        turboseq.load(tmp_path)


def test_bad_dtype_and_no_tokenizer(tmp_path, marian_one):
    _, good = marian_one
    with pytest.raises(ValueError, match="dtype"):
        turboseq.load(good, dtype="int3")
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((good / name).read_bytes())
    model = turboseq.load(tmp_path)
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        model.translate(["Hello."])


def test_bfloat16_runs(marian_one):
    _, path = marian_one
    model = turboseq.load(path, dtype="bfloat16")
    out = model.generate(torch.tensor([[5, 9, 33, 0]]), max_new_tokens=5, num_beams=2)
    assert out.shape[0] == 1 and out[0, 0].item() == model.spec.decoder_start_token_id


def _cli(*args, stdin: str = ""):
    return subprocess.run(
        [sys.executable, "-m", "turboseq.cli", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_cli_translate_stdin_stdout_keeps_lines(marian_one):
    model, path = marian_one
    lines = ["Thank you very much for your help.", "", "Is there a bank near the station?"]
    res = _cli("translate", "--model", str(path), "--max-new-tokens", "6", "--num-beams", "2",
               stdin="\n".join(lines) + "\n")
    assert res.returncode == 0, res.stderr
    out = res.stdout.split("\n")[:-1]
    assert out == model.translate(lines, max_new_tokens=6, num_beams=2)


def test_cli_translate_files_with_progress(marian_one, tmp_path):
    model, path = marian_one
    src = tmp_path / "in.txt"
    src.write_text("Hello.\n\nGood morning, everyone.\n")
    dst = tmp_path / "out.txt"
    res = _cli("translate", "--model", str(path), "-i", str(src), "-o", str(dst), "--max-new-tokens", "4",
               "--batch-size", "1")
    assert res.returncode == 0, res.stderr
    assert "translate" in res.stderr and "3/3" in res.stderr  # tqdm progress bar
    assert dst.read_text().split("\n")[:-1] == model.translate(["Hello.", "", "Good morning, everyone."],
                                                                 max_new_tokens=4)


def test_cli_errors_are_one_line(tmp_path):
    res = _cli("translate", "--model", str(tmp_path / "missing"), stdin="Hello\n")
    assert res.returncode == 2
    assert res.stderr.strip() == f"turboseq: error: {tmp_path / 'missing'}: no such model directory"
    res = _cli("translate", "--model", str(tmp_path), "--num-beams", "0")
    assert res.returncode == 2 and "must be >= 1" in res.stderr


def test_cli_help_lists_verbs_and_options():
    res = _cli("--help")
    assert res.returncode == 0 and "translate" in res.stdout and "bench" in res.stdout
    res = _cli("translate", "--help")
    for option in ("--model", "--num-beams", "--max-new-tokens", "--batch-size", "--dtype", "-i", "-o"):
        assert option in res.stdout
    res = _cli("bench", "--help")
    for option in ("--arch", "--batches", "--modes", "--engines", "--profile", "--out"):
        assert option in res.stdout
