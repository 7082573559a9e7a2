"""Calibration on running speech: a keyword's threshold from a false-alarm budget per hour.

Isolated impostor clips say how often a *word* is taken for the keyword; a stream
also shows the detector parts of words, two words at once and the joins between
them, which is where most false alarms come from. So the budget is measured where
the detector runs: the keyword's score is slid over a bundled stream of background
speech (:class:`Background`, one file per model in ``kws/assets/``: real telephone
sentences with their wake words cut out, real read sentences, and synthetic
sentences of the training vocabulary; see ``recipes/false_alarms/background.py``),
events are counted as the detector makes them (smoothing, rising edge, refractory
time), and the threshold is the lowest one whose events stay within the budget.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws.bank import Keyword
from kws.detect import GATED_SCORE, DetectorConfig
from kws.embedder import ASSETS, Embedder
from kws.errors import EnrollmentError
from kws.fileio import atomic_path
from kws.scoring import TARGET_QUANTILE, fire_threshold

log = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND_GLOB",
    "Background",
    "BudgetCalibration",
    "apply_budget",
    "calibrate_to_budget",
    "count_events",
    "keep_budget",
    "load_background",
    "smoothed_scores",
]

BACKGROUND_GLOB = "background*.npz"


@dataclass
class Background:
    """A stream of background speech, embedded every hop.

    Attributes:
        embeddings: ``(hops, D)`` window embeddings; NaN rows where the energy gate skipped the hop.
        words: ``(hops,)`` the known words in each window, space-separated (``""``: none known),
            so that a window holding the keyword itself is never counted against it.
        hop_s: seconds between hops.
        model_id: the model that made the embeddings.
        source: what the stream is made of (for messages and the bank's record).
    """

    embeddings: np.ndarray
    words: np.ndarray
    hop_s: float
    model_id: str
    source: str = ""

    @property
    def hours(self) -> float:
        return len(self.embeddings) * self.hop_s / 3600

    def kept(self, word: str) -> np.ndarray:
        """``(hops,)`` the hops that count against keyword ``word``: embedded (not gated) and not holding it."""
        own = np.array([word.lower() in w.split() for w in self.words], dtype=bool)
        return ~np.isnan(self.embeddings[:, 0]) & ~own

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            # float16 halves the bundled file; scores need no more than 3 digits.
            np.savez_compressed(fh, embeddings=self.embeddings.astype(np.float16), words=self.words,
                                hop_s=np.array(self.hop_s), model_id=np.array(self.model_id),
                                source=np.array(self.source))  # fmt: skip


def load_background(embedder: Embedder, path: str | Path | None = None) -> Background:
    """The background stream of ``embedder``'s model: ``path``, or the bundled one made for it.

    A file is read once per process and kept while it is unchanged (enrolment reads the stream
    for the budget and for the running-speech impostors, a server on every enrolment); its
    arrays are read-only, being shared.

    Raises:
        EnrollmentError: none for this model, or an unreadable file.
    """
    hint = "enrol without --fa-per-hour, or make one with recipes/false_alarms/background.py"
    for candidate in [Path(path)] if path is not None else sorted(ASSETS.glob(BACKGROUND_GLOB)):
        try:
            stat = candidate.stat()
            background = _read_background(str(candidate.resolve()), (stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except (OSError, ValueError, KeyError) as exc:
            raise EnrollmentError(f"{candidate}: unreadable background stream ({exc}); {hint}") from exc
        if background.model_id == embedder.model_id:
            return background
    where = path if path is not None else f"{ASSETS}/{BACKGROUND_GLOB}"
    raise EnrollmentError(f"no background stream for model {embedder.model_id} in {where}; {hint}")


@functools.lru_cache(maxsize=8)
def _read_background(path: str, version: tuple[int, int, int]) -> Background:
    """The file at ``path``; ``version`` (inode, modification time, size) keys the cache."""
    with np.load(path, allow_pickle=False) as z:
        embeddings = np.asarray(z["embeddings"], dtype=np.float32)
        words = z["words"].astype(str)
        embeddings.flags.writeable = words.flags.writeable = False
        return Background(embeddings, words, float(z["hop_s"]), str(z["model_id"]), str(z["source"]))


@dataclass
class BudgetCalibration:
    """How a threshold was chosen for a false-alarm budget.

    Attributes:
        fa_per_hour: the budget asked for (events per hour of background speech).
        fire_threshold: the score the keyword fires at in a stream (threshold + the detector's offset).
        expected_fa_per_hour: false alarms per hour on the background at ``fire_threshold``.
        expected_recall: share of the enrolment clips' leave-one-out scores at or above it.
        met: whether the budget was met; if not, see :func:`calibrate_to_budget` for the threshold,
            and ``expected_fa_per_hour`` is the budget it reaches.
        background_hours: hours of background speech measured.
    """

    fa_per_hour: float
    fire_threshold: float
    expected_fa_per_hour: float
    expected_recall: float
    met: bool
    background_hours: float

    def to_json(self) -> dict:
        # With one enrolment clip there is no leave-one-out score, so no expected recall (None).
        out = {k: round(v, 6) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


def smoothed_scores(keyword: Keyword, background: Background, smoothing: int) -> np.ndarray:
    """``(hops,)`` the keyword's smoothed score on each hop of the background, as the detector's
    trigger sees it (gated hops and windows holding the keyword itself count as the lowest score)."""
    scores = np.full(len(background.embeddings), GATED_SCORE, dtype=np.float32)
    kept = background.kept(keyword.name)
    scores[kept] = keyword.score(background.embeddings[kept])
    padded = np.concatenate([np.full(smoothing - 1, GATED_SCORE, np.float32), scores])
    return np.convolve(padded, np.ones(smoothing) / smoothing, mode="valid").astype(np.float32)


def count_events(smoothed: np.ndarray, threshold: float, hop_s: float, refractory_s: float) -> int:
    """Events one keyword alone fires on ``smoothed`` ``(hops,)`` at ``threshold``, by the detector's
    rule (:class:`kws.detect.Trigger`): on a rise through the threshold, then resting ``refractory_s``."""
    events, resting_until, armed, prev = 0, -math.inf, True, -2
    for i in np.flatnonzero(smoothed >= threshold):
        armed |= i != prev + 1  # it fell below the threshold since the last hop above
        prev = i
        t = i * hop_s
        if t + 1e-9 < resting_until or not armed:
            continue
        events += 1
        resting_until, armed = t + refractory_s, False
    return events


def calibrate_to_budget(
    keyword: Keyword,
    background: Background,
    fa_per_hour: float,
    target_scores: np.ndarray,
    detector: DetectorConfig = DetectorConfig(),
    target_quantile: float = TARGET_QUANTILE,
    fallback: float = -math.inf,
) -> BudgetCalibration:
    """The lowest stream threshold at which ``keyword`` fires at most ``fa_per_hour`` on the background.

    The threshold is not set above the ``target_quantile`` of the leave-one-out scores
    ``target_scores`` ``(n,)``: a spotter that misses most of its keyword is no answer to a
    budget; the budget is then reported as not met, with the best one reachable, and the
    threshold is the higher of that cap and ``fallback`` (the stream threshold that
    calibration on isolated clips gives): a budget never makes a keyword fire more easily.
    """
    if fa_per_hour < 0 or not math.isfinite(fa_per_hour):
        raise EnrollmentError(f"the false-alarm budget must be a number of events per hour >= 0, got {fa_per_hour}")
    hop_s, rest = background.hop_s, detector.refractory_ms / 1000
    smoothed = smoothed_scores(keyword, background, detector.smoothing)
    allowed = fa_per_hour * background.hours
    # Events only fall as the threshold rises (up to refractory effects): bisect over the scores seen.
    cands = np.unique(smoothed[smoothed > GATED_SCORE])
    lo, hi = 0, len(cands)  # cands[hi] (or above every score) meets the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if count_events(smoothed, float(cands[mid]), hop_s, rest) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    fire = float(cands[lo]) if lo < len(cands) else float(cands[-1]) + 1e-4 if len(cands) else 0.0
    cap = float(np.quantile(target_scores, target_quantile)) if len(target_scores) else math.inf
    met = fire <= cap
    if not met:
        fire = max(cap, fallback)
    events = count_events(smoothed, fire, hop_s, rest)
    recall = float(np.mean(np.asarray(target_scores) >= fire)) if len(target_scores) else float("nan")
    return BudgetCalibration(fa_per_hour, fire, events / background.hours, recall, met, background.hours)


def apply_budget(keyword: Keyword, budget: BudgetCalibration, detector: DetectorConfig) -> None:
    """Set ``keyword``'s threshold (in place) so that a detector with ``detector``'s offset fires at
    the budget's threshold, and record the budget in its info."""
    # The inverse of kws.scoring.fire_threshold.
    keyword.threshold = float(budget.fire_threshold - detector.threshold_offset)
    keyword.info = {**keyword.info, "budget": budget.to_json()}


def keep_budget(
    keyword: Keyword, background: Background, target_scores: np.ndarray, detector: DetectorConfig
) -> BudgetCalibration | None:
    """After feedback re-calibrated ``keyword`` (in place), set its threshold again by the budget
    it was enrolled with (its info's ``budget``); ``None`` (and nothing done) if it has none.
    ``target_scores`` ``(n,)``: its leave-one-out scores as now re-calibrated."""
    asked = keyword.info.get("budget")
    if not asked:
        return None
    fallback = float(fire_threshold(keyword.threshold, detector.threshold_offset))
    budget = calibrate_to_budget(
        keyword, background, float(asked["fa_per_hour"]), target_scores, detector, fallback=fallback
    )
    apply_budget(keyword, budget, detector)
    return budget
