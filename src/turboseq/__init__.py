"""turboseq: Hugging Face transformer models on a lean, exact PyTorch runtime.

The public face: ``load`` a model directory, then ``generate`` (transformers' format) or a task helper
(``translate``, ``generate_text``, ``transcribe``, ``embed``). The layers underneath are described in the README
("Architecture").
"""

from turboseq.errors import AudioError, InputTooLong, ModelLoadError
from turboseq.export.encoder import ExportedEncoder
from turboseq.load import convert, inspect, load
from turboseq.models.causal import CausalLM
from turboseq.models.encoder import EncoderModel
from turboseq.models.text import Seq2SeqModel
from turboseq.speech.model import SpeechModel
from turboseq.speech.transcript import Segment, Transcription
from turboseq.version import __version__

__all__ = [
    "load",
    "inspect",
    "convert",
    "Seq2SeqModel",
    "SpeechModel",
    "CausalLM",
    "EncoderModel",
    "ExportedEncoder",
    "Segment",
    "Transcription",
    "ModelLoadError",
    "AudioError",
    "InputTooLong",
    "__version__",
]
