"""Overlays like the paper's Fig. 5: the image with the ground truth, the predicted mask, and the top-3 entities
(by A_fuse) with their scores, side by side in one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

PRED_COLOUR = np.array([255, 40, 40], np.float32)
GT_COLOUR = (40, 255, 40)
HEAT = np.array([[0, 0, 0], [80, 0, 160], [220, 40, 90], [255, 180, 0], [255, 255, 200]], np.float32)


def _heat(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 with a black-purple-orange-white ramp."""
    pos = np.clip(values, 0, 1) * (len(HEAT) - 1)
    low = np.floor(pos).astype(int).clip(0, len(HEAT) - 2)
    frac = (pos - low)[..., None]
    return (HEAT[low] * (1 - frac) + HEAT[low + 1] * frac).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def render_overlay(image: Image.Image, text: str, pred: np.ndarray, gt: np.ndarray | None,
                   entity_maps: torch.Tensor, fuse_attn: torch.Tensor, top: int = 3, panel: int = 192) -> Image.Image:
    """One PNG-ready figure.

    Args:
        image: the input image (PIL RGB).
        text: the referring expression (written above the panels).
        pred: (H, W) bool predicted mask; gt: (H, W) bool ground truth or None.
        entity_maps: (K, H, W) per-entity maps (A_slot columns, resized); fuse_attn: (K,) A_fuse.
        top: how many entities to show, highest A_fuse first.
        panel: the side of each square panel in pixels.
    """
    rgb = np.asarray(image.convert("RGB"), np.float32)
    first = rgb.copy()
    if gt is not None:
        first[_outline(gt)] = GT_COLOUR
    second = rgb.copy()
    second[pred] = 0.45 * second[pred] + 0.55 * PRED_COLOUR
    panels = [(first, "image + ground truth"), (second, "prediction")]
    order = torch.argsort(fuse_attn.float(), descending=True)[:top].tolist()
    for k in order:
        m = entity_maps[k].float().cpu().numpy()
        m = (m - m.min()) / (m.max() - m.min() + 1e-9)
        heat = 0.4 * rgb + 0.6 * _heat(m).astype(np.float32)
        panels.append((heat, f"entity {k}: A_fuse {float(fuse_attn[k]):.2f}"))
    header = 18
    canvas = Image.new("RGB", (panel * len(panels), panel + 2 * header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), text[:120], fill=(0, 0, 0))
    for i, (array, caption) in enumerate(panels):
        tile = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).resize((panel, panel), Image.NEAREST)
        canvas.paste(tile, (i * panel, header))
        draw.text((i * panel + 4, header + panel + 3), caption, fill=(0, 0, 0))
    return canvas


class OverlayWriter:
    """An ``evaluate(on_batch=...)`` hook that saves the first ``count`` expressions' overlays as PNGs in
    ``directory`` (scheme ``ours``)."""

    def __init__(self, model, directory: str | Path, count: int = 20):
        self.model = model
        self.directory = Path(directory)
        self.count = count
        self.written: list[Path] = []

    def __call__(self, samples, image_entities, per_scheme) -> None:
        if len(self.written) >= self.count or "ours" not in per_scheme:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for i, (sample, seg) in enumerate(zip(samples, per_scheme["ours"])):
            if len(self.written) >= self.count:
                break
            size = (sample.image.height, sample.image.width)
            maps = self.model.entity_maps(image_entities, i, size)
            mask = seg.mask.cpu().numpy()
            figure = render_overlay(sample.image, sample.text, mask, sample.mask, maps, seg.fuse_attn)
            path = self.directory / f"{len(self.written):04d}_{_slug(sample.ref_id)}.png"
            figure.save(path)
            self.written.append(path)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]
