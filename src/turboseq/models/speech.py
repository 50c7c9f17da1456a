"""Whisper speech-to-text: ``generate`` on log-mel features in transformers' format, and ``transcribe`` on
audio files or arrays (text, timestamped segments, long audio in 30 s windows).

The runtime is the encoder-decoder engine of ``turboseq.models.engine``; what differs is the encoder input (log-mel
features through the convolutional front end, no padding mask), the decoder prompt (start-of-transcript,
language, task, no-timestamps) and Whisper's logits rules (``search.SuppressTokens``, ``search.TimestampRules``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.formats import audio as audio_io
from turboseq.generation.batching import RowHooks, pad_rows
from turboseq.generation.outputs import Trace
from turboseq.generation.processors import SuppressTokens, TimestampRules
from turboseq.generation.settings import GenerationSettings, resolve
from turboseq.models.engine import EncoderDecoder, output_request
from turboseq.models.progress import progress_bar
from turboseq.models.transcript import Segment, Transcription
from turboseq.runtime.layers import encode

SECONDS_PER_TIMESTAMP = 0.02  # a timestamp token counts 20 ms (one encoder position)
# Whisper-only generate arguments (transformers' names); everything else goes to the generic settings
_WHISPER_ARGS = ("language", "task", "return_timestamps", "suppress_tokens", "begin_suppress_tokens", "prompt_ids")


class SpeechModel(EncoderDecoder):
    """A Whisper model on turboseq's runtime. Build it with ``turboseq.load`` (Hugging Face or CTranslate2
    Whisper directory)."""

    def __init__(self, spec, config, generation_defaults, path, device, dtype, whisper_config: dict):
        super().__init__(spec, config, generation_defaults, path, device, dtype)
        self.whisper = whisper_config  # generation_config.json's Whisper keys (token ids, language table)
        self.n_mels, self.frames = self._input_shape()
        self.no_timestamps_id = whisper_config.get("no_timestamps_token_id")
        self.timestamp_begin = None if self.no_timestamps_id is None else self.no_timestamps_id + 1

    def _input_shape(self) -> tuple[int, int]:
        """Mel bins, and the mel frames the encoder expects (3000: two per encoder position)."""
        front = self.spec.encoder.embed
        return front.convs[0].weight.shape[1], 2 * front.positions.shape[0]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            file = self.path / "tokenizer.json"
            if not file.is_file():
                raise ModelLoadError(f"{self.path}: no tokenizer.json; token-level generate() works without one")
            self._tokenizer = Tokenizer.from_file(str(file))
        return self._tokenizer

    # --- settings: prompt and rules ---------------------------------------------------------------------------

    def settings(self, **kwargs) -> GenerationSettings:
        whisper_args = {k: kwargs.pop(k) for k in _WHISPER_ARGS if k in kwargs}
        for name in ("language", "task"):
            if whisper_args.get(name) is not None and not isinstance(whisper_args[name], str):
                raise ValueError(f"`{name}` must be a string, got {whisper_args[name]!r}")
        for name in ("suppress_tokens", "begin_suppress_tokens", "prompt_ids"):
            if whisper_args.get(name) is not None:
                whisper_args[name] = self._token_list(name, whisper_args[name])
        timestamps = bool(whisper_args.get("return_timestamps") or self.whisper.get("return_timestamps") or False)
        if timestamps and self.no_timestamps_id is None:
            raise ValueError("this model's generation config has no `no_timestamps_token_id`; timestamps unavailable")
        prompt = self._decoder_prompt(whisper_args.get("language"), whisper_args.get("task"), timestamps)
        previous = whisper_args.get("prompt_ids")
        if previous is not None:  # text to condition on: <|startofprev|> text, before the prompt
            previous = list(previous)
            if not previous or previous[0] != self.whisper.get("prev_sot_token_id"):
                previous = [self.whisper["prev_sot_token_id"]] + previous
            prompt = previous + prompt
        s = resolve(
            self.generation_defaults,
            kwargs,
            max_positions=self.spec.max_positions,
            prompt_length=len(prompt),
            vocab_size=self.spec.vocab_size,
        )
        s.decoder_prompt = prompt
        begin = len(prompt)
        rules: list = []
        # transformers' order: begin-suppress, suppress, timestamps
        begin_suppress = whisper_args.get("begin_suppress_tokens", self.whisper.get("begin_suppress_tokens"))
        if begin_suppress:
            rules.append(SuppressTokens(list(begin_suppress), at_length=begin))
        suppress = whisper_args.get("suppress_tokens", self.whisper.get("suppress_tokens"))
        if suppress:
            rules.append(SuppressTokens(list(suppress)))
        if timestamps:
            rules.append(
                TimestampRules(
                    self.no_timestamps_id, s.eos_token_ids[0], begin, self.whisper.get("max_initial_timestamp_index")
                )
            )
        s.rules = rules
        return s

    def _token_list(self, name: str, value) -> list[int]:
        """A list (or 1-D tensor) of token ids inside the vocabulary, as plain ints."""
        if isinstance(value, Tensor):
            value = value.tolist()
        vocab = self.spec.vocab_size
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in value
        ):
            raise ValueError(f"`{name}` must be a list of token ids in the vocabulary [0, {vocab}), got {value!r}")
        return list(value)

    def _decoder_prompt(self, language: str | None, task: str | None, timestamps: bool) -> list[int]:
        prompt = [self.generation_defaults.get("decoder_start_token_id", self.spec.decoder_start_token_id)]
        if self.whisper.get("is_multilingual"):
            lang_to_id = self.whisper.get("lang_to_id") or {}
            code = language or "en"
            token = code if code.startswith("<|") else f"<|{code}|>"
            if token not in lang_to_id:
                known = ", ".join(sorted(t.strip("<|>") for t in lang_to_id))
                raise ValueError(f"unknown `language` {language!r}; this model knows: {known}")
            prompt.append(lang_to_id[token])
            task_to_id = self.whisper.get("task_to_id") or {}
            task = task or "transcribe"
            if task not in task_to_id:
                raise ValueError(f"`task` must be one of {', '.join(task_to_id)}, got {task!r}")
            prompt.append(task_to_id[task])
        elif language not in (None, "en", "english") or task not in (None, "transcribe"):
            raise ValueError("this is an English-only Whisper model: `language` must be 'en' and `task` 'transcribe'")
        if not timestamps and self.no_timestamps_id is not None:
            prompt.append(self.no_timestamps_id)
        return prompt

    # --- the engine's hooks: 30 s of log-mel features in, Whisper's prompt -------------------------------------------------------------------------

    def _row_length(self, row) -> int:
        return self.frames // 2

    def _collate(self, rows, mask, chunk: list[int]) -> tuple[Tensor, None]:
        return torch.stack([rows[i] for i in chunk]), None

    def _encode(self, inputs: Tensor, mask) -> tuple[Tensor, None]:
        # Whisper attends to every encoder position (the 30 s window is always full length)
        return encode(self.spec.encoder, inputs.to(device=self.device, dtype=torch.float32), None), None

    def _prompt(self, batch: int, s: GenerationSettings) -> Tensor:
        return torch.tensor(s.decoder_prompt, dtype=torch.long, device=self.device).expand(batch, -1).contiguous()

    # --- token-level API -----------------------------------------------------------------------------------------

    def _check_features(self, input_features) -> Tensor:
        feats = torch.as_tensor(input_features)
        if feats.dim() != 3 or feats.shape[1] != self.n_mels:
            raise ValueError(
                f"`input_features` must be [batch, {self.n_mels}, {self.frames}] log-mel features, got {tuple(feats.shape)}"
            )
        if feats.shape[2] != self.frames:
            raise ValueError(
                f"`input_features` must have {self.frames} frames (30 s, zero-padded), got {feats.shape[2]}; "
                "use transcribe() for longer audio"
            )
        return feats.float()

    @torch.inference_mode()
    def generate(
        self,
        input_features: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_batch_size: int | None = 16,
        seed: int | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Like transformers' ``WhisperForConditionalGeneration.generate`` on windows of up to 30 s: a LongTensor
        [batch * num_return_sequences, len] of the generated tokens (decoder prompt and final EOS left out,
        right-padded with the pad token). Accepts ``language``, ``task``, ``return_timestamps``,
        ``prompt_ids`` and the usual generation arguments. ``attention_mask`` is accepted and unused, as in
        transformers (the encoder always sees the full 30 s window).

        ``return_dict_in_generate=True`` (without timestamps) returns transformers' Whisper output object:
        the whole sequences (decoder prompt and EOS included), and the per-step ``scores``/``logits``, beam
        scores and beam indices picked per hypothesis as transformers' Whisper picks them."""
        feats = self._check_features(input_features)
        trace = output_request(kwargs)
        s = self.settings(**kwargs)
        if trace is not None and any(isinstance(rule, TimestampRules) for rule in s.rules):
            raise ValueError(
                "`return_dict_in_generate` works without timestamps (with them transformers returns per-segment "
                "dicts); use transcribe() for timed segments"
            )
        if feats.shape[0] == 0:
            return torch.empty((0, 0), dtype=torch.long)
        copies = 1
        if s.is_beam and s.num_return_sequences > 1:
            # transformers' Whisper repeats each input num_return_sequences times and keeps one hypothesis of
            # each copy: the same best hypothesis, repeated (sampling draws one sequence per copy, as here)
            copies, s.num_return_sequences = s.num_return_sequences, 1
        outputs = self._run(list(feats), None, s, max_batch_size, None, seed, trace=trace)
        if trace is not None:
            return whisper_output(outputs, trace, s, copies)
        seqs = [self._strip(seq, s) for per_input in outputs for seq in per_input for _ in range(copies)]
        return pad_rows(seqs, s.pad_token_id)

    def _strip(self, seq: Tensor, s: GenerationSettings) -> Tensor:
        seq = seq[len(s.decoder_prompt) :]
        if len(seq) and int(seq[-1]) in s.eos_token_ids:
            seq = seq[:-1]
        return seq

    # --- audio API -------------------------------------------------------------------------------------------------

    def features(self, audio) -> Tensor:
        """Log-mel features [1, n_mels, 3000] of up to 30 s of audio (path, bytes or 16 kHz float array)."""
        wave = audio_io.as_waveform(audio)
        return audio_io.log_mel([wave[: audio_io.CHUNK_SAMPLES]], self.n_mels)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t < self.spec.eos_token_id], skip_special_tokens=True)

    def _segments(self, ids: list[int], offset: float, window_end: float, resumable: bool = False):
        """Split one window's generated ids at timestamp tokens (openai/whisper's rules). Returns the segments
        (times in seconds from the start of the audio) and, when ``resumable`` and the window ended after a
        complete segment, the time to resume decoding from (the rest of the window is decoded again, so that
        a segment cut by the window edge is not lost); None means: go on after this window."""
        first = self.timestamp_begin
        is_ts = [first is not None and t >= first for t in ids]

        def time(t: int) -> float:
            return offset + (t - first) * SECONDS_PER_TIMESTAMP

        def segment(start: float, end: float, tokens: list[int]) -> list[Segment]:
            text = self._text(tokens).strip()
            return [Segment(start, max(start, min(end, window_end)), text, tokens)] if text else []

        pairs = [i for i in range(1, len(ids)) if is_ts[i] and is_ts[i - 1]]  # a segment ends at i - 1
        single_ending = len(ids) >= 2 and is_ts[-1] and not is_ts[-2]
        if not pairs:
            stamps = [t for t, ts in zip(ids, is_ts) if ts]
            start = time(stamps[0]) if stamps else offset
            end = time(stamps[-1]) if len(stamps) > 1 else window_end
            return segment(start, end, [t for t, ts in zip(ids, is_ts) if not ts]), None
        bounds = pairs + ([len(ids)] if single_ending else [])
        segments, last = [], 0
        for b in bounds:
            piece = ids[last:b]
            segments += segment(time(piece[0]), time(piece[-1]), [t for t in piece if t < first])
            last = b
        rest = ids[last:]
        resume = None
        if not single_ending:
            resume = time(ids[last - 1])
            if resumable and resume > offset:
                return segments, resume
            if any(t < first for t in rest):  # text after the last complete segment: up to the window's end
                start = time(rest[0]) if rest and rest[0] >= first else resume
                segments += segment(start, window_end, [t for t in rest if t < first])
        return segments, None

    @torch.inference_mode()
    def transcribe(
        self,
        audio,
        *,
        beam_size: int = 1,
        timestamps: bool = False,
        language: str | None = None,
        task: str | None = None,
        batch_size: int = 8,
        condition_on_previous_text: bool = False,
        progress: bool = False,
        abandoned=None,
        **kwargs,
    ) -> Transcription | list[Transcription]:
        """Transcribe one input (path, bytes or 16 kHz mono float array) or a list of them.

        Audio of up to 30 s is one window. Longer audio is cut into consecutive 30 s windows, decoded in batches
        of ``batch_size`` windows across all inputs (fast; a word on a window edge may be split), or, with
        ``condition_on_previous_text=True``, window after window per input with the previous window's text as
        the prompt and, with timestamps, resuming where the last complete segment ended (openai/whisper's
        sequential mode; slower). Silence gives empty text. Other generation arguments (``max_new_tokens``,
        ``length_penalty``, ...) pass through.

        ``abandoned()`` may return a set of input indices nobody waits for any more (a server's client left):
        their windows leave the running batch at the next decoding step, later windows are skipped, and their
        results are meaningless."""
        single = not isinstance(audio, (list, tuple))
        inputs = [audio] if single else list(audio)
        waves = []
        for i, a in enumerate(inputs):
            name = str(a) if isinstance(a, (str, Path)) else f"input {i}"
            waves.append(audio_io.as_waveform(a, name))
        gen = dict(kwargs, num_beams=beam_size, language=language, task=task)
        hooks = RowHooks(abandoned)  # over the inputs
        if condition_on_previous_text:
            results = [
                self._transcribe_sequential(w, timestamps, gen, progress, hooks.select([i]))
                for i, w in enumerate(waves)
            ]
        else:
            results = self._transcribe_batched(waves, timestamps, gen, batch_size, progress, hooks)
        return results[0] if single else results

    def _transcribe_batched(self, waves, timestamps, gen, batch_size, progress, hooks: RowHooks) -> list[Transcription]:
        step = audio_io.CHUNK_SAMPLES
        # (input, start sample, timestamps?): audio over 30 s is always decoded with timestamps, as in
        # transformers and openai/whisper: without them Whisper often stops early on a full 30 s window
        windows = []
        for i, w in enumerate(waves):
            stamps = timestamps or len(w) > step
            windows.extend((i, start, stamps) for start in range(0, max(len(w), 1), step))
        per_input: list[list[tuple[int, list[Segment]]]] = [[] for _ in waves]
        with progress_bar(progress and len(windows) > 1, len(windows), "window", "transcribe") as bar:
            for stamps in (False, True):
                todo = [w for w in windows if w[2] == stamps and not is_silent(waves[w[0]][w[1] : w[1] + step])]
                bar.update(sum(1 for w in windows if w[2] == stamps) - len(todo))
                s = self.settings(return_timestamps=stamps, **gen) if todo else None
                for b in range(0, len(todo), batch_size):
                    lost = hooks.lost()
                    chunk = [w for w in todo[b : b + batch_size] if w[0] not in lost]
                    if not chunk:
                        continue
                    feats = audio_io.log_mel([waves[i][start : start + step] for i, start, _ in chunk], self.n_mels)
                    chunk_hooks = hooks.select([i for i, _, _ in chunk])  # a window's row -> its input
                    outputs = self._run(list(feats), None, s, batch_size, None, None, hooks=chunk_hooks)
                    for (i, start, _), seqs in zip(chunk, outputs):
                        end = min(len(waves[i]), start + step) / audio_io.SAMPLE_RATE
                        segments, _ = self._segments(
                            self._strip(seqs[0], s).tolist(), start / audio_io.SAMPLE_RATE, end
                        )
                        per_input[i].append((start, segments))
                    bar.update(len(chunk))
        return [
            self._result([seg for _, segs in sorted(parts, key=lambda p: p[0]) for seg in segs], w)
            for parts, w in zip(per_input, waves)
        ]

    def _transcribe_sequential(self, wave, timestamps, gen, progress, hooks: RowHooks) -> Transcription:
        rate, step = audio_io.SAMPLE_RATE, audio_io.CHUNK_SAMPLES
        seek, segments, previous = 0, [], []
        max_prompt = self.spec.max_positions // 2 - 1  # openai/whisper keeps the last 223 tokens
        with progress_bar(progress and len(wave) > step, round(len(wave) / rate, 1), "s", "transcribe") as bar:
            while seek < len(wave) and not hooks.lost():
                window = wave[seek : seek + step]
                if is_silent(window):
                    seek += step
                    continue
                prompt_ids = previous[-max_prompt:] if previous else None
                s = self.settings(return_timestamps=timestamps or len(wave) > step, prompt_ids=prompt_ids, **gen)
                feats = audio_io.log_mel([window], self.n_mels)
                (seqs,) = self._run([feats[0]], None, s, 1, None, None, hooks=hooks)
                ids = self._strip(seqs[0], s).tolist()
                offset = seek / rate
                full = len(window) == step and seek + step < len(wave)  # more audio follows this window
                new, resume = self._segments(ids, offset, (seek + len(window)) / rate, resumable=full)
                segments.extend(new)
                previous.extend(t for seg in new for t in seg.tokens)
                advance = step if resume is None else max(1, int(round((resume - offset) * rate)))
                bar.update(round(min(advance, len(wave) - seek) / rate, 1))
                seek += advance
        return self._result(segments, wave)

    def _result(self, segments: list[Segment], wave: np.ndarray) -> Transcription:
        text = " ".join(seg.text for seg in segments).strip()
        language = None if self.whisper.get("is_multilingual") else "en"
        return Transcription(text, segments, len(wave) / audio_io.SAMPLE_RATE, language)


# windows quieter than this (peak amplitude, about -60 dBFS) are silence: empty text, no decoding. Whisper
# itself tends to invent a word ("you") for silent input; its no-speech probability is not used yet.
SILENCE_PEAK = 1e-3


def whisper_output(outputs: list[list[Tensor]], trace: Trace, s: GenerationSettings, copies: int):
    """transformers' Whisper ``generate`` output object for one batch run with ``trace``: each input's
    sequences repeated ``copies`` times (Whisper's beam search with num_return_sequences runs each input that
    many times), whole (prompt and EOS included). transformers' Whisper splits the outputs per hypothesis: a
    beam hypothesis' step scores are the rows its beam indices name (-1, past its end: the last row), its
    logits row is the hypothesis' own number, and beam indices count the repeated inputs' beams."""
    from transformers.generation import utils

    sequences = pad_rows(
        [seq for per_input in outputs for seq in per_input for _ in range(copies)], s.output_fill_token_id
    )
    if not s.is_beam:
        return utils.GenerateEncoderDecoderOutput(
            sequences=sequences,
            scores=tuple(trace.scores) if trace.want_scores else None,
            logits=tuple(trace.logits) if trace.want_logits else None,
        )
    nb, hyps = s.num_beams, sequences.shape[0]
    indices = trace.beam_indices.long().repeat_interleave(copies, dim=0)  # [hyps, steps]
    if copies > 1:  # beam j*nb+b of input j is beam (j*copies+c)*nb+b of its c-th copy
        copy = torch.arange(hyps).remainder(copies)[:, None]
        moved = ((indices // nb) * copies + copy) * nb + indices % nb
        indices = torch.where(indices >= 0, moved, indices)
    steps = min(len(trace.scores or trace.logits), indices.shape[1])
    scores = None
    if trace.want_scores:
        own = torch.where(indices >= 0, (indices // nb // copies) * nb + indices % nb, -1)
        scores = tuple(trace.scores[t][own[:, t]] for t in range(steps))
    logits = None
    if trace.want_logits:
        rows = torch.arange(hyps)  # expanded row r: sentence r // nb of the repeated inputs, beam r % nb
        own_rows = (rows // nb // copies) * nb + rows % nb
        logits = tuple(step[own_rows] for step in trace.logits)
    return utils.GenerateBeamEncoderDecoderOutput(
        sequences=sequences,
        sequences_scores=trace.sequences_scores.repeat_interleave(copies) if trace.want_scores else None,
        scores=scores,
        logits=logits,
        beam_indices=indices.int(),
    )


def is_silent(window: np.ndarray) -> bool:
    return len(window) == 0 or float(np.abs(window).max()) < SILENCE_PEAK
