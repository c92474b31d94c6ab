"""2-D sine position encoding (DETR style), added to the visual features before entity discovery."""

from __future__ import annotations

import math

import torch


def sine_position_encoding_2d(
    height: int, width: int, dim: int, temperature: float = 10000.0, device=None, dtype=None
) -> torch.Tensor:
    """(height * width, dim) encoding: the first dim/2 channels encode y, the rest x.

    Coordinates are normalised to (0, 2*pi] and each half interleaves sin and cos, as in DETR and the authors' code.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    half = dim // 2
    eps = 1e-6
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y = y / (height + eps) * 2 * math.pi
    x = x / (width + eps) * 2 * math.pi
    freq = torch.arange(half, device=device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)
    pos_y = y[:, None] / freq  # (H, half)
    pos_x = x[:, None] / freq  # (W, half)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    grid = torch.cat(
        (pos_y[:, None, :].expand(height, width, half), pos_x[None, :, :].expand(height, width, half)), dim=-1
    )
    return grid.reshape(height * width, dim).to(dtype or torch.float32)
