"""The benchmark's model: an opus-mt-en-de-shaped MarianMT with random weights and a rebuildable tokenizer.

No real Marian checkpoint or tokenizer can be downloaded here, so both are made locally and cached:
the weights from a fixed seed, the tokenizer by training SentencePiece on the English sentences that ship
with turboseq (``turboseq/data/sentences_en.txt``). The vocabulary is padded with filler entries up to
the model's vocabulary size, so ids and shapes match opus-mt-en-de while decoded output is gibberish.
"""

from __future__ import annotations

import io
import json
import os
from importlib import resources
from pathlib import Path

OPUS_MT_EN_DE = dict(
    vocab_size=58101,
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    max_position_embeddings=512,
    activation_function="swish",
    scale_embedding=True,
    share_encoder_decoder_embeddings=True,
    pad_token_id=58100,
    eos_token_id=0,
    decoder_start_token_id=58100,
    forced_eos_token_id=0,
)

# generation_config.json as shipped with opus-mt checkpoints
OPUS_MT_GENERATION = dict(
    bad_words_ids=[[58100]],
    bos_token_id=0,
    decoder_start_token_id=58100,
    eos_token_id=0,
    forced_eos_token_id=0,
    max_length=512,
    num_beams=4,
    pad_token_id=58100,
    renormalize_logits=True,
)

BENCH_VERSION = "v1"


def cache_root() -> Path:
    return Path(os.environ.get("TURBOSEQ_CACHE", Path.home() / ".cache" / "turboseq"))


def bench_sentences() -> list[str]:
    text = resources.files("turboseq").joinpath("data/sentences_en.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_marian_tokenizer(out_dir: Path, vocab_size: int, pad_token_id: int, spm_pieces: int = 1000) -> None:
    """Write source.spm, target.spm, vocab.json and tokenizer_config.json for a MarianTokenizer.

    Ids: </s> = 0, <unk> = 1, then the SentencePiece pieces, then fillers up to ``vocab_size``; <pad> is
    ``pad_token_id`` (the last id, as in opus-mt).
    """
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    pieces = min(spm_pieces, vocab_size - 3)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(bench_sentences()),
        model_writer=model,
        vocab_size=pieces,
        model_type="unigram",
        hard_vocab_limit=False,
        character_coverage=1.0,
        bos_id=-1,
        eos_id=2,
        unk_id=1,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
        seed_sentencepiece_size=100000,
    )
    (out_dir / "source.spm").write_bytes(model.getvalue())
    (out_dir / "target.spm").write_bytes(model.getvalue())
    proc = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(proc.get_piece_size()):
        piece = proc.id_to_piece(i)
        if piece not in vocab and len(vocab) < vocab_size - 1:
            vocab[piece] = len(vocab)
    filler = 0
    while len(vocab) < vocab_size - 1:
        vocab[f"<filler{filler}>"] = len(vocab)
        filler += 1
    vocab["<pad>"] = pad_token_id
    if sorted(vocab.values()) != list(range(vocab_size)):
        raise ValueError("pad_token_id must be the last id of the vocabulary")
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "MarianTokenizer",
                "source_lang": "en",
                "target_lang": "de",
                "model_max_length": 512,
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "separate_vocabs": False,
            }
        ),
        encoding="utf-8",
    )


def build_marian(out_dir: Path, config: dict, generation: dict, seed: int = 0) -> Path:
    """Random-init MarianMT (transformers' own init, fixed seed) saved as a HF directory with a tokenizer."""
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = MarianMTModel(MarianConfig(**config)).eval()
    model.generation_config = GenerationConfig(**generation)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    build_marian_tokenizer(tmp, config["vocab_size"], config["pad_token_id"])
    tmp.rename(out_dir)  # only a complete directory ever appears under the final name
    return out_dir


def bench_model_dir(arch: str = "marian") -> Path:
    """The cached bench model directory for ``arch``, built on first use."""
    if arch != "marian":
        raise ValueError(f"unknown bench arch {arch!r}; available: marian")
    path = cache_root() / f"bench-marian-opus-mt-en-de-{BENCH_VERSION}"
    if not (path / "config.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        import shutil

        shutil.rmtree(path.with_name(path.name + ".tmp"), ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        build_marian(path, OPUS_MT_EN_DE, OPUS_MT_GENERATION)
    return path
