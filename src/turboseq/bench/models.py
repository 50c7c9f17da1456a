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


def staging(path: Path) -> Path:
    """A fresh directory beside ``path`` for building it, one per process (tests run in several workers, which
    may build the same cache entry at once)."""
    import shutil

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, path: Path) -> Path:
    """Moves a complete ``tmp`` to ``path`` in one rename, so only a complete directory ever appears there; when
    another process published it first, ``tmp`` is dropped and theirs kept."""
    import shutil

    try:
        tmp.rename(path)
    except OSError:
        if not path.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def ct2_converted(model_dir: Path) -> Path:
    """``model_dir`` converted to CTranslate2's format beside it (``<dir>-ct2``), once."""
    import ctranslate2

    out = model_dir.with_name(model_dir.name + "-ct2")
    if not (out / "model.bin").is_file():
        tmp = staging(out)
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(str(tmp), force=True)
        publish(tmp, out)
    return out


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


def build_t5_tokenizer(out_dir: Path, spm_pieces: int = 1000) -> None:
    """A T5 tokenizer (SentencePiece unigram with T5's special ids: <pad> 0, </s> 1, <unk> 2, plus 100
    sentinel ids) trained on the bundled sentences. Ids past its vocabulary exist only in the model."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(bench_sentences()),
        model_writer=model,
        vocab_size=spm_pieces,
        model_type="unigram",
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
        num_threads=1,
        seed_sentencepiece_size=100000,
    )
    proc = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(proc.id_to_piece(i), proc.get_score(i)) for i in range(proc.get_piece_size())]
    T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=512).save_pretrained(out_dir)


def build_bart_tokenizer(out_dir: Path, vocab_size: int, bpe_size: int = 1000) -> None:
    """A byte-level BPE tokenizer in BART's layout (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last) trained
    on the bundled sentences, its vocabulary padded with filler entries up to ``vocab_size``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(bench_sentences(), vocab_size=bpe_size, special_tokens=specials, show_progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(out_dir))  # vocab.json + merges.txt
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    filler = 0
    while len(vocab) < vocab_size - 1:
        vocab[f"<filler{filler}>"] = len(vocab)
        filler += 1
    vocab["<mask>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = (out_dir / "merges.txt").read_text(encoding="utf-8")
    merges = [tuple(line.split(" ")) for line in merges_text.splitlines() if line and not line.startswith("#")]
    tok = BartTokenizerFast(vocab=vocab, merges=merges)
    tok.model_max_length = 1024
    tok.save_pretrained(out_dir)


def build_gpt2_tokenizer(out_dir: Path, vocab_size: int, bpe_size: int = 1000) -> None:
    """A byte-level BPE tokenizer in GPT-2's layout (<|endoftext|> as BOS, EOS and UNK) trained on the bundled
    sentences, its vocabulary padded with filler entries up to ``vocab_size`` (the special token last, as
    GPT-2 has it at 50256 of 50257)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(bench_sentences(), vocab_size=bpe_size, show_progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(out_dir))
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    filler = 0
    while len(vocab) < vocab_size - 1:
        vocab[f"<filler{filler}>"] = len(vocab)
        filler += 1
    vocab["<|endoftext|>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = (out_dir / "merges.txt").read_text(encoding="utf-8")
    merges = [tuple(line.split(" ")) for line in merges_text.splitlines() if line and not line.startswith("#")]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.model_max_length = 1024
    tok.save_pretrained(out_dir)


T5_SMALL = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_heads=8,
    feed_forward_proj="relu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    n_positions=512,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
T5_GENERATION = dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
BART_BASE = dict(
    vocab_size=50265,
    d_model=768,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
    max_position_embeddings=1024,
    activation_function="gelu",
    scale_embedding=False,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_bos_token_id=0,
    forced_eos_token_id=2,
    normalize_before=False,  # dropped by transformers 5, still read by CTranslate2's converter
)
# bart-base's generation_config.json without no_repeat_ngram_size, which CTranslate2 would not apply by
# default: every engine must do the same work
BART_GENERATION = dict(
    bos_token_id=0,
    decoder_start_token_id=2,
    eos_token_id=2,
    pad_token_id=1,
    forced_bos_token_id=0,
    forced_eos_token_id=2,
    num_beams=4,
    early_stopping=True,
)

# arch -> (model class, config class, config, generation config, tokenizer builder)
ARCHS = {
    "marian": ("MarianMTModel", "MarianConfig", OPUS_MT_EN_DE, OPUS_MT_GENERATION, "marian"),
    "t5-small": ("T5ForConditionalGeneration", "T5Config", T5_SMALL, T5_GENERATION, "t5"),
    "t5-base": (
        "T5ForConditionalGeneration",
        "T5Config",
        dict(T5_SMALL, d_model=768, d_ff=3072, num_layers=12, num_heads=12),
        T5_GENERATION,
        "t5",
    ),
    "flan-t5-small": (
        "T5ForConditionalGeneration",
        "T5Config",
        dict(T5_SMALL, d_ff=1024, num_layers=8, num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        T5_GENERATION,
        "t5",
    ),
    "bart-base": ("BartForConditionalGeneration", "BartConfig", BART_BASE, BART_GENERATION, "bart"),
}


def build_bench_model(out_dir: Path, arch: str, seed: int = 0) -> Path:
    """Random-init model of ``arch``'s real shape (transformers' own init, fixed seed) saved as a HF
    directory with a tokenizer. flan-T5's separate LM head is stored as real v1.1 checkpoints store it."""
    import torch
    import transformers
    from transformers import GenerationConfig

    model_cls, config_cls, config, generation, tokenizer = ARCHS[arch]
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).eval()
    model.generation_config = GenerationConfig(**generation)
    tmp = staging(out_dir)
    model.save_pretrained(tmp)
    if arch == "flan-t5-small":
        from safetensors.torch import load_file, save_file

        weights = load_file(tmp / "model.safetensors")
        if "lm_head.weight" not in weights:
            weights["lm_head.weight"] = torch.randn(config["vocab_size"], config["d_model"]) * config["d_model"] ** -0.5
            save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["tie_word_embeddings"] = False
        cfg.pop("scale_decoder_outputs", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer == "marian":
        build_marian_tokenizer(tmp, config["vocab_size"], config["pad_token_id"])
    elif tokenizer == "t5":
        build_t5_tokenizer(tmp)
    else:
        build_bart_tokenizer(tmp, config["vocab_size"])
    return publish(tmp, out_dir)


XLMR_BASE = dict(
    vocab_size=250002,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    type_vocab_size=1,
)


def xlmr_base_dir() -> Path:
    """A random-init XLM-RoBERTa of xlm-roberta-base's shape with a small unigram tokenizer in XLM-R's
    special-token layout (<s> 0, <pad> 1, </s> 2, <unk> 3), cached like the generation bench models."""
    path = cache_root() / f"bench-xlmr-base-{BENCH_VERSION}"
    if (path / "config.json").is_file():
        return path

    import sentencepiece as spm
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    tmp = staging(path)
    torch.manual_seed(0)
    XLMRobertaModel(XLMRobertaConfig(**XLMR_BASE)).eval().save_pretrained(tmp)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(bench_sentences()),
        model_writer=model,
        vocab_size=1000,
        model_type="unigram",
        hard_vocab_limit=False,
        character_coverage=1.0,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
        num_threads=1,
        seed_sentencepiece_size=100000,
    )
    proc = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(proc.id_to_piece(i), proc.get_score(i)) for i in range(proc.get_piece_size())] + [("<mask>", 0.0)]
    XLMRobertaTokenizer(vocab=vocab, model_max_length=512).save_pretrained(tmp)
    return publish(tmp, path)


def bench_model_dir(arch: str = "marian") -> Path:
    """The cached bench model directory for ``arch``, built on first use."""
    if arch not in ARCHS:
        raise ValueError(f"unknown bench arch {arch!r}; available: {', '.join(ARCHS)}")
    name = "marian-opus-mt-en-de" if arch == "marian" else arch
    path = cache_root() / f"bench-{name}-{BENCH_VERSION}"
    if not (path / "config.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        import shutil

        if path.is_dir():  # a leftover without its config: not one a finished build published
            shutil.rmtree(path, ignore_errors=True)
        build_bench_model(path, arch)
    return path
