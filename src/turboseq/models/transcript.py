"""Transcription results: segments with times, and their SRT / WebVTT subtitles."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    tokens: list[int] = field(default_factory=list, repr=False)


@dataclass
class Transcription:
    text: str
    segments: list[Segment]
    duration: float  # seconds of audio
    language: str | None = None

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "duration": round(self.duration, 3),
            "segments": [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in self.segments],
        }


def format_timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_srt(result: Transcription) -> str:
    blocks = []
    for i, seg in enumerate(result.segments, 1):
        blocks.append(f"{i}\n{format_timestamp(seg.start, ',')} --> {format_timestamp(seg.end, ',')}\n{seg.text}\n")
    return "\n".join(blocks)


def to_vtt(result: Transcription) -> str:
    blocks = ["WEBVTT\n"]
    for seg in result.segments:
        blocks.append(f"{format_timestamp(seg.start, '.')} --> {format_timestamp(seg.end, '.')}\n{seg.text}\n")
    return "\n".join(blocks)
