"""Long-form transcription, as faster-whisper runs it, over any number of recordings at once.

- ``sequential``: faster-whisper's ``WhisperModel.transcribe``. Each recording is read window after window
  (30 s), each window starting where the last complete segment ended, with the previous text as the prompt,
  temperature fallback and the no-speech test. The current windows of all recordings share one batch.
- ``batched``: faster-whisper's ``BatchedInferencePipeline``. Voice activity detection cuts each recording
  into speech chunks, merged up to 30 s; all chunks of all recordings are decoded ``batch_size`` at a time,
  without prompts between them and at the first temperature only. Without VAD the chunks are consecutive
  30 s windows.

Both give segments with faster-whisper's fields, and words with ``word_timestamps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from turboseq.formats import audio as audio_io
from turboseq.generation.batching import RowHooks
from turboseq.models.progress import progress_bar
from turboseq.speech import alignment
from turboseq.speech.decoding import Options, compression_ratio, take_rows, window_prompt, with_fallback
from turboseq.speech.transcript import Segment, Transcription, WindowSegment
from turboseq.speech.vad import SpeechChunk, VadOptions, collect_chunks, restore_times, speech_timestamps

FRAMES_PER_SECOND = 100  # mel frames
WINDOW_FRAMES = audio_io.FRAMES_PER_CHUNK  # 3000
TIME_PRECISION = 0.02  # seconds per timestamp token
INPUT_STRIDE = 2  # mel frames per encoder position


@dataclass
class _Stream:
    """One recording in the sequential loop."""

    index: int  # the input it transcribes
    features: torch.Tensor  # [n_mels, frames + 1]
    sot_sequence: list[int]
    seek: int = 0
    tokens: list[int] = field(default_factory=list)  # all text so far (the prompt's source)
    reset_since: int = 0
    last_speech: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    prefix: list[int] | None = None  # forced tokens after the start sequence of the first window (output)

    @property
    def content_frames(self) -> int:
        return self.features.shape[-1] - 1


def split_by_timestamps(text, tokens: list[int], time_offset: float, segment_size: int, segment_duration: float,
                        seek: int):  # fmt: skip
    """One window's tokens cut into segments at consecutive timestamp pairs: (its segments, the next
    seek in mel frames, whether the window ended on a single timestamp)."""
    first = text.timestamp_begin
    single_ending = len(tokens) >= 2 and tokens[-2] < first <= tokens[-1]
    pairs = [i for i in range(1, len(tokens)) if tokens[i] >= first and tokens[i - 1] >= first]
    segments = []
    if pairs:
        cuts = pairs + ([len(tokens)] if single_ending else [])
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            start, end = (time_offset + (piece[k] - first) * TIME_PRECISION for k in (0, -1))
            segments.append(WindowSegment(seek, start, end, piece))
            last = cut
        if single_ending:
            seek += segment_size
        else:  # the unfinished segment is decoded again from its start
            seek += (tokens[last - 1] - first) * INPUT_STRIDE
    else:
        duration = segment_duration
        stamps = [t for t in tokens if t >= first] if first is not None else []
        if stamps and stamps[-1] != first:
            duration = (stamps[-1] - first) * TIME_PRECISION
        segments.append(WindowSegment(seek, time_offset, time_offset + duration, tokens))
        seek += segment_size
    return segments, seek, single_ending


def _add_words(model, hidden_rows, windows: list[list[WindowSegment]], num_frames: list[int], sot_sequences, opts: Options,
               last_speech: list[float], inputs: list[int], cross_kv=None) -> None:  # fmt: skip
    """Words for every segment of ``windows`` (each a window's segments, ``hidden_rows`` their encoder output,
    ``cross_kv`` its cross-attention K/V or None),
    aligned in one decoder pass per start sequence; ``last_speech[inputs[i]]`` carries the end of the last speech
    of window i's input from one window to the next (in order)."""
    text = model.whisper_text
    texts = [[t for seg in segs for t in seg.tokens if t < text.eot] for segs in windows]
    aligned: dict[int, tuple] = {}
    by_sot: dict[tuple, list[int]] = {}
    for i, t in enumerate(texts):
        if t:
            by_sot.setdefault(tuple(sot_sequences[i]), []).append(i)
    for sot, rows in by_sot.items():
        index = torch.tensor(rows, dtype=torch.long, device=hidden_rows.device)
        found = alignment.attention_alignment(
            model,
            hidden_rows.index_select(0, index),
            list(sot),
            [texts[i] for i in rows],
            [num_frames[i] for i in rows],
            take_rows(cross_kv, rows, len(windows)),
        )
        aligned.update(zip(rows, found))
    for i, segs in enumerate(windows):
        if not segs:
            continue
        language = _language(model, sot_sequences[i])
        timings = alignment.word_timings(text, aligned[i], texts[i], language) if i in aligned else []
        median, longest = alignment.clip_long_words(timings, opts.prepend_punctuations, opts.append_punctuations)
        offset = segs[0].seek / FRAMES_PER_SECOND
        k = inputs[i]
        last_speech[k] = alignment.attach_words(segs, timings, offset, median, longest, last_speech[k], text.eot)


def sequential(model, waves: list[np.ndarray], opts: Options, sot_sequences: list[list[int]], batch_size: int,
               progress: bool, hooks: RowHooks, prompts: list[list[int]] | None = None,
               once: bool = False, window_frames: int = WINDOW_FRAMES,
               prefixes: list[list[int] | None] | None = None, pad_prompts: bool = False) -> list[list[Segment]]:  # fmt: skip
    """faster-whisper's sequential transcription of each wave (already VAD-filtered where asked); ``hooks``
    over the inputs: an abandoned input stops decoding. ``prompts``: each input's own previous text (tokens),
    in place of ``opts.initial_prompt``. ``once``: one window per input (at most 30 s), its words all kept:
    the audio after the last word is not decoded again as the next window (live transcription's buffers).
    ``window_frames``: the mel frames each window's encoder reads, fewer than Whisper's 3000 only where every
    wave is shorter (live transcription's short buffers: the encoder's work falls with the square of it).
    ``prefixes``: each input's own prefix tokens (its timestamp included; None: ``opts.prefix``), forced
    after the start sequence of its first window and part of its output (live transcription's confirmed words).
    ``pad_prompts``: windows whose prompts differ in length share one search, left-padded (``decoding.decode``)."""
    if window_frames < WINDOW_FRAMES and any(len(w) > window_frames * audio_io.HOP_LENGTH for w in waves):
        raise ValueError(f"a window of {window_frames} mel frames is shorter than the audio it reads")
    text = model.whisper_text
    streams = [
        _Stream(i, audio_io.log_mel_long(w, model.n_mels), sot) for i, (w, sot) in enumerate(zip(waves, sot_sequences))
    ]
    for s in streams:
        if opts.initial_prompt is not None:
            initial = opts.initial_prompt
            s.tokens = text.encode(" " + initial.strip()) if isinstance(initial, str) else list(initial)
        if prompts is not None:
            s.tokens = list(prompts[s.index])
        if prefixes is not None:
            s.prefix = prefixes[s.index]
    max_initial = int(round(opts.max_initial_timestamp / TIME_PRECISION))
    total = round(sum(s.content_frames for s in streams) / FRAMES_PER_SECOND, 1)
    with progress_bar(progress and total > 30, total, "s", "transcribe") as bar:
        while True:
            gone = hooks.lost()
            active = [i for i, s in enumerate(streams) if s.seek < s.content_frames and i not in gone]
            if not active:
                break
            for b in range(0, len(active), batch_size):
                group = [streams[i] for i in active[b : b + batch_size]]
                rows = hooks.select([s.index for s in group])
                moved = _sequential_round(model, group, opts, max_initial, rows, window_frames, pad_prompts)
                bar.update(round(moved / FRAMES_PER_SECOND, 1))
            if once:
                break
    return [s.segments for s in streams]


def _sequential_round(model, streams: list[_Stream], opts: Options, max_initial: int, hooks: RowHooks,
                      window_frames: int = WINDOW_FRAMES, pad: bool = False) -> int:  # fmt: skip
    """One window of each stream: encode (its first ``window_frames``), decode with fallback, cut into
    segments, words; returns the frames the streams moved on."""
    text = model.whisper_text
    sizes = [min(window_frames, s.content_frames - s.seek) for s in streams]
    feats = torch.stack([audio_io.window_features(s.features, s.seek, n) for s, n in zip(streams, sizes)])
    feats = feats[..., :window_frames]
    hidden, _ = model.encode(feats, None)
    cross_kv = model.cross_kv(hidden)  # built once: every temperature and the word alignment share them
    prompts = [
        window_prompt(
            text,
            s.sot_sequence,
            s.tokens[s.reset_since :],
            opts,
            (opts.prefix if s.prefix is None else s.prefix) if s.seek == 0 else None,
            model.spec.max_positions,
        )  # fmt: skip
        for s in streams
    ]
    results = with_fallback(model, hidden, prompts, opts, max_initial, hooks, cross_kv, pad)
    moved = 0
    kept_rows, kept_windows = [], []
    for row, (s, size, result) in enumerate(zip(streams, sizes, results)):
        previous_seek = s.seek
        skip = opts.no_speech_threshold is not None and result.no_speech_prob > opts.no_speech_threshold
        if skip and opts.log_prob_threshold is not None and result.avg_logprob > opts.log_prob_threshold:
            skip = False  # likely enough to be speech despite the no-speech probability
        if skip:
            s.seek += size
            moved += size
            continue
        time_offset = s.seek / FRAMES_PER_SECOND
        segments, s.seek, single_ending = split_by_timestamps(
            text, result.tokens, time_offset, size, size / FRAMES_PER_SECOND, s.seek
        )
        kept_rows.append((row, s, previous_seek, result, single_ending, time_offset))
        kept_windows.append(segments)
    skipped = _round_words(model, hidden, cross_kv, kept_rows, kept_windows, sizes, len(streams), opts)
    return moved + _keep_segments(text, kept_rows, kept_windows, skipped, opts)


def _round_words(model, hidden, cross_kv, kept_rows, kept_windows, sizes, total: int, opts: Options) -> set[int]:
    """Words for the windows of a sequential round that were not skipped, each stream's seek and last speech moved
    after them; returns the windows dropped as hallucinations (``hallucination_silence_threshold``)."""
    skipped: set[int] = set()
    if not opts.word_timestamps:
        return skipped
    rows = [r[0] for r in kept_rows]
    index = torch.tensor(rows, dtype=torch.long, device=hidden.device)
    # sequential: each window starts from its stream's last speech (the attach step's own is not kept)
    starts = [r[1].last_speech for r in kept_rows]
    _add_words(model, hidden.index_select(0, index), kept_windows, [sizes[r] for r in rows],
               [r[1].sot_sequence for r in kept_rows], opts, starts, list(range(len(rows))),
               take_rows(cross_kv, rows, total))  # fmt: skip
    for k, ((_, s, previous_seek, _, single_ending, time_offset), segments) in enumerate(zip(kept_rows, kept_windows)):
        if not single_ending:
            end = _last_end(segments)
            if end is not None and end > time_offset:
                s.seek = round(end * FRAMES_PER_SECOND)
        if opts.hallucination_silence_threshold is not None:
            if _skip_hallucinations(s, segments, previous_seek, time_offset, opts.hallucination_silence_threshold):
                skipped.add(k)
                continue
        end = _last_end(segments)
        if end is not None:
            s.last_speech = end
    return skipped


def _keep_segments(text, kept_rows, kept_windows, skipped: set[int], opts: Options) -> int:
    """The segments of a sequential round's windows added to their streams (and their text to the prompt's
    source); returns the frames the streams moved on."""
    moved = 0
    for k, ((_, s, previous_seek, result, _, _), segments) in enumerate(zip(kept_rows, kept_windows)):
        if k in skipped:
            moved += s.seek - previous_seek
            continue
        for seg in segments:
            tokens = seg.tokens
            decoded = text.decode(tokens)
            if seg.start == seg.end or not decoded.strip():
                continue
            s.tokens.extend(tokens)
            s.segments.append(
                Segment(
                    seg.start,
                    seg.end,
                    decoded,
                    tokens,
                    len(s.segments) + 1,
                    previous_seek,
                    result.avg_logprob,
                    result.compression_ratio,
                    result.no_speech_prob,
                    result.temperature,
                    seg.words if opts.word_timestamps else None,
                )  # fmt: skip
            )
        if not opts.condition_on_previous_text or result.temperature > opts.prompt_reset_on_temperature:
            s.reset_since = len(s.tokens)
        moved += min(s.content_frames, s.seek) - previous_seek
    return moved


def _last_end(segments: list[WindowSegment]) -> float | None:
    """The end of the last word, or of the last segment where no segment has words."""
    for seg in reversed(segments):
        if seg.words:
            return seg.words[-1].end
    return segments[-1].end if segments else None


_PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"


def _anomaly(seg: WindowSegment | None) -> bool:
    """A segment whose first words are improbable, very short or very long: a likely hallucination."""
    if seg is None or not seg.words:
        return False
    words = [w for w in seg.words if w.word not in _PUNCTUATION][:8]
    score = 0.0
    for w in words:
        duration = w.end - w.start
        score += 1.0 if w.probability < 0.15 else 0.0
        score += (0.133 - duration) * 15 if duration < 0.133 else 0.0
        score += duration - 2.0 if duration > 2.0 else 0.0
    return score >= 3 or score + 0.01 >= len(words)


def _skip_hallucinations(s: _Stream, segments: list[WindowSegment], previous_seek: int, time_offset: float,
                         threshold: float) -> bool:  # fmt: skip
    """faster-whisper's ``hallucination_silence_threshold``: a likely hallucination after a long silence is
    skipped (the window is decoded again after the silence). True: drop the whole window's output."""
    with_words = [seg for seg in segments if seg.words]
    if with_words and _anomaly(with_words[0]):
        gap = with_words[0].start - time_offset
        if gap > threshold:
            s.seek = previous_seek + round(gap * FRAMES_PER_SECOND)
            return True
    window_end = (previous_seek + WINDOW_FRAMES) / FRAMES_PER_SECOND
    duration = s.content_frames / FRAMES_PER_SECOND
    last_end = s.last_speech
    for i, seg in enumerate(segments):
        if not seg.words:
            continue
        if _anomaly(seg):
            following = next((x for x in segments[i + 1 :] if x.words), None)
            next_start = (
                following.words[0].start if following is not None else time_offset + _window_seconds(s, previous_seek)
            )
            before = seg.start - last_end > threshold or seg.start < threshold or seg.start - time_offset < 2.0
            after = next_start - seg.end > threshold or _anomaly(following) or window_end - seg.end < 2.0
            if before and after:
                s.seek = round(max(time_offset + 1, seg.start) * FRAMES_PER_SECOND)
                if duration - seg.end < threshold:
                    s.seek = s.content_frames
                del segments[i:]
                break
        last_end = seg.end
    return False


def _window_seconds(s: _Stream, previous_seek: int) -> float:
    """The decoded window's duration in seconds."""
    return min(WINDOW_FRAMES, s.content_frames - previous_seek) / FRAMES_PER_SECOND


def _language(model, sot_sequence: list[int]) -> str:
    if len(sot_sequence) < 2:
        return "en"
    names = {i: code for code, i in model.whisper_text.language_ids().items()}
    return names.get(sot_sequence[1], "en")


@dataclass
class _Chunk:
    input: int
    audio: np.ndarray
    offset: float  # seconds into the input's speech-only time
    duration: float


def batched(model, waves: list[np.ndarray], opts: Options, sot_sequences: list[list[int]], batch_size: int,
            vad: VadOptions | None, progress: bool, hooks: RowHooks):  # fmt: skip
    """faster-whisper's ``BatchedInferencePipeline`` over all ``waves``: per wave its segments, and its speech
    chunks (None without VAD) for mapping times back."""
    text = model.whisper_text
    chunks: list[_Chunk] = []
    speech: list[list[SpeechChunk] | None] = []
    step = audio_io.CHUNK_SAMPLES
    for i, wave in enumerate(waves):
        if vad is not None:
            found = speech_timestamps(wave, vad)
            pieces, meta = collect_chunks(wave, found, max_duration=30.0)
            speech.append(found)
            chunks += [_Chunk(i, p, m.offset, m.duration) for p, m in zip(pieces, meta) if len(p)]
        else:
            speech.append(None)
            starts = range(0, len(wave), step) if len(wave) else []
            chunks += [_Chunk(i, wave[a : a + step], a / audio_io.SAMPLE_RATE,
                              min(step, len(wave) - a) / audio_io.SAMPLE_RATE) for a in starts]  # fmt: skip
    opts = Options(**{**opts.__dict__, "temperatures": opts.temperatures[:1], "condition_on_previous_text": False})
    previous = [] if opts.initial_prompt is None else (
        text.encode(opts.initial_prompt) if isinstance(opts.initial_prompt, str) else list(opts.initial_prompt)
    )  # fmt: skip
    per_input: list[list[Segment]] = [[] for _ in waves]
    last_speech = [0.0 for _ in waves]
    with progress_bar(progress and len(chunks) > 1, len(chunks), "chunk", "transcribe") as bar:
        for b in range(0, len(chunks), batch_size):
            gone = hooks.lost()
            batch = [c for c in chunks[b : b + batch_size] if c.input not in gone]
            if not batch:
                continue
            feats = torch.stack([
                audio_io.window_features(audio_io.log_mel_long(c.audio, model.n_mels)[:, :-1], 0, WINDOW_FRAMES)
                for c in batch
            ])  # fmt: skip
            hidden, _ = model.encode(feats, None)
            cross_kv = model.cross_kv(hidden)
            prompts = [window_prompt(text, sot_sequences[c.input], previous, opts, None, model.spec.max_positions)
                       for c in batch]  # fmt: skip
            results = with_fallback(model, hidden, prompts, opts, 0, hooks.select([c.input for c in batch]), cross_kv)
            windows, sizes = [], []
            for c, result in zip(batch, results):
                size = int(math.ceil(c.duration) * FRAMES_PER_SECOND)
                segments, _, _ = split_by_timestamps(text, result.tokens, c.offset, size, c.duration, 0)
                for seg in segments:
                    seg.seek = int(c.offset * FRAMES_PER_SECOND)
                windows.append(segments)
                sizes.append(size)
            if opts.word_timestamps:
                _add_words(model, hidden, windows, sizes, [sot_sequences[c.input] for c in batch], opts,
                           last_speech, [c.input for c in batch], cross_kv)  # fmt: skip
            for c, result, segments in zip(batch, results, windows):
                for seg in segments:
                    decoded = text.decode(seg.tokens)
                    out = per_input[c.input]
                    out.append(
                        Segment(
                            round(seg.start, 3),
                            round(seg.end, 3),
                            decoded,
                            seg.tokens,
                            len(out) + 1,
                            seg.seek,
                            result.avg_logprob,
                            compression_ratio(decoded),
                            result.no_speech_prob,
                            result.temperature,
                            seg.words if opts.word_timestamps else None,
                        )  # fmt: skip
                    )
            bar.update(len(batch))
    return per_input, speech


def vad_filter(waves: list[np.ndarray], vad: VadOptions) -> tuple[list[np.ndarray], list[list[SpeechChunk]]]:
    """Each wave's speech only (faster-whisper's sequential VAD filter), and its speech chunks."""
    kept, found = [], []
    for wave in waves:
        chunks = speech_timestamps(wave, vad)
        pieces, _ = collect_chunks(wave, chunks)
        kept.append(np.concatenate(pieces).astype(np.float32))
        found.append(chunks)
    return kept, found


def finish(segments: list[Segment], wave: np.ndarray, chunks, language, language_probability, all_probs,
           kept_seconds: float | None) -> Transcription:  # fmt: skip
    if chunks is not None:
        restore_times(segments, chunks)
    text = "".join(s.text for s in segments).strip()
    return Transcription(text, segments, len(wave) / audio_io.SAMPLE_RATE, language, language_probability,
                         all_probs, kept_seconds)  # fmt: skip
