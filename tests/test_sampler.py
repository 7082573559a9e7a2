"""PKSampler: P classes × K clips per batch, deterministic, split across ranks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kws.data.sampler import HardClassSampler, PKSampler
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


# ---------------------------------------------------------------------------- hard-class sampler

CLUSTERED = np.repeat(np.arange(8), 10)


def two_cluster_centers(seed: int = 0) -> np.ndarray:
    """Classes 0–3 around one direction, 4–7 around an orthogonal one (3-D, a little noise)."""
    rng = np.random.default_rng(seed)
    centers = np.zeros((8, 3))
    centers[:4, 0], centers[4:, 1] = 1.0, 1.0
    return centers + 0.1 * rng.standard_normal((8, 3))


def batch_classes(batch: list[int], labels: np.ndarray, k: int) -> list[int]:
    """Classes of a batch in the order the sampler chose them (k clips each)."""
    return [int(labels[i]) for i in batch[::k]]


def test_hard_class_sampler_is_pk_until_it_has_centers() -> None:
    assert list(HardClassSampler(LABELS, 3, 2, seed=4)) == list(PKSampler(LABELS, 3, 2, seed=4))


def test_hard_class_batches_gather_nearest_classes() -> None:
    centers = two_cluster_centers()
    sampler = HardClassSampler(CLUSTERED, p=4, k=2, seed=0)
    sampler.set_centers(centers)
    c = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    sim = c @ c.T
    batches = list(sampler)
    assert len(batches) == len(CLUSTERED) // 8
    for batch in batches:
        chosen = batch_classes(batch, CLUSTERED, 2)
        assert len(set(chosen)) == 4 and Counter(CLUSTERED[batch].tolist()) == {c: 2 for c in chosen}
        assert set(chosen) in ({0, 1, 2, 3}, {4, 5, 6, 7})  # never mixes the two clusters
        # Greedy: each added class is the one most alike (mean cosine) to those before it.
        for n in range(1, 4):
            rest = [x for x in range(8) if x not in chosen[:n]]
            best = max(rest, key=lambda x: sim[x, chosen[:n]].mean())
            assert chosen[n] == best
    # Seeds walk a permutation: every class leads exactly one of the first 8 batches.
    assert sorted(batch_classes(b, CLUSTERED, 2)[0] for b in batches[:8]) == list(range(8))


def test_hard_class_sampler_is_deterministic_and_rank_aware() -> None:
    centers = two_cluster_centers(1)

    def make(rank: int = 0, world: int = 1, seed: int = 0) -> HardClassSampler:
        s = HardClassSampler(CLUSTERED, 3, 2, seed=seed, rank=rank, world_size=world)
        s.set_centers(centers)
        return s

    assert list(make()) == list(make())
    assert list(make(seed=1)) != list(make())
    moved = make()
    moved.set_epoch(1)
    assert list(moved) != list(make())
    ranks = [list(make(r, 2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(make()) // 2 and ranks[0] != ranks[1]
    assert [b for pair in zip(*ranks) for b in pair] == list(make())[: 2 * len(ranks[0])]


def test_hard_class_sampler_checks_centers() -> None:
    sampler = HardClassSampler(CLUSTERED, 2, 2)
    with pytest.raises(KwsError, match="every label"):
        sampler.set_centers(np.zeros((5, 3)))
    # An all-zero row (a class never seen) is allowed: it is simply no one's neighbour in particular.
    sampler.set_centers(np.zeros((8, 3)))
    assert all(len(set(CLUSTERED[b].tolist())) == 2 for b in sampler)


def test_weighted_pk_batches_draw_a_class_clips_in_proportion_to_their_weights():
    # Two classes of 20 clips: in each, the first 10 clips (one "source") weigh 3, the rest 1.
    labels = np.repeat([0, 1], 20)
    weights = np.tile(np.r_[np.full(10, 3.0), np.ones(10)], 2)
    sampler = PKSampler(labels, p=2, k=4, seed=0, weights=weights)
    drawn = []
    for epoch in range(50):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert sorted(labels[batch].tolist()) == [0] * 4 + [1] * 4
            assert len(set(batch)) == 8  # without replacement while enough clips have weight
            drawn += batch
    heavy = np.isin(np.asarray(drawn) % 20, np.arange(10)).mean()
    assert 0.65 < heavy < 0.8, heavy  # 3 / (3 + 1) per draw, less without replacement

    only_light = np.tile(np.r_[np.zeros(10), np.ones(10)], 2)
    sampler = PKSampler(labels, p=2, k=4, seed=0, weights=only_light)
    assert all((np.asarray(b) % 20 >= 10).all() for b in sampler)  # weight 0: never drawn


def test_pk_sampler_refuses_bad_weights():
    labels = np.repeat([0, 1], 4)
    for weights, message in ((np.ones(3), "one finite weight"), (-np.ones(8), "one finite weight"),
                             (np.r_[np.zeros(4), np.ones(4)], "every class")):
        with pytest.raises(KwsError, match=message):
            PKSampler(labels, p=2, k=2, weights=weights)


def test_source_weights_need_one_weight_per_source():
    from kws.errors import ConfigError
    from kws.train_config import load_config

    head = ['model.stem="speech-embedding"', 'data.real_pack="pack"']
    assert load_config(None, [*head, "data.weights=[1.0, 2.0]"]).data.weights == [1.0, 2.0]
    with pytest.raises(ConfigError, match="one weight per source"):
        load_config(None, [*head, "data.weights=[1.0]"])
    # The scratch encoder too: data.root alone is one source.
    assert load_config(None, ["data.weights=[2.0]"]).data.weights == [2.0]
    with pytest.raises(ConfigError, match="one weight per source"):
        load_config(None, ["data.weights=[1.0, 2.0]"])
