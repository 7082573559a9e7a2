"""Audio input/output: decode any file into 16 kHz mono float32, and back.

Everything downstream of this module sees ``numpy.float32`` arrays at
:data:`SAMPLE_RATE`, values in ``[-1, 1]``. No torch here: the ONNX runtime
path uses it too.
"""

from __future__ import annotations

import logging
import os
import re
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.errors import AudioError
from kws.fileio import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "AUDIO_SUFFIXES", "CANCEL_MESSAGE", "CANCEL_RATIO", "SAMPLE_RATE", "TRIM_DB", "centre_speech", "channels_cancel",
    "check_audio_path", "float_to_pcm16", "load_audio", "loudest_rms", "pad_or_crop", "pcm16_to_float", "resample",
    "to_mono", "trim_silence", "warn_if_truncated", "write_audio",
]

SAMPLE_RATE = 16000
# Silence trimming keeps what lies within this many dB of a clip's loudest frame.
TRIM_DB = 40.0
# Audio files kws looks for when it is given a folder.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV/FLAC/OGG file into a mono float32 array at ``sample_rate``.

    Multi-channel audio is averaged; other rates are resampled with a polyphase
    filter. Raises :class:`AudioError` naming the file for anything that is not
    readable, non-empty audio.

    Returns:
        ``(samples,)`` float32.
    """
    path = check_audio_path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            warn_if_truncated(f, path)
            data, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio has no samples (zero length or truncated header)")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if channels_cancel(data):
        raise AudioError(f"{path}: {CANCEL_MESSAGE}")
    return resample(to_mono(data), rate, sample_rate)


def check_audio_path(path: str | os.PathLike) -> Path:
    """``path`` if it names a non-empty file, else :class:`AudioError` saying what it is instead."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    return path


_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def warn_if_truncated(f: sf.SoundFile, path: str | os.PathLike) -> None:
    """Log a warning if the header of WAV ``f`` promises more audio than the file holds.

    A file cut off mid-data (an interrupted copy or recording) still reads, but
    the audio the header promised is not all there.
    """
    m = _DATA_SIZE.search(f.extra_info or "")
    if m and int(m.group(2)) < int(m.group(1)):
        promised, held = int(m.group(1)), int(m.group(2))
        log.warning(
            "%s: the header promises %d bytes of audio but the file holds %d: it is truncated (or was written "
            "as a stream); using the %.2f s there are", path, promised, held, f.frames / f.samplerate,
        )


# Mixed to mono, channels this much quieter than the loudest channel cancelled each other.
CANCEL_RATIO = 0.01
CANCEL_MESSAGE = (
    "its channels cancel each other when mixed to mono (one is the other with its polarity inverted); "
    "keep one channel (e.g. `sox IN OUT remix 1`) or fix the wiring"
)


def channels_cancel(data: np.ndarray, floor: float = 1e-3) -> bool:
    """Whether ``(samples, channels)`` audio with sound in it mixes to (near) silence."""
    if data.ndim != 2 or data.shape[1] < 2 or data.shape[0] == 0:
        return False
    loudest = float(np.sqrt(np.mean(data.astype(np.float64) ** 2, axis=0)).max())
    mixed = float(np.sqrt(np.mean(data.astype(np.float64).mean(axis=1) ** 2)))
    return loudest > floor and mixed < CANCEL_RATIO * loudest


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``(samples, channels)`` audio into ``(samples,)``."""
    if data.ndim == 1:
        return data.astype(np.float32, copy=False)
    if data.ndim != 2:
        raise AudioError(f"expected (samples, channels) audio, got shape {data.shape}")
    return data.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample ``(..., samples)`` from ``rate`` to ``target`` (polyphase, anti-aliased)."""
    if rate <= 0:
        raise AudioError(f"invalid sample rate {rate}")
    if rate == target:
        return np.ascontiguousarray(x, dtype=np.float32)
    # Imported here: scipy.signal adds ~75 MB of resident memory, which the
    # ONNX-only detection path at 16 kHz never needs.
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    y = resample_poly(x.astype(np.float32, copy=False), target // g, rate // g, axis=-1)
    return np.ascontiguousarray(y, dtype=np.float32)


def pad_or_crop(x: np.ndarray, length: int) -> np.ndarray:
    """Centre-pad with zeros or centre-crop the last axis to exactly ``length`` samples."""
    n = x.shape[-1]
    if n == length:
        return x
    if n > length:
        start = (n - length) // 2
        return x[..., start : start + length]
    before = (length - n) // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(before, length - n - before)]
    return np.pad(x, pad)


def trim_silence(x: np.ndarray, frame: int = SAMPLE_RATE // 100, db: float = TRIM_DB, margin: int = 1) -> np.ndarray:
    """Cut leading and trailing frames more than ``db`` below the loudest frame, keeping
    ``margin`` frames beside the speech. ``(samples,)``.

    An all-silent input gives an empty array.
    """
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-db / 20))
    if rms.max() == 0 or len(loud) == 0:
        return x[:0]
    # The margin keeps soft onsets and releases.
    start = max(loud[0] - margin, 0) * frame
    stop = min(loud[-1] + 1 + margin, n) * frame
    return x[start:stop]


def centre_speech(x: np.ndarray, length: int, db: float = TRIM_DB) -> np.ndarray:
    """Trim silence (see :func:`trim_silence`) and centre what is left in ``length`` samples.

    Speech longer than ``length`` is centre-cropped; an all-silent clip is
    centre-padded or cropped as it is.
    """
    speech = trim_silence(x, db=db)
    return pad_or_crop(speech if len(speech) else x, length)


def pcm16_to_float(raw: bytes, channels: int = 1) -> np.ndarray:
    """Decode interleaved little-endian 16-bit PCM into mono float32.

    A trailing partial frame is an error: callers that read streams keep the
    remainder for the next read instead of passing it here.
    """
    frame_bytes = 2 * channels
    if len(raw) % frame_bytes:
        raise AudioError(
            f"raw PCM length {len(raw)} is not a multiple of {frame_bytes} bytes "
            f"(16-bit, {channels} channel(s))"
        )
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return to_mono(pcm.reshape(-1, channels))


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] → int16 PCM (rounded, clipped): half the memory of float32."""
    return np.clip(np.round(np.asarray(x, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM, atomically (temporary file, then rename).

    The format follows the suffix (``.wav``, ``.flac``, ``.ogg``).
    """
    subtype = None if Path(path).suffix.lower() == ".ogg" else "PCM_16"
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype=subtype)


def loudest_rms(x: np.ndarray, window: int) -> float:
    """RMS of the loudest ``window``-sample stretch (10 ms hops), robust to clip length."""
    hop = max(window // 10, 1)
    n = len(x) // hop
    if n == 0:
        return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    energy = np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1)
    k = min(10, n)
    return float(np.sqrt(np.convolve(energy, np.ones(k) / k, mode="valid").max()))
