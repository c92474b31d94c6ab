"""Referring segmentation metrics: per-expression IoU, mIoU, cIoU and accuracy at IoU thresholds.

Every call to :meth:`SegmentationMetrics.update` counts one expression exactly once.

Diagnostics (``sag-eval --diagnostics``, see :mod:`training.evaluate`): the boundary F-score of DAVIS
(:func:`boundary_scores`), pointing (:func:`pointing_hit`), mean best overlap of entities against ground-truth
instances (:func:`mean_best_overlap`) and a small non-negative least-squares solver for the oracle mix of entities.
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


# ---- diagnostics: boundary accuracy, pointing, entity quality ------------------------------------------------------
BOUNDARY_TOLERANCE = 2.0  # pixels


def mask_boundary(mask) -> np.ndarray:
    """The inner boundary (H, W) bool of a mask (H, W): foreground pixels with a 4-neighbour in the background.

    The image border is not a boundary (as DAVIS's ``seg2bmap``): a mask that fills the image has none.
    """
    m = _as_bool(mask)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {m.shape}")
    p = np.pad(m, 1, mode="edge")  # the mask continues past the border
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def dilate_disk(mask, radius: float) -> np.ndarray:
    """Pixels (H, W) bool within Euclidean distance ``radius`` of a True pixel of ``mask`` (H, W)."""
    m = _as_bool(mask)
    r = int(np.floor(radius))
    out = m.copy()
    h, w = m.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                    m[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def boundary_scores(pred, target, tolerance: float = BOUNDARY_TOLERANCE) -> tuple[float, float, float]:
    """Boundary precision, recall and F-score of two masks (H, W) at a pixel ``tolerance``.

    The contour accuracy F of DAVIS (Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object
    Segmentation", CVPR 2016): precision is the fraction of the prediction's boundary pixels within ``tolerance``
    (Euclidean, i.e. a disk, as DAVIS's dilation) of a ground-truth boundary pixel, recall the converse, and
    F = 2PR / (P + R). DAVIS sets the tolerance to 0.8% of the image diagonal; here it is in pixels. With no boundary
    on either side, P = R = 1; with none on one side only, F = 0.
    """
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {t.shape} differ in shape")
    bp, bt = mask_boundary(p), mask_boundary(t)
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0 or n_t == 0:
        return (1.0, 0.0, 0.0) if n_p == 0 else (0.0, 1.0, 0.0)
    precision = float((bp & dilate_disk(bt, tolerance)).sum()) / n_p
    recall = float((bt & dilate_disk(bp, tolerance)).sum()) / n_t
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f


def boundary_f_score(pred, target, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """The boundary F-score of :func:`boundary_scores` (1.0 for a mask against itself)."""
    return boundary_scores(pred, target, tolerance)[2]


def pointing_hit(soft, target) -> float:
    """Pointing game: 1.0 if the maximum of a soft map (H, W) lies inside the target mask (H, W), else 0.0.

    Where several pixels share the maximum (a plateau, or a constant map), the fraction of them inside the target,
    so ties are not broken by scan order.
    """
    s = soft.detach().cpu().numpy() if isinstance(soft, torch.Tensor) else np.asarray(soft)
    t = _as_bool(target)
    if s.shape != t.shape:
        raise ValueError(f"soft map {s.shape} and ground truth {t.shape} differ in shape")
    return float(t[s == s.max()].mean())


def _bool_tensor(x, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.bool)


def best_overlaps(segments, instances) -> np.ndarray:
    """For each ground-truth instance, the best IoU over predicted segments: (M,) from segments (K, H, W) bool and
    instances (M, H, W) bool (numpy or torch; computed on the segments' device). Segments may overlap (thresholded
    maps) or partition the image (argmax). An empty instance scores 1 against an empty segment, as :func:`iou`."""
    s = _bool_tensor(segments)
    g = _bool_tensor(instances, s.device)
    if s.ndim != 3 or g.ndim != 3 or s.shape[1:] != g.shape[1:]:
        raise ValueError(f"need segments (K, H, W) and instances (M, H, W) of one size, got {tuple(s.shape)}, "
                         f"{tuple(g.shape)}")
    if len(s) == 0:
        return np.zeros(len(g))
    pixels = s.shape[1] * s.shape[2]
    # exact integer counts: float32 on the CPU below 2^24 pixels; float64 on GPUs, whose float32 matmuls may use TF32
    dtype = torch.float32 if s.device.type == "cpu" and pixels < 2**24 else torch.float64
    sf, gf = s.flatten(1).to(dtype), g.flatten(1).to(dtype)
    inter = gf @ sf.T  # (M, K)
    union = gf.sum(1, keepdim=True) + sf.sum(1)[None, :] - inter
    iou_mk = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return iou_mk.amax(dim=1).double().cpu().numpy()


def mean_best_overlap(segments, instances) -> float:
    """Mean best overlap (mBO) of one image: segments (K, H, W) against ground-truth instances (M, H, W).

    Each ground-truth instance is matched to the predicted segment of highest IoU and these IoUs are averaged over
    the instances (Pont-Tuset et al., "Multiscale Combinatorial Grouping for Image Segmentation and Object Proposal
    Generation", TPAMI 2017, as used for slot masks by DINOSAUR: Seitzer et al., "Bridging the Gap to Real-World
    Object-Centric Learning", ICLR 2023). Data-set mBO is the mean of this over images.
    """
    best = best_overlaps(segments, instances)
    if best.size == 0:
        raise ValueError("mBO needs at least one ground-truth instance")
    return float(best.mean())


def argmax_segments(maps) -> torch.Tensor:
    """Soft maps (K, H, W) (numpy or torch) -> a partition (K, H, W) bool tensor on the maps' device: every pixel
    goes to its highest map."""
    m = maps if isinstance(maps, torch.Tensor) else torch.from_numpy(np.asarray(maps))
    labels = m.argmax(dim=0)
    return labels[None] == torch.arange(m.shape[0], device=m.device)[:, None, None]


def nonnegative_least_squares(a, b, max_iter: int | None = None) -> np.ndarray:
    """argmin_{w >= 0} ||a w - b||^2 for a (P, K), b (P,): Lawson-Hanson's active set on the normal equations.

    Solved on the K x K Gram matrix (cheap for many pixels and few entities); rank-deficient columns are fine (the
    subproblems use least squares), the minimiser may then not be unique but the residual is minimal.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    gram, rhs = a.T @ a, a.T @ b
    k = gram.shape[0]
    tol = 1e-10 * max(1.0, float(np.abs(gram).max(initial=0.0)), float(np.abs(rhs).max(initial=0.0)))
    w = np.zeros(k)
    passive = np.zeros(k, dtype=bool)
    for _ in range(max_iter or 3 * k + 3):
        grad = rhs - gram @ w  # minus the gradient of the objective / 2
        free = ~passive & (grad > tol)
        if not free.any():
            break
        passive[int(np.argmax(np.where(free, grad, -np.inf)))] = True
        for _ in range(k + 1):
            idx = np.flatnonzero(passive)
            s = np.zeros(k)
            s[idx] = np.linalg.lstsq(gram[np.ix_(idx, idx)], rhs[idx], rcond=None)[0]
            if (s[idx] > 0).all():
                w = s
                break
            neg = passive & (s <= 0)
            alpha = np.min(w[neg] / np.maximum(w[neg] - s[neg], 1e-300))
            w = w + alpha * (s - w)
            passive &= w > tol
            w[~passive] = 0.0
    return np.maximum(w, 0.0)
