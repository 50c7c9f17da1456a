"""Voice activity detection: the Silero VAD network (v6, 16 kHz) on PyTorch, and the speech chunks that
``transcribe(vad_filter=True)`` keeps.

The weights are the ``silero-vad`` package's safetensors file (1.2 MB; the package needs nothing but torch);
the network is written here: a fixed STFT convolution, four convolutions, an LSTM cell carried from one
32 ms frame to the next, and a sigmoid. The chunking rules and defaults are faster-whisper's
``get_speech_timestamps`` (``VadOptions``), so the kept audio is the same.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FRAME = 512  # samples per VAD decision (32 ms at 16 kHz)
CONTEXT = 64  # samples of the previous frame each frame sees
SAMPLE_RATE = 16000


@dataclass
class VadOptions:
    """faster-whisper's VAD parameters (``vad_parameters``)."""

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = float("inf")
    min_silence_duration_ms: int = 2000
    speech_pad_ms: int = 400

    @classmethod
    def of(cls, value, **overrides) -> VadOptions:
        """From None, a dict or a VadOptions; unknown keys, wrong types and values out of range are refused in
        one line."""
        if isinstance(value, VadOptions):
            value = asdict(value)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"`vad_parameters` must be an object of VAD settings, got {value!r}")
        value = dict(value or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown `vad_parameters` key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        value.update(overrides)
        for name, number in value.items():
            if name == "neg_threshold" and number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, (int, float)) or math.isnan(number):
                raise ValueError(f"`vad_parameters.{name}` must be a number, got {number!r}")
            if number < 0 or (math.isinf(number) and name != "max_speech_duration_s"):
                raise ValueError(f"`vad_parameters.{name}` must be a finite number >= 0, got {number!r}")
        opts = cls(**value)
        for name in ("threshold", "neg_threshold"):
            number = getattr(opts, name)
            if number is not None and not 0 < number < 1:
                raise ValueError(f"`vad_parameters.{name}` must be in (0, 1), got {number}")
        if opts.max_speech_duration_s <= 0:
            raise ValueError(f"`vad_parameters.max_speech_duration_s` must be > 0, got {opts.max_speech_duration_s}")
        return opts


class SileroVAD(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.w = weights
        self.lstm = torch.nn.LSTM(128, 128)  # the checkpoint's LSTM cell, stepped over the frames
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(self.lstm, f"{name}_l0").data.copy_(weights[f"lstm_cell.{name}"])

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Speech probability of each frame [n, CONTEXT + FRAME] (a frame and the end of the one before)."""
        w = self.w
        x = F.pad(frames, (0, CONTEXT), mode="reflect")[:, None]
        spec = F.conv1d(x, w["stft_conv.weight"], stride=128)
        half = spec.shape[1] // 2
        x = (spec[:, :half] ** 2 + spec[:, half:] ** 2).sqrt()
        x = F.relu(F.conv1d(x, w["conv1.weight"], w["conv1.bias"], padding=1))
        x = F.relu(F.conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1))
        x = F.relu(F.conv1d(x, w["conv3.weight"], w["conv3.bias"], stride=2, padding=1))
        x = F.relu(F.conv1d(x, w["conv4.weight"], w["conv4.bias"], padding=1))[:, :, 0]  # [n, 128]
        # the LSTM cell runs across frames, carrying its state from one frame to the next
        out = self.lstm(x[:, None])[0][:, 0]
        logits = F.relu(out) @ w["final_conv.weight"][0, :, 0] + w["final_conv.bias"][0]
        return torch.sigmoid(logits)


@lru_cache(maxsize=1)
def silero() -> SileroVAD:
    # found without importing the package: importing silero_vad sets torch's global thread count to 1
    from importlib.util import find_spec

    spec = find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("`vad_filter` needs the silero-vad package: pip install silero-vad")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad_16k.safetensors"
    if not path.is_file():
        raise ValueError(f"the silero-vad package has no {path.name}; pip install 'silero-vad>=6'")
    from safetensors.torch import load_file

    return SileroVAD(load_file(str(path)))


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """The speech probability of every 32 ms frame of 16 kHz ``audio`` (the last frame zero-padded)."""
    padded = np.pad(audio.astype(np.float32), (0, FRAME - len(audio) % FRAME))
    frames = torch.from_numpy(padded).view(-1, FRAME)
    context = torch.zeros(frames.shape[0], CONTEXT)
    context[1:] = frames[:-1, -CONTEXT:]
    return silero()(torch.cat([context, frames], dim=1)).numpy()


@dataclass
class SpeechChunk:
    """A stretch of speech in a recording, in samples (faster-whisper's ``{"start", "end"}``)."""

    start: int
    end: int


@dataclass
class Piece:
    """Speech chunks joined into one piece of audio: where it starts in the speech-only time and how long it is
    (seconds), and the chunks it holds."""

    offset: float
    duration: float
    chunks: list[SpeechChunk]


def speech_timestamps(audio: np.ndarray, opts: VadOptions) -> list[SpeechChunk]:
    """The speech chunks of ``audio``: frames above ``threshold`` open speech,
    ``min_silence_duration_ms`` below ``neg_threshold`` close it, chunks over ``max_speech_duration_s`` are
    split at their last pause of over 98 ms (or cut), and every chunk is padded by ``speech_pad_ms``."""
    probs = speech_probabilities(audio) if len(audio) else np.zeros(0)
    neg = opts.neg_threshold if opts.neg_threshold is not None else max(opts.threshold - 0.15, 0.01)
    min_speech = SAMPLE_RATE * opts.min_speech_duration_ms / 1000
    pad = SAMPLE_RATE * opts.speech_pad_ms / 1000
    max_speech = SAMPLE_RATE * opts.max_speech_duration_s - FRAME - 2 * pad
    min_silence = SAMPLE_RATE * opts.min_silence_duration_ms / 1000
    min_silence_at_max = SAMPLE_RATE * 98 / 1000
    speeches: list[SpeechChunk] = []
    current: SpeechChunk | None = None
    triggered = False
    temp_end = prev_end = next_start = 0
    for i, p in enumerate(probs):
        here = FRAME * i
        if p >= opts.threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = here
        if p >= opts.threshold and not triggered:
            triggered = True
            current = SpeechChunk(here, 0)
            continue
        if triggered and here - current.start > max_speech:
            if prev_end:
                current.end = prev_end
                speeches.append(current)
                current = None
                if next_start < prev_end:
                    triggered = False
                else:
                    current = SpeechChunk(next_start, 0)
                prev_end = next_start = temp_end = 0
            else:
                current.end = here
                speeches.append(current)
                current = None
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if p < neg and triggered:
            if not temp_end:
                temp_end = here
            if here - temp_end > min_silence_at_max:
                prev_end = temp_end
            if here - temp_end < min_silence:
                continue
            current.end = temp_end
            if current.end - current.start > min_speech:
                speeches.append(current)
            current = None
            prev_end = next_start = temp_end = 0
            triggered = False
    if current is not None and len(audio) - current.start > min_speech:
        current.end = len(audio)
        speeches.append(current)
    for i, speech in enumerate(speeches):
        if i == 0:
            speech.start = int(max(0, speech.start - pad))
        if i != len(speeches) - 1:
            gap = speeches[i + 1].start - speech.end
            if gap < 2 * pad:
                speech.end += int(gap // 2)
                speeches[i + 1].start = int(max(0, speeches[i + 1].start - gap // 2))
            else:
                speech.end = int(min(len(audio), speech.end + pad))
                speeches[i + 1].start = int(max(0, speeches[i + 1].start - pad))
        else:
            speech.end = int(min(len(audio), speech.end + pad))
    return speeches


def collect_chunks(audio: np.ndarray, chunks: list[SpeechChunk], max_duration: float = float("inf")):
    """The speech of ``chunks`` joined into pieces of at most ``max_duration`` seconds: (audio pieces, and per
    piece its ``Piece``)."""
    if not chunks:
        return [np.zeros(0, np.float32)], [Piece(0.0, 0.0, [])]
    pieces, meta = [], []
    parts: list = []
    members: list = []
    length = total = 0
    for chunk in chunks:
        size = chunk.end - chunk.start
        if length + size > max_duration * SAMPLE_RATE:
            pieces.append(np.concatenate(parts) if parts else np.zeros(0, np.float32))
            meta.append(Piece(total / SAMPLE_RATE, length / SAMPLE_RATE, members))
            total += length
            parts, members, length = [], [], 0
            # faster-whisper leaves a chunk that opens a new piece out of that piece's chunk list
            parts.append(audio[chunk.start : chunk.end])
            length = size
        else:
            members.append(chunk)
            parts.append(audio[chunk.start : chunk.end])
            length += size
    pieces.append(np.concatenate(parts) if parts else np.zeros(0, np.float32))
    meta.append(Piece(total / SAMPLE_RATE, length / SAMPLE_RATE, members))
    return pieces, meta


class TimeMap:
    """Maps times in the speech-only audio back to the original recording."""

    def __init__(self, chunks: list[SpeechChunk]):
        self.ends, self.silence_before = [], []
        previous_end = silent = 0
        for chunk in chunks:
            silent += chunk.start - previous_end
            previous_end = chunk.end
            self.ends.append(chunk.end - silent)
            self.silence_before.append(silent / SAMPLE_RATE)

    def chunk_index(self, time: float, is_end: bool = False) -> int:
        sample = int(time * SAMPLE_RATE)
        if is_end and sample in self.ends:
            return self.ends.index(sample)
        return min(bisect.bisect(self.ends, sample), len(self.ends) - 1)

    def original(self, time: float, index: int | None = None, is_end: bool = False) -> float:
        if index is None:
            index = self.chunk_index(time, is_end)
        return round(self.silence_before[index] + time, 2)


def restore_times(segments, chunks: list[SpeechChunk]) -> None:
    """Segments (and words) timed on the speech-only audio, moved to the original recording's time (in place);
    a word's start and end map through the chunk of its middle."""
    if not chunks:
        return
    times = TimeMap(chunks)
    for seg in segments:
        if seg.words:
            for word in seg.words:
                index = times.chunk_index((word.start + word.end) / 2)
                word.start = times.original(word.start, index)
                word.end = times.original(word.end, index)
            seg.start, seg.end = seg.words[0].start, seg.words[-1].end
        else:
            seg.start = times.original(seg.start)
            seg.end = times.original(seg.end, is_end=True)
