"""``turboseq convert``: a directory saved with int8 or bfloat16 weights loads to exactly the model that quantizing
at load gives, and loads hold little more than their result."""

import json
import subprocess
import sys

import pytest
import torch

import turboseq
from tests.helpers import make_marian, run_cli, source_batch
from turboseq.errors import ModelLoadError
from turboseq.load import convert
from turboseq.runtime.compute import supported_compute_types

REDUCED = [ct for ct in ("int8", "bfloat16", "int8_bfloat16") if ct in supported_compute_types()]


def _same_generation(a, b, ids, mask=None) -> None:
    for kwargs in (dict(num_beams=3), dict(do_sample=False)):
        kwargs.update(attention_mask=mask, max_new_tokens=12, output_scores=True, return_dict_in_generate=True)
        out_a, out_b = a.generate(ids, **kwargs), b.generate(ids, **kwargs)
        assert torch.equal(out_a.sequences, out_b.sequences)
        assert all(torch.equal(x, y) for x, y in zip(out_a.scores, out_b.scores, strict=True))


# int8_bfloat16 holds what int8 holds (only the attention precision differs at run time): one model covers it
@pytest.mark.parametrize("compute_type", REDUCED[:2])
def test_a_converted_text_model_gives_the_outputs_of_quantizing_at_load(seq2seq, compute_type, tmp_path):
    name, _model, _ref, path = seq2seq
    out = convert(path, tmp_path / "converted", compute_type)
    converted = turboseq.load(out)
    at_load = turboseq.load(path, compute_type=compute_type)
    assert converted.compute_type == compute_type
    spec = at_load.spec
    _same_generation(at_load, converted, *source_batch(spec.vocab_size, spec.pad_token_id, eos=spec.eos_token_id))
    info = json.loads((out / "turboseq.json").read_text())
    assert info["format"] == "turboseq-reduced" and info["compute_type"] == compute_type
    assert (out / "config.json").read_text() == (path / "config.json").read_text()


@pytest.mark.parametrize("compute_type", REDUCED[:2])
def test_a_converted_decoder_only_model_and_encoder_equal_quantizing_at_load(causal, minilm, compute_type, tmp_path):
    _name, _model, _ref, path = causal
    converted = turboseq.load(convert(path, tmp_path / "causal", compute_type))
    at_load = turboseq.load(path, compute_type=compute_type)
    ids = torch.randint(3, at_load.spec.vocab_size, (2, 7))
    _same_generation(at_load, converted, ids)

    minilm_dir = minilm[3]
    encoder = turboseq.load(convert(minilm_dir, tmp_path / "minilm", compute_type))
    texts = ["A sentence to embed.", "Another, longer sentence to embed, with more words in it."]
    assert torch.equal(encoder.embed(texts), turboseq.load(minilm_dir, compute_type=compute_type).embed(texts))


@pytest.mark.skipif("int8_bfloat16" not in REDUCED, reason="this CPU runs no int8_bfloat16")
def test_int8_bfloat16_converts_and_an_int8_directory_loads_as_it(marian_one, tmp_path):
    model, path = marian_one
    spec = model.spec
    batch = source_batch(spec.vocab_size, spec.pad_token_id, eos=spec.eos_token_id)
    at_load = turboseq.load(path, compute_type="int8_bfloat16")
    _same_generation(at_load, turboseq.load(convert(path, tmp_path / "i8bf16", "int8_bfloat16")), *batch)
    as_int8 = turboseq.load(convert(path, tmp_path / "i8", "int8"), compute_type="int8_bfloat16")
    assert as_int8.compute_type == "int8_bfloat16"
    _same_generation(at_load, as_int8, *batch)


def test_convert_refuses_what_it_cannot_do_in_one_line(marian_one, tmp_path):
    _model, path = marian_one
    with pytest.raises(
        ValueError, match=r"^`compute_type` must be one of bfloat16, int8, int8_bfloat16, got 'float32'$"
    ):
        convert(path, tmp_path / "a", "float32")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match=r"full: exists and is not an empty directory$"):
        convert(path, tmp_path / "full", "int8")
    out = convert(path, tmp_path / "int8", "int8")
    with pytest.raises(ValueError, match=r"int8: already converted \(convert its source directory\)$"):
        convert(out, tmp_path / "again", "int8")
    with pytest.raises(
        ValueError,
        match=r"^this directory holds int8 weights \(turboseq convert\): load it with compute_type int8 or "
        r"int8_bfloat16, or convert the source directory to float32$",
    ):
        turboseq.load(out, compute_type="float32")
    info = json.loads((out / "turboseq.json").read_text())
    (out / "turboseq.json").write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(ModelLoadError, match=r"turboseq.json: not a turboseq-reduced version 1 description"):
        turboseq.load(out)


def test_the_convert_verb_writes_a_directory_the_translate_verb_loads(tmp_path):
    from tests.helpers import make_marian_with_tokenizer

    make_marian_with_tokenizer(tmp_path / "src", "swish-untied-4h")
    done = run_cli("convert", tmp_path / "src", "--out", tmp_path / "int8")
    assert done.returncode == 0 and done.stderr.startswith(f"wrote {tmp_path / 'int8'} (int8, "), done.stderr
    args = ("--max-new-tokens", "5")
    converted = run_cli("translate", "--model", tmp_path / "int8", *args, stdin="A cat sat on the mat.\n")
    at_load = run_cli(
        "translate", "--model", tmp_path / "src", "--compute-type", "int8", *args, stdin="A cat sat on the mat.\n"
    )
    assert converted.returncode == 0 and converted.stdout == at_load.stdout and converted.stdout.strip()
    again = run_cli("convert", tmp_path / "src", "--out", tmp_path / "int8")
    assert again.returncode == 2
    assert again.stderr == f"turboseq: error: {tmp_path / 'int8'}: exists and is not an empty directory\n"


_PEAK_PROBE = """
import json, sys, torch, turboseq

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

turboseq.load(sys.argv[1], **json.loads(sys.argv[2]))  # the libraries' first use is not the load's
import gc; gc.collect()
from turboseq.runtime.memory import release_free_memory; release_free_memory()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here
model = turboseq.load(sys.argv[1], **json.loads(sys.argv[2]))
print(json.dumps({"peak": status("VmHWM") - before, "resident": status("VmRSS") - before}))
"""


@pytest.mark.parametrize("compute_type", ["float32", *REDUCED[:2], "converted"])
def test_a_load_holds_little_more_than_its_result(tmp_path_factory, compute_type):
    """A model shaped like opus-mt, smaller (the vocabulary's tables 40% of the weights): the peak resident memory
    during a load stays within 15% of what the loaded model holds (weights are converted a block at a time from
    the mapped file, whose pages are released as they are used; float32's bfloat16 screen of the head, whose dense
    copy lives until it is packed, is made before the head's float32 panels: ``runtime.packed``)."""
    path = tmp_path_factory.mktemp("wide")
    make_marian(
        path,
        vocab_size=32000,
        pad_token_id=31999,
        decoder_start_token_id=31999,
        d_model=256,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        encoder_layers=4,
        decoder_layers=4,
    )
    options = {"compute_type": compute_type}
    if compute_type == "converted":
        path, options = convert(path, path.parent / "wide-int8", REDUCED[0]), {}
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(path), json.dumps(options)], capture_output=True, text=True, check=True
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["resident"] > 10 * 2**20  # the weights are resident: the probe measures something
    assert figures["peak"] <= 1.15 * figures["resident"], figures


def test_released_pages_read_back_the_same_values(marian_one):
    from turboseq.formats.hf import is_mapped, load_weights, release_pages

    _model, path = marian_one
    tensors, _source = load_weights(path)
    name = max(tensors, key=lambda n: tensors[n].numel())
    table = tensors[name]
    copy = table.clone()
    assert is_mapped(table) and not is_mapped(copy)
    release_pages(table)
    release_pages(copy)  # not a file's: left alone
    assert torch.equal(table, copy)


def test_a_damaged_converted_directory_is_refused_in_one_line(marian_one, tmp_path):
    from safetensors.torch import load_file, save_file

    _model, path = marian_one
    out = convert(path, tmp_path / "int8", "int8")
    tensors = load_file(str(out / "model.safetensors"))
    name = next(n for n in tensors if n.endswith("qkv.weight"))
    save_file({n: t for n, t in tensors.items() if n != name}, str(out / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"model\.safetensors: missing tensor {name}$"):
        turboseq.load(out)
    wrong = dict(tensors, **{name: tensors[name][:-1].clone()})
    save_file(wrong, str(out / "model.safetensors"))
    shape = tuple(tensors[name].shape)
    with pytest.raises(ModelLoadError, match=rf"{name} has shape \({shape[0] - 1}, {shape[1]}\), the config makes"):
        turboseq.load(out)
    scale = name.replace(".weight", ".weight_scale")
    save_file(dict(tensors, **{scale: tensors[scale][:1].clone()}), str(out / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"{scale} has shape \(1,\), the config makes \({shape[0]},\)$"):
        turboseq.load(out)


def test_weights_packed_in_row_slices_give_the_same_numbers(marian_one, tmp_path, monkeypatch):
    """fbgemm packs a large weight (an LM head) in row slices on several threads: the outputs equal packing it
    whole, quantized at load and from a converted directory, whose saved weights are the whole's."""
    from turboseq.runtime import compute

    _, path = marian_one
    whole = turboseq.load(path, compute_type="int8")
    saved = convert(path, tmp_path / "whole", "int8")
    monkeypatch.setattr(compute, "PACK_SLICE_ROWS", 100)  # the test model's 1024-token head in 11 slices
    sliced = turboseq.load(path, compute_type="int8")
    assert isinstance(sliced.spec.lm_head.packed, tuple) and len(sliced.spec.lm_head.packed) == 11
    spec = whole.spec
    batch = source_batch(spec.vocab_size, spec.pad_token_id, eos=spec.eos_token_id)
    _same_generation(whole, sliced, *batch)
    _same_generation(whole, turboseq.load(saved), *batch)  # a converted directory, packed in slices
    resaved = convert(path, tmp_path / "sliced", "int8")
    assert (resaved / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
