"""Streaming detection: a sliding window over a stream, scored against a keyword bank.

Every hop (default 100 ms) the last window (1 s) is embedded and scored against
every keyword's centers; scores are smoothed over a few hops; a keyword fires
when its smoothed score rises through its threshold and it is the best-scoring
keyword above threshold (with a confirmation time, the best over that time); then
every keyword rests for the refractory time (see :class:`Trigger`).

The window is embedded through the embedder's stream (:meth:`kws.embedder.Embedder.stream`),
which keeps whatever state lets it avoid re-embedding the window from scratch. A
keyword longer than the model's window is scored on a window of its own length
(:attr:`kws.bank.Keyword.frames`) that ends with the same hop: the stream embeds each
distinct window of the bank every hop (:attr:`kws.bank.KeywordBank.windows`), and an
event's time is still the end of the window that fired.

The stream is treated as if preceded by one window of silence, so that a keyword
in the first second is still seen in a full window.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import numpy as np

from kws.audio import SAMPLE_RATE
from kws.bank import KeywordBank
from kws.embedder import Embedder
from kws.errors import BankError, KwsError
from kws.events import Event
from kws.scoring import fire_threshold

log = logging.getLogger(__name__)

__all__ = ["Detector", "DetectorConfig", "DetectorStats", "GATED_SCORE", "HopWindows", "Trigger", "detect_stream"]

# Score pushed into the smoothing history for a hop the energy gate skipped:
# the lowest cosine, so a skipped hop can never help a keyword fire.
GATED_SCORE = -1.0
MAX_CONFIRM_MS = 500.0


@dataclass(frozen=True)
class DetectorConfig:
    """Streaming settings.

    Attributes:
        hop_ms: time between two scored windows; a multiple of the front-end's
            frame hop (10 ms) so that log-mel frames can be reused.
        smoothing: a keyword's score is the mean of its last ``smoothing`` hop
            scores (1 = no smoothing).
        refractory_ms: after an event no keyword fires for this long (and the keyword
            that fired waits until its score has fallen below threshold).
        threshold_offset: added to every keyword's threshold (> 0: fewer false
            alarms, < 0: more recall); ``None``: the model's own
            (:attr:`kws.embedder.Embedder.stream_offset`), set by :meth:`for_model`.
        confirm_ms: after the first keyword rises through its threshold, wait this long
            and fire the keyword that scored best above its threshold meanwhile (0: fire
            at once). A keyword that begins like another ("down on" and "down
            off") is then heard to its end before one of them fires; events come this
            much later.
        vad: skip embedding windows whose energy is below ``vad_floor_dbfs``.
        vad_floor_dbfs: RMS of the whole window, in dB relative to full scale.
    """

    hop_ms: float = 100.0
    smoothing: int = 2
    # Longer than the 1 s window: the word that fired has left the window
    # before anything can fire again (measured on the demo stream: 1000 ms let
    # the tail of "tree" fire "three" a second after "tree" fired).
    refractory_ms: float = 1500.0
    threshold_offset: float | None = None
    confirm_ms: float = 0.0
    vad: bool = True
    vad_floor_dbfs: float = -55.0

    def for_model(self, embedder: Embedder) -> DetectorConfig:
        """These settings for ``embedder``: its own stream offset where none is set."""
        return self if self.threshold_offset is not None else replace(self, threshold_offset=embedder.stream_offset)

    def hop_samples(self, sample_rate: int = SAMPLE_RATE) -> int:
        hop = round(self.hop_ms * sample_rate / 1000)
        if hop <= 0 or abs(hop - self.hop_ms * sample_rate / 1000) > 1e-6:
            raise KwsError(f"hop of {self.hop_ms} ms is not a whole number of samples at {sample_rate} Hz")
        return hop

    def gated(self, window: np.ndarray) -> bool:
        """Whether the energy gate skips ``window`` ``(samples,)``: its RMS is below ``vad_floor_dbfs``."""
        # Mean square of a full-scale-relative RMS at the floor, times window length.
        return self.vad and float(np.dot(window, window)) < len(window) * 10 ** (self.vad_floor_dbfs / 10)

    def validate(self) -> None:
        if self.smoothing < 1:
            raise KwsError(f"smoothing must be at least 1 hop, got {self.smoothing}")
        if self.refractory_ms < 0:
            raise KwsError(f"refractory time cannot be negative, got {self.refractory_ms} ms")
        # An event clip starts the default pre-roll (500 ms) before the window at the close: the
        # window heard best, up to this long before the close, stays inside the clip.
        if not 0 <= self.confirm_ms <= MAX_CONFIRM_MS:
            raise KwsError(f"confirmation time must be 0-{MAX_CONFIRM_MS:g} ms, got {self.confirm_ms} ms")


class Trigger:
    """Smoothing, per-keyword threshold, confirmation and refractory time over a sequence of hop scores.

    One spoken word fires at most once: a keyword is a candidate when its smoothed
    score has *risen* through its threshold (it re-arms only after falling below it
    again); after any event every keyword rests for the refractory time, so that a
    word does not also fire a similar-sounding keyword while the window slides over
    it. The first candidate opens a decision that closes ``confirm_s`` later (at
    once without a confirmation time) with the keyword of the best smoothed score
    above its threshold meanwhile; it fires unless that is the keyword that fired last
    and has not fallen below threshold since. The event's time is the close.
    """

    def __init__(self, names: list[str], thresholds: np.ndarray, smoothing: int, refractory_s: float,
                 confirm_s: float = 0.0) -> None:  # fmt: skip
        self.names = list(names)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.smoothing = smoothing
        self.refractory_s = refractory_s
        self.confirm_s = confirm_s
        self.reset()

    @classmethod
    def for_bank(cls, bank: KeywordBank, cfg: DetectorConfig, offset: float | None = None) -> "Trigger":
        """The trigger a detector with ``cfg`` runs over ``bank``; ``offset`` replaces
        ``cfg.threshold_offset`` (a stream evaluation sweeps it)."""
        offset = cfg.threshold_offset if offset is None else offset
        if offset is None:
            raise KwsError("the detector settings have no threshold offset: take DetectorConfig.for_model(embedder)")
        thresholds = fire_threshold(bank.thresholds, offset)
        return cls(bank.names, thresholds, cfg.smoothing, cfg.refractory_ms / 1000, cfg.confirm_ms / 1000)

    def reset(self) -> None:
        self._history = np.full((self.smoothing, len(self.names)), GATED_SCORE, dtype=np.float32)
        self._steps = 0
        self._resting_until = -math.inf
        self._armed = np.ones(len(self.names), dtype=bool)
        # An open decision: when it closes, and each keyword's best smoothed score above its threshold.
        self._closes_at: float | None = None
        self._best = np.full(len(self.names), -np.inf, dtype=np.float32)

    def step(self, time: float, scores: np.ndarray | None) -> Event | None:
        """Feed one hop's raw scores ``(n_keywords,)`` (``None``: hop skipped by the gate)."""
        self._history[self._steps % self.smoothing] = GATED_SCORE if scores is None else scores
        self._steps += 1
        smoothed = self._history[: min(self._steps, self.smoothing)].mean(axis=0)
        above = smoothed >= self.thresholds
        self._armed |= ~above
        if self._closes_at is None:
            # A small epsilon so that float rounding of accumulated hop times does not
            # shift the end of the refractory period by one hop.
            if not (above & self._armed).any() or time + 1e-9 < self._resting_until:
                return None
            self._closes_at = time + self.confirm_s
        better = above & (smoothed > self._best)
        self._best[better] = smoothed[better]
        if time + 1e-9 < self._closes_at:
            return None
        best = int(np.argmax(self._best))
        score = float(self._best[best])
        self._closes_at = None
        self._best[:] = -np.inf
        # The keyword heard best is still the word that fired it last: nothing new was said.
        if not self._armed[best]:
            return None
        self._resting_until = time + self.refractory_s
        self._armed[best] = False
        return Event(self.names[best], score, float(self.thresholds[best]), time)


class HopWindows:
    """A stream cut into hops: audio in chunks of any length in, for every completed hop its new
    samples and the window that ends with them out (what a detector scores every hop)."""

    def __init__(self, window_samples: int, hop: int) -> None:
        self.hop = hop
        self.window = np.zeros(window_samples, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(new (hop,), window (window_samples,))`` of each hop ``samples`` completes; the rest waits."""
        pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        hops, start = [], 0
        while len(pending) - start >= self.hop:
            new = pending[start : start + self.hop]
            start += self.hop
            self.window = np.concatenate([self.window[self.hop :], new])
            hops.append((new, self.window))
        self._pending = pending[start:].copy()
        return hops


@dataclass
class DetectorStats:
    """What the detector has done so far."""

    samples: int = 0
    hops: int = 0
    embedded: int = 0
    events: int = 0

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


class Detector:
    """Streaming keyword detector over 16 kHz mono float32 audio in chunks of any length."""

    def __init__(self, embedder: Embedder, bank: KeywordBank, cfg: DetectorConfig = DetectorConfig()) -> None:
        bank.check_model(embedder.model_id)
        if len(bank) == 0:
            raise BankError("the bank has no keywords; enrol some with `kws enroll`")
        cfg.validate()
        if embedder.sample_rate != SAMPLE_RATE:
            raise KwsError(f"the embedder runs at {embedder.sample_rate} Hz; the detector needs {SAMPLE_RATE} Hz")
        cfg = cfg.for_model(embedder)
        self.embedder = embedder
        self.bank = bank
        self.cfg = cfg
        self.hop = cfg.hop_samples()
        self.path = embedder.stream(self.hop, bank.windows)
        # Samples of the window of each keyword longer than the model's (events, event clips).
        self.keyword_windows = {
            k.name: embedder.at_frames(k.frames).window_samples for k in bank.keywords.values() if k.frames is not None
        }
        self.trigger = Trigger.for_bank(bank, cfg)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._hops = HopWindows(self.embedder.window_samples, self.hop)
        self.path.reset()
        self.trigger.reset()
        self.stats = DetectorStats()

    def hop_scores(self, samples: np.ndarray) -> Iterator[tuple[float, np.ndarray | None]]:
        """Advance by ``samples`` ``(n,)``; yields ``(time, raw scores (n_keywords,) or None)`` per hop.

        ``None`` marks a hop whose window the energy gate found too quiet to embed.
        Samples that do not complete a hop are kept for the next call.
        """
        for time, emb in self.hop_embeddings(samples):
            yield time, None if emb is None else self.bank.score(emb[None])[0]

    def hop_embeddings(self, samples: np.ndarray) -> Iterator[tuple[float, np.ndarray | None]]:
        """As :meth:`hop_scores`, but yields each hop's window embeddings ``(windows, D)``, one per
        window of the bank (:attr:`kws.bank.KeywordBank.windows`; one for a bank of the model's
        window alone), or ``None``."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise KwsError(f"the detector takes mono audio (samples,), got shape {samples.shape}")
        if not np.issubdtype(samples.dtype, np.floating):
            raise KwsError(f"the detector takes float audio in [-1, 1], got {samples.dtype}")
        for new, window in self._hops.push(samples):
            self.path.update(new, window)
            self.stats.samples += self.hop
            self.stats.hops += 1
            time = self.stats.samples / SAMPLE_RATE
            if self.cfg.gated(window):
                yield time, None
                continue
            self.stats.embedded += 1
            yield time, self.path.embed()

    def process(self, samples: np.ndarray) -> list[Event]:
        """Feed a chunk ``(n,)`` of 16 kHz mono float32 audio; returns the events it completed."""
        events = []
        for time, scores in self.hop_scores(samples):
            event = self.trigger.step(time, scores)
            if event is not None:
                log.debug("event %s", event)
                events.append(event)
        self.stats.events += len(events)
        return events


def detect_stream(
    embedder: Embedder,
    bank: KeywordBank,
    source: Iterable[np.ndarray],
    cfg: DetectorConfig = DetectorConfig(),
    callback: Callable[[Event], None] | None = None,
) -> Iterator[Event]:
    """Detect keywords in ``source`` (chunks of 16 kHz mono float32); yields events as they fire.

    ``callback``, if given, is called with each event before it is yielded.
    """
    detector = Detector(embedder, bank, cfg)
    for chunk in source:
        for event in detector.process(chunk):
            if callback is not None:
                callback(event)
            yield event
