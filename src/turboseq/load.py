"""The one place a directory or file becomes a model: the kind of model is decided here (from what
``formats.read`` found), and the precision, device and prepacking policy is applied."""

from __future__ import annotations

from pathlib import Path

import torch

from turboseq.errors import ModelLoadError
from turboseq.formats.read import ModelInfo, inspect, read_model_dir
from turboseq.generation.settings import generation_defaults
from turboseq.models.causal import CausalLM
from turboseq.models.encoder import EncoderModel
from turboseq.models.exported import ExportedEncoder, load_exported
from turboseq.models.speech import SpeechModel
from turboseq.models.text import Seq2SeqModel
from turboseq.runtime.layers import ACTIVATIONS, prepack
from turboseq.runtime.memory import tune_malloc
from turboseq.runtime.spec import CausalLMSpec, EncoderSpec, Seq2SeqSpec, linears, map_tensors, shape_problems

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

Model = Seq2SeqModel | SpeechModel | CausalLM | EncoderModel | ExportedEncoder

__all__ = ["DTYPES", "Model", "ModelInfo", "inspect", "load"]


def _check_options(device: str, dtype: str) -> torch.device:
    if dtype == "float16":
        raise ValueError(
            "`dtype` float16 is not offered: T5-family activations overflow its range (a known transformers "
            "issue) and CPUs gain nothing from it; use bfloat16 for a fast mode"
        )
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"`device` {device!r} is not a torch device ({err})") from None


def _place(spec: Seq2SeqSpec | EncoderSpec | CausalLMSpec, device: torch.device, dtype: torch.dtype) -> None:
    """Move the weights to ``device`` and ``dtype``, and lay them out for the fastest matmul there.

    CPU weights are reordered once for oneDNN's matmul. Where that is not available, Linear weights keep their
    [out, in] shape but are stored transposed (column-major): F.linear then hands BLAS a contiguous [in, out]
    matrix, much faster for the few-row products of decoding. Embedding lookups stay row-major."""
    map_tensors(spec, lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype).contiguous())
    prepack(spec)
    for lin in linears(spec):
        if lin.packed is None:
            lin.weight = lin.weight.t().contiguous().t()


def load(path: str | Path, device: str = "cpu", dtype: str = "float32") -> Model:
    """Load a local Hugging Face model directory (config.json + weights [+ tokenizer files]), a CTranslate2
    Whisper directory (model.bin, as faster-whisper uses), or a ``turboseq export`` file.

    Returns a ``Seq2SeqModel`` (text to text), ``SpeechModel`` (Whisper), ``CausalLM`` (GPT-2, Llama, Qwen2,
    Mistral), ``EncoderModel`` (embeddings, classification) or ``ExportedEncoder``. ``dtype``: "float32" (token-identical to transformers) or
    "bfloat16" (faster, not identical)."""
    torch_device = _check_options(device, dtype)
    if torch_device.type == "cpu":
        tune_malloc()
    if Path(path).is_file():
        return load_exported(path)  # it refuses any file that is not a safe turboseq export before torch reads it
    files = read_model_dir(path)
    spec = files.spec
    stacks = [getattr(spec, name) for name in ("encoder", "decoder") if hasattr(spec, name)]
    for layer in [layer for stack in stacks for layer in stack.layers]:
        if layer.ffn.activation not in ACTIVATIONS:
            raise ModelLoadError(
                f"{Path(path) / 'config.json'}: unsupported activation {layer.ffn.activation!r}; "
                f"supported: {', '.join(ACTIVATIONS)}"
            )
    problems = shape_problems(spec)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelLoadError(f"{Path(path) / 'config.json'}: the weights do not match the config: {problems[0]}{more}")
    _place(spec, torch_device, DTYPES[dtype])
    model_dir = Path(path)
    if files.kind == "encoder":
        return EncoderModel(spec, files.config, model_dir, torch_device, dtype)
    defaults = generation_defaults(files.generation_config, files.config)
    if files.kind == "causal":
        return CausalLM(spec, files.config, defaults, model_dir, torch_device, dtype)
    if files.kind == "speech":
        return SpeechModel(spec, files.config, defaults, model_dir, torch_device, dtype, files.extra)
    return Seq2SeqModel(spec, files.config, defaults, model_dir, torch_device, dtype)
