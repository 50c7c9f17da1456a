"""Whisper speech-to-text: the model (``model``), one window's decoding with temperature fallback
(``decoding``), the sequential and batched long-form pipelines (``longform``), word timestamps
(``alignment``), Silero voice activity detection (``vad``), special tokens and word splitting (``tokens``),
and the results (``transcript``: segments, words, SRT/VTT)."""
