"""Evaluation on referring segmentation: the paper's table (mIoU, cIoU, A@0.3/0.5/0.7) per inference scheme.

Each expression of the data set is evaluated exactly once, in order, in eval mode (deterministic slots); the authors'
script tiled or truncated its list to 10,000 samples and resampled slot noise, both of which this avoids.

With ``diagnostics=True`` (``sag-eval --diagnostics``) it also says where the score is lost, for the ``ours`` scheme
(entity quality, oracles, pointing, boundary F): :mod:`training.diagnostics` computes them, batch by batch.

``refine`` picks the edge-aware mask refinement (:mod:`sag.refine`, default the checkpoint's ``mask_refine``) and
``spatial`` whether spatial words are read (:mod:`sag.spatial`, through :mod:`sag.pipeline`); every scheme's masks and
the diagnostics' boundary F are those of the served maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sag import SCHEMES, SaG, SegmentationMetrics
from sag.pipeline import TextQueries

from .datasets.base import Sample
from .diagnostics import DiagnosticOptions, Diagnostics, InstanceMasks, format_diagnostics

BASELINES: tuple[str, ...] = ("whole_image", "centre_blob")
TABLE_COLUMNS: tuple[str, ...] = ("mIoU", "cIoU", "acc@0.3", "acc@0.5", "acc@0.7")


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


def expression_kinds(data: Dataset) -> Callable[[int], str] | None:
    """index -> the expression's kind, for data sets whose expressions carry one (the synthetic set, refs with a
    ``kind``); None when none does."""
    expressions = getattr(data, "expressions", None) or []
    if all(getattr(e, "kind", None) is None for e in expressions):
        return None
    kinds = [e.kind or "unknown" for e in expressions]
    return kinds.__getitem__


def _collate(samples: list[Sample]) -> list[Sample]:
    return samples


def evaluate(model: SaG, data: Dataset, schemes: Sequence[str] = ("ours",), batch_size: int = 32,
             threshold: float | None = None, baselines: Sequence[str] = (), limit: int | None = None,
             group_of: Callable[[int], str] | None = None, show_progress: bool = True,
             on_batch: Callable[[list[Sample], object, list], None] | None = None,
             diagnostics: bool | DiagnosticOptions = False, refine: str | Callable | None = None,
             spatial: bool | None = None) -> EvalReport:
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
        diagnostics: also entity quality, oracles, pointing and boundary F of ``ours`` (:mod:`training.diagnostics`),
            overall and per group: ``True``, or a :class:`~training.diagnostics.DiagnosticOptions` with the
            ground-truth instances for mBO and the NNLS oracle's fitting resolution.
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
    tau = model.config.threshold if threshold is None else threshold
    spatial = model.config.spatial_words if spatial is None else spatial
    diag = None
    if diagnostics:
        options = diagnostics if isinstance(diagnostics, DiagnosticOptions) else DiagnosticOptions()
        instances = options.instances
        if instances is None:
            instances = InstanceMasks.from_expressions(getattr(data, "expressions", None) or [])
        diag = Diagnostics(instances, tau, options.fit_side, group_of)
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
            if diag is not None:
                diag.update(samples, image, per_scheme.get("ours") or segment("ours"), index)
            if on_batch is not None:
                on_batch(samples, image, per_scheme)
            index += len(samples)
    return EvalReport(
        dataset=getattr(data, "name", type(data).__name__), count=count,
        schemes={s: m.compute() for s, m in metrics.items()},
        baselines={b: m.compute() for b, m in base_metrics.items()},
        groups={g: m.compute() for g, m in sorted(group_metrics.items())},
        diagnostics={} if diag is None else {
            **diag.compute(),
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
