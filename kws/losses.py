"""Metric-learning losses on L2-normalised embeddings.

Every loss is a small ``nn.Module`` with one call shape,
``loss(embeddings, labels) -> scalar``, where ``embeddings`` is ``(batch, dim)``
(unit norm) and ``labels`` is ``(batch,)`` int64 class indices. Losses compute in
float32 whatever the autocast dtype of the encoder, because distances between
nearby unit vectors lose their meaning in bfloat16.

- :class:`BatchHardTripletLoss` — Hermans et al. 2017, "In Defense of the
  Triplet Loss for Person Re-Identification".
- :class:`CenterLoss` — Wen et al. 2016, "A Discriminative Feature Learning
  Approach for Deep Face Recognition".
- :class:`ClassifierHead` — softmax or CosFace-style cosine classifier (Wang et
  al. 2018) trained with cross-entropy.
- :class:`JointLoss` — a weighted sum of any of them.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

# Squared distances are clamped to this before the square root: the gradient of
# sqrt is infinite at 0 (identical embeddings), and clamping zeroes it instead.
_SQRT_EPS = 1e-12


def pairwise_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(batch, batch)`` between rows of ``embeddings`` ``(batch, dim)``."""
    x = embeddings.float()
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return torch.sqrt(d2.clamp_min(_SQRT_EPS))


def batch_hard_pairs(
    distances: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each anchor, the hardest positive and hardest negative.

    Args:
        distances: ``(batch, batch)`` pairwise distances.
        labels: ``(batch,)`` class indices.
    Returns:
        ``(positive, negative, valid)``, each ``(batch,)``: the index of the
        farthest clip with the anchor's label (not the anchor itself), the index
        of the nearest clip with another label, and whether the anchor has both.
    """
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    inf = torch.finfo(distances.dtype).max
    positive = distances.masked_fill(~pos_mask, -inf).argmax(dim=1)
    negative = distances.masked_fill(~neg_mask, inf).argmin(dim=1)
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    return positive, negative, valid


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss, averaged over anchors that have a positive and a negative.

    Per anchor ``a``: ``relu(d(a, p) - d(a, n) + margin)`` (hinge) or
    ``softplus(d(a, p) - d(a, n))`` (``soft=True``, no margin), with ``p`` the
    hardest positive and ``n`` the hardest negative in the batch (see
    :func:`batch_hard_pairs`) and ``d`` the Euclidean distance.
    """

    def __init__(self, margin: float = 0.2, soft: bool = False) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"triplet margin must be >= 0, got {margin}")
        self.margin = margin
        self.soft = soft

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distance(embeddings)
        positive, negative, valid = batch_hard_pairs(dist.detach(), labels)
        rows = torch.arange(len(labels), device=labels.device)
        gap = dist[rows, positive] - dist[rows, negative]
        per_anchor = F.softplus(gap) if self.soft else F.relu(gap + self.margin)
        if not bool(valid.any()):
            # No usable triplet (one class, or singletons): zero that still has a graph.
            return (dist * 0.0).sum()
        return per_anchor[valid].mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, soft={self.soft}"


class CenterLoss(nn.Module):
    """Center loss: ``½ · mean_i ||x_i − c_{y_i}||²`` with class centers updated by a running rule.

    Centers are a buffer, not parameters: the optimizer never sees them. In
    training mode each call, after computing the loss with the current centers,
    moves every class present in the batch by Wen et al.'s rule
    ``c_j ← c_j − alpha · Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j)``.

    Centers start at zero and are *not* projected onto the unit sphere: the
    rule makes a center track its class mean, which lies inside the sphere, so
    the loss measures the within-class scatter of the unit-norm embeddings
    (projecting would add a term that grows as a class spreads out, and change
    the rule's fixed point).

    Under ``torch.distributed`` the per-class sums and counts are all-reduced
    before the update, so every rank applies the same update from the global
    batch and the centers stay identical across ranks.
    """

    centers: torch.Tensor

    def __init__(self, num_classes: int, dim: int, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"center-loss alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = embeddings.float()
        c = self.centers[labels]
        loss = 0.5 * ((x - c) ** 2).sum(dim=1).mean()
        if self.training:
            self.update(x.detach(), labels)
        return loss

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Apply one center update from ``embeddings`` ``(batch, dim)`` and ``labels`` ``(batch,)``."""
        x = embeddings.float()
        sums = torch.zeros_like(self.centers).index_add_(0, labels, self.centers[labels] - x)
        counts = torch.bincount(labels, minlength=len(self.centers)).to(sums.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        self.centers -= self.alpha * sums / (1.0 + counts)[:, None]

    def extra_repr(self) -> str:
        return f"num_classes={len(self.centers)}, dim={self.centers.shape[1]}, alpha={self.alpha}"


class ClassifierHead(nn.Module):
    """A classifier over the training classes, trained with cross-entropy.

    ``kind="softmax"``: a linear layer (with bias) on the embedding.
    ``kind="cosine"``: CosFace — logits are ``scale · cos(x, w_j)`` with unit-norm
    class weights, and the target class's cosine is lowered by ``margin`` in
    training, which pulls each class into a tighter cone on the sphere.
    """

    KINDS = ("softmax", "cosine")

    def __init__(
        self, dim: int, num_classes: int, kind: str = "softmax", scale: float = 30.0, margin: float = 0.2
    ) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"classifier kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / dim**0.5)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if kind == "softmax" else None

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class scores ``(batch, num_classes)`` (no margin); their argmax is the prediction."""
        x = embeddings.float()
        if self.kind == "softmax":
            return F.linear(x, self.weight, self.bias)
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(embeddings)
        if self.kind == "cosine":
            logits = logits - self.scale * self.margin * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, classes={len(self.weight)}, scale={self.scale}, margin={self.margin}"


class JointLoss(nn.Module):
    """Weighted sum of named losses: ``total = Σ weight_name · loss_name(embeddings, labels)``.

    Returns ``(total, terms)`` where ``terms`` maps each name to its unweighted,
    detached value (a 0-d tensor, so logging does not force a device sync).
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError(f"loss terms {sorted(terms)} and weights {sorted(weights)} differ")
        if not terms:
            raise ValueError("JointLoss needs at least one term")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = embeddings.new_zeros((), dtype=torch.float32)
        values = {}
        for name, term in self.terms.items():
            value = term(embeddings, labels)
            total = total + self.weights[name] * value
            values[name] = value.detach()
        return total, values
