"""JSON lines of ``{"image": path-or-url, "text": "...", "mask": optional path, "split": optional}``.

Relative image and mask paths are taken relative to the JSONL file's directory. A line without ``mask`` is a training
pair only; lines with a ``split`` field can be filtered by split.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import DatasetError, Expression, ImageLoader, MaskFile, ReferringDataset, load_image, require_file


def _local(value: str, base: Path) -> str:
    if "://" in value or Path(value).is_absolute():
        return value
    return str(base / value)


def jsonl_expressions(path: str | Path, split: str | None = None) -> list[Expression]:
    """Expressions from a JSONL file; ``split`` keeps only lines whose ``split`` equals it (None keeps all)."""
    path = require_file(Path(path), "JSONL file")
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number} should be a JSON object, got {type(row).__name__}")
            image, text = row.get("image"), row.get("text")
            if not isinstance(image, str) or not image:
                raise DatasetError(f"{path}:{number} has no 'image'")
            if not isinstance(text, str) or not text.strip():
                raise DatasetError(f"{path}:{number} has no non-empty 'text'")
            row_split = str(row.get("split", "all"))
            if split is not None and row_split != split:
                continue
            mask = row.get("mask")
            if mask is not None and not isinstance(mask, str):
                raise DatasetError(f"{path}:{number}: 'mask' must be a path, got {type(mask).__name__}")
            out.append(Expression(
                image=_local(image, path.parent), text=text.strip(), image_id=str(row.get("image_id", image)),
                ref_id=str(row.get("id", number)), split=row_split,
                mask=MaskFile(_local(mask, path.parent)) if mask else None,
            ))
    return out


def jsonl_dataset(path: str | Path, split: str | None = None, with_masks: bool = True,
                  image_loader: ImageLoader = load_image) -> ReferringDataset:
    """A :class:`ReferringDataset` over a JSONL file. ``with_masks`` keeps only lines that have a mask."""
    exprs = jsonl_expressions(path, split)
    name = f"jsonl:{Path(path).name}" + (f"/{split}" if split else "")
    if not with_masks:
        return ReferringDataset(exprs, name, with_masks=False, image_loader=image_loader)
    return ReferringDataset([e for e in exprs if e.mask is not None], name, True, image_loader)
