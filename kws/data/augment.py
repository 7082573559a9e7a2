"""Waveform augmentation on batches: speed, time shift, babble, reverberation,
band-limiting, noise, codec quantisation, gain.

Everything is vectorised over the batch and runs on the input's device, so the
same module augments a GPU batch in the training loop or a ``(1, samples)`` clip
in a data-loader worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kws.audio import SAMPLE_RATE

MIN_NOISE_SECONDS = 4.0


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
    sample_rate: int = SAMPLE_RATE


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
        min_len = int(MIN_NOISE_SECONDS * cfg.sample_rate)
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
        max_shift = cfg.shift_ms * cfg.sample_rate / 1000
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
        ir_len = min(int(cfg.rt60[1] * cfg.sample_rate), n)
        rt60 = self._uniform(m, cfg.rt60, g, x)
        t = torch.arange(ir_len, device=x.device, dtype=torch.float32) / cfg.sample_rate
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
        f = torch.fft.rfftfreq(n, 1 / cfg.sample_rate).to(x.device)[None, :]
        # Edges about a sixth of an octave wide rather than brick walls, which would ring.
        gain = torch.sigmoid((f - low) / (0.06 * low)) * torch.sigmoid((high - f) / (0.06 * high))
        y = torch.fft.irfft(torch.fft.rfft(x.index_select(0, chosen)) * gain, n)
        return x.index_copy(0, chosen, y.to(x.dtype))

    def _codec(self, x: torch.Tensor, g) -> torch.Tensor:
        """μ-law (μ = 255) quantise chosen examples to a random bit depth."""
        cfg = self.cfg
        batch = x.shape[0]
        chosen = self._chosen(batch, cfg.codec_prob, g, x)
        if chosen.numel() == 0:
            return x
        levels = 2 ** (self._uniform(chosen.numel(), cfg.codec_bits, g, x).round() - 1)
        mu = 255.0
        y = x.index_select(0, chosen).clamp(-1.0, 1.0)
        comp = torch.sign(y) * torch.log1p(mu * y.abs()) / math.log1p(mu)
        comp = torch.round(comp * levels[:, None]) / levels[:, None]
        return x.index_copy(0, chosen, torch.sign(comp) * torch.expm1(comp.abs() * math.log1p(mu)) / mu)

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
