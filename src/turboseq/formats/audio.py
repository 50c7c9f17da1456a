"""Audio in: decoding any common file to 16 kHz mono float32, and Whisper's log-mel features.

Decoding uses PyAV (FFmpeg's libraries: WAV, FLAC, MP3, M4A/AAC, OGG/Opus, ...), downmixed and resampled by
libswresample. ``log_mel`` reproduces transformers' ``WhisperFeatureExtractor`` (its torch path) operation for
operation, so features are identical.
"""

from __future__ import annotations

import io
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from turboseq.errors import AudioError, AudioTooLong

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # one 30 s window
FRAMES_PER_CHUNK = CHUNK_SAMPLES // HOP_LENGTH  # 3000 mel frames


def load_audio(source: str | Path | bytes, name: str | None = None, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file path or the bytes of a file into a 16 kHz mono float32 array in [-1, 1].

    Raises ``AudioError`` naming the file for missing, corrupt or unsupported input, or a file that decodes to no
    samples at all; ``AudioTooLong`` as soon as the decoded audio passes ``max_seconds`` (decoding stops there).
    """
    import av

    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "audio data"
        if len(source) == 0:
            raise AudioError(f"{label}: empty (0 bytes)")
        handle = io.BytesIO(bytes(source))
    else:
        label = name or str(source)
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{label}: no such file")
        if path.is_dir():
            raise AudioError(f"{label}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: empty file (0 bytes)")
        handle = str(path)
    try:
        container = av.open(handle, mode="r", metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise AudioError(f"{label}: not a recognised audio format (corrupt or unsupported file)") from None
    except (av.error.FFmpegError, OSError) as err:
        raise AudioError(f"{label}: cannot open ({err})") from None
    with container:
        if not container.streams.audio:
            raise AudioError(f"{label}: contains no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pieces, samples = [], 0
        limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        try:
            for frame in container.decode(audio=0):
                for piece in resampler.resample(frame):
                    pieces.append(piece.to_ndarray())
                    samples += pieces[-1].shape[1]
                if limit is not None and samples > limit:
                    raise AudioTooLong(f"{label}: longer than the limit of {max_seconds:g} s")
            pieces.extend(f.to_ndarray() for f in resampler.resample(None))
        except (av.error.FFmpegError, ValueError) as err:
            if isinstance(err, AudioError):
                raise
            raise AudioError(f"{label}: audio stream is corrupt ({err})") from None
    if not pieces or sum(p.shape[1] for p in pieces) == 0:
        raise AudioError(f"{label}: no audio samples (an empty or truncated stream)")
    return check_samples(np.ascontiguousarray(np.concatenate(pieces, axis=1)[0], dtype=np.float32), label)


MAX_SAMPLE = 1e6  # samples are in [-1, 1]; far past it, the features overflow float32


def check_samples(array: np.ndarray, label: str) -> np.ndarray:
    """``array`` if its samples are finite and of sane size; else ``AudioError`` naming ``label`` (a float WAV
    can hold NaN or infinity, which would turn a whole batch's features into NaN)."""
    if not np.isfinite(array).all():
        raise AudioError(f"{label}: samples contain NaN or infinity")
    if array.size and float(np.abs(array).max()) > MAX_SAMPLE:
        raise AudioError(f"{label}: samples far outside [-1, 1] (largest {float(np.abs(array).max()):.3g})")
    return array


def as_waveform(audio, name: str = "audio") -> np.ndarray:
    """A path, bytes, or an array of 16 kHz mono samples -> float32 array."""
    if isinstance(audio, (str, Path, bytes, bytearray, memoryview)):
        return load_audio(audio, name if not isinstance(audio, (str, Path)) else None)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    array = np.asarray(audio)
    if array.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D array of 16 kHz mono samples, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"{name}: expected float samples in [-1, 1], got dtype {array.dtype}")
    return check_samples(array.astype(np.float32, copy=False), name)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> Tensor:
    """Slaney-scale mel filter bank [n_freqs, n_mels], the one WhisperFeatureExtractor builds."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank).to(torch.float32)


def log_mel(windows: list[np.ndarray], n_mels: int = 80) -> Tensor:
    """Whisper's input features [len(windows), n_mels, 3000] for windows of at most 30 s each (zero-padded
    to 30 s, as the model was trained)."""
    batch = torch.zeros(len(windows), CHUNK_SAMPLES, dtype=torch.float32)
    for i, w in enumerate(windows):
        n = min(len(w), CHUNK_SAMPLES)
        batch[i, :n] = torch.from_numpy(np.ascontiguousarray(w[:n], dtype=np.float32))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(batch, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = (stft[..., :-1].abs() ** 2).contiguous()  # [batch, n_freqs, 3000]
    mel = mel_filters(n_mels).T @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    top = log_spec.max(dim=2, keepdim=True)[0].max(dim=1, keepdim=True)[0]  # per window
    log_spec = torch.maximum(log_spec, top - 8.0)
    return (log_spec + 4.0) / 4.0


def log_mel_long(wave: np.ndarray, n_mels: int = 80, padding: int = HOP_LENGTH) -> Tensor:
    """Log-mel features [n_mels, frames] of a whole recording (``padding`` zero samples appended), clamped to
    8 below the recording's loudest value: openai/whisper's and faster-whisper's long-form features, which
    ``transcribe`` slices into 30 s windows (``window_features``)."""
    samples = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if padding:
        samples = torch.nn.functional.pad(samples, (0, padding))
    if len(samples) <= N_FFT // 2:  # too short to reflect-pad: no content (VAD kept nothing, or a few samples)
        return torch.zeros(n_mels, len(samples) // HOP_LENGTH)
    stft = torch.stft(samples, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), return_complex=True)
    mel = mel_filters(n_mels).T @ (stft[..., :-1].abs() ** 2)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def window_features(features: Tensor, start: int, size: int) -> Tensor:
    """Frames ``start`` .. ``start + size`` of ``features`` [n_mels, frames], zero-padded to one 30 s window."""
    out = torch.zeros(features.shape[0], FRAMES_PER_CHUNK, dtype=features.dtype)
    piece = features[:, start : start + min(size, FRAMES_PER_CHUNK)]
    out[:, : piece.shape[1]] = piece
    return out


class Resampler:
    """Streaming resampling to 16 kHz (``scipy.signal.resample_poly``): pieces of any size give the samples that
    resampling the whole signal at once gives (each block is filtered with enough input on both sides, and
    starts on a whole period of the rate ratio); the last few input samples wait for the next piece."""

    def __init__(self, rate: int):
        common = gcd(rate, SAMPLE_RATE)
        self.up, self.down = SAMPLE_RATE // common, rate // common
        reach = 10 * max(self.up, self.down) // self.up + 2  # input samples the default filter reaches on a side
        self.pad = -(-reach // self.down) * self.down  # context on each side of a block, whole periods
        self.pending = np.zeros(self.pad, dtype=np.float32)  # silence before the stream's start

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self.up == self.down:
            return samples
        from scipy.signal import resample_poly

        buffer = np.concatenate([self.pending, samples])
        usable = (len(buffer) - 2 * self.pad) // self.down * self.down
        if usable <= 0:
            self.pending = buffer
            return np.zeros(0, dtype=np.float32)
        out = resample_poly(buffer[: 2 * self.pad + usable], self.up, self.down)
        self.pending = buffer[usable:]
        first = self.pad * self.up // self.down
        return out[first : first + usable * self.up // self.down].astype(np.float32)


@lru_cache(maxsize=2)
def _g711_table(law: str) -> np.ndarray:
    """The 256 16-bit values of G.711's mu-law (``pcmu``) or A-law (``pcma``) bytes (ITU-T G.711)."""
    codes = np.arange(256, dtype=np.int32)
    if law == "pcmu":
        u = ~codes & 0xFF
        exponent, mantissa = (u >> 4) & 7, u & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        values = np.where(u & 0x80, -magnitude, magnitude)
    elif law == "pcma":
        a = codes ^ 0x55
        exponent, mantissa = (a >> 4) & 7, a & 0x0F
        magnitude = np.where(
            exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
        )
        values = np.where(a & 0x80, magnitude, -magnitude)
    else:
        raise ValueError(f"G.711 law must be pcmu or pcma, not {law!r}")
    return values.astype(np.int16)


def decode_pcm(data: bytes, encoding: str = "pcm16") -> np.ndarray:
    """Float32 samples in [-1, 1) of raw mono audio: ``pcm16`` (16-bit little-endian), or G.711 ``pcmu``
    (mu-law) or ``pcma`` (A-law), one byte a sample. ValueError for a PCM16 buffer of an odd byte count."""
    if encoding == "pcm16":
        if len(data) % 2:
            raise ValueError(f"PCM16 audio comes in whole 2-byte samples, got {len(data)} bytes")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return _g711_table(encoding)[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0
