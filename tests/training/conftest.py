"""Shared fixtures: a small synthetic benchmark on disk (refer layout), a tiny random SaG model, and a tiny real-photo
benchmark (one labelme annotation in a fake sdist, with its texts file)."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sag import SaG, tiny_config
from training.synthetic import SyntheticConfig, write_benchmark

SMALL = SyntheticConfig(seed=3, image_size=64, scenes={"train": 40, "val": 8, "test": 8, "compositional": 8})


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A written synthetic benchmark: <root>/synthetic/{images/, instances.json, refs(synthetic).p}."""
    root = tmp_path_factory.mktemp("data")
    write_benchmark(root / "synthetic", SMALL, progress=False)
    return root


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return SaG(tiny_config(image_size=32))


@pytest.fixture
def write_image(tmp_path):
    """A factory: write a random RGB PNG of (H, W) under tmp_path and return its path."""
    rng = np.random.default_rng(0)

    def make(name, size):
        from PIL import Image

        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        return path

    return make


@pytest.fixture
def labelme_archive(tmp_path) -> Path:
    """A tiny sdist holding one labelme annotation: a person drawn in two polygons (one group), a bottle drawn over
    it, an ignored region, and a second person."""
    from PIL import Image

    shapes = [
        {"label": "person", "group_id": 0, "shape_type": "polygon", "points": [[0, 0], [9, 0], [9, 9], [0, 9]]},
        {"label": "person", "group_id": 0, "shape_type": "polygon", "points": [[0, 12], [5, 12], [5, 19], [0, 19]]},
        {"label": "bottle", "group_id": None, "shape_type": "polygon", "points": [[4, 4], [7, 4], [7, 7], [4, 7]]},
        {"label": "__ignore__", "group_id": None, "shape_type": "polygon",
         "points": [[20, 0], [29, 0], [29, 5], [20, 5]]},
        {"label": "person", "group_id": None, "shape_type": "polygon",
         "points": [[20, 10], [29, 10], [29, 19], [20, 19]]},
    ]
    ann = json.dumps({"shapes": shapes, "imageHeight": 20, "imageWidth": 30}).encode()
    jpg = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(jpg, format="JPEG")
    path = tmp_path / "archives" / "fake-1.0.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in (("fake-1.0/ex/a.json", ann), ("fake-1.0/ex/a.jpg", jpg.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture
def tiny_real_photos(tmp_path, labelme_archive) -> tuple[Path, Path]:
    """A real-photo benchmark of three texts about the labelme archive's photo: (texts file, cache holding the
    archive). Its archive's requirement names no real package: a download of it fails."""
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({
        "archives": {"fake": {"requirement": "sag-assist-test-archive-that-does-not-exist==1.0",
                              "file": labelme_archive.name, "sdist": True,
                              "sha256": hashlib.sha256(labelme_archive.read_bytes()).hexdigest()}},
        "photos": [{"id": "fake", "archive": "fake", "format": "labelme-json", "member": "fake-1.0/ex/a.json",
                    "size": [20, 30], "source": "made by the test", "licence": "none",
                    "instances": [{"id": 0, "label": "person"}, {"id": 1, "label": "bottle"},
                                  {"id": 2, "label": "person"}],
                    "texts": [{"text": "person", "kind": "noun", "targets": [0, 2]},
                              {"text": "bottle", "kind": "noun", "targets": [1]},
                              {"text": "the person on the right", "kind": "spatial", "targets": [2]}]}],
    }))
    return texts, labelme_archive.parent
