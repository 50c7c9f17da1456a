"""Benchmarks against the peers, the models they run on, and the server load test.

Names here are plain data so that the CLI can list them without importing the benchmarks."""

SEQ2SEQ_ARCHS = ("marian", "t5-small", "t5-base", "flan-t5-small", "bart-base")
CAUSAL_ARCHS = ("gpt2", "llama-small")
ENCODER_ARCHS = ("minilm", "xlmr-base")
SPEECH_ARCHS = ("whisper", "whisper-longform", "whisper-live")
