"""Label Studio result regions from masks: brush (RLE) and, optionally, simplified polygons.

The RLE codec is label-studio-converter's ``brush`` module (the same code the SDK ships); the SDK itself does not
install beside our numpy. Label Studio decodes a brush RLE at the image's natural size and keeps the decoded alpha,
so masks go out as uint8 0/255 at the full, EXIF-corrected resolution.
"""

from __future__ import annotations

import uuid
from typing import Any

import cv2
import numpy as np
from label_studio_converter import brush

from training.datasets.label_studio import decode_brush_rle


def _region_id() -> str:
    return uuid.uuid4().hex[:10]


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A boolean or 0/1 (H, W) mask -> Label Studio brush RLE of the 0/255 mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return brush.mask2rle(np.where(mask.astype(bool), 255, 0).astype(np.uint8))


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Decode a brush RLE to a boolean (H, W) mask (the alpha channel, as Label Studio shows it)."""
    return decode_brush_rle(rle, height, width)


def brush_region(mask: np.ndarray, label: str, from_name: str, to_name: str, score: float) -> dict[str, Any]:
    """A ``brushlabels`` result for ``mask`` (H, W); plain dict, as the SDK's Region drops ``original_*``."""
    height, width = mask.shape
    return {
        "id": _region_id(),
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
        "score": float(score),
    }


def mask_polygons(mask: np.ndarray, tolerance: float, min_area: float = 16.0) -> list[np.ndarray]:
    """Outer contours of ``mask`` simplified to ``tolerance`` pixels, largest first; tiny specks dropped.

    Holes are not represented: polygons are an editing aid beside the exact brush mask.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True):
        if cv2.contourArea(contour) < min_area:
            continue
        simplified = cv2.approxPolyDP(contour, tolerance, True).reshape(-1, 2)
        if len(simplified) >= 3:
            polygons.append(simplified)
    return polygons


def polygon_regions(
    mask: np.ndarray, label: str, from_name: str, to_name: str, score: float, tolerance: float
) -> list[dict[str, Any]]:
    """One ``polygonlabels`` result per connected part of ``mask``, points in percent of the image size."""
    height, width = mask.shape
    regions = []
    for points in mask_polygons(mask, tolerance):
        # Pixel corners -> percent; +0.5 puts the vertex at the pixel centre Label Studio draws.
        percent = [[(float(x) + 0.5) * 100.0 / width, (float(y) + 0.5) * 100.0 / height] for x, y in points]
        regions.append({
            "id": _region_id(),
            "from_name": from_name,
            "to_name": to_name,
            "type": "polygonlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"points": percent, "polygonlabels": [label], "closed": True},
            "score": float(score),
        })
    return regions
