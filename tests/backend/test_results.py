"""Brush RLE and polygons (backend/labelstudio/results.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.labelstudio.results import brush_region, mask_polygons, mask_to_rle, polygon_regions, rle_to_mask


def test_brush_region_round_trips_an_irregular_mask_pixel_for_pixel():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6  # odd sizes, many short runs
    mask[5:30, 10:50] = True  # and a long run
    region = brush_region(mask, "Object", "mask", "image", 0.5)
    assert (region["original_height"], region["original_width"]) == (37, 53)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Object"]
    np.testing.assert_array_equal(rle_to_mask(region["value"]["rle"], 37, 53), mask)


def test_rle_alpha_is_255_so_label_studio_shows_the_region():
    from label_studio_converter import brush

    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    alpha = brush.decode_rle(brush_region(mask, "A", "m", "i", 1.0)["value"]["rle"]).reshape(8, 8, 4)[:, :, 3]
    assert set(np.unique(alpha)) == {0, 255}


def _runs_of_mean_length(rng: np.random.Generator, mean: float, width: int = 97) -> np.ndarray:
    """A mask whose flattened runs have geometric lengths of the given mean, zero-padded to full rows."""
    runs = rng.geometric(1 / mean, size=300)
    flat = np.repeat(np.arange(len(runs)) % 2 == 0, runs)
    padded = np.zeros(-(-flat.size // width) * width, bool)
    padded[:flat.size] = flat
    return padded.reshape(-1, width)


def test_rle_encoder_matches_label_studio_converter_byte_for_byte():
    from label_studio_converter import brush

    rng = np.random.default_rng(1)
    masks = [np.zeros((1, 1), bool), np.ones((1, 1), bool), np.zeros((512, 512), bool), np.ones((600, 500), bool)]
    # Run lengths (x 4 for RGBA) in every record class: <= 8, <= 16, <= 256, <= 2^16, and split runs over 2^16
    # whose remainders are short.
    masks += [_runs_of_mean_length(rng, mean) for mean in (1, 3, 30, 2000, 40000)]
    masks += [rng.random((h, h + 3)) > 0.3 for h in range(1, 9)]  # every alignment of the bit stream's length
    for mask in masks:
        expected = brush.mask2rle(np.where(mask, 255, 0).astype(np.uint8))
        assert mask_to_rle(mask) == expected, mask.shape
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2), bool))


def test_polygons_follow_each_part_of_the_mask():
    image = Image.new("L", (200, 120), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 90, 100), fill=1)
    draw.rectangle((130, 30, 180, 80), fill=1)
    mask = np.asarray(image).astype(bool)
    polygons = mask_polygons(mask, tolerance=1.0)
    assert len(polygons) == 2
    # Rasterised back, the polygons cover the mask closely (IoU), though simplified.
    back = Image.new("L", (200, 120), 0)
    for poly in polygons:
        ImageDraw.Draw(back).polygon([tuple(map(float, p)) for p in poly], fill=1)
    back = np.asarray(back).astype(bool)
    assert (back & mask).sum() / (back | mask).sum() > 0.95
    regions = polygon_regions(mask, "Object", "poly", "image", 0.3, 1.0)
    assert len(regions) == 2
    points = np.array(regions[0]["value"]["points"])
    assert points.min() >= 0 and points.max() <= 100 and regions[0]["value"]["closed"]


def test_polygons_drop_specks():
    mask = np.zeros((50, 50), bool)
    mask[10, 10] = True
    assert mask_polygons(mask, tolerance=1.0) == []
