"""Audio in: decoding, resampling and Whisper's log-mel features (identical to transformers')."""

import wave

import numpy as np
import pytest
import torch

from turboseq.errors import AudioError
from turboseq.formats.audio import load_audio, log_mel


def test_log_mel_equals_transformers_feature_extractor(waves):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()
    long = np.concatenate(waves * 4)  # over 30 s: both cut at 30 s
    batch = [waves[0], waves[5], long, np.zeros(100, np.float32)]
    expected = fe(batch, sampling_rate=16000, return_tensors="pt").input_features
    assert torch.equal(log_mel(batch), expected)


def test_audio_is_downmixed_and_resampled(tmp_path, waves):
    # the clip as 44.1 kHz stereo with the right channel silent: decoded back to 16 kHz mono
    mono = waves[0]
    import av

    path = tmp_path / "stereo.flac"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=44100, layout="stereo")
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=44100)
        interleaved = np.stack([mono, np.zeros_like(mono)], axis=1).reshape(1, -1).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout="stereo")
        frame.sample_rate = 16000
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    back = load_audio(path)
    assert abs(len(back) - len(mono)) < 400  # same duration at 16 kHz (resampler delay aside)
    assert 0.3 < np.abs(back).max() / np.abs(mono).max() < 0.8  # a loud and a silent channel mixed


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10, "not a recognised audio format|corrupt"),
        (bytes(range(256)) * 40, "not a recognised audio format|corrupt"),
    ],
)
def test_bad_audio_files_name_the_file_and_reason(tmp_path, whisper, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=f"bad.wav: ({reason})"):
        whisper.transcribe(path)


def test_wav_written_by_synthesize_is_16k_mono(clips):
    with wave.open(str(clips[0])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)


@pytest.mark.parametrize("rate", [24000, 44100, 8000, 16000])
def test_streaming_resampler_equals_resampling_at_once(rate):
    """Pieces of any size (odd ones included) give resample_poly's samples of the whole signal, but the last few
    input samples, which wait for more."""
    from scipy.signal import resample_poly

    from turboseq.formats.audio import Resampler

    rng = np.random.default_rng(0)
    signal = rng.standard_normal(rate * 2).astype(np.float32) * 0.1
    resampler, pieces, i = Resampler(rate), [], 0
    for size in rng.integers(1, 3000, 200):
        pieces.append(resampler.push(signal[i : i + size]))
        i += size
        if i >= len(signal):
            break
    streamed = np.concatenate(pieces)
    whole = resample_poly(signal, *((16000, rate) if rate == 16000 else (resampler.up, resampler.down)))
    assert 0 < len(whole) - len(streamed) <= 320 or rate == 16000  # at most 20 ms held back
    np.testing.assert_allclose(streamed, whole[: len(streamed)], atol=1e-5)


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_g711_decoding_equals_the_standard_library(law):
    """Every G.711 byte decodes to the 16-bit value Python's audioop (ITU-T G.711) gives; PCM16 as it is."""
    import warnings

    from turboseq.formats.audio import decode_pcm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    codes = bytes(range(256))
    reference = np.frombuffer((audioop.ulaw2lin if law == "pcmu" else audioop.alaw2lin)(codes, 2), dtype="<i2")
    assert np.array_equal(decode_pcm(codes, law) * 32768, reference.astype(np.float32))
    assert decode_pcm(b"\x00\x80\xff\x7f").tolist() == [-1.0, 32767 / 32768]
    with pytest.raises(ValueError, match="PCM16 audio comes in whole 2-byte samples, got 3 bytes"):
        decode_pcm(b"abc")
