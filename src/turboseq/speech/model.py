"""Whisper speech-to-text: ``generate`` on log-mel features in transformers' format, and ``transcribe`` on
audio files or arrays (text, timestamped segments, long audio in 30 s windows).

The runtime is the encoder-decoder engine of ``turboseq.models.engine``; what differs is the encoder input (log-mel
features through the convolutional front end, no padding mask), the decoder prompt (start-of-transcript,
language, task, no-timestamps) and Whisper's logits rules (``search.SuppressTokens``, ``search.TimestampRules``).
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import Tensor

from turboseq.errors import ModelLoadError
from turboseq.formats import audio as audio_io
from turboseq.generation.batching import RowHooks, pad_rows
from turboseq.generation.outputs import Trace
from turboseq.generation.processors import SuppressTokens, TimestampRules
from turboseq.generation.settings import GenerationSettings, resolve
from turboseq.models.engine import EncoderDecoder, output_request
from turboseq.speech import longform
from turboseq.speech.decoding import DEFAULT_TEMPERATURES, Options
from turboseq.speech.tokens import WhisperText
from turboseq.speech.transcript import Transcription
from turboseq.speech.vad import VadOptions

SECONDS_PER_TIMESTAMP = 0.02  # a timestamp token counts 20 ms (one encoder position)
# Whisper-only generate arguments (transformers' names); everything else goes to the generic settings
_WHISPER_ARGS = ("language", "task", "return_timestamps", "suppress_tokens", "begin_suppress_tokens", "prompt_ids")


class SpeechModel(EncoderDecoder):
    """A Whisper model on turboseq's runtime. Build it with ``turboseq.load`` (Hugging Face or CTranslate2
    Whisper directory)."""

    def __init__(self, spec, config, generation_defaults, path, device, dtype, whisper_config: dict, backend=None):
        super().__init__(spec, config, generation_defaults, path, device, dtype, backend, audio=True)
        self.whisper = whisper_config  # generation_config.json's Whisper keys (token ids, language table)
        self.n_mels, self.frames = self.backend.input_shape()
        self.no_timestamps_id = whisper_config.get("no_timestamps_token_id")
        self.timestamp_begin = None if self.no_timestamps_id is None else self.no_timestamps_id + 1
        self._whisper_text: WhisperText | None = None

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
        return replace(s, decoder_prompt=prompt, rules=rules)

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
            copies, s = s.num_return_sequences, replace(s, num_return_sequences=1)
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

    @property
    def whisper_text(self) -> WhisperText:
        if self._whisper_text is None:
            sot = self.generation_defaults.get("decoder_start_token_id", self.spec.decoder_start_token_id)
            self._whisper_text = WhisperText(self.tokenizer, self.whisper, self.spec.eos_token_id, sot)
        return self._whisper_text

    @torch.inference_mode()
    def detect_language(
        self,
        audio=None,
        features: Tensor | None = None,
        *,
        vad_filter: bool = False,
        vad_parameters: dict | VadOptions | None = None,
        language_detection_segments: int = 1,
        language_detection_threshold: float = 0.5,
    ) -> tuple[str, float, list[tuple[str, float]]]:
        """faster-whisper's ``detect_language``: (language, probability, every language with its probability,
        most likely first) from up to ``language_detection_segments`` 30 s windows of ``audio`` (or of log-mel
        ``features`` [n_mels, frames]), stopping at the first window whose best language passes
        ``language_detection_threshold``; otherwise the language most often on top."""
        codes = self.whisper_text.language_ids()
        if not self.whisper.get("is_multilingual") or not codes:
            raise ValueError("detect_language needs a multilingual Whisper model; this one is English-only")
        if not isinstance(language_detection_segments, int) or language_detection_segments < 1:
            raise ValueError(
                f"`language_detection_segments` must be a positive integer, got {language_detection_segments!r}"
            )
        if audio is None and features is None:
            raise ValueError("pass `audio` or `features`")
        if audio is not None:
            wave = audio_io.as_waveform(audio)
            if vad_filter:
                wave = longform.vad_filter([wave], VadOptions.of(vad_parameters))[0][0]
            features = audio_io.log_mel_long(wave[: language_detection_segments * audio_io.CHUNK_SAMPLES], self.n_mels)
        features = torch.as_tensor(features)[:, : language_detection_segments * self.frames]
        names, ids = list(codes), torch.tensor(list(codes.values()))
        votes: dict[str, list[float]] = {}
        for start in range(0, max(features.shape[-1], 1), self.frames):
            window = audio_io.window_features(features, start, self.frames)[None]
            ranked = self._language_probs(window, names, ids)[0]
            language, probability = ranked[0]
            if probability > language_detection_threshold:
                return language, probability, ranked
            votes.setdefault(language, []).append(probability)
        language = max(votes, key=lambda k: len(votes[k]))
        return language, max(votes[language]), ranked

    def _language_probs(self, windows: Tensor, names: list[str], ids: Tensor) -> list[list[tuple[str, float]]]:
        """Per window, every language and its probability (softmax over the language tokens after the start token)."""
        hidden, _ = self.encode(windows, None)
        decoder = self.decoder_state(hidden, None, 1, 1)
        start = torch.full((hidden.shape[0], 1), self.whisper_text.sot, dtype=torch.long, device=self.device)
        probs = self.head.logits(decoder.step(start)).float()[:, ids.to(self.device)].softmax(dim=-1).cpu()
        return [sorted(zip(names, row.tolist()), key=lambda p: -p[1]) for row in probs]

    @torch.inference_mode()
    def transcribe(
        self,
        audio,
        *,
        language: str | None = None,
        task: str = "transcribe",
        beam_size: int = 5,
        temperature: float | list[float] | tuple[float, ...] = DEFAULT_TEMPERATURES,
        vad_filter: bool | None = None,
        vad_parameters: dict | VadOptions | None = None,
        batch_size: int | None = None,
        max_batch_size: int = 16,
        without_timestamps: bool | None = None,
        language_detection_threshold: float | None = 0.5,
        language_detection_segments: int = 1,
        progress: bool = False,
        abandoned=None,
        **options,
    ) -> Transcription | list[Transcription]:
        """Transcribe one input (path, bytes or 16 kHz mono float array) or a list of them, with
        faster-whisper's options, names and defaults (``WhisperModel.transcribe``): ``beam_size``, ``best_of``,
        ``temperature`` (a list: fallback), ``compression_ratio_threshold``, ``log_prob_threshold``,
        ``no_speech_threshold``, ``condition_on_previous_text``, ``prompt_reset_on_temperature``,
        ``initial_prompt``, ``prefix``, ``hotwords``, ``suppress_blank``, ``suppress_tokens``,
        ``without_timestamps``, ``max_initial_timestamp``, ``word_timestamps``, ``prepend_punctuations``,
        ``append_punctuations``, ``vad_filter``, ``vad_parameters``, ``max_new_tokens``,
        ``hallucination_silence_threshold``, ``length_penalty``, ``repetition_penalty``, ``no_repeat_ngram_size``,
        ``language`` (None: detected on multilingual models), ``task``.

        ``batch_size=None``: the sequential pipeline (faster-whisper's ``WhisperModel``; several inputs
        share batches window by window). ``batch_size=N``: the batched pipeline (faster-whisper's
        ``BatchedInferencePipeline``, with its defaults: VAD on, no timestamps, first temperature only),
        N chunks at a time across all inputs. ``max_batch_size``: windows per batch in the sequential pipeline.

        ``abandoned()`` may return a set of input indices nobody waits for any more; their decoding stops
        and their results are meaningless."""
        single = not isinstance(audio, (list, tuple))
        inputs = [audio] if single else list(audio)
        waves = [audio_io.as_waveform(a, str(a) if isinstance(a, (str, Path)) else f"input {i}")
                 for i, a in enumerate(inputs)]  # fmt: skip
        piped = batch_size is not None
        if piped and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        opts, vad = self._transcribe_options(
            piped, beam_size, temperature, without_timestamps, vad_filter, vad_parameters, language, task, options
        )
        hooks = RowHooks(abandoned)
        kept, chunks = waves, [None] * len(waves)
        if vad is not None and not piped:
            kept, chunks = longform.vad_filter(waves, vad)
        languages = [
            self._language(w, language, language_detection_segments, language_detection_threshold) for w in kept
        ]
        sots = [self.whisper_text.sot_sequence(lang, task) for lang, _, _ in languages]
        if piped:
            segments, chunks = longform.batched(self, kept, opts, sots, batch_size, vad, progress, hooks)
        else:
            segments = longform.sequential(self, kept, opts, sots, max_batch_size, progress, hooks)
        results = []
        for i, wave in enumerate(waves):
            speech = None if chunks[i] is None else sum(c.end - c.start for c in chunks[i]) / audio_io.SAMPLE_RATE
            lang, prob, ranked = languages[i]
            results.append(longform.finish(segments[i], wave, chunks[i], lang, prob, ranked, speech))
        return results[0] if single else results

    def live(
        self,
        *,
        language: str | None = None,
        task: str = "transcribe",
        beam_size: int = 5,
        temperature: float | list[float] | tuple[float, ...] = 0.0,
        initial_prompt: str | None = None,
        min_chunk_seconds: float = 0.5,
        trim_seconds: float = 6.0,
        max_buffer_seconds: float = 28.0,
        full_window: bool = True,
        **options,
    ):
        """A live stream (``turboseq.speech.live.LiveTranscriber``): ``append`` audio chunks as they come,
        ``process()`` whenever ``due``, ``finish()`` at the end; each returns a ``LiveUpdate`` of newly confirmed
        words and the unconfirmed tail. Takes ``transcribe``'s options; beam 5 at temperature 0 by default
        (no fallback: a decode is redone half a second later anyway). ``language=None`` on a multilingual model
        is English (no audio to detect it from yet). ``full_window=False``: the encoder reads the buffer and 2 s
        after it, not Whisper's whole 30 s window: a third of the work per decode or less, at some cost in
        words (docs/speech.md); the server uses it while several streams share the engine."""
        from turboseq.speech.live import LiveOptions, LiveTranscriber

        if options.get("word_timestamps") is False:
            raise ValueError("a live stream needs word timestamps: it confirms words by their times")
        options = {**options, "word_timestamps": True}
        opts, _ = self._transcribe_options(False, beam_size, temperature, None, False, None, language, task, options)
        if initial_prompt is not None and not isinstance(initial_prompt, str):
            raise ValueError(f"`initial_prompt` must be a string, got {initial_prompt!r}")
        settings = LiveOptions(min_chunk_seconds, trim_seconds, max_buffer_seconds, full_window=full_window)
        settings.check()
        prompt = self.whisper_text.encode(" " + initial_prompt.strip()) if initial_prompt else []
        sot = self.whisper_text.sot_sequence(language or "en", task)
        return LiveTranscriber(self, opts, sot, prompt, settings)

    def _transcribe_options(self, piped, beam_size, temperature, without_timestamps, vad_filter, vad_parameters,
                            language, task, options) -> tuple[Options, VadOptions | None]:  # fmt: skip
        """``transcribe``'s options checked, in one line each, before any decoding: faster-whisper's
        ``TranscriptionOptions`` (the batched pipeline's defaults where ``piped``) and the VAD's."""
        temps = tuple(temperature) if isinstance(temperature, (list, tuple)) else (temperature,)
        if without_timestamps is None:
            without_timestamps = piped
        if vad_filter is None:
            vad_filter = piped
        unknown = sorted(set(options) - {f.name for f in fields(Options)} - {"temperatures"})
        if unknown:
            raise ValueError(f"unknown transcribe option(s): {', '.join(unknown)}")
        opts = Options(beam_size=beam_size, temperatures=temps, without_timestamps=without_timestamps, **options)
        if piped:
            opts.max_initial_timestamp = 0.0
        opts.check(self.spec.vocab_size)
        for name, value in (("language", language), ("task", task)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` must be a string, got {value!r}")
        self.whisper_text.sot_sequence(language, task)  # an unknown language or task fails here
        if opts.word_timestamps and not self.backend.word_timestamps:
            raise ValueError("word timestamps need the model directory: an exported file cannot align words yet")
        if opts.word_timestamps and not self.whisper.get("alignment_heads"):
            raise ValueError("this model has no `alignment_heads` in its generation config: word timestamps need them")
        if not isinstance(vad_filter, bool):
            raise ValueError(f"`vad_filter` must be true or false, got {vad_filter!r}")
        if vad_parameters is not None:
            VadOptions.of(vad_parameters)  # checked even where VAD is off: a typo should not pass silently
        if not vad_filter:
            return opts, None
        vad = VadOptions.of(vad_parameters, **({"max_speech_duration_s": 30.0} if piped else {}))
        if piped and vad_parameters is None:
            vad.min_silence_duration_ms = 160
        return opts, vad

    def _language(self, wave, language, segments: int, threshold) -> tuple:
        """(code, probability, ranked) of one input: the given language, or detected on multilingual models."""
        if language is None and self.whisper.get("is_multilingual"):
            feats = audio_io.log_mel_long(wave[: segments * audio_io.CHUNK_SAMPLES], self.n_mels)
            return self.detect_language(
                features=feats, language_detection_segments=segments, language_detection_threshold=threshold or 0.5
            )
        return (language or "en", 1.0, None)


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
