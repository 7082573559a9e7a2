"""Log-mel front-end and SpecAugment, as ``torch.nn.Module`` s.

The short-time Fourier transform is a strided 1-D convolution with a windowed
DFT basis. That computes the same power spectrum as ``torch.stft`` with
``center=False``, but each frame depends only on its own 400 samples (so a
stream processed in pieces gives the same frames) and it exports to ONNX as a
plain ``Conv``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from kws.audio import SAMPLE_RATE

__all__ = [
    "FrontendConfig", "LogMel", "SpecAugment", "SpecAugmentConfig", "dft_basis", "hz_to_mel", "mel_filterbank",
]


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel settings. Defaults: 25 ms Hann window, 10 ms hop, 40 mels."""

    sample_rate: int = SAMPLE_RATE  # what the model was made for; kws accepts no other
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float = 7600.0
    log_floor: float = 1e-6

    def num_frames(self, samples: int) -> int:
        """Frames produced for ``samples`` input samples (no centre padding)."""
        return 0 if samples < self.n_fft else 1 + (samples - self.n_fft) // self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)


def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
    """librosa's Slaney-normalised mel filterbank, ``(n_mels, n_fft // 2 + 1)``."""
    import librosa  # deferred: slow to import and only needed to build the filters

    return librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    ).astype(np.float32)


def dft_basis(n_fft: int) -> np.ndarray:
    """Hann-windowed real DFT basis ``(2 * (n_fft // 2 + 1), n_fft)``: cosines, then sines."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann, as librosa uses
    angle = 2 * np.pi * k * n / n_fft
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window]).astype(np.float32)


class LogMel(nn.Module):
    """Waveform ``(batch, samples)`` → log-mel ``(batch, n_mels, frames)``.

    ``frames = 1 + (samples - n_fft) // hop_length``; the value is
    ``log(mel_power + log_floor)`` with the power mel spectrogram of librosa.
    """

    def __init__(self, cfg: FrontendConfig = FrontendConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        # Not persistent: rebuilt from the config, so checkpoints stay small.
        self.register_buffer("basis", torch.from_numpy(dft_basis(cfg.n_fft))[:, None, :], persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(mel_filterbank(cfg)), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"LogMel expects (batch, samples), got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] < self.cfg.n_fft:
            raise ValueError(f"need at least {self.cfg.n_fft} samples, got {waveform.shape[-1]}")
        spec = nn.functional.conv1d(waveform[:, None, :], self.basis, stride=self.cfg.hop_length)
        n_freq = self.cfg.n_fft // 2 + 1
        power = spec[:, :n_freq] ** 2 + spec[:, n_freq:] ** 2
        return torch.log(torch.matmul(self.mel_fb, power) + self.cfg.log_floor)


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Masks per example: ``freq_masks`` bands of up to ``freq_width`` mels and
    ``time_masks`` spans of up to ``time_width`` frames; with probability
    ``warp_prob``, a vocal-tract-length warp of the frequency axis by a factor
    drawn from ``[1 - warp, 1 + warp]`` (0: off)."""

    freq_masks: int = 2
    freq_width: int = 6
    time_masks: int = 2
    time_width: int = 10
    warp: float = 0.0
    warp_prob: float = 0.5


# Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above.
_MEL_HZ_PER_MEL, _MEL_LOG_HZ, _MEL_LOG_MEL, _MEL_LOG_STEP = 200.0 / 3, 1000.0, 15.0, float(np.log(6.4) / 27.0)


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Hz → mel on Slaney's scale, as librosa's ``hz_to_mel``."""
    log_part = _MEL_LOG_MEL + torch.log(f.clamp_min(1e-6) / _MEL_LOG_HZ) / _MEL_LOG_STEP
    return torch.where(f < _MEL_LOG_HZ, f / _MEL_HZ_PER_MEL, log_part)


class SpecAugment(nn.Module):
    """Frequency warping, then time and frequency masking, on log-mel ``(batch, mels, frames)``;
    identity in eval mode.

    The warp stands in for another speaker's vocal tract (VTLP, Jaitly & Hinton
    2013): the mel band centred at ``f`` Hz takes the value at ``f / alpha``
    (interpolated between bands), so formants move by the factor ``alpha``.
    Masked cells take each example's mean log-mel value, so masking does not
    inject an artificial silence level.
    """

    def __init__(
        self, cfg: SpecAugmentConfig = SpecAugmentConfig(), frontend: FrontendConfig = FrontendConfig()
    ) -> None:
        super().__init__()
        self.cfg = cfg
        import librosa  # deferred, as in mel_filterbank: the centres of the filterbank's bands

        edges_and_centres = librosa.mel_frequencies(frontend.n_mels + 2, fmin=frontend.fmin, fmax=frontend.fmax)
        centres = torch.from_numpy(edges_and_centres[1:-1])
        mels = hz_to_mel(centres)  # evenly spaced
        self.mel_first, self.mel_step = float(mels[0]), float(mels[1] - mels[0])
        self.register_buffer("centres_hz", centres.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        batch, mels, frames = x.shape
        if self.cfg.warp > 0:
            alpha = 1 + self.cfg.warp * (2 * torch.rand(batch, device=x.device) - 1)
            x = self.warp(x, torch.where(torch.rand(batch, device=x.device) < self.cfg.warp_prob, alpha, 1.0))
        mask = self._mask(batch, mels, self.cfg.freq_masks, self.cfg.freq_width, x.device)[:, :, None]
        mask = mask | self._mask(batch, frames, self.cfg.time_masks, self.cfg.time_width, x.device)[:, None, :]
        fill = x.mean(dim=(1, 2), keepdim=True).expand_as(x)
        return torch.where(mask, fill, x)

    def warp(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Move each example's spectral envelope up in frequency by its factor ``alpha`` ``(batch,)``."""
        batch, mels, frames = x.shape
        if mels != len(self.centres_hz):
            raise ValueError(f"SpecAugment was built for {len(self.centres_hz)} mel bands, got {mels}")
        pos = (hz_to_mel(self.centres_hz[None, :] / alpha[:, None]) - self.mel_first) / self.mel_step
        pos = pos.clamp(0, mels - 1)
        lo = pos.floor().long().clamp_max(mels - 2)
        frac = (pos - lo)[:, :, None].to(x.dtype)
        lo = lo[:, :, None].expand(batch, mels, frames)
        return torch.lerp(x.gather(1, lo), x.gather(1, lo + 1), frac)

    @staticmethod
    def _mask(batch: int, size: int, count: int, width: int, device: torch.device) -> torch.Tensor:
        """Boolean ``(batch, size)``: the union of ``count`` random spans of width ``[0, width]``."""
        pos = torch.arange(size, device=device)
        mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
        for _ in range(count):
            w = torch.randint(0, width + 1, (batch, 1), device=device)
            start = (torch.rand(batch, 1, device=device) * (size - w + 1)).long()
            mask |= (pos >= start) & (pos < start + w)
        return mask
