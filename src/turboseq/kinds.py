"""The kinds of model turboseq serves: one enum that every layer names them by (the config's family decides it,
the CLI's verbs, the batch tasks and the export metadata refer to it). A ``str`` enum: it equals and prints as
its value, which is what export files and JSON carry."""

from __future__ import annotations

from enum import Enum


class ModelKind(str, Enum):
    SEQ2SEQ = "seq2seq"
    CAUSAL = "causal"
    SPEECH = "speech"
    ENCODER = "encoder"
    EXPORT = "export"  # an encoder's export file (a generation export reports its family's kind)

    def __str__(self) -> str:
        return self.value

    @property
    def description(self) -> str:
        """What a model of this kind is, in words (CLI errors name it)."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ModelKind.SEQ2SEQ: "a text-to-text model",
    ModelKind.SPEECH: "a speech-to-text (Whisper) model",
    ModelKind.ENCODER: "an encoder (embedding) model",
    ModelKind.CAUSAL: "a text-generation (decoder-only) model",
    ModelKind.EXPORT: "a turboseq export of an encoder",
}
