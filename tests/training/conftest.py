"""Shared fixtures: a small synthetic benchmark on disk (refer layout) and a tiny random SaG model."""

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
