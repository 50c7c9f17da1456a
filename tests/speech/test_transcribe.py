"""transcribe() against faster-whisper on the real tiny.en (CTranslate2 directory, float32) and espeak-ng speech.

Both engines read the same directory and the same samples; faster-whisper's options and defaults are
turboseq's, so each call below passes the same options to both. Segments (text, start, end) must be equal;
word times within 0.1 s. VAD is compared apart: turboseq runs the silero-vad package's Silero network,
faster-whisper bundles another export of it, so chunk edges differ by a frame or two.
"""

import re

import numpy as np
import pytest

from turboseq.speech import vad as vad_module

OPTIONS = [
    {},  # beam 5, timestamps, temperature fallback, conditioned on the previous text
    {"beam_size": 1},
    {"without_timestamps": True},
    {"beam_size": 1, "without_timestamps": True},
]


def _segments(segments):
    return [(round(s.start, 2), round(s.end, 2), s.text) for s in segments]


def _words(segments):
    return [(w.word, w.start, w.end) for s in segments for w in s.words]


def _close(mine, theirs, tolerance=0.1):
    """Words of the same text whose start and end are within ``tolerance`` seconds."""
    return sum(
        1
        for a, b in zip(mine, theirs)
        if a[0] == b[0] and abs(a[1] - b[1]) <= tolerance and abs(a[2] - b[2]) <= tolerance
    )


@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "greedy", "beam5-no-ts", "greedy-no-ts"])
def test_segments_match_faster_whisper(whisper, faster_whisper, clips24, options):
    results = whisper.transcribe([str(c) for c in clips24], **options)  # all clips share batches
    for clip, result in zip(clips24, results):
        segments, info = faster_whisper.transcribe(str(clip), **options)
        segments = list(segments)
        assert _segments(result.segments) == _segments(segments), clip.name
        got = [(s.avg_logprob, s.no_speech_prob, s.compression_ratio, s.temperature) for s in result.segments]
        want = [(s.avg_logprob, s.no_speech_prob, s.compression_ratio, s.temperature) for s in segments]
        np.testing.assert_allclose(np.array(got), np.array(want), atol=2e-3)
        assert [s.tokens for s in result.segments] == [s.tokens for s in segments]
        assert result.language == info.language and result.duration == pytest.approx(info.duration)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_word_timestamps_match_faster_whisper(whisper, faster_whisper, clips24, beam_size):
    results = whisper.transcribe([str(c) for c in clips24], beam_size=beam_size, word_timestamps=True)
    mine, theirs = [], []
    for clip, result in zip(clips24, results):
        segments = list(faster_whisper.transcribe(str(clip), beam_size=beam_size, word_timestamps=True)[0])
        assert _segments(result.segments) == _segments(segments), clip.name
        mine += _words(result.segments)
        theirs += _words(segments)
        probs = [w.probability for s in result.segments for w in s.words]
        np.testing.assert_allclose(probs, [w.probability for s in segments for w in s.words], atol=1e-3)
    assert [w[0] for w in mine] == [w[0] for w in theirs]
    assert _close(mine, theirs) >= 0.95 * len(theirs)


def test_long_recording_matches_faster_whisper(whisper, faster_whisper, recording):
    """3.5 minutes, sequential: windows resume where the last complete segment ended, prompted with the
    previous text; word timestamps move the resume point to the last word's end."""
    result = whisper.transcribe(recording, word_timestamps=True)
    segments = list(faster_whisper.transcribe(recording, word_timestamps=True)[0])
    assert _segments(result.segments) == _segments(segments)
    assert [s.seek for s in result.segments] == [s.seek for s in segments]
    assert _close(_words(result.segments), _words(segments)) >= 0.95 * len(_words(segments))
    assert len(result.segments) == 48


def test_batched_pipeline_matches_faster_whisper_on_the_same_chunks(whisper, faster_whisper, recording, monkeypatch):
    """BatchedInferencePipeline against turboseq's batched pipeline, both cutting the recording at turboseq's
    VAD chunks (faster-whisper's own VAD model is patched out: it is another Silero export)."""
    import faster_whisper.transcribe as fw_transcribe
    from faster_whisper import BatchedInferencePipeline

    def chunks(audio, options=None, sampling_rate=16000, **kwargs):
        opts = vad_module.VadOptions.of({k: getattr(options, k) for k in vars(options)} if options else kwargs)
        return [{"start": c.start, "end": c.end} for c in vad_module.speech_timestamps(audio, opts)]

    monkeypatch.setattr(fw_transcribe, "get_speech_timestamps", chunks)
    pipeline = BatchedInferencePipeline(faster_whisper)
    for options in ({"word_timestamps": True}, {"without_timestamps": False, "beam_size": 1}):
        result = whisper.transcribe(recording, batch_size=4, **options)
        segments = list(pipeline.transcribe(recording, batch_size=4, **options)[0])
        assert _segments(result.segments) == _segments(segments)
        if options.get("word_timestamps"):
            assert _close(_words(result.segments), _words(segments)) >= 0.95 * len(_words(segments))


def test_options_reach_the_decoder_as_in_faster_whisper(whisper, faster_whisper, clips24):
    """Prompts, prefix, hotwords, suppression and a fallback through every temperature (a compression-ratio
    threshold nothing passes: both keep the most likely attempt, the greedy one, and report temperature 1.0)."""
    clip = str(clips24[1])
    for options in (
        {"initial_prompt": "Stella is a friend.", "beam_size": 1},
        {"prefix": "Please call", "beam_size": 1},
        {"hotwords": "Stella store", "beam_size": 2},
        {"suppress_blank": False, "suppress_tokens": [], "beam_size": 1},
        {"compression_ratio_threshold": 0.1, "beam_size": 1},
        {"max_new_tokens": 5, "beam_size": 1},
        {"length_penalty": 0.5, "repetition_penalty": 1.2, "no_repeat_ngram_size": 2},
    ):
        result = whisper.transcribe(clip, **options)
        segments = list(faster_whisper.transcribe(clip, **options)[0])
        assert _segments(result.segments) == _segments(segments), options
        assert [s.temperature for s in result.segments] == [s.temperature for s in segments], options


def _normalize(text: str) -> str:
    text = text.lower().replace("o'clock", "oclock")
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9' ]", " ", text)).strip()


def test_default_word_error_rate_is_no_worse_than_faster_whisper(whisper, faster_whisper, clips24):
    import jiwer

    from turboseq.bench.speech import ALL_SENTENCES

    refs = [_normalize(s) for s in ALL_SENTENCES]
    ours = jiwer.wer(refs, [_normalize(r.text) for r in whisper.transcribe([str(c) for c in clips24])])
    theirs = jiwer.wer(
        refs, [_normalize("".join(s.text for s in faster_whisper.transcribe(str(c))[0])) for c in clips24]
    )
    assert ours <= theirs and ours < 0.15, (ours, theirs)


# --- voice activity detection ------------------------------------------------------------------------------


def test_vad_keeps_no_text_for_silence_and_noise(whisper):
    rng = np.random.default_rng(0)
    silence = np.zeros(16000 * 20, np.float32)
    noise = (rng.standard_normal(16000 * 20) * 0.05).astype(np.float32)
    for audio in (silence, noise, np.zeros(0, np.float32)):
        for batch_size in (None, 4):
            result = whisper.transcribe(audio, vad_filter=True, batch_size=batch_size)
            assert result.text == "" and result.segments == []
            assert result.duration_after_vad == 0.0


def test_vad_skips_a_long_gap_and_keeps_times_right(whisper, clips24):
    from turboseq.formats.audio import load_audio

    first, second = load_audio(clips24[0]), load_audio(clips24[2])
    gap = 20.0
    audio = np.concatenate([first, np.zeros(int(gap * 16000), np.float32), second])
    onset = (len(first) / 16000) + gap
    speech = vad_module.speech_timestamps(audio, vad_module.VadOptions())
    assert len(speech) == 2 and speech[1].start / 16000 > onset - 0.6
    for batch_size in (None, 4):
        result = whisper.transcribe(audio, vad_filter=True, word_timestamps=True, batch_size=batch_size)
        words = [w for s in result.segments for w in s.words]
        late = [w for w in words if w.start > len(first) / 16000 + 1]
        assert late and abs(late[0].start - onset) < 0.5, (late[:2], onset)
        assert "raining" in result.text and "lazy" in result.text
        assert result.duration_after_vad < result.duration - gap + 1.5


def test_speech_chunks_follow_the_rules(recording):
    """Silero's chunks of the recording: in order, inside the audio, none over max_speech_duration_s, and the
    20 s silence (at about 122 s) never inside a chunk."""
    opts = vad_module.VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)
    chunks = vad_module.speech_timestamps(recording, opts)
    assert chunks and all(0 <= c.start < c.end <= len(recording) for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    assert all(c.end - c.start <= 30 * 16000 for c in chunks)
    pieces, meta = vad_module.collect_chunks(recording, chunks, max_duration=30)
    assert all(len(p) <= 30 * 16000 for p in pieces) and meta[0].offset == 0.0


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beam_width": 3}, "unknown transcribe option(s): beam_width"),
        ({"patience": 2.0}, "`patience` other than 1 is not supported"),
        ({"temperature": [-1.0]}, "`temperature` must be a number >= 0"),
        ({"vad_filter": True, "vad_parameters": {"treshold": 0.5}}, "unknown `vad_parameters` key(s): treshold"),
        ({"language": "de"}, "English-only Whisper model"),
        ({"batch_size": 0}, "`batch_size` must be a positive integer"),
        ({"max_new_tokens": 500, "beam_size": 1}, "exceed the model's 448 positions"),
    ],
)
def test_bad_options_fail_in_one_line(whisper, options, message):
    with pytest.raises(ValueError) as err:
        whisper.transcribe(np.zeros(16000, np.float32) + 0.01, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_speech_with_word_timestamps(whisper):
    """Audio whose windows may all be skipped (a pure tone, silence) used to crash the word-timing pass with an
    empty float index (found by the playground's fake-microphone test). What the model makes of a tone varies
    (nothing, or a hallucinated line); whatever it writes has its words inside the audio."""
    import numpy as np

    t = np.arange(3 * 16000) / 16000
    for audio in ((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), np.zeros(3 * 16000, dtype=np.float32)):
        result = whisper.transcribe(audio, word_timestamps=True)
        assert all(0 <= w.start <= w.end <= 3.0 + 1e-6 for s in result.segments for w in s.words)
        assert result.text.strip() == "".join(s.text for s in result.segments).strip()
