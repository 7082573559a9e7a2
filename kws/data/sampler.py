"""Batch samplers for metric learning: P×K (:class:`PKSampler`) and hard classes (:class:`HardClassSampler`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from kws.errors import KwsError

__all__ = ["HardClassSampler", "PKSampler", "SAMPLERS"]

SAMPLERS = ("pk", "hard_class")


class PKSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of ``p`` distinct classes × ``k`` clips each (``p * k`` dataset indices).

    Classes are visited in a shuffled order so that every class appears about
    equally often; a class's clips are drawn without replacement while they last
    (with replacement if it has fewer than ``k``). Deterministic for
    ``(seed, epoch)``: call :meth:`set_epoch` each epoch. Under distributed
    training every rank builds the same epoch plan and takes every
    ``world_size``-th batch, so ranks see different batches, the same number each.

    ``weights`` (one per clip, >= 0), if given, make a class's K clips a weighted draw
    from its clips instead (without replacement while enough have weight): e.g. the
    sampling weight of each clip's data source.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: Sequence[float] | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) == 0:
            raise KwsError(f"{type(self).__name__} needs a non-empty 1-D sequence of labels")
        if p < 1 or k < 1:
            raise KwsError(f"{type(self).__name__} needs p >= 1 and k >= 1, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise KwsError(f"rank {rank} is outside world_size {world_size}")
        classes, inverse = np.unique(labels, return_inverse=True)
        if p > len(classes):
            raise KwsError(f"P={p} classes per batch, but the labels hold only {len(classes)} classes")
        self.p, self.k, self.seed, self.rank, self.world_size = p, k, seed, rank, world_size
        self.epoch = 0
        self.classes = classes  # class label of each class position
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self._members = np.split(order, bounds)  # dataset indices of each class
        self._batches_total = max(len(labels) // (p * k), world_size)
        self.weights = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != labels.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise KwsError(f"{type(self).__name__} needs one finite weight >= 0 per label")
            if any(w[m].sum() <= 0 for m in self._members):
                raise KwsError("every class needs a clip of weight > 0")
            self.weights = w

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._batches_total // self.world_size

    def _batch_classes(self, rng: np.random.Generator) -> Iterator[list[int]]:
        """Class positions of each batch: a shuffled order of classes, never repeating one inside a batch."""
        n_classes = len(self._members)
        class_queue: list[int] = []
        while True:
            while len(class_queue) < self.p:
                fresh = [c for c in rng.permutation(n_classes).tolist() if c not in class_queue[: self.p]]
                class_queue += fresh
            chosen, class_queue = class_queue[: self.p], class_queue[self.p :]
            yield chosen

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pools = [rng.permutation(m) for m in self._members]
        cursor = [0] * len(self._members)
        plan = self._batch_classes(rng)
        for b in range(len(self) * self.world_size):
            batch = []
            for c in next(plan):
                members = self._members[c]
                if self.weights is not None:
                    w = self.weights[members]
                    replace = np.count_nonzero(w) < self.k
                    batch += rng.choice(members, self.k, replace=replace, p=w / w.sum()).tolist()
                    continue
                if len(members) < self.k:
                    batch += rng.choice(members, self.k, replace=True).tolist()
                    continue
                if cursor[c] + self.k > len(members):
                    pools[c], cursor[c] = rng.permutation(members), 0
                batch += pools[c][cursor[c] : cursor[c] + self.k].tolist()
                cursor[c] += self.k
            if b % self.world_size == self.rank:
                yield batch


class HardClassSampler(PKSampler):
    """P×K batches whose classes are each other's nearest classes (hard negatives for one another).

    Each batch starts from a seed class — seeds walk a shuffled order of all
    classes, so every class leads a batch once per pass — and grows greedily:
    the next class is the one, not yet in the batch, with the highest mean
    cosine similarity to the classes already in it. Similarities come from the
    class centers given to :meth:`set_centers` (the trainer refreshes them every
    epoch); until then, or for a class whose center is zero (never seen), the
    batches are those of :class:`PKSampler`'s random order or random picks.
    ``k=2`` gives the N classes × 2 batches of the N-pair loss.

    Classes near many others appear in more batches than isolated ones: that
    is the point. Deterministic for ``(seed, epoch, centers)``; ranks share one
    plan as in :class:`PKSampler` (the centers must be the same on every rank).
    """

    # Class-to-class cosine similarities; None until set_centers is called.
    _similarity: np.ndarray | None = None

    def set_centers(self, centers: np.ndarray | torch.Tensor) -> None:
        """Class centers ``(num_classes, dim)``, row ``i`` for label ``i`` (labels absent from the data are ignored)."""
        centers = torch.as_tensor(centers).detach().float().cpu().numpy()
        if centers.ndim != 2 or len(centers) <= int(self.classes.max()):
            raise KwsError(
                f"class centers must be (num_classes, dim) with a row for every label up to {int(self.classes.max())}, "
                f"got shape {centers.shape}"
            )
        c = centers[self.classes]
        norm = np.linalg.norm(c, axis=1, keepdims=True)
        c = np.where(norm > 0, c / np.maximum(norm, 1e-12), 0.0)
        self._similarity = c @ c.T

    def _batch_classes(self, rng: np.random.Generator) -> Iterator[list[int]]:
        if self._similarity is None:
            yield from super()._batch_classes(rng)
            return
        sim = self._similarity
        n_classes = len(sim)
        while True:
            for seed_class in rng.permutation(n_classes).tolist():
                chosen = [seed_class]
                # Random tie-breaking jitter, far below any real difference in similarity.
                score = sim[seed_class] + 1e-6 * rng.random(n_classes)
                taken = np.zeros(n_classes, dtype=bool)
                taken[seed_class] = True
                while len(chosen) < self.p:
                    nxt = int(np.argmax(np.where(taken, -np.inf, score)))
                    chosen.append(nxt)
                    taken[nxt] = True
                    score = score + sim[nxt]
                yield chosen
