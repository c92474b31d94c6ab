"""Comparing masks that come from two code paths (a batch of another size, the backend against the model).

Two such paths compute the same map up to the last bits of float rounding, which depends on the batch shape, the
thread count and the load (which BLAS kernel runs). A pixel whose map sits at the threshold may then flip, and only
such a pixel. So masks are compared wherever the reference map is clearly away from the threshold, never bit for
bit by luck of rounding. Masks from one computation (the same batch, the same call) are compared exactly instead.
"""

from __future__ import annotations

import numpy as np
import torch

# The largest rounding difference allowed between two paths' maps, as a fraction of the map's [0, 1] range. The
# maps are min-max normalised and then edge-refined, which magnifies a 1e-7 difference of the fused scores a little.
MAP_ATOL = 1e-3


def assert_same_mask(mask, reference, threshold: float, atol: float = MAP_ATOL) -> None:
    """``mask`` (H, W) bool (tensor or array) is ``reference.mask`` (a Segmentation from another path) at every
    pixel where ``reference.soft`` is more than ``atol`` away from ``threshold``."""
    mask = torch.as_tensor(np.asarray(mask)).bool()
    settled = (reference.soft - threshold).abs() > atol
    assert mask.shape == reference.mask.shape, (mask.shape, reference.mask.shape)
    differ = int((mask[settled] != reference.mask[settled]).sum())
    assert differ == 0, f"{differ} pixel(s) away from the threshold differ"


def assert_same_segmentation(a, b, threshold: float, atol: float = MAP_ATOL) -> None:
    """Two Segmentations of one (image, text) from two paths: maps within ``atol``, masks as above."""
    torch.testing.assert_close(a.soft, b.soft, atol=atol, rtol=0)
    assert_same_mask(a.mask, b, threshold, atol)
