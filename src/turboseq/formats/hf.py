"""Hugging Face directory files: JSON configs and weights (safetensors, or torch.load with weights_only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from turboseq.errors import ModelLoadError


def read_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path}: file not found")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ModelLoadError(f"{path}: not valid JSON (nested too deeply)") from None
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
                if not isinstance(shard, str) or Path(shard).name != shard:
                    raise ModelLoadError(f"{index_path}: shard {shard!r} is not a file name in the model directory")
                if not (model_dir / shard).is_file():
                    raise ModelLoadError(f"{model_dir / shard}: file not found (listed in {index_name})")
                tensors.update(loader(model_dir / shard))
            return tensors, str(index_path)
    for name, loader in (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_torch_bin)):
        if (model_dir / name).is_file():
            return loader(model_dir / name), str(model_dir / name)
    raise ModelLoadError(f"{model_dir}: no weights found (expected model.safetensors or pytorch_model.bin)")
