"""The saved reduced form of a model (``turboseq convert``): its weights as a compute type holds them, so a
load reads int8 or bfloat16 straight into place, with no float32 pass and no quantizing.

A converted directory holds the source's config, generation config and tokenizer files, and:
- ``model.safetensors``: the spec's tensors named by their place in it (``decoder.layers.0.self_attn.qkv.weight``);
  an int8 linear's weight is its int8 values [out, in] with ``.weight_scale`` beside it (float64, one per output
  channel), a bfloat16 linear's its bfloat16 values; a tensor shared by several places is stored once.
- ``turboseq.json``: the format and its version, the compute type, the names and shapes of the source checkpoint
  (the family rebuilds the spec from them on shapes alone, then the file fills it) and the shared places.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.formats.hf import SAFETENSORS_DTYPES, load_weights, read_json, release_pages
from turboseq.runtime.compute import int8_parts, pack_int8
from turboseq.runtime.spec import Linear

FORMAT = "turboseq-reduced"
VERSION = 1
MARKER = "turboseq.json"
COMPUTE_TYPES = ("bfloat16", "int8", "int8_bfloat16")  # the types a directory can be converted to
_WEIGHT_FILES = (".safetensors", ".bin", ".index.json", ".h5", ".msgpack", ".ckpt", ".pt", ".pth", ".ot")
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def stored_compute_type(model_dir: str | Path) -> str | None:
    """The compute type a converted directory holds, or None for any other directory or file."""
    marker = Path(model_dir) / MARKER
    if not marker.is_file():
        return None
    info = read_json(marker)
    if info.get("format") != FORMAT or info.get("version") != VERSION or info.get("compute_type") not in COMPUTE_TYPES:
        raise ModelLoadError(
            f"{marker}: not a {FORMAT} version {VERSION} description (convert the source directory again with "
            "this turboseq)"
        )
    return info["compute_type"]


def places(obj, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(place, part) for every ``Linear`` and every tensor field of a spec tree, depth first; a Linear's own
    tensors are not listed separately."""
    if isinstance(obj, Linear):
        yield prefix, obj
    elif isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, list):
        for n, item in enumerate(obj):
            yield from places(item, f"{prefix}{n}.")
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            value = getattr(obj, name)
            if isinstance(value, (Tensor, Linear)):
                yield from places(value, prefix + name)
            elif isinstance(value, list) or hasattr(value, "__dataclass_fields__"):
                yield from places(value, prefix + name + ".")


def _held(lin: Linear) -> dict[str, Tensor]:
    """A linear's tensors as its compute type holds them."""
    out = {}
    if lin.int8:
        out["weight"], out["weight_scale"] = int8_parts(lin)
    elif lin.weight.device.type == "meta":
        out["weight"] = lin.packed.to_dense()  # oneDNN's reorder back to the plain layout: the same values
    else:
        out["weight"] = lin.weight
    if lin.bias is not None:
        out["bias"] = lin.bias
    return out


def _equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def write(spec, compute_type: str, source_dir: Path, out_dir: Path, log=None) -> Path:
    """Write ``spec`` (loaded in ``compute_type``) as a converted directory ``out_dir``, with the other files of
    ``source_dir``."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    shared: dict[str, str] = {}  # place -> the place it is stored under
    stored_at: dict[int, tuple[Tensor, str]] = {}
    for place, part in places(spec):
        items = _held(part).items() if isinstance(part, Linear) else [("", part)]
        for suffix, tensor in items:
            name = f"{place}.{suffix}" if suffix else place
            if tensor.device.type == "meta":
                raise ValueError(f"{name}: a shape-only tensor cannot be saved")
            if id(tensor) in stored_at:
                shared[name] = stored_at[id(tensor)][1]
                continue
            # a tied LM head's bfloat16 weight equals its table's: stored once
            same = (
                next((n for n, t in tensors.items() if _equal(t, tensor)), None) if tensor.numel() > 1 << 16 else None
            )
            stored_at[id(tensor)] = (tensor, same or name)
            if same:
                shared[name] = same
            else:
                tensors[name] = tensor.contiguous()
    header, _source = load_weights(source_dir)
    checkpoint = {name: [list(t.shape), _DTYPE_NAMES[t.dtype]] for name, t in header.items()}
    del header
    out_dir.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns(*(f"*{suffix}" for suffix in _WEIGHT_FILES), "*.onnx", ".*")
    for item in sorted(source_dir.iterdir()):
        if item.name.startswith(".") or item.name == MARKER:
            continue
        if item.is_file() and not item.name.endswith(_WEIGHT_FILES):
            shutil.copy(item, out_dir / item.name)
        elif item.is_dir():  # sentence-transformers' module folders (1_Pooling, 2_Normalize), without weights
            shutil.copytree(item, out_dir / item.name, ignore=skip)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    info = {"format": FORMAT, "version": VERSION, "compute_type": compute_type, "checkpoint": checkpoint}
    info["shared"] = shared
    (out_dir / MARKER).write_text(json.dumps(info, indent=1))
    return out_dir


def shape_checkpoint(model_dir: Path, info: dict) -> dict[str, Tensor]:
    """The source checkpoint a converted directory records (``info``: its ``turboseq.json``), as shape-only
    tensors for the family mapping."""
    try:
        return {
            name: torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype], device="meta")
            for name, (shape, dtype) in info["checkpoint"].items()
        }
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{model_dir / MARKER}: bad checkpoint listing ({type(err).__name__}: {err})") from None


def fill(spec, model_dir: Path, info: dict) -> None:
    """Put the stored tensors of a converted directory into ``spec`` (built on shapes): int8 linears packed for
    fbgemm straight from the file, everything else as views of it (the loader lays them out and copies them
    off the file)."""
    weights_file = model_dir / "model.safetensors"
    stored, _source = load_weights(model_dir)
    shared = info.get("shared", {})
    by_name: dict[str, Tensor] = {}

    def take(name: str, expected: Tensor) -> Tensor:
        key = shared.get(name, name)
        if key not in stored:
            raise ModelLoadError(f"{weights_file}: missing tensor {key}")
        tensor = stored[key]
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ModelLoadError(
                f"{weights_file}: {key} has shape {tuple(tensor.shape)}, the config makes {tuple(expected.shape)}"
            )
        return by_name.setdefault(key, tensor)

    int8: list[tuple[Linear, Tensor, Tensor]] = []
    for place, part in places(spec):
        if isinstance(part, Linear):
            if f"{place}.weight_scale" in stored:
                scale = stored[f"{place}.weight_scale"]
                if tuple(scale.shape) != (part.weight.shape[0],):
                    raise ModelLoadError(
                        f"{weights_file}: {place}.weight_scale has shape {tuple(scale.shape)}, the config makes "
                        f"({part.weight.shape[0]},)"
                    )
                int8.append((part, take(f"{place}.weight", part.weight), scale))
            else:
                part.weight = take(f"{place}.weight", part.weight)
            if part.bias is not None:
                part.bias = take(f"{place}.bias", part.bias)
        elif part.device.type == "meta":
            _set(spec, place, take(place, part))
    pack_int8(int8, after=release_pages)  # on torch's threads, the LM head's slices first


def _set(spec, place: str, tensor: Tensor) -> None:
    *path, last = place.split(".")
    obj = spec
    for step in path:
        obj = obj[int(step)] if isinstance(obj, list) else getattr(obj, step)
    setattr(obj, last, tensor)
