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

from turboseq.bench.speech import held_out_sentences
from turboseq.formats.audio import SAMPLE_RATE


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


def replay(model, samples: np.ndarray, chunk_seconds: float = 0.5, streams: int = 1, **live_options) -> list[Replay]:
    """Stream ``samples`` (16 kHz) into ``streams`` live streams at once (``model.live(**live_options)``, the
    later ones starting a little after the first), at real-time pace on a decode-driven clock (see the module's
    docstring): each time, every stream with new audio is decoded in one batch, as the server does (with short
    windows where several streams share the engine)."""
    from turboseq.speech.live import step

    live_options.setdefault("full_window", streams == 1)
    live = [model.live(**live_options) for _ in range(streams)]
    out = [Replay(audio_seconds=len(samples) / SAMPLE_RATE) for _ in range(streams)]
    chunk = max(1, int(chunk_seconds * SAMPLE_RATE))
    lag = [k * chunk_seconds / max(streams, 1) for k in range(streams)]  # the streams' start times
    fed = [0] * streams
    clock = 0.0
    while any(f < len(samples) for f in fed):
        for k, stream in enumerate(live):
            arrived = min(len(samples), int(max(0.0, clock - lag[k]) * SAMPLE_RATE) // chunk * chunk)
            if arrived > fed[k]:
                stream.append(samples[fed[k] : arrived])
                fed[k] = arrived
        due = [k for k, stream in enumerate(live) if stream.due]
        if not due:  # wait for the next piece
            waiting = [lag[k] + (fed[k] + chunk) / SAMPLE_RATE for k in range(streams) if fed[k] < len(samples)]
            if not waiting:
                break
            clock = max(clock, min(waiting))
            continue
        start = time.perf_counter()
        updates = step(model, [live[k] for k in due])
        spent = time.perf_counter() - start
        clock += spent
        for k, update in zip(due, updates):
            out[k].decode_seconds.append(spent)
            out[k].words += [(w, clock - lag[k]) for w in update.confirmed]
    start = time.perf_counter()
    updates = step(model, live, final=True)
    clock = max(clock, out[0].audio_seconds + lag[-1]) + time.perf_counter() - start
    for k, update in enumerate(updates):
        out[k].words += [(w, clock - lag[k]) for w in update.confirmed]
    return out


def run_live_bench(out_dir: Path | None = None, streams=(1, 4), runs: int = 2, log=print) -> list[dict]:
    """Live transcription of the held-out recording at real-time pace with tiny.en: word latency (mean, p90,
    max), the engine's busy fraction, and the word error rate against the script, beside the offline
    ``transcribe`` of the same file (greedy, and the defaults); best run of ``runs`` per row."""
    import json

    import torch

    from turboseq.bench.quality import word_error_rate
    from turboseq.bench.speech import whisper_ct2_dir
    from turboseq.bench.timing import machine
    from turboseq.formats.audio import load_audio
    from turboseq.load import load

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = Path.home() / ".cache" / "turboseq" / "speech-held-out"
    samples = load_audio(held_out_recording(cache))
    script = " ".join(held_out_sentences())
    model = load(whisper_ct2_dir())
    offline = {
        "greedy": model.transcribe(samples, beam_size=1, temperature=0.0).text,
        "defaults (beam 5, fallback)": model.transcribe(samples).text,
    }
    rows = []
    log(machine())
    for count in streams:
        best = None
        for _ in range(runs):
            replays = replay(model, samples, streams=count)
            lat = np.concatenate([r.latencies for r in replays])
            row = {
                "streams": count,
                "latency_mean_s": round(float(lat.mean()), 2),
                "latency_p90_s": round(float(np.percentile(lat, 90)), 2),
                "latency_max_s": round(float(lat.max()), 2),
                "busy": replays[0].summary()["real_time_factor"],
                "wer": round(max(word_error_rate([script], [r.text]) for r in replays), 4),
            }
            log(row)
            best = row if best is None or row["latency_mean_s"] < best["latency_mean_s"] else best
        rows.append(best)
    wers = {name: round(word_error_rate([script], [text]), 4) for name, text in offline.items()}
    lines = [
        f"held-out recording: {len(samples) / SAMPLE_RATE:.0f} s (30 sentences no test tunes on, two voices, "
        "pauses, an 8 s silence), 0.5 s pieces at real-time pace, tiny.en float32, live defaults (beam 5, "
        f"temperature 0; several streams: short windows, as the server); best of "
        f"{runs} runs; {machine()}",
        "",
        "| streams at once | word latency mean | p90 | max | engine busy | WER live (worst stream) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['streams']} | {r['latency_mean_s']:.2f} s | {r['latency_p90_s']:.2f} s | {r['latency_max_s']:.2f} s "
            f"| {r['busy']:.0%} | {r['wer']:.3f} |"
            for r in rows
        ),
        "",
        "offline `transcribe` of the same file: " + ", ".join(f"{name} WER {w:.3f}" for name, w in wers.items()),
    ]
    table = "\n".join(lines)
    log(table)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "live.json").write_text(json.dumps({"rows": rows, "offline_wer": wers, "machine": machine()}))
        (out_dir / "live.md").write_text(table + "\n")
    return rows
