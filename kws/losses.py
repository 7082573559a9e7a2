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
- :class:`ContrastiveLoss` — Hadsell et al. 2006, with a margin on negative pairs.
- :class:`NPairLoss` — Sohn 2016, "Improved Deep Metric Learning with
  Multi-class N-pair Loss Objective".
- :class:`CoupledClustersLoss` — Liu et al. 2016, "Deep Relative Distance
  Learning: Tell the Difference Between Similar Vehicles".
- :class:`CircleLoss` — Sun et al. 2020, "Circle Loss: A Unified Perspective of
  Pair Similarity Optimization".
- :class:`MultiSimilarityLoss` and its miner :func:`multi_similarity_mine` —
  Wang et al. 2019, "Multi-Similarity Loss with General Pair Weighting".
- :class:`OIMLoss` — Xiao et al. 2017, "Joint Detection and Identification
  Feature Learning for Person Search": a momentum lookup table of class
  embeddings plus a queue of unlabelled embeddings (label ``-1``).
- :class:`ProxyAnchorLoss` — Kim et al. 2020, "Proxy Anchor Loss for Deep Metric
  Learning", with several trainable proxies per class pooled by a soft maximum
  (as in SoftTriple / ProxyGML).
- :class:`JointLoss` — a weighted sum of any of them.

:data:`METRIC_LOSSES` names the metric losses that :func:`build_metric_loss`
builds, the names the training config selects them by.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BatchHardTripletLoss", "CenterLoss", "CircleLoss", "ClassifierHead", "ContrastiveLoss", "CoupledClustersLoss",
    "DistillLoss", "JointLoss", "METRIC_LOSSES", "MultiSimilarityLoss", "NPairLoss", "OIMLoss", "ProxyAnchorLoss",
    "batch_hard_pairs", "build_metric_loss", "cosine_similarity", "multi_similarity_mine", "npair_rounds",
    "pair_masks", "pairwise_distance",
]

# Squared distances are clamped to this before the square root: the gradient of
# sqrt is infinite at 0 (identical embeddings), and clamping zeroes it instead.
_SQRT_EPS = 1e-12


def pairwise_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(batch, batch)`` between rows of ``embeddings`` ``(batch, dim)``."""
    x = embeddings.float()
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return torch.sqrt(d2.clamp_min(_SQRT_EPS))


def cosine_similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(batch, batch)`` between rows of ``embeddings`` ``(batch, dim)`` (float32)."""
    x = F.normalize(embeddings.float(), dim=1)
    return x @ x.T


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` boolean masks ``(batch, batch)``: same label but not the same clip, other label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _zero(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero loss that still has a graph to ``embeddings`` (a batch with no usable pair)."""
    return (embeddings.float() * 0.0).sum()


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, add_one: bool) -> torch.Tensor:
    """Row-wise ``log(Σ_{mask} exp x)`` (``log(1 + Σ …)`` with ``add_one``) of ``x`` ``(rows, cols)``.

    Left-out entries are filled with the most negative float rather than −inf:
    a row with no entry then has a meaningless but finite value (0 with
    ``add_one``), and its gradient stays finite where −inf would give NaN.
    """
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    if add_one:
        x = torch.cat([x, x.new_zeros(len(x), 1)], dim=1)
    return torch.logsumexp(x, dim=1)


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
    pos_mask, neg_mask = pair_masks(labels)
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
            return _zero(embeddings)
        return per_anchor[valid].mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, soft={self.soft}"


class ContrastiveLoss(nn.Module):
    """Contrastive (verification) loss over every pair of the batch.

    Positive pairs (same label) cost ``relu(d − pos_margin)``, negative pairs
    ``relu(neg_margin − d)``, with ``d`` the Euclidean distance. Each kind is
    averaged over its pairs with a non-zero cost (pairs already satisfied would
    otherwise dilute the gradient as training goes on), and the two means are
    added.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= pos_margin < neg_margin:
            raise ValueError(f"contrastive margins need 0 <= pos_margin < neg_margin, got {pos_margin}, {neg_margin}")
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distance(embeddings)
        pos_mask, neg_mask = pair_masks(labels)
        pos = F.relu(dist - self.pos_margin)[pos_mask]
        neg = F.relu(self.neg_margin - dist)[neg_mask]
        return _mean_nonzero(pos, embeddings) + _mean_nonzero(neg, embeddings)

    def extra_repr(self) -> str:
        return f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}"


def _mean_nonzero(values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of the non-zero entries of ``values`` (zero, with a graph, when there is none)."""
    active = values > 0
    return values[active].mean() if bool(active.any()) else _zero(embeddings)


class NPairLoss(nn.Module):
    """Multi-class N-pair loss on an N classes × 2 batch (or P × K, taken as K − 1 such batches).

    Each class present gives an (anchor, positive) pair; over the N pairs of a
    round, anchor ``i`` costs ``−log softmax_i(scale · a_i · p_j)`` over ``j``,
    i.e. ``log(1 + Σ_{j≠i} exp(scale · (a_i·p_j − a_i·p_i)))`` (Sohn's eq. 5).
    Sohn's L2 penalty on the embeddings is moot on the unit sphere; ``scale``
    (an inverse temperature) takes its place, since cosines in [−1, 1] alone
    give a softmax too flat to learn from.

    With K clips per class, a class's clips in batch order make a chain of
    pairs (1st, 2nd), (2nd, 3rd) … — a chain, so that all K clips are pulled
    together, not K / 2 separate pairs; round ``r`` holds the ``r``-th pair of
    every class that has one (K = 2: one round, Sohn's batch). The loss is the
    mean over every anchor of every round with at least two pairs.
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"n-pair scale must be > 0, got {scale}")
        self.scale = scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = embeddings.float()
        anchors, positives, rounds = npair_rounds(labels)
        losses = []
        for r in range(int(rounds.max()) + 1 if len(rounds) else 0):
            a, p = anchors[rounds == r], positives[rounds == r]
            if len(a) < 2:
                continue
            logits = self.scale * (x[a] @ x[p].T)
            losses.append(F.cross_entropy(logits, torch.arange(len(a), device=x.device), reduction="none"))
        return torch.cat(losses).mean() if losses else _zero(embeddings)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def npair_rounds(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (anchor, positive) pairs of :class:`NPairLoss`.

    Returns:
        ``(anchors, positives, rounds)``, each ``(pairs,)``: batch indices of the
        ``r``-th and ``(r+1)``-th clip of a class (in batch order) and ``r``.
    """
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    start = torch.ones_like(sorted_labels, dtype=torch.bool)
    start[1:] = sorted_labels[1:] != sorted_labels[:-1]
    # Rank of each clip within its class: position minus the position where its class starts.
    pos = torch.arange(len(labels), device=labels.device)
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), dim=0).values
    rank = pos - first
    same_next = torch.zeros_like(start)
    same_next[:-1] = ~start[1:]
    idx = torch.nonzero(same_next).squeeze(1)
    return order[idx], order[idx + 1], rank[idx]


class CoupledClustersLoss(nn.Module):
    """Coupled-clusters loss: positives pulled to their batch center, the nearest negative pushed out.

    For each class ``c`` in the batch, with center ``m_c`` (mean of its clips)
    and ``n*`` the clip of another class nearest to ``m_c``, each clip ``i`` of
    ``c`` costs ``½ · relu(||x_i − m_c||² + margin − ||x_{n*} − m_c||²)``. The
    loss is the mean over clips of classes with at least two clips (a singleton
    is its own center) when the batch has another class.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"coupled-clusters margin must be > 0, got {margin}")
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = embeddings.float()
        classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            return _zero(embeddings)
        centers = torch.zeros(len(classes), x.shape[1], device=x.device).index_add_(0, inverse, x)
        centers = centers / counts[:, None].to(x.dtype)
        d2 = ((centers[:, None, :] - x[None, :, :]) ** 2).sum(dim=2)  # (classes, batch)
        other = inverse[None, :] != torch.arange(len(classes), device=x.device)[:, None]
        nearest_neg = d2.masked_fill(~other, torch.inf).min(dim=1).values  # (classes,)
        own = d2[inverse, torch.arange(len(x), device=x.device)]
        per_clip = 0.5 * F.relu(own + self.margin - nearest_neg[inverse])
        valid = counts[inverse] >= 2
        return per_clip[valid].mean() if bool(valid.any()) else _zero(embeddings)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class CircleLoss(nn.Module):
    """Circle loss on cosine similarities, averaged over anchors with a positive and a negative.

    Per anchor: ``softplus(logsumexp_n γ·α_n·(s_n − m) + logsumexp_p −γ·α_p·(s_p − 1 + m))``
    with self-paced weights ``α_p = relu(1 + m − s_p)`` and ``α_n = relu(s_n + m)``
    (treated as constants, as in the paper).
    """

    def __init__(self, m: float = 0.25, gamma: float = 80.0) -> None:
        super().__init__()
        if not 0.0 <= m < 1.0 or gamma <= 0:
            raise ValueError(f"circle loss needs 0 <= m < 1 and gamma > 0, got m={m}, gamma={gamma}")
        self.m, self.gamma = m, gamma

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = cosine_similarity(embeddings)
        pos_mask, neg_mask = pair_masks(labels)
        alpha_p = F.relu(1 + self.m - sim.detach())
        alpha_n = F.relu(sim.detach() + self.m)
        logit_p = -self.gamma * alpha_p * (sim - (1 - self.m))
        logit_n = self.gamma * alpha_n * (sim - self.m)
        per_anchor = F.softplus(
            _masked_logsumexp(logit_p, pos_mask, add_one=False) + _masked_logsumexp(logit_n, neg_mask, add_one=False)
        )
        valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
        return per_anchor[valid].mean() if bool(valid.any()) else _zero(embeddings)

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}"


def multi_similarity_mine(
    sim: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The multi-similarity miner: informative pairs of a ``(batch, batch)`` similarity matrix.

    A negative pair ``(a, n)`` is kept when ``s_an + ε > min_p s_ap`` (it is
    more alike than the anchor's least-alike positive, less ``ε``); a positive
    pair when ``s_ap − ε < max_n s_an``. Returns ``(positive, negative)``
    boolean masks ``(batch, batch)``; an anchor without positives keeps no
    negative, one without negatives keeps no positive.
    """
    pos_mask, neg_mask = pair_masks(labels)
    s = sim.detach()
    min_pos = s.masked_fill(~pos_mask, torch.inf).min(dim=1, keepdim=True).values
    max_neg = s.masked_fill(~neg_mask, -torch.inf).max(dim=1, keepdim=True).values
    return pos_mask & (s - epsilon < max_neg), neg_mask & (s + epsilon > min_pos)


class MultiSimilarityLoss(nn.Module):
    """Multi-similarity loss on cosine similarities, over the pairs its miner keeps.

    Per anchor: ``1/α · log(1 + Σ_p exp(−α(s_p − λ))) + 1/β · log(1 + Σ_n exp(β(s_n − λ)))``,
    averaged over every anchor of the batch. ``epsilon=None`` turns the miner
    (:func:`multi_similarity_mine`) off and uses every pair.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float | None = 0.1) -> None:
        super().__init__()
        if alpha <= 0 or beta <= 0 or (epsilon is not None and epsilon < 0):
            raise ValueError(f"multi-similarity needs alpha, beta > 0 and epsilon >= 0, got {alpha}, {beta}, {epsilon}")
        self.alpha, self.beta, self.base, self.epsilon = alpha, beta, base, epsilon

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = cosine_similarity(embeddings)
        if self.epsilon is None:
            pos_mask, neg_mask = pair_masks(labels)
        else:
            pos_mask, neg_mask = multi_similarity_mine(sim, labels, self.epsilon)
        pos = _masked_logsumexp(-self.alpha * (sim - self.base), pos_mask, add_one=True) / self.alpha
        neg = _masked_logsumexp(self.beta * (sim - self.base), neg_mask, add_one=True) / self.beta
        return (pos + neg).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}, epsilon={self.epsilon}"


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(n, ...)`` from every rank, concatenated in rank order (no gradient); ``x`` itself off DDP."""
    if not _distributed():
        return x
    sizes = [torch.zeros((), dtype=torch.int64, device=x.device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(sizes, torch.tensor(len(x), device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])


class OIMLoss(nn.Module):
    """Online instance matching: softmax over a lookup table of every class and a queue of unlabelled clips.

    Each labelled clip (label ``>= 0``) costs ``−log`` of the softmax, at
    ``scale · cosine``, of its class row of the lookup table (``num_classes``
    momentum-averaged class embeddings, buffers) against every other row and
    every filled queue slot; so negatives come from every class and from up to
    ``queue_size`` recent unlabelled clips (label ``-1``: e.g. ``_unknown_``
    words), not just the batch. Clips labelled ``-1`` cost nothing themselves.

    In training mode, after the loss: each class ``c`` of the batch moves its row
    to ``normalize(momentum · v_c + (1 − momentum) · mean_{y_i = c} x_i)``, and
    the unlabelled clips enter the circular queue, oldest out first. Under
    ``torch.distributed`` the update uses the embeddings of every rank
    (all-gathered, in rank order), so the tables stay identical across ranks.
    """

    takes_unlabelled = True  # JointLoss passes it the batch's unlabelled clips too
    lut: torch.Tensor
    queue: torch.Tensor
    queue_filled: torch.Tensor
    queue_next: torch.Tensor

    def __init__(
        self, num_classes: int, dim: int, queue_size: int = 4096, momentum: float = 0.5, scale: float = 10.0
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0 or scale <= 0 or queue_size < 0:
            raise ValueError(
                f"OIM needs 0 <= momentum < 1, scale > 0, queue_size >= 0; got {momentum}, {scale}, {queue_size}"
            )
        self.momentum, self.scale = momentum, scale
        self.register_buffer("lut", torch.zeros(num_classes, dim))
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.int64))
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.int64))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings.float(), dim=1)
        known = labels >= 0
        table = torch.cat([self.lut, self.queue[: int(self.queue_filled)]])
        if bool(known.any()):
            logits = self.scale * x[known] @ table.T
            loss = F.cross_entropy(logits, labels[known])
        else:
            loss = _zero(embeddings)
        if self.training:
            self.update(x.detach(), labels)
        return loss

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Momentum update of the lookup table and queue push, from ``embeddings`` ``(batch, dim)`` and ``labels``."""
        x, y = _gather(F.normalize(embeddings.float(), dim=1)), _gather(labels)
        known = y >= 0
        if bool(known.any()):
            sums = torch.zeros_like(self.lut).index_add_(0, y[known], x[known])
            counts = torch.bincount(y[known], minlength=len(self.lut))
            seen = counts > 0
            mean = sums[seen] / counts[seen, None].to(sums.dtype)
            self.lut[seen] = F.normalize(self.momentum * self.lut[seen] + (1 - self.momentum) * mean, dim=1)
        size = len(self.queue)
        unknown = x[~known][-size:] if size else x[:0]
        if len(unknown):
            slots = (self.queue_next + torch.arange(len(unknown), device=x.device)) % size
            self.queue[slots] = unknown
            self.queue_next.copy_((self.queue_next + len(unknown)) % size)
            self.queue_filled.copy_((self.queue_filled + len(unknown)).clamp(max=size))

    def extra_repr(self) -> str:
        sizes = f"num_classes={len(self.lut)}, queue_size={len(self.queue)}"
        return f"{sizes}, momentum={self.momentum}, scale={self.scale}"


class ProxyAnchorLoss(nn.Module):
    """Proxy-anchor loss with several trainable proxies per class.

    A clip's similarity to class ``c`` pools its cosines ``s_m`` to the class's
    proxies with a soft maximum, ``Σ_m softmax_m(s_m / τ) · s_m`` (one proxy:
    the plain cosine), so a word may keep a few modes (accents, speeds). Then
    ``(1/|P⁺|) Σ_{c∈P⁺} log(1 + Σ_{i: y_i=c} exp(−α(s_ic − δ)))
    + (1/C) Σ_c log(1 + Σ_{i: y_i≠c} exp(α(s_ic + δ)))``, with ``P⁺`` the classes
    present in the batch and ``C`` all classes.
    """

    def __init__(
        self, num_classes: int, dim: int, proxies_per_class: int = 1, alpha: float = 32.0,
        delta: float = 0.1, temperature: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        if proxies_per_class < 1 or alpha <= 0 or temperature <= 0:
            raise ValueError(
                f"proxy anchor needs proxies_per_class >= 1, alpha > 0, temperature > 0; "
                f"got {proxies_per_class}, {alpha}, {temperature}"
            )
        self.alpha, self.delta, self.temperature = alpha, delta, temperature
        # Kaiming-style spread: random directions, far apart in high dimension.
        self.proxies = nn.Parameter(torch.randn(num_classes, proxies_per_class, dim) / dim**0.5)

    def class_similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Pooled similarity ``(batch, num_classes)`` of each clip to each class's proxies."""
        x = F.normalize(embeddings.float(), dim=1)
        s = torch.einsum("bd,cmd->bcm", x, F.normalize(self.proxies, dim=2))
        return (torch.softmax(s / self.temperature, dim=2) * s).sum(dim=2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.class_similarity(embeddings)
        pos = F.one_hot(labels, s.shape[1]).bool()
        pos_term = _masked_logsumexp(-self.alpha * (s - self.delta).T, pos.T, add_one=True)
        neg_term = _masked_logsumexp(self.alpha * (s + self.delta).T, ~pos.T, add_one=True)
        present = pos.any(dim=0)
        return pos_term[present].mean() + neg_term.mean()

    def extra_repr(self) -> str:
        c, m, d = self.proxies.shape
        return f"num_classes={c}, proxies_per_class={m}, dim={d}, alpha={self.alpha}, delta={self.delta}"


METRIC_LOSSES = (
    "triplet", "contrastive", "npair", "coupled_clusters", "circle", "multi_similarity", "oim", "proxy_anchor",
)  # fmt: skip


def build_metric_loss(name: str, params: Mapping[str, Any], dim: int, num_classes: int) -> nn.Module:
    """The metric loss called ``name`` (one of :data:`METRIC_LOSSES`) with keyword ``params``.

    ``dim`` and ``num_classes`` size the losses with per-class state (``oim``,
    ``proxy_anchor``).
    """
    simple: dict[str, type[nn.Module]] = {
        "triplet": BatchHardTripletLoss, "contrastive": ContrastiveLoss, "npair": NPairLoss,
        "coupled_clusters": CoupledClustersLoss, "circle": CircleLoss, "multi_similarity": MultiSimilarityLoss,
    }  # fmt: skip
    if name in simple:
        return simple[name](**params)
    if name == "oim":
        return OIMLoss(num_classes, dim, **params)
    if name == "proxy_anchor":
        return ProxyAnchorLoss(num_classes, dim, **params)
    raise ValueError(f"unknown metric loss {name!r}; choose one of {', '.join(METRIC_LOSSES)}")


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


class DistillLoss(nn.Module):
    """Teacher–student term: ``1 − cos(W s, t)`` between the student's embedding ``s`` and the
    teacher's ``t`` of the same clip, ``W`` a learned linear map to the teacher's size.

    ``W`` lives here, in the loss, so that the trained model (and its export) is the plain
    student. A row of zeros in ``targets`` is a clip with no teacher embedding: it is left out
    of the mean (masked rather than dropped, so that ``W`` always gets a gradient, as
    DistributedDataParallel requires of every parameter).
    """

    takes_targets = True

    def __init__(self, dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(dim, teacher_dim, bias=False)

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        has = (targets.abs().sum(dim=1) > 0).float()
        cos = F.cosine_similarity(self.project(embeddings), targets, dim=1)
        return (has * (1 - cos)).sum() / has.sum().clamp_min(1.0)


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
        self, embeddings: torch.Tensor, labels: torch.Tensor, unlabelled: int = 0, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``unlabelled``: the last rows are that many unlabelled clips (label ``-1``); only the
        terms that use such clips (``takes_unlabelled``, e.g. OIM's queue) see them. ``targets``:
        a teacher's embeddings of the labelled rows, for the terms that take them (``takes_targets``,
        :class:`DistillLoss`)."""
        total = embeddings.new_zeros((), dtype=torch.float32)
        values = {}
        n = len(embeddings) - unlabelled
        for name, term in self.terms.items():
            if getattr(term, "takes_targets", False):
                if targets is None:
                    raise ValueError(f"loss term {name!r} needs the teacher's embeddings of the batch")
                value = term(embeddings[:n], targets)
            else:
                whole = unlabelled == 0 or getattr(term, "takes_unlabelled", False)
                value = term(embeddings, labels) if whole else term(embeddings[:n], labels[:n])
            total = total + self.weights[name] * value
            values[name] = value.detach()
        return total, values
