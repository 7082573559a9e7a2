"""kws.features: log-mel parity with librosa, streaming consistency, SpecAugment."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from kws.data.synth import make_speakers, speak
from kws.features import FrontendConfig, LogMel, SpecAugment, SpecAugmentConfig


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Three seconds of speech-like audio: synthetic words back to back, plus faint noise."""
    speakers = make_speakers(3, seed=7)
    words = [speak(w, s) for w, s in zip(("seven", "marvin", "follow"), speakers)]
    x = np.concatenate(words) + 0.003 * np.random.default_rng(0).standard_normal(48000)
    return x.astype(np.float32)


def librosa_logmel(x: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.n_fft, center=False, power=2.0, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
    )  # fmt: skip
    return np.log(mel + cfg.log_floor)


@pytest.mark.parametrize("n_mels, fmin, fmax", [(40, 20.0, 7600.0), (80, 0.0, 8000.0), (64, 60.0, 4000.0)])
def test_matches_librosa(speech: np.ndarray, n_mels: int, fmin: float, fmax: float) -> None:
    cfg = FrontendConfig(n_mels=n_mels, fmin=fmin, fmax=fmax)
    ours = LogMel(cfg)(torch.from_numpy(speech)[None])[0].numpy()
    ref = librosa_logmel(speech, cfg)
    assert ours.shape == ref.shape == (n_mels, cfg.num_frames(len(speech)))
    assert np.abs(ours - ref).max() <= 1e-3
    assert ref.max() - ref.min() > 15  # the signal really spans quiet and loud regions


def test_batch_rows_are_independent(speech: np.ndarray) -> None:
    frontend = LogMel()
    batch = torch.from_numpy(np.stack([speech[:16000], speech[16000:32000], np.zeros(16000, np.float32)]))
    together = frontend(batch)
    for i in range(3):
        assert torch.allclose(together[i], frontend(batch[i : i + 1])[0], atol=1e-5)
    assert together.shape == (3, 40, 98)
    assert torch.allclose(together[2], torch.full_like(together[2], float(np.log(1e-6))))


def test_pieces_give_the_same_frames_as_whole(speech: np.ndarray) -> None:
    """A stream cut into hop-aligned pieces (each with n_fft - hop samples of overlap)
    gives the frames of the whole signal.

    Not bit-exact: on CPU, conv1d picks different kernels for different input
    lengths, so float32 sums are accumulated in a different order. Loud frames
    differ by about 2e-6; quiet frames (power near the 1e-6 log floor, where a
    small absolute power error is a larger log error) by up to about 1.5e-5 on
    this signal. Hence atol 5e-5: still 20x below the librosa tolerance.
    """
    cfg = FrontendConfig()
    frontend = LogMel(cfg)
    whole = frontend(torch.from_numpy(speech)[None])[0]
    frames, start = [], 0
    for frames_per_piece in (7, 10, 1, 33, 100, 10_000):  # streaming-size chunks and a remainder
        stop = start + (frames_per_piece - 1) * cfg.hop_length + cfg.n_fft
        piece = speech[start : min(stop, len(speech))]
        if len(piece) < cfg.n_fft:
            break
        out = frontend(torch.from_numpy(piece)[None])[0]
        frames.append(out)
        start += out.shape[1] * cfg.hop_length
    joined = torch.cat(frames, dim=1)
    assert joined.shape == whole.shape
    assert torch.allclose(joined, whole, atol=5e-5, rtol=0)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        LogMel()(torch.zeros(16000))
    with pytest.raises(ValueError, match="at least 400"):
        LogMel()(torch.zeros(1, 399))


def _masked(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y != x  # x is continuous noise: a filled cell never equals its old value


def test_specaugment_only_in_training() -> None:
    aug = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=8, time_masks=2, time_width=20))
    x = torch.randn(4, 40, 98)
    aug.eval()
    assert torch.equal(aug(x), x)
    aug.train()
    torch.manual_seed(0)
    assert _masked(x, aug(x)).any()
    assert torch.equal(SpecAugment(SpecAugmentConfig(0, 8, 0, 20)).train()(x), x)


def test_specaugment_masks_have_the_configured_widths() -> None:
    cfg = SpecAugmentConfig(freq_masks=1, freq_width=6, time_masks=1, time_width=10)
    aug = SpecAugment(cfg).train()
    torch.manual_seed(1)
    x = torch.randn(500, 40, 98)
    y = aug(x)
    masked = _masked(x, y)
    rows = masked.all(dim=2)  # (batch, mels): masked across every frame = frequency mask
    cols = masked.all(dim=1)  # (batch, frames): masked across every mel = time mask
    # Every masked cell lies in a masked band or span, nothing else changed.
    assert torch.equal(masked, rows[:, :, None] | cols[:, None, :])
    widths_f, widths_t = rows.sum(1), cols.sum(1)
    assert int(widths_f.max()) == cfg.freq_width and int(widths_f.min()) == 0
    assert int(widths_t.max()) == cfg.time_width and int(widths_t.min()) == 0
    for r in rows[:50]:  # one mask each: a single contiguous band
        idx = torch.nonzero(r).flatten()
        assert len(idx) == 0 or int(idx[-1] - idx[0]) + 1 == len(idx)
    fill = x.mean(dim=(1, 2))
    assert torch.allclose(y[masked], fill[:, None, None].expand_as(x)[masked])


def test_warp_moves_a_formant_by_its_factor() -> None:
    """A bump at the band centred on 1,500 Hz moves to the band centred nearest 1.1 × 1,500 Hz."""
    cfg = FrontendConfig()
    centres = librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax)[1:-1]
    aug = SpecAugment(SpecAugmentConfig(warp=0.1), cfg)
    np.testing.assert_allclose(aug.centres_hz.numpy(), centres, rtol=1e-4)
    src = int(np.argmin(np.abs(centres - 1500)))
    x = torch.zeros(3, cfg.n_mels, 5)
    x[:, src] = 1.0
    y = aug.warp(x, torch.tensor([1.0, 1.1, 0.9]))
    assert torch.equal(y[0], x[0])
    for row, alpha in ((1, 1.1), (2, 0.9)):
        peak = int(y[row, :, 0].argmax())
        assert abs(peak - np.argmin(np.abs(centres - alpha * centres[src]))) <= 1 and peak != src
    torch.manual_seed(0)
    z = aug.train()(torch.randn(64, cfg.n_mels, 98))
    assert z.shape == (64, cfg.n_mels, 98)
