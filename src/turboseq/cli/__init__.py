"""Command line: ``turboseq translate | generate | transcribe | embed | export | convert | serve | batch | bench``.

The parser (verbs, options) is ``cli.parser``; here each verb loads its model and runs."""

from __future__ import annotations

import sys
from pathlib import Path

from turboseq.cli.arguments import CAUSAL_NEW_TOKENS, VERB_KINDS, check_kind
from turboseq.cli.parser import build_parser
from turboseq.cli.serve import serve_verb
from turboseq.errors import MissingExtra

__all__ = ["main", "build_parser", "VERB_KINDS"]


def _load(args, verb: str):
    """The model at ``--model``, once its kind is checked for ``verb``."""
    from turboseq.load import load

    check_kind(args, verb)
    return load(
        args.model,
        dtype=getattr(args, "dtype", None),
        compute_type=getattr(args, "compute_type", None),
        trust_compiled_code=getattr(args, "trust_compiled_code", False),
    )


def _read_text(path: str | None) -> str:
    """``path`` (or stdin) as UTF-8 text."""
    data = Path(path).read_bytes() if path else sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path or 'stdin'}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_lines(path: str | None) -> list[str]:
    """The lines of ``path`` (or stdin), as UTF-8 text."""
    return _read_text(path).splitlines()


def _write(path: str | Path | None, text: str) -> None:
    """``text`` to the file ``path``, or to stdout."""
    if path:
        Path(path).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _translate(args) -> int:
    from turboseq.models.causal import CausalLM

    glossary = _read_glossary(args.glossary) if getattr(args, "glossary", None) else None  # before the load
    model = _load(args, args.verb)
    document = getattr(args, "format", "lines") != "lines"
    lines = [_read_text(args.input)] if document else _read_lines(args.input)
    kwargs = {}
    names = ["num_beams", "max_new_tokens", "no_repeat_ngram_size"]
    if args.verb == "generate":
        names += ["temperature", "top_k", "top_p", "repetition_penalty", "seed"]
        kwargs["do_sample"] = args.do_sample or None
        unused = [f"--{n.replace('_', '-')}" for n in ("temperature", "top_k", "top_p") if getattr(args, n) is not None]
        if unused and not args.do_sample:  # transformers warns too: they shape sampling only
            print(f"turboseq: warning: {', '.join(unused)} ha{'ve' if len(unused) > 1 else 's'} no effect without "
                  "--do-sample", file=sys.stderr)  # fmt: skip
        if args.stop:
            kwargs["stop_strings"] = args.stop
    for name in names:
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if isinstance(model, CausalLM) and "max_new_tokens" not in kwargs:
        kwargs["max_new_tokens"] = CAUSAL_NEW_TOKENS
    run = model.translate if args.verb == "translate" else model.generate_text
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if document:
        kwargs.update(format=args.format, source_language=args.source_language)
    if glossary or getattr(args, "keep_spans", False):
        kwargs.update(glossary=glossary, keep_spans=args.keep_spans)
    outputs = run(
        lines,
        max_batch_tokens=args.max_batch_tokens,
        truncation=args.truncation,
        progress=bool(args.input) and not args.no_progress,
        **kwargs,
    )
    if document:
        _write(args.output, outputs[0])
    else:
        _write(args.output, "".join(out.replace("\n", " ") + "\n" for out in outputs))
    return 0


def _read_glossary(path: str) -> dict[str, str]:
    """A glossary file: a JSON object of source terms to target terms, or lines ``source<TAB>target``."""
    import json

    text = _read_text(path).removeprefix("\ufeff")
    if text.lstrip().startswith("{"):
        try:
            glossary = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{path}: not a JSON object of terms ({err})") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in glossary.items()):
            raise ValueError(f"{path}: a glossary maps source terms to target terms (strings)")
        return glossary
    glossary = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (line.lstrip().startswith("#") and "\t" not in line):  # a comment
            continue
        source, tab, target = line.partition("\t")
        if not tab or not source.strip() or not target.strip():
            raise ValueError(f"{path}:{n}: a glossary line is a source term, a tab and its target term")
        glossary[source.strip()] = target.strip()
    return glossary


def _transcribe(args) -> int:
    import json

    from turboseq.speech.transcript import to_srt, to_vtt

    if args.live:
        from turboseq.cli.live import transcribe_live

        return transcribe_live(args, _load)
    if "-" in args.files:
        raise ValueError("stdin (-) is read with --live only; give audio files")
    if args.format in ("srt", "vtt") and len(args.files) > 1 and not args.output_dir:
        raise ValueError(f"--format {args.format} with several files needs --output-dir (one subtitle file each)")
    for file in args.files:  # fail before the model loads
        if Path(file).is_dir():
            raise ValueError(f"{file}: is a directory, not an audio file")
        if not Path(file).is_file():
            raise ValueError(f"{file}: no such file")
    model = _load(args, "transcribe")
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(
        language=args.language,
        task=args.task,
        beam_size=args.beam_size,
        best_of=args.best_of,
        temperature=args.temperature if args.temperature is not None else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        compression_ratio_threshold=args.compression_ratio_threshold,
        log_prob_threshold=args.log_prob_threshold,
        no_speech_threshold=args.no_speech_threshold,
        condition_on_previous_text=args.condition_on_previous_text,
        initial_prompt=args.initial_prompt,
        prefix=args.prefix,
        hotwords=args.hotwords,
        without_timestamps=args.without_timestamps,
        word_timestamps=args.word_timestamps or args.word_level,
        vad_filter=args.vad_filter,
        vad_parameters=args.vad_parameters,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        hallucination_silence_threshold=args.hallucination_silence_threshold,
        progress=not args.no_progress,
    )
    # several files share decoding batches: up to 16 at a time, written in order
    for first in range(0, len(args.files), 16):
        files = args.files[first : first + 16]
        for file, result in zip(files, model.transcribe(files, **options)):
            if args.format == "text":
                text = result.text + "\n"
            elif args.format == "json":
                text = json.dumps({"file": file, **result.to_dict()}, ensure_ascii=False) + "\n"
            else:
                text = (to_srt if args.format == "srt" else to_vtt)(result, words=args.word_level)
            suffix = "txt" if args.format == "text" else args.format
            _write(out_dir / f"{Path(file).stem}.{suffix}" if out_dir is not None else None, text)
    return 0


def _embed(args) -> int:
    import json

    model = _load(args, "embed")
    lines = _read_lines(args.input)
    kwargs = dict(batch_size=args.batch_size, truncation=args.truncation)
    from turboseq.models.encoder import EncoderModel

    if isinstance(model, EncoderModel):
        kwargs.update(
            normalize=None if args.normalize is None else args.normalize == "yes",
            progress=bool(args.input) and not args.no_progress,
        )
    elif args.normalize is not None:
        raise ValueError(f"{args.model}: --normalize does not apply to an export (normalized as exported)")
    vectors = model.embed(lines, **kwargs)
    _write(args.output, "".join(json.dumps([round(v, 7) for v in row]) + "\n" for row in vectors.tolist()))
    return 0


def _export(args) -> int:
    from turboseq.export.encoder import export_encoder
    from turboseq.export.writer import export_generation
    from turboseq.models.encoder import EncoderModel

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"{out}: is a directory; --out takes the path of the .pt2 file to write")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such directory (for --out {out})")
    model = _load(args, "export")
    if isinstance(model, EncoderModel):
        out = export_encoder(model, args.out, compile=args.compile)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
        return 0
    info = export_generation(model, args.out, compile=args.compile, log=lambda line: print(line, file=sys.stderr))
    compiled = f"; compiling took {info['compile_seconds']:.0f} s" if args.compile else ""
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB{compiled})", file=sys.stderr)
    return 0


def _convert(args) -> int:
    from turboseq.load import convert

    out = convert(args.model, args.out, args.compute_type, log=lambda line: print(line, file=sys.stderr))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({args.compute_type}, {size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def _batch(args) -> int:
    import json

    from turboseq.batch import run_job

    check_kind(args, "batch")
    options = {}
    if args.parameters:
        try:
            options = json.loads(args.parameters)
        except ValueError as err:
            raise ValueError(f"--parameters: not JSON ({err})") from None
        if not isinstance(options, dict):
            raise ValueError("--parameters: expected a JSON object of option names and values")
    for name in ("num_beams", "max_new_tokens"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.compute_type or args.dtype:
        options["compute_type"] = args.compute_type or args.dtype
    if not args.ray and (args.ray_address or args.concurrency != 1 or args.num_cpus is not None):
        raise ValueError("--ray-address, --concurrency and --num-cpus need --ray")
    result = run_job(
        args.model,
        args.input,
        args.output,
        column=args.column,
        output_column=args.output_column,
        task=args.task,
        use_ray=args.ray,
        ray_address=args.ray_address,
        concurrency=args.concurrency,
        num_cpus=args.num_cpus,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        progress=not args.no_progress,
        **options,
    )
    print(result.summary(), file=sys.stderr)
    return 0


def _engines(args, available: list[str], on_request: tuple[str, ...] = ()) -> list[str]:
    """The engines ``--engines`` names (all available ones by default; ``on_request`` ones only by name)."""
    if not args.engines:
        return available
    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    known = [*available, *on_request]
    missing = [e for e in wanted if e not in known]
    if missing:
        raise ValueError(f"engine(s) not available: {', '.join(missing)}; available: {', '.join(known)}")
    return wanted


def _bench(args) -> int:
    from turboseq.bench import CAUSAL_ARCHS, ENCODER_ARCHS, SPEECH_ARCHS

    if args.quality:
        import json

        from turboseq.bench.quality import run_quality
        from turboseq.runtime.compute import supported_compute_types

        results = run_quality(supported_compute_types())
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "quality.json").write_text(json.dumps(results, indent=2))
        return 0
    if args.arch in CAUSAL_ARCHS:
        from turboseq.bench.causal import available_engines as causal_engines
        from turboseq.bench.causal import run_causal_bench

        run_causal_bench(
            args.arch,
            batches=args.batches or [1, 16],
            prompts=args.prompts,
            engines=_engines(args, causal_engines()),
            new_tokens=args.new_tokens or 64,
            min_seconds=args.min_seconds,
            out_dir=Path(args.out),
            rounds=args.rounds,
        )
        return 0
    args.batches = args.batches or [1, 16, 64]
    args.new_tokens = args.new_tokens or 32
    if args.arch == "whisper-live":
        from turboseq.bench.live import run_live_bench

        run_live_bench(out_dir=Path(args.out), runs=args.rounds)
        return 0
    if args.arch == "whisper-longform":
        from turboseq.bench.longform import ENGINES, check_engines, run_longform_bench

        engines = tuple(e.strip() for e in args.engines.split(",")) if args.engines else ENGINES
        check_engines(engines)
        run_longform_bench(out_dir=Path(args.out), engines=engines)
        return 0
    if args.arch in SPEECH_ARCHS:
        from turboseq.bench.speech import available_speech_engines, run_speech_bench, run_speech_rounds

        engines = _engines(args, available_speech_engines())
        if args.rounds > 1:
            run_speech_rounds(engines, args.rounds, Path(args.out))
        else:
            run_speech_bench(out_dir=Path(args.out), engines=engines)
        return 0
    if args.arch in ENCODER_ARCHS:
        from turboseq.bench.encoder import run_encoder_bench

        run_encoder_bench(
            args.arch,
            batch=max(args.batches),
            min_seconds=args.min_seconds,
            out_dir=Path(args.out),
            profile=args.profile,
        )
        return 0
    from turboseq.bench.seq2seq import ARTIFACT_ENGINES, MODES, available_engines, run_bench, run_bench_rounds

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {', '.join(bad)}; available: {', '.join(MODES)}")
    engines = _engines(args, available_engines(), ARTIFACT_ENGINES)
    options = dict(arch=args.arch, batches=args.batches, modes=modes, engines=engines, new_tokens=args.new_tokens)
    if args.rounds > 1 and not args.profile:
        run_bench_rounds(**options, min_seconds=args.min_seconds, rounds=args.rounds, out_dir=Path(args.out))
    else:
        run_bench(**options, min_seconds=args.min_seconds, out_dir=Path(args.out), profile=args.profile)
    return 0


VERBS = {
    "translate": _translate,
    "generate": _translate,
    "transcribe": _transcribe,
    "embed": _embed,
    "export": _export,
    "convert": _convert,
    "serve": serve_verb,
    "batch": _batch,
    "bench": _bench,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the verb, whose options the user was writing
        parser.verb_parsers[args.verb].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return VERBS[args.verb](args)
    except (ValueError, OSError, MissingExtra) as err:  # ModelLoadError, AudioError, InputTooLong are ValueErrors
        message = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.filename else str(err)
        print(f"turboseq: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("turboseq: interrupted", file=sys.stderr)
        return 130
