"""The user-facing model objects: one generation ``engine`` with its encoder-decoder form under ``text`` and
its decoder-only form ``causal``; the ``encoder`` models; ``alternatives``. Whisper lives in ``turboseq.speech``,
exports in ``turboseq.export``."""
