"""Embedding-space metrics: few-shot accuracy, nearest-center accuracy, EER and DET.

Pure numpy (no torch), so that training, evaluation and the ONNX path share it.
Scores are cosine similarities between unit-norm embeddings; higher means "more
alike", and a detector accepts a score at or above its threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "Episode", "FewShotResult", "class_centers", "det_curve", "eer", "episode_predictions", "few_shot_accuracy",
    "few_shot_episodes", "frr_at_far", "frr_curve", "nearest_center_accuracy", "normalize", "open_set_eer",
    "open_set_trials", "speaker_bootstrap_ci", "threshold_at_far", "thresholds_at_far", "with_spoken",
]


@dataclass
class FewShotResult:
    """Accuracy over few-shot episodes.

    Attributes:
        mean: mean accuracy over episodes.
        ci95: half-width of the 95% interval of the mean, ``1.96 * std / sqrt(episodes)``.
        accuracies: ``(episodes,)`` accuracy of each episode.
    """

    mean: float
    ci95: float
    accuracies: np.ndarray


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale vectors along ``axis`` to unit L2 norm (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def class_centers(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The renormalised mean embedding of each class.

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` class labels (any sortable type).
    Returns:
        ``classes`` ``(C,)`` sorted unique labels and ``centers`` ``(C, D)`` unit-norm.
    """
    embeddings = normalize(embeddings)
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, embeddings)
    return classes, normalize(sums)


def nearest_center_accuracy(
    ref_emb: np.ndarray, ref_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray
) -> float:
    """Accuracy of classifying ``test_emb`` ``(M, D)`` by the nearest (cosine) center of ``ref_emb`` ``(N, D)``.

    Test clips whose label has no reference clips count as errors.
    """
    classes, centers = class_centers(ref_emb, ref_labels)
    pred = classes[np.argmax(normalize(test_emb) @ centers.T, axis=1)]
    return float(np.mean(pred == np.asarray(test_labels)))


def _split_by_speaker(
    idx: np.ndarray, speakers: np.ndarray, k_shot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one class's clip indices into a support pool and a query pool sharing no speaker.

    Speakers are taken in random order into the support pool until it holds
    ``k_shot`` clips; the remaining speakers' clips form the query pool. If that
    leaves no query speaker, the support pool is every speaker but the one with
    the fewest clips (the caller has checked that this holds ``k_shot`` clips).
    """
    spk = speakers[idx]
    names, counts = np.unique(spk, return_counts=True)
    order = rng.permutation(len(names))
    cum = np.cumsum(counts[order])
    n_support = int(np.searchsorted(cum, k_shot)) + 1
    if n_support >= len(names):
        support_speakers = np.delete(names, np.argmin(counts))
    else:
        support_speakers = names[order[:n_support]]
    in_support = np.isin(spk, support_speakers)
    return idx[in_support], idx[~in_support]


def _eligible_classes(
    by_class: list[np.ndarray], speakers: np.ndarray | None, k_shot: int
) -> list[int]:
    """Indices of classes that can give ``k_shot`` support clips and at least one query."""
    ok = []
    for c, idx in enumerate(by_class):
        if speakers is None:
            if len(idx) > k_shot:
                ok.append(c)
            continue
        _, counts = np.unique(speakers[idx], return_counts=True)
        if len(counts) >= 2 and counts.sum() - counts.min() >= k_shot:
            ok.append(c)
    return ok


@dataclass
class Episode:
    """One few-shot episode: ``n_way`` classes, their support clips and their query clips.

    Attributes:
        classes: ``(n_way,)`` label values.
        support: per class, ``(k_shot,)`` clip indices.
        queries: per class, ``(q,)`` clip indices, ``1 <= q <= queries``.
    """

    classes: np.ndarray
    support: list[np.ndarray]
    queries: list[np.ndarray]


def few_shot_episodes(
    labels: np.ndarray,
    n_way: int = 10,
    k_shot: int = 3,
    episodes: int = 300,
    queries: int = 5,
    speakers: np.ndarray | None = None,
    seed: int = 0,
) -> list[Episode]:
    """Draw random N-way K-shot episodes over clips labelled ``labels`` ``(N,)``.

    Each episode draws ``n_way`` classes; each class gets ``k_shot`` random support
    clips and up to ``queries`` query clips (other clips of the class). With
    ``speakers`` ``(N,)``, a class's queries come only from speakers absent from
    its support set. Classes that cannot give ``k_shot`` support clips and one
    query are left out; if ``n_way`` exceeds the classes left, every class is
    used (with a warning).

    Raises:
        ValueError: fewer than two usable classes.
    """
    if k_shot < 1 or queries < 1 or episodes < 1:
        raise ValueError("k_shot, queries and episodes must be at least 1")
    labels = np.asarray(labels)
    spk = None if speakers is None else np.asarray(speakers)
    if spk is not None and len(spk) != len(labels):
        raise ValueError(f"speakers has {len(spk)} entries, labels {len(labels)}")
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    usable = _eligible_classes(by_class, spk, k_shot)
    if len(usable) < 2:
        raise ValueError(
            f"few-shot episodes need at least 2 classes with more than {k_shot} clips"
            + (" from two or more speakers" if spk is not None else "")
            + f"; found {len(usable)}"
        )
    if n_way > len(usable):
        log.warning("%d-way episodes asked but only %d classes are usable: using all of them", n_way, len(usable))
        n_way = len(usable)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        chosen = rng.choice(usable, size=n_way, replace=False)
        support, query = [], []
        for c in chosen:
            idx = by_class[c]
            if spk is None:
                perm = rng.permutation(idx)
                s, pool = perm[:k_shot], perm[k_shot:]
            else:
                support_pool, pool = _split_by_speaker(idx, spk, k_shot, rng)
                s = rng.choice(support_pool, size=k_shot, replace=False)
                pool = rng.permutation(pool)
            support.append(s)
            query.append(pool[:queries])
        out.append(Episode(classes=classes[chosen], support=support, queries=query))
    return out


def with_spoken(centers: np.ndarray, spoken: np.ndarray | None) -> np.ndarray:
    """Centers ``(k, D)`` with a keyword's ``spoken`` vector ``(D,)`` added (what synthetic voices
    saying it contribute, :func:`kws.spoken.spoken_vector`), renormalised; ``None``: as they are."""
    if spoken is None:
        return centers
    return normalize(normalize(centers) + np.asarray(spoken)[None])


def episode_predictions(
    embeddings: np.ndarray, episode: Episode, spoken: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-center classification of one episode's queries.

    Args:
        embeddings: ``(N, D)`` unit-norm.
        spoken: per label value, its spoken vector ``(D,)``, added to its support
            center (:func:`with_spoken`); ``None``: the support alone.
    Returns:
        ``true`` and ``predicted`` positions in ``episode.classes``, each ``(n_queries,)``.
    """
    centers = normalize(np.stack([embeddings[s].mean(axis=0) for s in episode.support]))
    if spoken is not None:
        centers = np.concatenate([with_spoken(c[None], spoken[k]) for c, k in zip(centers, episode.classes)])
    q = np.concatenate(episode.queries)
    true = np.concatenate([np.full(len(qi), j) for j, qi in enumerate(episode.queries)])
    return true, np.argmax(embeddings[q] @ centers.T, axis=1)


def few_shot_accuracy(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_way: int = 10,
    k_shot: int = 3,
    episodes: int = 300,
    queries: int = 5,
    speakers: np.ndarray | None = None,
    seed: int = 0,
    spoken: Sequence[np.ndarray] | None = None,
) -> FewShotResult:
    """N-way K-shot accuracy of nearest-center classification over random episodes.

    Episodes are drawn by :func:`few_shot_episodes`; a class's center is the
    renormalised mean of its support embeddings (with ``spoken``, its spoken vector
    added, see :func:`episode_predictions`), and each query is classified
    by the nearest center (cosine).

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)``.
        speakers: ``(N,)``; when given, queries come from speakers not in the support set.
    """
    embeddings = normalize(embeddings)
    acc = np.array(
        [
            np.mean(np.equal(*episode_predictions(embeddings, ep, spoken)))
            for ep in few_shot_episodes(labels, n_way, k_shot, episodes, queries, speakers, seed)
        ]
    )
    return FewShotResult(mean=float(acc.mean()), ci95=float(1.96 * acc.std() / np.sqrt(len(acc))), accuracies=acc)


def speaker_bootstrap_ci(correct: np.ndarray, speakers: np.ndarray, resamples: int = 1000, seed: int = 0) -> float:
    """Half-width of the 95% interval of an accuracy over clips when the *speakers* are the sample.

    The clips of one speaker are not independent trials (a voice the model
    hears badly fails on all of its words), so the speakers are drawn with
    replacement ``resamples`` times and the interval is the 2.5th to 97.5th
    percentile of the accuracy of their clips.

    Args:
        correct: ``(N,)`` whether each clip was classified right.
        speakers: ``(N,)`` the speaker of each clip.
    """
    correct = np.asarray(correct, dtype=np.float64)
    if len(correct) != len(speakers) or not len(correct):
        raise ValueError(f"need one speaker per clip and at least one clip, got {len(correct)} and {len(speakers)}")
    _, inverse = np.unique(np.asarray(speakers), return_inverse=True)
    hits, clips = np.bincount(inverse, weights=correct), np.bincount(inverse)
    draws = np.random.default_rng(seed).integers(0, len(clips), size=(resamples, len(clips)))
    low, high = np.percentile(hits[draws].sum(axis=1) / clips[draws].sum(axis=1), [2.5, 97.5])
    return float((high - low) / 2)


def det_curve(target: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-accept and false-reject rates at every distinct threshold.

    A score is accepted when ``score >= threshold``. The thresholds are the sorted
    distinct scores followed by ``+inf`` (nothing accepted), so FAR falls from its
    highest value to 0 and FRR rises from 0 to 1.

    Args:
        target: ``(T,)`` scores of true keyword trials.
        impostor: ``(I,)`` scores of non-keyword trials.
    Returns:
        ``far``, ``frr``, ``thresholds``, each ``(K,)``.
    """
    target = np.sort(np.asarray(target, dtype=np.float64).ravel())
    impostor = np.sort(np.asarray(impostor, dtype=np.float64).ravel())
    if len(target) == 0 or len(impostor) == 0:
        raise ValueError("det_curve needs at least one target and one impostor score")
    thresholds = np.append(np.unique(np.concatenate([target, impostor])), np.inf)
    far = 1.0 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    frr = np.searchsorted(target, thresholds, side="left") / len(target)
    return far, frr, thresholds


def eer(target_scores: np.ndarray, impostor_scores: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold at it.

    Where FAR and FRR cross between two neighbouring thresholds, both rates and
    the threshold are interpolated linearly between them.

    Returns:
        ``(eer, threshold)``.
    """
    far, frr, thr = det_curve(target_scores, impostor_scores)
    diff = far - frr
    i = int(np.argmax(diff <= 0))  # diff ends at -1 (far 0, frr 1), so a crossing exists
    if i == 0:
        return float(far[0]), float(thr[0])
    alpha = diff[i - 1] / (diff[i - 1] - diff[i])
    rate = far[i - 1] + alpha * (far[i] - far[i - 1])
    hi = thr[i] if np.isfinite(thr[i]) else thr[i - 1]
    return float(rate), float(thr[i - 1] + alpha * (hi - thr[i - 1]))


def thresholds_at_far(impostor: np.ndarray, fars: np.ndarray) -> np.ndarray:
    """For each rate in ``fars``, the lowest threshold whose false-accept rate on ``impostor`` ``(I,)`` is at most it.

    Accepting ``score >= threshold``: at most ``floor(far * I)`` impostor scores
    reach it. With ``far`` below ``1 / I`` it lies just above the highest impostor.

    Returns:
        ``(len(fars),)`` float64.
    """
    impostor = np.sort(np.asarray(impostor, dtype=np.float64).ravel())
    if len(impostor) == 0:
        raise ValueError("thresholds need at least one impostor score")
    allowed = np.floor(np.asarray(fars, dtype=np.float64) * len(impostor) + 1e-9).astype(np.int64)
    # The (allowed+1)-th highest score must be rejected: the threshold sits just above it.
    above = np.nextafter(impostor[np.clip(len(impostor) - 1 - allowed, 0, None)], np.inf)
    return np.where(allowed >= len(impostor), impostor[0], above)


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold whose false-accept rate on ``impostor`` ``(I,)`` is at most ``far``."""
    return float(thresholds_at_far(impostor, np.array([far]))[0])


def frr_at_far(target: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """False-reject rate at the lowest threshold whose false-accept rate is at most ``far``."""
    return float(frr_curve(target, impostor, np.array([far]))[0])


def frr_curve(target: np.ndarray, impostor: np.ndarray, fars: np.ndarray) -> np.ndarray:
    """False-reject rate ``(len(fars),)`` at each false-accept rate of ``fars`` (see :func:`thresholds_at_far`)."""
    target = np.sort(np.asarray(target, dtype=np.float64).ravel())
    return np.searchsorted(target, thresholds_at_far(impostor, fars), side="left") / len(target)


def open_set_trials(
    embeddings: np.ndarray, labels: np.ndarray, k_shot: int = 3, episodes: int = 100, seed: int = 0,
    spoken: Sequence[np.ndarray] | None = None, others: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Target and impostor scores of random enrolment episodes (see :func:`open_set_eer`).

    Yields, per episode, ``target`` ``(Q,)`` (queries against their own center)
    and ``impostor`` ``(Q * (C - 1) + M * C,)`` (queries against every other center,
    then each of ``others`` ``(M, D)``, clips of words never enrolled, against every
    center; ``M`` = 0 without them). ``spoken``: as for :func:`episode_predictions`.
    """
    embeddings = normalize(embeddings)
    others = None if others is None else normalize(others)
    labels = np.asarray(labels)
    values = [c for c in np.unique(labels) if np.sum(labels == c) > k_shot]
    by_class = [np.flatnonzero(labels == c) for c in values]
    if len(by_class) < 2:
        raise ValueError(f"open-set scoring needs at least 2 classes with more than {k_shot} clips")
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        centers, q_idx, q_class = [], [], []
        for c, idx in enumerate(by_class):
            perm = rng.permutation(idx)
            center = normalize(embeddings[perm[:k_shot]].mean(axis=0))
            centers.append(center if spoken is None else with_spoken(center[None], spoken[values[c]])[0])
            q_idx.append(perm[k_shot:])
            q_class.append(np.full(len(idx) - k_shot, c))
        centers = np.stack(centers)
        scores = embeddings[np.concatenate(q_idx)] @ centers.T
        own = np.zeros(scores.shape, dtype=bool)
        own[np.arange(len(scores)), np.concatenate(q_class)] = True
        impostor = scores[~own]
        if others is not None:
            impostor = np.concatenate([impostor, (others @ centers.T).ravel()])
        yield scores[own], impostor


def open_set_eer(
    embeddings: np.ndarray,
    labels: np.ndarray,
    k_shot: int = 3,
    episodes: int = 100,
    seed: int = 0,
) -> float:
    """Mean EER of detecting enrolled words, over random enrolment episodes.

    Each episode enrols every class from ``k_shot`` random clips (center =
    renormalised mean); every other clip is a query. Target scores are queries
    against their own class's center, impostor scores queries against the other
    centers. Classes with no more than ``k_shot`` clips are left out.

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)``.
    Raises:
        ValueError: fewer than two classes with more than ``k_shot`` clips.
    """
    rates = [eer(t, i)[0] for t, i in open_set_trials(embeddings, labels, k_shot, episodes, seed)]
    return float(np.mean(rates))
