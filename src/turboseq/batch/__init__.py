"""Offline batch inference: callable classes for Ray Data's ``map_batches`` (``Translator``, ``TextGenerator``,
``Embedder``, ``Transcriber``) and ``run_job`` behind ``turboseq batch`` (local or on Ray, resumable shards).
Ray and pyarrow are optional: ``pip install 'turboseq[ray]'``."""

from turboseq.batch.job import JobResult, run_job
from turboseq.batch.predict import Embedder, Predictor, TextGenerator, Transcriber, Translator

__all__ = ["Predictor", "Translator", "TextGenerator", "Embedder", "Transcriber", "run_job", "JobResult"]
