"""Small building blocks shared by the entity discovery and fusion modules."""

from __future__ import annotations

import torch
from torch import nn


class FeedForward(nn.Module):
    """Pre-LN MLP, D -> mult*D -> D with GELU; used as ``x + ff(x)``."""

    def __init__(self, dim: int, mult: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mult)
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, H*d) -> (..., H, L, d)."""
    *lead, length, width = x.shape
    return x.view(*lead, length, heads, width // heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., H, L, d) -> (..., L, H*d)."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
