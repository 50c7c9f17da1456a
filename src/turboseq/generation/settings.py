"""Generation settings: the one place where defaults are applied and arguments are checked.

Names and meanings follow transformers' ``GenerationConfig``. Precedence: call arguments, then the model's
generation_config.json (or the generation keys of a legacy config.json), then transformers' global defaults
-- except the length limit: where neither the call nor the model sets one, turboseq allows up to the
model's position limit instead of cutting at 20 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

# transformers' defaults for fields neither the model nor the call sets
_DEFAULTS = {
    "max_length": None,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "num_beams": 1,
    "num_return_sequences": 1,
    "length_penalty": 1.0,
    "early_stopping": False,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "renormalize_logits": False,
    "eos_token_id": None,
    "pad_token_id": None,
    "decoder_start_token_id": None,
    "stop_strings": None,
}

# accepted and ignored: they only shape transformers' return objects or its cache, or do nothing in turboseq
_IGNORED = {
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
    "bos_token_id",
    "transformers_version",
    "_from_model_config",
    "is_assistant",
    "trust_remote_code",
}


@dataclass(frozen=True)
class GenerationSettings:
    """Generation arguments resolved once (``resolve``): frozen; a per-call variant is ``dataclasses.replace``."""

    max_length: int  # total decoder length including the decoder prompt (start token)
    min_length: int
    min_new_tokens: int | None
    num_beams: int
    num_return_sequences: int
    length_penalty: float
    early_stopping: bool | str
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    bad_words_ids: list[list[int]] | None
    forced_bos_token_id: int | None
    forced_eos_token_id: int | None
    renormalize_logits: bool
    eos_token_ids: list[int]
    pad_token_id: int
    decoder_start_token_id: int
    prompt_length: int = 1
    max_new_tokens: int | None = None  # where it set max_length: a longer prompt moves max_length with it
    stop_strings: list[str] | None = None  # text that ends a sequence (decoder-only models, needs a tokenizer)
    decoder_prompt: list[int] | None = None  # the whole decoder prompt where it is more than the start token
    # a family's own logits rules (Whisper's token suppression and timestamp rules): applied after the generic
    # processors and before the sampling warpers, where transformers merges custom processors
    rules: list = field(default_factory=list)

    @property
    def is_beam(self) -> bool:
        return self.num_beams > 1

    @property
    def beam_fill_token_id(self) -> int:
        """What transformers' beam search writes after a hypothesis ends: pad, or EOS where pad is id 0."""
        return self.pad_token_id if self.pad_token_id else (self.eos_token_ids[0] if self.eos_token_ids else -1)

    @property
    def output_fill_token_id(self) -> int:
        """What pads ``generate``'s output rows to the longest, as transformers does for these settings."""
        return self.beam_fill_token_id if self.is_beam else self.pad_token_id


_INT_LIMIT = 2**31 - 1  # beyond it torch's index arithmetic fails anyway


def _as_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    if value > _INT_LIMIT:
        raise ValueError(f"`{name}` must be <= {_INT_LIMIT}, got {value}")
    return value


MAX_LENGTH_PENALTY = 100.0


def _as_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    return number


def _token_ids(name: str, value, vocab_size: int | None, many: bool = False) -> list[int]:
    """A token id (or, with ``many``, an id or a list of ids) inside the vocabulary."""
    ids = value if many and isinstance(value, list) else [value]
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0 or (vocab_size is not None and t >= vocab_size):
            vocab = f" [0, {vocab_size})" if vocab_size is not None else ""
            raise ValueError(
                f"`{name}` must be {'token ids' if many else 'a token id'} in the vocabulary{vocab}, got {value!r}"
            )
    return ids


def check_seed(seed) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"`seed` must be an integer in [0, 2**63), got {seed!r}")


def resolve(
    model_defaults: dict,
    kwargs: dict,
    *,
    max_positions: int,
    prompt_length: int = 1,
    vocab_size: int | None = None,
) -> GenerationSettings:
    """Merge call arguments over the model's defaults, validate, and return settings for one call."""
    unknown = sorted(k for k in kwargs if k not in _DEFAULTS and k not in _IGNORED)
    if unknown:
        raise ValueError(
            f"unknown generation argument(s): {', '.join(unknown)}; supported: {', '.join(sorted(_DEFAULTS))}"
        )
    merged = dict(_DEFAULTS)
    merged.update({k: v for k, v in model_defaults.items() if k in _DEFAULTS and v is not None})
    merged.update({k: v for k, v in kwargs.items() if k in _DEFAULTS and v is not None})
    search = _search_settings(merged)
    lengths = _length_settings(merged, kwargs, max_positions, prompt_length)
    tokens = _token_settings(merged, vocab_size, search["num_beams"])
    return GenerationSettings(
        **search,
        **lengths,
        **tokens,
        forced_bos_token_id=merged["forced_bos_token_id"],
        forced_eos_token_id=merged["forced_eos_token_id"],
        renormalize_logits=bool(merged["renormalize_logits"]),
        decoder_start_token_id=merged["decoder_start_token_id"],
        prompt_length=prompt_length,
    )


def _search_settings(merged: dict) -> dict:
    """Beams, sequences, sampling and the penalties, checked."""
    num_beams = _as_int("num_beams", merged["num_beams"], 1)
    nrs = _as_int("num_return_sequences", merged["num_return_sequences"], 1)
    for flag in ("do_sample", "renormalize_logits"):
        if not isinstance(merged[flag], bool):
            raise ValueError(f"`{flag}` must be true or false, got {merged[flag]!r}")
    do_sample = merged["do_sample"]
    if not do_sample and nrs > num_beams:
        raise ValueError(f"`num_return_sequences` ({nrs}) must be <= `num_beams` ({num_beams}) unless `do_sample=True`")
    temperature = _as_float("temperature", merged["temperature"])
    if do_sample and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0 when sampling, got {temperature}")
    top_p = _as_float("top_p", merged["top_p"])
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1], got {top_p}")
    top_k = _as_int("top_k", merged["top_k"], 0)
    repetition_penalty = _as_float("repetition_penalty", merged["repetition_penalty"])
    if repetition_penalty <= 0:
        raise ValueError(f"`repetition_penalty` must be > 0, got {repetition_penalty}")
    length_penalty = _as_float("length_penalty", merged["length_penalty"])
    if abs(length_penalty) > MAX_LENGTH_PENALTY:  # length ** penalty must stay a finite, non-zero float
        raise ValueError(
            f"`length_penalty` must be in [-{MAX_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}], got {length_penalty!r}"
        )
    early_stopping = merged["early_stopping"]
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"`early_stopping` must be True, False or 'never', got {early_stopping!r}")
    no_repeat = _as_int("no_repeat_ngram_size", merged["no_repeat_ngram_size"], 0)
    return dict(
        num_beams=num_beams,
        num_return_sequences=nrs,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat,
    )


def _length_settings(merged: dict, kwargs: dict, position_limit: int, prompt_length: int) -> dict:
    """Lengths count the decoder prompt, as in transformers; max_new_tokens wins over max_length, and the
    call's arguments over the model's defaults."""
    max_new = None
    if kwargs.get("max_new_tokens") is not None:
        max_new = _as_int("max_new_tokens", kwargs["max_new_tokens"], 1)
        max_length = prompt_length + max_new
    elif kwargs.get("max_length") is not None:
        max_length = _as_int("max_length", kwargs["max_length"], 0)
    elif merged["max_new_tokens"] is not None:
        max_new = _as_int("max_new_tokens", merged["max_new_tokens"], 1)
        max_length = prompt_length + max_new
    elif merged["max_length"] is not None:
        max_length = _as_int("max_length", merged["max_length"], 0)
    else:
        max_length = position_limit
    if max_length <= prompt_length:
        raise ValueError(
            f"`max_length` {max_length} leaves no room for a new token after the decoder prompt "
            f"({prompt_length} token{'s' if prompt_length > 1 else ''})"
        )
    if max_length > position_limit:
        if not prompt_length:  # decoder-only: lengths are checked again with each batch's prompts
            raise ValueError(f"{max_length} new tokens exceed the model's {position_limit} positions")
        raise ValueError(
            f"`max_length` {max_length} (decoder prompt included) exceeds the model's {position_limit} positions"
        )
    min_length = _as_int("min_length", merged["min_length"], 0)
    min_new = merged["min_new_tokens"]
    if min_new is not None:
        min_new = _as_int("min_new_tokens", min_new, 0)
    return dict(max_length=max_length, min_length=min_length, min_new_tokens=min_new, max_new_tokens=max_new)


def _token_settings(merged: dict, vocab_size: int | None, num_beams: int) -> dict:
    """EOS, padding, the forced and banned tokens, and stop strings, checked against the vocabulary."""
    eos = merged["eos_token_id"]
    eos_ids = [] if eos is None else _token_ids("eos_token_id", eos, vocab_size, many=True)
    for key in ("pad_token_id", "decoder_start_token_id", "forced_bos_token_id"):
        if merged[key] is not None:
            _token_ids(key, merged[key], vocab_size)
    if merged["forced_eos_token_id"] is not None:
        _token_ids("forced_eos_token_id", merged["forced_eos_token_id"], vocab_size, many=True)
    pad = merged["pad_token_id"]
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    bad = merged["bad_words_ids"]
    if bad is not None:
        if not isinstance(bad, list) or not all(isinstance(w, list) and w for w in bad):
            raise ValueError(f"`bad_words_ids` must be a non-empty list of non-empty lists, got {bad!r}")
        for word in bad:
            _token_ids("bad_words_ids", word, vocab_size, many=True)
        bad = [w for w in bad if not (len(w) == 1 and w[0] in eos_ids)]  # EOS is never banned
    stops = merged["stop_strings"]
    if stops is not None:
        stops = [stops] if isinstance(stops, str) else stops
        if not isinstance(stops, list) or not stops or not all(isinstance(t, str) and t for t in stops):
            raise ValueError(
                f"`stop_strings` must be a non-empty string or list of them, got {merged['stop_strings']!r}"
            )
        if num_beams > 1:
            raise ValueError("`stop_strings` works with num_beams=1 (greedy or sampling)")
    return dict(eos_token_ids=eos_ids, pad_token_id=pad, bad_words_ids=bad or None, stop_strings=stops)


def for_prompt(s: GenerationSettings, width: int, max_positions: int) -> GenerationSettings:
    """The settings of a decoder-only batch whose (padded) prompts are ``width`` tokens: lengths count the
    prompt, as transformers counts them for ``*ForCausalLM.generate``."""
    max_length = width + s.max_new_tokens if s.max_new_tokens is not None else s.max_length
    if max_length > max_positions:
        raise ValueError(
            f"a prompt of {width} tokens plus {max_length - width} new tokens exceeds the model's "
            f"{max_positions} positions"
        )
    if max_length <= width:
        raise ValueError(f"`max_length` {max_length} leaves no room for a new token after a prompt of {width} tokens")
    return replace(s, max_length=max_length, prompt_length=width)


def generation_defaults(generation_config: dict | None, config: dict) -> dict:
    """The model's own defaults: generation_config.json, else the generation keys of config.json."""
    source = generation_config if generation_config is not None else config
    out = {k: source[k] for k in _DEFAULTS if k in source and source[k] is not None}
    for key in ("eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if key not in out and config.get(key) is not None:
            out[key] = config[key]
    return out
