"""The Wyoming wake-word service (the protocol Home Assistant's voice pipeline speaks).

One connection, many streams one after another: ``describe`` → ``info`` with
the bank's keywords as wake models; ``detect`` selects keywords by name (for the
next streams of the connection); ``audio-start``/``audio-chunk``/``audio-stop``
carry 16-bit PCM at any rate and channel count; every event goes back as
``detection`` (name, timestamp in ms from the stream start to the end of the
window that fired) as soon as it fires, and a stream that ends without one
gets ``not-detected``.

Events are read by :func:`read_event`, not by the ``wyoming`` package's own
reader, because that one trusts the sizes the client announces: here a header,
data or payload over the limits closes the connection with an ``error`` event.
Any malformed input closes only its own connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Attribution, Describe, Info, WakeModel, WakeProgram
from wyoming.ping import Ping, Pong
from wyoming.wake import Detect, Detection, NotDetected

from kws import __version__
from kws.errors import KwsError
from kws.serve.engine import BankStore, BatchEngine, Stream

log = logging.getLogger(__name__)

PROGRAM = "kws"
# Sample rates a client may stream (Hz); anything else is refused with an error event.
RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


class ProtocolError(KwsError):
    """A client sent something the service cannot take; the connection is closed."""


@dataclass(frozen=True)
class WyomingLimits:
    """What one Wyoming connection may send.

    Attributes:
        max_header_bytes: one JSON header line.
        max_data_bytes: the extra JSON data block of an event.
        max_payload_bytes: the audio of one chunk (1 MiB is 10 s of 48 kHz stereo).
        max_channels: channels of a stream's PCM.
        max_stream_s: a stream longer than this is ended with an error (Home
            Assistant streams until a wake word fires, so the default is a day).
        max_connections: open connections; more are refused with an error.
    """

    max_header_bytes: int = 64 * 1024
    max_data_bytes: int = 64 * 1024
    max_payload_bytes: int = 1024 * 1024
    max_channels: int = 8
    max_stream_s: float = 24 * 3600.0
    max_connections: int = 64


async def read_event(reader: asyncio.StreamReader, limits: WyomingLimits) -> Event | None:
    """The next event, or ``None`` at a clean end of the connection.

    Raises:
        ProtocolError: a malformed or oversized event, or a connection cut mid-event.
    """
    try:
        line = await reader.readline()
    except ValueError as exc:  # asyncio's line limit (set from max_header_bytes)
        raise ProtocolError(f"event header longer than {limits.max_header_bytes} bytes") from exc
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ProtocolError("connection closed in the middle of an event header")
    try:
        header = json.loads(line)
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise ValueError("not a JSON object with a string 'type'")
        data = header.get("data") or {}
        data_length = int(header.get("data_length") or 0)
        payload_length = int(header.get("payload_length") or 0)
        if not isinstance(data, dict):
            raise ValueError("'data' is not an object")
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed event header ({exc})") from exc
    if not 0 <= data_length <= limits.max_data_bytes:
        raise ProtocolError(f"event data of {data_length} bytes (limit {limits.max_data_bytes})")
    if not 0 <= payload_length <= limits.max_payload_bytes:
        raise ProtocolError(f"event payload of {payload_length} bytes (limit {limits.max_payload_bytes})")
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise ProtocolError("event data block is not a JSON object")
            data.update(extra)
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("connection closed in the middle of an event") from exc
    except ValueError as exc:
        raise ProtocolError(f"malformed event data ({exc})") from exc
    return Event(type=header["type"], data=data, payload=payload)


def describe(store: BankStore) -> Info:
    """The service and the bank's keywords as Wyoming wake models."""
    attribution = Attribution(name="kws", url="https://github.com/kws/kws")
    bank = store.current()
    models = [
        WakeModel(
            name=name,
            phrase=name,
            # Keywords are enrolled from the user's own voice: any language.
            languages=[],
            attribution=attribution,
            installed=True,
            description=f"kws keyword {name!r} ({bank[name].samples} clips)",
            version=__version__,
        )
        for name in bank.names
    ]
    program = WakeProgram(
        name=PROGRAM,
        description="kws: few-shot keywords enrolled from a few recordings",
        attribution=attribution,
        installed=True,
        version=__version__,
        models=models,
    )
    return Info(wake=[program])


def _audio_format(event: Event, limits: WyomingLimits) -> tuple[int, int]:
    """``(rate, channels)`` of an audio-start or audio-chunk, checked."""
    try:
        rate, width, channels = int(event.data["rate"]), int(event.data["width"]), int(event.data["channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"{event.type} needs integer rate, width and channels ({exc})") from exc
    if width != 2:
        raise ProtocolError(f"{event.type}: sample width {width} bytes is not supported; send 16-bit PCM (width 2)")
    if rate not in RATES:
        raise ProtocolError(f"{event.type}: sample rate {rate} Hz is not supported; use one of {RATES}")
    if not 1 <= channels <= limits.max_channels:
        raise ProtocolError(f"{event.type}: {channels} channels is not supported (1 to {limits.max_channels})")
    return rate, channels


class Connection:
    """One Wyoming client: reads its events, runs its streams, writes its events."""

    def __init__(
        self,
        engine: BatchEngine,
        store: BankStore,
        limits: WyomingLimits,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.engine, self.store, self.limits = engine, store, limits
        self.reader, self.writer = reader, writer
        self.names: list[str] | None = None
        self.stream: Stream | None = None
        self.stream_start_ms = 0
        self.format: tuple[int, int] | None = None
        self._sender: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()

    async def write(self, event: Event) -> None:
        # One writer at a time: the sender task and replies interleave otherwise.
        async with self._write_lock:
            await async_write_event(event, self.writer)

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername")
        try:
            while True:
                event = await read_event(self.reader, self.limits)
                if event is None:
                    break
                await self.handle(event)
        except KwsError as exc:
            log.warning("wyoming client %s: %s; closing the connection", peer, exc)
            self._end_stream()
            await self.refuse(Error(text=str(exc), code=type(exc).__name__).event())
        except ConnectionError as exc:
            log.info("wyoming client %s went away: %s", peer, exc)
        finally:
            self._end_stream()
            self.writer.close()

    async def refuse(self, error: Event, timeout_s: float = 1.0) -> None:
        """Send ``error``, then end the connection without losing it.

        Closing a socket with unread input resets it, and the reset can overtake the
        error; so the input is read and dropped until the client closes (or
        ``timeout_s`` passes).
        """
        try:
            await asyncio.wait_for(self.write(error), timeout_s)
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(self._drop_input(), timeout_s)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self.writer.close()

    async def _drop_input(self) -> None:
        while await self.reader.read(64 * 1024):
            pass

    async def handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write(describe(self.store).event())
        elif Ping.is_type(event.type):
            await self.write(Pong(text=event.data.get("text")).event())
        elif Detect.is_type(event.type):
            names = event.data.get("names")
            if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ProtocolError("detect: 'names' must be a list of keyword names")
            self.names = names
        elif AudioStart.is_type(event.type):
            self._end_stream()
            self._start(event)
        elif AudioChunk.is_type(event.type):
            if self.stream is None:
                # Lenient: a client that skips audio-start starts with its first chunk's format.
                self._start(event)
            elif _audio_format(event, self.limits) != self.format:
                raise ProtocolError("audio-chunk format differs from its stream's audio-start; start a new stream")
            assert self.stream is not None
            self.stream.feed(event.payload or b"")
            if self.stream.seconds > self.limits.max_stream_s:
                raise ProtocolError(f"stream longer than {self.limits.max_stream_s:g} s; start a new one")
            # A client sending faster than real time waits here (and TCP slows it down).
            await self.stream.wait_room()
        elif AudioStop.is_type(event.type):
            await self._stop()
        else:
            log.debug("ignoring wyoming event %r", event.type)

    def _start(self, event: Event) -> None:
        self.format = _audio_format(event, self.limits)
        bank = self.store.select(self.names)
        self.stream = self.engine.open(bank, *self.format)
        self.stream_start_ms = int(event.data.get("timestamp") or 0)
        self._sender = asyncio.create_task(self._send_events(self.stream))

    async def _send_events(self, stream: Stream) -> None:
        """Write the stream's events as they fire, until the ``None`` that ends it."""
        try:
            while (ev := await stream.events.get()) is not None:
                timestamp = self.stream_start_ms + round(ev.time * 1000)
                log.info("detection %s at %.2f s (score %.3f)", ev.keyword, ev.time, ev.score)
                await self.write(Detection(name=ev.keyword, timestamp=timestamp).event())
        except ConnectionError as exc:
            log.info("could not send a detection: %s", exc)

    async def _stop(self) -> None:
        stream = self.stream
        if stream is None:
            await self.write(NotDetected().event())
            return
        stream.finish()
        await stream.drained()
        # The sender writes what the last hops fired before "not detected" is decided.
        stream.events.put_nowait(None)
        if self._sender is not None:
            await self._sender
            self._sender = None
        self._end_stream()
        if stream.n_events == 0:
            await self.write(NotDetected().event())

    def _end_stream(self) -> None:
        if self.stream is not None:
            self.engine.close(self.stream)
            self.stream = None
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
