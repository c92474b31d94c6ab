"""Mask inference from the two attention maps (paper, Sec. 3.5) and the ablation schemes of Table 4(b)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Scheme = Literal["ours", "max", "avg", "min"]
SCHEMES: tuple[str, ...] = ("ours", "max", "avg", "min")


def combine_attention(slot_attn: torch.Tensor, fuse_attn: torch.Tensor, scheme: str = "ours") -> torch.Tensor:
    """Patch scores (B, N) from A_slot (B, N, K) and A_fuse (B, K).

    ``ours`` is A_slot . A_fuse; ``max``/``min`` take the single entity map with the highest/lowest A_fuse; ``avg``
    replaces A_fuse with a uniform distribution.
    """
    if scheme == "ours":
        return torch.einsum("bnk,bk->bn", slot_attn, fuse_attn.to(slot_attn.dtype))
    if scheme == "avg":
        return slot_attn.mean(dim=-1)
    if scheme in ("max", "min"):
        pick = fuse_attn.argmax(dim=-1) if scheme == "max" else fuse_attn.argmin(dim=-1)
        index = pick.view(-1, 1, 1).expand(-1, slot_attn.shape[1], 1)
        return slot_attn.gather(-1, index).squeeze(-1)
    raise ValueError(f"unknown inference scheme {scheme!r}; choose from {SCHEMES}")


def upsample_and_normalise(scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch scores (N,) -> soft map (H, W) in [0, 1]: reshape to the grid, bilinear to ``size``, min-max.

    The input image was stretched to a square, so resizing the grid straight to the original size undoes that.
    """
    grid_map = scores.float().reshape(1, 1, *grid)
    resized = F.interpolate(grid_map, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    low, high = resized.min(), resized.max()
    return (resized - low) / (high - low + 1e-9)


def entity_maps(slot_attn: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Each entity's attention map (K, H, W), bilinearly resized to ``size`` (not normalised) for display."""
    maps = slot_attn.float().transpose(0, 1).reshape(1, -1, *grid)  # (1, K, h, w)
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)[0]


def normalised_entity_maps(slot_attn: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Every entity's map (K, H, W) in [0, 1] as the MAX scheme would see it if A_fuse picked that entity.

    One image's A_slot (N, K) -> each column reshaped to the grid, bilinearly resized to ``size`` and min-max
    normalised, exactly as :func:`upsample_and_normalise` does for one map; threshold it for the entity's mask.
    """
    # K maps as a batch of one-channel images: bit for bit what upsample_and_normalise computes for each column
    # (as channels of one image, the interpolation kernel rounds differently).
    columns = slot_attn.float().transpose(0, 1).reshape(-1, 1, *grid)  # (K, 1, h, w)
    maps = F.interpolate(columns, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low + 1e-9)


def mix_entities(slot_attn: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int],
                 size: tuple[int, int]) -> torch.Tensor:
    """Soft map (H, W) in [0, 1] of one image's A_slot (N, K) mixed by ``weights`` (K,) instead of A_fuse.

    The same path as the ``ours`` scheme (A_slot . w, bilinear resize, min-max), so thresholding it at tau gives the
    mask inference would give if A_fuse were ``weights`` (any positive scale of them gives the same mask).
    """
    scores = slot_attn.float() @ weights.to(slot_attn.device, torch.float32)
    return upsample_and_normalise(scores, grid, size)
