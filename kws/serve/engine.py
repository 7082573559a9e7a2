"""Many streams, one embedder: per-stream windows and triggers, windows embedded in batches.

Each :class:`Stream` cuts its audio into hops and keeps its own window, its own
:class:`~kws.detect.Trigger` and its own snapshot of the bank. The
:class:`BatchEngine` collects the hops that are due across all streams, at most
once per tick (25 ms), and embeds their windows in one call of the embedder
(``(batch, samples)``): N streams cost one model call per tick instead of N per
hop. While a batch is embedded, audio keeps arriving (in the sockets' buffers)
and its hops go into the next batch: under load the batches grow instead of the
streams falling behind one by one.

An embedder that streams incrementally (a model over a stem computes one stem
frame per new 80 ms instead of the whole window; see :meth:`kws.embedder.Embedder.stream`)
keeps that state per stream: its hops are embedded one by one through it, which
costs far less than the whole windows in a batch would. Such a stream also embeds
each hop at the window of every keyword longer than the model's window
(:attr:`kws.bank.KeywordBank.windows`), as the detector does; a model whose window
is fixed refuses a bank with such keywords when the stream opens.

A stream's scores and events equal those of a :class:`~kws.detect.Detector`
over the same audio (same windows and streaming state, same energy gate, same trigger).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kws.audio import SAMPLE_RATE, pcm16_to_float
from kws.bank import KeywordBank
from kws.detect import DetectorConfig, HopWindows, Trigger
from kws.events import Event
from kws.embedder import Embedder, WaveformWindow
from kws.errors import BankError, KwsError
from kws.sources import StreamResampler

log = logging.getLogger(__name__)


class BankStore:
    """The bank file, re-read when it changes on disk (checked when a stream starts).

    A stream keeps the bank it started with; a new stream sees the file as it is
    then (enrolment, feedback or removal with the CLI, without a restart). A file
    that fails to load (half-edited by hand) is logged and the last good bank kept.
    A file that does not exist yet is an empty bank (the web page enrols into it).
    """

    def __init__(self, path: str | os.PathLike, model_id: str, dim: int) -> None:
        self.path = Path(path)
        self.model_id = model_id
        self.dim = dim
        self._bank = self.load()
        self._stamp = self._file_stamp()
        self._subsets: dict[tuple[str, ...], KeywordBank] = {}

    def load(self) -> KeywordBank:
        """The bank on disk now (empty if there is no file yet).

        Raises:
            BankError: the file is not a bank of this model.
        """
        if not self.path.exists():
            return KeywordBank(self.model_id, self.dim)
        return KeywordBank.load(self.path, model_id=self.model_id)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        # Banks are replaced by rename (kws.fileio), so the inode changes even
        # when two writes fall in the same mtime tick.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> KeywordBank:
        """The bank as it is on disk now (the last good one if the file is unreadable)."""
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            try:
                bank = self.load()
            except BankError as exc:
                log.error("keeping the last good bank: %s", exc)
            else:
                log.info("bank %s changed on disk: %d keyword(s) %s", self.path, len(bank), bank.names)
                self._bank, self._subsets = bank, {}
            self._stamp = stamp
        return self._bank

    def select(self, names: list[str] | None) -> KeywordBank:
        """The current bank restricted to ``names`` (all keywords for ``None`` or an empty list).

        Raises:
            BankError: none of ``names`` is in the bank, or the bank is empty.
        """
        bank = self.current()
        if len(bank) == 0:
            raise BankError(f"{self.path}: the bank has no keywords; enrol some with `kws enroll` or on the web page")
        if not names:
            return bank
        known = tuple(n for n in bank.names if n in set(names))
        if not known:
            raise BankError(f"none of the keywords {names} is in the bank (enrolled: {', '.join(bank.names)})")
        unknown = sorted(set(names) - set(known))
        if unknown:
            log.warning("ignoring unknown keyword(s) %s (enrolled: %s)", unknown, bank.names)
        if known not in self._subsets:
            subset = KeywordBank(bank.model_id, bank.dim)
            for n in known:
                subset.keywords[n] = bank.keywords[n]
            self._subsets[known] = subset
        return self._subsets[known]


@dataclass
class _Hop:
    """A hop that is due: its new samples and the window they end, at ``time``."""

    time: float
    new: np.ndarray
    window: np.ndarray
    gated: bool  # below the energy gate: not scored
    due: float  # time.monotonic() when its last sample arrived


class Stream:
    """One audio stream: 16-bit PCM in, events out (on :attr:`events`).

    Args:
        engine: the engine that embeds this stream's windows.
        bank: the keywords this stream listens for (a snapshot: later bank changes
            do not reach a running stream).
        rate, channels: the wire format of :meth:`feed`'s PCM (resampled to 16 kHz mono).
    """

    def __init__(self, engine: "BatchEngine", bank: KeywordBank, rate: int, channels: int) -> None:
        cfg = engine.cfg
        self.engine = engine
        self.bank = bank
        self.channels = channels
        self.resampler = StreamResampler(rate)
        self.trigger = Trigger.for_bank(bank, cfg)
        self._windows = HopWindows(engine.embedder.window_samples, engine.hop)
        # Made in any case: it refuses the keywords' windows that the model cannot embed.
        path = engine.embedder.stream(engine.hop, bank.windows)
        self.path = path if engine.incremental else None
        self.hops = 0
        self.due: collections.deque[_Hop] = collections.deque()
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()  # None: end of stream
        self.n_events = 0
        # The latest hop's time and raw scores (None: below the energy gate), for live views.
        self.last_scores: tuple[float, np.ndarray | None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self.in_flight = 0

    @property
    def seconds(self) -> float:
        """Audio seen so far (in whole hops), seconds."""
        return self.hops * self.engine.hop / SAMPLE_RATE

    def feed(self, pcm: bytes) -> None:
        """Take interleaved little-endian 16-bit PCM; every completed hop becomes due."""
        self._push(self.resampler.process(pcm16_to_float(pcm, self.channels)))

    def finish(self) -> None:
        """End of the stream's audio: the resampler's tail becomes due too (a partial hop is dropped)."""
        self._push(self.resampler.flush())

    def _push(self, samples: np.ndarray) -> None:
        now = time.monotonic()
        for new, window in self._windows.push(samples):
            self.hops += 1
            gated = self.engine.cfg.gated(window)
            self.due.append(_Hop(self.hops * self.engine.hop / SAMPLE_RATE, new, window, gated, now))
        if self.due:
            self._idle.clear()
            if len(self.due) >= self.engine.max_backlog:
                self._room.clear()
            self.engine.wake()

    async def wait_room(self) -> None:
        """Wait while this stream has more hops queued than the engine's backlog limit."""
        await self._room.wait()

    async def drained(self) -> None:
        """Wait until every hop fed so far has been scored (and its events queued)."""
        await self._idle.wait()

    def _take(self, limit: int) -> list[_Hop]:
        hops = [self.due.popleft() for _ in range(min(limit, len(self.due)))]
        self.in_flight += len(hops)
        return hops

    def _scored(self, hops: list[_Hop], scores: list[np.ndarray | None]) -> None:
        for hop, s in zip(hops, scores):
            self.last_scores = (hop.time, s)
            event = self.trigger.step(hop.time, s)
            if event is not None:
                self.n_events += 1
                self.events.put_nowait(event)
        self.in_flight -= len(hops)
        if len(self.due) < self.engine.max_backlog:
            self._room.set()
        if not self.due and not self.in_flight:
            self._idle.set()


# Delays kept for the percentiles: the last 20,000 hops (100 s of 20 streams),
# in a preallocated ring so that a long run keeps flat memory.
DELAY_RING = 20_000


@dataclass
class EngineStats:
    """What the engine has done. A hop is *late* when it is scored more than one hop after it was due."""

    hops: int = 0
    embedded: int = 0
    batches: int = 0
    late: int = 0
    delays: np.ndarray = field(default_factory=lambda: np.zeros(DELAY_RING))

    def add_delay(self, seconds: float, hop_s: float) -> None:
        """Count one scored hop that was due ``seconds`` ago."""
        self.delays[self.hops % DELAY_RING] = seconds
        self.hops += 1
        self.late += seconds > hop_s

    def to_json(self) -> dict:
        d = self.delays[: min(self.hops, DELAY_RING)] * 1000 if self.hops else np.zeros(1)
        return {
            "hops": self.hops,
            "embedded": self.embedded,
            "batches": self.batches,
            "late_hops": self.late,
            "hop_delay_p50_ms": float(np.percentile(d, 50)),
            "hop_delay_p99_ms": float(np.percentile(d, 99)),
        }


class BatchEngine:
    """Embeds the due windows of all open streams in batches, one batch at a time.

    Args:
        embedder: the one model of the process (``(batch, samples)`` → ``(batch, dim)``).
        cfg: the detector settings every stream uses.
        max_backlog: hops a stream may have queued before its feeder waits
            (:meth:`Stream.wait_room`): a client sending faster than real time is
            slowed down instead of growing memory.
        hops_per_tick: at most this many hops of one stream go into one batch, so
            that a client catching up on a backlog cannot delay the live streams.
        tick_ms: at most one batch per tick: hops of other streams that fall due
            within it join the batch. Measured with 20 real-time streams
            (``kws bench serve``): 25 ms took a quarter less CPU than a batch per
            hop as it arrives, for about 20 ms more latency; longer ticks saved no more.
        max_batch: windows per embedder call (a larger batch is split). ONNX
            Runtime's memory arena grows with every batch size it meets: in a
            30-minute soak of 20 streams with batches of up to 64 windows the
            process grew by 56 MB; batches of at most 16 keep it within 15 MB of
            the start and cost the same per window.
    """

    def __init__(
        self,
        embedder: Embedder,
        cfg: DetectorConfig = DetectorConfig(),
        max_backlog: int = 50,
        hops_per_tick: int = 4,
        tick_ms: float = 25.0,
        max_batch: int = 16,
    ) -> None:
        cfg.validate()
        if embedder.sample_rate != SAMPLE_RATE:
            raise KwsError(f"the embedder runs at {embedder.sample_rate} Hz; serving needs {SAMPLE_RATE} Hz")
        self.embedder = embedder
        self.cfg = cfg = cfg.for_model(embedder)
        self.hop = cfg.hop_samples()
        self.hop_s = self.hop / SAMPLE_RATE
        self.max_backlog = max_backlog
        self.hops_per_tick = hops_per_tick
        self.tick_s = tick_ms / 1000
        self.max_batch = max_batch
        self.incremental = not isinstance(embedder.stream(self.hop), WaveformWindow)
        self._tick_start = 0.0
        self.streams: set[Stream] = set()
        self.stats = EngineStats()
        self._wake = asyncio.Event()

    def open(self, bank: KeywordBank, rate: int, channels: int) -> Stream:
        """A new stream over ``bank`` (checked against the model) at the given wire format."""
        bank.check_model(self.embedder.model_id)
        if len(bank) == 0:
            raise BankError("the bank has no keywords; enrol some with `kws enroll`")
        stream = Stream(self, bank, rate, channels)
        self.streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        """Forget a stream (its queued hops are dropped)."""
        self.streams.discard(stream)
        stream.due.clear()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Embed and score due hops until cancelled."""
        while True:
            await self._wake.wait()
            # Let the hops of other streams that fall due within the tick join this batch.
            await asyncio.sleep(max(0.0, self._tick_start + self.tick_s - time.monotonic()))
            self._tick_start = time.monotonic()
            self._wake.clear()
            work = [(s, s._take(self.hops_per_tick)) for s in list(self.streams) if s.due]
            if not work:
                continue
            n = sum(not h.gated for _, hops in work for h in hops)
            emb = None
            try:
                # On the event loop, not in a worker thread: with 20 streams the
                # thread hand-off per batch cost more CPU than the loop loses by
                # waiting a few ms for a batch (sockets buffer meanwhile).
                # An incremental stream's state moves on every hop, gated or not.
                emb = self._embed(work) if n or self.incremental else None
            except Exception:  # a failing model must not hang every stream
                log.exception("embedding a batch of %d windows failed; their hops are skipped", n)
                work = [(s, [_Hop(h.time, h.new, h.window, True, h.due) for h in hops]) for s, hops in work]
                for s, _ in work:
                    if s.path is not None:
                        # A half-updated state would stay wrong; from silence it is right a window later.
                        s.path.reset()
            else:
                if n:
                    self.stats.batches += 1
                    self.stats.embedded += n
            self._dispatch(work, emb)
            if any(s.due for s in self.streams):
                self._wake.set()

    def _embed(self, work: list[tuple[Stream, list[_Hop]]]) -> np.ndarray | list[np.ndarray] | None:
        """Embeddings of the hops of ``work`` that are not gated, in order (``None``: none): ``(n, D)``
        whole windows, or for incremental streams ``n`` arrays ``(windows, D)``, one per window of the
        stream's bank (:attr:`kws.bank.KeywordBank.windows`)."""
        if not self.incremental:
            windows = [h.window for _, hops in work for h in hops if not h.gated]
            return np.concatenate(
                [self.embedder(np.stack(windows[i : i + self.max_batch])) for i in range(0, len(windows), self.max_batch)]
            )
        rows = []
        for stream, hops in work:
            for h in hops:
                # Every hop moves the stream's state, as in Detector.hop_embeddings.
                stream.path.update(h.new, h.window)
                if not h.gated:
                    rows.append(stream.path.embed())
        # Streams over banks of other windows embed as many rows per hop: kept as a list, one per hop.
        return rows or None

    def _dispatch(self, work: list[tuple[Stream, list[_Hop]]], emb: np.ndarray | list[np.ndarray] | None) -> None:
        now = time.monotonic()
        row = 0
        for stream, hops in work:
            n = sum(not h.gated for h in hops)
            scores = None
            if n:
                mine = emb[row : row + n]
                scores = stream.bank.score(mine if isinstance(mine, np.ndarray) else np.stack(mine))
            row += n
            it = iter(scores) if scores is not None else iter(())
            per_hop = [None if h.gated else next(it) for h in hops]
            if stream in self.streams:
                stream._scored(hops, per_hop)
            for h in hops:
                self.stats.add_delay(now - h.due, self.hop_s)
