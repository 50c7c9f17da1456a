"""The one place a directory or file becomes a model: the kind of model is decided here (from what
``formats.read`` found), and the precision, device and prepacking policy is applied."""

from __future__ import annotations

from pathlib import Path

import torch

from turboseq.errors import ModelLoadError
from turboseq.export.encoder import ExportedEncoder, load_exported
from turboseq.export.loader import load_generation
from turboseq.formats.pt2 import GENERATION_FORMAT, read_export_metadata
from turboseq.formats.read import ModelInfo, inspect, read_model_dir
from turboseq.generation.settings import generation_defaults
from turboseq.kinds import ModelKind
from turboseq.models.causal import CausalLM
from turboseq.models.encoder import EncoderModel
from turboseq.models.text import Seq2SeqModel
from turboseq.runtime.compute import COMPUTE_TYPES, ComputeType, prepare, resolve_compute_type, supported_compute_types
from turboseq.runtime.layers import ACTIVATIONS
from turboseq.runtime.memory import release_free_memory, tune_malloc
from turboseq.runtime.spec import CausalLMSpec, EncoderSpec, Seq2SeqSpec, map_tensors, shape_problems, stacks
from turboseq.speech.model import SpeechModel

Model = Seq2SeqModel | SpeechModel | CausalLM | EncoderModel | ExportedEncoder

__all__ = ["COMPUTE_TYPES", "Model", "ModelInfo", "inspect", "load", "supported_compute_types"]


def _check_options(device: str, dtype: str | None, compute_type: str | None) -> tuple[torch.device, ComputeType]:
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"`device` {device!r} is not a torch device ({err})") from None
    if dtype is not None and compute_type is not None and dtype != compute_type:
        raise ValueError(f"`dtype` {dtype!r} and `compute_type` {compute_type!r} disagree; pass one of them")
    if dtype not in (None, "float32", "bfloat16", "float16"):  # the older name: float16 is refused below, with why
        raise ValueError(f"`dtype` must be one of float32, bfloat16, got {dtype!r} (see `compute_type` for int8)")
    return torch_device, resolve_compute_type(compute_type or dtype or "float32", torch_device)


def _place(spec: Seq2SeqSpec | EncoderSpec | CausalLMSpec, device: torch.device, ct: ComputeType) -> None:
    """Move the weights to ``device`` in float32, then lay them out for the products of ``ct``
    (``runtime.compute.prepare``)."""
    as_read: set[int] = set()  # storages of the tensors as the files gave them

    def to_float32(t: torch.Tensor) -> torch.Tensor:
        as_read.add(t.untyped_storage().data_ptr())
        return t.to(device=device, dtype=torch.float32 if t.is_floating_point() else t.dtype).contiguous()

    map_tensors(spec, to_float32)
    prepare(spec, ct)
    if device.type == "cpu":
        # safetensors maps the file: one tensor still on that storage (a bias, a norm) keeps the whole mapping,
        # converted weights included, resident (280 MB for the opus-mt shape), so every such tensor gets its own
        map_tensors(
            spec,
            lambda t: t.clone() if t.device.type == "cpu" and t.untyped_storage().data_ptr() in as_read else t,
        )


def load(
    path: str | Path,
    device: str = "cpu",
    dtype: str | None = None,
    compute_type: str | None = None,
    trust_compiled_code: bool = False,
) -> Model:
    """Load a local Hugging Face model directory (config.json + weights [+ tokenizer files]), a CTranslate2
    Whisper directory (model.bin, as faster-whisper uses), or a ``turboseq export`` file.

    Returns a ``Seq2SeqModel`` (text to text), ``SpeechModel`` (Whisper), ``CausalLM`` (GPT-2, Llama, Qwen2,
    Mistral), ``EncoderModel`` (embeddings, classification) or ``ExportedEncoder``.

    ``compute_type`` (CTranslate2's names): "float32" (the default; token-identical to transformers),
    "bfloat16", "int8", "int8_bfloat16" (faster, not identical: README, fast mode) or "auto" (the fastest this
    machine supports). ``dtype`` is the older name of the option ("float32" or "bfloat16").

    An export file of a generation model (``turboseq export``) loads as the same ``Seq2SeqModel`` or ``SpeechModel``, its ``backend`` running the file's programs,
    with the same API. One built with ``--compile`` holds native code: it loads only with
    ``trust_compiled_code=True``."""
    torch_device, ct = _check_options(device, dtype, compute_type)
    if torch_device.type == "cpu":
        tune_malloc()
    if Path(path).is_file():
        if ct.reduced:
            raise ValueError(f"{path}: an exported file runs in the precision it was exported in; omit `compute_type`")
        if torch_device.type != "cpu":
            raise ValueError(f"{path}: exported files run on the CPU; omit `device`")
        # both refuse any file that is not a safe turboseq export before torch reads it
        if read_export_metadata(path, check_members=False).get("format") == GENERATION_FORMAT:
            return load_generation(Path(path), trust_compiled_code)
        return load_exported(path, trust_compiled_code)
    files = read_model_dir(path)
    spec = files.spec
    for layer in [layer for stack in stacks(spec) for layer in stack.layers]:
        if layer.ffn.activation not in ACTIVATIONS:
            raise ModelLoadError(
                f"{Path(path) / 'config.json'}: unsupported activation {layer.ffn.activation!r}; "
                f"supported: {', '.join(ACTIVATIONS)}"
            )
    problems = shape_problems(spec)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelLoadError(f"{Path(path) / 'config.json'}: the weights do not match the config: {problems[0]}{more}")
    _place(spec, torch_device, ct)
    model = _model(files, spec, Path(path), torch_device, ct)
    if torch_device.type == "cpu":
        # the float32 staging copies of converted weights and the LM head's screen set-up would otherwise stay
        # resident (``runtime.memory``: freed blocks are kept for reuse)
        release_free_memory()
    return model


def _model(files, spec, model_dir: Path, device: torch.device, ct: ComputeType) -> Model:
    if files.kind is ModelKind.ENCODER:
        return EncoderModel(spec, files.config, model_dir, device, ct.name)
    defaults = generation_defaults(files.generation_config, files.config)
    if files.kind is ModelKind.CAUSAL:
        return CausalLM(spec, files.config, defaults, model_dir, device, ct.name)
    if files.kind is ModelKind.SPEECH:
        return SpeechModel(spec, files.config, defaults, model_dir, device, ct.name, files.extra)
    return Seq2SeqModel(spec, files.config, defaults, model_dir, device, ct.name)
