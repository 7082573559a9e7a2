"""P×K batch sampler for metric learning (batch-hard triplet, center loss)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from kws.errors import KwsError


class PKSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of ``p`` distinct classes × ``k`` clips each (``p * k`` dataset indices).

    Classes are visited in a shuffled order so that every class appears about
    equally often; a class's clips are drawn without replacement while they last
    (with replacement if it has fewer than ``k``). Deterministic for
    ``(seed, epoch)``: call :meth:`set_epoch` each epoch. Under distributed
    training every rank builds the same epoch plan and takes every
    ``world_size``-th batch, so ranks see different batches, the same number each.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) == 0:
            raise KwsError("PKSampler needs a non-empty 1-D sequence of labels")
        if p < 1 or k < 1:
            raise KwsError(f"PKSampler needs p >= 1 and k >= 1, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise KwsError(f"rank {rank} is outside world_size {world_size}")
        classes, inverse = np.unique(labels, return_inverse=True)
        if p > len(classes):
            raise KwsError(f"P={p} classes per batch, but the labels hold only {len(classes)} classes")
        self.p, self.k, self.seed, self.rank, self.world_size = p, k, seed, rank, world_size
        self.epoch = 0
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self._members = np.split(order, bounds)  # dataset indices of each class
        self._batches_total = max(len(labels) // (p * k), world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._batches_total // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self._members)
        pools = [rng.permutation(m) for m in self._members]
        cursor = [0] * n_classes
        class_queue: list[int] = []
        for b in range(len(self) * self.world_size):
            # Refill with a fresh permutation of classes, never repeating one inside a batch.
            while len(class_queue) < self.p:
                fresh = [c for c in rng.permutation(n_classes).tolist() if c not in class_queue[: self.p]]
                class_queue += fresh
            chosen, class_queue = class_queue[: self.p], class_queue[self.p :]
            batch = []
            for c in chosen:
                members = self._members[c]
                if len(members) < self.k:
                    batch += rng.choice(members, self.k, replace=True).tolist()
                    continue
                if cursor[c] + self.k > len(members):
                    pools[c], cursor[c] = rng.permutation(members), 0
                batch += pools[c][cursor[c] : cursor[c] + self.k].tolist()
                cursor[c] += self.k
            if b % self.world_size == self.rank:
                yield batch
