"""Tokenizers: loading transformers' tokenizers (no remote code) and encoding texts within a length limit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from turboseq.errors import InputTooLong, ModelLoadError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "source.spm", "spiece.model", "vocab.json")


def load_tokenizer(model_dir: Path):
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{model_dir}: no tokenizer files (looked for {', '.join(_TOKENIZER_FILES)}); "
            "token-level generate() works without one"
        )
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        import json

        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelLoadError(f"{config_file}: not valid JSON ({err})") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise ModelLoadError(
                f"{config_file}: the tokenizer is custom code (auto_map), which turboseq never runs; "
                "use a model directory with a standard tokenizer"
            )
    import warnings

    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            # MarianTokenizer's hint to install sacremoses, on every load: it only matters for its unused
            # moses-based pre-tokenization of targets
            warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
            return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as err:
        raise ModelLoadError(f"{model_dir}: cannot load the tokenizer ({type(err).__name__}: {err})") from None


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    limit: int,
    truncation: bool,
    indices: Sequence[int] | None = None,
    hint: str = "pass truncation=True to cut it",
) -> list[list[int]]:
    """Token ids (special tokens included) of each text; raises ``InputTooLong`` naming the first input over
    ``limit`` tokens (``indices`` number the inputs for the message), unless ``truncation`` cuts them."""
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings, not a single string")
    if not len(texts):
        return []
    rows = tokenizer(list(texts), truncation=truncation, max_length=limit if truncation else None)["input_ids"]
    for n, ids in enumerate(rows):
        if len(ids) > limit:
            raise InputTooLong(indices[n] if indices is not None else n, len(ids), limit, hint)
    return rows
