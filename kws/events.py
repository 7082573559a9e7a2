"""Events: what a detection is, and the audio clip saved around it.

:class:`Event` is what the detector yields. :class:`EventRecorder` writes the
audio around each event (the window that fired plus a pre-roll and a post-roll)
as a WAV with a JSON sidecar saying where the window lies, in a folder kept
under a size cap; :func:`read_sidecar` reads that sidecar back (feedback on an
event clip scores the window that fired).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from kws.audio import SAMPLE_RATE, write_audio
from kws.errors import AudioError
from kws.fileio import file_lock, timestamp, write_json

__all__ = [
    "Event", "EventClipConfig", "EventRecorder", "read_sidecar", "EVENT_FORMAT", "EVENT_MANIFEST",
    "EVENT_MANIFEST_FORMAT",
]  # fmt: skip

log = logging.getLogger(__name__)

EVENT_FORMAT = "kws-event"


@dataclass(frozen=True)
class Event:
    """A detection. ``time``: seconds from the stream start to the END of the window that fired."""

    keyword: str
    score: float
    threshold: float
    time: float

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(score=round(self.score, 4), threshold=round(self.threshold, 4), time=round(self.time, 3))
        return d


@dataclass(frozen=True)
class EventClipConfig:
    """What :class:`EventRecorder` keeps around an event.

    Attributes:
        preroll_ms: audio kept before the window that fired.
        postroll_ms: audio kept after it (the clip is written once it has arrived).
        max_mb: the event clips and sidecars kws saved in the folder are kept
            under this size, the oldest deleted first (other files are never touched).
    """

    preroll_ms: float = 500.0
    # As long as the window: a negative keeps every window of its clip that could fire
    # the keyword, and the word that fired stays in the window for that long.
    postroll_ms: float = 1000.0
    max_mb: float = 100.0

    def validate(self) -> None:
        if self.preroll_ms < 0 or self.postroll_ms < 0:
            raise AudioError(f"pre-roll and post-roll cannot be negative ({self.preroll_ms}, {self.postroll_ms} ms)")
        if self.max_mb <= 0:
            raise AudioError(f"the event folder's size cap must be positive, got {self.max_mb} MB")


def _safe_name(keyword: str) -> str:
    return re.sub(r"[^\w-]+", "_", keyword).strip("_") or "keyword"


class EventRecorder:
    """Writes the audio around each event to ``folder`` as ``<run>_<time>s_<keyword>.wav`` + ``.json``.

    The clips it writes are listed in the folder's manifest (:data:`EVENT_MANIFEST`);
    the folder's size cap deletes the oldest of those, and never any other file.

    Feed it the same chunks as the :class:`~kws.detect.Detector` and the events
    each chunk produced: ``recorder.feed(chunk, detector.process(chunk))``; call
    :meth:`close` at the end of the stream to write clips still waiting for their
    post-roll. Stream time 0 is the first sample fed; before it the stream is
    silence (as the detector assumes), so early clips are padded with zeros.

    ``window_samples`` is the model's window; ``keyword_windows`` the windows of the keywords
    longer than it (:attr:`kws.detect.Detector.keyword_windows`), whose clips hold their own.
    """

    def __init__(
        self,
        folder: str | Path,
        window_samples: int,
        model_id: str,
        config: EventClipConfig = EventClipConfig(),
        sample_rate: int = SAMPLE_RATE,
        hop_ms: float | None = None,
        keyword_windows: Mapping[str, int] | None = None,
    ) -> None:
        config.validate()
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise AudioError(f"{self.folder}: not a folder; give --save-events a folder (it is created if missing)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.window = window_samples
        # Keywords longer than the model's window fire on a window of their own (Detector.keyword_windows).
        self.keyword_windows = dict(keyword_windows or {})
        self.model_id = model_id
        # The detector's hop, kept in each sidecar: feedback scans a clip's windows at the
        # hop the user detected with (the threshold it fired at is in the event itself).
        self.hop_ms = hop_ms
        self.cfg = config
        self.sr = sample_rate
        self.pre = round(config.preroll_ms * sample_rate / 1000)
        self.post = round(config.postroll_ms * sample_rate / 1000)
        # Names start with the run's start so that runs never overwrite each other and sort by age.
        self.run = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream sample index of _buf[0]
        self._fed = 0
        self._pending: list[tuple[Event, int, int]] = []  # event, clip start, clip end (samples)
        self.written: list[Path] = []

    def feed(self, chunk: np.ndarray, events: Sequence[Event] = ()) -> list[Path]:
        """Add ``(samples,)`` audio and the events it completed; returns the clips written now."""
        self._buf = np.concatenate([self._buf, np.asarray(chunk, dtype=np.float32)])
        self._fed += len(chunk)
        for ev in events:
            end = round(ev.time * self.sr)
            self._pending.append((ev, end - self._window(ev) - self.pre, end + self.post))
        written = self._flush(final=False)
        # Later events end after the samples fed so far minus a hop (< 1 s), so their
        # clips start no earlier than this.
        longest = max([self.window, *self.keyword_windows.values()])
        keep_from = self._fed - (longest + self.pre + self.sr)
        if self._pending:
            keep_from = min(keep_from, min(start for _, start, _ in self._pending))
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start :]
            self._buf_start = keep_from
        return written

    def _window(self, ev: Event) -> int:
        """The length of the window that fired ``ev`` (samples)."""
        return self.keyword_windows.get(ev.keyword, self.window)

    def close(self) -> list[Path]:
        """Write the clips still waiting for post-roll, with the audio there is."""
        return self._flush(final=True)

    def _flush(self, final: bool) -> list[Path]:
        written, waiting = [], []
        for item in self._pending:
            if final or item[2] <= self._fed:
                written.append(self._write(*item))
            else:
                waiting.append(item)
        self._pending = waiting
        return written

    def _audio(self, start: int, end: int) -> np.ndarray:
        """Stream samples ``[start, end)``, zeros before the stream start."""
        end = min(end, self._fed)
        lead = max(0, -start)
        a, b = max(start, 0) - self._buf_start, end - self._buf_start
        return np.concatenate([np.zeros(lead, np.float32), self._buf[a:b]])

    def _write(self, ev: Event, start: int, end: int) -> Path:
        stem = f"{self.run}_{ev.time:09.2f}s_{_safe_name(ev.keyword)}"
        wav = self.folder / f"{stem}.wav"
        write_audio(wav, self._audio(start, end), self.sr)
        write_json(
            wav.with_suffix(".json"),
            {
                "format": EVENT_FORMAT,
                **ev.to_json(),
                "clip": wav.name,
                "clip_start_s": round(start / self.sr, 4),
                "window_start_s": round(self.pre / self.sr, 4),
                "window_end_s": round((self.pre + self._window(ev)) / self.sr, 4),
                "sample_rate": self.sr,
                "model_id": self.model_id,
                **({} if self.hop_ms is None else {"hop_ms": self.hop_ms}),
                "saved": timestamp(),
            },
        )
        log.debug("saved event clip %s", wav)
        self.written.append(wav)
        self._enforce_cap(keep=wav)
        return wav

    def _enforce_cap(self, keep: Path) -> None:
        """List ``keep`` (and its sidecar) in the folder's manifest, then delete the oldest
        clips the manifest lists until they are under the cap.

        Only clips in the manifest, which lists what kws itself saved, and whose
        sidecar is still kws's own are ever deleted: a user's own ``.wav`` +
        ``.json`` in the folder are left alone.
        """
        manifest = self.folder / EVENT_MANIFEST
        with file_lock(manifest):
            # A listed clip whose sidecar is no longer kws's own is forgotten, never deleted.
            listed = [e for e in _read_manifest(manifest) if e != keep.name and _is_event_clip(self.folder / e)]
            entries = listed + [keep.name]
            sizes = {e: _pair_size(self.folder / e) for e in entries}
            total, cap = sum(sizes.values()), self.cfg.max_mb * 1024 * 1024
            kept = []
            for e in entries:
                wav = self.folder / e
                if total > cap and e != keep.name:
                    wav.unlink(missing_ok=True)
                    wav.with_suffix(".json").unlink(missing_ok=True)
                    total -= sizes[e]
                    log.info("event folder over %.1f MB: deleted %s", self.cfg.max_mb, e)
                elif sizes[e]:
                    kept.append(e)
            write_json(manifest, {"format": EVENT_MANIFEST_FORMAT, "version": 1, "clips": kept})


EVENT_MANIFEST = ".kws-events.json"
EVENT_MANIFEST_FORMAT = "kws-event-manifest"


def _pair_size(wav: Path) -> int:
    """Bytes of an event clip and its sidecar (0 for files that are gone)."""
    return sum(p.stat().st_size for p in (wav, wav.with_suffix(".json")) if p.is_file())


def _is_event_clip(wav: Path) -> bool:
    """Whether ``wav``'s sidecar is a kws event sidecar written for it."""
    try:
        d = json.loads(wav.with_suffix(".json").read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("format") == EVENT_FORMAT and d.get("clip") == wav.name


def _read_manifest(path: Path) -> list[str]:
    """The clip names an event folder's manifest lists, oldest first (none if it is missing).

    A damaged manifest, or a name in it that is not a plain ``.wav`` name in the folder,
    forgets those clips (they are then never deleted) rather than risk deleting
    anything else.
    """
    if not path.is_file():
        return []
    try:
        d = json.loads(path.read_text())
        clips = d["clips"] if isinstance(d, dict) and d.get("format") == EVENT_MANIFEST_FORMAT else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError) as exc:
        log.warning("%s: unreadable (%s); the clips it listed will not be deleted", path, exc)
        return []
    if not isinstance(clips, list):
        log.warning("%s: not a kws event manifest; the clips it listed will not be deleted", path)
        return []
    return [c for c in clips if isinstance(c, str) and c.endswith(".wav") and Path(c).name == c and c[0] != "."]


def read_sidecar(path: str | Path) -> dict | None:
    """The event sidecar beside an audio clip, or ``None`` if the clip is not an event clip."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return None
    hint = "delete it to use the clip as a plain clip"
    try:
        d = json.loads(side.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise AudioError(f"{side}: unreadable event sidecar ({reason}); {hint}") from exc
    if not isinstance(d, dict) or d.get("format") != EVENT_FORMAT:
        return None
    if not all(_is_number(d.get(k)) for k in ("window_start_s", "window_end_s")):
        raise AudioError(f"{side}: event sidecar lacks the window's position (window_start_s, window_end_s); {hint}")
    if "threshold" in d and not _is_number(d["threshold"]):
        raise AudioError(f"{side}: event sidecar's threshold {d['threshold']!r} is not a number; {hint}")
    if "hop_ms" in d and not (_is_number(d["hop_ms"]) and 0 < d["hop_ms"] <= 1000):
        raise AudioError(f"{side}: event sidecar's hop_ms {d['hop_ms']!r} is not a hop of 0-1000 ms; {hint}")
    return d


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
