"""How a keyword scores and how its threshold is chosen: the one home of keyword calibration.

* Centers: the renormalised mean of a keyword's clip embeddings, or several
  centers by a spherical k-means split (:func:`kmeans_assign`, :func:`make_centers`).
* Target scores: each clip's leave-one-out score (:func:`leave_one_out_scores`),
  how well a new utterance of the word is expected to score.
* Calibration (:func:`calibrate`): the threshold from target and impostor scores.
* Recalibration after feedback (:func:`recalibrate`): the same rule on the
  keyword's positives and negatives (see :mod:`kws.feedback`).
* The threshold a stream fires at (:func:`fire_threshold`): the keyword's
  threshold plus the detector's offset.

Enrolment (:mod:`kws.enroll`), detection (:mod:`kws.detect`), stream evaluation
(:mod:`kws.streams`) and feedback (:mod:`kws.feedback`) all score through here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from kws.bank import Keyword, KeywordBank, apply_negatives
from kws.errors import EnrollmentError
from kws.metrics import normalize, threshold_at_far, with_spoken

log = logging.getLogger(__name__)

__all__ = [
    "Calibration",
    "FeedbackConfig",
    "KMEANS_ITERS",
    "TARGET_QUANTILE",
    "calibrate",
    "enrolled_state",
    "fire_threshold",
    "kmeans_assign",
    "leave_one_out_scores",
    "make_centers",
    "nearest_keyword",
    "recalibrate",
    "recenter",
    "suppressed",
]

# Defaults shared by enrolment (kws.enroll.EnrollConfig) and feedback (FeedbackConfig).
TARGET_QUANTILE = 0.25
KMEANS_ITERS = 10


def fire_threshold(threshold: float | np.ndarray, offset: float) -> float | np.ndarray:
    """The score a stream must reach to fire a keyword of ``threshold`` (a float or ``(n_keywords,)``):
    enrolment calibrates on whole, centred clips, a stream shows partial and shifted words,
    so the detector adds ``offset`` (:attr:`kws.detect.DetectorConfig.threshold_offset`)."""
    return threshold + offset


# ---------------------------------------------------------------------------- centers and scores


def kmeans_assign(clip_emb: np.ndarray, k: int, iters: int) -> np.ndarray:
    """Spherical k-means on ``(n, D)`` unit vectors → ``(n,)`` cluster index (farthest-first seeds)."""
    seeds = [int(np.argmax(clip_emb @ normalize(clip_emb.mean(axis=0))))]
    while len(seeds) < k:
        seeds.append(int(np.argmin((clip_emb @ clip_emb[seeds].T).max(axis=1))))
    centers = clip_emb[seeds]
    for _ in range(iters):
        assign = np.argmax(clip_emb @ centers.T, axis=1)
        centers = np.stack(
            [normalize(clip_emb[assign == c].mean(axis=0)) if np.any(assign == c) else centers[c] for c in range(k)]
        )
    return np.argmax(clip_emb @ centers.T, axis=1)


def make_centers(emb: np.ndarray, assign: np.ndarray, keep: np.ndarray, spoken: np.ndarray | None = None) -> np.ndarray:
    """Renormalised mean of ``emb`` ``(n, m, D)`` per cluster, over kept clips; empty clusters dropped;
    with the keyword's ``spoken`` vector ``(D,)`` added (:func:`kws.metrics.with_spoken`)."""
    dim = emb.shape[-1]
    centers = np.stack([normalize(emb[(assign == c) & keep].reshape(-1, dim).mean(axis=0)) for c in np.unique(assign[keep])])
    return with_spoken(centers, spoken)


def leave_one_out_scores(emb: np.ndarray, assign: np.ndarray, spoken: np.ndarray | None = None) -> np.ndarray:
    """Each clip's score against the centers made without it.

    Args:
        emb: ``(n, m, D)``: per clip, its own embedding first, then those of its
            augmented copies (``m = 1`` without augmentation).
        assign: ``(n,)`` cluster of each clip.
        spoken: the keyword's spoken vector ``(D,)``, in every center (see :func:`make_centers`).
    Returns:
        ``(n,)`` best cosine of each clip's own embedding to the others' centers
        (augmented copies of a clip never score it).
    """
    n = len(emb)
    scores = np.empty(n, dtype=np.float32)
    for i in range(n):
        keep = np.arange(n) != i
        scores[i] = float((make_centers(emb, assign, keep, spoken) @ emb[i, 0]).max())
    return scores


def nearest_keyword(bank: KeywordBank, centers: np.ndarray, exclude: str | None = None) -> tuple[str, float] | None:
    """The bank keyword (other than ``exclude``) whose centers come closest to ``centers`` ``(k, D)``."""
    best = None
    for kw in bank.keywords.values():
        if kw.name == exclude:
            continue
        sim = float((centers @ kw.centers.T).max())
        if best is None or sim > best[1]:
            best = (kw.name, sim)
    return best


# ---------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """How a threshold was chosen.

    Attributes:
        threshold: the chosen threshold, ``min(far_threshold, target_cap)``.
        far_threshold: the lowest threshold whose false-accept rate on the
            impostors is at most ``target_far``.
        target_cap: the ``target_quantile`` of the leave-one-out similarities
            (``None`` with a single clip).
        target_far: the false-accept rate asked for.
        expected_far: the false-accept rate at ``threshold`` on the impostors.
        expected_frr: the fraction of leave-one-out similarities below ``threshold``.
        target_scores: ``(n_clips,)`` leave-one-out similarities.
        impostors: how many impostor embeddings were scored.
        limited_by: ``"far"`` (the impostors set it) or ``"targets"`` (lowered
            so that most enrolment clips still pass; the FAR target is then missed).
    """

    threshold: float
    far_threshold: float
    target_cap: float | None
    target_far: float
    expected_far: float
    expected_frr: float
    target_scores: np.ndarray
    impostors: int
    limited_by: str

    def to_json(self) -> dict:
        return {
            "rule": "threshold = min(lowest threshold with FAR <= target_far on impostors, "
            "target_quantile of leave-one-out similarities)",
            "threshold": round(self.threshold, 6),
            "far_threshold": round(self.far_threshold, 6),
            "target_cap": None if self.target_cap is None else round(self.target_cap, 6),
            "target_far": self.target_far,
            "expected_far": round(self.expected_far, 6),
            "expected_frr": round(self.expected_frr, 6),
            "target_scores": [round(float(s), 6) for s in self.target_scores],
            "impostors": self.impostors,
            "limited_by": self.limited_by,
        }


def calibrate(
    target_scores: np.ndarray, impostor_scores: np.ndarray, target_far: float, target_quantile: float = TARGET_QUANTILE
) -> Calibration:
    """Choose a threshold from target and impostor scores.

    The rule: take the lowest threshold whose false-accept rate on the impostor
    scores is at most ``target_far``; but never go above the ``target_quantile``
    of the target (leave-one-out) scores, so that most genuine utterances still
    pass. When that cap binds, the FAR target is missed and ``expected_far``
    says by how much. With no target scores (one clip) only the impostors decide.

    Args:
        target_scores: ``(n,)`` scores of genuine utterances (may be empty).
        impostor_scores: ``(m,)`` scores of other speech; ``m >= 1``.
    """
    impostor_scores = np.asarray(impostor_scores, dtype=np.float64)
    target_scores = np.asarray(target_scores, dtype=np.float64)
    if len(impostor_scores) == 0:
        raise EnrollmentError("calibration needs impostor speech; none was given")
    far_t = threshold_at_far(impostor_scores, target_far)
    cap = float(np.quantile(target_scores, target_quantile)) if len(target_scores) else None
    threshold, limited_by = far_t, "far"
    if cap is not None and cap < far_t:
        threshold, limited_by = cap, "targets"
    return Calibration(
        threshold=float(threshold),
        far_threshold=float(far_t),
        target_cap=cap,
        target_far=float(target_far),
        expected_far=float(np.mean(impostor_scores >= threshold)),
        expected_frr=float(np.mean(target_scores < threshold)) if len(target_scores) else float("nan"),
        target_scores=target_scores.astype(np.float32),
        impostors=len(impostor_scores),
        limited_by=limited_by,
    )


# ---------------------------------------------------------------------------- recalibration after feedback


@dataclass(frozen=True)
class FeedbackConfig:
    """How feedback re-calibrates a keyword.

    Attributes:
        negative_rule: ``"suppress"`` or ``"raise"`` (see :mod:`kws.feedback`);
            ``None`` keeps the keyword's own rule.
        raise_margin: with ``"raise"``, the threshold goes this far above the
            highest negative's score.
        target_quantile: as at enrolment (:class:`kws.enroll.EnrollConfig`).
        kmeans_iters: as at enrolment, when positives re-make several centers.
    """

    negative_rule: str | None = None
    raise_margin: float = 0.02
    target_quantile: float = TARGET_QUANTILE
    kmeans_iters: int = KMEANS_ITERS


def enrolled_state(keyword: Keyword) -> dict:
    """The keyword as stored before any feedback (JSON data)."""
    return keyword.history[0].before if keyword.history else keyword.state_json()


def recenter(keyword: Keyword, cfg: FeedbackConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Centers ``(k, dim)``, raw leave-one-out scores ``(n,)`` and their embeddings ``(n, dim)`` (or ``None``).

    Without positive feedback these are the enrolment's own (augmented centers included);
    with it, the centers are re-made from all positives as enrolment makes them.
    """
    enrolled = enrolled_state(keyword)
    positives = keyword.all_positives
    if not any(e.kind == "positive" for e in keyword.history):
        centers = np.asarray(enrolled["centers"], dtype=np.float32)
        target = np.asarray(enrolled["info"].get("calibration", {}).get("target_scores", []), dtype=np.float32)
        aligned = positives if positives is not None and len(positives) == len(target) else None
        return centers, target, aligned
    assert positives is not None  # add_positive refuses keywords without positives
    k = min(len(enrolled["centers"]), len(positives))
    emb = positives[:, None]
    assign = kmeans_assign(positives, k, cfg.kmeans_iters) if k > 1 else np.zeros(len(positives), dtype=int)
    centers = make_centers(emb, assign, np.ones(len(positives), dtype=bool), keyword.spoken).astype(np.float32)
    target = leave_one_out_scores(emb, assign, keyword.spoken) if len(positives) > 1 else np.zeros(0, np.float32)
    return centers, target, positives


def suppressed(target: np.ndarray, target_emb: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the enrolment clips (leave-one-out scores ``target``, embeddings
    ``target_emb`` ``(n, dim)``) that ``negatives`` ``(m, dim)`` suppress, each clip's
    nearest *other* clip standing in for its own, as leave-one-out scores it."""
    others = target_emb @ target_emb.T
    np.fill_diagonal(others, -np.inf)
    nearest = others.max(axis=1) if len(others) > 1 else None
    return apply_negatives(target, (target_emb @ negatives.T).max(axis=1), nearest) != target


def recalibrate(keyword: Keyword, impostors: np.ndarray, config: FeedbackConfig = FeedbackConfig()) -> Calibration:
    """Re-make ``keyword``'s centers and threshold from its positives and negatives, in place.

    The threshold comes from :func:`calibrate` on the leave-one-out
    and impostor scores as the keyword now scores them (its feedback negatives applied
    under ``"suppress"``); under ``"raise"`` it is then lifted above their scores.
    Confusable words (:data:`kws.bank.CONFUSABLE_SOURCE`) only suppress enrolment clips here.

    Args:
        impostors: ``(M, dim)`` unit-norm embeddings of other speech.
    """
    enrolled_cal = enrolled_state(keyword)["info"].get("calibration", {})
    target_far = float(enrolled_cal.get("target_far", 0.01))
    centers, target, target_emb = recenter(keyword, config)
    keyword.centers = centers
    negatives = keyword.negatives
    suppress = keyword.negative_rule == "suppress" and negatives is not None
    if suppress and target_emb is not None:
        # A suppressed enrolment clip cannot pass at any threshold: leaving it in would only
        # drag the target-quantile cap (and so the threshold) down to the suppressed score.
        kept = ~suppressed(target, target_emb, negatives)
        if not kept.all():
            log.warning("%d of %d enrolment clips of %r are nearer a negative than the keyword",
                        int((~kept).sum()), len(kept), keyword.name)
        target = target[kept]
    # The user's negatives applied when the rule is "suppress"; not the confusable words:
    # suppressing the impostors nearest the keyword lowers the threshold, and for confusable
    # words (many, and close to impostor words) that cost more false alarms on streams than
    # they saved (recipes/false_alarms/README.md).
    impostor_scores = keyword.score(impostors, feedback_only=True)
    cal = calibrate(target, impostor_scores, target_far, config.target_quantile)
    raised = keyword.feedback_negatives
    if keyword.negative_rule == "raise" and raised is not None:
        above = float((raised @ centers.T).max()) + config.raise_margin
        if above > cal.threshold:
            cal = dataclasses.replace(
                cal,
                threshold=above,
                expected_far=float(np.mean(impostor_scores >= above)),
                expected_frr=float(np.mean(target < above)) if len(target) else float("nan"),
                limited_by="negatives",
            )
    keyword.threshold = cal.threshold
    keyword.info = {
        **enrolled_state(keyword)["info"],
        "calibration": cal.to_json(),
        "feedback": {"negative_rule": keyword.negative_rule, "negatives": 0 if negatives is None else len(negatives)},
    }
    return cal
