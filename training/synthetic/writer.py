"""Writing the benchmark to disk in the RefCOCO ``refer`` layout, so that the loader the real data sets use
(:func:`training.datasets.refcoco.refer_dataset`) reads it back unchanged::

    <root>/images/<split>_<index>.png   the scenes
    <root>/instances.json               COCO images / annotations (RLE masks, each object's attributes) / categories
    <root>/refs(synthetic).p            the refer API's pickled list of refs, one sentence each, with its ``kind``
    <root>/synthetic.json               the SyntheticConfig, for provenance

Ground-truth masks go into ``instances.json`` only; training never reads them.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .config import SPLITS, SyntheticConfig
from .scene import generate_scene

REFS_FILE = "refs(synthetic).p"  # split_by "synthetic": the name training.datasets.refcoco looks for


def write_benchmark(root: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True) -> Path:
    """Generate every split into ``root`` in the RefCOCO ``refer`` layout and return ``root``.

    Writes ``images/<split>_<index>.png``, ``instances.json`` (COCO, RLE masks), ``refs(synthetic).p`` (the refer
    API's list of refs) and ``synthetic.json`` (the config, for provenance). Regenerating with the same config gives
    byte-identical annotation files.
    """
    from pycocotools import mask as mask_utils

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    shapes = config.shapes
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(shapes)]
    images, annotations, refs = [], [], []
    total = sum(config.scenes.values())
    bar = tqdm(total=total, desc="synthetic scenes", disable=not progress)
    for split in SPLITS:
        for index in range(config.scenes.get(split, 0)):
            bar.update()
            scene = generate_scene(config, split, index)
            if scene is None:
                continue
            image_id = len(images) + 1
            file_name = f"{split}_{index:06d}.png"
            Image.fromarray(scene.image).save(root / "images" / file_name)
            side = config.image_size
            images.append({"id": image_id, "file_name": file_name, "height": side, "width": side})
            ann_ids = []
            for obj, mask in zip(scene.objects, scene.masks):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                ann_ids.append(len(annotations) + 1)
                annotations.append({
                    "id": ann_ids[-1], "image_id": image_id, "category_id": shapes.index(obj.shape) + 1,
                    "segmentation": rle, "area": int(mask.sum()), "iscrowd": 0,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "attributes": asdict(obj),
                })
            for expr in scene.expressions:
                ref_id = len(refs) + 1
                refs.append({
                    "ref_id": ref_id, "ann_id": ann_ids[expr.target], "image_id": image_id, "split": split,
                    "category_id": shapes.index(scene.objects[expr.target].shape) + 1, "file_name": file_name,
                    "sentences": [{"sent_id": ref_id, "sent": expr.text, "raw": expr.text,
                                   "tokens": expr.text.split()}],
                    "sent_ids": [ref_id], "kind": expr.kind,
                })
    bar.close()
    with open(root / "instances.json", "w", encoding="utf-8") as fh:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, fh)
    with open(root / REFS_FILE, "wb") as fh:
        pickle.dump(refs, fh, protocol=4)
    config_dict = asdict(config)  # a DomainConfig's has its "domain"; the base config's is what it always was
    with open(root / "synthetic.json", "w", encoding="utf-8") as fh:
        json.dump(config_dict, fh, indent=2, sort_keys=True)
    return root
