"""Rendering a scene: a textured background, each object as a filled shape in its colour, and one mask per object.

Everything random comes from the generator passed in, in a fixed order (background, then each object's colour, then
pixel noise), so a scene's image depends only on its seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .config import COLOURS
from .grammar import SceneObject


def _shape_polygon(obj: SceneObject, side: int) -> list[tuple[float, float]] | None:
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    rot = math.radians(obj.angle)
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        half = 0.85 * r
        pts = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif obj.shape == "diamond":
        pts = [(0, -r), (r * 0.7, 0), (0, r), (-r * 0.7, 0)]
    elif obj.shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in np.radians([-90, 30, 150]) + rot]
    else:  # star: five points, inner radius 0.45 r
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
               for k, a in enumerate(np.radians(np.arange(10) * 36 - 90) + rot)]
    return [(cx + x, cy + y) for x, y in pts]


def _object_mask(obj: SceneObject, side: int) -> np.ndarray:
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    poly = _shape_polygon(obj, side)
    if poly is None:
        cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A low-saturation background: noise, stripes, checks or a gradient, with pixel noise on top."""
    base = rng.uniform(90, 200) + rng.uniform(-20, 20, size=3)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    style = rng.integers(4)
    if style == 0:
        pattern = np.zeros((side, side), np.float32)
    elif style == 1:
        theta, freq = rng.uniform(0, math.pi), rng.uniform(4, 12)
        pattern = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)))
    elif style == 2:
        cells = rng.integers(4, 10)
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
    else:
        theta = rng.uniform(0, 2 * math.pi)
        pattern = (xx * math.cos(theta) + yy * math.sin(theta)) * 2 - 1
    amplitude = rng.uniform(10, 30)
    img = base[None, None, :] + amplitude * pattern[..., None] + rng.normal(0, rng.uniform(4, 14), (side, side, 3))
    return img


def draw_scene(objs: list[SceneObject], rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (side, side, 3) uint8, masks (len(objs), side, side) bool) of ``objs`` on a random background."""
    image = _background(rng, side)
    masks = np.stack([_object_mask(o, side) for o in objs])
    for obj, mask in zip(objs, masks):
        colour = np.asarray(COLOURS[obj.colour], np.float32) + rng.uniform(-15, 15, size=3)
        shade = 1.0 + 0.15 * ((np.mgrid[0:side, 0:side][0] / side) - obj.y)  # a faint vertical shading
        image[mask] = (colour[None, :] * shade[mask][:, None])
    image = image + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks
