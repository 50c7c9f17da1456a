"""Long-form Whisper: turboseq vs faster-whisper on a 3.5-minute recording, VAD and word timestamps on.

Four timings on the same samples (the real tiny.en, float32, CTranslate2 directory): faster-whisper's
``WhisperModel.transcribe`` and its ``BatchedInferencePipeline`` (batch 8), and turboseq's two pipelines with
the same options. Each engine is timed in a fresh process of its own, the two engines alternating (turboseq,
faster-whisper, turboseq, faster-whisper): in one process, whichever engine runs second is slowed by the first
(faster-whisper's sequential pipeline ran 1.45x slower once turboseq had run in its process; PyTorch's small
operations about 15% slower after CTranslate2). The fastest run of each is reported with the spread. Also
reported: how the sequential segments compare (VAD off, where both engines see the same audio), and the word
error rate of both engines' defaults on the 24 clips.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

OPTIONS = {"vad_filter": True, "word_timestamps": True}
ROUNDS = 2  # processes per engine and pipeline, alternating with the other engine


def _normalize(text: str) -> str:
    text = text.lower().replace("o'clock", "oclock")
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9' ]", " ", text)).strip()


ENGINES = ("turboseq", "faster-whisper-float32")


def engine_compute_type(engine: str) -> str:
    """``turboseq`` and ``faster-whisper`` run float32; ``turboseq-int8``, ``faster-whisper-int8``... that type."""
    name = engine.removeprefix("faster-whisper").removeprefix("turboseq")
    return name[1:] if name.startswith("-") else "float32"


def check_engines(engines) -> tuple[str, str]:
    """(turboseq engine, faster-whisper engine) from ``--engines``: one of each, in any compute type."""
    ts = [e for e in engines if e.startswith("turboseq")]
    fw = [e for e in engines if e.startswith("faster-whisper")]
    if len(ts) != 1 or len(fw) != 1 or len(engines) != 2:
        raise ValueError(
            "whisper-longform compares one turboseq engine with one faster-whisper engine, e.g. "
            "--engines turboseq-bfloat16,faster-whisper-int8"
        )
    return ts[0], fw[0]


def _time_in_process(engine: str, repeats: int) -> dict[str, list[float]]:
    """In a fresh process: one engine's pipelines on the recording (and the 24 clips), a warm-up each, then
    ``repeats`` timed runs; seconds per run by pipeline name."""
    import torch

    from turboseq.bench.speech import ALL_SENTENCES, long_recording, synthesize, whisper_ct2_dir
    from turboseq.formats.audio import load_audio

    cache = Path.home() / ".cache" / "turboseq" / "speech"
    recording = load_audio(long_recording(cache))
    clips = [str(c) for c in synthesize(ALL_SENTENCES, cache)]
    ct2_dir = whisper_ct2_dir()
    if engine.startswith("turboseq"):
        from turboseq.load import load

        model = load(ct2_dir, compute_type=engine_compute_type(engine))
        runs = {
            "sequential": lambda: model.transcribe(recording, **OPTIONS),
            "batched (8)": lambda: model.transcribe(recording, batch_size=8, **OPTIONS),
            "24 files": lambda: model.transcribe(clips),  # their windows decoded together
        }
    else:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        fw = WhisperModel(
            str(ct2_dir), device="cpu", compute_type=engine_compute_type(engine), cpu_threads=torch.get_num_threads()
        )
        pipeline = BatchedInferencePipeline(fw)
        runs = {
            "sequential": lambda: list(fw.transcribe(recording, **OPTIONS)[0]),
            "batched (8)": lambda: list(pipeline.transcribe(recording, batch_size=8, **OPTIONS)[0]),
            "24 files": lambda: [list(fw.transcribe(c)[0]) for c in clips],  # file after file
        }
    times: dict[str, list[float]] = {}
    for name, run in runs.items():
        run()  # warm-up
        times[name] = []
        for _ in range(repeats if name != "24 files" else 1):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def run_longform_bench(repeats: int = 3, out_dir: Path | None = None, log=print, engines=ENGINES) -> dict:
    import jiwer
    import torch
    from faster_whisper import WhisperModel

    from turboseq.bench.speech import ALL_SENTENCES, long_recording, synthesize, whisper_ct2_dir
    from turboseq.formats.audio import load_audio
    from turboseq.load import load

    cache = Path.home() / ".cache" / "turboseq" / "speech"
    recording = load_audio(long_recording(cache))
    clips = [str(c) for c in synthesize(ALL_SENTENCES, cache)]
    ct2_dir = whisper_ct2_dir()
    times: dict[str, list[float]] = {}
    spawn = multiprocessing.get_context("spawn")
    ts_engine, fw_engine = check_engines(engines)
    for _ in range(ROUNDS):
        for engine, label in ((ts_engine, "turboseq"), (fw_engine, "faster-whisper")):
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                measured = pool.submit(_time_in_process, engine, repeats).result()
            for name, runs in measured.items():
                times.setdefault(f"{label} {name}", []).extend(runs)
                log(f"{engine + ' ' + name:28s} {', '.join(f'{t:.2f}' for t in runs)} s")
    seconds = len(recording) / 16000
    best = {name: min(t) for name, t in times.items()}
    lines = [
        f"recording: {seconds:.0f} s (24 sentences in two voices, pauses, a 6 s and a 20 s silence); "
        f"VAD and word timestamps on; {ts_engine} vs {fw_engine}; each engine in {ROUNDS} fresh processes of its own, alternating; "
        f"best of {ROUNDS * repeats} runs (spread)",
        "",
        "| pipeline | faster-whisper | turboseq | turboseq speed-up | turboseq batched vs faster-whisper sequential |",
        "|---|---|---|---|---|",
    ]
    for kind in ("sequential", "batched (8)"):
        fw_t, ts_t = best[f"faster-whisper {kind}"], best[f"turboseq {kind}"]
        spread = {n: max(t) - min(t) for n, t in times.items()}
        cross = best["faster-whisper sequential"] / best["turboseq batched (8)"] if kind == "batched (8)" else None
        lines.append(
            f"| {kind} | {fw_t:.2f} s (±{spread[f'faster-whisper {kind}']:.2f}) | {ts_t:.2f} s "
            f"(±{spread[f'turboseq {kind}']:.2f}) | {fw_t / ts_t:.2f}x | {'-' if cross is None else f'{cross:.2f}x'} |"
        )
    # parity without VAD (both engines see the same audio) and the defaults' word error rate
    model = load(ct2_dir, compute_type=engine_compute_type(ts_engine))
    fw = WhisperModel(
        str(ct2_dir), device="cpu", compute_type=engine_compute_type(fw_engine), cpu_threads=torch.get_num_threads()
    )
    ours = model.transcribe(recording, word_timestamps=True).segments
    theirs = list(fw.transcribe(recording, word_timestamps=True)[0])
    equal = sum((round(a.start, 2), round(a.end, 2), a.text) == (round(b.start, 2), round(b.end, 2), b.text)
                for a, b in zip(ours, theirs))  # fmt: skip
    words_a = [w for s in ours for w in s.words]
    words_b = [w for s in theirs for w in s.words]
    close = sum(a.word == b.word and abs(a.start - b.start) <= 0.1 and abs(a.end - b.end) <= 0.1
                for a, b in zip(words_a, words_b))  # fmt: skip
    # many files with the defaults: turboseq decodes their windows together, faster-whisper one file at a time
    refs = [_normalize(s) for s in ALL_SENTENCES]
    ts_texts = [_normalize(r.text) for r in model.transcribe(clips)]
    fw_texts = [_normalize("".join(s.text for s in fw.transcribe(c)[0])) for c in clips]
    ts_files, fw_files = min(times["turboseq 24 files"]), min(times["faster-whisper 24 files"])
    wer_ts, wer_fw = jiwer.wer(refs, ts_texts), jiwer.wer(refs, fw_texts)
    lines += [
        "",
        f"sequential, VAD off: {equal}/{len(theirs)} segments equal to faster-whisper's (text, start, end); "
        f"{close}/{len(words_b)} words within 0.1 s",
        f"defaults (beam 5, fallback, timestamps) on the 24 clips: WER turboseq {wer_ts:.3f}, "
        f"faster-whisper {wer_fw:.3f}; the 24 files in one call {ts_files:.2f} s, faster-whisper file after "
        f"file {fw_files:.2f} s ({fw_files / ts_files:.2f}x)",
    ]
    table = "\n".join(lines)
    log(table)
    result = {"times": times, "segments_equal": [int(equal), len(theirs)], "words_close": [int(close), len(words_b)],
              "wer": {"turboseq": wer_ts, "faster-whisper": wer_fw},
              "files_seconds": {"turboseq": ts_files, "faster-whisper": fw_files}}  # fmt: skip
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench-whisper-longform.json").write_text(json.dumps(result, indent=2))
        (out_dir / "bench-whisper-longform.md").write_text(table + "\n")
    return result
