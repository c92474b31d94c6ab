"""Spatial words: which of the objects a map covers does "the leftmost ...", "... above the ..." mean?

SaG learns from image-text pairs alone, and no loss over such pairs can tell "left" from "right": mirror every image
and swap the two words in every text, and the data, hence C^3 and the reconstruction loss, are unchanged, so a model
that reads "left" as right scores exactly as well as one that reads it as left (bench/README.md, "Beyond the
paper", measures it: a trained model's masks for a text and its mirrored text overlap with IoU 0.95). What a
direction word means has to come from outside the pairs. This module supplies it as a small, fixed reading of
English spatial language on top of the model's masks:

1. :func:`parse` splits a text into what to look for (``head``: "the red circle") and a spatial cue: an absolute
   position ("leftmost", "on the left", "top right", "in the middle") or a relation to a landmark ("left of",
   "above", "next to" + "the blue star"), or a size ("small", "largest"). Texts without any of these parse to
   ``None`` and keep the model's mask.
2. The model segments ``head`` (and the landmark) like any text; its mask usually covers every object that fits the
   words (entities group by appearance, so two red circles share one), as separate connected regions. That step is
   :mod:`sag.pipeline`'s (``TextQueries`` / ``segment_texts``), which calls the model and this module: this module
   knows no model, only words and masks.
3. :func:`select` keeps the region that the cue picks: the extreme one along the axis; of those on the named side
   of the landmark, the one whose map peaks highest (the best fit for the head's words; "next to": the nearest);
   or the smallest / largest.

The objects are the connected components of the thresholded map (``scipy.ndimage.label``), so two touching objects
of one kind stay one candidate; the edge-aware refinement (:mod:`sag.refine`) separates more of them. English only;
the word lists are below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

# Relations, longest first so that "to the left of" wins over "left of". Value: (axis, sign) with axis 0 = x
# (columns), 1 = y (rows), sign -1 = towards smaller coordinates (left, up); None = nearest ("next to").
RELATIONS: dict[str, tuple[int, int] | None] = {
    "to the left of": (0, -1), "on the left of": (0, -1), "left of": (0, -1),
    "to the right of": (0, 1), "on the right of": (0, 1), "right of": (0, 1),
    "on top of": (1, -1), "above": (1, -1), "over": (1, -1),
    "underneath": (1, 1), "beneath": (1, 1), "below": (1, 1), "under": (1, 1),
    "next to": None, "beside": None, "near": None,
}
# Absolute positions: phrases (removed from the head as a whole), then single words. (axis, sign) as above;
# "middle" is (None, 0): closest to the image centre.
POSITION_PHRASES: dict[str, tuple[int | None, int]] = {
    "on the left": (0, -1), "on the right": (0, 1), "at the left": (0, -1), "at the right": (0, 1),
    "at the top": (1, -1), "at the bottom": (1, 1), "on top": (1, -1),
    "in the middle": (None, 0), "in the center": (None, 0), "in the centre": (None, 0),
}
POSITION_WORDS: dict[str, tuple[int | None, int]] = {
    "leftmost": (0, -1), "left": (0, -1), "rightmost": (0, 1), "right": (0, 1),
    "topmost": (1, -1), "uppermost": (1, -1), "highest": (1, -1), "top": (1, -1), "upper": (1, -1),
    "bottommost": (1, 1), "lowermost": (1, 1), "lowest": (1, 1), "bottom": (1, 1), "lower": (1, 1),
    "middle": (None, 0), "center": (None, 0), "centre": (None, 0), "central": (None, 0),
}
# Size words: +1 the largest region, -1 the smallest. Kept in the head too ("the small circle" is still a circle
# the model should find, and the size may be what sets it apart from the other circles).
SIZE_WORDS: dict[str, int] = {
    "small": -1, "smaller": -1, "smallest": -1, "little": -1, "tiny": -1,
    "large": 1, "larger": 1, "largest": 1, "big": 1, "bigger": 1, "biggest": 1, "huge": 1,
}
# A relation needs something to relate to: "the man over there" is a position of the speaker's, not a relation.
NOT_LANDMARKS = frozenset({"there", "here", "it", "them", "that", "this", "one", "ones"})
# Words that name nothing on their own: a head made only of them ("the left one") is no better than the whole text.
EMPTY_WORDS = frozenset({"the", "a", "an", "one", "ones", "of", "is", "in", "on", "at", "and"})
# Components smaller than this fraction of the largest candidate are specks of the threshold, not objects.
MIN_COMPONENT_FRACTION = 0.1


@dataclass(frozen=True)
class SpatialQuery:
    """A text read as: find ``head``, then keep the object the cue names."""

    head: str  # the text without its spatial words ("the red circle"); the model segments this
    position: tuple[tuple[int | None, int], ...] = ()  # absolute cues, e.g. ((0, -1),) for "leftmost"
    relation: str | None = None  # a key of RELATIONS
    landmark: str | None = None  # the landmark's text when ``relation`` is set ("the blue star")
    size: int = 0  # +1 "large", -1 "small", 0 no size word


def normalise_words(text: str) -> str:
    """``text`` lower-cased, as its words (letters, digits, apostrophes) joined by single spaces: the form
    :func:`parse` reads, and the key under which two texts are the same words."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _remove(text: str, phrase: str) -> str:
    return " ".join(re.sub(rf"\b{re.escape(phrase)}\b", " ", text).split())


def parse(text: str) -> SpatialQuery | None:
    """``text`` -> a :class:`SpatialQuery`, or ``None`` when it holds no spatial word.

    "the leftmost red circle" -> head "the red circle", position ((0, -1),); "the small square above the blue star"
    -> head "the small square", relation "above", landmark "the blue star". A relation takes precedence: only the
    part before it is searched for absolute cues ("the left dog next to the car" -> head "the dog", both cues).
    """
    words = normalise_words(text)
    relation = landmark = None
    for name in RELATIONS:  # longest first
        match = re.search(rf"\b{re.escape(name)}\b", words)
        rest = words[match.end():].strip() if match else ""
        if rest and not set(rest.split()) <= NOT_LANDMARKS | EMPTY_WORDS:
            relation, landmark = name, rest
            words = words[: match.start()].strip()
            break
    position: list[tuple[int | None, int]] = []
    for phrase, cue in POSITION_PHRASES.items():
        if re.search(rf"\b{re.escape(phrase)}\b", words):
            position.append(cue)
            words = _remove(words, phrase)
    for word, cue in POSITION_WORDS.items():
        if re.search(rf"\b{word}\b", words):
            position.append(cue)
            words = _remove(words, word)
    size = next((v for w, v in SIZE_WORDS.items() if re.search(rf"\b{w}\b", words)), 0)
    if relation is None and not position and not size:
        return None
    head = words if set(words.split()) - EMPTY_WORDS else normalise_words(text)
    if landmark is not None and not landmark.startswith(("the ", "a ", "an ")):
        landmark = "the " + landmark
    return SpatialQuery(head=head, position=tuple(position), relation=relation, landmark=landmark,
                        size=size)


def components(mask: torch.Tensor) -> list[np.ndarray]:
    """The connected regions (8-connected) of a bool mask (H, W), each as a bool array (H, W), largest first,
    without specks under MIN_COMPONENT_FRACTION of the largest."""
    labels, count = ndimage.label(mask.cpu().numpy(), structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    keep = [i for i in order if areas[i] >= MIN_COMPONENT_FRACTION * areas[order[0]]]
    return [labels == i + 1 for i in keep]


def _centre(region: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """(x, y) of a region as fractions of the width and height, weighted by ``weight`` (the soft map) if given."""
    ys, xs = np.nonzero(region)
    w = weight[ys, xs] + 1e-6 if weight is not None else np.ones(len(xs))
    h, wd = region.shape
    return np.array([(xs * w).sum() / w.sum() / wd, (ys * w).sum() / w.sum() / h])


def select(query: SpatialQuery, head_mask: torch.Tensor, head_soft: torch.Tensor | None = None,
           landmark_mask: torch.Tensor | None = None, landmark_soft: torch.Tensor | None = None) -> torch.Tensor | None:
    """The region of ``head_mask`` (H, W) bool that ``query``'s cue picks, as a bool mask (H, W) on its device.

    ``head_soft`` (H, W) weights the centres and ranks the regions on a relation's side (without it: the nearest
    to the landmark); ``landmark_mask`` / ``landmark_soft`` are the landmark's mask and map
    (needed for a relation: the landmark is the region holding the landmark map's maximum). ``None`` when there is
    nothing to choose from (an empty head mask, or a relation whose landmark mask is empty): keep the model's mask.
    """
    soft = head_soft.float().cpu().numpy() if head_soft is not None else None
    regions = components(head_mask)
    if not regions:
        return None
    if query.relation is not None:
        if landmark_mask is None:
            raise ValueError(f"the relation {query.relation!r} needs the landmark's mask")
        marks = components(landmark_mask)
        if not marks:
            return None
        if landmark_soft is not None:  # the landmark is where its map peaks
            peak = np.unravel_index(int(landmark_soft.float().argmax()), landmark_soft.shape)
            marks = [m for m in marks if m[peak]] or marks
        mark = marks[0]
        # the head's words often fit the landmark too ("the circle above the circle"): never answer the landmark
        regions = [r for r in regions if (r & mark).sum() < 0.5 * r.sum()] or regions
        anchor = _centre(mark, landmark_soft.float().cpu().numpy() if landmark_soft is not None else None)
        centres = [_centre(r, soft) for r in regions]
        axis_sign = RELATIONS[query.relation]
        if axis_sign is None:
            dist = [float(np.linalg.norm(c - anchor)) for c in centres]
            best = int(np.argmin(dist))
        else:
            axis, sign = axis_sign
            gaps = [(c[axis] - anchor[axis]) * sign for c in centres]
            named_side = [i for i, g in enumerate(gaps) if g > 0]
            if not named_side:  # nothing is: the one that goes furthest that way
                best = int(np.argmax(gaps))
            elif soft is not None:  # of those on the named side, the one that fits the head's words best
                best = max(named_side, key=lambda i: float(soft[regions[i]].max()))
            else:
                best = min(named_side, key=lambda i: float(np.linalg.norm(centres[i] - anchor)))
        regions = [regions[best]]
    if query.position and len(regions) > 1:
        centres = np.stack([_centre(r, soft) for r in regions])
        score = np.zeros(len(regions))
        for axis, sign in query.position:
            if axis is None:
                score -= np.linalg.norm(centres - 0.5, axis=1)
            else:
                score += centres[:, axis] * sign
        regions = [regions[int(np.argmax(score))]]
    if query.size and len(regions) > 1:
        areas = [r.sum() * query.size for r in regions]
        regions = [regions[int(np.argmax(areas))]]
    return torch.from_numpy(regions[0]).to(head_mask.device)
