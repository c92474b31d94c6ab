"""One scene of the benchmark: place the objects, write expressions for some of them, then draw it.

Every scene is drawn from its own generator seeded by ``(seed, split, index)`` (and the domain's salt, for domains
other than the base one), so a scene does not depend on how many scenes were asked for. Placement, the grammar and
the drawing share that one generator, in that order: changing the order (or what any step draws from it) changes
every scene, so keep it when editing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import SIZES, SPLITS, SyntheticConfig
from .drawing import draw_scene
from .grammar import SceneExpression, SceneObject, refer


@dataclass
class Scene:
    objects: list[SceneObject]
    expressions: list[SceneExpression]
    image: np.ndarray  # (S, S, 3) uint8
    masks: np.ndarray  # (num_objects, S, S) bool, disjoint


def _place(rng: np.random.Generator, placed: list[SceneObject], radius: float) -> tuple[float, float] | None:
    for _ in range(200):
        x, y = rng.uniform(radius + 0.02, 0.98 - radius, size=2)
        if all(math.hypot(x - o.x, y - o.y) > radius + o.radius + 0.03 for o in placed):
            return float(x), float(y)
    return None


def generate_scene(config: SyntheticConfig, split: str, index: int) -> Scene | None:
    """Scene ``index`` of ``split``: objects, up to ``expressions_per_scene`` expressions, the image and masks.

    Returns None when the drawn scene admits no valid expression for the split (the caller skips the index).
    """
    salt = config.vocabulary.seed_salt
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index, *(() if salt is None else (salt,))])
    colours, shapes = list(config.colours), config.shapes
    held_out = set(config.held_out)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objs: list[SceneObject] = []
    while len(objs) < count:
        if objs and rng.random() < config.repeat_prob:
            src = objs[rng.integers(len(objs))]
            colour, shape = src.colour, src.shape
        elif split == "compositional" and not any((o.colour, o.shape) in held_out for o in objs):
            colour, shape = config.held_out[rng.integers(len(config.held_out))]
        else:
            colour, shape = colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))]
        size = SIZES[rng.integers(len(SIZES))]
        radius = float(rng.uniform(*config.radius[size]))
        where = _place(rng, objs, radius)
        if where is None:
            break
        objs.append(SceneObject(colour, shape, size, *where, radius, float(rng.uniform(0, 360))))
    if len(objs) < 2:
        return None
    wanted = (lambda o: (o.colour, o.shape) in held_out) if split == "compositional" else \
        (lambda o: (o.colour, o.shape) not in held_out)
    candidates = [i for i, o in enumerate(objs) if wanted(o)]
    rng.shuffle(candidates)
    expressions = []
    for target in candidates:
        expr = refer(objs, target, rng, config.kind_weights, config.margin)
        if expr is not None:
            expressions.append(expr)
        if len(expressions) == config.expressions_per_scene:
            break
    if not expressions:
        return None
    image, masks = draw_scene(objs, rng, config.image_size, config.vocabulary)
    return Scene(objs, expressions, image, masks)
