"""Where an evaluation loses its score (``sag-eval --diagnostics``): the diagnostics toolkit of evaluation.

For the ``ours`` scheme of :func:`training.evaluate.evaluate`:

* entity quality, per image: mBO (mean best overlap, :func:`sag.metrics.mean_best_overlap`) of the K entities
  against the image's ground-truth instances: every instance of ``instances.json`` in the refer layout, else the
  referred masks of that image's expressions. Entities as a partition (argmax over K of A_slot resized to the image)
  and as the K thresholded entity maps (each as the MAX scheme would mask it);
* oracle entity: the mIoU if A_fuse picked the best single entity for each expression (an upper bound of MAX), and
  how often its argmax is that entity;
* oracle NNLS: the mIoU of the non-negative least-squares mix of the entity maps that best fits the target mask
  (fitted at <= ``fit_side`` px), thresholded as inference. High oracles with a low mIoU: the text grounding (A_fuse)
  loses the score; low oracles: the entities do;
* pointing: whether the soft map's maximum lies inside the target;
* boundary F at 2 px (DAVIS contour accuracy, :func:`sag.metrics.boundary_scores`);

overall, per expression kind where the data set has kinds, and on the expressions the model points at correctly
(``pointed``: pointing hit on the map before any mask refinement, so the subset is the same with and without one).
The masks and boundary F are those of the refined maps when the evaluation refines them.

:class:`Diagnostics` gathers them batch by batch (``evaluate`` hands it each batch's ``ours`` segmentations);
:class:`DiagnosticOptions` holds its settings; :func:`format_diagnostics` prints the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sag import ImageEntities, Segmentation, SegmentationMetrics
from sag.inference import entity_maps, mix_entities, normalised_entity_maps
from sag.metrics import (
    BOUNDARY_TOLERANCE,
    argmax_segments,
    boundary_f_score,
    iou,
    mean_best_overlap,
    nonnegative_least_squares,
    pointing_hit,
)

from .datasets.base import DatasetError, Expression, MaskSource, Sample

DIAGNOSTIC_COLUMNS: tuple[str, ...] = ("mIoU", "cIoU", "boundary_F", "pointing", "oracle_entity_mIoU",
                                       "oracle_nnls_mIoU", "afuse_picks_best")
FIT_SIDE = 64  # the NNLS oracle is fitted on maps and target resized to at most this many pixels a side


class InstanceMasks:
    """Ground-truth instance masks per image id, for entity quality (mBO).

    ``from_expressions`` takes the referred masks of each image's expressions (every data set with masks);
    ``add_coco`` replaces them with every instance of a COCO ``instances.json`` (the refer layout), crowd regions
    excepted, for the images it has.
    """

    def __init__(self) -> None:
        self.by_image: dict[str, list[MaskSource]] = {}
        self.source: dict[str, str] = {}

    @classmethod
    def from_expressions(cls, expressions: Sequence[Expression]) -> "InstanceMasks":
        out = cls()
        for e in expressions:
            if e.mask is None:
                continue
            masks = out.by_image.setdefault(str(e.image_id), [])
            if not any(m is e.mask for m in masks):  # one mask object per ref / annotation, shared by its sentences
                masks.append(e.mask)
                out.source[str(e.image_id)] = "referred masks"
        return out

    def add_coco(self, path: str | Path, image_ids: Iterable[str] | None = None) -> "InstanceMasks":
        """Every non-crowd annotation of ``path`` (COCO instances) for ``image_ids`` (default: all images)."""
        from .datasets.base import CocoSegmentation
        from .datasets.refcoco import load_instances

        images, anns = load_instances(Path(path))
        wanted = None if image_ids is None else {str(i) for i in image_ids}
        found: dict[str, list[MaskSource]] = {}
        for ann in anns.values():
            image_id = str(ann.get("image_id"))
            if (wanted is not None and image_id not in wanted) or ann.get("iscrowd") or "segmentation" not in ann:
                continue
            image = images.get(int(ann["image_id"]))
            if image is None:
                raise DatasetError(f"{path}: annotation {ann['id']} points at image {ann['image_id']}, which it lacks")
            found.setdefault(image_id, []).append(
                CocoSegmentation(ann["segmentation"], int(image["height"]), int(image["width"])))
        for image_id, masks in found.items():
            self.by_image[image_id] = masks
            self.source[image_id] = "instances.json"
        return self

    def masks(self, image_id: str, size: tuple[int, int]) -> tuple[list[np.ndarray], str] | None:
        """The decoded (H, W) bool masks of ``image_id`` and where they come from; None for an unknown image."""
        sources = self.by_image.get(str(image_id))
        if not sources:
            return None
        decoded = [np.asarray(m.decode(size), dtype=bool) for m in sources]
        for m in decoded:
            if m.shape != tuple(size):
                raise DatasetError(f"an instance mask of image {image_id} is {m.shape}, the image {tuple(size)}")
        return decoded, self.source[str(image_id)]


def nnls_entity_weights(slot_attn: torch.Tensor, grid: tuple[int, int], target: np.ndarray,
                        fit_side: int = FIT_SIDE) -> torch.Tensor:
    """Weights w >= 0 (K,) with A_slot w closest (least squares) to the target mask.

    One image's A_slot (N, K) and a target (H, W) bool; both are resized to at most ``fit_side`` px a side (the
    entity maps bilinearly, the target by area averaging) for the fit.
    """
    h, w = target.shape
    scale = min(1.0, fit_side / max(h, w))
    fit = (max(1, round(h * scale)), max(1, round(w * scale)))
    maps = entity_maps(slot_attn, grid, fit).flatten(1)  # (K, h' w')
    small = F.interpolate(torch.from_numpy(np.ascontiguousarray(target)).float()[None, None], size=fit,
                          mode="area")[0, 0]
    weights = nonnegative_least_squares(maps.T.double().cpu().numpy(), small.flatten().double().numpy())
    return torch.from_numpy(weights).float()


def expression_diagnostics(slot_attn: torch.Tensor, grid: tuple[int, int], fuse_attn: torch.Tensor,
                           soft: torch.Tensor, pred: torch.Tensor, target: np.ndarray, threshold: float,
                           entity_masks: torch.Tensor | None = None, fit_side: int = FIT_SIDE) -> dict[str, float]:
    """One expression's diagnostics.

    Args:
        slot_attn: its image's A_slot (N, K).
        grid: (h, w) with h * w = N.
        fuse_attn: A_fuse (K,) of the expression.
        soft, pred: the ``ours`` soft map (H, W) (for pointing; :class:`Diagnostics` passes the map before any mask
            refinement) and mask (H, W) bool.
        target: ground truth (H, W) bool.
        threshold: tau.
        entity_masks: the K entity masks (K, H, W) bool (:func:`sag.inference.normalised_entity_maps` >= tau),
            computed here if not given.

    Returns:
        ``boundary_F``, ``pointing``, ``oracle_entity_IoU`` (best single entity), ``afuse_picks_best`` (1 if A_fuse's
        argmax is a best entity), ``oracle_nnls_IoU`` (NNLS mix thresholded as inference).
    """
    size = tuple(target.shape)
    if entity_masks is None:
        entity_masks = normalised_entity_maps(slot_attn, grid, size) >= threshold
    t = torch.from_numpy(np.ascontiguousarray(target)).to(entity_masks.device)
    inter = (entity_masks & t).flatten(1).sum(1)
    union = (entity_masks | t).flatten(1).sum(1)
    ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))
    best = float(ious.max())
    weights = nnls_entity_weights(slot_attn, grid, target, fit_side)
    mixed = mix_entities(slot_attn, weights, grid, size) >= threshold
    return {
        "boundary_F": boundary_f_score(pred, target),
        "pointing": pointing_hit(soft, target),
        "oracle_entity_IoU": best,
        "afuse_picks_best": float(float(ious[int(fuse_attn.argmax())]) >= best),
        "oracle_nnls_IoU": iou(mixed, target),
    }


@dataclass
class DiagnosticMetrics:
    """Per-expression diagnostics of one subset of expressions, with that subset's mIoU and cIoU (scheme ``ours``)."""

    segmentation: SegmentationMetrics = field(default_factory=SegmentationMetrics)
    values: dict[str, list[float]] = field(default_factory=dict)

    def update(self, pred, target, values: dict[str, float]) -> None:
        self.segmentation.update(pred, target)
        for key, value in values.items():
            self.values.setdefault(key, []).append(value)

    def compute(self) -> dict[str, float]:
        if not len(self.segmentation):
            return {"count": 0.0}
        seg = self.segmentation.compute()
        out = {"count": seg["count"], "mIoU": seg["mIoU"], "cIoU": seg["cIoU"], "acc@0.5": seg["acc@0.5"],
               "acc@0.7": seg["acc@0.7"]}
        names = {"oracle_entity_IoU": "oracle_entity_mIoU", "oracle_nnls_IoU": "oracle_nnls_mIoU"}
        out.update({names.get(k, k): float(np.mean(v)) for k, v in self.values.items()})
        return out


@dataclass
class EntityQuality:
    """mBO of the entities per image (each image once), averaged over images."""

    mbo: list[float] = field(default_factory=list)
    mbo_threshold: list[float] = field(default_factory=list)
    instances: int = 0
    sources: dict[str, int] = field(default_factory=dict)

    def update(self, slot_attn: torch.Tensor, grid: tuple[int, int], entity_masks: torch.Tensor,
               instances: list[np.ndarray], source: str) -> None:
        """One image: A_slot (N, K), its K thresholded entity masks (K, H, W) and ground-truth instances (H, W)."""
        size = tuple(entity_masks.shape[1:])
        gt = torch.from_numpy(np.stack(instances)).to(entity_masks.device)
        self.mbo.append(mean_best_overlap(argmax_segments(entity_maps(slot_attn, grid, size)), gt))
        self.mbo_threshold.append(mean_best_overlap(entity_masks, gt))
        self.instances += len(instances)
        self.sources[source] = self.sources.get(source, 0) + 1

    def compute(self) -> dict:
        if not self.mbo:
            return {"images": 0, "instances": 0}
        return {"images": len(self.mbo), "instances": self.instances, "mBO": float(np.mean(self.mbo)),
                "mBO_threshold": float(np.mean(self.mbo_threshold)), "instance_sources": dict(self.sources)}


@dataclass
class DiagnosticOptions:
    """How :func:`training.evaluate.evaluate` runs the diagnostics (``diagnostics=DiagnosticOptions(...)``;
    ``diagnostics=True`` is ``DiagnosticOptions()``).

    Attributes:
        instances: ground-truth instances per image for mBO; default: the referred masks of each image's expressions
            (``data.expressions``), else the evaluated expression's own mask.
        fit_side: the NNLS oracle's fitting resolution (px a side).
    """

    instances: InstanceMasks | None = None
    fit_side: int = FIT_SIDE


class Diagnostics:
    """The diagnostics of one evaluation, gathered batch by batch.

    Args:
        instances: ground-truth instances per image (each image's mBO is computed once, at its first expression).
        threshold: tau, for the entity masks and the NNLS oracle.
        fit_side: the NNLS oracle's fitting resolution.
        group_of: expression index -> group name, for a per-group breakdown (``None``: overall only).
    """

    def __init__(self, instances: InstanceMasks, threshold: float, fit_side: int = FIT_SIDE,
                 group_of: Callable[[int], str] | None = None):
        self.instances, self.threshold, self.fit_side, self.group_of = instances, threshold, fit_side, group_of
        self.all, self.pointed, self.quality = DiagnosticMetrics(), DiagnosticMetrics(), EntityQuality()
        self.groups: dict[str, DiagnosticMetrics] = {}
        self.seen_images: set[str] = set()

    def update(self, samples: Sequence[Sample], image: ImageEntities, segs: Sequence[Segmentation],
               first_index: int) -> None:
        """One batch: its samples (with ``mask`` (H, W) bool), their ImageEntities (row k answers sample k), the
        ``ours`` Segmentation of each, and the data set index of the first sample."""
        tau = self.threshold
        slot_attn = image.slot_attn.float()
        for k, (s, seg) in enumerate(zip(samples, segs)):
            masks = normalised_entity_maps(slot_attn[k], image.grid, s.mask.shape) >= tau  # (K, H, W)
            # pointing on the map before refinement: the model's pointing, the same with any refinement
            pointer = seg.unrefined if seg.unrefined is not None else seg.soft
            values = expression_diagnostics(slot_attn[k], image.grid, seg.fuse_attn, pointer, seg.mask,
                                            s.mask, tau, entity_masks=masks, fit_side=self.fit_side)
            self.all.update(seg.mask, s.mask, values)
            if values["pointing"] >= 0.5:
                self.pointed.update(seg.mask, s.mask, values)
            if self.group_of is not None:
                self.groups.setdefault(self.group_of(first_index + k), DiagnosticMetrics()).update(seg.mask, s.mask,
                                                                                                   values)
            if s.image_id not in self.seen_images:
                self.seen_images.add(s.image_id)
                found = self.instances.masks(s.image_id, s.mask.shape)
                gt, source = found if found is not None else ([s.mask], "referred masks")
                self.quality.update(slot_attn[k], image.grid, masks, gt, source)

    def compute(self) -> dict:
        """{"entity": entity quality, "expressions": all expressions, "groups": {group: ...}, "pointed": the
        expressions pointed at correctly, and the settings (boundary tolerance, threshold, fit side)}."""
        return {
            "entity": self.quality.compute(),
            "expressions": self.all.compute(),
            "groups": {g: m.compute() for g, m in sorted(self.groups.items())},
            "pointed": self.pointed.compute(),
            "boundary_tolerance_px": BOUNDARY_TOLERANCE, "threshold": self.threshold, "fit_side": self.fit_side,
        }


def format_diagnostics(diagnostics: dict) -> str:
    """The diagnostics of :func:`training.evaluate.evaluate` as Markdown: entity quality, then one row per
    expression subset (in %)."""
    entity = diagnostics["entity"]
    lines = [f"**Diagnostics** (scheme ours, mask refinement {diagnostics.get('refine', 'none')})", ""]
    if entity.get("images"):
        sources = ", ".join(f"{n} from {src}" for src, n in entity["instance_sources"].items())
        lines.append(f"Entity quality: mBO {100 * entity['mBO']:.1f} (argmax of A_slot), "
                     f"{100 * entity['mBO_threshold']:.1f} (thresholded entity maps) over {entity['images']} images, "
                     f"{entity['instances']} ground-truth instances ({sources}).")
        lines.append("")
    headers = {"boundary_F": f"boundary F@{diagnostics['boundary_tolerance_px']:g}px",
               "oracle_entity_mIoU": "oracle entity mIoU", "oracle_nnls_mIoU": "oracle NNLS mIoU",
               "afuse_picks_best": "A_fuse picks best entity"}
    lines.append("| expressions | count | " + " | ".join(headers.get(c, c) for c in DIAGNOSTIC_COLUMNS) + " |")
    lines.append("|---" * (len(DIAGNOSTIC_COLUMNS) + 2) + "|")
    rows = [("all", diagnostics["expressions"])] + [(f"{g} expressions", m) for g, m in diagnostics["groups"].items()]
    if diagnostics.get("pointed", {}).get("count"):
        rows.append(("pointed at correctly", diagnostics["pointed"]))
    for name, m in rows:
        lines.append(f"| {name} | {int(m['count'])} | " + " | ".join(f"{100 * m[c]:.1f}" for c in DIAGNOSTIC_COLUMNS)
                     + " |")
    return "\n".join(lines)
