"""Audio sources for streaming detection: microphone, audio file, raw PCM on stdin.

Every source is an iterable of float32 16 kHz mono chunks ``(samples,)``, whatever
the native rate and channel count. Rate conversion keeps its state across
chunks (:class:`StreamResampler`), so a stream converted chunk by chunk equals
the whole recording converted at once.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from math import ceil, gcd
from typing import BinaryIO, Callable, Iterator

import numpy as np
import soundfile as sf

from kws.audio import (
    CANCEL_MESSAGE,
    SAMPLE_RATE,
    channels_cancel,
    check_audio_path,
    pcm16_to_float,
    to_mono,
    warn_if_truncated,
)
from kws.errors import AudioError, DeviceError

log = logging.getLogger(__name__)

__all__ = [
    "BLOCK_MS", "InputDevice", "MAX_CHANNELS", "MicrophoneSource", "StreamResampler", "check_format", "file_source",
    "find_device", "list_devices", "pcm_source", "record_clip",
]

BLOCK_MS = 100
# Input rates kws accepts: below 8 kHz speech is unintelligible (and a wrong --rate is
# far more likely), above 192 kHz no audio interface records.
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 64


def check_format(rate: int | None, channels: int | None, what: str) -> None:
    """Refuse (:class:`AudioError`) a sample rate or channel count no real input has."""
    if rate is not None and not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{what}: sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz; check --rate")
    if channels is not None and not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{what}: {channels} channels is outside 1-{MAX_CHANNELS}; check --channels")


class _CancelWarning:
    """Warns once per stream if its channels cancel each other in the mono mix."""

    def __init__(self, name: str) -> None:
        self.name, self.warned = name, False

    def check(self, frames: np.ndarray) -> None:
        if not self.warned and channels_cancel(frames):
            self.warned = True
            log.warning("%s: %s", self.name, CANCEL_MESSAGE)


class StreamResampler:
    """Chunk-by-chunk resampling that equals :func:`kws.audio.resample` of the whole stream.

    Input is cut into steps of a multiple of the decimation factor, each resampled
    with ``scipy.signal.resample_poly`` together with ``context`` samples on both
    sides (more than the filter's half length) and trimmed to the step's own
    outputs. Output lags input by ``context`` samples (under 30 ms for common rates).
    """

    def __init__(self, rate: int, target: int = SAMPLE_RATE, step_ms: float = BLOCK_MS) -> None:
        if rate <= 0:
            raise AudioError(f"invalid sample rate {rate}")
        g = gcd(int(rate), int(target))
        self.rate, self.target = int(rate), int(target)
        self.up, self.down = target // g, rate // g
        # resample_poly's filter has 10 * max(up, down) taps each side at the upsampled rate.
        half = 10 * max(self.up, self.down) / self.up + 1
        self.context = ceil(half / self.down) * self.down
        self.step = self.down * max(1, round(step_ms / 1000 * rate / self.down))
        self._buf = np.zeros(self.context, dtype=np.float32)  # silence before the stream, as offline
        self._seen = 0
        self._emitted = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk ``(n,)``; returns the outputs it completed ``(m,)``."""
        if self.up == self.down:
            return np.asarray(x, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float32)])
        self._seen += len(x)
        return self._drain()

    def flush(self) -> np.ndarray:
        """End of stream: the remaining outputs (silence after the stream, as offline)."""
        if self.up == self.down:
            return np.zeros(0, dtype=np.float32)
        total = ceil(self._seen * self.up / self.down)
        missing = total - self._emitted
        if missing <= 0:
            return np.zeros(0, dtype=np.float32)
        steps = ceil(max(len(self._buf) - self.context, 0) / self.step) or 1
        pad = steps * self.step + 2 * self.context - len(self._buf)
        self._buf = np.concatenate([self._buf, np.zeros(max(pad, 0), dtype=np.float32)])
        return self._drain()[:missing]

    def _drain(self) -> np.ndarray:
        # Imported here: scipy.signal takes most of a second to import (kws.audio.resample
        # does the same), and a 16 kHz source never resamples.
        from scipy.signal import resample_poly

        c, s = self.context, self.step
        lo, hi = c * self.up // self.down, (c + s) * self.up // self.down
        out = []
        while len(self._buf) >= s + 2 * c:
            y = resample_poly(self._buf[: s + 2 * c], self.up, self.down)
            out.append(y[lo:hi].astype(np.float32, copy=False))
            self._buf = self._buf[s:]
        y = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        self._emitted += len(y)
        return y


def _convert(resampler: StreamResampler, frames: np.ndarray) -> np.ndarray:
    """``(samples, channels)`` native audio → 16 kHz mono (possibly empty)."""
    return resampler.process(to_mono(frames))


# --------------------------------------------------------------------------- files


def file_source(path: str | os.PathLike, realtime: bool = False, block_ms: float = BLOCK_MS) -> Iterator[np.ndarray]:
    """Chunks of a WAV/FLAC/OGG file, read block by block (long files never load whole).

    With ``realtime``, chunks are paced to the audio's duration, like a live input.
    """
    path = check_audio_path(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    with f:
        if f.frames == 0:
            raise AudioError(f"{path}: audio has no samples (zero length or truncated header)")
        warn_if_truncated(f, path)
        cancel = _CancelWarning(str(path))
        resampler = StreamResampler(f.samplerate)
        block = max(1, round(f.samplerate * block_ms / 1000))
        pace = _Pacer() if realtime else None
        while True:
            try:
                frames = f.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(f"{path}: read failed ({exc})") from exc
            if len(frames) == 0:
                break
            if not np.all(np.isfinite(frames)):
                raise AudioError(f"{path}: audio contains NaN or infinite samples")
            cancel.check(frames)
            out = _convert(resampler, frames)
            if pace is not None:
                pace.wait(len(frames) / f.samplerate)
            if len(out):
                yield out
        tail = resampler.flush()
        if len(tail):
            yield tail


class _Pacer:
    """Sleeps so that audio is released no faster than real time."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.released = 0.0

    def wait(self, seconds: float) -> None:
        self.released += seconds
        delay = self.start + self.released - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# --------------------------------------------------------------------------- raw PCM


_CONTAINER_MAGIC = {
    b"RIFF": "a WAV", b"RF64": "a WAV", b"fLaC": "a FLAC", b"OggS": "an Ogg", b"ID3": "an MP3", b"FORM": "an AIFF"
}


def _container(head: bytes) -> str | None:
    """The container format (with its article) whose file starts with ``head`` (4 bytes), if any."""
    for magic, kind in _CONTAINER_MAGIC.items():
        if head.startswith(magic):
            return kind
    # An MP3 without ID3 tag starts with a frame header: 11 sync bits, then a valid MPEG
    # version, layer, bitrate and sample rate. Raw PCM starting with these 4 bytes is a
    # first sample near -1 followed by exactly such a bit pattern: rare enough to refuse.
    if len(head) >= 4 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
        bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
        if version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3:
            return "an MP3"
    return None


def _refuse_container(head: bytes, name: str) -> None:
    kind = _container(head)
    if kind is not None:
        raise AudioError(
            f"{name}: this looks like {kind} file, not raw 16-bit PCM; "
            "pass the file path as SOURCE instead of piping it"
        )


def pcm_source(
    stream: BinaryIO, rate: int = SAMPLE_RATE, channels: int = 1, block_ms: float = BLOCK_MS, name: str = "stdin"
) -> Iterator[np.ndarray]:
    """Chunks of raw little-endian 16-bit PCM read from ``stream`` (e.g. stdin), converted.

    A frame split between two reads is completed by the next read; a trailing
    partial frame at the end is dropped with a warning. Empty input and a
    container file (WAV, FLAC ...) piped in as raw PCM are errors.
    """
    check_format(rate, channels, f"raw PCM on {name}")
    frame_bytes = 2 * channels
    want = frame_bytes * max(1, round(rate * block_ms / 1000))
    read = getattr(stream, "read1", stream.read)
    resampler = StreamResampler(rate)
    carry = head = b""
    total = 0
    cancel = _CancelWarning(name)
    while True:
        data = read(want)
        if not data:
            break
        if total < 4:  # the first 4 bytes may come in several reads
            head = (head + data)[:4]
            _refuse_container(head, name)
        total += len(data)
        data = carry + data
        whole = len(data) - len(data) % frame_bytes
        carry = data[whole:]
        if whole:
            if channels > 1:
                cancel.check(pcm16_to_float(data[:whole], 1).reshape(-1, channels))
            out = resampler.process(pcm16_to_float(data[:whole], channels))
            if len(out):
                yield out
    if total < frame_bytes:
        raise AudioError(f"{name}: no audio received ({total} byte(s) of raw PCM, less than one frame)")
    if carry:
        log.warning(
            "%s: ignored %d trailing byte(s) that do not make a whole %d-byte frame (16-bit, %d channel(s))",
            name, len(carry), frame_bytes, channels,
        )
    tail = resampler.flush()
    if len(tail):
        yield tail


# --------------------------------------------------------------------------- microphone


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio shared library is missing
        raise DeviceError(f"cannot use audio devices: PortAudio is not available ({exc}); install libportaudio2") from exc
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    """An audio input device as PortAudio lists it."""

    index: int
    name: str
    hostapi: str
    channels: int
    default_rate: float
    default: bool


def list_devices() -> list[InputDevice]:
    """Input devices, in PortAudio's order."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices ({exc})") from exc
    return [
        InputDevice(
            index=i,
            name=d["name"],
            hostapi=hostapis[d["hostapi"]]["name"],
            channels=int(d["max_input_channels"]),
            default_rate=float(d["default_samplerate"]),
            default=i == default_in,
        )
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]


def find_device(query: int | str | None) -> InputDevice:
    """An input device by index, by (case-insensitive) name substring, or the default (``None``)."""
    devices = list_devices()
    names = "; ".join(f"{d.index}: {d.name}" for d in devices) or "none"
    if query is None:
        for d in devices:
            if d.default:
                return d
        raise DeviceError(f"no default input device; choose one with --device (input devices: {names})")
    if isinstance(query, int) or str(query).strip().isdigit():
        index = int(query)
        for d in devices:
            if d.index == index:
                return d
        raise DeviceError(f"no input device with index {index} (input devices: {names})")
    text = str(query).lower()
    exact = [d for d in devices if d.name.lower() == text]
    matches = exact or [d for d in devices if text in d.name.lower()]
    if not matches:
        raise DeviceError(f"no input device matching {query!r} (input devices: {names})")
    if len(matches) > 1:
        found = "; ".join(f"{d.index}: {d.name}" for d in matches)
        raise DeviceError(f"{query!r} matches several input devices ({found}); give its index or a longer name")
    return matches[0]


class MicrophoneSource:
    """Live audio from an input device (PortAudio), as 16 kHz mono float32 chunks.

    The device is opened at ``rate``/``channels`` if given, else at 16 kHz mono if
    it supports that, else at its own default rate and channel count; anything
    else is converted. PortAudio's callback only queues the blocks, so a slow
    consumer loses whole blocks (counted in :attr:`dropped`) rather than
    blocking the audio thread; PortAudio's own input overflows are counted in
    :attr:`overflows`. A device that stops (unplugged, failed) or delivers
    nothing for ``stall_timeout_s`` raises :class:`DeviceError`.
    """

    def __init__(
        self,
        device: int | str | None = None,
        rate: int | None = None,
        channels: int | None = None,
        block_ms: float = BLOCK_MS,
        stall_timeout_s: float = 2.0,
        queue_blocks: int = 50,
    ) -> None:
        check_format(rate, channels, "audio device")
        self.device = device
        self.rate = rate
        self.channels = channels
        self.block_ms = block_ms
        self.stall_timeout_s = stall_timeout_s
        self.queue_blocks = queue_blocks
        self.overflows = 0
        self.dropped = 0
        self.info: InputDevice | None = None

    def _settings(self, sd, dev: InputDevice) -> tuple[int, int]:
        """The rate and channel count to open ``dev`` with."""
        if self.rate is not None or self.channels is not None:
            rate = self.rate or int(dev.default_rate)
            channels = self.channels or 1
            try:
                sd.check_input_settings(device=dev.index, samplerate=rate, channels=channels, dtype="float32")
            except (sd.PortAudioError, ValueError) as exc:
                raise DeviceError(
                    f"cannot open audio device {dev.index}: {dev.name!r} for {channels} channel(s) at {rate} Hz "
                    f"(unplugged, busy, or a setting it does not support: {exc})"
                ) from exc
            return rate, channels
        for rate, channels in ((SAMPLE_RATE, 1), (int(dev.default_rate), 1), (int(dev.default_rate), dev.channels)):
            try:
                sd.check_input_settings(device=dev.index, samplerate=rate, channels=channels, dtype="float32")
                return rate, channels
            except (sd.PortAudioError, ValueError):
                continue
        raise DeviceError(f"audio device {dev.name!r} accepts none of the usual input settings; try --rate and --channels")

    def __iter__(self) -> Iterator[np.ndarray]:
        sd = _sounddevice()
        dev = self.info = find_device(self.device)
        rate, channels = self._settings(sd, dev)
        blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=self.queue_blocks)
        finished = threading.Event()

        def callback(indata, frames, when, status) -> None:
            # Runs on PortAudio's thread: never block, never raise.
            if status.input_overflow:
                self.overflows += 1
            try:
                blocks.put_nowait(indata.copy())
            except queue.Full:
                self.dropped += 1

        try:
            stream = sd.InputStream(
                device=dev.index,
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=max(1, round(rate * self.block_ms / 1000)),
                callback=callback,
                finished_callback=finished.set,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(f"cannot open audio device {dev.index}: {dev.name!r} ({exc})") from exc
        log.info("recording from %s (%d Hz, %d channel(s))", dev.name, rate, channels)
        resampler = StreamResampler(rate)
        try:
            last = time.monotonic()
            while True:
                try:
                    frames = blocks.get(timeout=0.1)  # short, so Ctrl-C is handled promptly
                except queue.Empty:
                    if finished.is_set():
                        raise DeviceError(f"audio device {dev.name!r} stopped (unplugged or failed)") from None
                    if time.monotonic() - last > self.stall_timeout_s:
                        raise DeviceError(
                            f"audio device {dev.name!r} stopped delivering audio (nothing for "
                            f"{self.stall_timeout_s:g} s); is it still connected?"
                        ) from None
                    continue
                last = time.monotonic()
                out = _convert(resampler, frames)
                if len(out):
                    yield out
        finally:
            if self.overflows or self.dropped:
                log.warning(
                    "%s: %d input overflow(s), %d block(s) dropped (processing too slow)",
                    dev.name, self.overflows, self.dropped,
                )
            _close(stream, dev.name)


def record_clip(
    seconds: float,
    device: int | str | None = None,
    rate: int | None = None,
    channels: int | None = None,
    on_level: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Record ``seconds`` from an input device through :class:`MicrophoneSource` → ``(samples,)``
    float32 at 16 kHz mono (the device opened, matched and converted as for detection).

    Args:
        on_level: called with the RMS of each 50 ms block as it arrives (a level meter).
    Raises:
        DeviceError: PortAudio or the device is missing, cannot be opened, or stops delivering audio.
    """
    total = round(seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    got = 0
    stream = iter(MicrophoneSource(device, rate=rate, channels=channels, block_ms=50))
    try:
        while got < total:
            chunk = next(stream)[: total - got]
            chunks.append(chunk)
            got += len(chunk)
            if on_level is not None:
                on_level(float(np.sqrt(np.mean(chunk**2))))
    finally:
        stream.close()  # closes the device
    return np.concatenate(chunks)


def _close(stream, name: str, timeout_s: float = 1.0) -> None:
    """Stop and close ``stream``, giving up after ``timeout_s`` if its driver is stuck."""
    def close() -> None:
        try:
            stream.abort()
            stream.close()
        except Exception as exc:  # a vanished device may fail to close: nothing left to do
            log.debug("closing %s: %s", name, exc)

    closer = threading.Thread(target=close, name="kws-close-audio", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        log.warning("audio device %r did not close within %g s (driver blocked); leaving it", name, timeout_s)
