"""Augmenter: each effect does what it says, within its configured range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kws.data.augment import AugmentConfig, Augmenter
from kws.errors import DataError

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


# ---------------------------------------------------------------------------- real recording conditions

from kws.data.augment import (  # noqa: E402
    ConditionsConfig,
    augment_conditions,
    codec_roundtrip,
    load_noise_folder,
    make_rir_bank,
)

NONE = dict(room_prob=0.0, noise_prob=0.0, telephone_prob=0.0, laptop_prob=0.0, opus_prob=0.0, mp3_prob=0.0)


def conditions(**kwargs) -> ConditionsConfig:
    return ConditionsConfig(**{**NONE, **kwargs})


def np_tone(freq: float, n: int = SR, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def np_band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    return band_energy(torch.from_numpy(np.atleast_2d(x)), lo, hi)[0]


def test_conditions_off_keep_the_clip_and_a_seed_gives_the_same_draws() -> None:
    x = burst(3).numpy()
    assert np.array_equal(augment_conditions(x, np.random.default_rng(0), conditions()), x)
    cfg = ConditionsConfig(room_prob=0.0, noise_prob=1.0, laptop_prob=0.5, opus_prob=0.3, mp3_prob=0.3)
    a = augment_conditions(x, np.random.default_rng(5), cfg)
    assert a.shape == x.shape and a.dtype == np.float32 and np.abs(a).max() <= 1.0
    assert np.array_equal(a, augment_conditions(x, np.random.default_rng(5), cfg))
    assert not np.array_equal(a, augment_conditions(x, np.random.default_rng(6), cfg))
    assert augment_conditions(x[0], np.random.default_rng(5), cfg).shape == (SR,)
    with pytest.raises(ValueError, match="make_rir_bank"):
        augment_conditions(x, np.random.default_rng(0), conditions(room_prob=0.5))


def decay_ms(rir: np.ndarray, db: float = 20.0) -> float:
    """Time for the remaining energy of an impulse response to fall by ``db`` (Schroeder)."""
    energy = np.cumsum(rir[::-1] ** 2)[::-1]
    return 1000 * np.argmax(energy < energy[0] * 10 ** (-db / 10)) / SR


def test_rir_bank_rooms_start_at_the_direct_path_and_decay_with_their_rt60() -> None:
    dry = make_rir_bank(conditions(rooms=4, rt60=(0.15, 0.2)), seed=1)
    wet = make_rir_bank(conditions(rooms=4, rt60=(0.8, 0.9)), seed=1)
    assert len(dry) == len(wet) == 4
    for rir in dry + wet:
        assert rir.dtype == np.float32 and abs(rir[0]) >= 0.5 * np.abs(rir).max()  # direct path first
    # RT60 is the time of a 60 dB decay: 20 dB takes about a third of it.
    assert max(map(decay_ms, dry)) < min(map(decay_ms, wet))
    assert all(20 < decay_ms(r) < 120 for r in dry)
    assert all(np.array_equal(a, b) for a, b in zip(dry, make_rir_bank(conditions(rooms=4, rt60=(0.15, 0.2)), 1)))
    x = burst(2).numpy()
    y = augment_conditions(x, np.random.default_rng(0), conditions(room_prob=1.0), rirs=wet)
    assert np.allclose(np.sqrt((y**2).mean(1)), np.sqrt((x**2).mean(1)), rtol=1e-3)  # level kept
    assert np.abs(y[:, :7000]).max() < 1e-6  # the word stays where it was
    assert np.all(np.abs(y[:, 9000:10600]).mean(1) > 1e-3)  # reverberant tail after it


def test_real_noise_is_read_from_a_folder_and_mixed_at_the_drawn_snr(tmp_path) -> None:
    import soundfile as sf

    sf.write(tmp_path / "hum.ogg", np_tone(3000.0, 3 * SR), SR, format="OGG", subtype="OPUS")  # as in the pack
    sf.write(tmp_path / "hiss.wav", np_tone(5000.0, SR // 2, 0.1), SR)
    (tmp_path / "notes.txt").write_text("not audio")
    noises = load_noise_folder(tmp_path)
    assert [len(n) for n in noises] == [SR // 2, 3 * SR]  # sorted by name, Opus decoded
    x = np.stack([np_tone(300.0)] * 16)
    y = augment_conditions(x, np.random.default_rng(0), conditions(noise_prob=1.0, snr_db=(5.0, 15.0)), noises=noises)
    added = y - x
    snr = 10 * np.log10((x**2).mean(1) / (added**2).mean(1))
    assert snr.min() >= 4.9 and snr.max() <= 15.1 and snr.std() > 1.0
    peaks = set(np.round(peak_hz(torch.from_numpy(added)), -2))
    assert peaks == {3000.0, 5000.0}  # both recordings used, the short one tiled to a second
    with pytest.raises(DataError, match="no noise recordings"):
        load_noise_folder(tmp_path / "missing")


def test_telephone_channel_keeps_300_to_3400_hz_through_8_khz_mu_law() -> None:
    x = np_tone(100.0, amp=0.2) + np_tone(1000.0, amp=0.2) + np_tone(5000.0, amp=0.2)
    y = augment_conditions(x, np.random.default_rng(0), conditions(telephone_prob=1.0))
    assert np_band_energy(y, 950, 1050) / np_band_energy(x, 950, 1050) > 0.9
    assert np_band_energy(y, 4900, 5100) < 1e-3 * np_band_energy(x, 4900, 5100)
    assert np_band_energy(y, 50, 150) < 1e-2 * np_band_energy(x, 50, 150)
    assert np_band_energy(y, 4100, 8000) < 1e-4 * np_band_energy(y, 0, 4000)  # nothing above 8 kHz's Nyquist
    # G.711 μ-law leaves its quantisation noise across the band: not a clean filter.
    clean = np_tone(1000.0, amp=0.2)
    noise = augment_conditions(clean, np.random.default_rng(0), conditions(telephone_prob=1.0)) - clean
    assert 25 < 10 * np.log10((clean**2).sum() / (noise**2).sum()) < 45


def test_laptop_microphone_band_is_drawn_from_its_ranges() -> None:
    x = np_tone(80.0, amp=0.2) + np_tone(1500.0, amp=0.2) + np_tone(7800.0, amp=0.2)
    cfg = conditions(laptop_prob=1.0, laptop_highpass_hz=(200.0, 300.0), laptop_lowpass_hz=(5000.0, 6000.0))
    y = augment_conditions(np.stack([x] * 4), np.random.default_rng(0), cfg)
    for row in y:
        assert np_band_energy(row, 1450, 1550) / np_band_energy(x, 1450, 1550) > 0.95
        assert np_band_energy(row, 7700, 7900) < 1e-3 * np_band_energy(x, 7700, 7900)
        assert np_band_energy(row, 30, 130) < 1e-2 * np_band_energy(x, 30, 130)


@pytest.mark.parametrize("codec", ["opus", "mp3"])
def test_codecs_at_low_bitrates_lose_more_the_lower_the_bitrate(codec: str) -> None:
    rng = np.random.default_rng(0)
    # A voiced sound: harmonics of 150 Hz, with a syllable envelope and a little breath noise.
    t = np.arange(SR) / SR
    x = sum(np.sin(2 * np.pi * 150 * k * t + rng.uniform(0, 6)) / k for k in range(1, 25)) * np.hanning(SR)
    x = (0.2 * x / np.abs(x).max() + 0.005 * rng.standard_normal(SR)).astype(np.float32)

    def snr(y: np.ndarray) -> float:
        return float(10 * np.log10((x**2).sum() / ((y - x) ** 2).sum()))

    low, high = (codec_roundtrip(x, codec, kbps) for kbps in (8.0, 48.0))
    assert low.shape == high.shape == (SR,) and low.dtype == np.float32
    assert 0 < snr(low) < snr(high)  # aligned with the input (else the SNR would be about 0), and lossier
    assert np.array_equal(low, codec_roundtrip(x, codec, 8.0))
    cfg = conditions(**{f"{codec}_prob": 1.0, f"{codec}_kbps": (8.0, 8.0)})
    assert np.array_equal(augment_conditions(x, np.random.default_rng(0), cfg), np.clip(low, -1, 1))


def test_rooms_too_small_for_the_distance_are_refused() -> None:
    cfg = conditions(rooms=1, room_size_m=((2.0, 2.0, 2.0), (2.2, 2.2, 2.2)), distance_m=(4.0, 5.0))
    with pytest.raises(DataError, match="larger rooms"):
        make_rir_bank(cfg)
