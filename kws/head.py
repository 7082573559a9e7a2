"""kws's head over a stem's frame sequence: pooling + projection → L2-normalised embedding.

The head starts as the mean-pooled stem: its output is
``normalize(mean_t(frames) + residual(frames))`` with the residual's last layer
initialised to zero, so that training can only move it away from the untrained
baseline where the losses ask for it. The residual is a small temporal
convolution stack with attentive pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Head", "HeadConfig"]


@dataclass(frozen=True)
class HeadConfig:
    """Head shape.

    Attributes:
        frames: stem frames per window (the window's length follows from it).
        channels: width of the residual's convolutions.
        layers: residual convolutions over time.
        kernel_size: their width in stem frames.
        dropout: on the pooled residual features while training.
    """

    frames: int = 13
    channels: int = 128
    layers: int = 2
    kernel_size: int = 3
    dropout: float = 0.1


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
