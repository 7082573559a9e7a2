"""kws's head over a stem's frame sequence: pooling + projection → L2-normalised embedding.

The head starts as the mean-pooled stem: its output is
``normalize(mean_t(frames) + residual(frames))`` with the residual's last layer
initialised to zero, so that training can only move it away from the untrained
baseline where the losses ask for it. The residual is a small temporal
convolution stack with attentive pooling.

A head may also whiten its output (``HeadConfig.whiten > 0``): subtract the training
embeddings' mean and multiply by their within-word covariance to the power
``-whiten`` (:func:`fit_whitening`), then normalise again. Cosine similarity is then
less dominated by the few directions in which clips of one word vary most (voice,
channel), which the losses over synthetic words did not flatten for real speakers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Head", "HeadConfig", "fit_whitening"]


@dataclass(frozen=True)
class HeadConfig:
    """Head shape.

    Attributes:
        frames: stem frames per window (the window's length follows from it).
        channels: width of the residual's convolutions.
        layers: residual convolutions over time.
        kernel_size: their width in stem frames.
        dropout: on the pooled residual features while training.
        whiten: power of the within-word covariance that whitens the output (0: none);
            the map is fitted on the training clips (:func:`fit_whitening`).
    """

    frames: int = 13
    channels: int = 128
    layers: int = 2
    kernel_size: int = 3
    dropout: float = 0.1
    whiten: float = 0.0


class Head(nn.Module):
    """Stem frames ``(batch, T, in_dim)`` → unit-norm embedding ``(batch, in_dim)``."""

    def __init__(self, cfg: HeadConfig, in_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(in_dim)
        convs: list[nn.Module] = []
        cin = in_dim
        for _ in range(cfg.layers):
            convs += [nn.Conv1d(cin, cfg.channels, cfg.kernel_size, padding=cfg.kernel_size // 2), nn.ReLU()]
            cin = cfg.channels
        self.convs = nn.Sequential(*convs)
        self.attention = nn.Conv1d(cin, 1, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.project = nn.Linear(cin, in_dim)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        base = frames.mean(dim=1)
        x = self.convs(self.norm(frames).transpose(1, 2))  # (batch, C, T)
        w = torch.softmax(self.attention(x), dim=-1)
        pooled = (x * w).sum(dim=-1)
        return F.normalize(base + self.project(self.dropout(pooled)), dim=-1)


def fit_whitening(embeddings: np.ndarray, words: np.ndarray, power: float, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """The whitening of a head's output: ``(mean (D,), map (D, D))`` with
    ``map = (S_w + eps I) ** -power``, ``S_w`` the within-word covariance of ``embeddings``
    ``(N, D)`` (labelled by ``words`` ``(N,)``; words with one clip add nothing)."""
    x = np.asarray(embeddings, dtype=np.float64)
    _, labels = np.unique(words, return_inverse=True)
    counts = np.bincount(labels)
    means = np.zeros((len(counts), x.shape[1]))
    np.add.at(means, labels, x)
    centred = x - means[labels] / counts[labels, None]
    within = centred.T @ centred / len(x) + eps * np.eye(x.shape[1])
    values, vectors = np.linalg.eigh(within)
    matrix = vectors @ np.diag(np.maximum(values, eps) ** -power) @ vectors.T
    return x.mean(axis=0).astype(np.float32), matrix.astype(np.float32)
