"""Reading CTranslate2's ``model.bin`` directly (no ctranslate2 install needed).

The format, as written by ``ctranslate2.specs.model_spec.ModelSpec._serialize`` (binary version 6; versions 3-6
read the same way here), little-endian throughout:

    uint32  binary version
    string  spec name (e.g. "WhisperSpec")          string = uint16 length (incl. NUL), bytes, NUL
    uint32  spec revision
    uint32  number of variables
    per variable:
        string  name ("encoder/layer_0/self_attention/linear_0/weight", ...)
        uint8   number of dimensions, then one uint32 per dimension
        uint8   dtype id: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
        uint32  byte count, then the raw bytes (row-major)
    uint32  number of aliases
    per alias: string alias, string target variable (tied weights are stored once)

Quantized weights (int8, int16) come with a ``<name>_scale`` variable: CTranslate2 stores
``round(weight * scale)``, so the float weight is ``quantized / scale`` (one scale per output row for int8, one
scalar for int16). Scalars (``num_heads``, ``pre_norm``, ...) are zero-dimensional variables.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from turboseq.errors import ModelLoadError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_SUPPORTED_VERSIONS = range(3, 7)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.offset, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise ModelLoadError(f"{self.path}: truncated CTranslate2 model file (at byte {self.offset})")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("H"))[:-1].decode("utf-8")


def _tensor(raw: bytes, dtype_id: int, shape: list[int], name: str, path: Path) -> Tensor:
    dtype = _DTYPES.get(dtype_id)
    if dtype is None:
        raise ModelLoadError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
    if dtype == "bfloat16":
        t = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16)
    else:
        t = torch.from_numpy(np.frombuffer(raw, dtype=dtype).copy())
    return t.reshape(shape)


def read_model_bin(path: str | Path) -> tuple[str, int, dict[str, Tensor]]:
    """(spec name, spec revision, {variable name: tensor}) with aliases resolved and quantized weights turned
    back into float32 (float16/bfloat16 weights keep their dtype; ``turboseq.load`` converts them)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read ({err.strerror})") from None
    r = _Reader(data, path)
    version = r.unpack("I")
    if version not in _SUPPORTED_VERSIONS:
        raise ModelLoadError(
            f"{path}: CTranslate2 binary version {version} is not supported "
            f"(supported: {_SUPPORTED_VERSIONS.start}-{_SUPPORTED_VERSIONS.stop - 1})"
        )
    name = r.string()
    revision = r.unpack("I")
    variables: dict[str, Tensor] = {}
    for _ in range(r.unpack("I")):
        var = r.string()
        shape = [r.unpack("I") for _ in range(r.unpack("B"))]
        dtype_id = r.unpack("B")
        raw = r.take(r.unpack("I"))
        variables[var] = _tensor(raw, dtype_id, shape, var, path)
    for _ in range(r.unpack("I")):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise ModelLoadError(f"{path}: alias {alias!r} points to a missing variable {target!r}")
        variables[alias] = variables[target]
    if r.offset != len(data):
        raise ModelLoadError(f"{path}: {len(data) - r.offset} unexpected bytes after the alias table")
    return name, revision, _dequantize(variables)


def _dequantize(variables: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, t in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and not t.is_floating_point():
            scale = scale.float()
            if scale.dim() == 1:  # one scale per output row
                scale = scale.reshape(-1, *[1] * (t.dim() - 1))
            t = t.float() / scale
        out[name] = t
    return out
