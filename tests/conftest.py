import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from helpers import make_family_model, make_marian  # noqa: E402

# Shapes covering Marian's switches: activation, tied/untied head, shared/separate embeddings, head count,
# embedding scale. Weights are drawn large (helpers.make_marian) so that top-2 logits are far apart.
MARIAN_CONFIGS = {
    "swish-untied-4h": dict(seed=1, std=0.2, emb_std=0.2, tie_word_embeddings=False),
    "relu-separate-8h": dict(
        seed=2,
        std=0.3,
        emb_std=0.3,
        activation_function="relu",
        share_encoder_decoder_embeddings=False,
        decoder_vocab_size=128,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        scale_embedding=False,
    ),
    "gelu-tied-2h": dict(seed=3, std=0.3, emb_std=0.3, activation_function="gelu", encoder_attention_heads=2,
                         decoder_attention_heads=2, d_model=32, encoder_layers=3, decoder_layers=1),
}


@pytest.fixture(scope="session", params=list(MARIAN_CONFIGS))
def marian(request, tmp_path_factory):
    """(turboseq model, transformers reference loaded from the same directory, directory)."""
    import turboseq
    from transformers import MarianMTModel

    path = tmp_path_factory.mktemp(request.param)
    make_marian(path, **MARIAN_CONFIGS[request.param])
    ref = MarianMTModel.from_pretrained(path).eval()
    return turboseq.load(path), ref, path


@pytest.fixture(scope="session")
def marian_one(tmp_path_factory):
    """A single small Marian with a tokenizer, for API/CLI/error tests."""
    import turboseq
    from turboseq.benchmodel import build_marian_tokenizer

    path = tmp_path_factory.mktemp("marian-tok")
    cfg = dict(MARIAN_CONFIGS["swish-untied-4h"])
    cfg.update(vocab_size=1024, pad_token_id=1023, decoder_start_token_id=1023)
    make_marian(path, **cfg)
    build_marian_tokenizer(path, 1024, 1023, spm_pieces=600)
    return turboseq.load(path), path


def source_batch(vocab: int, pad: int, seed: int = 0, lengths=(12, 3, 9, 1, 15, 6), eos: int = 0, low: int = 1):
    """A right-padded, length-mixed batch of source ids in [low, vocab - 1) ending in EOS."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(low, vocab - 1, (n,), generator=g)
        ids[i, n] = eos
        mask[i, : n + 1] = 1
    return ids, mask


# seeds picked so that sentences end at varied lengths (checked by test_families.test_lengths_vary)
FAMILY_SEEDS = {"t5": 3, "flan-t5": 1, "bart": 4, "mbart": 6, "pegasus": 5}


@pytest.fixture(scope="session", params=list(FAMILY_SEEDS))
def family(request, tmp_path_factory):
    """(kind, turboseq model, transformers reference, directory) for each non-Marian family."""
    import turboseq

    path = tmp_path_factory.mktemp(request.param)
    ref = make_family_model(path, request.param, seed=FAMILY_SEEDS[request.param])
    return request.param, turboseq.load(path), ref, path
