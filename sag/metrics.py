"""Referring segmentation metrics: per-expression IoU, mIoU, cIoU and accuracy at IoU thresholds.

Every call to :meth:`SegmentationMetrics.update` counts one expression exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

ACCURACY_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)


def _as_bool(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)


def intersection_union(pred, target) -> tuple[int, int]:
    """Pixel counts |pred & target| and |pred | target| of two (H, W) masks of the same shape."""
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {t.shape} differ in shape")
    return int(np.logical_and(p, t).sum()), int(np.logical_or(p, t).sum())


def iou(pred, target) -> float:
    """IoU of two masks; two empty masks agree perfectly (1.0)."""
    inter, union = intersection_union(pred, target)
    return 1.0 if union == 0 else inter / union


@dataclass
class SegmentationMetrics:
    """Accumulates per-expression results; ``compute`` gives mIoU, cIoU (sum I / sum U) and A@{0.3,0.5,0.7}."""

    thresholds: Sequence[float] = ACCURACY_THRESHOLDS
    ious: list[float] = field(default_factory=list)
    total_inter: int = 0
    total_union: int = 0
    precisions: list[float] = field(default_factory=list)
    recalls: list[float] = field(default_factory=list)

    def update(self, pred, target) -> float:
        """Add one expression's predicted and ground-truth masks (H, W); returns its IoU."""
        p, t = _as_bool(pred), _as_bool(target)
        inter, union = intersection_union(p, t)
        value = 1.0 if union == 0 else inter / union
        self.ious.append(value)
        self.total_inter += inter
        self.total_union += union
        self.precisions.append(inter / p.sum() if p.any() else float(not t.any()))
        self.recalls.append(inter / t.sum() if t.any() else 1.0)
        return value

    def __len__(self) -> int:
        return len(self.ious)

    def compute(self) -> dict[str, float]:
        if not self.ious:
            raise ValueError("no expressions were evaluated")
        ious = np.asarray(self.ious)
        result = {
            "count": float(len(ious)),
            "mIoU": float(ious.mean()),
            "cIoU": float(self.total_inter / self.total_union) if self.total_union else 1.0,
            "precision": float(np.mean(self.precisions)),
            "recall": float(np.mean(self.recalls)),
        }
        for thr in self.thresholds:
            result[f"acc@{thr:g}"] = float((ious >= thr).mean())
        return result
