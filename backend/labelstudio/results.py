"""Label Studio result regions from masks: brush (RLE) and, optionally, simplified polygons; and the prediction
records (``task``, ``result``, ``score``, ``model_version``) that are imported into Label Studio from the answers.

The RLE decoder is label-studio-converter's ``brush`` module (the same code the SDK ships; the SDK itself does not
install beside our numpy); the encoder is a numpy version of its ``mask2rle`` with identical output. Label Studio
decodes a brush RLE at the image's natural size and keeps the decoded alpha, so masks go out as 0/255 at the full,
EXIF-corrected resolution.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable

import cv2
import numpy as np

from training.datasets.label_studio import decode_brush_rle


def _region_id() -> str:
    return uuid.uuid4().hex[:10]


# Label Studio's brush RLE is a bit stream: a header (32-bit value count, 5-bit word size - 1, four 4-bit run-size
# widths - 1), then one record per run of equal values: a 1-bit series flag, a 2-bit index into the run-size widths
# (3, 4, 8, 16), the run length - 1 in that many bits, and the 8-bit value; runs over 2^16 are split.
_RLE_HEADER_BITS = 32 + 5 + 4 * 4
_RLE_WORD = 7  # word size 8, stored minus 1
_RLE_SIZES = 0b0010_0011_0111_1111  # run-size widths 3, 4, 8, 16, each stored minus 1


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A boolean or 0/1 (H, W) mask -> Label Studio brush RLE of the 0/255 mask, as RGBA values.

    The output is identical, byte for byte, to label-studio-converter's ``brush.mask2rle`` (the reference in the
    tests), which builds its bit stream as a Python string one run at a time: 3-8 ms for a 512 x 512 mask, about 5 %
    of bulk pre-labelling time on CPU. This is the same encoding with the runs done in numpy (0.3 ms).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = mask.astype(bool).ravel()
    count = 4 * flat.size  # every pixel is repeated as R, G, B, A
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = 4 * np.diff(np.append(starts, flat.size))  # runs of the RGBA stream
    values = np.where(flat[starts], 255, 0)

    # Runs longer than 2^16 become full 2^16 records followed by the remainder, as the reference does.
    pieces = -(-lengths // 2**16)  # ceil
    run = np.repeat(np.arange(len(lengths)), pieces)
    length = np.full(len(run), 2**16, dtype=np.int64)
    length[np.cumsum(pieces) - 1] = lengths - 2**16 * (pieces - 1)  # each run's last piece holds the remainder
    value = values[run].astype(np.int64)
    # (flag + size index, run-length width): single value, then series of <= 8, <= 16, <= 256 and longer. The class
    # is the whole run's, so every piece of a split run is a 16-bit record, however short the remainder.
    whole = lengths[run]
    size = np.select([whole == 1, whole <= 8, whole <= 16, whole <= 256], [0, 1, 2, 3], default=4)
    head = np.array([0b000, 0b100, 0b101, 0b110, 0b111])[size]
    width = np.array([3, 3, 4, 8, 16])[size]
    field = np.where(size == 0, 0, length - 1)
    records = (((head << width) | field) << 8) | value
    bits_per_record = 3 + width + 8

    header = (((count << 5) | _RLE_WORD) << 16) | _RLE_SIZES
    total = _RLE_HEADER_BITS + int(bits_per_record.sum())
    padding = 8 - total % 8  # a whole zero byte when already aligned, as the reference does
    record_index = np.repeat(np.arange(len(records)), bits_per_record)
    offset = np.arange(len(record_index)) - np.repeat(np.cumsum(bits_per_record) - bits_per_record, bits_per_record)
    record_bits = (records[record_index] >> (bits_per_record[record_index] - 1 - offset)) & 1
    header_bits = (header >> np.arange(_RLE_HEADER_BITS - 1, -1, -1, dtype=np.int64)) & 1
    bits = np.concatenate([header_bits, record_bits, np.zeros(padding, dtype=np.int64)]).astype(np.uint8)
    return np.packbits(bits).tolist()


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


def prediction_records(task_ids: Iterable[int | None], answers: Iterable[Any]) -> list[dict[str, Any]]:
    """The predictions to import into Label Studio (``/api/projects/<id>/import/predictions``) for the answers, one
    per task in the same order, that have a ``result`` (a task error has none, and gets no prediction)."""
    return [{"task": task_id, "result": a["result"], "score": a["score"], "model_version": a["model_version"]}
            for task_id, a in zip(task_ids, answers) if isinstance(a, dict) and "result" in a]
