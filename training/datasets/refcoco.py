"""RefCOCO, RefCOCO+ and RefCOCOg in the ``refer`` layout (Yu et al., 2016; github.com/lichengunc/refer).

::

    <data_root>/<dataset>/refs(<split_by>).p   pickled list of refs: ref_id, ann_id, image_id, split, sentences[]
    <data_root>/<dataset>/instances.json        COCO images / annotations / categories (masks: ``segmentation``)
    <image_dir>/<file_name>                     COCO train2014 images (``file_name`` from instances.json)

Standard pairs: ``refcoco`` and ``refcoco+`` with ``unc`` (splits train, val, testA, testB), ``refcocog`` with
``umd`` (train, val, test) or ``google`` (train, val). The synthetic benchmark uses the same layout with ``synthetic``.

The refs file is a Python pickle, as the refer API ships it: only load files you trust.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from .base import CocoSegmentation, DatasetError, Expression, ImageLoader, ReferringDataset, load_image, require_file

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "synthetic": "synthetic"}


def load_refs(path: Path) -> list[dict]:
    """The list of refs in a ``refs(<split_by>).p`` file, checked for the fields this loader uses."""
    require_file(path, "refs file")
    try:
        with open(path, "rb") as fh:
            refs = pickle.load(fh)  # noqa: S301 - the refer layout is a pickle; see the module docstring
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise DatasetError(f"{path} is not a readable refs pickle: {exc}") from exc
    if not isinstance(refs, list):
        raise DatasetError(f"{path} should hold a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        missing = [k for k in ("ref_id", "ann_id", "image_id", "split", "sentences") if k not in ref]
        if missing:
            raise DatasetError(f"{path}: ref #{i} lacks {missing}")
    return refs


def load_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(images by id, annotations by id) from a COCO ``instances.json``."""
    require_file(path, "COCO instances file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        images = {int(im["id"]): im for im in data["images"]}
        anns = {int(a["id"]): a for a in data["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is not a COCO instances file (images/annotations with ids): {exc}") from exc
    return images, anns


def refer_expressions(data_root: str | Path, dataset: str, split: str, split_by: str | None = None,
                      image_dir: str | Path | None = None) -> list[Expression]:
    """Every sentence of the refs in ``split``, with its annotation's COCO mask.

    Args:
        data_root: the directory holding ``<dataset>/``.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog``, ``synthetic`` (any sub-directory name works).
        split: e.g. ``train``, ``val``, ``testA``, ``testB``, ``test``, ``compositional``.
        split_by: the refs file's partition (``unc``, ``umd``, ``google``); defaults by data set.
        image_dir: where the images are; defaults to ``<data_root>/<dataset>/images``.
    """
    root = Path(data_root) / dataset
    split_by = split_by or DEFAULT_SPLIT_BY.get(dataset)
    if split_by is None:
        raise DatasetError(f"no default split_by for data set {dataset!r}; pass one (unc, umd, google)")
    refs = load_refs(root / f"refs({split_by}).p")
    images, anns = load_instances(root / "instances.json")
    image_dir = Path(image_dir) if image_dir is not None else root / "images"
    known = sorted({r["split"] for r in refs})
    if split not in known:
        raise DatasetError(f"{root}/refs({split_by}).p has no split {split!r}; it has {known}")
    out = []
    for ref in refs:
        if ref["split"] != split:
            continue
        image = images.get(int(ref["image_id"]))
        ann = anns.get(int(ref["ann_id"]))
        if image is None or ann is None:
            raise DatasetError(f"ref {ref['ref_id']} points at image {ref['image_id']} / annotation {ref['ann_id']}, "
                               f"which {root / 'instances.json'} does not have")
        if "segmentation" not in ann:
            raise DatasetError(f"annotation {ann['id']} in {root / 'instances.json'} has no segmentation")
        mask = CocoSegmentation(ann["segmentation"], int(image["height"]), int(image["width"]))
        for sent in ref["sentences"]:
            text = (sent.get("sent") or sent.get("raw") or "").strip()
            if not text:
                raise DatasetError(f"ref {ref['ref_id']} has an empty sentence {sent!r}")
            out.append(Expression(
                image=str(image_dir / image["file_name"]), text=text, image_id=str(image["id"]),
                ref_id=f"{ref['ref_id']}:{sent.get('sent_id', len(out))}", split=split, mask=mask,
                kind=ref.get("kind"),
            ))
    return out


def refer_dataset(data_root: str | Path, dataset: str, split: str, split_by: str | None = None,
                  image_dir: str | Path | None = None, with_masks: bool = True,
                  image_loader: ImageLoader = load_image) -> ReferringDataset:
    """A :class:`ReferringDataset` over one split of a refer-layout data set (see :func:`refer_expressions`)."""
    exprs = refer_expressions(data_root, dataset, split, split_by, image_dir)
    name = f"{dataset}/{split_by or DEFAULT_SPLIT_BY.get(dataset)}/{split}"
    ds = ReferringDataset(exprs, name, with_masks=True, image_loader=image_loader)
    return ds if with_masks else ds.pairs()
