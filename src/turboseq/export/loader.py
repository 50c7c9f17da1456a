"""A generation export (``export.writer``) loaded back: the eager model's API over exported programs.

``load_generation`` builds the ordinary text or speech model (``Seq2SeqModel``, ``SpeechModel``) holding a
``ProgramBackend``: the encoder and the decoder state run the file's programs (``export.graphs``), and the LM
head is built from the file's output projection (so greedy decoding keeps its exact shortcut). Batching,
search, logits rules, ``translate``, ``transcribe`` and the rest are the eager model's own code.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.export.graphs import PROGRAMS, ProgramState
from turboseq.export.writer import check_format_version, read_carried_files
from turboseq.formats.pt2 import read_export_metadata
from turboseq.kinds import ModelKind
from turboseq.models.text import Seq2SeqModel
from turboseq.runtime.packed import prepack
from turboseq.runtime.spec import Linear
from turboseq.speech.model import SpeechModel


class ProgramBackend:
    """An export file's programs behind an encoder-decoder model (the counterpart of ``EagerBackend``)."""

    teacher_forcing = False  # the file has no program for all positions at once
    word_timestamps = False  # ... nor for the alignment heads' attention
    pads_prompts = False  # a program's cache has no padding mask: prompts of other lengths decode apart

    def __init__(self, artifact: Path, meta: dict, programs: dict, audio: bool):
        self.artifact, self.meta, self.programs, self.audio = artifact, meta, programs, audio
        self.compiled = tuple(meta.get("compiled") or ())

    @property
    def label(self) -> str:
        compiled = f", compiled={list(self.compiled)}" if self.compiled else ""
        return f"{str(self.artifact)!r}{compiled}"

    def encode(self, inputs: Tensor, mask: Tensor | None):
        encoder = self.programs["encoder"]
        if self.audio:
            return encoder(inputs.to(dtype=torch.float32).contiguous()), None
        mask = torch.ones_like(inputs) if mask is None else mask
        return encoder(inputs.contiguous(), mask.contiguous()), mask.bool()

    def cross_kv(self, hidden: Tensor) -> None:
        return None  # the programs build theirs (``cross_kv``)

    def decoder_state(self, hidden: Tensor, cross_mask, group: int, max_length: int, expand=None, cross_kv=None):
        cross_k, cross_v = self.programs["cross_kv"](hidden.contiguous())
        if expand is not None:
            cross_k, cross_v = cross_k.index_select(1, expand), cross_v.index_select(1, expand)
            cross_mask = None if cross_mask is None else cross_mask.index_select(0, expand)
        info = self.meta["spec"]
        return ProgramState(
            self.programs, cross_k, cross_v, cross_mask, group, max_length, info["kv_heads"], info["head_dim"]
        )

    def source_vocab_size(self) -> int:
        return self.meta["spec"]["source_vocab_size"]

    def input_shape(self) -> tuple[int, int]:
        return self.meta["spec"]["n_mels"], self.meta["spec"]["frames"]


def _spec_info(meta: dict, head_program) -> SimpleNamespace:
    """The scalar fields of the spec that the front ends read, and the LM head's weights."""
    state = dict(head_program.state_dict)
    state.update({k: v for k, v in head_program.constants.items() if isinstance(v, Tensor)})
    tensors = sorted(state.values(), key=lambda t: -t.dim())
    weight = tensors[0]
    bias = next((t for t in tensors[1:] if t.dim() == 1 and t.shape[0] == weight.shape[0]), None)
    head = Linear(weight.contiguous(), bias)
    prepack(head)
    return SimpleNamespace(**meta["spec"], lm_head=head)


def _callables(archive, meta: dict, path: Path) -> dict:
    missing = [name for name in PROGRAMS if name not in archive.exported_programs]
    if missing:
        raise ModelLoadError(f"{path}: the export lacks the {', '.join(missing)} program(s)")
    programs = {name: archive.exported_programs[name].module() for name in PROGRAMS}
    for name in meta.get("compiled") or ():
        runner = archive.aoti_runners.get(name)
        if runner is None:
            raise ModelLoadError(f"{path}: the metadata names a compiled {name}, but the archive has none")
        programs[name] = runner
    return programs


def load_generation(path: Path, trust_compiled_code: bool = False):
    """A generation artifact as a model; ``read_export_metadata`` has refused anything torch would unpickle,
    and native code unless ``trust_compiled_code``."""
    meta = read_export_metadata(path, trust_compiled_code=trust_compiled_code)
    check_format_version(path, meta)
    from torch.export.pt2_archive._package import load_pt2

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No complete tensor found")
            warnings.filterwarnings("ignore", category=FutureWarning)
            archive = load_pt2(str(path))
        programs = _callables(archive, meta, path)
    except ModelLoadError:
        raise
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ModelLoadError(f"{path}: not a readable turboseq export ({type(err).__name__}: {err})") from None
    files_dir = Path(tempfile.mkdtemp(prefix="turboseq-export-"))
    read_carried_files(archive.extra_files, files_dir)
    spec = _spec_info(meta, archive.exported_programs["head"])
    device = torch.device("cpu")
    defaults = meta["generation_defaults"]
    audio = meta["kind"] == ModelKind.SPEECH
    backend = ProgramBackend(path, meta, programs, audio)
    args = (spec, meta["config"], defaults, files_dir, device, "float32")
    if audio:
        model = SpeechModel(*args, meta.get("whisper") or {}, backend=backend)
    else:
        model = Seq2SeqModel(*args, backend=backend)
    weakref.finalize(model, shutil.rmtree, str(files_dir), True)
    return model
