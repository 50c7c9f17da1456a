"""Export an encoder to one self-contained file (torch.export), with dynamic batch size and sequence length.

The file is a ``torch.export`` program (``.pt2``): input_ids, attention_mask [batch, seq] -> sentence
embeddings [batch, d_model], pooled and normalized as the model directory says. It carries the weights (each
tensor once), turboseq's metadata and the tokenizer files. Plain torch runs it without turboseq or transformers:

    program = torch.export.load("minilm.pt2").module()
    embeddings = program(input_ids, attention_mask)

``turboseq.load("minilm.pt2")`` gives an ``ExportedEncoder`` with the tokenizer and ``embed(texts)``.
"""

from __future__ import annotations

import base64
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.formats.pt2 import EXPORT_FORMAT as FORMAT
from turboseq.formats.pt2 import read_export_metadata
from turboseq.runtime.compute import dense_weights
from turboseq.runtime.layers import encode
from turboseq.runtime.spec import EncoderSpec
from turboseq.version import __version__

FORMAT_VERSION = 1
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "merges.txt",
    "vocab.json",
)


class _EmbeddingProgram(torch.nn.Module):
    """The padded encoder plus pooling, on plain (not prepacked) weights so that it can be exported."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        h = encode(self.spec.encoder, input_ids, attention_mask)
        mask = attention_mask[..., None].to(h.dtype)
        mode = self.spec.pooling.mode
        if mode == "cls":
            vectors = h[:, 0]
        elif mode == "max":
            vectors = h.masked_fill(mask == 0, -torch.inf).max(dim=1).values
        else:
            vectors = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(vectors, p=2, dim=1) if self.spec.pooling.normalize else vectors


def export_encoder(model, out: str | Path, compile: bool = False) -> Path:
    """Write ``model`` (an ``EncoderModel``) to ``out``; returns the path. ``compile`` adds an AOTInductor build
    of the program (native code for this CPU: loading it needs ``trust_compiled_code=True``)."""
    spec: EncoderSpec = model.spec
    if model.compute_type != "float32":
        raise ValueError(
            f"export takes a float32 model (this one was loaded with compute_type={model.compute_type}): "
            "its packed reduced-precision weights are not exportable"
        )
    out = Path(out)
    with dense_weights(spec):  # oneDNN's opaque packed weights cannot be exported
        # also the sizes a compiled build tunes its kernels for: 8 texts of 32 tokens
        ids = torch.randint(1, min(100, spec.encoder.embed.tokens.shape[0]), (8, 32))
        mask = torch.ones_like(ids)
        mask[1, -5:] = 0
        example = (ids.masked_fill(mask == 0, 0), mask)
        batch, seq = torch.export.Dim("batch", max=65536), torch.export.Dim("seq", max=spec.max_positions)
        dims = {0: batch, 1: seq}
        with torch.no_grad():
            program = torch.export.export(
                _EmbeddingProgram(spec), example, dynamic_shapes={"input_ids": dims, "attention_mask": dims}
            )
    meta = dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        turboseq_version=__version__,
        torch_version=torch.__version__,
        model_type=model.config.get("model_type"),
        d_model=spec.d_model,
        max_positions=spec.max_positions,
        pooling=dict(mode=spec.pooling.mode, normalize=spec.pooling.normalize),
        dtype=model.dtype,
        compiled=["encoder"] if compile else [],
    )
    extra = {"turboseq.json": json.dumps(meta)}
    for name in _TOKENIZER_FILES:
        if (model.path / name).is_file():
            # base64: some tokenizer files are binary (sentencepiece models) and extra files must be text
            extra[f"tokenizer__{name}"] = base64.b64encode((model.path / name).read_bytes()).decode("ascii")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out, extra_files=extra)
    if compile:
        from turboseq.export.writer import add_members, compile_members

        with tempfile.TemporaryDirectory() as tmp:
            members = compile_members("encoder", program, Path(tmp))
        out.write_bytes(add_members(out.read_bytes(), members))
    return out


class ExportedEncoder:
    """An exported encoder loaded back: ``embed(texts)`` and ``__call__(input_ids, attention_mask)``."""

    def __init__(self, path: Path, program, meta: dict, tokenizer_files: dict[str, str]):
        self.path, self.program, self.meta = path, program, meta
        self._tokenizer_files = tokenizer_files
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"turboseq.ExportedEncoder({self.meta.get('model_type')}, {str(self.path)!r})"

    @property
    def compute_type(self) -> str:
        return self.meta.get("dtype", "float32")

    dtype = compute_type

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not self._tokenizer_files:
                raise ValueError(f"{self.path}: the export carries no tokenizer; call it with input_ids")
            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory() as tmp:
                for name, text in self._tokenizer_files.items():
                    Path(tmp, name).write_bytes(base64.b64decode(text))
                self._tokenizer = AutoTokenizer.from_pretrained(tmp)
        return self._tokenizer

    @torch.inference_mode()
    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        return self.program(ids.contiguous(), mask.contiguous())  # compiled programs read contiguous inputs

    def embed(self, texts: Sequence[str], *, batch_size: int = 32, truncation: bool = False) -> Tensor:
        """Embeddings [len(texts), d] in input order. Texts run in batches of similar length (sorted; within a
        batch the longest at most twice the shortest, and at most ``batch_size``), so little is padded."""
        if isinstance(texts, str):
            raise TypeError("`texts` must be a list of strings, not a single string")
        limit = self.meta["max_positions"]
        rows = self.tokenizer(list(texts), truncation=truncation, max_length=limit if truncation else None)
        rows = rows["input_ids"]
        for ids in rows:
            if len(ids) > limit:
                raise ValueError(f"an input has {len(ids)} tokens; the model accepts at most {limit}")
        out = torch.zeros((len(rows), self.meta["d_model"]))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order) and end - start < batch_size and len(rows[order[end]]) <= 2 * len(rows[order[start]])
            ):
                end += 1
            chunk = order[start:end]
            width = len(rows[chunk[-1]])
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, i in enumerate(chunk):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            out[chunk] = self(ids, mask)
            start = end
        return out


def load_exported(path: str | Path, trust_compiled_code: bool = False) -> ExportedEncoder:
    """An export file loaded back, after ``formats.pt2`` checked that nothing in it gets unpickled (and that it
    holds no native code unless ``trust_compiled_code``)."""
    path = Path(path)
    # the format and every member, before torch opens the archive
    meta = read_export_metadata(path, trust_compiled_code=trust_compiled_code)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: export format version {meta.get('format_version')} (turboseq {meta.get('turboseq_version')}); "
            f"this turboseq reads version {FORMAT_VERSION}: export the model again"
        )
    extra = {f"tokenizer__{name}": "" for name in _TOKENIZER_FILES}
    try:
        with warnings.catch_warnings():
            # torch notes that views of one storage are grouped; they are CPU tensors, nothing to fix
            warnings.filterwarnings("ignore", message="No complete tensor found")
            if meta.get("compiled"):
                from torch.export.pt2_archive._package import load_pt2

                archive = load_pt2(str(path))
                extra.update({k: v for k, v in archive.extra_files.items() if k in extra})
                runner = archive.aoti_runners["encoder"]
            else:
                runner = torch.export.load(path, extra_files=extra).module()
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ModelLoadError(f"{path}: not a readable turboseq export ({type(err).__name__}: {err})") from None
    tokenizer_files = {k.split("__", 1)[1]: v for k, v in extra.items() if k.startswith("tokenizer__") and v}
    return ExportedEncoder(path, runner, meta, tokenizer_files)
