"""Waveform augmentation.

:class:`Augmenter`: speed, time shift, babble, reverberation, band-limiting, noise,
codec quantisation, gain. Everything is vectorised over the batch and runs on the
input's device, so the same module augments a GPU batch in the training loop or a
``(1, samples)`` clip in a data-loader worker.

:func:`augment_conditions`: real recording conditions, in numpy on the CPU (for
data-loader workers or when caching features): rooms simulated with
pyroomacoustics (:func:`make_rir_bank`), recorded noise (:func:`load_noise_folder`),
telephone and laptop-microphone channels, Opus and MP3 at low bitrates.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from kws.audio import AUDIO_SUFFIXES, SAMPLE_RATE, load_audio, resample
from kws.errors import DataError

__all__ = [
    "AugmentConfig", "Augmenter", "ConditionsConfig", "MAX_IMAGE_ORDER", "MIN_NOISE_SECONDS", "MU", "RIR_MARGIN_M",
    "TELEPHONE_BAND_HZ", "TELEPHONE_MU_LAW_LEVELS", "TELEPHONE_RATE", "augment_conditions", "codec_roundtrip",
    "load_noise_folder", "make_rir_bank",
]

MIN_NOISE_SECONDS = 4.0
MU = 255.0  # μ-law's μ, as in G.711 telephony


@dataclass
class AugmentConfig:
    """Each effect is applied to an example with its own probability; values are
    drawn uniformly from the ranges."""

    shift_prob: float = 0.5
    shift_ms: float = 100.0  # ± shift, zero-filled
    noise_prob: float = 0.8
    snr_db: tuple[float, float] = (0.0, 20.0)
    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)
    speed_prob: float = 0.3
    speed: tuple[float, float] = (0.9, 1.1)  # >1: faster (a shorter word), length kept
    # Babble, band limits and codecs are off: aimed at real speech, each measured alone gained
    # no more than the spread between seeds (recipes/speech_commands/RESULTS.md).
    # Other clips of the batch (other speakers, mostly other words) mixed in behind the example.
    babble_prob: float = 0.0
    babble_talkers: int = 2
    babble_snr_db: tuple[float, float] = (10.0, 25.0)
    reverb_prob: float = 0.3
    rt60: tuple[float, float] = (0.1, 0.6)  # seconds to decay by 60 dB
    # A microphone or channel's pass band: high-pass and low-pass edges (Hz).
    bandlimit_prob: float = 0.0
    highpass_hz: tuple[float, float] = (20.0, 400.0)
    lowpass_hz: tuple[float, float] = (3000.0, 8000.0)
    # μ-law quantisation to a random depth, as telephone codecs and cheap ADCs do.
    codec_prob: float = 0.0
    codec_bits: tuple[float, float] = (5.0, 9.0)


class Augmenter(nn.Module):
    """Random augmentation of waveforms ``(batch, samples)`` → ``(batch, samples)``.

    ``noises`` are background recordings (16 kHz float32 ``(samples,)`` each, e.g.
    :func:`kws.data.speech_commands.background_noise`); a noisy example gets a random
    cut of a random one (recordings shorter than ``MIN_NOISE_SECONDS`` are tiled). Without
    any, the noise is white. Identity in eval mode. A ``generator`` passed to
    :meth:`forward` must live on the input's device.
    """

    def __init__(self, cfg: AugmentConfig, noises: Sequence[np.ndarray] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        # Short noises are tiled to MIN_NOISE_SECONDS, so that any clip up to that length fits in one.
        min_len = int(MIN_NOISE_SECONDS * SAMPLE_RATE)
        tiled = [np.resize(np.asarray(n, dtype=np.float32), max(len(n), min_len)) for n in noises if len(n)]
        lengths = [len(n) for n in tiled]
        bank = np.concatenate(tiled) if tiled else np.zeros(0, np.float32)
        # All noises in one flat buffer (moves with .to(device)); examples index into it.
        self.register_buffer("noise_bank", torch.from_numpy(bank), persistent=False)
        starts = torch.tensor(np.cumsum([0] + lengths[:-1]), dtype=torch.long)
        self.register_buffer("noise_start", starts, persistent=False)
        self.register_buffer("noise_len", torch.tensor(lengths, dtype=torch.long), persistent=False)

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"Augmenter expects (batch, samples), got shape {tuple(wave.shape)}")
        if not self.training:
            return wave
        cfg, g = self.cfg, generator
        x = self._speed_and_shift(wave, g)
        x = self._babble(x, g)
        x = self._reverb(x, g)
        x = self._bandlimit(x, g)
        x = self._noise(x, g)
        x = self._codec(x, g)
        gain_db = self._uniform(x.shape[0], cfg.gain_db, g, x) * self._coin(x.shape[0], cfg.gain_prob, g, x)
        return (x * 10 ** (gain_db[:, None] / 20)).clamp(-1.0, 1.0)

    # Random draws, all on the input's device with the optional generator.
    @staticmethod
    def _rand(n: int, g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(n, generator=g, device=like.device, dtype=torch.float32)

    def _uniform(self, n: int, bounds: tuple[float, float], g, like) -> torch.Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * self._rand(n, g, like)

    def _coin(self, n: int, prob: float, g, like) -> torch.Tensor:
        return (self._rand(n, g, like) < prob).float()

    def _chosen(self, n: int, prob: float, g, like) -> torch.Tensor:
        """Indices of the examples, of ``n``, that an effect of probability ``prob`` applies to."""
        return torch.nonzero(self._coin(n, prob, g, like) > 0).flatten()

    def _speed_and_shift(self, x: torch.Tensor, g) -> torch.Tensor:
        """Read each chosen example at ``centre + (t - centre) * speed - shift`` (linear interpolation).

        One gather does both: speed about the centre keeps the word centred and the
        length fixed; samples read from outside the clip are zeros.
        """
        cfg = self.cfg
        batch, n = x.shape
        speed = torch.where(self._coin(batch, cfg.speed_prob, g, x) > 0, self._uniform(batch, cfg.speed, g, x), 1.0)
        max_shift = cfg.shift_ms * SAMPLE_RATE / 1000
        shift = (self._uniform(batch, (-max_shift, max_shift), g, x) * self._coin(batch, cfg.shift_prob, g, x)).round()
        rows = torch.nonzero((speed != 1.0) | (shift != 0)).flatten()
        if rows.numel() == 0:
            return x
        speed, shift = speed[rows], shift[rows]
        centre = (n - 1) / 2
        # Zero padding wide enough for the farthest read: no clamping or masking needed.
        pad = int(((speed - 1).abs() * centre + shift.abs()).max()) + 2
        padded = nn.functional.pad(x.index_select(0, rows), (pad, pad))
        width = n + 2 * pad
        # Shifts alone are whole-sample moves: rows of a strided view of the flat buffer.
        starts = torch.arange(rows.numel(), device=x.device) * width + pad - shift.long()
        y = padded.reshape(-1).unfold(0, n, 1)[starts]
        fast = torch.nonzero(speed != 1.0).flatten()
        if fast.numel():
            t = torch.arange(n, device=x.device, dtype=torch.float32)
            pos = (t - centre) * speed[fast, None] + (centre + pad) - shift[fast, None]
            lo = pos.floor()
            frac = (pos - lo).to(x.dtype)
            lo = lo.long()
            src = padded.index_select(0, fast)
            y[fast] = torch.lerp(src.gather(1, lo), src.gather(1, lo + 1), frac)
        return x.index_copy(0, rows, y)

    def _reverb(self, x: torch.Tensor, g) -> torch.Tensor:
        """Convolve chosen examples with exponentially decaying noise (random RT60); RMS kept."""
        cfg = self.cfg
        batch, n = x.shape
        chosen = self._chosen(batch, cfg.reverb_prob, g, x)
        if chosen.numel() == 0:
            return x
        m = chosen.numel()
        ir_len = min(int(cfg.rt60[1] * SAMPLE_RATE), n)
        rt60 = self._uniform(m, cfg.rt60, g, x)
        t = torch.arange(ir_len, device=x.device, dtype=torch.float32) / SAMPLE_RATE
        decay = torch.exp(-math.log(1000.0) * t[None, :] / rt60[:, None])  # -60 dB at rt60
        ir = torch.randn(m, ir_len, generator=g, device=x.device) * decay * 0.1
        ir[:, 0] = 1.0  # direct path
        size = 1 << (n + ir_len - 1).bit_length()
        dry = x.index_select(0, chosen)
        wet = torch.fft.irfft(torch.fft.rfft(dry, size) * torch.fft.rfft(ir.to(x.dtype), size), size)[:, :n]
        wet = wet * (_rms(dry) / _rms(wet).clamp_min(1e-8))[:, None]
        return x.index_copy(0, chosen, wet)

    def _babble(self, x: torch.Tensor, g) -> torch.Tensor:
        """Mix ``babble_talkers`` other examples of the batch, each circularly shifted by a
        random lag, into chosen examples at a random SNR."""
        cfg = self.cfg
        batch, n = x.shape
        chosen = self._chosen(batch, cfg.babble_prob, g, x)
        if chosen.numel() == 0 or batch < 2:
            return x
        m = chosen.numel()
        t = torch.arange(n, device=x.device)[None, :]
        babble = torch.zeros(m, n, device=x.device, dtype=x.dtype)
        for _ in range(cfg.babble_talkers):
            # An offset in [1, batch - 1]: never the example itself.
            other = (chosen + 1 + (self._rand(m, g, x) * (batch - 1)).long().clamp_max(batch - 2)) % batch
            lag = (self._rand(m, g, x) * n).long()[:, None]
            babble += x.index_select(0, other).gather(1, (t + lag) % n)
        own = x.index_select(0, chosen)
        snr = self._uniform(m, cfg.babble_snr_db, g, x)
        scale = _rms(own) / (_rms(babble).clamp_min(1e-8) * 10 ** (snr / 20))
        return x.index_copy(0, chosen, own + babble * scale[:, None])

    def _bandlimit(self, x: torch.Tensor, g) -> torch.Tensor:
        """Filter chosen examples to a random pass band (soft edges, zero phase, in the frequency domain)."""
        cfg = self.cfg
        batch, n = x.shape
        chosen = self._chosen(batch, cfg.bandlimit_prob, g, x)
        if chosen.numel() == 0:
            return x
        m = chosen.numel()
        low = self._uniform(m, cfg.highpass_hz, g, x)[:, None]
        high = self._uniform(m, cfg.lowpass_hz, g, x)[:, None]
        f = torch.fft.rfftfreq(n, 1 / SAMPLE_RATE).to(x.device)[None, :]
        y = torch.fft.irfft(torch.fft.rfft(x.index_select(0, chosen)) * _band_gain(f, low, high), n)
        return x.index_copy(0, chosen, y.to(x.dtype))

    def _codec(self, x: torch.Tensor, g) -> torch.Tensor:
        """μ-law (μ = 255) quantise chosen examples to a random bit depth."""
        cfg = self.cfg
        batch = x.shape[0]
        chosen = self._chosen(batch, cfg.codec_prob, g, x)
        if chosen.numel() == 0:
            return x
        levels = 2 ** (self._uniform(chosen.numel(), cfg.codec_bits, g, x).round() - 1)
        return x.index_copy(0, chosen, _mu_law(x.index_select(0, chosen).clamp(-1.0, 1.0), levels[:, None]))

    def _noise(self, x: torch.Tensor, g) -> torch.Tensor:
        """Add noise at a random SNR (relative to each example's RMS) to chosen examples."""
        cfg = self.cfg
        batch, n = x.shape
        on = self._coin(batch, cfg.noise_prob, g, x)
        if not bool(on.any()):
            return x
        if self.noise_len.numel():
            if n > int(self.noise_len.min()):
                raise ValueError(f"clips of {n} samples are longer than the noises ({int(self.noise_len.min())})")
            which = (self._rand(batch, g, x) * self.noise_len.numel()).long().clamp_max(self.noise_len.numel() - 1)
            span = self.noise_len[which] - n
            start = self.noise_start[which] + (self._rand(batch, g, x) * (span + 1)).long().clamp_max(span)
            noise = self.noise_bank.unfold(0, n, 1)[start].to(x.dtype)  # rows of a strided view: one copy
        else:
            noise = torch.randn(batch, n, generator=g, device=x.device, dtype=x.dtype)
        snr = self._uniform(batch, cfg.snr_db, g, x)
        scale = _rms(x) / (_rms(noise).clamp_min(1e-8) * 10 ** (snr / 20))
        return x + noise * (scale * on)[:, None]


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of each row of ``(batch, samples)`` → ``(batch,)``."""
    return x.pow(2).mean(dim=1).sqrt()


# Shared by the torch and the numpy path: ``xp`` is the array library of the input.


def _xp(x):
    return torch if isinstance(x, torch.Tensor) else np


def _band_gain(f, low, high):
    """Gain of a pass band from ``low`` to ``high`` Hz at frequencies ``f`` (broadcast).
    Edges about a sixth of an octave wide rather than brick walls, which would ring."""
    xp = _xp(f)
    return 1 / (1 + xp.exp(-(f - low) / (0.06 * low))) / (1 + xp.exp(-(high - f) / (0.06 * high)))


def _mu_law(y, levels):
    """μ-law quantisation of ``y`` (in [-1, 1]) to ``levels`` steps each side of zero (broadcast)."""
    xp = _xp(y)
    comp = xp.sign(y) * xp.log1p(MU * xp.abs(y)) / math.log1p(MU)
    comp = xp.round(comp * levels) / levels
    return xp.sign(comp) * xp.expm1(xp.abs(comp) * math.log1p(MU)) / MU


# ---------------------------------------------------------------------------- real recording conditions


@dataclass
class ConditionsConfig:
    """Real recording conditions for :func:`augment_conditions` and rooms for
    :func:`make_rir_bank`. Each condition is applied to a clip with its own
    probability, in this order: room, noise, channel (telephone or laptop
    microphone, never both), codec (Opus or MP3, never both); values are drawn
    uniformly from the ranges."""

    room_prob: float = 0.5
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (0.0, 20.0)
    # Telephone: 300-3400 Hz, through 8 kHz sampling and 8-bit μ-law (G.711).
    telephone_prob: float = 0.1
    # Laptop and other small microphones: little below a few hundred Hz, little at the top.
    laptop_prob: float = 0.15
    laptop_highpass_hz: tuple[float, float] = (150.0, 400.0)
    laptop_lowpass_hz: tuple[float, float] = (4500.0, 7500.0)
    opus_prob: float = 0.1
    opus_kbps: tuple[float, float] = (6.0, 24.0)
    mp3_prob: float = 0.1
    mp3_kbps: tuple[float, float] = (8.0, 32.0)
    # Rooms of make_rir_bank: shoebox sizes (m), reverberation time (s), source-microphone distance (m).
    rooms: int = 64
    room_size_m: tuple[tuple[float, float, float], tuple[float, float, float]] = ((2.5, 2.5, 2.4), (10.0, 8.0, 4.0))
    rt60: tuple[float, float] = (0.15, 0.9)
    distance_m: tuple[float, float] = (0.3, 5.0)


TELEPHONE_BAND_HZ = (300.0, 3400.0)
TELEPHONE_RATE = 8000
TELEPHONE_MU_LAW_LEVELS = 2**7  # 8 bits: 2^7 steps each side of zero
MAX_IMAGE_ORDER = 40  # image-source reflections per wall; later ones add little but cost time
RIR_MARGIN_M = 0.3  # source and microphone keep this far from the walls


def make_rir_bank(cfg: ConditionsConfig, seed: int = 0) -> list[np.ndarray]:
    """``cfg.rooms`` room impulse responses, each ``(taps,)`` float32 starting at its direct path.

    Each is a random shoebox room (size in ``cfg.room_size_m``, wall absorption set
    for an RT60 in ``cfg.rt60`` by Sabine's formula) with a source and a microphone
    ``cfg.distance_m`` apart, simulated by the image method (pyroomacoustics, with
    randomised image positions, which avoids the sweeping echoes of a perfect
    shoebox). Deterministic for ``seed``; 64 rooms take about 5 s on one core.
    """
    import pyroomacoustics as pra

    rng = np.random.default_rng(seed)
    lo, hi = np.array(cfg.room_size_m[0]), np.array(cfg.room_size_m[1])
    bank: list[np.ndarray] = []
    for _ in range(20 * cfg.rooms):
        if len(bank) == cfg.rooms:
            break
        dims = rng.uniform(lo, hi)
        rt60 = float(rng.uniform(*cfg.rt60))
        absorption, order = pra.inverse_sabine(rt60, dims)
        for _ in range(200):
            mic, src = (rng.uniform(RIR_MARGIN_M, dims - RIR_MARGIN_M) for _ in range(2))
            if cfg.distance_m[0] <= np.linalg.norm(mic - src) <= cfg.distance_m[1]:
                break
        else:
            continue  # no such pair in this room: draw another room
        room = pra.ShoeBox(
            dims, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=min(order, MAX_IMAGE_ORDER),
            use_rand_ism=True, max_rand_disp=0.05,
        )  # fmt: skip
        room.add_source(src)
        room.add_microphone(mic)
        # The randomised image positions come from pyroomacoustics' own generator: seed it per room.
        pra.random.seed(numpy=int(rng.integers(2**63)), libroom=int(rng.integers(2**63)))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float32)
        # Start at the direct path, so that a word keeps its place in the clip.
        bank.append(rir[int(np.argmax(np.abs(rir) >= 0.5 * np.abs(rir).max())) :])
    if len(bank) < cfg.rooms:
        raise DataError(
            f"rooms of {cfg.room_size_m} m rarely hold a source and a microphone {cfg.distance_m} m apart "
            f"({RIR_MARGIN_M} m from the walls): use larger rooms or other distances"
        )
    return bank


def load_noise_folder(folder: str | os.PathLike) -> list[np.ndarray]:
    """Every WAV, FLAC and Ogg (Vorbis or Opus) recording in ``folder`` as 16 kHz float32
    ``(samples,)``, sorted by name: noises for :func:`augment_conditions` or :class:`Augmenter`."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise DataError(f"{folder}: no noise recordings ({', '.join(AUDIO_SUFFIXES)} files) found")
    return [load_audio(p) for p in files]


def codec_roundtrip(x: np.ndarray, codec: str, kbps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``(samples,)`` encoded with ``codec`` (``opus`` or ``mp3``, libsndfile) at about ``kbps``
    and decoded again, aligned with the input and of its length."""
    # libsndfile sets the bitrate from a compression level in [0, 1], linearly: Opus from
    # 256 down to 6 kbps, MP3 (constant bitrate; MPEG-2 at 16 kHz) from 160 down to 8 kbps.
    if codec == "opus":
        fmt, subtype, level, mode = "OGG", "OPUS", (256 - kbps) / 250, None
    elif codec == "mp3":
        fmt, subtype, level, mode = "MP3", "MPEG_LAYER_III", (160 - kbps) / 152, "CONSTANT"
    else:
        raise ValueError(f"unknown codec {codec!r} (opus or mp3)")
    buf = io.BytesIO()
    # Levels stop short of 1.0, which libsndfile refuses for MP3.
    with sf.SoundFile(buf, "w", sample_rate, 1, format=fmt, subtype=subtype,
                      compression_level=float(np.clip(level, 0.0, 0.995)), bitrate_mode=mode) as f:  # fmt: skip
        f.write(np.clip(x, -1.0, 1.0))
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    # Low-bitrate MP3 comes back longer and delayed by its encoder: find the delay.
    n = len(x)
    if len(y) != n:
        from scipy.signal import correlate

        corr = correlate(y, x, mode="full", method="fft")[n - 1 :]
        lag = int(np.argmax(corr[: max(1, len(y) - n + 1)]))
        y = y[lag : lag + n]
    return np.pad(y, (0, n - len(y))).astype(np.float32)


def augment_conditions(
    wave: np.ndarray,
    rng: np.random.Generator,
    cfg: ConditionsConfig,
    rirs: Sequence[np.ndarray] = (),
    noises: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Pass clips through random real recording conditions: ``(samples,)`` or
    ``(batch, samples)`` float32 → the same shape, in [-1, 1].

    ``rirs``: room impulse responses (:func:`make_rir_bank`), needed if
    ``cfg.room_prob > 0``; a reverberant clip keeps its RMS. ``noises``: recordings
    (:func:`load_noise_folder`); a noisy clip gets a random cut of a random one
    (tiled when shorter) at a random SNR, or white noise without any.
    Deterministic for the state of ``rng``.
    """
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"augment_conditions expects (samples,) or (batch, samples), got shape {x.shape}")
    if cfg.room_prob > 0 and not len(rirs):
        raise ValueError("room_prob > 0 needs room impulse responses: pass rirs=make_rir_bank(cfg)")
    if x.ndim == 2:
        return np.stack([augment_conditions(row, rng, cfg, rirs, noises) for row in x]) if len(x) else x
    n, sr = len(x), SAMPLE_RATE
    if rng.random() < cfg.room_prob:
        from scipy.signal import fftconvolve

        wet = fftconvolve(x, rirs[int(rng.integers(len(rirs)))])[:n]
        x = wet * (_rms_np(x) / max(_rms_np(wet), 1e-8))
    if rng.random() < cfg.noise_prob:
        if len(noises):
            rec = np.asarray(noises[int(rng.integers(len(noises)))], dtype=np.float32)
            rec = np.resize(rec, max(len(rec), n))  # tiled
            start = int(rng.integers(len(rec) - n + 1))
            noise = rec[start : start + n]
        else:
            noise = rng.standard_normal(n).astype(np.float32)
        snr = rng.uniform(*cfg.snr_db)
        x = x + noise * (_rms_np(x) / (max(_rms_np(noise), 1e-8) * 10 ** (snr / 20)))
    channel = rng.random()
    f = np.fft.rfftfreq(n, 1 / sr)
    if channel < cfg.telephone_prob:
        x = np.fft.irfft(np.fft.rfft(x) * _band_gain(f, *TELEPHONE_BAND_HZ), n)
        narrow = _mu_law(np.clip(resample(x, sr, TELEPHONE_RATE), -1.0, 1.0), TELEPHONE_MU_LAW_LEVELS)
        x = resample(narrow, TELEPHONE_RATE, sr)[:n]
    elif channel < cfg.telephone_prob + cfg.laptop_prob:
        low, high = rng.uniform(*cfg.laptop_highpass_hz), rng.uniform(*cfg.laptop_lowpass_hz)
        x = np.fft.irfft(np.fft.rfft(x) * _band_gain(f, low, high), n)
    codec = rng.random()
    if codec < cfg.opus_prob:
        x = codec_roundtrip(x, "opus", rng.uniform(*cfg.opus_kbps), sr)
    elif codec < cfg.opus_prob + cfg.mp3_prob:
        x = codec_roundtrip(x, "mp3", rng.uniform(*cfg.mp3_kbps), sr)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _rms_np(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
