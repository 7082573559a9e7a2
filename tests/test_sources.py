"""Audio sources: streaming resampling, files, raw PCM on stdin, and a microphone through ALSA."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from kws.audio import load_audio, resample
from kws.errors import AudioError
from kws.sources import StreamResampler, file_source, pcm_source

SR = 16000


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 16000])
def test_stream_resampler_equals_offline(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(rate + 777)).astype(np.float32)
    r, out, i = StreamResampler(rate), [], 0
    while i < len(x):
        n = int(rng.integers(1, 3000))
        out.append(r.process(x[i : i + n]))
        i += n
    out.append(r.flush())
    np.testing.assert_allclose(np.concatenate(out), resample(x, rate), atol=1e-6)


def _pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


class Trickle(io.RawIOBase):
    """A pipe that returns at most 333 bytes per read (splits frames across reads)."""

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.buf.read(min(n, 333))


def test_pcm_source_44k_stereo_split_frames_and_odd_trailing_byte(caplog):
    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((44100, 2))).astype(np.float32)
    raw = _pcm(stereo)
    with caplog.at_level(logging.WARNING):
        got = np.concatenate(list(pcm_source(Trickle(raw + b"\x01"), rate=44100, channels=2)))
    expected = resample((np.frombuffer(raw, "<i2").reshape(-1, 2) / 32768.0).mean(1).astype(np.float32), 44100)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert "1 trailing byte" in caplog.text


def test_pcm_source_8k():
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    got = np.concatenate(list(pcm_source(io.BytesIO(_pcm(x)), rate=8000)))
    assert len(got) == 16000


def test_pcm_source_bad_input():
    with pytest.raises(AudioError, match="no audio received"):
        list(pcm_source(io.BytesIO(b"")))
    with pytest.raises(AudioError, match="no audio received"):
        list(pcm_source(io.BytesIO(b"\x00")))  # one byte is not even one sample
    with pytest.raises(AudioError, match="looks like a WAV file"):
        list(pcm_source(io.BytesIO(b"RIFF\x00\x00\x00\x00WAVEfmt ")))
    # Rates and channel counts no real input has are errors, not defaults.
    for rate in (0, 1, 7999, 192001):
        with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside 8000-192000"):
            list(pcm_source(io.BytesIO(b"\x00\x00"), rate=rate))
    with pytest.raises(AudioError, match="0 channels is outside"):
        list(pcm_source(io.BytesIO(b"\x00\x00"), channels=0))
    # An MP3 piped in: with an ID3 tag, or starting straight with a frame header (even split over reads).
    class Drip(Trickle):
        def read(self, n: int = -1) -> bytes:
            return self.buf.read(1)

    for head in (b"ID3\x04\x00", b"\xff\xfb\x90\x64", b"\xff\xf3\x48\xc4"):
        for pipe in (Trickle, Drip):
            with pytest.raises(AudioError, match="looks like an MP3 file"):
                list(pcm_source(pipe(head + bytes(400))))
    # Raw PCM of -1 samples (bytes ff ff) is not mistaken for MP3 (bitrate index 15 is invalid).
    assert len(np.concatenate(list(pcm_source(io.BytesIO(b"\xff\xff" * 3200))))) == 3200


def test_pcm_source_warns_when_channels_cancel(caplog):
    x = 0.3 * np.sin(np.linspace(0, 400, SR)).astype(np.float32)
    out = np.concatenate(list(pcm_source(io.BytesIO(_pcm(np.stack([x, -x], axis=1).ravel())), channels=2)))
    assert np.abs(out).max() < 1e-3 and "channels cancel each other" in caplog.text


def test_file_source_equals_load_audio_and_paces(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(1)
    path = tmp_path / "a.flac"
    sf.write(path, (0.2 * rng.standard_normal((22050, 2))).astype(np.float32), 44100, subtype="PCM_16")
    got = np.concatenate(list(file_source(path)))
    np.testing.assert_allclose(got, load_audio(path), atol=1e-6)
    t0 = time.monotonic()
    list(file_source(path, realtime=True))
    assert time.monotonic() - t0 >= 0.45
    # A missing file, a folder and an empty file get the same messages as load_audio gives.
    (tmp_path / "empty.wav").touch()
    for bad, message in (("missing.wav", "no such file"), (".", "is a directory"), ("empty.wav", "empty")):
        with pytest.raises(AudioError, match=message):
            list(file_source(tmp_path / bad))
        with pytest.raises(AudioError, match=message):
            load_audio(tmp_path / bad)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="not a readable audio file"):
        list(file_source(tmp_path / "junk.wav"))


# --------------------------------------------------------------------------- microphone via ALSA
# A `file` PCM whose `infile` is a FIFO is a capture device that PortAudio lists and
# records from like a microphone; the test writes the "sound" into the FIFO.

ASOUNDRC = """
pcm.{name} {{
  type plug
  slave {{ pcm "{name}_raw"; format S16_LE; rate {rate}; channels {channels} }}
}}
pcm.{name}_raw {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{infile}"
  format "raw"
}}
"""


@pytest.fixture()
def alsa_home(tmp_path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    os.mkfifo(tmp_path / "mic.fifo")
    (tmp_path / "gone.raw").write_bytes(b"")
    rc = ASOUNDRC.format(name="kwsmic", rate=44100, channels=2, infile=tmp_path / "mic.fifo")
    rc += ASOUNDRC.format(name="kwsgone", rate=8000, channels=1, infile=tmp_path / "gone.raw")
    (home / ".asoundrc").write_text(rc)
    # Held open for writing so that ALSA opening the FIFO to read never blocks.
    fd = os.open(tmp_path / "mic.fifo", os.O_RDWR)
    yield home
    os.close(fd)


def _run(home: Path, code: str, timeout: float = 40) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_microphone_records_converts_and_reports_a_stalled_device(alsa_home):
    fifo = alsa_home.parent / "mic.fifo"
    res = _run(alsa_home, f"""
        import os, time, numpy as np
        from kws.audio import resample
        from kws.errors import DeviceError
        from kws.sources import MicrophoneSource, list_devices
        assert "kwsmic" in [d.name for d in list_devices()]
        fd = os.open("{fifo}", os.O_RDWR)  # the FIFO never reaches EOF: like a live device
        os.set_blocking(fd, False)
        t = np.arange(44100 * 3 // 10) / 44100  # 0.3 s: fits in the pipe's 64 KiB buffer
        left = 0.5 * np.sin(2 * np.pi * 440 * t)
        stereo = np.stack([left, 0.5 * left], 1)
        os.write(fd, (stereo * 32767).astype("<i2").tobytes())
        mic = MicrophoneSource("kwsmic", rate=44100, channels=2, stall_timeout_s=1.0)
        got = []
        t0 = time.monotonic()
        try:
            for chunk in mic:
                got.append(chunk)
        except DeviceError as exc:
            print("ERROR", exc, round(time.monotonic() - t0, 1))
        os.write(fd, bytes(60000))  # release the fake driver's blocked read
        time.sleep(0.3)
        x = np.concatenate(got)
        q = (stereo * 32767).astype(np.int16) / 32768.0
        ref = resample(q.mean(1).astype(np.float32), 44100)[: len(x)]
        print("SAMPLES", len(x), "MAXDIFF", float(np.abs(x - ref).max()))
    """)
    out = res.stdout
    assert "ERROR audio device 'kwsmic' stopped delivering audio" in out, res.stderr
    elapsed = float(out.split("ERROR")[1].split()[-1])
    assert elapsed < 4.0  # reported soon after the stall, not a hang
    samples = int(out.split("SAMPLES")[1].split()[0])
    assert samples >= 1600  # audio arrived (the converter holds back ~30 ms; PortAudio whole periods)
    assert float(out.split("MAXDIFF")[1].split()[0]) < 1e-4


def test_record_clip_records_through_the_detection_source(alsa_home):
    # Enrolment's recorder opens the device as detection does: matched by name, opened at the
    # rate asked for (here 44.1 kHz stereo) and converted to 16 kHz mono.
    fifo = alsa_home.parent / "mic.fifo"
    res = _run(alsa_home, f"""
        import os, threading, time, numpy as np
        from kws.audio import resample
        from kws.sources import record_clip
        fd = os.open("{fifo}", os.O_RDWR)
        t = np.arange(44100 * 6 // 10) / 44100
        left = 0.5 * np.sin(2 * np.pi * 440 * t)
        stereo = np.stack([left, 0.5 * left], 1)
        pcm = (stereo * 32767).astype("<i2").tobytes()
        # A live device: 0.6 s of audio (more than the pipe holds), written as the fake driver reads it.
        threading.Thread(target=os.write, args=(fd, pcm), daemon=True).start()
        levels = []
        x = record_clip(0.2, "KWSMIC", rate=44100, channels=2, on_level=levels.append)
        q = (stereo * 32767).astype(np.int16) / 32768.0
        ref = resample(q.mean(1).astype(np.float32), 44100)[: len(x)]
        print("SAMPLES", len(x), "LEVELS", len(levels), "MAXDIFF", float(np.abs(x - ref).max()), flush=True)
        os.set_blocking(fd, False)
        try:
            os.write(fd, bytes(60000))  # release the fake driver's blocked read
        except BlockingIOError:  # the pipe still holds audio: the driver is not blocked
            pass
        time.sleep(0.3)
    """)
    out = res.stdout.split()
    assert "SAMPLES" in out, res.stderr
    assert int(out[out.index("SAMPLES") + 1]) == 3200  # 0.2 s at 16 kHz
    assert int(out[out.index("LEVELS") + 1]) >= 2  # the meter saw the blocks as they came
    assert float(out[out.index("MAXDIFF") + 1]) < 1e-4


def test_microphone_device_that_vanished_or_does_not_exist(alsa_home):
    res = _run(alsa_home, f"""
        import os
        from kws.errors import DeviceError
        from kws.sources import MicrophoneSource, list_devices
        list_devices()
        os.unlink("{alsa_home.parent / 'gone.raw'}")  # unplugged between listing and opening
        for device in ("kwsgone", "no-such-mic"):
            try:
                next(iter(MicrophoneSource(device, rate=8000, channels=1)))
            except DeviceError as exc:
                print("ERROR", exc)
    """)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("ERROR")]
    assert len(lines) == 2, res.stdout + res.stderr
    assert "cannot open audio device" in lines[0] and "'kwsgone'" in lines[0]
    assert "no input device matching 'no-such-mic'" in lines[1] and "kwsmic" in lines[1]


def test_cli_devices_lists_alsa_device(alsa_home):
    res = _run(alsa_home, "from kws.cli import main; raise SystemExit(main(['devices']))")
    assert res.returncode == 0 and "kwsmic" in res.stdout and "ALSA" in res.stdout
