"""Hugging Face directory files: JSON configs and weights (safetensors, or torch.load with weights_only)."""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import weakref
from pathlib import Path

import torch

from turboseq.errors import ModelLoadError
from turboseq.runtime.memory import drop_pages


def read_json(path: Path, required: bool = True) -> dict | None:
    if not path.exists() or path.is_dir():  # a pipe is read like a file
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


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip

# (start, end) of the live file mappings whose pages ``release_pages`` may drop
_MAPPINGS: dict[int, tuple[int, weakref.ref]] = {}  # start -> (end, the mmap)


def _load_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file as views of one copy-on-write mapping of it: nothing is read until a
    tensor is used, and ``release_pages`` gives back the pages of a tensor once it has been converted."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ValueError("file too short for a header")
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError(f"header of {header_len} bytes in a file of {size}")
            header = json.loads(f.read(header_len))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            header.pop("__metadata__", None)
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + header_len else None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: cannot read weights ({err})") from None
    start = 8 + header_len
    tensors = {}
    try:
        base = torch.frombuffer(data, dtype=torch.uint8) if data is not None else torch.empty(0, dtype=torch.uint8)
        for name, entry in header.items():
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = [int(n) for n in entry["shape"]]
            begin, end = (start + int(n) for n in entry["data_offsets"])
            count = math.prod(shape)
            if not start <= begin <= end <= size or end - begin != count * dtype.itemsize or min(shape, default=1) < 0:
                raise ValueError(f"tensor {name!r}: offsets {entry['data_offsets']} do not fit its shape {shape}")
            # a view of the mapping (the byte range reinterpreted: safetensors is little-endian, as x86 is)
            tensors[name] = base[begin:end].view(dtype).view(shape) if count else torch.empty(shape, dtype=dtype)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    if tensors and data is not None:
        # the tensors keep the mapping alive; once the last is gone the address range may be reused, so the
        # entry goes with it
        address = base.data_ptr()
        _MAPPINGS[address] = (address + size, weakref.ref(data, lambda _ref: _MAPPINGS.pop(address, None)))
    return tensors


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The addresses [begin, end) that ``t``'s elements lie in (a transposed view's too)."""
    begin = t.data_ptr()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
    return begin, begin + (last + 1) * t.element_size()


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is (a view of) a weights file read by ``load_weights``, not memory of its own."""
    if t.device.type != "cpu" or not t.numel():
        return False
    begin, end = _span(t)
    return any(
        address <= begin and end <= limit and mapping() is not None
        for address, (limit, mapping) in list(_MAPPINGS.items())
    )


def release_pages(t: torch.Tensor) -> None:
    """Drop from this process's memory the whole pages under ``t``, a view of a weights file mapping that the
    caller no longer reads (a weight converted into another tensor). The mapping is copy-on-write and nothing
    writes weights, so a later read would only fault the file's bytes back in. Anything else is left alone."""
    if is_mapped(t):
        drop_pages(*_span(t))  # whole pages only: a neighbour may be in use


def release_all_pages() -> None:
    """``release_pages`` over every live weights mapping: what is read later faults back in, so this is
    safe at any time; the loader calls it between phases to drop pages that blocks' edges left behind."""
    for address, (limit, mapping) in list(_MAPPINGS.items()):
        if mapping() is not None:
            drop_pages(address, limit)


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
