"""One decoding pass of Whisper over a batch of 30 s windows, as faster-whisper's ``generate_with_fallback``
runs it: the options (``Options``), the decoder prompt, the logits rules, and per window its tokens, average
log-probability and no-speech probability; temperature fallback over the windows whose output fails the
compression-ratio or log-probability test."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from turboseq.generation.listeners import BeamSums, SampledSums
from turboseq.generation.processors import SuppressTokens, TimestampRules
from turboseq.generation.runner import run_search
from turboseq.generation.settings import MAX_LENGTH_PENALTY, resolve
from turboseq.models.engine import EagerDecoder

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_TEMPERATURES = 32  # fallback attempts per window: each may decode the whole window again


@dataclass
class Options:
    """faster-whisper's ``TranscriptionOptions`` (same names and defaults as ``WhisperModel.transcribe``)."""

    beam_size: int = 5
    best_of: int = 5
    patience: float = 1.0
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    prompt_reset_on_temperature: float = 0.5
    initial_prompt: str | list[int] | None = None
    prefix: str | None = None
    suppress_blank: bool = True
    suppress_tokens: list[int] | None = field(default_factory=lambda: [-1])
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    word_timestamps: bool = False
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"
    max_new_tokens: int | None = None
    hallucination_silence_threshold: float | None = None
    hotwords: str | None = None

    def check(self, vocab_size: int) -> None:
        """Every option's type and range, refused in one line before any audio is decoded."""
        for name in ("beam_size", "best_of"):
            _integer(name, getattr(self, name), 1)
        _integer("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        if self.max_new_tokens is not None:
            _integer("max_new_tokens", self.max_new_tokens, 1)
        if self.patience != 1:
            raise ValueError("`patience` other than 1 is not supported (turboseq's beam search is transformers')")
        temps = self.temperatures
        if not temps or not all(_finite(t) and t >= 0 for t in temps):
            shown = list(temps) if len(temps) <= 8 else f"a list of {len(temps)}"
            raise ValueError(f"`temperature` must be a number >= 0 or a list of them, got {shown!r}")
        if len(temps) > MAX_TEMPERATURES:
            raise ValueError(f"`temperature` lists at most {MAX_TEMPERATURES} fallback temperatures, got {len(temps)}")
        if not _finite(self.prompt_reset_on_temperature):
            raise ValueError(
                f"`prompt_reset_on_temperature` must be a finite number, got {self.prompt_reset_on_temperature!r}"
            )
        if not _finite(self.length_penalty) or abs(self.length_penalty) > MAX_LENGTH_PENALTY:
            raise ValueError(
                f"`length_penalty` must be a finite number in [-{MAX_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}], "
                f"got {self.length_penalty!r}"
            )
        for name in ("repetition_penalty", "max_initial_timestamp"):
            value = getattr(self, name)
            if not _finite(value) or value < (1e-9 if name == "repetition_penalty" else 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
        for name in ("compression_ratio_threshold", "log_prob_threshold", "no_speech_threshold",
                     "hallucination_silence_threshold"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not _finite(value):
                raise ValueError(f"`{name}` must be a finite number or None, got {value!r}")
        for name in ("condition_on_previous_text", "suppress_blank", "without_timestamps", "word_timestamps"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be true or false, got {getattr(self, name)!r}")
        for name in ("prefix", "hotwords", "prepend_punctuations", "append_punctuations"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` must be a string, got {value!r}")
        prompt = self.initial_prompt
        if prompt is not None and not isinstance(prompt, str) and not _token_ids(prompt, vocab_size):
            raise ValueError(f"`initial_prompt` must be a string or a list of token ids, got {prompt!r}")
        suppress = self.suppress_tokens
        if suppress is not None and not _token_ids(suppress, vocab_size, allow=(-1,)):
            raise ValueError(f"`suppress_tokens` must be a list of token ids (or -1), got {suppress!r}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(name: str, value, lowest: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
        kind = "a positive integer" if lowest == 1 else f"an integer >= {lowest}"
        raise ValueError(f"`{name}` must be {kind}, got {value!r}")


def _token_ids(value, vocab_size: int, allow=()) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) and (0 <= t < vocab_size or t in allow) for t in value
    )


@dataclass
class Decoded:
    tokens: list[int]  # generated, EOS left out
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def window_prompt(text, sot_sequence: list[int], previous: list[int], opts: Options, prefix: str | list[int] | None,
                  max_length: int) -> list[int]:  # fmt: skip
    """The decoder prompt: ``<|startofprev|>`` hotwords and the previous text, the start sequence, then
    ``<|notimestamps|>`` or a prefix (faster-whisper's ``get_prompt``). A prefix given as tokens is taken as
    it is (its timestamp included)."""
    start = list(sot_sequence)
    if opts.without_timestamps:
        start.append(text.no_timestamps)
    if isinstance(prefix, list):
        start += prefix[: max_length // 2 - 1]
    elif prefix:
        if not opts.without_timestamps:
            start.append(text.timestamp_begin)
        start += text.encode(" " + prefix.strip())[: max_length // 2 - 1]
    hotwords = opts.hotwords if opts.hotwords and (isinstance(prefix, list) or not prefix) else None
    context = text.encode(" " + hotwords.strip())[: max_length // 2 - 1] if hotwords else []
    if previous:
        context += previous[-(max_length // 2 - 1) :]
    # a long prefix and a long previous text (or hotwords) can fill the positions together: the oldest context
    # gives way so that one new token fits (faster-whisper's prompt where it fits)
    room = max_length - 2 - len(start)
    context = context[len(context) - max(room, 0) :] if len(context) > room else context
    return ([text.sot_prev] + context if context else []) + start


def _allowance(model, prompt: list[int], opts: Options, padded: bool = False) -> int:
    """The new tokens a window with ``prompt`` may decode: CTranslate2's Whisper budget, decoding from the last
    start token at most half the length (openai/whisper's sample_len, 224) or what is left of it; ``padded``
    (live streams, no parity to keep): ``max_new_tokens`` as far as the positions go, one budget for every row
    whatever its prompt."""
    limit = model.spec.max_positions
    if padded:
        return max(1, min(opts.max_new_tokens or limit, limit - len(prompt)))
    total = limit
    if opts.max_new_tokens is not None:
        total = len(prompt) + opts.max_new_tokens
        if total > limit:
            raise ValueError(
                f"the prompt ({len(prompt)} tokens) and `max_new_tokens` ({opts.max_new_tokens}) exceed the "
                f"model's {limit} positions"
            )
    start = _output_start(model.whisper_text, prompt)
    budget = min(limit, start + min(total // 2, total - (start - 1)))
    # a prefix that fills that budget (over ~222 tokens) still gets one new token, not an error
    return min(limit, max(budget, len(prompt) + 1)) - len(prompt)


def _settings(model, prompts: list[list[int]], opts: Options, temperature: float, max_initial_index: int,
              allowance: int):  # fmt: skip
    """Search settings for ``prompts`` decoded together, left-padded to the longest (their layouts may differ:
    previous text and a prefix of other lengths), each allowed ``allowance`` new tokens."""
    width = max(len(p) for p in prompts)
    prompt = _padded(model.whisper_text, prompts[0], width)
    gen = {"length_penalty": opts.length_penalty, "repetition_penalty": opts.repetition_penalty,
           "no_repeat_ngram_size": opts.no_repeat_ngram_size, "early_stopping": True,
           "renormalize_logits": True}  # fmt: skip
    if temperature > 0:  # best_of samples from the whole distribution
        gen.update(do_sample=True, temperature=temperature, top_k=0, num_return_sequences=opts.best_of)
    else:
        gen.update(num_beams=opts.beam_size)
    # the longest prompt has no padding: its positions end at max_length, within its own budget
    gen["max_length"] = width + allowance
    s = resolve(model.generation_defaults, gen, max_positions=model.spec.max_positions, prompt_length=len(prompt),
                vocab_size=model.spec.vocab_size)  # fmt: skip
    text = model.whisper_text
    rules: list = []
    if opts.suppress_blank:
        rules.append(SuppressTokens(text.encode(" ") + [text.eot], at_length=len(prompt)))
    if opts.suppress_tokens:
        rules.append(SuppressTokens(text.suppress_tokens(opts.suppress_tokens)))
    if not opts.without_timestamps:  # a row after a prefix need not begin with a timestamp (decided per row)
        rules.append(TimestampRules(text.no_timestamps, text.eot, len(prompt), max_initial_index, None))
    return replace(s, decoder_prompt=prompt, rules=rules)


def _padded(text, prompt: list[int], width: int) -> list[int]:
    """``prompt`` left-padded to ``width`` tokens (with EOS, masked: no rule reads a prompt's text, and the
    timestamp rules read only its last token)."""
    return [text.eot] * (width - len(prompt)) + prompt


def _output_start(text, prompt: list[int]) -> int:
    """Where the output begins: after the start sequence (and ``<|notimestamps|>``); a prefix is output."""
    keep = prompt.index(text.sot) + 1
    while keep < len(prompt) and text.sot < prompt[keep] < text.timestamp_begin:
        keep += 1
    return keep


class _NoSpeechProbe:
    """A decoder (``generation.runner``) that keeps the hidden state at the start token of its first step: the
    eager runtime returns every position at once (an export's programs only the last: ``at_start`` stays
    empty)."""

    def __init__(self, decoder, index: list[int]):
        self.decoder, self.index = decoder, index  # per window: where its start token is
        self.at_start: Tensor | None = None
        self.select = decoder.select
        self.prompt_share = getattr(decoder, "prompt_share", 1)
        if self.prompt_share > 1:
            self.narrow, self.widen = decoder.narrow, decoder.widen

    def step(self, tokens: Tensor) -> Tensor:
        if self.at_start is None:
            if isinstance(self.decoder, EagerDecoder):
                every = self.decoder.step(tokens, all_positions=True)
                per_window = every.shape[0] // len(self.index)  # a window's rows are consecutive
                index = torch.tensor(self.index, device=every.device).repeat_interleave(per_window)
                self.at_start = every[torch.arange(every.shape[0], device=every.device), index]
                return every[:, -1]
            self.at_start = torch.empty(0)
        return self.decoder.step(tokens)


def take_rows(cross_kv: list[tuple[Tensor, Tensor]] | None, rows: list[int], total: int):
    """The cross-attention K/V (``model.cross_kv``) of windows ``rows`` out of ``total``."""
    if cross_kv is None or rows == list(range(total)):
        return cross_kv
    index = torch.tensor(rows, dtype=torch.long, device=cross_kv[0][0].device)
    return [(k.index_select(0, index), v.index_select(0, index)) for k, v in cross_kv]


def decode(model, hidden: Tensor, prompts: list[list[int]], opts: Options, temperature: float,
           max_initial_index: int, hooks=None, cross_kv=None, pad: bool = False) -> list[tuple[list[int], float, float]]:  # fmt: skip
    """Decode windows ``hidden`` [windows, positions, d_model] at one temperature; per window (tokens, sum of
    log-probabilities with EOS, no-speech probability). Windows are batched by prompt length and the new tokens
    they may decode; with ``pad`` prompts of any length go together, left-padded, each allowed
    ``max_new_tokens`` (where the backend can, and no rule reads the prompt's text: live transcription's
    streams). ``hooks`` (``RowHooks`` over the windows)
    let abandoned windows leave the batch. ``cross_kv``: the windows' cross-attention K/V (``model.cross_kv``),
    built here where None."""
    out: list = [None] * len(prompts)
    pad = pad and getattr(model.backend, "pads_prompts", False)
    pad = pad and opts.repetition_penalty == 1 and not opts.no_repeat_ngram_size
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((0 if pad else len(p), _allowance(model, p, opts, pad)), []).append(i)
    for (_, allowance), rows in sorted(groups.items()):
        s = _settings(model, [prompts[i] for i in rows], opts, temperature, max_initial_index, allowance)
        h = hidden.index_select(0, torch.tensor(rows, dtype=torch.long, device=hidden.device))
        row_hooks = None if hooks is None else hooks.select(rows)
        decoded = _decode_alike(model, h, [prompts[i] for i in rows], s, row_hooks,
                                take_rows(cross_kv, rows, len(prompts)))  # fmt: skip
        for i, result in zip(rows, decoded):
            out[i] = result
    return out


def _decode_alike(model, hidden: Tensor, prompts: list[list[int]], s, hooks, cross_kv) -> list:
    """``decode`` for windows decoded together, their prompts left-padded to the longest (the start sequence
    may sit at other places in them: previous text and a prefix of other lengths)."""
    text = model.whisper_text
    width = max(len(p) for p in prompts)
    padding = torch.tensor([width - len(p) for p in prompts], dtype=torch.long, device=model.device)
    padding = padding if bool(padding.any()) else None
    prompts = [_padded(text, p, width) for p in prompts]
    prompt = torch.tensor(prompts, dtype=torch.long, device=model.device)
    sot_index = [p.index(text.sot) for p in prompts]
    probes: list[_NoSpeechProbe] = []

    def make_decoder(fanout, expand):
        decoder = model.decoder_state(hidden, None, fanout.group, s.max_length, expand, cross_kv, padding)
        probes.append(_NoSpeechProbe(decoder, sot_index))
        return probes[-1]

    sums = BeamSums() if s.is_beam else SampledSums()
    seqs = run_search(make_decoder, model.head, prompt, s, model.spec.vocab_size, hooks=hooks, listeners=[sums])
    if s.is_beam:
        picked = [(seqs[j][0], sums.sums[j][0]) for j in range(len(prompts))]
    else:
        c = s.num_return_sequences
        picked = [_best_sample(seqs[j], sums.totals[j * c : (j + 1) * c], s, width) for j in range(len(prompts))]
    no_speech = _no_speech(model, probes[0], hidden, prompt, sot_index)
    out = []
    for (seq, total), p_no_speech, row in zip(picked, no_speech, prompts):
        tokens = seq[_output_start(text, row) :].tolist()  # a prefix is part of the output, as in CTranslate2
        if tokens and tokens[-1] == text.eot:
            tokens = tokens[:-1]
        out.append((tokens, float(total), p_no_speech))
    return out


def _best_sample(seqs: list[Tensor], totals: Tensor, s, width: int) -> tuple[Tensor, float]:
    """Of ``best_of`` samples, the one with the highest length-normalised log-probability."""
    scores = [float(t) / max(1, len(q) - width - 1) ** s.length_penalty for q, t in zip(seqs, totals)]
    best = max(range(len(seqs)), key=lambda k: scores[k])
    return seqs[best], float(totals[best])


def _no_speech(model, probe: _NoSpeechProbe, hidden: Tensor, prompt: Tensor, index: list[int]) -> list:
    """Per window, the probability of the no-speech token at its start token (``index``; raw logits)."""
    no_speech = model.whisper_text.no_speech
    if no_speech is None:
        return [0.0] * hidden.shape[0]
    at_start = probe.at_start
    if at_start is None or at_start.numel() == 0:  # an exported decoder: run the prompt up to the start token
        parts = []
        for i in sorted(set(index)):  # windows whose start token sits at one place
            rows = torch.tensor([r for r, k in enumerate(index) if k == i], dtype=torch.long, device=hidden.device)
            decoder = model.decoder_state(hidden.index_select(0, rows), None, 1, i + 1)
            parts.append((rows, decoder.step(prompt.index_select(0, rows)[:, : i + 1])))
        at_start = torch.cat([p for _, p in parts]).index_select(0, torch.cat([r for r, _ in parts]).argsort())
    else:
        at_start = at_start[:: at_start.shape[0] // hidden.shape[0]]  # a window's rows are consecutive
    probs = model.head.logits(at_start).float().softmax(dim=-1)
    return probs[:, no_speech].tolist()


def with_fallback(model, hidden: Tensor, prompts: list[list[int]], opts: Options, max_initial_index: int,
                  hooks=None, cross_kv=None, pad: bool = False) -> list[Decoded]:  # fmt: skip
    """faster-whisper's ``generate_with_fallback`` for a batch of windows: each window is decoded again at the
    next temperature while its text is too repetitive (compression ratio) or too unlikely (average
    log-probability), unless it is silence; where every temperature fails, the best attempt is kept."""
    text = model.whisper_text
    final: list[Decoded | None] = [None] * len(prompts)
    attempts: list[list[tuple[Decoded, bool]]] = [[] for _ in prompts]
    pending = list(range(len(prompts)))
    temperature = opts.temperatures[0]
    for temperature in opts.temperatures:
        if hooks is not None and pending:  # windows of inputs nobody waits for stop falling back
            gone = hooks.gone(torch.tensor(pending, dtype=torch.long))
            if gone is not None:
                for i, lost in zip(pending, gone.tolist()):
                    if lost:
                        final[i] = Decoded([], 0.0, 0.0, temperature, 0.0)
                pending = [i for i, lost in zip(pending, gone.tolist()) if not lost]
        if not pending:
            break
        index = torch.tensor(pending, dtype=torch.long, device=hidden.device)
        runs = decode(model, hidden.index_select(0, index), [prompts[i] for i in pending], opts, temperature,
                      max_initial_index, None if hooks is None else hooks.select(pending),
                      take_rows(cross_kv, pending, len(prompts)), pad)  # fmt: skip
        still = []
        for i, (tokens, total, no_speech) in zip(pending, runs):
            avg = total / (len(tokens) + 1)
            ratio = compression_ratio(text.decode(tokens).strip())
            result = Decoded(tokens, avg, no_speech, temperature, ratio)
            too_repetitive = opts.compression_ratio_threshold is not None and ratio > opts.compression_ratio_threshold
            attempts[i].append((result, not too_repetitive))
            fails = too_repetitive
            low = opts.log_prob_threshold is not None and avg < opts.log_prob_threshold
            fails = fails or low
            if opts.no_speech_threshold is not None and no_speech > opts.no_speech_threshold and low:
                fails = False  # silence: no fallback
            if fails:
                still.append(i)
            else:
                final[i] = result
        pending = still
    for i in pending:  # every temperature failed: the most likely attempt, below the ratio threshold if any
        good = [r for r, ok in attempts[i] if ok] or [r for r, _ in attempts[i]]
        best = max(good, key=lambda r: r.avg_logprob)
        final[i] = Decoded(best.tokens, best.avg_logprob, best.no_speech_prob, temperature, best.compression_ratio)
    return final
