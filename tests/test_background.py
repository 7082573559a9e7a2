"""Calibration on running speech: events counted as the detector makes them, thresholds to a budget."""

from __future__ import annotations

import numpy as np
import pytest

from kws.background import (
    Background,
    calibrate_to_budget,
    count_events,
    load_background,
    smoothed_scores,
)
from kws.bank import Keyword
from kws.detect import DetectorConfig, Trigger
from kws.errors import EnrollmentError

DIM = 8


def _background(scores: np.ndarray, words: list[str] | None = None) -> tuple[Keyword, Background]:
    """A keyword along axis 0 and a background whose hop embeddings score ``scores`` ``(hops,)`` against it."""
    emb = np.zeros((len(scores), DIM), np.float32)
    emb[:, 0] = scores
    emb[:, 1] = np.sqrt(1 - scores**2)
    kw = Keyword("three", np.eye(1, DIM, dtype=np.float32), threshold=0.5, samples=3)
    words = np.array(words if words is not None else [""] * len(scores))
    return kw, Background(emb, words, hop_s=0.1, model_id="m")


def test_count_events_matches_the_detectors_trigger() -> None:
    rng = np.random.default_rng(0)
    smoothed = np.clip(np.cumsum(rng.normal(0, 0.08, 3000)) % 1.6 - 0.6, -1, 1).astype(np.float32)
    for threshold in (0.2, 0.5, 0.8):
        trigger = Trigger(["k"], np.array([threshold]), smoothing=1, refractory_s=1.5)
        expected = sum(trigger.step(0.1 * (i + 1), s[None]) is not None for i, s in enumerate(smoothed))
        assert count_events(smoothed, threshold, hop_s=0.1, refractory_s=1.5) == expected > 0


def test_budget_threshold_is_the_lowest_that_keeps_within_it() -> None:
    rng = np.random.default_rng(1)
    kw, bg = _background(rng.uniform(0.0, 0.9, 36000).astype(np.float32))  # one hour
    cfg = DetectorConfig()
    target = np.array([0.95, 0.97, 0.99])
    for budget in (2.0, 20.0):
        res = calibrate_to_budget(kw, bg, budget, target, cfg)
        sm = smoothed_scores(kw, bg, cfg.smoothing)
        assert res.met and res.expected_fa_per_hour <= budget and res.expected_recall == 1.0
        assert count_events(sm, res.fire_threshold - 1e-3, 0.1, 1.5) > budget  # any lower breaks the budget
    # Unreachable without losing most enrolment clips: capped there, and the best budget reported.
    res = calibrate_to_budget(kw, bg, 0.0, np.array([0.5, 0.6, 0.7]), cfg)
    assert not res.met and res.fire_threshold == pytest.approx(np.quantile([0.5, 0.6, 0.7], 0.25))
    assert res.expected_fa_per_hour > 0


def test_windows_holding_the_keyword_itself_never_count_against_it() -> None:
    scores = np.full(600, 0.1, np.float32)
    scores[300:305] = 0.9
    words = [""] * 600
    for i in range(295, 310):
        words[i] = "tree three"
    kw, bg = _background(scores, words)
    assert smoothed_scores(kw, bg, 2).max() < 0.2


def test_no_background_for_another_model_says_what_to_do(tmp_path) -> None:
    kw, bg = _background(np.zeros(10, np.float32))
    bg.save(tmp_path / "bg.npz")

    class Other:
        model_id = "other"

    with pytest.raises(EnrollmentError, match="without --fa-per-hour"):
        load_background(Other(), tmp_path / "bg.npz")


def test_a_background_is_read_once_until_its_file_changes(tmp_path) -> None:
    class Model:
        model_id = "m"

    path = tmp_path / "bg.npz"
    _background(np.full(10, 0.1, np.float32))[1].save(path)
    first = load_background(Model(), path)
    assert load_background(Model(), path) is first
    with pytest.raises(ValueError):  # shared between callers, so nobody may change it
        first.embeddings[0, 0] = 1.0
    _background(np.full(12, 0.3, np.float32))[1].save(path)
    again = load_background(Model(), path)
    assert len(again.embeddings) == 12 and again.embeddings[0, 0] == pytest.approx(0.3, abs=1e-3)
    path.write_bytes(b"not an npz")
    with pytest.raises(EnrollmentError, match="unreadable"):
        load_background(Model(), path)
