"""A generation artifact (``models.artifact``) loaded back: the eager model's API over exported programs.

``ProgramSeq2Seq`` and ``ProgramSpeech`` are the text and speech front ends with three hooks replaced: the
encoder and the decoder state run the artifact's programs (``export.graphs``), and the LM head is built from
the artifact's output projection (so greedy decoding keeps its exact shortcut). Batching, search, logits rules,
``translate``, ``transcribe`` and the rest are the eager model's own code.
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
from turboseq.runtime.compute import prepack
from turboseq.runtime.spec import Linear
from turboseq.speech.model import SpeechModel


class _Programs:
    """What the two front ends share when they run an artifact."""

    programs: dict
    artifact: Path
    meta: dict

    def _setup(self, artifact: Path, meta: dict, programs: dict) -> None:
        self.artifact, self.meta, self.programs = artifact, meta, programs
        self.compiled = tuple(meta.get("compiled") or ())

    def __repr__(self) -> str:
        compiled = f", compiled={list(self.compiled)}" if self.compiled else ""
        return f"turboseq.{type(self).__name__}({self.meta.get('model_type')}, {str(self.artifact)!r}{compiled})"

    def forward_logits(self, inputs, attention_mask, decoder_input_ids) -> Tensor:
        raise ValueError(f"{self.artifact}: forward_logits needs the model directory; an export decodes only")

    def _cross_kv(self, hidden: Tensor) -> None:
        return None  # the programs build theirs (``cross_kv``)

    def _decoder_state(self, hidden: Tensor, cross_mask, group: int, max_length: int, expand=None, cross_kv=None):
        cross_k, cross_v = self.programs["cross_kv"](hidden.contiguous())
        if expand is not None:
            cross_k, cross_v = cross_k.index_select(1, expand), cross_v.index_select(1, expand)
            cross_mask = None if cross_mask is None else cross_mask.index_select(0, expand)
        info = self.meta["spec"]
        return ProgramState(
            self.programs, cross_k, cross_v, cross_mask, group, max_length, info["kv_heads"], info["head_dim"]
        )


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


class ProgramSeq2Seq(_Programs, Seq2SeqModel):
    """A text-to-text artifact: ``generate``, ``translate``, ``generate_text`` as ``Seq2SeqModel``."""

    def _source_vocab_size(self) -> int:
        return self.meta["spec"]["source_vocab_size"]

    def _encode(self, inputs: Tensor, mask: Tensor | None):
        inputs = inputs.to(self.device)
        mask = torch.ones_like(inputs) if mask is None else mask.to(self.device)
        return self.programs["encoder"](inputs.contiguous(), mask.contiguous()), mask.bool()


class ProgramSpeech(_Programs, SpeechModel):
    """A Whisper artifact: ``generate`` and ``transcribe`` as ``SpeechModel`` (no word timestamps: the file has
    no program for the alignment heads' attention)."""

    word_timestamps = False

    def _input_shape(self) -> tuple[int, int]:
        return self.meta["spec"]["n_mels"], self.meta["spec"]["frames"]

    def _encode(self, inputs: Tensor, mask):
        return self.programs["encoder"](inputs.to(device=self.device, dtype=torch.float32).contiguous()), None


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
    if meta["kind"] == ModelKind.SPEECH:
        cls, extra = ProgramSpeech, (meta.get("whisper") or {},)
    else:
        cls, extra = ProgramSeq2Seq, ()
    model = cls.__new__(cls)
    model._setup(path, meta, programs)
    model.__init__(spec, meta["config"], defaults, files_dir, device, "float32", *extra)
    weakref.finalize(model, shutil.rmtree, str(files_dir), True)
    return model
