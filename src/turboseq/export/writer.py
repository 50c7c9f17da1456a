"""Export a generation model (Marian, T5, BART, Whisper, ...) to one self-contained ``.pt2`` file, and load it.

The file holds the programs of ``export.graphs`` (encoder, cross-attention initializer, decoder prefill and
step, output projection) as ``torch.export`` programs with dynamic batch, source and cache lengths; the weights,
each stored once (tied and shared tensors are one payload); turboseq's metadata; and the model directory's small
files (config, generation config, tokenizer). ``compile=True`` adds AOTInductor builds of the encoder and the
decoder step (frozen, so weights are prepacked): native code for this machine's CPU.

``turboseq.load(FILE)`` gives a ``Seq2SeqModel`` or ``SpeechModel`` whose backend runs the programs: the same API as the eager model, with
turboseq's search loops driving the programs (``export.graphs.ProgramState``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import torch

from turboseq.errors import ModelLoadError
from turboseq.export.graphs import CrossKVGraph, EncoderGraph, HeadGraph, StepGraph
from turboseq.formats.pt2 import GENERATION_FORMAT as FORMAT
from turboseq.kinds import ModelKind
from turboseq.runtime.compute import dense_weights
from turboseq.version import __version__

FORMAT_VERSION = 1
COMPILED = ("encoder", "step", "step_beams")  # programs ``compile=True`` builds with AOTInductor
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
_MAX_CARRIED_FILE = 32 << 20  # bytes: tokenizer and config files are far smaller


def _dim(name: str, low: int = 1, high: int = 1 << 20):
    return torch.export.Dim(name, min=low, max=high)


def _examples(model, audio: bool) -> dict[str, tuple[tuple, dict]]:
    """Per program: example inputs (every dynamic size >= 2, so that none is specialized) and dynamic shapes."""
    spec = model.spec
    attn = spec.decoder.layers[0].self_attn
    layers, kv_heads, head_dim = len(spec.decoder.layers), attn.kv_heads, attn.head_dim
    cross = spec.decoder.layers[0].cross_attn
    cross_dim = cross.q.weight.shape[0] // cross.num_heads
    S, G, src = _dim("sentences"), _dim("group", 2), _dim("source", 1, spec.max_positions)
    T, n = _dim("length", 1, spec.max_positions), _dim("prompt", 2, spec.max_positions)
    # example sizes are also the sizes the compiled kernels are tuned for: few rows (2 inputs; 2 inputs x 4 beams),
    # where inductor's own GEMM kernels win (tuned for 64 rows, the build took aten's and lost at every size),
    # 16-token sources and caches; every dynamic size >= 2 when traced, so that none is specialized
    s, t, p, src_len = 2, 16, 2, 16
    if audio:
        frames = model.frames
        src, src_len = None, frames // 2
        encoder = ((torch.zeros(s, model.n_mels, frames),), {"inputs": {0: S}})
    else:
        ids, mask = torch.randint(4, 9, (s, src_len)), torch.ones(s, src_len, dtype=torch.long)
        mask[1, -3:] = 0
        encoder = ((ids, mask), {"inputs": {0: S, 1: src}, "attention_mask": {0: S, 1: src}})
    d = spec.d_model
    source_dims = {1: S} if audio else {1: S, 3: src}

    def step_inputs(tokens_len: int, cache_len: int, time_dim, prompt_dim, beams: bool):
        # one row per input (greedy, sampling) and several (beams) are two programs: traced with both, the
        # reshapes between [inputs * rows] and [inputs, rows] would only hold for one of the two
        (n_in, g), group = ((2, 4), G) if beams else ((2, 1), None)
        cache = torch.zeros(cache_len, layers, n_in, g, kv_heads, head_dim)
        cross_kv = torch.zeros(layers, n_in, cross.num_heads, src_len, cross_dim)
        args = [torch.zeros(n_in, g, tokens_len, dtype=torch.long), cache, cache.clone(), cross_kv, cross_kv.clone()]
        rows = {0: S, 1: group} if beams else {0: S}
        dims = {
            "tokens": {**rows, 2: prompt_dim} if prompt_dim is not None else rows,
            "cache_k": {0: time_dim, 2: S, 3: group} if beams else {0: time_dim, 2: S},
            "cache_v": {0: time_dim, 2: S, 3: group} if beams else {0: time_dim, 2: S},
            "cross_k": source_dims,
            "cross_v": source_dims,
        }
        if not audio:
            args.append(torch.ones(n_in, src_len, dtype=torch.bool))
            dims["source_mask"] = {0: S, 1: src}
        return tuple(args), dims

    return {
        "encoder": encoder,
        "cross_kv": ((torch.zeros(s, src_len, d),), {"hidden": {0: S} if audio else {0: S, 1: src}}),
        # a prompt starts the cache: its length is the prompt's
        "prefill": step_inputs(p, p, n, n, beams=False),
        "prefill_beams": step_inputs(p, p, n, n, beams=True),
        "step": step_inputs(1, t, T, None, beams=False),
        "step_beams": step_inputs(1, t, T, None, beams=True),
        "head": ((torch.zeros(s * 2, d),), {"hidden": {0: _dim("rows")}}),
    }


def _programs(model, audio: bool) -> dict:
    spec = model.spec
    modules = {
        "encoder": EncoderGraph(spec, audio),
        "cross_kv": CrossKVGraph(spec),
        **{name: StepGraph(spec, masked=not audio) for name in ("prefill", "prefill_beams", "step", "step_beams")},
        "head": HeadGraph(spec.lm_head),
    }
    programs = {}
    with torch.no_grad():
        for name, (args, dims) in _examples(model, audio).items():
            programs[name] = torch.export.export(modules[name], args, dynamic_shapes=dims)
    return programs


def _carried_files(model_dir: Path) -> dict[str, str]:
    """The model directory's small non-weight files (config, generation config, tokenizer), base64."""
    out = {}
    for file in sorted(model_dir.iterdir()):
        if file.is_file() and not file.name.endswith(_WEIGHT_SUFFIXES) and file.stat().st_size <= _MAX_CARRIED_FILE:
            if file.name != "model.bin":  # CTranslate2's weights
                out[f"file__{file.name}"] = base64.b64encode(file.read_bytes()).decode("ascii")
    return out


def _dedupe(archive_bytes: bytes) -> bytes:
    """The archive with identical tensor payloads stored once: programs that share a weight (an embedding
    tied to the output projection, or used by encoder and decoder) point to one member."""
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    first: dict[tuple[str, str], str] = {}  # (folder, digest) -> member name kept
    renamed: dict[str, str] = {}  # member path -> path kept
    for info in source.infolist():
        folder, _, base = info.filename.rpartition("/")
        if base.startswith(("weight_", "tensor_")) and "/data/" in f"/{folder}/":
            key = (folder, hashlib.sha256(source.read(info)).hexdigest())
            renamed[info.filename] = first.setdefault(key, info.filename)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if renamed.get(info.filename, info.filename) != info.filename:
                continue
            folder, _, base = info.filename.rpartition("/")
            if info.filename.endswith("_config.json") and folder.endswith(("data/weights", "data/constants")):
                config = json.loads(data)
                for entry in config.get("config", {}).values():
                    kept = renamed.get(f"{folder}/{entry['path_name']}")
                    if kept is not None:
                        entry["path_name"] = kept.rpartition("/")[2]
                data = json.dumps(config).encode()
            target.writestr(info, data)
    return out.getvalue()


def _build(package: Path, program) -> None:
    torch._inductor.aoti_compile_and_package(
        program,
        package_path=str(package),
        # inductor's own AVX-512 GEMM kernels, with the weights packed into the build, where timing them on this
        # machine beats aten's (opus-mt step at batch 1: 1.9 ms, against 5.3 ms for frozen aten matmuls).
        # The package's model is renamed below: naming it through inductor's config lost these kernels.
        inductor_configs={"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"},
    )


def compile_members(name: str, program, workdir: Path) -> list[tuple[str, bytes]]:
    """AOTInductor build of one program (frozen: weights folded in and packed for its GEMM kernels); its archive
    members."""
    package = workdir / f"{name}.pt2"
    # inductor prints its kernel timings and torch warns about its own deprecations: keep the CLI's output clean
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        _build(package, program)
    members = []
    with zipfile.ZipFile(package) as archive:
        for member in archive.namelist():
            inner = member.partition("/")[2]
            if inner.startswith("data/aotinductor/model/"):  # the package's one model, renamed
                members.append((f"data/aotinductor/{name}/" + inner.split("/", 3)[3], archive.read(member)))
    return members


def add_members(data: bytes, members: list[tuple[str, bytes]]) -> bytes:
    """An archive's bytes with ``members`` (paths below its root folder) added."""
    merged = io.BytesIO(data)
    with zipfile.ZipFile(merged, "a", zipfile.ZIP_STORED) as archive:
        root = archive.namelist()[0].partition("/")[0]
        for name, payload in members:
            archive.writestr(f"{root}/{name}", payload)
    return merged.getvalue()


def export_generation(model, out: str | Path, compile: bool = False, log=None) -> dict:
    """Write ``model`` (a float32 ``Seq2SeqModel`` or ``SpeechModel``) to ``out``; returns what was written:
    path, size in bytes, and seconds spent compiling (``compile``)."""
    from turboseq.speech.model import SpeechModel

    if model.compute_type != "float32":
        raise ValueError(
            f"export takes a float32 model (this one was loaded with compute_type={model.compute_type}): "
            "reduced-precision weights are laid out for this process's kernels and cannot be exported"
        )
    if model.device.type != "cpu":
        raise ValueError(f"export runs on the CPU; load the model with device='cpu' (got {model.device})")
    audio = isinstance(model, SpeechModel)
    spec = model.spec
    if not hasattr(spec, "decoder"):
        raise ValueError(f"{model.path}: this model was loaded from an export; export its model directory instead")
    attn = spec.decoder.layers[0].self_attn
    with dense_weights(spec):
        programs = _programs(model, audio)
    meta = dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        turboseq_version=__version__,
        torch_version=torch.__version__,
        kind=str(ModelKind.SPEECH if audio else ModelKind.SEQ2SEQ),
        model_type=model.config.get("model_type"),
        compute_type="float32",
        compiled=list(COMPILED) if compile else [],
        config=model.config,
        generation_defaults=model.generation_defaults,
        whisper=model.whisper if audio else None,
        spec=dict(
            pad_token_id=spec.pad_token_id,
            eos_token_id=spec.eos_token_id,
            decoder_start_token_id=spec.decoder_start_token_id,
            max_positions=spec.max_positions,
            vocab_size=spec.vocab_size,
            d_model=spec.d_model,
            kv_heads=attn.kv_heads,
            head_dim=attn.head_dim,
            source_vocab_size=None if audio else spec.encoder.embed.tokens.shape[0],
            n_mels=model.n_mels if audio else None,
            frames=model.frames if audio else None,
        ),
    )
    extra = {"turboseq.json": json.dumps(meta), **_carried_files(model.path)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch's serializer warns about its own deprecated pytree API
        warnings.simplefilter("ignore", FutureWarning)
        torch.export.pt2_archive._package.package_pt2(buffer, exported_programs=programs, extra_files=extra)
    data = _dedupe(buffer.getvalue())
    seconds = 0.0
    if compile:
        begin = time.perf_counter()
        members = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in COMPILED:
                if log is not None:
                    log(f"compiling the {name} with AOTInductor")
                members += compile_members(name, programs[name], Path(tmp))
        seconds = time.perf_counter() - begin
        data = add_members(data, members)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return dict(path=out, bytes=len(data), compile_seconds=seconds)


def read_carried_files(extra: dict[str, str], into: Path) -> None:
    for key, text in extra.items():
        if key.startswith("file__"):
            (into / key.partition("__")[2]).write_bytes(base64.b64decode(text))


def check_format_version(path: Path, meta: dict) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: export format version {meta.get('format_version')} (turboseq {meta.get('turboseq_version')}); "
            f"this turboseq reads version {FORMAT_VERSION}: export the model again"
        )
