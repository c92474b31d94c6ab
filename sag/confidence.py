"""A confidence per mask that predicts its IoU, from what a :class:`~sag.outputs.Segmentation` already holds.

Label Studio sorts and filters tasks by a prediction's ``score`` and annotators review the lowest first, so the score
should rank masks the way their quality ranks them. The largest A_fuse alone does not: it says how sure the text is of
an entity, not whether that entity's map is a clean object. :func:`mask_features` measures twelve things, each in
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
- ``support``: the served map's mean inside the mask;
- ``margin``: A_fuse's largest share minus its second largest (0: two entities tie; 1: one takes all);
- ``region_match``: how much better the text matches the entities under the served mask than the entities
  outside it, as the model's own text-image matching (the C^3 similarity of the fused embedding with the text)
  reads it: 0.5 + (cos(z_in, x^T) - cos(z_out, x^T)) / 2, clipped to [0, 1] (:func:`region_match`). For a text with
  spatial words the text is its head ("the red circle" of "the leftmost red circle"): the served region should be a
  red circle, whichever of them the spatial words pick. This is the one feature that looks at *which* object the mask
  covers, not at its shape; 0.5 (no evidence) when the Segmentation does not carry it;
- ``landmark_overlap``: for a relation ("... above the blue star"), the share of the served mask inside the landmark's
  mask: the head's mask fell on the landmark itself (0 for other texts).

:func:`mask_confidence` combines them with a logistic model fitted to IoU on the synthetic benchmark's val split
(``bench/confidence_benchmark.py`` fits the coefficients below and scores the test split and the real-photo benchmark),
so the score reads as an estimate of the mask's IoU, in [0, 1]. One fixed rule is not fitted, since the synthetic
benchmark has no unknown words to fit it on: the score is multiplied by 1 - the share of the text's words the model's
tokenizer does not know (:func:`unknown_word_share`; ``Segmentation.unknown_words``): a mask for a word the model
never learned cannot follow it. What it is worth is measured, not assumed: on the
synthetic test split Spearman(score, IoU) is about 0.43 (0.27 with the first nine features alone; bench/README.md,
"Mask confidence"). Most bad masks there are clean masks of the wrong object, which no feature of the mask's shape can
tell from the right one; ``region_match`` is the feature that sees it (Spearman 0.30 alone), and it is only as good as
the model's own matching of texts to entities. Deterministic; pure torch and numpy
(connected regions with ``scipy.ndimage``, as :mod:`sag.spatial`). The maps are read at most ``WORK_SIDE`` pixels a
side, so a large photo costs as much as a small one.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

FEATURES: tuple[str, ...] = ("peak", "coverage", "contrast", "largest", "fill", "agreement", "stability", "area",
                              "support", "margin", "region_match", "landmark_overlap")
# Logistic model of IoU: sigmoid(INTERCEPT + sum_i WEIGHTS[i] * feature_i), in FEATURES' order. Fitted by
# bench/confidence_benchmark.py on the synthetic val split, served inference (guided refinement + spatial words);
# bench/results/confidence.json has the fit and the scores. Features that overlap share their weight (coverage, area
# and contrast all see a large map), so a single weight's sign says little on its own.
WEIGHTS: tuple[float, ...] = (1.167, -1.064, -1.302, 1.408, 0.272, 0.434, 0.819, -3.827, -0.681, 0.144, 2.203,
                               -0.836)
INTERCEPT: float = -2.15
WORK_SIDE = 128  # maps are read at most this many pixels a side (nearest neighbour for masks)
AGREEMENT_MARGIN = 0.05  # the window of the agreement feature: the served mask's box grown by this much of the side
STABILITY_DELTA = 0.1  # the served map thresholded at tau +- this for the stability feature
NO_EVIDENCE = 0.5  # region_match of a Segmentation that does not carry one: neither better nor worse than elsewhere
UNKNOWN_PIECES = 3  # a word the tokenizer splits into this many pieces or more (or [UNK]) is one it does not know


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


def attention_margin(fuse_attn: torch.Tensor) -> float:
    """A_fuse (K,)'s largest share minus its second largest, in [0, 1]: 0 for a tie (uniform), 1 for one-hot (and 0
    for K = 1, where nothing is chosen)."""
    a = fuse_attn.detach().float().cpu().clamp_min(0)
    if a.numel() < 2 or float(a.sum()) <= 0:
        return 0.0
    top = torch.topk(a / a.sum(), 2).values
    return float(min(1.0, max(0.0, float(top[0] - top[1]))))


@torch.no_grad()
def region_match(fusion, entities: torch.Tensor, slot_attn: torch.Tensor, grid: tuple[int, int],
                 masks: Sequence[torch.Tensor], text: torch.Tensor) -> list[float]:
    """How much better each text matches the entities under its mask than those outside it, in [0, 1].

    The region's entity is the mix of the K entities by their slot attention inside the mask (the mask shrunk to the
    patch grid by area); the text is fused with that one entity, and with the mix outside the mask, by the model's
    own fusion (``model.fuse``), and each fused embedding z is compared with the text feature x^T by cosine, as C^3
    compares them in training. Result: 0.5 + (cos(z_in, x^T) - cos(z_out, x^T)) / 2, clipped to [0, 1]; 0.5 when the
    mask is empty or covers every patch.

    Args:
        fusion: the model's ``fuse`` (entities (B, K, D), text (B, D)) -> FusionOutput.
        entities: (B, K, D) entity embeddings, row i the image of mask i.
        slot_attn: (B, N, K) A_slot on the (h, w) ``grid``.
        masks: B bool masks (H_i, W_i), each at its image's size.
        text: (B, D) text features x^T, row i the text whose mask is ``masks[i]``.
    """
    if not (len(masks) == entities.shape[0] == slot_attn.shape[0] == text.shape[0]):
        raise ValueError(f"need one mask, entity set, A_slot and text per row, got {len(masks)}, "
                         f"{entities.shape[0]}, {slot_attn.shape[0]}, {text.shape[0]}")
    if not masks:
        return []
    inside = torch.stack([F.interpolate(m.detach().float()[None, None].to(slot_attn.device), size=tuple(grid),
                                        mode="area").flatten() for m in masks])  # (B, N) patch share in the mask
    attn = slot_attn.float()
    w_in = torch.einsum("bn,bnk->bk", inside, attn)
    w_out = torch.einsum("bn,bnk->bk", 1.0 - inside, attn)
    usable = (w_in.sum(-1) > 1e-6) & (w_out.sum(-1) > 1e-6)
    ents = entities.float()

    def cosine(weights: torch.Tensor) -> torch.Tensor:
        mix = torch.einsum("bk,bkd->bd", weights / weights.sum(-1, keepdim=True).clamp_min(1e-12), ents)
        z = fusion(mix[:, None].to(entities.dtype), text).z.float()
        return (z * F.normalize(text.float(), dim=-1)).sum(-1)

    gain = cosine(w_in) - cosine(w_out)
    return [float(min(1.0, max(0.0, 0.5 + float(g) / 2))) if ok else NO_EVIDENCE
            for g, ok in zip(gain.cpu(), usable.cpu())]


def unknown_word_share(tokenizer, text: str) -> float:
    """The share of ``text``'s words (letters, digits and ') that ``tokenizer`` does not know, in [0, 1]: a word it
    maps to [UNK] or splits into UNKNOWN_PIECES pieces or more (the tiny test tokenizer falls back to characters; a
    real WordPiece vocabulary splits rare words). 0 for a text without words."""
    words = re.findall(r"[A-Za-z0-9']+", text)
    if not words:
        return 0.0
    unknown = getattr(tokenizer, "unk_token", None)
    count = 0
    for word in words:
        pieces = tokenizer.tokenize(word)
        count += len(pieces) >= UNKNOWN_PIECES or (unknown is not None and unknown in pieces)
    return count / len(words)


def mask_features(seg, tau: float) -> dict[str, float]:
    """The features of :data:`FEATURES` for one Segmentation, each in [0, 1].

    Args:
        seg: a :class:`sag.outputs.Segmentation`: ``mask`` (H, W) bool, ``soft`` (H, W) in [0, 1], ``fuse_attn`` (K,),
            ``unrefined`` (H, W) or None (then the plain map is ``soft``), and the optional ``region_match`` and
            ``landmark_overlap`` (see the module docstring; defaults when None).
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
            "area": area / mask.size, "support": min(1.0, support), "margin": attention_margin(seg.fuse_attn),
            "region_match": _field(seg, "region_match", NO_EVIDENCE),
            "landmark_overlap": _field(seg, "landmark_overlap", 0.0)}


def _field(seg, name: str, default: float) -> float:
    """An optional evidence field of a Segmentation in [0, 1], ``default`` when it is absent or None."""
    value = getattr(seg, name, None)
    return default if value is None else float(min(1.0, max(0.0, value)))


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
    return combine(mask_features(seg, tau)) * (1.0 - _field(seg, "unknown_words", 0.0))


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
