"""Reading a model directory or file: what kind of model it is, its configs, and its spec.

Every failure is a ``ModelLoadError`` naming the file. ``inspect`` reads only config.json (or an export's
metadata), so a caller can refuse the wrong kind of model before any weight is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from turboseq.errors import ModelLoadError
from turboseq.formats import reduced
from turboseq.formats.families import FAMILIES
from turboseq.formats.families.common import Checkpoint
from turboseq.formats.hf import load_weights, read_json
from turboseq.formats.pt2 import read_export_metadata
from turboseq.kinds import ModelKind
from turboseq.runtime.spec import CausalLMSpec, EncoderSpec, Linear, Seq2SeqSpec


@dataclass
class ModelInfo:
    """What ``inspect`` tells from a model's config alone."""

    path: Path
    kind: ModelKind
    model_type: str | None
    source: str = "hf"  # "hf" (a Hugging Face directory), "ct2" (a CTranslate2 directory) or "export" (a file)

    def describe(self) -> str:
        name = f" ({self.model_type})" if self.model_type else ""
        return f"{self.kind.description}{name}"


@dataclass
class ModelFiles(ModelInfo):
    """Everything read from a model directory: configs and the spec, ready for the runtime."""

    config: dict = field(default_factory=dict)
    generation_config: dict | None = None
    spec: Seq2SeqSpec | EncoderSpec | CausalLMSpec | None = None
    extra: dict = field(default_factory=dict)  # a family's own generation keys (Whisper's prompt and rules)


def _check_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise ModelLoadError(f"{model_dir}: no such model directory")
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: not a directory (expected a Hugging Face model directory)")


def inspect(path: str | Path) -> ModelInfo:
    """The kind of model at ``path`` (a directory, or a ``turboseq export`` file), from its config alone."""
    path = Path(path)
    if path.is_file():
        meta = read_export_metadata(path, check_members=False)  # loading checks the members
        # an encoder export is its own kind (embeddings); a generation model's serves its family's verbs
        return ModelInfo(path, ModelKind(meta.get("kind", "export")), meta.get("model_type"), "export")
    return _inspect_dir(path)[0]


def _inspect_dir(path: Path) -> tuple[ModelInfo, dict]:
    """A model directory's kind and its config.json."""
    _check_dir(path)
    config = read_json(path / "config.json")
    if "model_type" not in config and (path / "model.bin").is_file():
        return ModelInfo(
            path, ModelKind.SPEECH, "whisper", "ct2"
        ), config  # CTranslate2: Whisper only (checked on load)
    model_type = config.get("model_type")
    return ModelInfo(path, getattr(_family(path, model_type), "KIND", ModelKind.SEQ2SEQ), model_type), config


# config.json entries that count something (heads, layers, widths, positions): whole numbers in a sane range
_COUNTS = (
    "n_head", "n_layer", "n_embd", "n_positions", "n_ctx", "n_inner", "num_attention_heads", "num_hidden_layers",
    "num_key_value_heads", "hidden_size", "intermediate_size", "max_position_embeddings", "vocab_size", "d_model",
    "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers",
    "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
    "max_source_positions", "max_target_positions", "num_mel_bins", "head_dim",
)  # fmt: skip
_LAYER_COUNTS = ("n_layer", "num_hidden_layers", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers")


def check_config_numbers(path: Path, config: dict) -> None:
    """Refuse (``ModelLoadError``) a config whose counts are not whole numbers in range: a zero head count
    would divide by zero, a billion layers would loop for minutes before a missing weight is noticed."""
    for key in _COUNTS:
        value = config.get(key)
        if value is None:
            continue
        lowest = 0 if key in _LAYER_COUNTS else 1
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 1 << 24:
            raise ModelLoadError(f"{path}: `{key}` must be a whole number in [{lowest}, {1 << 24}], got {value!r}")


def _family(model_dir: Path, model_type):
    family = FAMILIES.get(model_type)
    if family is None:
        raise ModelLoadError(
            f"{model_dir / 'config.json'}: unsupported model_type {model_type!r}; "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return family


def read_model_dir(path: str | Path, lay_out: Callable[[Linear], None] | None = None) -> ModelFiles:
    """Configs and spec of a Hugging Face (or CTranslate2 Whisper) model directory; ``lay_out`` is handed to
    the family's ``Checkpoint`` (each fused linear laid out as soon as it is made)."""
    model_dir = Path(path)
    info, config = _inspect_dir(model_dir)
    if info.source == "ct2":
        return read_ct2_dir(model_dir, config)
    family, kind, model_type = FAMILIES[info.model_type], info.kind, info.model_type
    generation_config = read_json(model_dir / "generation_config.json", required=False)
    check_config_numbers(model_dir / "config.json", config)
    converted = read_json(model_dir / reduced.MARKER, required=False)
    if converted is not None:  # ``turboseq convert``: the family maps shapes, then the stored weights fill the spec
        tensors, source = reduced.shape_checkpoint(model_dir, converted), str(model_dir / "model.safetensors")
        lay_out = None
    else:
        tensors, source = load_weights(model_dir)
    try:
        if kind is ModelKind.ENCODER:  # encoders also read their pooling files
            spec = family.build(config, Checkpoint(tensors, source, lay_out), model_dir)
        else:
            spec = family.build(config, Checkpoint(tensors, source, lay_out))
    except KeyError as err:
        raise ModelLoadError(f"{model_dir / 'config.json'}: missing key {err}") from None
    except (ArithmeticError, TypeError, ValueError, IndexError, RuntimeError) as err:
        # a config whose numbers do not fit its weights (the shape check after loading names most of them)
        raise ModelLoadError(
            f"{model_dir / 'config.json'}: does not describe these weights ({type(err).__name__}: {err})"
        ) from None
    if converted is not None:
        reduced.fill(spec, model_dir, converted)
    extra = (
        family.generation_extras(model_dir, config, generation_config) if hasattr(family, "generation_extras") else {}
    )
    return ModelFiles(model_dir, kind, model_type, "hf", config, generation_config, spec, extra)


def read_ct2_dir(model_dir: Path, ct2_config: dict) -> ModelFiles:
    """A CTranslate2 model directory (model.bin + config.json + tokenizer files), as ``read_model_dir``."""
    from turboseq.formats.ct2 import read_model_bin
    from turboseq.formats.families import whisper

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
    extra = whisper.generation_extras(model_dir, config, generation_config)
    return ModelFiles(model_dir, ModelKind.SPEECH, "whisper", "ct2", config, generation_config, spec, extra)
