"""turboseq: Hugging Face encoder-decoder models on a lean, exact PyTorch runtime."""

from __future__ import annotations

from pathlib import Path

import torch

from turboseq.encoder import EncoderModel
from turboseq.families.common import ModelLoadError
from turboseq.model import Seq2SeqModel

__version__ = "0.1.0"
__all__ = ["load", "Seq2SeqModel", "EncoderModel", "ModelLoadError", "__version__"]


def load(path: str | Path, device: str = "cpu", dtype: str = "float32") -> Seq2SeqModel | EncoderModel:
    """Load a local Hugging Face model directory (config.json + weights [+ tokenizer files]), a CTranslate2
    Whisper directory (model.bin, as faster-whisper uses), or a ``turboseq export`` file.

    ``dtype``: "float32" (token-identical to transformers) or "bfloat16" (faster, not identical).
    """
    from turboseq.generation import generation_defaults
    from turboseq.layers import ACTIVATIONS, prepack
    from turboseq.loading import DTYPES, read_model_dir
    from turboseq.memory import tune_malloc
    from turboseq.spec import EncoderSpec, Seq2SeqSpec, linears, map_tensors

    if dtype == "float16":
        raise ValueError(
            "`dtype` float16 is not offered: T5-family activations overflow its range (a known transformers "
            "issue) and CPUs gain nothing from it; use bfloat16 for a fast mode"
        )
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"`device` {device!r} is not a torch device ({err})") from None
    if device.type == "cpu":
        tune_malloc()
    if Path(path).is_file():  # a `turboseq export` artifact
        from turboseq.export import load_exported

        return load_exported(path)
    family, config, generation_config, spec = read_model_dir(path)
    stacks = [spec.encoder] + ([spec.decoder] if isinstance(spec, Seq2SeqSpec) else [])
    for layer in [layer for stack in stacks for layer in stack.layers]:
        if layer.ffn.activation not in ACTIVATIONS:
            raise ModelLoadError(
                f"{Path(path) / 'config.json'}: unsupported activation {layer.ffn.activation!r}; "
                f"supported: {', '.join(ACTIVATIONS)}"
            )
    torch_dtype = DTYPES[dtype]
    map_tensors(spec, lambda t: t.to(device=device, dtype=torch_dtype if t.is_floating_point() else t.dtype).contiguous())
    # CPU weights are reordered once for oneDNN's matmul. Where that is not available, Linear weights keep
    # their [out, in] shape but are stored transposed (column-major): F.linear then hands BLAS a contiguous
    # [in, out] matrix, much faster for the few-row products of decoding. Embedding lookups stay row-major.
    prepack(spec)
    for lin in linears(spec):
        if lin.packed is None:
            lin.weight = lin.weight.t().contiguous().t()
    if isinstance(spec, EncoderSpec):
        return EncoderModel(spec, config, Path(path), device, dtype)
    defaults = generation_defaults(generation_config, config)
    if getattr(family, "KIND", "seq2seq") == "speech":
        from turboseq.speech import SpeechModel

        whisper = family.whisper_settings(Path(path), config, generation_config)
        return SpeechModel(spec, config, defaults, Path(path), device, dtype, whisper)
    return Seq2SeqModel(spec, config, defaults, Path(path), device, dtype)
