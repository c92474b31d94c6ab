"""Label Studio JSON exports (and task lists pulled through its API): image-text pairs, brush masks for evaluation.

A task looks like ``{"id": 7, "data": {"image": "/data/upload/1/a.jpg", "text": "the dog"}, "annotations": [...]}``.
Texts come from the task's data fields named in ``text_fields`` and from TextArea results whose ``from_name`` is one
of them (that is where an annotator's typed prompt lands). The brush regions of one annotation are united into that
annotation's mask, and every text of the task is paired with it; tasks without a brush annotation yield training pairs
only. Cancelled annotations are skipped. Several annotations on one task give one expression each.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import DatasetError, Expression, ImageLoader, ReferringDataset, load_image, require_file


@dataclass(frozen=True)
class BrushMask:
    """Label Studio brush RLEs (``value.rle``), united; decoded with label-studio-converter's ``decode_rle``."""

    rles: tuple[tuple[int, ...], ...]
    height: int
    width: int

    def decode(self, size: tuple[int, int]) -> np.ndarray:
        out = np.zeros((self.height, self.width), dtype=bool)
        for rle in self.rles:
            out |= decode_brush_rle(rle, self.height, self.width)
        return out


def decode_brush_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """One Label Studio brush RLE -> boolean (H, W) mask: the alpha channel, as Label Studio shows it.

    Decoded with label-studio-converter's ``decode_rle``; the backend's round-trip checks use this function too.
    """
    try:
        from label_studio_converter.brush import decode_rle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("decoding Label Studio brush masks needs: pip install label-studio-converter") from exc
    flat = decode_rle(list(rle))
    if flat.size != height * width * 4:
        raise DatasetError(f"brush RLE decodes to {flat.size} values, expected {height}x{width}x4")
    return flat.reshape(height, width, 4)[:, :, 3] > 127


def _resolve_image(value: str, image_root: Path | None) -> str:
    """Local uploads (``/data/upload/...``, ``/data/local-files/?d=...``) are resolved under ``image_root``."""
    if image_root is None or value.startswith(("http://", "https://", "file://")):
        return value
    parsed = urllib.parse.urlparse(value)
    if parsed.path.startswith("/data/local-files"):
        rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
    elif parsed.path.startswith("/data/"):
        rel = parsed.path[len("/data/"):]
    else:
        rel = parsed.path.lstrip("/")
    return str(image_root / urllib.parse.unquote(rel))


def _texts_of(task: dict, annotation: dict | None, text_fields: Sequence[str]) -> list[str]:
    data = task.get("data", {})
    texts = []
    for name in text_fields:
        value = data.get(name)
        values = value if isinstance(value, list) else [value]
        texts += [v.strip() for v in values if isinstance(v, str) and v.strip()]
    for result in (annotation or {}).get("result", []):
        if result.get("type") == "textarea" and result.get("from_name") in text_fields:
            texts += [t.strip() for t in result.get("value", {}).get("text", []) if isinstance(t, str) and t.strip()]
    return list(dict.fromkeys(texts))  # unique, in order


def _brush_of(annotation: dict, where: str) -> BrushMask | None:
    rles, size = [], None
    for result in annotation.get("result", []):
        if result.get("type") != "brushlabels" and "rle" not in result.get("value", {}):
            continue
        value = result.get("value", {})
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise DatasetError(f"{where}: brush result {result.get('id')!r} has no RLE list in value.rle")
        try:
            this = (int(result["original_height"]), int(result["original_width"]))
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{where}: brush result {result.get('id')!r} lacks original_height/width") from None
        if size is not None and this != size:
            raise DatasetError(f"{where}: brush results disagree on the image size ({size} vs {this})")
        size = this
        rles.append(tuple(int(v) for v in value["rle"]))
    return BrushMask(tuple(rles), *size) if rles else None


def label_studio_expressions(tasks: str | Path | list[dict[str, Any]], image_field: str = "image",
                             text_fields: Sequence[str] = ("text",), image_root: str | Path | None = None,
                             split: str = "all") -> list[Expression]:
    """Expressions from a Label Studio JSON export (a path) or an already loaded list of tasks.

    Args:
        tasks: the export file or its parsed list.
        image_field: the ``data`` key holding the image URL or path.
        text_fields: ``data`` keys and TextArea ``from_name`` values that hold referring texts.
        image_root: where ``/data/upload/...`` and local-files URLs live on disk (None keeps URLs as they are).
        split: the split name recorded on every expression.
    """
    source = "tasks"
    if isinstance(tasks, (str, Path)):
        source = str(tasks)
        require_file(Path(tasks), "Label Studio export")
        try:
            with open(tasks, encoding="utf-8") as fh:
                tasks = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(tasks, list):
        raise DatasetError(f"{source}: a Label Studio export is a JSON list of tasks, got {type(tasks).__name__}")
    root = Path(image_root) if image_root is not None else None
    out: list[Expression] = []
    for n, task in enumerate(tasks):
        task_id = str(task.get("id", n)) if isinstance(task, dict) else str(n)
        where = f"{source}: task {task_id}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DatasetError(f"{where} has no 'data' object")
        image = task["data"].get(image_field)
        if not isinstance(image, str) or not image:
            raise DatasetError(f"{where} has no image in data[{image_field!r}]; data keys: {sorted(task['data'])}")
        image = _resolve_image(image, root)
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        masked = [(a, _brush_of(a, where)) for a in annotations]
        masked = [(a, m) for a, m in masked if m is not None]
        if not masked:
            texts = _texts_of(task, annotations[0] if annotations else None, text_fields)
            out += [Expression(image, t, task_id, f"{task_id}:{i}", split) for i, t in enumerate(texts)]
            continue
        for a, mask in masked:
            for i, text in enumerate(_texts_of(task, a, text_fields)):
                out.append(Expression(image, text, task_id, f"{task_id}:{a.get('id', 0)}:{i}", split, mask))
    return out


def label_studio_dataset(tasks: str | Path | list[dict[str, Any]], image_field: str = "image",
                         text_fields: Sequence[str] = ("text",), image_root: str | Path | None = None,
                         with_masks: bool = True, image_loader: ImageLoader = load_image) -> ReferringDataset:
    """A :class:`ReferringDataset` over a Label Studio export; ``with_masks`` keeps only expressions with a brush
    mask (evaluation), otherwise every text becomes a training pair."""
    exprs = label_studio_expressions(tasks, image_field, text_fields, image_root)
    ds = ReferringDataset(exprs, "label-studio", with_masks=False, image_loader=image_loader)
    if not with_masks:
        return ds.pairs()
    return ReferringDataset([e for e in exprs if e.mask is not None], "label-studio", True, image_loader)
