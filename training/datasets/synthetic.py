"""A deterministic synthetic referring benchmark: shapes on textured backgrounds with unique referring expressions.

It exists to show on a CPU that SaG learns masks from text alone. Scenes hold 2-6 shapes; (colour, shape) pairs are
often repeated inside a scene, so about half of the expressions can only be resolved by position or by a relation to
another object, and a bag of words cannot solve the benchmark (see :func:`bag_of_words_oracle`).

Every scene is drawn from its own generator seeded by ``(seed, split, index)``, so a scene does not depend on how
many scenes were asked for. The benchmark is written in the RefCOCO ``refer`` layout (``refs(synthetic).p`` +
``instances.json`` + ``images/``) and read back by :class:`training.datasets.refcoco.ReferDataset`, the loader the
real data sets use. Ground-truth masks go into ``instances.json`` only; training never reads them.

Splits: ``train``, ``val`` and ``test`` draw targets from the *seen* (colour, shape) pairs; ``compositional`` draws
targets only from the held-out pairs, which appear in training scenes as distractors or landmarks but never as the
object an expression refers to.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 210, 35),
    "purple": (145, 55, 185),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SIZES: tuple[str, ...] = ("small", "large")
# One held-out pair per colour, every shape at least once: the compositional split's targets.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"), ("green", "diamond"), ("blue", "circle"), ("yellow", "triangle"), ("purple", "square"),
    ("orange", "diamond"),
)
SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")
REFS_FILE = "refs(synthetic).p"
KINDS: tuple[str, ...] = ("attribute", "absolute", "relation")
RELATIONS: dict[str, tuple[int, int]] = {  # phrase -> (axis, sign): target coordinate minus landmark's
    "left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Sizes are fractions of the image side."""

    seed: int = 0
    image_size: int = 128
    scenes: dict[str, int] = field(default_factory=lambda: {"train": 4000, "val": 200, "test": 400,
                                                           "compositional": 400})
    min_objects: int = 2
    max_objects: int = 6
    repeat_prob: float = 0.6  # chance that each added object copies the (colour, shape) of one already there
    radius: dict[str, tuple[float, float]] = field(default_factory=lambda: {"small": (0.065, 0.085),
                                                                            "large": (0.12, 0.15)})
    margin: float = 0.08  # the smallest coordinate gap that makes "left of" / "leftmost" unambiguous
    expressions_per_scene: int = 2  # distinct targets per scene (fewer when the scene does not allow more)
    kind_weights: tuple[float, float, float] = (0.3, 0.35, 0.35)  # attribute, absolute, relation
    held_out: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS

    def __post_init__(self) -> None:
        if not 2 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 2 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        unknown = set(self.scenes) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; known: {SPLITS}")
        for colour, shape in self.held_out:
            if colour not in COLOURS or shape not in SHAPES:
                raise ValueError(f"held-out pair ({colour}, {shape}) is not a known colour and shape")


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    x: float  # centre, as a fraction of the width (0 = left)
    y: float  # centre, as a fraction of the height (0 = top)
    radius: float  # fraction of the side
    angle: float  # rotation in degrees (stars, triangles)

    def attribute(self, name: str) -> str:
        return getattr(self, name)


@dataclass(frozen=True)
class Expression:
    target: int  # index of the object in the scene
    text: str
    kind: str  # attribute | absolute | relation


@dataclass
class Scene:
    objects: list[SceneObject]
    expressions: list[Expression]
    image: np.ndarray  # (S, S, 3) uint8
    masks: np.ndarray  # (num_objects, S, S) bool, disjoint


# ---- descriptions ---------------------------------------------------------------------------------------------------
Descriptor = tuple[tuple[str, str], ...]  # ((attribute, value), ...) over size, colour, shape
DESCRIPTOR_ATTRS: tuple[tuple[str, ...], ...] = (
    ("colour", "shape"), ("size", "colour", "shape"), ("colour",), ("shape",), ("size", "shape"), ("size", "colour"),
)


def describe(obj: SceneObject, attrs: Sequence[str]) -> Descriptor:
    return tuple((a, obj.attribute(a)) for a in ("size", "colour", "shape") if a in attrs)


def matches(obj: SceneObject, desc: Descriptor) -> bool:
    return all(obj.attribute(a) == v for a, v in desc)


def phrase(desc: Descriptor) -> str:
    """("the") small red circle / red shape / small one."""
    values = dict(desc)
    words = [values[a] for a in ("size", "colour") if a in values]
    words.append(values.get("shape", "shape"))
    return " ".join(words)


def _relation_holds(t: SceneObject, landmark: SceneObject, relation: str, margin: float) -> bool | None:
    """True / False when clear, None when the gap is within the margin (neither safe to state nor to deny)."""
    axis, sign = RELATIONS[relation]
    delta = ((t.x - landmark.x) if axis == 0 else (t.y - landmark.y)) * sign
    if delta > margin:
        return True
    if delta < margin / 2:
        return False
    return None


def _refer_attribute(objs: list[SceneObject], target: int, rng: np.random.Generator, margin: float) -> str | None:
    options = [describe(objs[target], a) for a in DESCRIPTOR_ATTRS]
    unique = [d for d in options if sum(matches(o, d) for o in objs) == 1]
    if not unique:
        return None
    return "the " + phrase(unique[rng.integers(len(unique))])


def _refer_absolute(objs: list[SceneObject], target: int, rng: np.random.Generator, margin: float) -> str | None:
    t = objs[target]
    options = []
    for attrs in DESCRIPTOR_ATTRS:
        desc = describe(t, attrs)
        group = [o for o in objs if matches(o, desc)]
        if len(group) < 2:
            continue  # position would be redundant: the attribute kind covers unique descriptors
        for axis, extreme in ((0, "left"), (0, "right"), (1, "top"), (1, "bottom")):
            coord = (lambda o: o.x) if axis == 0 else (lambda o: o.y)
            sign = -1 if extreme in ("left", "top") else 1
            others = [coord(o) * sign for o in group if o is not t]
            if coord(t) * sign - max(others) > margin:
                options.append((desc, extreme, len(group)))
    if not options:
        return None
    desc, extreme, count = options[rng.integers(len(options))]
    noun = phrase(desc)
    superlative = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}[extreme]
    if count == 2 and rng.random() < 0.5:
        where = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
        return f"the {noun} {where[extreme]}"
    return f"the {superlative} {noun}"


def _refer_relation(objs: list[SceneObject], target: int, rng: np.random.Generator, margin: float) -> str | None:
    t = objs[target]
    options = []
    for li, landmark in enumerate(objs):
        if li == target:
            continue
        landmark_descs = [describe(landmark, a) for a in DESCRIPTOR_ATTRS[:4]]
        landmark_descs = [d for d in landmark_descs if sum(matches(o, d) for o in objs) == 1]
        if not landmark_descs:
            continue
        for relation in RELATIONS:
            if _relation_holds(t, landmark, relation, margin) is not True:
                continue
            for attrs in DESCRIPTOR_ATTRS + ((),):
                desc = describe(t, attrs)
                rivals = [o for i, o in enumerate(objs) if i not in (target, li) and matches(o, desc)]
                if all(_relation_holds(o, landmark, relation, margin) is False for o in rivals):
                    options.append((desc, relation, landmark_descs[rng.integers(len(landmark_descs))]))
    if not options:
        return None
    desc, relation, landmark_desc = options[rng.integers(len(options))]
    return f"the {phrase(desc)} {relation} the {phrase(landmark_desc)}"


_REFERRERS = {"attribute": _refer_attribute, "absolute": _refer_absolute, "relation": _refer_relation}


def refer(objs: list[SceneObject], target: int, rng: np.random.Generator, kind_weights: Sequence[float],
          margin: float) -> Expression | None:
    """One expression that identifies ``objs[target]`` and no other object, of a kind drawn by ``kind_weights``
    (falling back to the other kinds when the scene does not allow it); None if no kind can."""
    weights = np.asarray(kind_weights, dtype=float)
    order = rng.choice(len(KINDS), size=len(KINDS), replace=False, p=weights / weights.sum())
    for k in order:
        text = _REFERRERS[KINDS[k]](objs, target, rng, margin)
        if text is not None:
            return Expression(target, text, KINDS[k])
    return None


def resolve(objs: list[SceneObject], text: str, margin: float) -> list[int]:
    """Every object that ``text`` (in this generator's grammar) describes; exactly one for a valid expression.

    An independent reading of the grammar, used by the tests to check that each expression is unique.
    """
    words = text.split()
    assert words[0] == "the"
    for relation in RELATIONS:
        if f" {relation} the " in text:
            head, tail = text.split(f" {relation} the ")
            head_desc = _parse_descriptor(head.split()[1:])
            landmarks = [o for o in objs if matches(o, _parse_descriptor(tail.split()))]
            if len(landmarks) != 1:
                return []
            return [i for i, o in enumerate(objs) if o is not landmarks[0] and matches(o, head_desc)
                    and _relation_holds(o, landmarks[0], relation, margin)]
    superlatives = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "bottommost": (1, 1)}
    trailing = {"on the left": (0, -1), "on the right": (0, 1), "at the top": (1, -1), "at the bottom": (1, 1)}
    axis_sign = None
    if words[1] in superlatives:
        axis_sign, words = superlatives[words[1]], words[2:]
    else:
        for tail, value in trailing.items():
            if text.endswith(" " + tail):
                axis_sign, words = value, text[: -len(tail) - 1].split()[1:]
        if axis_sign is None:
            words = words[1:]
    group = [i for i, o in enumerate(objs) if matches(o, _parse_descriptor(words))]
    if axis_sign is None:
        return group
    axis, sign = axis_sign
    coord = [(objs[i].x if axis == 0 else objs[i].y) * sign for i in group]
    best = max(coord)
    if sum(c > best - margin for c in coord) != 1:
        return []
    return [group[int(np.argmax(coord))]]


def _parse_descriptor(words: Sequence[str]) -> Descriptor:
    values = {}
    for w in words:
        if w in SIZES:
            values["size"] = w
        elif w in COLOURS:
            values["colour"] = w
        elif w in SHAPES:
            values["shape"] = w
        elif w != "shape":
            raise ValueError(f"not a descriptor word: {w!r}")
    return tuple((a, values[a]) for a in ("size", "colour", "shape") if a in values)


def bag_of_words_oracle(objs: list[SceneObject], text: str) -> int | None:
    """The object a bag of words would pick: the first whose size/colour/shape words all occur in the text
    (the landmark's words too, since a bag has no order). Used to show the benchmark needs more than that."""
    words = set(text.split())
    best, best_score = None, -1
    for i, o in enumerate(objs):
        if not (o.colour in words or o.shape in words or o.size in words):
            continue
        score = (o.colour in words) + (o.shape in words) + (o.size in words)
        if score > best_score:
            best, best_score = i, score
    return best


# ---- drawing --------------------------------------------------------------------------------------------------------
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
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
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
            colour, shape = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
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
    side = config.image_size
    image = _background(rng, side)
    masks = np.stack([_object_mask(o, side) for o in objs])
    for obj, mask in zip(objs, masks):
        colour = np.asarray(COLOURS[obj.colour], np.float32) + rng.uniform(-15, 15, size=3)
        shade = 1.0 + 0.15 * ((np.mgrid[0:side, 0:side][0] / side) - obj.y)  # a faint vertical shading
        image[mask] = (colour[None, :] * shade[mask][:, None])
    image = image + rng.normal(0, 3, image.shape)
    return Scene(objs, expressions, np.clip(image, 0, 255).astype(np.uint8), masks)


# ---- writing the refer layout ---------------------------------------------------------------------------------------
def write_benchmark(root: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True) -> Path:
    """Generate every split into ``root`` in the RefCOCO ``refer`` layout and return ``root``.

    Writes ``images/<split>_<index>.png``, ``instances.json`` (COCO, RLE masks), ``refs(synthetic).p`` (the refer
    API's list of refs) and ``synthetic.json`` (the config, for provenance). Regenerating with the same config gives
    byte-identical annotation files.
    """
    from pycocotools import mask as mask_utils

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    images, annotations, refs = [], [], []
    total = sum(config.scenes.values())
    bar = tqdm(total=total, desc="synthetic scenes", disable=not progress)
    for split in SPLITS:
        for index in range(config.scenes.get(split, 0)):
            bar.update()
            scene = generate_scene(config, split, index)
            if scene is None:
                continue
            image_id = len(images) + 1
            file_name = f"{split}_{index:06d}.png"
            Image.fromarray(scene.image).save(root / "images" / file_name)
            side = config.image_size
            images.append({"id": image_id, "file_name": file_name, "height": side, "width": side})
            ann_ids = []
            for obj, mask in zip(scene.objects, scene.masks):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                ann_ids.append(len(annotations) + 1)
                annotations.append({
                    "id": ann_ids[-1], "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                    "segmentation": rle, "area": int(mask.sum()), "iscrowd": 0,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "attributes": asdict(obj),
                })
            for expr in scene.expressions:
                ref_id = len(refs) + 1
                refs.append({
                    "ref_id": ref_id, "ann_id": ann_ids[expr.target], "image_id": image_id, "split": split,
                    "category_id": SHAPES.index(scene.objects[expr.target].shape) + 1, "file_name": file_name,
                    "sentences": [{"sent_id": ref_id, "sent": expr.text, "raw": expr.text,
                                   "tokens": expr.text.split()}],
                    "sent_ids": [ref_id], "kind": expr.kind,
                })
    bar.close()
    with open(root / "instances.json", "w", encoding="utf-8") as fh:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, fh)
    with open(root / REFS_FILE, "wb") as fh:
        pickle.dump(refs, fh, protocol=4)
    config_dict = asdict(config)
    with open(root / "synthetic.json", "w", encoding="utf-8") as fh:
        json.dump(config_dict, fh, indent=2, sort_keys=True)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.datasets.synthetic --out DIR``: write the benchmark (refer layout) into DIR."""
    import argparse

    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="target directory (e.g. data/synthetic)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=defaults.scenes[split], help=f"{split} scenes")
    args = parser.parse_args(argv)
    config = SyntheticConfig(seed=args.seed, image_size=args.image_size,
                             scenes={s: getattr(args, s) for s in SPLITS})
    write_benchmark(args.out, config)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
