"""Live transcription: audio arrives in pieces of any size, words leave as soon as they are settled.

Each decode reads the audio buffered since the last trim (one Whisper window at most), prompted with the text
confirmed before it. A word is confirmed when two consecutive decodes agree on it (local agreement, as in
whisper_streaming); the disagreeing tail is reported as partial. Once the buffer is long, it is cut at the end of
a segment whose words are all confirmed, so each decode's cost stays bounded however long the stream runs.
``step`` decodes the buffers of several streams in one batch (the server's concurrent streams).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from turboseq.formats.audio import SAMPLE_RATE
from turboseq.generation.batching import RowHooks
from turboseq.speech import longform
from turboseq.speech.decoding import Options
from turboseq.speech.transcript import Segment, Word

_PUNCTUATION = re.compile(r"[^\w']+")
_CONTEXT_WORDS = 100  # confirmed words kept for the prompt and for removing repeats at the buffer's start


@dataclass
class LiveUpdate:
    """What one decode settled: ``confirmed`` words (new, in order, never repeated) and the ``partial`` tail
    after them (the current guess, replaced by the next update's). Times are seconds from the stream's start."""

    confirmed: list[Word] = field(default_factory=list)
    partial: list[Word] = field(default_factory=list)
    audio_seconds: float = 0.0  # stream audio received when the decode started

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
    trim_seconds: float = 15.0  # a buffer longer than this is cut at a confirmed segment's end
    max_buffer_seconds: float = 28.0  # hard limit: past it, words 5 s old are confirmed and the buffer cut
    silence_keep_seconds: float = 2.0  # a buffer without words keeps only its last seconds

    def check(self) -> None:
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
        self.offset = 0.0  # seconds of stream before the buffer
        self.received = 0  # samples of the whole stream
        self.decoded = 0  # samples of the buffer at its last decode
        self.hypothesis: list[Word] = []  # the last decode's unconfirmed words
        self.last_end = 0.0  # end of the last confirmed word
        self.finished = False

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
        self.audio = np.concatenate([self.audio, samples])
        self.received += samples.size

    @property
    def due(self) -> bool:
        """Enough new audio for another decode."""
        return len(self.audio) - self.decoded >= self.live.min_chunk_seconds * SAMPLE_RATE

    @property
    def buffered_seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    # -- decoding
    def process(self) -> LiveUpdate:
        """Decode the buffer now (alone) and settle what two decodes agree on."""
        return step(self.model, [self])[0]

    def finish(self) -> LiveUpdate:
        """The stream has ended: decode what is left and confirm every remaining word."""
        return step(self.model, [self], final=True)[0]

    def prompt(self) -> list[int]:
        return self.context[-(self.model.spec.max_positions // 2 - 1) :]

    def settle(self, segments: list[Segment], final: bool) -> LiveUpdate:
        """Settle one decode of the buffer (``segments``, times within the buffer)."""
        update = LiveUpdate(audio_seconds=self.received / SAMPLE_RATE)
        self.decoded = len(self.audio)
        words = [replace(w, start=w.start + self.offset, end=w.end + self.offset)
                 for seg in segments for w in seg.words or []]  # fmt: skip
        new = self._unseen(words)
        agreed = new if final else self._agreed(new)
        self.hypothesis = new[len(agreed) :]
        self._confirm(agreed, update)
        ends = [seg.end + self.offset for seg in segments]
        self._trim(ends, update, bool(words))
        update.partial = list(self.hypothesis)
        if final:
            self.finished = True
            self.audio = np.zeros(0, dtype=np.float32)
        return update

    def _unseen(self, words: list[Word]) -> list[Word]:
        """The decode's words past the confirmed ones, a repeat of the last confirmed words at its start removed."""
        new = [w for w in words if w.start > self.last_end - 0.1]
        if new and self.recent and abs(new[0].start - self.last_end) < 1.0:
            for n in range(min(5, len(new), len(self.recent)), 0, -1):
                if [_norm(w) for w in self.recent[-n:]] == [_norm(w) for w in new[:n]]:
                    return new[n:]
        return new

    def _agreed(self, new: list[Word]) -> list[Word]:
        """The longest start of ``new`` that the previous decode also had (the newer words kept)."""
        count = 0
        for old, word in zip(self.hypothesis, new):
            if _norm(old) != _norm(word):
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

    def _trim(self, segment_ends: list[float], update: LiveUpdate, heard: bool) -> None:
        """Cut the buffer where it can go: at a confirmed segment's end once long, everything but its last
        seconds where nothing was heard, and at the hard limit whatever has waited 5 s."""
        seconds = self.buffered_seconds
        end = self.offset + seconds
        cut = None
        if not heard and not self.hypothesis and seconds > 2 * self.live.silence_keep_seconds:
            cut = end - self.live.silence_keep_seconds
        elif seconds > self.live.trim_seconds:
            done = [t for t in segment_ends if self.offset < t <= self.last_end + 0.01]
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
        samples = int(round((time - self.offset) * SAMPLE_RATE))
        if samples <= 0:
            return
        text = self.model.whisper_text
        first = self.confirmed - len(self.recent)  # the number of recent[0]
        self.prompted = max(self.prompted, first)
        for w in self.recent[self.prompted - first :]:
            if w.end > time + 0.01:
                break
            self.context += text.encode(w.word)
            self.prompted += 1
        self.context = self.context[-(self.model.spec.max_positions // 2 - 1) :]
        self.audio = self.audio[samples:]
        self.decoded = max(0, self.decoded - samples)
        self.offset = time


def step(model, streams: list[LiveTranscriber], final: bool = False) -> list[LiveUpdate]:
    """One decode of each stream's buffer, all in one batch (streams with equal options together)."""
    updates: list[LiveUpdate | None] = [None] * len(streams)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(streams):
        if len(s.audio) == 0:
            updates[i] = s.settle([], final)
        else:
            groups.setdefault(id(s.opts), []).append(i)
    for rows in groups.values():
        batch = [streams[i] for i in rows]
        segments = longform.sequential(
            model,
            [s.audio for s in batch],
            batch[0].opts,
            [s.sot_sequence for s in batch],
            len(batch),
            False,
            RowHooks(None),
            prompts=[s.prompt() for s in batch],
        )
        for i, s, segs in zip(rows, batch, segments):
            updates[i] = s.settle(segs, final)
    return updates  # type: ignore[return-value]
