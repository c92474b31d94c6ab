"""Data set loaders. Each yields :class:`Sample` (image, text, mask) for evaluation and image-text pairs for training.

``open_dataset`` picks a loader by format name, for the CLIs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import (
    CocoSegmentation,
    DatasetError,
    Expression,
    MaskFile,
    PolygonMask,
    ReferringDataset,
    Sample,
    load_image,
)
from .jsonl import jsonl_dataset
from .label_studio import label_studio_dataset
from .phrasecut import phrasecut_dataset
from .refcoco import refer_dataset

REFER_FORMATS = ("refcoco", "refcoco+", "refcocog", "synthetic")
FORMATS = REFER_FORMATS + ("phrasecut", "label-studio", "jsonl")


def open_dataset(format: str, path: str | Path, split: str | None, with_masks: bool, split_by: str | None = None,
                 image_dir: str | Path | None = None, image_field: str = "image",
                 text_fields: Sequence[str] = ("text",)) -> ReferringDataset:
    """Open ``split`` of a data set.

    ``path`` is: for the refer formats, the data root holding ``<format>/`` (or that directory itself); for PhraseCut,
    the directory holding ``refer_<split>.json``; for Label Studio, the export file (``image_dir`` resolves
    ``/data/upload`` URLs); for JSONL, the file.
    """
    path = Path(path)
    if format in REFER_FORMATS:
        if split is None:
            raise DatasetError(f"{format} needs a split")
        root, name = (path.parent, path.name) if (path / "instances.json").is_file() else (path, format)
        return refer_dataset(root, name, split, split_by, image_dir, with_masks=with_masks)
    if format == "phrasecut":
        if split is None:
            raise DatasetError("phrasecut needs a split")
        return phrasecut_dataset(path, split, image_dir, with_masks=with_masks)
    if format == "label-studio":
        return label_studio_dataset(path, image_field, text_fields, image_dir, with_masks=with_masks)
    if format == "jsonl":
        return jsonl_dataset(path, split, with_masks=with_masks)
    raise DatasetError(f"unknown data set format {format!r}; choose from {FORMATS}")


__all__ = [
    "CocoSegmentation", "DatasetError", "Expression", "MaskFile", "PolygonMask", "ReferringDataset", "Sample",
    "load_image", "jsonl_dataset", "label_studio_dataset", "phrasecut_dataset", "refer_dataset", "open_dataset",
    "FORMATS",
]
