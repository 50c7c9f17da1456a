"""Generation exports (``turboseq export`` of Marian, T5, BART, Whisper, ...): token-identical to the eager model,
loadable without turboseq, compiled with AOTInductor, and refusing bad files with one clear line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import turboseq
from turboseq.errors import ModelLoadError
from turboseq.export.writer import export_generation
from turboseq.runtime.compute import dense_weights

from ..helpers import make_family_model, source_batch

EXPORT_DOCS = Path(__file__).resolve().parents[2] / "docs" / "export.md"

CASES = {
    "greedy": dict(num_beams=1, do_sample=False, min_new_tokens=12, max_new_tokens=12),
    "beam4-nrs2": dict(num_beams=4, num_return_sequences=2, max_new_tokens=10),
    "sample-nrs2": dict(do_sample=True, top_k=20, seed=7, num_return_sequences=2, max_new_tokens=10),
}


def _export(model, path: Path, **kwargs):
    export_generation(model, path, **kwargs)
    return turboseq.load(path, trust_compiled_code=kwargs.get("compile", False))


def test_export_matches_eager_for_every_family(seq2seq, tmp_path):
    name, model, _, _ = seq2seq
    exported = _export(model, tmp_path / f"{name}.pt2")
    assert type(exported).__name__ == "Seq2SeqModel" and type(exported.backend).__name__ == "ProgramBackend"
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=1)
    for case, kwargs in CASES.items():
        want = model.generate(ids, mask, **kwargs)
        got = exported.generate(ids, mask, **kwargs)
        assert torch.equal(got, want), (name, case)
    # a forced prefix runs the prefill programs (one row per input, and beams)
    start = model.spec.decoder_start_token_id
    prefix = torch.tensor([[start, 5, 9, 3]] * ids.shape[0])
    for beams in (1, 3):
        kwargs = dict(decoder_input_ids=prefix, num_beams=beams, max_new_tokens=8)
        assert torch.equal(exported.generate(ids, mask, **kwargs), model.generate(ids, mask, **kwargs)), (name, beams)


def test_export_of_real_whisper_matches_eager(whisper, waves, tmp_path):
    exported = _export(whisper, tmp_path / "whisper.pt2")
    assert type(exported).__name__ == "SpeechModel" and type(exported.backend).__name__ == "ProgramBackend"
    features = torch.cat([whisper.features(w) for w in waves[:3]])
    for kwargs in (dict(), dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, temperature=0.8, seed=3)):
        assert torch.equal(exported.generate(features, **kwargs), whisper.generate(features, **kwargs)), kwargs
    long = np.concatenate([waves[0], np.zeros(16000 * 25, np.float32), waves[1]])  # two windows
    for options in ({}, {"beam_size": 1, "batch_size": 2}):
        want = whisper.transcribe(long, **options)
        got = exported.transcribe(long, **options)
        assert [(s.start, s.end, s.text) for s in got.segments] == [(s.start, s.end, s.text) for s in want.segments]
        got_probs = [s.no_speech_prob for s in got.segments]
        assert got_probs == pytest.approx([s.no_speech_prob for s in want.segments], abs=1e-5)
    with pytest.raises(ValueError, match="an exported file cannot align words yet"):
        exported.transcribe(waves[0], word_timestamps=True)


def test_compiled_export_matches_eager_and_needs_trust(marian_one, tmp_path):
    model, _ = marian_one
    path = tmp_path / "marian-compiled.pt2"
    info = export_generation(model, path, compile=True)
    assert info["compile_seconds"] > 0 and info["bytes"] == path.stat().st_size
    with pytest.raises(ModelLoadError) as err:
        turboseq.load(path)
    assert str(err.value) == (
        f"{path}: holds compiled native code (`turboseq export --compile`), which runs when it is loaded; "
        "load it with trust_compiled_code=True (CLI: --trust-compiled-code) only if you built it or trust "
        "whoever did"
    )
    compiled = turboseq.load(path, trust_compiled_code=True)
    assert "compiled=['encoder', 'step', 'step_beams']" in repr(compiled)
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=2)
    for case, kwargs in CASES.items():
        assert torch.equal(compiled.generate(ids, mask, **kwargs), model.generate(ids, mask, **kwargs)), case
    assert compiled.translate(["a b c", "hello"]) == model.translate(["a b c", "hello"])


def test_weights_are_stored_once(marian_one, tmp_path):
    model, _ = marian_one
    path = tmp_path / "m.pt2"
    export_generation(model, path)
    stored = sum(
        info.file_size
        for info in zipfile.ZipFile(path).infolist()
        if re.search(r"/(weight|tensor)_\d+$", info.filename)
    )
    with dense_weights(model.spec):  # the linears' dense weights, set aside on load for their packed copies
        unique = {t.data_ptr(): t.numel() * t.element_size() for t in _spec_tensors(model.spec)}
    # every distinct tensor once (the programs share the embeddings and the decoder's weights)
    assert stored <= sum(unique.values()) * 1.05


def _spec_tensors(obj):
    from turboseq.runtime.spec import parts

    return [t for t in parts(obj, torch.Tensor) if not t.is_mkldnn]  # not the packed copies made on load


def _docs_loop() -> str:
    text = EXPORT_DOCS.read_text(encoding="utf-8")
    block = text.split("<!-- standalone-loop -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_docs_loop_runs_without_turboseq(tmp_path):
    """The docs' greedy loop (torch and tokenizers only) gives turboseq's tokens; turboseq cannot be imported."""
    from turboseq.bench.models import build_t5_tokenizer

    model_dir = tmp_path / "t5"
    make_family_model(model_dir, "t5", vocab_size=1104, seed=4)
    build_t5_tokenizer(model_dir)
    model = turboseq.load(model_dir)
    export_generation(model, tmp_path / "model.pt2")
    guard = "import sys; sys.modules['turboseq'] = None\n"  # importing turboseq now raises ImportError
    script = tmp_path / "loop.py"
    script.write_text(guard + _docs_loop(), encoding="utf-8")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = json.loads(run.stdout.splitlines()[0])
    text = "translate English to German: The house is wonderful."
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    want = model.generate(ids, num_beams=1, do_sample=False, max_new_tokens=40)[0].tolist()
    assert printed == want
    check = subprocess.run([sys.executable, "-c", guard + "import turboseq"], capture_output=True, text=True)
    assert check.returncode != 0 and "import of turboseq halted" in check.stderr


def test_bad_files_give_one_line(marian_one, tmp_path):
    model, _ = marian_one
    path = tmp_path / "m.pt2"
    export_generation(model, path)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"truncated.pt2: .*turboseq export"):
        turboseq.load(truncated)
    foreign = tmp_path / "foreign.pt2"
    foreign.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match=r"foreign.pt2: not a readable turboseq export"):
        turboseq.load(foreign)
    # another format version
    old = tmp_path / "old.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("extra/turboseq.json"):
                meta = json.loads(data)
                meta["format_version"] = 99
                data = json.dumps(meta).encode()
            dst.writestr(info, data)
    with pytest.raises(ModelLoadError) as err:
        turboseq.load(old)
    assert "export format version 99" in str(err.value) and "export the model again" in str(err.value)
    exported = turboseq.load(path)
    with pytest.raises(ValueError, match="omit `compute_type`"):
        turboseq.load(path, compute_type="int8")
    with pytest.raises(ValueError, match="loaded from an export; export its model directory instead"):
        export_generation(exported, tmp_path / "again.pt2")
    too_long = torch.ones(1, model.spec.max_positions + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="the model accepts at most"):
        exported.generate(too_long)
    with pytest.raises(ValueError, match="forward_logits needs the model directory"):
        exported.forward_logits(too_long, None, too_long)
