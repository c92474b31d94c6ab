"""The referring-expression grammar: objects described by size, colour and shape, and expressions that single one
out by attributes (``the small red circle``), by position within a group (``the leftmost red circle``) or by a
relation to a unique landmark (``the red circle left of the blue star``).

:func:`refer` writes an expression; :func:`resolve` is an independent reader of the same grammar (the tests check
that every written expression resolves to exactly its target); :func:`bag_of_words_oracle` shows that word overlap
alone does not solve the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import ALL_COLOURS, ALL_SHAPES, KINDS, SIZES

RELATIONS: dict[str, tuple[int, int]] = {  # phrase -> (axis, sign): target coordinate minus landmark's
    "left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1),
}


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
class SceneExpression:
    """An expression as the generator knows it (the object's index in its scene); not the loaders'
    :class:`training.datasets.base.Expression`, which is what reading the written benchmark gives back."""

    target: int  # index of the object in the scene
    text: str
    kind: str  # attribute | absolute | relation


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


# ---- writing expressions --------------------------------------------------------------------------------------------
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
          margin: float) -> SceneExpression | None:
    """One expression that identifies ``objs[target]`` and no other object, of a kind drawn by ``kind_weights``
    (falling back to the other kinds when the scene does not allow it); None if no kind can."""
    weights = np.asarray(kind_weights, dtype=float)
    order = rng.choice(len(KINDS), size=len(KINDS), replace=False, p=weights / weights.sum())
    for k in order:
        text = _REFERRERS[KINDS[k]](objs, target, rng, margin)
        if text is not None:
            return SceneExpression(target, text, KINDS[k])
    return None


# ---- reading expressions back ---------------------------------------------------------------------------------------
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
        elif w in ALL_COLOURS:
            values["colour"] = w
        elif w in ALL_SHAPES:
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
