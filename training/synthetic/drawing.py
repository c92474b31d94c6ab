"""Rendering a scene: a textured background, each object as a filled shape in its colour, and one mask per object.

Everything random comes from the generator passed in, in a fixed order (background, then each object's colour, then
pixel noise), so a scene's image depends only on its seed. A domain's ``look`` picks the style: ``base`` (grey
backgrounds, flat objects with a faint shading) or ``shift`` (tinted backgrounds with other textures, objects with a
texture of their own and a dark outline).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .config import DOMAINS, Domain
from .grammar import SceneObject


def _rotated(points: list[tuple[float, float]], rot: float) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _heart(r: float) -> list[tuple[float, float]]:
    """The classic parametric heart, point up in image coordinates (y down), about 2 r wide, centred."""
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
    return [(r * a / 16, r * b / 16) for a, b in zip(x, y)]


def _shift_shape(shape: str, r: float, rot: float) -> list[tuple[float, float]]:
    """The shift domain's shapes around the origin, radius ``r``, rotated by ``rot`` radians."""
    if shape in ("pentagon", "hexagon"):
        n = 5 if shape == "pentagon" else 6
        return [(r * math.cos(a), r * math.sin(a)) for a in np.radians(np.arange(n) * 360 / n - 90) + rot]
    if shape == "cross":  # a plus sign, arms 0.6 r wide
        w = 0.3 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w)]
        return _rotated(pts, rot)
    if shape == "arrow":  # pointing along +x before rotation: a shaft and a triangular head
        pts = [(-r, -0.25 * r), (0.1 * r, -0.25 * r), (0.1 * r, -0.7 * r), (r, 0), (0.1 * r, 0.7 * r),
               (0.1 * r, 0.25 * r), (-r, 0.25 * r)]
        return _rotated(pts, rot)
    if shape == "heart":  # tilted at most 30 degrees either way, so that it stays a heart
        return _rotated(_heart(r), math.radians((math.degrees(rot) % 60) - 30))
    raise ValueError(f"no drawing for shape {shape!r}")


def _shape_polygon(obj: SceneObject, side: int) -> list[tuple[float, float]] | None:
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    rot = math.radians(obj.angle)
    if obj.shape == "circle":
        return None
    if obj.shape in DOMAINS["shift"].shapes:
        return [(cx + x, cy + y) for x, y in _shift_shape(obj.shape, r, rot)]
    if obj.shape == "square":
        half = 0.85 * r
        pts = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif obj.shape == "diamond":
        pts = [(0, -r), (r * 0.7, 0), (0, r), (-r * 0.7, 0)]
    elif obj.shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in np.radians([-90, 30, 150]) + rot]
    elif obj.shape == "star":  # five points, inner radius 0.45 r
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
               for k, a in enumerate(np.radians(np.arange(10) * 36 - 90) + rot)]
    else:
        raise ValueError(f"no drawing for shape {obj.shape!r}")
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


def _stripes(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, low: float, high: float) -> np.ndarray:
    """Sine stripes in [-1, 1] at a random angle and a random frequency in [low, high) per image side (the angle is
    drawn first: the generators' random streams depend on it)."""
    theta, freq = rng.uniform(0, math.pi), rng.uniform(low, high)
    return np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)))


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A low-saturation background: noise, stripes, checks or a gradient, with pixel noise on top."""
    base = rng.uniform(90, 200) + rng.uniform(-20, 20, size=3)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    style = rng.integers(4)
    if style == 0:
        pattern = np.zeros((side, side), np.float32)
    elif style == 1:
        pattern = _stripes(rng, xx, yy, 4, 12)
    elif style == 2:
        cells = rng.integers(4, 10)
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
    else:
        theta = rng.uniform(0, 2 * math.pi)
        pattern = (xx * math.cos(theta) + yy * math.sin(theta)) * 2 - 1
    amplitude = rng.uniform(10, 30)
    img = base[None, None, :] + amplitude * pattern[..., None] + rng.normal(0, rng.uniform(4, 14), (side, side, 3))
    return img


def draw_scene(objs: list[SceneObject], rng: np.random.Generator, side: int,
               domain: Domain = DOMAINS["base"]) -> tuple[np.ndarray, np.ndarray]:
    """(image (side, side, 3) uint8, masks (len(objs), side, side) bool) of ``objs`` on a random background, in
    ``domain``'s colours and look."""
    if domain.look == "shift":
        return _draw_shift(objs, rng, side, domain.colours)
    if domain.look != "base":
        raise ValueError(f"unknown look {domain.look!r}")
    image = _background(rng, side)
    masks = np.stack([_object_mask(o, side) for o in objs])
    for obj, mask in zip(objs, masks):
        colour = np.asarray(domain.colours[obj.colour], np.float32) + rng.uniform(-15, 15, size=3)
        shade = 1.0 + 0.15 * ((np.mgrid[0:side, 0:side][0] / side) - obj.y)  # a faint vertical shading
        image[mask] = (colour[None, :] * shade[mask][:, None])
    image = image + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def _shift_background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A tinted background (a hue of its own, mid brightness, so black and white objects stand out): polka dots,
    rings, fine diagonal stripes or low-frequency blotches, with pixel noise on top."""
    tint = rng.uniform(70, 170) + rng.uniform(-45, 45, size=3)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    style = rng.integers(4)
    if style == 0:  # polka dots on a jittered lattice
        cells, radius = rng.uniform(5, 10), rng.uniform(0.18, 0.32)
        fx, fy = (xx * cells + rng.uniform()) % 1 - 0.5, (yy * cells + rng.uniform()) % 1 - 0.5
        pattern = np.where(np.hypot(fx, fy) < radius, 1.0, -1.0).astype(np.float32)
    elif style == 1:  # rings around a random centre
        cx, cy, freq = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(6, 14)
        pattern = np.sin(2 * math.pi * freq * np.hypot(xx - cx, yy - cy))
    elif style == 2:  # fine stripes
        pattern = np.sign(_stripes(rng, xx, yy, 14, 24))
    else:  # blotches: coarse noise, upsampled smoothly
        coarse = rng.uniform(-1, 1, (5, 5)).astype(np.float32)
        pattern = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC))
    amplitude = rng.uniform(12, 28)
    return tint[None, None, :] + amplitude * pattern[..., None] + rng.normal(0, rng.uniform(3, 10), (side, side, 3))


def _draw_shift(objs: list[SceneObject], rng: np.random.Generator, side: int,
                colours: dict[str, tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The shift look: each object filled with its colour under a texture (flat, stripes or a radial gradient)
    and outlined one pixel wide in a darker (for black, lighter) shade of it."""
    from scipy.ndimage import binary_erosion

    image = _shift_background(rng, side)
    masks = np.stack([_object_mask(o, side) for o in objs])
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for obj, mask in zip(objs, masks):
        colour = np.asarray(colours[obj.colour], np.float32) + rng.uniform(-12, 12, size=3)
        style = rng.integers(3)
        if style == 0:
            texture = np.zeros((side, side), np.float32)
        elif style == 1:
            texture = _stripes(rng, xx, yy, 10, 18)
        else:
            texture = 1 - 2 * np.clip(np.hypot(xx - obj.x, yy - obj.y) / obj.radius, 0, 1)
        image[mask] = colour[None, :] + 20 * texture[mask][:, None]
        edge = mask & ~binary_erosion(mask)
        outline = colour * 0.55 if colour.mean() > 60 else colour + 70
        image[edge] = outline
    image = image + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks
