"""A confidence per mask that predicts its IoU, from what a :class:`~sag.outputs.Segmentation` already holds.

Label Studio sorts and filters tasks by a prediction's ``score`` and annotators review the lowest first, so the score
should rank masks the way their quality ranks them. The largest A_fuse alone does not: it says how sure the text is of
an entity, not whether that entity's map is a clean object. :func:`mask_features` measures nine things, each in
[0, 1]:

- ``peak``: how peaked A_fuse is, 1 - entropy / log K (1: one entity takes all the attention; 0: uniform);
- ``coverage``: the fraction of the plain map (before refinement) at or above tau: a map that is "on" everywhere
  names nothing;
- ``contrast``: the plain map's mean inside its mask minus its mean outside;
- ``largest``: the largest connected region's share of the mask: one object, not specks;
- ``fill``: the mask's area over its bounding box's: a solid object, not a scatter;
- ``agreement``: IoU between the plain mask (unrefined >= tau) and the served mask (refined, and the region that
  spatial words picked), seen around the served mask: where edge-aware refinement moves the mask a lot, the map was
  unsure (1 when no refinement was applied);
- ``stability``: the served map's area at tau + 0.1 over its area at tau - 0.1 (SAM's stability score): a mask
  whose edge moves with the threshold lies on a shallow slope;
- ``area``: the served mask's share of the image (a mask over half the photo is mostly background);
- ``support``: the served map's mean inside the mask.

:func:`mask_confidence` combines them with a logistic model fitted to IoU on the synthetic benchmark's val split
(``bench/confidence_benchmark.py`` fits the coefficients below and scores the test split and the real-photo benchmark),
so the score reads as an estimate of the mask's IoU, in [0, 1]. What it is worth is measured, not assumed: on the
synthetic test split Spearman(score, IoU) is about 0.27 (bench/README.md, "Mask confidence"), because most bad masks
there are clean masks of the wrong object, which no feature of the mask itself can tell from the right one. Deterministic; pure torch and numpy
(connected regions with ``scipy.ndimage``, as :mod:`sag.spatial`). The maps are read at most ``WORK_SIDE`` pixels a
side, so a large photo costs as much as a small one.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

FEATURES: tuple[str, ...] = ("peak", "coverage", "contrast", "largest", "fill", "agreement", "stability", "area",
                              "support")
# Logistic model of IoU: sigmoid(INTERCEPT + sum_i WEIGHTS[i] * feature_i), in FEATURES' order. Fitted by
# bench/confidence_benchmark.py on the synthetic val split, served inference (guided refinement + spatial words);
# bench/results/confidence.json has the fit and the scores. Features that overlap share their weight (coverage, area
# and contrast all see a large map), so a single weight's sign says little on its own.
WEIGHTS: tuple[float, ...] = (1.569, -1.125, -0.924, 1.07, 0.337, 0.677, 0.698, -3.769, -0.189)
INTERCEPT: float = -1.158
WORK_SIDE = 128  # maps are read at most this many pixels a side (nearest neighbour for masks)
AGREEMENT_MARGIN = 0.05  # the window of the agreement feature: the served mask's box grown by this much of the side
STABILITY_DELTA = 0.1  # the served map thresholded at tau +- this for the stability feature


def _shrink(x: torch.Tensor, side: int = WORK_SIDE) -> torch.Tensor:
    """(H, W) -> at most ``side`` pixels a side, float32 on the CPU (nearest neighbour: a bool mask stays 0/1)."""
    x = x.detach().float().cpu()
    h, w = x.shape
    scale = side / max(h, w)
    if scale >= 1.0:
        return x
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x[None, None], size=size, mode="nearest")[0, 0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _local_agreement(plain: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the plain mask and the served mask (H, W) bool, both seen only around the served mask (its bounding box
    grown by AGREEMENT_MARGIN of the image side): a region that spatial words left out elsewhere in the photo is a
    choice, not a disagreement; what the refinement moved near the object is."""
    if not mask.any():
        return _iou(plain, mask)
    rows, cols = np.nonzero(mask)
    grow = int(round(AGREEMENT_MARGIN * max(mask.shape)))
    window = (slice(max(0, rows.min() - grow), rows.max() + grow + 1),
              slice(max(0, cols.min() - grow), cols.max() + grow + 1))
    return _iou(plain[window], mask[window])


def attention_peak(fuse_attn: torch.Tensor) -> float:
    """1 - normalised entropy of A_fuse (K,): 1 for one-hot, 0 for uniform (and for K = 1, where nothing is chosen)."""
    a = fuse_attn.detach().float().cpu().clamp_min(0)
    k = a.numel()
    if k < 2 or float(a.sum()) <= 0:
        return 0.0
    p = a / a.sum()
    entropy = float(-(p * torch.log(p.clamp_min(1e-12))).sum())
    return float(min(1.0, max(0.0, 1.0 - entropy / math.log(k))))


def mask_features(seg, tau: float) -> dict[str, float]:
    """The six features of :data:`FEATURES` for one Segmentation, each in [0, 1].

    Args:
        seg: a :class:`sag.outputs.Segmentation`: ``mask`` (H, W) bool, ``soft`` (H, W) in [0, 1], ``fuse_attn`` (K,),
            ``unrefined`` (H, W) or None (then the plain map is ``soft``).
        tau: the threshold the mask was drawn with (``config.threshold``).
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    if seg.mask.shape != seg.soft.shape or seg.mask.ndim != 2:
        raise ValueError(f"mask {tuple(seg.mask.shape)} and soft map {tuple(seg.soft.shape)} must be one (H, W)")
    plain_map = _shrink(seg.unrefined if seg.unrefined is not None else seg.soft).numpy()
    plain = plain_map >= tau
    mask = _shrink(seg.mask).numpy() > 0.5
    if plain.shape != mask.shape:
        raise ValueError(f"unrefined map {tuple(seg.unrefined.shape)} and mask {tuple(seg.mask.shape)} differ")
    area = int(mask.sum())
    coverage = float(plain.mean())
    if plain.any() and not plain.all():
        contrast = float(plain_map[plain].mean() - plain_map[~plain].mean())
    else:
        contrast = 0.0
    if area:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        largest = float(np.bincount(labels.ravel())[1:].max() / area)
        rows, cols = np.nonzero(mask)
        fill = area / float((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    else:
        largest = fill = 0.0
    soft = _shrink(seg.soft).numpy()
    low = int((soft >= tau - STABILITY_DELTA).sum())
    stability = float((soft >= tau + STABILITY_DELTA).sum() / low) if low else 0.0
    support = float(soft[mask].mean()) if area else 0.0
    return {"peak": attention_peak(seg.fuse_attn), "coverage": coverage, "contrast": max(0.0, min(1.0, contrast)),
            "largest": largest, "fill": float(fill), "agreement": _local_agreement(plain, mask),
            "stability": min(1.0, stability),
            "area": area / mask.size, "support": min(1.0, support)}


def combine(features: dict[str, float], weights: Sequence[float] = WEIGHTS, intercept: float = INTERCEPT) -> float:
    """The logistic model: sigmoid(intercept + weights . features), in [0, 1]."""
    z = intercept + sum(w * features[name] for w, name in zip(weights, FEATURES))
    return float(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))))


def mask_confidence(seg, tau: float) -> float:
    """How far to trust one mask: an estimate of its IoU in [0, 1] (0 for an empty mask).

    ``seg`` is a :class:`sag.outputs.Segmentation` as :meth:`SaG.segment <sag.model.SaG.segment>` or
    :func:`sag.pipeline.segment_texts` return it; ``tau`` the threshold it was drawn with.
    """
    if not bool(seg.mask.any()):
        return 0.0
    return combine(mask_features(seg, tau))


# ---- how well a score ranks masks ------------------------------------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties: mean ranks); 0 when either is constant."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two equally long 1-D sequences, got {x.shape} and {y.shape}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom else 0.0


def rank_report(scores: Sequence[float], ious: Sequence[float], review: float = 0.2, bad: float = 0.3) -> dict:
    """How a score ranks masks: Spearman(score, IoU), and the ``review`` fraction with the lowest scores (the list an
    annotator would review first): how many there are, how many of them have IoU < ``bad``, and how many of all the
    masks with IoU < ``bad`` it catches."""
    s, q = np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    n = len(s)
    if n == 0 or len(q) != n:
        raise ValueError(f"need as many scores as IoUs, got {n} and {len(q)}")
    take = max(1, int(round(review * n)))
    lowest = np.argsort(s, kind="stable")[:take]
    bad_low = int((q[lowest] < bad).sum())
    bad_all = int((q < bad).sum())
    return {"count": n, "spearman": round(spearman(s, q), 4), "review_fraction": review, "review_count": take,
            f"review_iou_below_{bad:g}": bad_low, f"all_iou_below_{bad:g}": bad_all,
            "review_precision": round(bad_low / take, 4),
            "base_rate": round(bad_all / n, 4)}
