"""Live transcription: audio arrives in pieces of any size, words leave as soon as they are settled.

Each decode reads the audio buffered since the last cut (one Whisper window at most), prompted with the text
confirmed before it. A word is confirmed when two consecutive decodes agree on it (local agreement, as in
whisper_streaming); the disagreeing tail is reported as partial. The Silero VAD marks every 32 ms of the buffer
as speech or not: a buffer with no speech after its last confirmed word is not decoded (no work, and none of
Whisper's made-up words in silence), and once the buffer is long it is cut in a pause before which every word
is confirmed, so each decode's cost stays bounded however long the stream runs. ``step`` decodes the buffers of
several streams in one batch (the server's concurrent streams).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, replace

import numpy as np

from turboseq.formats.audio import HOP_LENGTH, SAMPLE_RATE
from turboseq.generation.batching import RowHooks
from turboseq.speech import longform
from turboseq.speech.decoding import Options, compression_ratio
from turboseq.speech.transcript import Segment, Word
from turboseq.speech.vad import FRAME, speech_probabilities

_PUNCTUATION = re.compile(r"[^\w']+")
_CONTEXT_WORDS = 100  # confirmed words kept for the prompt and for removing repeats at the buffer's start
_VAD_CONTEXT = 32  # frames (1 s) before new audio that the VAD's state warms up on
_AFTER_WORD = 0.3  # seconds heard after a word (in the earlier of two agreeing decodes) before it is confirmed
_AFTER_UNSURE = 1.0  # the same for a word Whisper gives a probability under _SURE
_SURE = 0.5
_TOKENS_PER_SECOND = 8  # text and timestamp tokens of fast speech, with room to spare
_PAUSE_FRAMES = 6  # a run of this many frames without speech (0.19 s) is a pause the buffer may be cut in
# short windows (``full_window=False``): the encoder reads the buffer and this much silence after it, in whole
# steps (few shapes), not Whisper's 30 s, at a third of the work per decode or less. The word error rate read
# 0.115 against 0.118 with full windows on the held-out recording (decodes at a fixed cost of 0.25 s), but
# 0.212 against 0.131 on the test recording's first ten sentences: a choice for load, not a default
_WINDOW_PADDING_FRAMES = 200
_WINDOW_STEP_FRAMES = 500


@dataclass
class LiveUpdate:
    """What one decode settled: ``confirmed`` words (new, in order, never repeated) and the ``partial`` tail
    after them (the current guess, replaced by the next update's). Times are seconds from the stream's start."""

    confirmed: list[Word] = field(default_factory=list)
    partial: list[Word] = field(default_factory=list)
    audio_seconds: float = 0.0  # stream audio received when the decode started
    speech_start: float | None = None  # the VAD's first speech in the buffer (stream seconds), if any
    silence_seconds: float = 0.0  # how long the buffer has been without speech at its end (VAD)
    turn_end: float | None = None  # where a pause of ``turn_silence_seconds`` after speech starts, if any

    @property
    def text(self) -> str:
        return "".join(w.word for w in self.confirmed)

    @property
    def partial_text(self) -> str:
        return "".join(w.word for w in self.partial)


@dataclass(frozen=True)
class LiveOptions:
    """How the stream is cut and when it is decoded."""

    min_chunk_seconds: float = 0.5  # new audio that makes a stream due for a decode
    trim_seconds: float = 6.0  # a buffer longer than this is cut in a pause (or at a segment's end)
    max_buffer_seconds: float = 28.0  # hard limit: past it, words 5 s old are confirmed and the buffer cut
    silence_keep_seconds: float = 1.0  # a buffer with nothing to confirm keeps only its last seconds
    vad_threshold: float = 0.5  # Silero speech probability above which a frame is speech
    full_window: bool = True  # the encoder reads Whisper's whole 30 s window (False: the buffer and 2 s after it)

    def check(self) -> None:
        if not isinstance(self.full_window, bool):
            raise ValueError(f"`full_window` must be True or False, got {self.full_window!r}")
        if not 0 < self.vad_threshold < 1:
            raise ValueError(f"`vad_threshold` must be in (0, 1), got {self.vad_threshold!r}")
        for name in ("min_chunk_seconds", "trim_seconds", "max_buffer_seconds", "silence_keep_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e6:
                raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}")
        if not self.trim_seconds < self.max_buffer_seconds <= 30:
            raise ValueError(
                f"`trim_seconds` ({self.trim_seconds}) must be below `max_buffer_seconds` "
                f"({self.max_buffer_seconds}), which is at most 30 (one Whisper window)"
            )


def _norm(word: Word) -> str:
    return _PUNCTUATION.sub("", word.word).lower()


def _letters(text: str) -> int:
    return len("".join(text.split()))


def _after_prefix(words: list[Word], letters: int) -> list[Word]:
    """``words`` without the first ones that spell ``letters`` letters (a word that only begins inside them,
    punctuation merged into the next word, is kept)."""
    seen = 0
    for k, w in enumerate(words):
        if seen >= letters:
            return words[k:]
        seen += _letters(w.word)
        if seen > letters:
            return words[k:]
    return []


class LiveTranscriber:
    """One live stream (made by ``SpeechModel.live``): ``append`` audio, ``process`` when ``due``, ``finish``
    at the end. Every word comes out exactly once, in a ``LiveUpdate``'s ``confirmed``."""

    def __init__(self, model, opts: Options, sot_sequence: list[int], prompt: list[int], live: LiveOptions):
        self.model = model
        self.opts = opts  # word timestamps on, initial_prompt resolved into ``prompt``
        self.sot_sequence = sot_sequence
        self.live = live
        self.context = list(prompt)  # prompt tokens before the buffer
        self.recent: list[Word] = []  # the last confirmed words
        self.confirmed = 0  # words confirmed so far
        self.prompted = 0  # of them, the ones cut from the buffer into the prompt
        self.audio = np.zeros(0, dtype=np.float32)  # the buffer: the stream from ``offset`` on
        self.speech = np.zeros(0, dtype=bool)  # VAD: whether each whole frame of the buffer is speech
        self.offset = 0.0  # seconds of stream before the buffer
        self.received = 0  # samples of the whole stream
        self.decoded = 0  # samples of the buffer at its last decode
        self.hypothesis: list[Word] = []  # the last decode's unconfirmed words
        self.last_end = 0.0  # end of the last confirmed word
        self.finished = False
        self.lock = threading.Lock()
        self.epoch = 0  # ``clear`` count
        self.flush_until: float | None = None  # the next flush confirms and drops only what comes before this
        self.turn_silence_seconds: float | None = None  # the pause that ends a turn (``LiveUpdate.turn_end``)
        self.unforced = False  # the next decode has no forced prefix (the last one looped)

    # -- input
    def append(self, samples) -> None:
        """Add 16 kHz mono audio: float samples in [-1, 1], or int16 PCM (array or bytes)."""
        if self.finished:
            raise ValueError("this live stream is finished: start another")
        if isinstance(samples, (bytes, bytearray, memoryview)):
            if len(samples) % 2:
                raise ValueError(f"PCM16 audio comes in whole 2-byte samples, got {len(samples)} bytes")
            samples = np.frombuffer(samples, dtype="<i2")
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"live audio is mono: a 1-D array of samples, got shape {samples.shape}")
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        elif samples.dtype.kind != "f":
            raise ValueError(f"live audio is float samples or int16 PCM, got {samples.dtype}")
        samples = samples.astype(np.float32, copy=False)
        if samples.size and not (np.isfinite(samples).all() and np.abs(samples).max() <= 4.0):
            raise ValueError("live audio must be finite samples in [-1, 1]")
        with self.lock:  # the engine thread cuts the buffer while the server's loop appends to it
            self.audio = np.concatenate([self.audio, samples])
        self.received += samples.size

    @property
    def due(self) -> bool:
        """Enough new audio for another decode."""
        return len(self.audio) - self.decoded >= self.live.min_chunk_seconds * SAMPLE_RATE

    @property
    def buffered_seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def _mark_speech(self) -> None:
        """Run the VAD over the buffer's frames not marked yet (with a second before them for its state)."""
        audio = self.audio
        done, frames = len(self.speech), len(audio) // FRAME
        if frames <= done:
            return
        start = max(0, done - _VAD_CONTEXT)
        probs = speech_probabilities(audio[start * FRAME : frames * FRAME])[done - start :]
        self.speech = np.concatenate([self.speech, probs[: frames - done] > self.live.vad_threshold])

    def heard(self) -> bool:
        """Whether the buffer has speech after the last confirmed word (else a decode has nothing to add)."""
        self._mark_speech()
        first = max(0, int((self.last_end - self.offset) * SAMPLE_RATE) // FRAME)
        return bool(self.speech[first:].any())

    # -- decoding
    def process(self) -> LiveUpdate:
        """Decode the buffer now (alone) and settle what two decodes agree on."""
        return step(self.model, [self])[0]

    def flush(self) -> LiveUpdate:
        """Decode what is buffered and confirm every word heard so far (the end of a turn); the stream goes on."""
        return step(self.model, [self], final=True)[0]

    def finish(self) -> LiveUpdate:
        """The stream has ended: ``flush``, and no more audio is taken."""
        update = self.flush()
        self.finished = True
        return update

    def clear(self, upto: int | None = None) -> None:
        """Drop the buffered audio (up to the stream's sample ``upto``; None: all) and the words not confirmed
        yet (a decode running meanwhile is ignored)."""
        with self.lock:
            upto = self.received if upto is None else min(upto, self.received)
            start = int(round(self.offset * SAMPLE_RATE))
            self.epoch += 1
            self.audio = self.audio[max(0, upto - start) :]
            self.speech = np.zeros(0, dtype=bool)
            self.offset, self.decoded, self.hypothesis = upto / SAMPLE_RATE, 0, []

    def _silence_seconds(self) -> float:
        """How long the buffer has been without speech at its end (VAD)."""
        self._mark_speech()
        speaking = np.flatnonzero(self.speech)
        last = speaking[-1] + 1 if speaking.size else 0
        return (len(self.speech) - last) * FRAME / SAMPLE_RATE

    def _speech_start(self) -> float | None:
        """The stream time of the buffer's first speech (VAD), None where it has none."""
        self._mark_speech()
        speaking = np.flatnonzero(self.speech)
        return self.offset + speaking[0] * FRAME / SAMPLE_RATE if speaking.size else None

    def prompt(self, prefix: int = 0) -> list[int]:
        """The confirmed text before the buffer (tokens), what a ``prefix`` of that many tokens leaves room for:
        the prefix takes the oldest context's place, so that a stream's prompt keeps one length (and streams
        with long histories share the decoder's batches)."""
        return self.context[-(self.model.spec.max_positions // 2 - 1 - prefix) :]

    def _unprompted(self) -> list[Word]:
        """The recent confirmed words not yet moved into the prompt (``prompted`` counts those that were)."""
        first = self.confirmed - len(self.recent)  # the number of recent[0]
        return self.recent[max(0, self.prompted - first) :]

    def prefix(self) -> tuple[list[int] | None, int]:
        """The words confirmed since the buffer's start, as the tokens a decode is forced to begin with
        (``<|0.00|>`` and their text, as faster-whisper's ``prefix``; a timestamp at the first word's start read
        no better), and the letters of that text; (None, 0) where there are none (or too many: they are decoded
        again)."""
        words = [w for w in self._unprompted() if w.start >= self.offset - 0.05]
        if self.unforced or not words:
            self.unforced = False
            return None, 0
        text = self.model.whisper_text
        said = "".join(w.word for w in words).strip()
        tokens = text.encode(" " + said)
        if len(tokens) >= self.model.spec.max_positions // 4:
            return None, 0
        return [text.timestamp_begin] + tokens, _letters(said)

    def settle(self, segments: list[Segment] | None, final: bool, decoded: int = 0, epoch: int = 0,
               prefix_letters: int = 0) -> LiveUpdate:  # fmt: skip
        """Settle one decode of the buffer's first ``decoded`` samples (``segments``, times within the buffer;
        None: not decoded, nothing was heard since the last decode). ``final``: confirm every word and drop
        the decoded audio. A decode of a buffer cleared since (``epoch``) settles nothing. The decode's first
        words that spell ``prefix_letters`` letters are its forced prefix (``prefix``), confirmed already."""
        update = LiveUpdate(audio_seconds=self.received / SAMPLE_RATE)
        if epoch != self.epoch:
            return update
        spoken: list[Word] = []
        if segments is not None:
            words = [replace(w, start=w.start + self.offset, end=w.end + self.offset)
                     for seg in segments for w in seg.words or []]  # fmt: skip
            spoken = self._spoken(_after_prefix(words, prefix_letters))
            if self._looping(spoken):
                # a repetition loop ("Thank you very much." over and over) is settled as no decode; the prompt
                # and the forced prefix it fed on are left out of the next decode, and the words of the decode
                # before it wait for two new decodes to agree (a final decode confirms them: the rest is lost)
                segments, self.context, self.unforced = None, [], True
                if not final:
                    self.hypothesis = []
        ends: list[float] = []
        previous_end, self.decoded = self.offset + self.decoded / SAMPLE_RATE, decoded
        if segments is None:
            new = self.hypothesis if final else []
        else:
            new = self._unseen(spoken)
            ends = [seg.end + self.offset for seg in segments]
        until = self.offset + decoded / SAMPLE_RATE
        if final and self.flush_until is not None:
            until, self.flush_until = min(until, self.flush_until), None
        turn_end = self._turn_end()
        if segments is not None or final:
            agreed = [w for w in new if w.start < until] if final else self._agreed(new, previous_end)
            if not final and turn_end is not None:  # a turn's words are confirmed in its own flush
                agreed = [w for w in agreed if w.start < turn_end]
            self.hypothesis = new[len(agreed) :]
            self._confirm(agreed, update)
        if final:
            self._cut(until)
            self.decoded = 0  # what is left after a turn's end is heard again as the next turn's start
        else:
            self._trim(ends, update)
        update.partial = list(self.hypothesis)
        update.speech_start, update.silence_seconds = self._speech_start(), self._silence_seconds()
        update.turn_end = turn_end if not final else self._turn_end()
        return update

    def _looping(self, words: list[Word]) -> bool:
        """Whether a decode's new words (past its forced prefix, where the VAD hears speech) compress like a
        loop: over ``transcribe``'s ``compression_ratio_threshold`` (2.4)."""
        threshold = self.opts.compression_ratio_threshold
        return threshold is not None and compression_ratio("".join(w.word for w in words)) > threshold

    def _turn_end(self) -> float | None:
        """Where the buffer's first pause of ``turn_silence_seconds`` after speech starts (stream seconds)."""
        if self.turn_silence_seconds is None:
            return None
        need = max(1, int(self.turn_silence_seconds * SAMPLE_RATE / FRAME))
        starts = [a for a, b in self._quiet_runs() if b - a >= need]
        return self.offset + starts[0] * FRAME / SAMPLE_RATE if starts else None

    def _quiet_runs(self) -> list[tuple[int, int]]:
        """The buffer's runs of frames without speech that follow speech: (first frame, frame after)."""
        self._mark_speech()
        padded = np.concatenate([[True], self.speech, [True]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))  # pairs: a run's first frame, the frame after it
        return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if a > 0]

    def _spoken(self, words: list[Word]) -> list[Word]:
        """The words where the VAD hears speech (Whisper makes words up in silence: "Thank you.")."""
        self._mark_speech()
        seconds = FRAME / SAMPLE_RATE
        kept = []
        for w in words:
            first = max(0, int((w.start - self.offset - 0.05) / seconds))
            last = int((w.end - self.offset + 0.05) / seconds) + 1
            if self.speech[first:last].any() or last > len(self.speech):  # the buffer's unmarked tail counts
                kept.append(w)
        return kept

    def _unseen(self, words: list[Word]) -> list[Word]:
        """The decode's words past the confirmed ones, a repeat of the last confirmed words at its start removed."""
        new = [w for w in words if w.start > self.last_end - 0.1]
        if new and self.recent and abs(new[0].start - self.last_end) < 1.0:
            for n in range(min(5, len(new), len(self.recent)), 0, -1):
                if [_norm(w) for w in self.recent[-n:]] == [_norm(w) for w in new[:n]]:
                    return new[n:]
        return new

    def _agreed(self, new: list[Word], previous_end: float) -> list[Word]:
        """The longest start of ``new`` that the previous decode also had, each word heard to its end and a
        little after in that decode (a word cut off at the end of the audio is often misheard the same way
        twice); the newer words kept."""
        count = 0
        for old, word in zip(self.hypothesis, new):
            after = _AFTER_WORD if min(old.probability, word.probability) >= _SURE else _AFTER_UNSURE
            if _norm(old) != _norm(word) or old.end > previous_end - after:
                break
            count += 1
        return new[:count]

    def _confirm(self, words: list[Word], update: LiveUpdate) -> None:
        if not words:
            return
        update.confirmed += words
        self.confirmed += len(words)
        self.recent = (self.recent + words)[-_CONTEXT_WORDS:]
        self.last_end = max(self.last_end, words[-1].end)

    def _pauses(self) -> list[tuple[float, float]]:
        """The buffer's pauses: (start, middle) in stream seconds."""
        seconds = FRAME / SAMPLE_RATE
        return [
            (self.offset + a * seconds, self.offset + (a + b) / 2 * seconds)
            for a, b in self._quiet_runs()
            if b - a >= _PAUSE_FRAMES
        ]

    def _trim(self, segment_ends: list[float], update: LiveUpdate) -> None:
        """Cut the buffer where it can go: everything but its last second when nothing is left to confirm; once
        long, in the last pause (else at the last segment's end) before which every word is confirmed; at the
        hard limit, after confirming whatever has waited 5 s."""
        seconds = self.buffered_seconds
        end = self.offset + seconds
        cut = None
        if not self.hypothesis and not self.heard() and seconds > 2 * self.live.silence_keep_seconds:
            cut = end - self.live.silence_keep_seconds
        elif seconds > self.live.trim_seconds:
            # a pause that starts before the last confirmed word's end (give or take its timing) holds no word
            # that is not confirmed before its middle
            done = [middle for start, middle in self._pauses() if start <= self.last_end + 0.1]
            done = done or [t for t in segment_ends if self.offset < t <= self.last_end + 0.01]
            cut = max(done) if done else None
        if seconds > self.live.max_buffer_seconds and cut is None:
            old = [w for w in self.hypothesis if w.end <= end - 5.0]
            self.hypothesis = self.hypothesis[len(old) :]
            self._confirm(old, update)
            cut = self.last_end if self.last_end > self.offset else end - self.live.trim_seconds
        if cut is not None:
            self._cut(min(cut, end))

    def _cut(self, time: float) -> None:
        """Drop the buffer's audio before ``time``; the confirmed words before it become prompt."""
        frames = int((time - self.offset) * SAMPLE_RATE) // FRAME  # whole VAD frames: the marks stay aligned
        if frames <= 0:
            return
        samples = frames * FRAME
        time = self.offset + samples / SAMPLE_RATE
        text = self.model.whisper_text
        self.prompted = max(self.prompted, self.confirmed - len(self.recent))  # none before recent[0]
        for w in self._unprompted():
            if w.end > time + 0.01:
                break
            self.context += text.encode(w.word)
            self.prompted += 1
        self.context = self.context[-(self.model.spec.max_positions // 2 - 1) :]
        with self.lock:
            self.audio = self.audio[samples:]
        self.speech = self.speech[frames:]
        self.decoded = max(0, self.decoded - samples)
        self.offset = time


def _window_frames(samples: int, live: LiveOptions) -> int:
    """The mel frames a decode's encoder reads: the buffer (``samples``) and some silence in whole steps, or
    Whisper's 30 s."""
    need = samples // HOP_LENGTH + 1 + _WINDOW_PADDING_FRAMES
    if live.full_window or need >= longform.WINDOW_FRAMES:
        return longform.WINDOW_FRAMES
    return -(-need // _WINDOW_STEP_FRAMES) * _WINDOW_STEP_FRAMES


def step(model, streams: list[LiveTranscriber], final: bool = False) -> list[LiveUpdate]:
    """One decode of each stream's buffer, all in one batch (streams with equal options and window together,
    so that a stream's words do not depend on the others); a stream with no speech since its last confirmed
    word is settled without a decode."""
    updates: list[LiveUpdate | None] = [None] * len(streams)
    groups: dict[tuple[str, int], list[int]] = {}
    snapshot = []  # what each decode reads (audio may arrive meanwhile), and the ``clear`` count it belongs to
    for s in streams:
        with s.lock:
            snapshot.append((s.audio, s.epoch))
    buffers = [audio for audio, _ in snapshot]
    for i, s in enumerate(streams):
        if s.heard():  # each stream holds its own ``Options``: equal ones share a batch
            groups.setdefault((repr(s.opts), _window_frames(len(buffers[i]), s.live)), []).append(i)
        else:
            updates[i] = s.settle(None, final, len(buffers[i]), snapshot[i][1])
    for (_, frames), rows in groups.items():
        batch = [streams[i] for i in rows]
        audio = [buffers[i] for i in rows]
        epochs = [snapshot[i][1] for i in rows]
        # a bound on the tokens of one decode, by its window (the longest buffer where it is Whisper's 30 s): a
        # repetition loop costs a fraction of a second
        longest = max(len(a) for a in audio) / SAMPLE_RATE
        if frames < longform.WINDOW_FRAMES:
            longest = frames / longform.FRAMES_PER_SECOND
        cap = min(int(_TOKENS_PER_SECOND * longest) + 16, model.spec.max_positions // 2 - 8)  # prompt: the other half
        opts = batch[0].opts
        opts = replace(opts, max_new_tokens=min(cap, opts.max_new_tokens or cap))
        # the words confirmed since the buffer's start are forced, not decoded again
        prefixes = [s.prefix() for s in batch]
        prompts = [s.prompt(len(tokens or ())) for s, (tokens, _) in zip(batch, prefixes)]
        segments = longform.sequential(model, audio, opts, [s.sot_sequence for s in batch], len(batch), False,
                                       RowHooks(None), prompts=prompts, once=True, window_frames=frames,
                                       prefixes=[tokens for tokens, _ in prefixes], pad_prompts=True)  # fmt: skip
        for i, s, segs, wave, epoch, (_, letters) in zip(rows, batch, segments, audio, epochs, prefixes):
            updates[i] = s.settle(segs, final, len(wave), epoch, letters)
    return updates  # type: ignore[return-value]
