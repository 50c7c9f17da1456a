"""Tokenizer loading (transformers' tokenizers; no remote code)."""

from __future__ import annotations

from pathlib import Path

from turboseq.families.common import ModelLoadError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "source.spm", "spiece.model", "vocab.json")


def load_tokenizer(model_dir: Path):
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{model_dir}: no tokenizer files (looked for {', '.join(_TOKENIZER_FILES)}); "
            "token-level generate() works without one"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as err:
        raise ModelLoadError(f"{model_dir}: cannot load the tokenizer ({type(err).__name__}: {err})") from None
