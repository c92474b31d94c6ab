import numpy as np
import pytest
import torch

from sag import SaG, tiny_config


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return SaG(tiny_config())


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def random_images(rng):
    """A factory: random uint8 RGB images of the given (H, W) sizes."""

    def make(sizes):
        return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]

    return make
