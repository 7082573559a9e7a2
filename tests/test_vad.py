"""Silero VAD finds a word in line noise where the energy trim keeps the noise."""

from __future__ import annotations

import numpy as np
import pytest

from kws.audio import trim_silence
from kws.enroll import EnrollConfig, find_speech, prepare_clips
from kws.errors import CheckpointError, EnrollmentError

SR = 16000


@pytest.fixture(scope="module")
def noisy_word() -> tuple[np.ndarray, int, int]:
    """A spoken word (espeak-ng) at 1.0 s in 3 s of hiss 15 dB below it: (clip, word start, word stop)."""
    from kws.data.synth import make_speakers, speak

    word = speak("table", make_speakers(1, seed=0)[0])
    core = trim_silence(word, db=30)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(3 * SR).astype(np.float32)
    noise *= np.sqrt(np.mean(core**2)) / 10 ** (15 / 20)
    x = noise.copy()
    x[SR : SR + len(core)] += core
    return x, SR, SR + len(core)


def test_vad_finds_the_word_in_line_noise(noisy_word):
    x, start, stop = noisy_word
    speech = find_speech(x, SR, EnrollConfig())
    assert len(speech) < (stop - start) + 0.3 * SR  # the word and a little margin, not the 3 s of noise
    assert len(find_speech(x, SR, EnrollConfig(vad=False))) > 2.5 * SR  # the energy trim keeps the noise


def test_noisy_clip_enrols_with_vad_and_is_refused_without(noisy_word):
    x, start, stop = noisy_word
    with pytest.raises(EnrollmentError, match="longer than the model's"):
        prepare_clips([x], SR, SR, config=EnrollConfig(vad=False))
    out, _ = prepare_clips([x], SR, SR, config=EnrollConfig())
    energy = out[0] ** 2
    centre = np.sum(np.arange(SR) * energy) / energy.sum()
    assert abs(centre - SR / 2) < 0.25 * SR  # the word, not 3 s of noise cropped to its middle, is in the window


def test_a_tone_falls_back_to_the_energy_trim():
    t = np.arange(SR) / SR
    x = np.zeros(2 * SR, np.float32)
    x[SR // 2 : SR // 2 + SR // 2] = 0.3 * np.sin(2 * np.pi * 440 * t[: SR // 2])
    speech = find_speech(x, SR, EnrollConfig())
    assert abs(len(speech) - SR // 2) < 0.05 * SR


def test_missing_vad_package_names_it(monkeypatch):
    import importlib.util

    from kws import vad

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(CheckpointError, match="pip install silero-vad"):
        vad.model_file()
