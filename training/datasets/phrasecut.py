"""VGPhraseCut (Wu et al., CVPR 2020): ``refer_<split>.json`` with phrases and polygons over Visual Genome images.

::

    <root>/refer_<split>.json   list of tasks: task_id, image_id, phrase, Polygons
    <root>/images/<image_id>.jpg

``Polygons`` holds, per referred instance, a list of polygons, each a list of [x, y] points; the mask is the union
of all of them (as the authors' code rasterises it). Splits: train, val, test, miniv.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import DatasetError, Expression, ImageLoader, PolygonMask, ReferringDataset, load_image, require_file


def _flatten_polygons(polygons, where: str) -> tuple[tuple[float, ...], ...]:
    """Per-instance lists of [[x, y], ...] polygons -> flat (x0, y0, x1, y1, ...) tuples."""
    flat = []
    try:
        for instance in polygons:
            for poly in instance:
                flat.append(tuple(float(c) for point in poly for c in point[:2]))
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: Polygons must be instances of polygons of [x, y] points ({exc})") from None
    return tuple(flat)


def phrasecut_expressions(root: str | Path, split: str, image_dir: str | Path | None = None) -> list[Expression]:
    """Every task of ``refer_<split>.json`` under ``root`` as an expression with its polygon mask."""
    root = Path(root)
    path = require_file(root / f"refer_{split}.json", f"PhraseCut split {split!r}")
    try:
        with open(path, encoding="utf-8") as fh:
            tasks = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(tasks, dict):  # the authors' *_ris.json variant: task_id -> task
        tasks = [dict(t, task_id=k) for k, t in tasks.items()]
    image_dir = Path(image_dir) if image_dir is not None else root / "images"
    out = []
    for n, task in enumerate(tasks):
        where = f"{path}: task {task.get('task_id', n) if isinstance(task, dict) else n}"
        if not isinstance(task, dict):
            raise DatasetError(f"{where} is not an object")
        missing = [k for k in ("image_id", "phrase", "Polygons") if k not in task]
        if missing:
            raise DatasetError(f"{where} lacks {missing}")
        if not str(task["phrase"]).strip():
            raise DatasetError(f"{where} has an empty phrase")
        out.append(Expression(
            image=str(image_dir / f"{task['image_id']}.jpg"), text=str(task["phrase"]).strip(),
            image_id=str(task["image_id"]), ref_id=str(task.get("task_id", n)), split=split,
            mask=PolygonMask(_flatten_polygons(task["Polygons"], where)),
        ))
    return out


def phrasecut_dataset(root: str | Path, split: str, image_dir: str | Path | None = None, with_masks: bool = True,
                      image_loader: ImageLoader = load_image) -> ReferringDataset:
    """A :class:`ReferringDataset` over one PhraseCut split."""
    ds = ReferringDataset(phrasecut_expressions(root, split, image_dir), f"phrasecut/{split}", True, image_loader)
    return ds if with_masks else ds.pairs()
