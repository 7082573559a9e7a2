"""kws.audio: every way a file can be unusable gives AudioError naming it; any
rate and channel count comes out as 16 kHz mono float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.audio import float_to_pcm16, load_audio, pad_or_crop, pcm16_to_float, resample, write_audio
from kws.errors import AudioError


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    return float(np.abs(np.fft.rfft(x)).argmax() * rate / len(x))


@pytest.fixture()
def good_wav(tmp_path: Path) -> Path:
    path = tmp_path / "good.wav"
    sf.write(str(path), sine(440, 16000), 16000, subtype="PCM_16")
    return path


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("missing.wav", None, "no such file"),
        ("empty.wav", lambda p, good: p.write_bytes(b""), "empty"),
        ("text.wav", lambda p, good: p.write_text("this is not audio\n" * 20), "not a readable audio file"),
        ("random.flac", lambda p, good: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a readable"),
        ("truncated.wav", lambda p, good: p.write_bytes(good.read_bytes()[:30]), "not a readable"),
        ("header_only.wav", lambda p, good: p.write_bytes(good.read_bytes()[:44]), "no samples"),
    ],
)
def test_unusable_files_raise_audio_error_naming_the_file(
    tmp_path: Path, good_wav: Path, name: str, make, reason: str
) -> None:
    path = tmp_path / name
    if make:
        make(path, good_wav)
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_directory_and_non_finite(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
    bad = tmp_path / "nan.wav"
    sf.write(str(bad), np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(bad)


def test_truncated_data_keeps_what_is_there_with_a_warning(
    tmp_path: Path, good_wav: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kws.sources import file_source

    # A header that promises more samples than the file holds is read as far as it goes, and said so.
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good_wav.read_bytes()[: 44 + 2 * 8000])
    x = load_audio(cut)
    assert x.shape == (8000,) and np.allclose(x, sine(440, 16000)[:8000], atol=1e-4)
    assert "cut.wav: the header promises 32000 bytes of audio but the file holds 16000" in caplog.text
    caplog.clear()
    assert len(np.concatenate(list(file_source(cut)))) == 8000 and "truncated" in caplog.text
    caplog.clear()
    load_audio(good_wav)
    assert not caplog.text


def test_channels_that_cancel_are_named_not_called_silent(tmp_path: Path) -> None:
    x = sine(440, 16000)
    path = tmp_path / "inverted.wav"
    sf.write(str(path), np.stack([x, -x], axis=1), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="channels cancel each other"):
        load_audio(path)
    sf.write(str(path), np.stack([x, np.zeros_like(x)], axis=1), 16000, subtype="PCM_16")
    assert np.abs(load_audio(path)).max() > 0.2  # one silent channel is fine


def test_multichannel_is_averaged(tmp_path: Path) -> None:
    left, right = sine(440, 16000), sine(1000, 16000, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    x = load_audio(path)
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert np.allclose(x, (left + right) / 2, atol=1e-6)
    four = tmp_path / "quad.wav"
    sf.write(str(four), np.stack([left] * 4, axis=1), 16000, subtype="FLOAT")
    assert np.allclose(load_audio(four), left, atol=1e-6)


@pytest.mark.parametrize("rate", [44100, 8000, 48000, 22050])
def test_other_rates_are_resampled(tmp_path: Path, rate: int) -> None:
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(str(path), sine(440, rate, seconds=2.0), rate, subtype="PCM_16")
    x = load_audio(path)
    assert x.dtype == np.float32 and len(x) == 32000
    assert abs(peak_hz(x) - 440) <= 1.0
    middle = x[4000:-4000]  # away from the filter's edge effects
    assert np.allclose(middle, sine(440, 16000, seconds=2.0)[4000:-4000], atol=0.02)


def test_resample_removes_content_above_the_new_nyquist() -> None:
    x = sine(12000, 44100)  # above 8 kHz: must not alias into the 16 kHz result
    assert np.abs(resample(x, 44100)[200:-200]).max() < 0.01  # edges see the tone start abruptly
    with pytest.raises(AudioError):
        resample(x, 0)


def test_pad_or_crop_centres() -> None:
    x = np.arange(1, 5, dtype=np.float32)
    assert pad_or_crop(x, 8).tolist() == [0, 0, 1, 2, 3, 4, 0, 0]
    assert pad_or_crop(np.arange(10.0), 4).tolist() == [3, 4, 5, 6]
    assert pad_or_crop(np.zeros((2, 3)), 5).shape == (2, 5)


def test_pcm16_decoding() -> None:
    raw = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    assert pcm16_to_float(raw).tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    stereo = np.array([16384, 0, -16384, -16384], "<i2").tobytes()
    assert pcm16_to_float(stereo, channels=2).tolist() == [0.25, -0.5]
    with pytest.raises(AudioError, match="multiple of 4"):
        pcm16_to_float(b"\x00\x01\x02", channels=2)


def test_pcm16_encoding_round_trips_and_clips() -> None:
    pcm = np.array([0, 16384, -32768, 32767, -1], "<i2")
    assert float_to_pcm16(pcm16_to_float(pcm.tobytes())).tolist() == pcm.tolist()
    assert float_to_pcm16(np.array([1.5, -2.0, 0.49 / 32768])).tolist() == [32767, -32768, 0]


def test_write_audio_round_trip_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "out" / "x.wav"
    write_audio(path, sine(440, 16000) * 3)  # out of range: clipped, not wrapped
    x = load_audio(path)
    assert x.max() <= 1.0 and x.min() >= -1.0 and x.max() > 0.99
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]  # no temporaries left
    flac = tmp_path / "x.flac"
    write_audio(flac, sine(440, 16000))
    assert sf.info(str(flac)).format == "FLAC" and np.allclose(load_audio(flac), sine(440, 16000), atol=1e-4)


def test_centre_speech_moves_the_word_to_the_middle():
    from kws.audio import centre_speech

    x = np.zeros(16000, dtype=np.float32)
    x[1000:4000] = np.sin(np.arange(3000) * 0.3).astype(np.float32)  # a "word" early in the clip
    y = centre_speech(x, 16000)
    loud = np.flatnonzero(np.abs(y) > 0.01)
    assert len(y) == 16000
    assert abs((loud[0] + loud[-1]) / 2 - 8000) < 200
    assert np.array_equal(centre_speech(np.zeros(500, np.float32), 1000), np.zeros(1000, np.float32))
