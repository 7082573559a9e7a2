"""Metrics against brute-force computations on small hand-made cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kws import metrics


def _brute_rates(target: np.ndarray, impostor: np.ndarray, t: float) -> tuple[float, float]:
    far = sum(s >= t for s in impostor) / len(impostor)
    frr = sum(s < t for s in target) / len(target)
    return far, frr


def test_det_curve_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    target = np.round(rng.normal(0.6, 0.2, 17), 2)
    impostor = np.round(rng.normal(0.2, 0.2, 23), 2)
    far, frr, thr = metrics.det_curve(target, impostor)
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0)
    assert far[-1] == 0 and frr[-1] == 1 and np.isinf(thr[-1])
    for f, r, t in zip(far, frr, thr):
        assert (f, r) == pytest.approx(_brute_rates(target, impostor, t))


def test_eer_hand_made() -> None:
    target = np.array([0.9, 0.8, 0.7, 0.4])
    impostor = np.array([0.5, 0.3, 0.2, 0.1])
    rate, thr = metrics.eer(target, impostor)
    # At threshold 0.5 one target (0.4) is rejected and one impostor (0.5) accepted.
    assert rate == pytest.approx(0.25)
    assert thr == pytest.approx(0.5)
    assert metrics.eer(np.array([0.9, 0.8]), np.array([0.1, 0.2]))[0] == pytest.approx(0.0)
    assert metrics.eer(np.array([0.1, 0.2]), np.array([0.9, 0.8]))[0] == pytest.approx(1.0)


def test_eer_close_to_brute_force_grid() -> None:
    rng = np.random.default_rng(2)
    target = rng.normal(1.0, 1.0, 400)
    impostor = rng.normal(-1.0, 1.0, 500)
    rate, thr = metrics.eer(target, impostor)
    grid = np.linspace(-4, 4, 8001)
    rates = np.array([_brute_rates(target, impostor, t) for t in grid[::10]])
    best = np.argmin(np.abs(rates[:, 0] - rates[:, 1]))
    assert rate == pytest.approx(rates[best].mean(), abs=0.01)
    # Two unit Gaussians two apart cross at 0 with EER = Phi(-1) ~ 0.159.
    assert rate == pytest.approx(0.1587, abs=0.03)
    assert thr == pytest.approx(0.0, abs=0.2)


def test_threshold_and_frr_at_far() -> None:
    impostor = np.arange(100) / 100.0  # 0.00 .. 0.99
    t = metrics.threshold_at_far(impostor, 0.05)
    assert np.mean(impostor >= t) == pytest.approx(0.05)
    assert np.mean(impostor >= np.nextafter(t, -np.inf) - 0.01) > 0.05  # the lowest such threshold
    target = np.array([0.99, 0.97, 0.96, 0.5])
    # FAR 5% needs threshold just above 0.94: 0.5 is rejected.
    assert metrics.frr_at_far(target, impostor, 0.05) == pytest.approx(0.25)
    assert metrics.threshold_at_far(impostor, 0.0) > impostor.max()


def test_class_centers_and_nearest_center() -> None:
    emb = np.array([[1, 0], [1, 0.2], [0, 1], [0.1, 1]], dtype=np.float32)
    labels = np.array(["b", "b", "a", "a"])
    classes, centers = metrics.class_centers(emb, labels)
    assert list(classes) == ["a", "b"]
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1.0, rtol=1e-6)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected_b = unit[:2].mean(0) / np.linalg.norm(unit[:2].mean(0))
    np.testing.assert_allclose(centers[1], expected_b, rtol=1e-6)
    test = np.array([[0.9, 0.1], [0.2, 0.9], [0.6, 0.4]], dtype=np.float32)
    assert metrics.nearest_center_accuracy(emb, labels, test, np.array(["b", "a", "a"])) == pytest.approx(2 / 3)


def _clustered(n_classes: int, per_class: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, 16))
    labels = np.repeat(np.arange(n_classes), per_class)
    emb = means[labels] + noise * rng.normal(size=(len(labels), 16))
    return emb.astype(np.float32), labels


def test_few_shot_accuracy_brute_force_one_episode() -> None:
    emb, labels = _clustered(4, 6, noise=2.0, seed=3)
    res = metrics.few_shot_accuracy(emb, labels, n_way=4, k_shot=2, episodes=1, queries=4, seed=7)
    # Re-run the episode by hand from the same generator draws.
    rng = np.random.default_rng(7)
    chosen = rng.choice(4, size=4, replace=False)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    centers, queries = [], []
    for j, c in enumerate(chosen):
        perm = rng.permutation(np.flatnonzero(labels == c))
        m = unit[perm[:2]].mean(0)
        centers.append(m / np.linalg.norm(m))
        queries += [(i, j) for i in perm[2:6]]
    correct = [max(range(4), key=lambda k: float(unit[i] @ centers[k])) == j for i, j in queries]
    assert res.mean == pytest.approx(np.mean(correct))
    assert res.accuracies.shape == (1,)


def test_few_shot_accuracy_separable_and_interval() -> None:
    emb, labels = _clustered(12, 8, noise=0.05, seed=4)
    res = metrics.few_shot_accuracy(emb, labels, n_way=5, k_shot=3, episodes=40)
    assert res.mean == 1.0 and res.ci95 == 0.0
    noisy = metrics.few_shot_accuracy(*_clustered(12, 8, noise=3.0, seed=4), n_way=5, k_shot=1, episodes=40)
    assert 0.0 < noisy.mean < 1.0
    assert noisy.ci95 == pytest.approx(1.96 * noisy.accuracies.std() / np.sqrt(40))


def test_few_shot_n_way_too_large_uses_all(caplog: pytest.LogCaptureFixture) -> None:
    emb, labels = _clustered(3, 5, noise=0.05, seed=5)
    res = metrics.few_shot_accuracy(emb, labels, n_way=10, k_shot=2, episodes=5)
    assert res.mean == 1.0
    assert "only 3 classes" in caplog.text


def test_few_shot_queries_come_from_other_speakers(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _clustered(3, 12, noise=0.5, seed=6)
    speakers = np.tile(np.repeat(np.arange(4), 3), 3)  # 4 speakers x 3 clips per class
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real_split = metrics._split_by_speaker

    def spy(idx, spk, k, rng):  # type: ignore[no-untyped-def]
        support, query = real_split(idx, spk, k, rng)
        seen.append((support, query))
        return support, query

    monkeypatch.setattr(metrics, "_split_by_speaker", spy)
    metrics.few_shot_accuracy(emb, labels, n_way=3, k_shot=3, episodes=10, speakers=speakers)
    assert len(seen) == 30
    for support, query in seen:
        assert len(query) > 0
        assert not set(speakers[support]) & set(speakers[query])
        assert len(set(labels[np.concatenate([support, query])])) == 1


def test_split_by_speaker_falls_back_when_one_speaker_is_left() -> None:
    speakers = np.array(["a"] * 5 + ["b"])  # k_shot=3 from 'a' only would leave 'b' as queries
    idx = np.arange(6)
    for seed in range(10):
        support, query = metrics._split_by_speaker(idx, speakers, 3, np.random.default_rng(seed))
        assert set(speakers[support]) == {"a"} and set(speakers[query]) == {"b"}


def test_open_set_eer_matches_brute_force() -> None:
    emb, labels = _clustered(3, 5, noise=1.5, seed=8)
    got = metrics.open_set_eer(emb, labels, k_shot=2, episodes=3, seed=11)
    rng = np.random.default_rng(11)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rates = []
    for _ in range(3):
        centers, queries = [], []
        for c in range(3):
            perm = rng.permutation(np.flatnonzero(labels == c))
            m = unit[perm[:2]].mean(0)
            centers.append(m / np.linalg.norm(m))
            queries += [(i, c) for i in perm[2:]]
        tgt = [float(unit[i] @ centers[c]) for i, c in queries]
        imp = [float(unit[i] @ centers[k]) for (i, c), k in itertools.product(queries, range(3)) if k != c]
        rates.append(metrics.eer(np.array(tgt), np.array(imp))[0])
    assert got == pytest.approx(np.mean(rates), abs=1e-6)


def test_too_few_classes_is_an_error() -> None:
    emb, labels = _clustered(1, 6, noise=0.1, seed=9)
    with pytest.raises(ValueError, match="at least 2 classes"):
        metrics.few_shot_accuracy(emb, labels)
    with pytest.raises(ValueError, match="at least 2 classes"):
        metrics.open_set_eer(emb, labels)


def test_vectorised_thresholds_match_scalar_brute_force() -> None:
    rng = np.random.default_rng(12)
    impostor = np.round(rng.normal(0, 1, 57), 1)  # many ties
    target = np.round(rng.normal(1, 1, 31), 1)
    fars = np.array([0.0, 0.01, 0.02, 0.05, 0.1, 0.5, 0.99, 1.0])
    thr = metrics.thresholds_at_far(impostor, fars)
    frr = metrics.frr_curve(target, impostor, fars)
    candidates = np.append(np.unique(np.concatenate([impostor, target])), np.inf)
    for f, t, r in zip(fars, thr, frr):
        assert np.mean(impostor >= t) <= f + 1e-12
        # No lower candidate threshold meets the rate (so FRR is as low as it can be).
        lower = [c for c in candidates if c < t and np.mean(impostor >= c) <= f]
        assert not lower
        assert r == pytest.approx(np.mean(target < t))
        assert metrics.threshold_at_far(impostor, f) == t


def test_speaker_bootstrap_interval_counts_speakers_not_clips() -> None:
    speakers = np.repeat(np.arange(10), 4)
    correct = speakers < 6  # six voices always heard right, four never
    ci = metrics.speaker_bootstrap_ci(correct, speakers)
    assert 0.2 < ci < 0.4  # about 1.96 * sqrt(0.6 * 0.4 / 10)
    # Ten times the clips of the same ten speakers: a binomial interval would shrink, this one does not.
    assert metrics.speaker_bootstrap_ci(np.repeat(correct, 10), np.repeat(speakers, 10)) == pytest.approx(ci)
    assert metrics.speaker_bootstrap_ci(np.ones(40, bool), speakers) == 0.0
    with pytest.raises(ValueError, match="one speaker per clip"):
        metrics.speaker_bootstrap_ci(correct, speakers[:-1])
