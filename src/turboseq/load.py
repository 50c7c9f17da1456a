"""The one place a directory or file becomes a model: the kind of model is decided here (from what
``formats.read`` found), and the precision, device and prepacking policy is applied."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch

from turboseq.errors import ModelLoadError
from turboseq.formats.hf import is_mapped, release_all_pages, release_pages
from turboseq.formats.read import ModelInfo, inspect, read_model_dir
from turboseq.formats.reduced import stored_compute_type
from turboseq.generation.settings import generation_defaults
from turboseq.kinds import ModelKind
from turboseq.models.causal import CausalLM
from turboseq.models.encoder import EncoderModel
from turboseq.models.text import Seq2SeqModel
from turboseq.runtime.compute import (
    COMPUTE_TYPES,
    ComputeType,
    Staging,
    prepare,
    prepare_linear,
    resolve_compute_type,
    supported_compute_types,
)
from turboseq.runtime.layers import ACTIVATIONS
from turboseq.runtime.memory import loading
from turboseq.runtime.spec import CausalLMSpec, EncoderSpec, Seq2SeqSpec, map_tensors, shape_problems, stacks
from turboseq.speech.model import SpeechModel

if TYPE_CHECKING:
    from turboseq.export.encoder import ExportedEncoder

# torch.export and the export loaders are imported only for export files (start-up)
Model = Union[Seq2SeqModel, SpeechModel, CausalLM, EncoderModel, "ExportedEncoder"]  # noqa: UP007

__all__ = ["COMPUTE_TYPES", "Model", "ModelInfo", "inspect", "load", "supported_compute_types"]


def _check_options(
    device: str, dtype: str | None, compute_type: str | None, stored: str | None = None
) -> tuple[torch.device, ComputeType]:
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"`device` {device!r} is not a torch device ({err})") from None
    if dtype is not None and compute_type is not None and dtype != compute_type:
        raise ValueError(f"`dtype` {dtype!r} and `compute_type` {compute_type!r} disagree; pass one of them")
    if dtype not in (None, "float32", "bfloat16", "float16"):  # the older name: float16 is refused below, with why
        raise ValueError(f"`dtype` must be one of float32, bfloat16, got {dtype!r} (see `compute_type` for int8)")
    if stored is None:
        return torch_device, resolve_compute_type(compute_type or dtype or "float32", torch_device)
    # a converted directory runs in the type it holds (int8 weights serve int8 and int8_bfloat16 alike)
    asked = compute_type or dtype or "auto"
    fits = (stored,) if stored == "bfloat16" else ("int8", "int8_bfloat16")
    if asked not in (*fits, "auto"):
        raise ValueError(
            f"this directory holds {stored} weights (turboseq convert): load it with compute_type "
            f"{' or '.join(fits)}, or convert the source directory to {asked}"
        )
    return torch_device, resolve_compute_type(stored if asked == "auto" else asked, torch_device)


def _place(
    spec: Seq2SeqSpec | EncoderSpec | CausalLMSpec, device: torch.device, ct: ComputeType, staging: Staging
) -> None:
    """Lay the weights out for the products of ``ct`` on ``device`` (``runtime.compute.prepare``), every other
    tensor in float32."""
    if device.type != "cpu":

        def to_device(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=torch.float32 if t.is_floating_point() else t.dtype).contiguous()

        map_tensors(spec, to_device)
        prepare(spec, ct)
        return
    # on the CPU the linears and tables are converted straight from the file's views, a block at a time; then
    # every other tensor still on the file is copied off it, so the mapping goes and only the result stays
    prepare(spec, ct, staging)
    final = {id(t) for t in staging.final}

    def own(t: torch.Tensor) -> torch.Tensor:
        if id(t) in final or t.device.type == "meta":
            return t
        dtype = torch.float32 if t.is_floating_point() else t.dtype
        return staging.convert(t, dtype).contiguous()

    map_tensors(spec, own)


def _staging(device: torch.device, ct: ComputeType) -> Staging:
    """How this load converts weights: on the CPU from views of the weights files, each fused linear laid out
    as soon as the family makes it (``formats.families.common.Checkpoint``)."""
    if device.type != "cpu":
        return Staging()
    staging = Staging(mapped=is_mapped, release=release_pages, release_all=release_all_pages)
    bf16 = "bfloat16" in supported_compute_types(device)
    staging.lay_out = lambda lin: prepare_linear(lin, ct, bf16, False, staging)
    return staging


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
    stored = stored_compute_type(path) if Path(path).is_dir() else None
    torch_device, ct = _check_options(device, dtype, compute_type, stored)
    if torch_device.type == "cpu":
        with loading():
            return _load(path, torch_device, ct, trust_compiled_code)
    return _load(path, torch_device, ct, trust_compiled_code)


def _load(path: str | Path, torch_device: torch.device, ct: ComputeType, trust_compiled_code: bool) -> Model:
    if Path(path).is_file():
        if ct.reduced:
            raise ValueError(f"{path}: an exported file runs in the precision it was exported in; omit `compute_type`")
        if torch_device.type != "cpu":
            raise ValueError(f"{path}: exported files run on the CPU; omit `device`")
        from turboseq.export.encoder import load_exported
        from turboseq.export.loader import load_generation
        from turboseq.formats.pt2 import GENERATION_FORMAT, read_export_metadata

        # both refuse any file that is not a safe turboseq export before torch reads it
        if read_export_metadata(path, check_members=False).get("format") == GENERATION_FORMAT:
            return load_generation(Path(path), trust_compiled_code)
        return load_exported(path, trust_compiled_code)
    staging = _staging(torch_device, ct)
    files = read_model_dir(path, staging.lay_out)
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
    _place(spec, torch_device, ct, staging)
    return _model(files, spec, Path(path), torch_device, ct)


def _model(files, spec, model_dir: Path, device: torch.device, ct: ComputeType) -> Model:
    if files.kind is ModelKind.ENCODER:
        return EncoderModel(spec, files.config, model_dir, device, ct.name)
    defaults = generation_defaults(files.generation_config, files.config)
    if files.kind is ModelKind.CAUSAL:
        return CausalLM(spec, files.config, defaults, model_dir, device, ct.name)
    if files.kind is ModelKind.SPEECH:
        return SpeechModel(spec, files.config, defaults, model_dir, device, ct.name, files.extra)
    return Seq2SeqModel(spec, files.config, defaults, model_dir, device, ct.name)


def convert(path: str | Path, out: str | Path, compute_type: str = "int8", log=None) -> Path:
    """Write the model directory ``path`` to ``out`` with its weights as ``compute_type`` ("int8",
    "int8_bfloat16" or "bfloat16") holds them, plus its config and tokenizer files: ``load(out)`` then reads
    them into place, without the float32 pass and the quantizing (faster, less memory at load), with exactly
    the outputs of ``load(path, compute_type=compute_type)``. Refused where this CPU cannot run the type."""
    from turboseq.formats import reduced

    source, out = Path(path), Path(out)
    if compute_type not in reduced.COMPUTE_TYPES:
        raise ValueError(f"`compute_type` must be one of {', '.join(reduced.COMPUTE_TYPES)}, got {compute_type!r}")
    if source.is_file():
        raise ValueError(f"{source}: convert reads a model directory, not an exported file")
    if stored_compute_type(source) is not None:
        raise ValueError(f"{source}: already converted (convert its source directory)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty directory")
    if out.resolve() == source.resolve():
        raise ValueError(f"{out}: the output must not be the source directory")
    if inspect(source).source != "hf":
        raise ValueError(f"{source}: only Hugging Face model directories can be converted")
    model = load(source, compute_type=compute_type)
    return reduced.write(model.spec, compute_type, source, out, log)
