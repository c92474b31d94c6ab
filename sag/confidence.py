"""A confidence per mask that predicts its IoU, from what a :class:`~sag.outputs.Segmentation` already holds.

Label Studio sorts and filters tasks by a prediction's ``score`` and annotators review the lowest first, so the score
should rank masks the way their quality ranks them. The largest A_fuse alone does not: it says how sure the text is of
an entity, not whether that entity's map is a clean object. :func:`mask_features` measures sixteen things, each in
[0, 1]. Ten describe the maps and the mask's shape:

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
- ``margin``: A_fuse's largest share minus its second largest (0: two entities tie; 1: one takes all).

Four read the model's own text-image matching, the C^3 similarity of a fused embedding z with the text x^T, cos(z,
x^T), as training compares them (:func:`match_evidence`). For a text with spatial words the text is its head ("the
red circle" of "the leftmost red circle"): the served region should be a red circle, whichever of them the spatial
words pick. They look at *which* object the mask covers, not at its shape:

- ``region_match``: how much better the text matches the entities under the served mask than the entities
  outside it, as the model's own text-image matching (the C^3 similarity of the fused embedding with the text)
  reads it: 0.5 + (cos(z_in, x^T) - cos(z_out, x^T)) / 2, clipped to [0, 1]; 0.5 when the mask is empty or
  covers every patch;
- ``pair_match``: how well the text matches the whole image, 0.5 + cos(z, x^T) / 2;
- ``entity_inside``: the share of the mask's main entity (the one with the most slot attention inside the mask) that
  lies inside it: the mask holds its object whole, not a part of it;
- ``entity_gap``: whether that main entity is the one the text matches best, 1 + (cos(z_main, x^T) - max_k cos(z_k,
  x^T)) / 2: 1 when it is, lower the worse it matches.

Each is 0.5 (0 for ``entity_inside``: no evidence) when the Segmentation does not carry it. The last two are of the
text: ``landmark_overlap``, for a relation ("... above the blue star"), the share of the served mask inside the
landmark's mask: the head's mask fell on the landmark itself (0 for other texts); and ``words``, the text's word count
over ``MAX_WORDS`` (the model reads long texts worse).

:func:`mask_confidence` combines them with gradient-boosted regression trees fitted to IoU (:class:`TreeEnsemble`,
shipped as ``confidence_model.json``; ``bench/confidence_benchmark.py`` fits it on the synthetic benchmark's train
split as two checkpoints serve it and scores the val and test splits and the real-photo benchmark), so the score reads
as an estimate of the mask's IoU, in [0, 1]. Features interact (a large mask is bad unless it matches the text well),
which a logistic model could not express: one of twelve of these features, fitted on val, ranked test masks 0.08-0.19
worse. The trees are constrained monotone: the score never falls as the evidence for the mask rises (a higher
``region_match``, a more peaked attention, ...) nor rises with the evidence against it.
One fixed rule is not fitted, since the synthetic benchmark has no unknown words to fit it on: the score is
multiplied by 1 - the share of the text's words the model's tokenizer does not know (:func:`unknown_word_share`;
``Segmentation.unknown_words``): a mask for a word the model never learned cannot follow it. What it is worth is
measured, not assumed (bench/README.md, "Mask confidence"): most bad masks are clean masks of the wrong object, which
only the matching features can tell from the right one, and those are only as good as the model's own matching of
texts to entities. Deterministic; pure torch and numpy
(connected regions with ``scipy.ndimage``, as :mod:`sag.spatial`). The maps are read at most ``WORK_SIDE`` pixels a
side, so a large photo costs as much as a small one.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

FEATURES: tuple[str, ...] = ("peak", "coverage", "contrast", "largest", "fill", "agreement", "stability", "area",
                              "support", "margin", "region_match", "landmark_overlap", "pair_match", "entity_inside",
                              "entity_gap", "words")
# The fitted model of IoU over FEATURES: gradient-boosted regression trees that bench/confidence_benchmark.py fits on
# the synthetic benchmark's train split as served, and writes here (bench/results/confidence.json has the fit and
# the scores). Package data, read once.
MODEL_FILE = Path(__file__).with_name("confidence_model.json")
WORK_SIDE = 128  # maps are read at most this many pixels a side (nearest neighbour for masks)
AGREEMENT_MARGIN = 0.05  # the window of the agreement feature: the served mask's box grown by this much of the side
STABILITY_DELTA = 0.1  # the served map thresholded at tau +- this for the stability feature
NO_EVIDENCE = 0.5  # a matching feature a Segmentation does not carry: neither better nor worse than elsewhere
WORD = r"[A-Za-z0-9']+"  # a word, for word_count and unknown_word_share
MAX_WORDS = 20  # the words feature: the text's word count over this, capped at 1
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
def match_evidence(fusion, entities: torch.Tensor, slot_attn: torch.Tensor, grid: tuple[int, int],
                   masks: Sequence[torch.Tensor], text: torch.Tensor) -> list[dict[str, float]]:
    """What the model's own text-image matching says of each mask, in [0, 1] each: the four features
    ``region_match``, ``pair_match``, ``entity_inside`` and ``entity_gap`` (module docstring).

    Each entity set is weighted by its slot attention inside the mask (the mask shrunk to the patch grid by area).
    The text is fused, by the model's own fusion (``model.fuse``), with the mix of the entities inside the mask, with
    the mix outside it, with all of them and with each one alone, and each fused embedding z is compared with the
    text feature x^T by cosine, as C^3 compares them in training.

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
    unit_text = F.normalize(text.float(), dim=-1)
    b, k, d = ents.shape

    def cosine(weights: torch.Tensor) -> torch.Tensor:
        mix = torch.einsum("bk,bkd->bd", weights / weights.sum(-1, keepdim=True).clamp_min(1e-12), ents)
        z = fusion(mix[:, None].to(entities.dtype), text).z.float()
        return (z * unit_text).sum(-1)

    gain = cosine(w_in) - cosine(w_out)
    pair = (fusion(entities, text).z.float() * unit_text).sum(-1)
    # each entity alone, all B * K of them in one pass: (B, K) cosine of its fused embedding with the text
    alone = fusion(entities.reshape(b * k, 1, d), text.repeat_interleave(k, 0)).z.float().reshape(b, k, -1)
    per_entity = (alone * unit_text[:, None]).sum(-1)
    main = w_in.argmax(-1)  # (B,) the entity with the most attention inside the mask
    rows = torch.arange(b, device=main.device)
    inside_share = w_in[rows, main] / attn.sum(1)[rows, main].clamp_min(1e-12)
    gap = per_entity[rows, main] - per_entity.max(-1).values

    def unit(x: float) -> float:
        return float(min(1.0, max(0.0, x)))

    out = []
    for i, ok in enumerate(usable.cpu().tolist()):
        has_inside = bool(w_in[i].sum() > 1e-6)
        out.append({"region_match": unit(0.5 + float(gain[i]) / 2) if ok else NO_EVIDENCE,
                    "pair_match": unit(0.5 + float(pair[i]) / 2),
                    "entity_inside": unit(float(inside_share[i])) if has_inside else 0.0,
                    "entity_gap": unit(1.0 + float(gap[i]) / 2) if has_inside else NO_EVIDENCE})
    return out


def word_count(text: str) -> int:
    """The number of words (letters, digits and ') in ``text``, as :func:`unknown_word_share` counts them."""
    return len(re.findall(WORD, text))


def unknown_word_share(tokenizer, text: str) -> float:
    """The share of ``text``'s words (letters, digits and ') that ``tokenizer`` does not know, in [0, 1]: a word it
    maps to [UNK] or splits into UNKNOWN_PIECES pieces or more (the tiny test tokenizer falls back to characters; a
    real WordPiece vocabulary splits rare words). 0 for a text without words."""
    words = re.findall(WORD, text)
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
            ``unrefined`` (H, W) or None (then the plain map is ``soft``), and the optional evidence
            ``region_match``, ``landmark_overlap``, ``pair_match``, ``entity_inside``, ``entity_gap`` and
            ``word_count`` (see the module docstring; defaults when None).
        tau: the threshold the mask was drawn with (``config.threshold``).
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    if seg.mask.shape != seg.soft.shape or seg.mask.ndim != 2:
        raise ValueError(f"mask {tuple(seg.mask.shape)} and soft map {tuple(seg.soft.shape)} must be one (H, W)")
    plain_map = _shrink(seg.unrefined if seg.unrefined is not None else seg.soft).numpy()
    plain = plain_map >= tau
    coverage = float(plain.mean())
    mask = _shrink(seg.mask).numpy() > 0.5
    if plain.shape != mask.shape:
        raise ValueError(f"unrefined map {tuple(seg.unrefined.shape)} and mask {tuple(seg.mask.shape)} differ")
    area = int(mask.sum())
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
            "landmark_overlap": _field(seg, "landmark_overlap", 0.0),
            "pair_match": _field(seg, "pair_match", NO_EVIDENCE), "entity_inside": _field(seg, "entity_inside", 0.0),
            "entity_gap": _field(seg, "entity_gap", NO_EVIDENCE),
            "words": min(1.0, (seg.word_count or 0) / MAX_WORDS)}


def _field(seg, name: str, default: float) -> float:
    """An optional evidence field of a Segmentation in [0, 1], ``default`` when it is absent or None."""
    value = getattr(seg, name, None)
    return default if value is None else float(min(1.0, max(0.0, value)))


@dataclass(frozen=True)
class TreeEnsemble:
    """Gradient-boosted regression trees over FEATURES: ``base + rate * sum of each tree's leaf``, clipped to [0, 1].

    Tree t is five arrays over its nodes: ``feature`` and ``threshold`` of each split (a row goes left when its
    feature is at most the threshold, as in scikit-learn's histogram gradient boosting, which fits them), ``left``
    and ``right`` children (-1 at a leaf), and each leaf's ``value``. The file format is what :meth:`to_dict`
    writes; scikit-learn is needed to fit, not to score.
    """

    features: tuple[str, ...]
    base: float
    rate: float
    trees: tuple[dict[str, np.ndarray], ...]
    fitted_on: dict

    @classmethod
    def from_dict(cls, data: dict) -> "TreeEnsemble":
        types = {"feature": np.int64, "threshold": np.float64, "left": np.int64, "right": np.int64,
                 "value": np.float64}
        trees = tuple({k: np.asarray(t[k], dtype=dt) for k, dt in types.items()} for t in data["trees"])
        return cls(tuple(data["features"]), float(data["base"]), float(data["rate"]), trees,
                   dict(data.get("fitted_on", {})))

    def to_dict(self) -> dict:
        return {"features": list(self.features), "base": self.base, "rate": self.rate, "fitted_on": self.fitted_on,
                "trees": [{k: v.tolist() for k, v in t.items()} for t in self.trees]}

    def __post_init__(self) -> None:
        # The trees side by side, padded to the largest (T, N): predict() walks all of them in one step per level
        # instead of one tree at a time (8 ms a mask for 300 trees, a tree at a time, on a CPU).
        width = max((len(t["value"]) for t in self.trees), default=1)

        def stack(key: str, fill: float, dtype) -> np.ndarray:
            out = np.full((len(self.trees), width), fill, dtype=dtype)
            for i, tree in enumerate(self.trees):
                out[i, : len(tree[key])] = tree[key]
            return out

        object.__setattr__(self, "_stacked", {"feature": stack("feature", -2, np.int64),
                                              "threshold": stack("threshold", 0.0, np.float64),
                                              "left": stack("left", -1, np.int64),
                                              "right": stack("right", -1, np.int64),
                                              "value": stack("value", 0.0, np.float64)})

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Rows of features (M, F), in ``features``' order -> (M,) estimated IoU in [0, 1]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"need (M, {len(self.features)}) features, got {x.shape}")
        t = self._stacked
        trees = np.arange(len(self.trees))[None, :]  # (1, T)
        node = np.zeros((len(x), len(self.trees)), dtype=np.int64)  # (M, T): each row's node in each tree
        while True:
            inner = t["left"][trees, node] >= 0
            if not inner.any():
                break
            value = np.take_along_axis(x, np.maximum(t["feature"][trees, node], 0), axis=1)
            left = value <= t["threshold"][trees, node]
            node = np.where(inner, np.where(left, t["left"][trees, node], t["right"][trees, node]), node)
        total = t["value"][trees, node].sum(axis=1) if len(self.trees) else np.zeros(len(x))
        return np.clip(self.base + self.rate * total, 0.0, 1.0)


@functools.cache
def fitted_model(path: Path = MODEL_FILE) -> TreeEnsemble:
    """The ensemble in ``path`` (default: the one shipped with sag), read once; it must be over FEATURES."""
    try:
        model = TreeEnsemble.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:  # a truncated or foreign file
        raise ValueError(f"{path} is not a confidence model ({type(exc).__name__}: {exc}): reinstall sag-assist or "
                         "refit it with bench/confidence_benchmark.py") from exc
    if model.features != FEATURES:
        raise ValueError(f"{path} scores the features {list(model.features)}, but sag.confidence measures "
                         f"{list(FEATURES)}: refit it with bench/confidence_benchmark.py")
    return model


def confidence_scores(features: np.ndarray, unknown: np.ndarray, empty: np.ndarray,
                      model: TreeEnsemble | None = None) -> np.ndarray:
    """The score of M masks from what :func:`mask_features` measured: the fitted model's estimate of IoU times 1 -
    the share of unknown words, and 0 for an empty mask. One rule for the backend (:func:`mask_confidence`) and for
    the benchmark that fits and scores it.

    Args:
        features: (M, F) over FEATURES, in their order.
        unknown: (M,) each text's share of words the tokenizer does not know (:func:`unknown_word_share`).
        empty: (M,) bool, the masks with no pixel.
        model: the ensemble (default: :func:`fitted_model`).
    """
    model = model or fitted_model()
    features = np.asarray(features, dtype=np.float64)
    estimate = model.predict(features) if len(features) else np.zeros(0)
    return np.where(np.asarray(empty, dtype=bool), 0.0, estimate * (1.0 - np.asarray(unknown, dtype=np.float64)))


def mask_confidence(seg, tau: float) -> float:
    """How far to trust one mask: an estimate of its IoU in [0, 1] (0 for an empty mask).

    ``seg`` is a :class:`sag.outputs.Segmentation` as :meth:`SaG.segment <sag.model.SaG.segment>` or
    :func:`sag.pipeline.segment_texts` return it; ``tau`` the threshold it was drawn with.
    """
    found = mask_features(seg, tau)
    return float(confidence_scores(np.array([[found[name] for name in FEATURES]]),
                                   [_field(seg, "unknown_words", 0.0)], [not bool(seg.mask.any())])[0])


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
