"""Evaluation on referring segmentation: the paper's table (mIoU, cIoU, A@0.3/0.5/0.7) per inference scheme.

Each expression of the data set is evaluated exactly once, in order, in eval mode (deterministic slots); the authors'
script tiled or truncated its list to 10,000 samples and resampled slot noise, both of which this avoids.

With ``diagnostics=True`` (``sag-eval --diagnostics``) it also says where the score is lost, for the ``ours`` scheme:

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

``refine`` picks the edge-aware mask refinement (:mod:`sag.refine`, default the checkpoint's ``mask_refine``); every
scheme's masks and the diagnostics' boundary F are those of the refined maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sag import SCHEMES, SaG, SegmentationMetrics
from sag.inference import entity_maps, mix_entities, normalised_entity_maps
from sag.metrics import (
    BOUNDARY_TOLERANCE, argmax_segments, boundary_f_score, iou, mean_best_overlap, nonnegative_least_squares,
    pointing_hit,
)
from sag.pipeline import TextQueries

from .datasets.base import DatasetError, Expression, MaskSource, Sample

BASELINES: tuple[str, ...] = ("whole_image", "centre_blob")
TABLE_COLUMNS: tuple[str, ...] = ("mIoU", "cIoU", "acc@0.3", "acc@0.5", "acc@0.7")
DIAGNOSTIC_COLUMNS: tuple[str, ...] = ("mIoU", "cIoU", "boundary_F", "pointing", "oracle_entity_mIoU",
                                       "oracle_nnls_mIoU", "afuse_picks_best")
FIT_SIDE = 64  # the NNLS oracle is fitted on maps and target resized to at most this many pixels a side


def baseline_mask(name: str, size: tuple[int, int]) -> np.ndarray:
    """A text-blind prediction (H, W) bool: the whole image, or a centred ellipse with half the image's height and
    width as its axes (about 20% of the area)."""
    h, w = size
    if name == "whole_image":
        return np.ones((h, w), dtype=bool)
    if name == "centre_blob":
        yy, xx = np.mgrid[0:h, 0:w]
        return ((yy + 0.5 - h / 2) / (h / 4)) ** 2 + ((xx + 0.5 - w / 2) / (w / 4)) ** 2 <= 1.0
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


@dataclass
class EvalReport:
    """Metrics per inference scheme and per baseline, plus per-group results when samples carry a group."""

    dataset: str
    count: int
    schemes: dict[str, dict[str, float]]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> metrics of scheme ``ours``
    # with diagnostics: {"entity": entity quality, "expressions": all expressions, "groups": {group: ...}, settings}
    diagnostics: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"dataset": self.dataset, "count": self.count, "schemes": self.schemes, "baselines": self.baselines,
               "groups": self.groups}
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        return out


# ---- diagnostics -----------------------------------------------------------------------------------------------------
def expression_kinds(data: Dataset) -> Callable[[int], str] | None:
    """index -> the expression's kind, for data sets whose expressions carry one (the synthetic set, refs with a
    ``kind``); None when none does."""
    expressions = getattr(data, "expressions", None) or []
    if all(getattr(e, "kind", None) is None for e in expressions):
        return None
    kinds = [e.kind or "unknown" for e in expressions]
    return kinds.__getitem__


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
        soft, pred: the ``ours`` soft map (H, W) (for pointing; :func:`evaluate` passes the map before any mask
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


def _collate(samples: list[Sample]) -> list[Sample]:
    return samples


def evaluate(model: SaG, data: Dataset, schemes: Sequence[str] = ("ours",), batch_size: int = 32,
             threshold: float | None = None, baselines: Sequence[str] = (), limit: int | None = None,
             group_of: Callable[[int], str] | None = None, show_progress: bool = True,
             on_batch: Callable[[list[Sample], object, list], None] | None = None, diagnostics: bool = False,
             instances: InstanceMasks | None = None, fit_side: int = FIT_SIDE,
             refine: str | Callable | None = None, spatial: bool | None = None) -> EvalReport:
    """Segment every expression of ``data`` (Samples with masks) and score it.

    Args:
        model: SaG; put in eval mode here.
        data: a Dataset of :class:`Sample` with ``mask`` (H, W) bool.
        schemes: inference schemes among ``ours``, ``max``, ``avg``, ``min``.
        batch_size: expressions per forward pass.
        threshold: tau (default: the model's).
        baselines: text-blind predictions to score alongside (``whole_image``, ``centre_blob``).
        limit: evaluate only the first ``limit`` expressions.
        group_of: index -> group name (e.g. the synthetic expression kind), for a per-group breakdown of ``ours``.
        on_batch: called with (samples, ImageEntities, per-scheme segmentations) for each batch (overlays).
        diagnostics: also entity quality, oracles, pointing and boundary F of ``ours`` (module docstring), overall
            and per group.
        instances: ground-truth instances per image for mBO; default: the referred masks of each image's
            expressions (``data.expressions``), else the evaluated expression's own mask.
        fit_side: the NNLS oracle's fitting resolution.
        refine: mask refinement for every scheme (a :mod:`sag.refine` method name or a callable such as
            :class:`sag.refine.PromptableRefiner`); default the model's ``config.mask_refine``.
        spatial: read spatial words in every scheme (:mod:`sag.spatial`: "leftmost", "above the ..."); default the
            model's ``config.spatial_words``.
    """
    from tqdm import tqdm

    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown inference schemes {unknown}; choose from {SCHEMES}")
    count = len(data) if limit is None else min(limit, len(data))
    if count == 0:
        raise ValueError(f"{getattr(data, 'name', 'data set')} has no expressions to evaluate")
    model.eval()
    metrics = {s: SegmentationMetrics() for s in schemes}
    base_metrics = {b: SegmentationMetrics() for b in baselines}
    group_metrics: dict[str, SegmentationMetrics] = {}
    diag_all, diag_groups, diag_pointed, quality = DiagnosticMetrics(), {}, DiagnosticMetrics(), EntityQuality()
    if diagnostics and instances is None:
        instances = InstanceMasks.from_expressions(getattr(data, "expressions", None) or [])
    tau = model.config.threshold if threshold is None else threshold
    spatial = model.config.spatial_words if spatial is None else spatial
    seen_images: set[str] = set()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(count)), batch_size=batch_size,
                                         collate_fn=_collate)
    index = 0
    with torch.no_grad():
        for samples in tqdm(loader, desc="evaluate", disable=not show_progress):
            for s in samples:
                if s.mask is None:
                    raise ValueError(f"expression {s.ref_id!r} has no ground-truth mask; evaluate needs masks")
            image = model.encode_image(model.preprocess([s.image for s in samples]))
            queries = TextQueries(model, image, [s.text for s in samples], spatial)  # texts encoded once
            sizes = [s.mask.shape for s in samples]
            guides = [s.image for s in samples]
            per_scheme = {}

            def segment(scheme: str) -> list:
                return queries.segment(sizes, guides, scheme=scheme, threshold=threshold, refine=refine)

            for scheme in schemes:
                segs = segment(scheme)
                per_scheme[scheme] = segs
                for k, (s, seg) in enumerate(zip(samples, segs)):
                    metrics[scheme].update(seg.mask, s.mask)
                    if scheme == "ours" and group_of is not None:
                        group_metrics.setdefault(group_of(index + k), SegmentationMetrics()).update(seg.mask, s.mask)
            for name in baselines:
                for s in samples:
                    base_metrics[name].update(baseline_mask(name, s.mask.shape), s.mask)
            if diagnostics:
                ours = per_scheme.get("ours") or segment("ours")
                slot_attn = image.slot_attn.float()
                for k, (s, seg) in enumerate(zip(samples, ours)):
                    masks = normalised_entity_maps(slot_attn[k], image.grid, s.mask.shape) >= tau  # (K, H, W)
                    # pointing on the map before refinement: the model's pointing, the same with any refinement
                    pointer = seg.unrefined if seg.unrefined is not None else seg.soft
                    values = expression_diagnostics(slot_attn[k], image.grid, seg.fuse_attn, pointer, seg.mask,
                                                    s.mask, tau, entity_masks=masks, fit_side=fit_side)
                    diag_all.update(seg.mask, s.mask, values)
                    if values["pointing"] >= 0.5:
                        diag_pointed.update(seg.mask, s.mask, values)
                    if group_of is not None:
                        diag_groups.setdefault(group_of(index + k), DiagnosticMetrics()).update(seg.mask, s.mask,
                                                                                                values)
                    if s.image_id not in seen_images:
                        seen_images.add(s.image_id)
                        found = instances.masks(s.image_id, s.mask.shape)
                        gt, source = found if found is not None else ([s.mask], "referred masks")
                        quality.update(slot_attn[k], image.grid, masks, gt, source)
            if on_batch is not None:
                on_batch(samples, image, per_scheme)
            index += len(samples)
    return EvalReport(
        dataset=getattr(data, "name", type(data).__name__), count=count,
        schemes={s: m.compute() for s, m in metrics.items()},
        baselines={b: m.compute() for b, m in base_metrics.items()},
        groups={g: m.compute() for g, m in sorted(group_metrics.items())},
        diagnostics={} if not diagnostics else {
            "entity": quality.compute(),
            "expressions": diag_all.compute(),
            "groups": {g: m.compute() for g, m in sorted(diag_groups.items())},
            "pointed": diag_pointed.compute(),
            "boundary_tolerance_px": BOUNDARY_TOLERANCE, "threshold": tau, "fit_side": fit_side,
            "refine": (model.config.mask_refine if refine is None else refine if isinstance(refine, str)
                       else type(refine).__name__),
            "spatial_words": spatial,
        },
    )


def format_table(report: EvalReport, title: str | None = None) -> str:
    """The paper's table as Markdown: one row per scheme (and baseline), columns mIoU, cIoU, A@0.3/0.5/0.7 in %."""
    lines = [f"**{title or report.dataset}** ({report.count} expressions)", "",
             "| method | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    names = {"ours": "ours (A_slot . A_fuse)", "max": "MAX", "avg": "AVG", "min": "MIN"}
    rows = [(names.get(s, s), m) for s, m in report.schemes.items()]
    rows += [(f"baseline: {b.replace('_', ' ')}", m) for b, m in report.baselines.items()]
    rows += [(f"ours, {g} expressions", m) for g, m in report.groups.items()]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * m[c]:.1f}" for c in TABLE_COLUMNS) + " |")
    if report.diagnostics:
        lines += ["", format_diagnostics(report.diagnostics)]
    return "\n".join(lines)


def format_diagnostics(diagnostics: dict) -> str:
    """The diagnostics of :func:`evaluate` as Markdown: entity quality, then one row per expression subset (in %)."""
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
