"""PKSampler: P classes × K clips per batch, deterministic, split across ranks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kws.data.sampler import PKSampler
from kws.errors import KwsError

LABELS = np.repeat(np.arange(8), [20, 15, 12, 9, 30, 11, 2, 13])  # class 6 has fewer than K clips


def test_batches_hold_p_classes_of_k_clips() -> None:
    sampler = PKSampler(LABELS, p=4, k=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(LABELS) // 12
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(LABELS[batch].tolist())
        assert len(counts) == 4 and set(counts.values()) == {3}
    # Classes with enough clips never repeat a clip inside a batch.
    for batch in batches:
        big = [i for i in batch if LABELS[i] != 6]
        assert len(big) == len(set(big))


def test_classes_are_visited_evenly_and_clips_spread() -> None:
    sampler = PKSampler(LABELS, p=2, k=2, seed=1)
    seen = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in sampler:
            seen.update(LABELS[batch[::2]].tolist())
    visits = np.array([seen[c] for c in range(8)])
    assert visits.min() >= 0.8 * visits.mean()  # balanced over classes, not over clips
    used = {i for epoch in range(3) for batch in (sampler.set_epoch(epoch) or sampler) for i in batch}
    assert len(used) > 0.6 * len(LABELS)


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = PKSampler(LABELS, 3, 2, seed=5), PKSampler(LABELS, 3, 2, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(PKSampler(LABELS, 3, 2, seed=6)) != first


def test_ranks_get_different_batches_of_equal_count() -> None:
    ranks = [PKSampler(LABELS, 2, 2, seed=0, rank=r, world_size=3) for r in range(3)]
    single = PKSampler(LABELS, 2, 2, seed=0)
    lengths = {len(s) for s in ranks}
    assert lengths == {len(single) // 3} and len(list(ranks[0])) == len(ranks[0])
    per_rank = [list(s) for s in ranks]
    assert per_rank[0] != per_rank[1] != per_rank[2]
    # Together they are the single-process plan, dealt out round-robin.
    dealt = [b for trio in zip(*per_rank) for b in trio]
    assert dealt == list(single)[: len(dealt)]


def test_rejects_impossible_settings() -> None:
    with pytest.raises(KwsError, match="only 8 classes"):
        PKSampler(LABELS, p=9, k=2)
    with pytest.raises(KwsError):
        PKSampler([], p=1, k=1)
    with pytest.raises(KwsError):
        PKSampler(LABELS, p=2, k=2, rank=2, world_size=2)
