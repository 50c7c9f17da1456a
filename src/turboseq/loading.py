"""Reading a model directory: config, weights, generation defaults. Every failure names the file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from turboseq.families import FAMILIES
from turboseq.families.common import Checkpoint, ModelLoadError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def read_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path}: file not found")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise ModelLoadError(f"{path}: cannot read weights ({err})") from None


def _load_torch_bin(path: Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict of tensors")
    return state


def load_weights(model_dir: Path) -> tuple[dict, str]:
    """All tensors of the checkpoint (single file or shards), and a description of where they came from."""
    for index_name, loader in (
        ("model.safetensors.index.json", _load_safetensors),
        ("pytorch_model.bin.index.json", _load_torch_bin),
    ):
        index_path = model_dir / index_name
        if index_path.is_file():
            index = read_json(index_path)
            shards = sorted(set(index.get("weight_map", {}).values()))
            if not shards:
                raise ModelLoadError(f"{index_path}: no weight_map")
            tensors = {}
            for shard in shards:
                if not (model_dir / shard).is_file():
                    raise ModelLoadError(f"{model_dir / shard}: file not found (listed in {index_name})")
                tensors.update(loader(model_dir / shard))
            return tensors, str(index_path)
    for name, loader in (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_torch_bin)):
        if (model_dir / name).is_file():
            return loader(model_dir / name), str(model_dir / name)
    raise ModelLoadError(f"{model_dir}: no weights found (expected model.safetensors or pytorch_model.bin)")


def read_model_dir(path: str | Path):
    """Returns (family module, config dict, generation_config dict or None, spec)."""
    model_dir = Path(path)
    if not model_dir.exists():
        raise ModelLoadError(f"{model_dir}: no such model directory")
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: not a directory (expected a Hugging Face model directory)")
    config = read_json(model_dir / "config.json")
    if "model_type" not in config and (model_dir / "model.bin").is_file():
        return read_ct2_dir(model_dir, config)
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        raise ModelLoadError(
            f"{model_dir / 'config.json'}: unsupported model_type {model_type!r}; "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    generation_config = read_json(model_dir / "generation_config.json", required=False)
    tensors, source = load_weights(model_dir)
    try:
        if getattr(family, "KIND", "seq2seq") == "encoder":  # encoders also read their pooling files
            spec = family.build(config, Checkpoint(tensors, source), model_dir)
        else:
            spec = family.build(config, Checkpoint(tensors, source))
    except KeyError as err:
        raise ModelLoadError(f"{model_dir / 'config.json'}: missing key {err}") from None
    return family, config, generation_config, spec


def read_ct2_dir(model_dir: Path, ct2_config: dict):
    """A CTranslate2 model directory (model.bin + config.json + tokenizer files), as ``read_model_dir``."""
    from turboseq.ct2 import read_model_bin
    from turboseq.families import whisper

    name, _revision, variables = read_model_bin(model_dir / "model.bin")
    if name != "WhisperSpec":
        raise ModelLoadError(
            f"{model_dir / 'model.bin'}: CTranslate2 model {name!r} is not supported; of CTranslate2 directories, "
            "turboseq reads Whisper (WhisperSpec). Load other models from their Hugging Face directory"
        )
    config, generation_config = whisper.ct2_configs(model_dir, variables, ct2_config)
    try:
        spec = whisper.build(config, Checkpoint(whisper.ct2_to_hf(variables), str(model_dir / "model.bin")))
    except KeyError as err:
        raise ModelLoadError(f"{model_dir / 'model.bin'}: missing variable {err}") from None
    return whisper, config, generation_config, spec
