"""Live transcription: how soon each word is confirmed when audio arrives at real-time pace.

``replay`` feeds a recording to ``SpeechModel.live`` as a microphone would (``chunk_seconds`` pieces, each
arriving when its audio has been spoken) on a clock that the decodes themselves advance: a decode that takes
0.4 s delays everything after it by 0.4 s, as it would in a live stream, without waiting out the recording in
real time. A word's latency is the clock when it was confirmed minus the word's end in the audio. The held-out
recording speaks sentences that no test of this project tunes on (``data/sentences_en.txt``).
"""

from __future__ import annotations

import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


def held_out_recording(out_dir: Path, sentences: int = 30) -> Path:
    """About two and a half minutes (16 kHz WAV, cached): ``sentences`` of ``data/sentences_en.txt`` in two
    espeak-ng voices, pauses of 0.3-1.5 s, and an 8 s silence in the middle (fixed seed)."""
    from turboseq.bench.speech import synthesize
    from turboseq.formats.audio import load_audio

    path = out_dir / f"held-out-{sentences}.wav"
    if path.is_file():
        return path
    chosen = held_out_sentences(sentences)
    half = len(chosen) // 2
    clips = synthesize(chosen[:half], out_dir / "us") + synthesize(chosen[half:], out_dir / "gb", voice="en-gb")
    rng = np.random.default_rng(11)
    parts = []
    for i, clip in enumerate(clips):
        parts.append(load_audio(clip))
        gap = 8.0 if i == half else float(rng.uniform(0.3, 1.5))
        parts.append(np.zeros(int(gap * SAMPLE_RATE), np.float32))
    pcm = (np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return path


def held_out_sentences(count: int = 30) -> list[str]:
    """What ``held_out_recording`` says, in order."""
    text = (Path(__file__).parent.parent / "data" / "sentences_en.txt").read_text().splitlines()
    return [s for s in text if s.strip()][:count]


@dataclass
class Replay:
    """One replayed stream: every confirmed word with the clock at its confirmation, and the decodes' times."""

    words: list = field(default_factory=list)  # (Word, confirmed at, in stream seconds)
    decode_seconds: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0

    @property
    def text(self) -> str:
        return "".join(w.word for w, _ in self.words)

    @property
    def latencies(self) -> np.ndarray:
        return np.array([max(0.0, at - w.end) for w, at in self.words])

    def summary(self) -> dict:
        lat = self.latencies
        return {
            "words": len(self.words),
            "latency_mean_s": round(float(lat.mean()), 2) if lat.size else None,
            "latency_p90_s": round(float(np.percentile(lat, 90)), 2) if lat.size else None,
            "latency_max_s": round(float(lat.max()), 2) if lat.size else None,
            "decodes": len(self.decode_seconds),
            "decode_mean_s": round(float(np.mean(self.decode_seconds)), 3) if self.decode_seconds else None,
            "real_time_factor": round(sum(self.decode_seconds) / self.audio_seconds, 3) if self.audio_seconds else None,
        }


def replay(model, samples: np.ndarray, chunk_seconds: float = 0.5, **live_options) -> Replay:
    """Stream ``samples`` (16 kHz) into ``model.live(**live_options)`` at real-time pace on a decode-driven
    clock (see the module's docstring)."""
    stream = model.live(**live_options)
    out = Replay(audio_seconds=len(samples) / SAMPLE_RATE)
    chunk = max(1, int(chunk_seconds * SAMPLE_RATE))
    fed, clock = 0, 0.0
    while fed < len(samples):
        arrived = min(len(samples), int(clock * SAMPLE_RATE) // chunk * chunk)
        if arrived > fed:
            stream.append(samples[fed:arrived])
            fed = arrived
        if stream.due:
            start = time.perf_counter()
            update = stream.process()
            spent = time.perf_counter() - start
            out.decode_seconds.append(spent)
            clock += spent
            out.words += [(w, clock) for w in update.confirmed]
        else:
            clock = max(clock, (fed + chunk) / SAMPLE_RATE)  # wait for the next piece
    start = time.perf_counter()
    update = stream.finish()
    clock = max(clock, out.audio_seconds) + time.perf_counter() - start
    out.words += [(w, clock) for w in update.confirmed]
    return out
