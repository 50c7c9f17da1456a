"""Converting a CTranslate2 Whisper directory into a Hugging Face one (for transformers, as a reference)."""

from __future__ import annotations

import json
from pathlib import Path

from turboseq.formats.audio import CHUNK_SAMPLES, HOP_LENGTH, N_FFT, SAMPLE_RATE
from turboseq.formats.ct2 import read_model_bin
from turboseq.formats.families.whisper import ct2_configs, ct2_to_hf
from turboseq.formats.hf import read_json


def export_hf(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a CTranslate2 Whisper directory as a Hugging Face one (config.json, generation_config.json,
    model.safetensors in float32, tokenizer files), loadable by transformers' WhisperForConditionalGeneration."""
    import shutil

    from safetensors.torch import save_file

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    _name, _rev, variables = read_model_bin(ct2_dir / "model.bin")
    config, generation_config = ct2_configs(ct2_dir, variables, read_json(ct2_dir / "config.json"))
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.float().contiguous() for k, v in ct2_to_hf(variables).items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    shutil.copy(ct2_dir / "tokenizer.json", out_dir / "tokenizer.json")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "WhisperTokenizer", "model_max_length": 1024, "errors": "replace"}, indent=2)
    )
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "WhisperFeatureExtractor",
                "feature_size": config["num_mel_bins"],
                "sampling_rate": SAMPLE_RATE,
                "hop_length": HOP_LENGTH,
                "chunk_length": CHUNK_SAMPLES // SAMPLE_RATE,
                "n_fft": N_FFT,
                "padding_value": 0.0,
                "return_attention_mask": False,
            },
            indent=2,
        )
    )
    return out_dir
