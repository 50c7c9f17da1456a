"""``turboseq transcribe --live``: words printed as they are confirmed, from a file played at real-time pace or
from raw PCM16 audio on stdin (a microphone through arecord or ffmpeg)."""

from __future__ import annotations

import sys
from pathlib import Path


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def transcribe_live(args, load) -> int:
    """``transcribe --live``: confirmed words printed as they come, from stdin (raw PCM16) or a file played at
    ``--speed`` times real time. ``load(args, verb)`` loads the model (the CLI's own loader)."""
    import json
    import time

    import numpy as np

    from turboseq.formats.audio import Resampler, load_audio

    if len(args.files) != 1:
        raise ValueError("--live reads one input: a file, or - for raw PCM16 audio on stdin")
    if args.format not in ("text", "json") or args.output_dir or args.batch_size:
        raise ValueError("--live writes text or json lines to stdout (no --output-dir, subtitles or --batch-size)")
    source = args.files[0]
    if source != "-" and not Path(source).is_file():
        raise ValueError(f"{source}: no such file")
    if args.speed < 0:
        raise ValueError(f"--speed must be >= 0, got {args.speed}")
    model = load(args, "transcribe")
    stream = model.live(
        language=args.language, task=args.task, beam_size=args.beam_size,
        temperature=args.temperature if args.temperature is not None else 0.0, initial_prompt=args.initial_prompt,
    )  # fmt: skip

    def show(update) -> None:
        if args.format == "json" and update.confirmed:
            words = [{"word": w.word, "start": round(w.start, 2), "end": round(w.end, 2)} for w in update.confirmed]
            write(json.dumps({"text": update.text, "words": words}, ensure_ascii=False) + "\n")
        elif update.confirmed:
            write(update.text)

    def pieces():
        if source == "-":
            resample = Resampler(args.sample_rate)
            while chunk := sys.stdin.buffer.read(3200):
                yield resample.push(np.frombuffer(chunk[: len(chunk) // 2 * 2], dtype="<i2") / 32768.0)
            return
        samples, start = load_audio(source), time.monotonic()
        for i in range(0, len(samples), 1600):  # 0.1 s pieces, each when it has been "spoken"
            if args.speed > 0:
                time.sleep(max(0.0, (i + 1600) / 16000 / args.speed - (time.monotonic() - start)))
            yield samples[i : i + 1600]

    for piece in pieces():
        stream.append(piece.astype(np.float32))
        if stream.due:
            show(stream.process())
    show(stream.finish())
    if args.format == "text":
        write("\n")
    return 0
