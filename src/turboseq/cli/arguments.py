"""The CLI's argument types (each a one-line error when a value is out of range), the kinds of model each verb
serves, and the option groups several verbs share."""

from __future__ import annotations

import argparse

from turboseq.kinds import ModelKind


def number(text: str, low: float, high: float = float("inf"), low_included: bool = False) -> float:
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


def seconds(text: str) -> float:
    return number(text, 0.0)


def non_negative(text: str) -> float:
    return number(text, 0.0, low_included=True)


def wait_ms(text: str) -> float:
    return number(text, 0.0, 10_000.0, low_included=True)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0-65535, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be >= 0, got {text!r}")
    return values


def optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def yes_no(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
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


def dtype_option(p: argparse.ArgumentParser, exact: str = "token-identical to transformers") -> None:
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


def text_io_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-i", "--input", metavar="FILE", help="input file (default: stdin)")
    p.add_argument("-o", "--output", metavar="FILE", help=f"{what} file (default: stdout)")
    p.add_argument("--truncation", action="store_true", help="cut inputs longer than the model's positions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def check_kind(args, verb: str) -> None:
    """Refuses the wrong kind of model for ``verb``, from its config alone (before any weight is read)."""
    from turboseq.load import inspect

    info = inspect(args.model)
    if info.kind not in VERB_KINDS[verb]:
        others = [f"turboseq {v}" for v, kinds in VERB_KINDS.items() if info.kind in kinds]
        raise ValueError(
            f"{args.model} is {info.describe()}; `turboseq {verb}` does not serve it (its verbs: {', '.join(others)})"
        )
