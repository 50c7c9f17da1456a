"""Offline batch inference, one batch of rows at a time: the callable classes for Ray Data's
``Dataset.map_batches`` (and ``turboseq batch``, which uses them with or without Ray).

    ds.map_batches(Translator, fn_constructor_kwargs={"model": "opus-mt-en-de"}, concurrency=2, num_cpus=1,
                   batch_size=64)

The model is loaded once per instance (once per Ray actor), with as many torch threads as the actor has CPUs.
A batch is a dict of columns (Ray Data's default numpy format) or a pandas DataFrame; the answer is the same
batch with one more column, in the same row order. The engine sorts the rows of a batch by length itself."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from turboseq.kinds import ModelKind
from turboseq.runtime.threads import set_worker_threads

TASKS = ("translate", "generate", "embed", "transcribe")
KIND_TASKS = {  # the kinds of model each task runs on; the first task listed for a kind is its default
    ModelKind.SEQ2SEQ: ("translate", "generate"),
    ModelKind.CAUSAL: ("generate",),
    ModelKind.ENCODER: ("embed",),
    ModelKind.EXPORT: ("embed",),
    ModelKind.SPEECH: ("transcribe",),
}
INPUT_COLUMNS = {"translate": "text", "generate": "text", "embed": "text", "transcribe": "audio"}
OUTPUT_COLUMNS = {
    "translate": "translation",
    "generate": "generated_text",
    "embed": "embedding",
    "transcribe": "transcription",
}


def task_for_kind(kind: str, task: str | None, model: str) -> str:
    """The task to run on a model of ``kind`` (its default when ``task`` is None); ValueError if it cannot."""
    allowed = KIND_TASKS.get(kind, ())
    if task is None:
        if not allowed:
            raise ValueError(f"{model}: no batch task runs a model of kind {kind!r}")
        return allowed[0]
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task not in allowed:
        raise ValueError(f"{model} is a {kind} model: task {task!r} needs {_kinds_for(task)}")
    return task


def _kinds_for(task: str) -> str:
    return " or ".join(kind for kind, tasks in KIND_TASKS.items() if task in tasks) + " model"


def _missing(value) -> bool:
    """None, NaN (pandas' missing float) or pandas.NA (its missing string)."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    pandas = sys.modules.get("pandas")
    return pandas is not None and value is pandas.NA


class Predictor:
    """One turboseq model applied to batches of rows: ``predictor(batch) -> batch`` with ``output_column`` added.

    ``task``: "translate" or "generate" (text-to-text models; "generate" for decoder-only), "embed" (encoders),
    "transcribe" (Whisper; the input column holds file paths or the files' bytes). Default: the model's own.
    ``options`` go to the task's helper (``translate(texts, num_beams=4)``, ``embed(texts, normalize=True)``,
    ``transcribe(audio, beam_size=5)``, ...) and are checked when the predictor is built.
    Missing text (None, NaN, pandas.NA) gives an empty output, as an empty string does."""

    task: str | None = None  # subclasses fix it

    def __init__(
        self,
        model: str,
        *,
        input_column: str | None = None,
        output_column: str | None = None,
        task: str | None = None,
        compute_type: str | None = None,
        num_threads: int | None = None,
        **options: Any,
    ):
        from turboseq.load import inspect, load

        task = task or self.task
        info = inspect(model)
        self.task_name = task_for_kind(info.kind, task, str(model))
        set_worker_threads(num_threads)
        self.input_column = input_column or INPUT_COLUMNS[self.task_name]
        self.output_column = output_column or OUTPUT_COLUMNS[self.task_name]
        if self.output_column == self.input_column:
            raise ValueError(f"the output column must differ from the input column {self.input_column!r}")
        self.options = options
        self.model = load(model, compute_type=compute_type)
        self._check_options()

    def _check_options(self) -> None:
        """A bad option fails here, once, instead of on every batch (the helpers check their own keywords)."""
        known = {"batch_size", "max_batch_tokens", "truncation", "seed", "progress", "return_full_text"}
        try:
            if self.task_name in ("translate", "generate"):
                self.model.settings(**{k: v for k, v in self.options.items() if k not in known})
            self.run([])  # the helper itself refuses keywords it does not take
        except TypeError as err:
            raise ValueError(f"task {self.task_name!r}: {err}") from None

    def run(self, values: Sequence) -> list:
        """The outputs of the task for ``values`` (one per value, in order)."""
        m, opts = self.model, self.options
        if self.task_name == "transcribe":
            audio = [bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else str(v) for v in values]
            return [t.text for t in m.transcribe(audio, **opts)]
        texts = ["" if _missing(v) else str(v) for v in values]
        if self.task_name == "embed":
            return m.embed(texts, **opts).numpy()  # [rows, width] float32
        run = m.translate if self.task_name == "translate" else m.generate_text
        return run(texts, **opts)

    def __call__(self, batch):
        if self.input_column not in batch:
            names = list(batch.columns if hasattr(batch, "columns") else batch.keys())
            raise ValueError(f"the batch has no column {self.input_column!r} (columns: {', '.join(map(str, names))})")
        outputs = self.run(list(batch[self.input_column]))
        if hasattr(batch, "columns"):  # pandas
            batch = batch.copy()
            batch[self.output_column] = list(outputs)
            return batch
        batch = dict(batch)
        if self.task_name == "embed":
            batch[self.output_column] = outputs
        else:
            column = np.empty(len(outputs), dtype=object)
            column[:] = outputs
            batch[self.output_column] = column
        return batch


class Translator(Predictor):
    """Text-to-text translation (Marian, T5, BART, ...): ``text`` -> ``translation``."""

    task = "translate"


class TextGenerator(Predictor):
    """Text generation (text-to-text or decoder-only continuation): ``text`` -> ``generated_text``."""

    task = "generate"


class Embedder(Predictor):
    """Sentence embeddings (BERT, XLM-R, MiniLM, an export): ``text`` -> ``embedding`` (float32 vectors)."""

    task = "embed"


class Transcriber(Predictor):
    """Whisper speech to text: ``audio`` (file paths or bytes) -> ``transcription``."""

    task = "transcribe"
