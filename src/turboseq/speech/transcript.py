"""Transcription results: segments with times (and words), and their SRT / WebVTT subtitles.

The fields follow faster-whisper's ``Segment``, ``Word`` and ``TranscriptionInfo``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Word:
    start: float  # seconds from the start of the audio
    end: float
    word: str  # with its leading space, as the tokenizer decodes it
    probability: float

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "word": self.word,
                "probability": round(float(self.probability), 4)}  # fmt: skip


@dataclass
class WindowSegment:
    """A segment of one decoded window before it is numbered and scored: where its window starts (mel frame),
    its times (seconds from the start of the audio), its tokens, and its words once aligned."""

    seek: int
    start: float
    end: float
    tokens: list[int]
    words: list[Word] | None = None


@dataclass
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    tokens: list[int] = field(default_factory=list, repr=False)
    id: int = 0
    seek: int = 0  # the mel frame its window started at
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    words: list[Word] | None = None

    def to_dict(self) -> dict:
        out = {
            "id": self.id,
            "seek": self.seek,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "tokens": list(self.tokens),
            "temperature": self.temperature,
            "avg_logprob": round(float(self.avg_logprob), 6),
            "compression_ratio": round(float(self.compression_ratio), 6),
            "no_speech_prob": round(float(self.no_speech_prob), 6),
        }
        if self.words is not None:
            out["words"] = [w.to_dict() for w in self.words]
        return out


@dataclass
class Transcription:
    text: str
    segments: list[Segment]
    duration: float  # seconds of audio
    language: str | None = None
    language_probability: float = 1.0
    all_language_probs: list[tuple[str, float]] | None = field(default=None, repr=False)
    duration_after_vad: float | None = None

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "language_probability": round(float(self.language_probability), 4),
            "duration": round(self.duration, 3),
            "duration_after_vad": round(
                self.duration if self.duration_after_vad is None else self.duration_after_vad, 3
            ),
            "segments": [s.to_dict() for s in self.segments],
        }


def format_timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _cues(result: Transcription, words: bool) -> list[tuple[float, float, str]]:
    """(start, end, text) per subtitle cue: one per segment, or one per word where the segments carry words."""
    if not words:
        return [(s.start, s.end, s.text.strip()) for s in result.segments]  # Whisper's text starts with a space
    cues = []
    for s in result.segments:
        if s.words is None:
            raise ValueError("word-level cues need word timestamps (word_timestamps=True)")
        cues.extend((w.start, w.end, w.word.strip()) for w in s.words)
    return cues


def to_srt(result: Transcription, words: bool = False) -> str:
    blocks = []
    for i, (start, end, text) in enumerate(_cues(result, words), 1):
        blocks.append(f"{i}\n{format_timestamp(start, ',')} --> {format_timestamp(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(result: Transcription, words: bool = False) -> str:
    blocks = ["WEBVTT\n"]
    for start, end, text in _cues(result, words):
        blocks.append(f"{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}\n{text}\n")
    return "\n".join(blocks)
