"""Augmenter: each effect does what it says, within its configured range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kws.data.augment import AugmentConfig, Augmenter

SR = 16000
OFF = dict(shift_prob=0.0, noise_prob=0.0, gain_prob=0.0, speed_prob=0.0, reverb_prob=0.0)


def only(**kwargs) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kwargs})


def tone(freq: float, batch: int = 8, n: int = SR) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float32) / SR
    return (0.3 * torch.sin(2 * np.pi * freq * t)).repeat(batch, 1)


def burst(batch: int = 8) -> torch.Tensor:
    """A short noise burst (peaks well below 1) in the middle of each second, silence around it."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(batch, SR)
    x[:, 7000:9000] = 0.1 * torch.randn(batch, 2000, generator=g)
    return x


def peak_hz(x: torch.Tensor) -> np.ndarray:
    return np.abs(np.fft.rfft(x.numpy(), axis=-1)).argmax(axis=-1) * SR / x.shape[-1]


def test_identity_in_eval_mode_and_when_all_off() -> None:
    x = burst()
    aug = Augmenter(AugmentConfig())
    assert torch.equal(aug.eval()(x), x)
    assert torch.equal(Augmenter(only())(x), x)


def test_deterministic_with_a_generator_and_shape_kept() -> None:
    aug = Augmenter(AugmentConfig(), noises=[np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32)])
    x = burst(16)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.0
    single = aug(x[:1], torch.Generator().manual_seed(0))  # a data-loader worker's (1, samples) clip
    assert single.shape == (1, SR)
    with pytest.raises(ValueError):
        aug(x[0])


def test_gain_within_range() -> None:
    x = tone(440.0, batch=64)
    y = Augmenter(only(gain_prob=1.0, gain_db=(-10.0, 3.0)))(x, torch.Generator().manual_seed(0))
    db = 20 * torch.log10(y.abs().amax(dim=1) / x.abs().amax(dim=1))
    assert db.min() >= -10.001 and db.max() <= 3.001 and db.std() > 1.0


def test_shift_moves_whole_samples_within_range() -> None:
    x = burst(32)
    y = Augmenter(only(shift_prob=1.0, shift_ms=50.0))(x, torch.Generator().manual_seed(1))
    shifts = []
    for xi, yi in zip(x, y):
        found = [s for s in range(-800, 801) if torch.equal(torch.roll(xi, s), yi)]
        assert len(found) == 1
        shifts.append(found[0])
    assert max(map(abs, shifts)) <= 800 and len(set(shifts)) > 10


def test_speed_scales_frequency_and_keeps_length() -> None:
    x = tone(500.0)
    y = Augmenter(only(speed_prob=1.0, speed=(1.2, 1.2)))(x)
    assert y.shape == x.shape
    assert np.allclose(peak_hz(y), 600.0, atol=2.0)
    slow = Augmenter(only(speed_prob=1.0, speed=(0.8, 0.8)))(burst())
    loud = torch.nonzero(slow[0].abs() > 1e-6).flatten()
    assert loud[0] < 7000 - 200 and loud[-1] > 9000 + 200  # slower: the burst lasts longer, still centred


def test_noise_at_requested_snr_from_given_recordings() -> None:
    x = tone(300.0, batch=32)
    hum = tone(3000.0, batch=1, n=5 * SR)[0].numpy()  # a recognisable "noise"
    aug = Augmenter(only(noise_prob=1.0, snr_db=(5.0, 15.0)), noises=[hum])
    y = aug(x, torch.Generator().manual_seed(2))
    added = y - x
    snr = 10 * torch.log10(x.pow(2).mean(1) / added.pow(2).mean(1))
    assert snr.min() >= 4.99 and snr.max() <= 15.01 and snr.std() > 1.0
    assert np.allclose(peak_hz(added), 3000.0, atol=2.0)
    white = Augmenter(only(noise_prob=1.0, snr_db=(10.0, 10.0)))(x) - x  # no recordings: white noise
    assert np.isclose(float(10 * torch.log10(x.pow(2).mean() / white.pow(2).mean())), 10.0, atol=0.01)


def test_reverb_adds_a_decaying_tail_and_keeps_level() -> None:
    x = burst()
    y = Augmenter(only(reverb_prob=1.0, rt60=(0.4, 0.4)))(x, torch.Generator().manual_seed(0))
    assert torch.allclose(y.pow(2).mean(1).sqrt(), x.pow(2).mean(1).sqrt(), rtol=1e-4)
    tail = y[:, 9000:9000 + 1600].abs().mean(1)  # 100 ms after the burst ends
    late = y[:, 9000 + 6400:].abs().mean(1)  # well past RT60
    assert (tail > 1e-3).all() and (late < tail / 10).all()
    assert y[:, :7000].abs().max() < 1e-6  # causal: nothing before the burst


def band_energy(x: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    spec = np.abs(np.fft.rfft(x.numpy(), axis=-1)) ** 2
    f = np.fft.rfftfreq(x.shape[-1], 1 / SR)
    return spec[:, (f >= lo) & (f < hi)].sum(axis=-1)


def test_bandlimit_removes_what_lies_outside_the_pass_band() -> None:
    x = tone(100.0) + tone(1000.0) + tone(6000.0)
    y = Augmenter(only(bandlimit_prob=1.0, highpass_hz=(300.0, 400.0), lowpass_hz=(3000.0, 3500.0)))(x)
    kept = band_energy(y, 900, 1100) / band_energy(x, 900, 1100)
    assert np.all(kept > 0.95)
    assert np.all(band_energy(y, 5900, 6100) < 1e-3 * band_energy(x, 5900, 6100))
    assert np.all(band_energy(y, 50, 150) < 1e-2 * band_energy(x, 50, 150))


def test_codec_quantises_to_the_drawn_depth() -> None:
    x = burst(4) + tone(440.0, 4)
    y = Augmenter(only(codec_prob=1.0, codec_bits=(6.0, 6.0)))(x)
    assert all(len(torch.unique(row)) <= 2**6 + 1 for row in y)  # 2^5 levels each side, and zero
    snr = 10 * torch.log10(x.pow(2).sum(1) / (y - x).pow(2).sum(1))
    assert torch.all(snr > 15) and torch.all(snr < 40)  # μ-law at 6 bits: about 25 dB
    fine = Augmenter(only(codec_prob=1.0, codec_bits=(10.0, 10.0)))(x)
    assert torch.all((fine - x).pow(2).sum(1) < (y - x).pow(2).sum(1))


def test_babble_mixes_other_examples_at_the_drawn_snr() -> None:
    freqs = (300.0, 1100.0, 2500.0, 4100.0)
    x = torch.cat([tone(f, 1) for f in freqs])
    y = Augmenter(only(babble_prob=1.0, babble_talkers=1, babble_snr_db=(20.0, 20.0)))(x)
    for i, f in enumerate(freqs):
        own = band_energy(y[i : i + 1], f - 20, f + 20)[0]
        assert abs(own / band_energy(x[i : i + 1], f - 20, f + 20)[0] - 1) < 0.02  # the example itself is kept
        others = [band_energy(y[i : i + 1], g - 20, g + 20)[0] for g in freqs if g != f]
        assert sum(o > 1e-4 * own for o in others) == 1  # exactly one other talker, never itself
        added = (y[i] - x[i]).pow(2).mean() / x[i].pow(2).mean()
        assert abs(10 * np.log10(float(added)) + 20) < 0.1  # 20 dB below the example
    alone = tone(300.0, 1)
    assert torch.equal(Augmenter(only(babble_prob=1.0))(alone), alone)  # nobody else to mix in
