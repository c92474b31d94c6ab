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
   words (entities group by appearance, so two red circles share one), as separate connected regions.
3. :func:`select` keeps the region that the cue picks: the extreme one along the axis; of those on the named side
   of the landmark, the one whose map peaks highest (the best fit for the head's words; "next to": the nearest);
   or the smallest / largest.

The objects are the connected components of the thresholded map (``scipy.ndimage.label``), so two touching objects
of one kind stay one candidate; the edge-aware refinement (:mod:`sag.refine`) separates more of them. English only;
the word lists are below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from .confidence import region_match, unknown_word_share

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


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _remove(text: str, phrase: str) -> str:
    return " ".join(re.sub(rf"\b{re.escape(phrase)}\b", " ", text).split())


def parse(text: str) -> SpatialQuery | None:
    """``text`` -> a :class:`SpatialQuery`, or ``None`` when it holds no spatial word.

    "the leftmost red circle" -> head "the red circle", position ((0, -1),); "the small square above the blue star"
    -> head "the small square", relation "above", landmark "the blue star". A relation takes precedence: only the
    part before it is searched for absolute cues ("the left dog next to the car" -> head "the dog", both cues).
    """
    words = _words(text)
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
    head = words if set(words.split()) - EMPTY_WORDS else _words(text)
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


class TextQueries:
    """B texts about B images, read and encoded once, to segment with any scheme or refinement.

    Args:
        model: a :class:`sag.model.SaG`.
        image: ImageEntities of B images (entry i answers ``texts[i]``; repeat an image's entry to ask it several
            texts).
        texts: B texts.
        spatial: read spatial words (:func:`parse` / :func:`select`); ``False`` is the paper's inference.

    The heads and landmarks that spatial words call for are encoded with the texts, in one batch of texts through
    the text encoder; :meth:`segment` then runs the fusion and the mask drawing, which is all that depends on the
    scheme, the threshold and the refinement.

    A head (or landmark) that is itself one of the texts asked about the same image ("the cup on the left" and
    "the cup" in one task) is not segmented a second time: the spatial text's mask is picked from that text's own
    segmentation. So the served mask of "the cup on the left" is, by construction and not by luck of rounding, one
    connected region of the mask served for "the cup" (two passes through a batched text encoder may differ in the
    last bits, and a pixel at the threshold would flip). Rows of ``image`` hold the same image when their entities
    and slot attention are equal.
    """

    def __init__(self, model, image, texts: Sequence[str], spatial: bool = True):
        texts = list(texts)
        self.model, self.count = model, len(texts)
        self.queries = [parse(t) for t in texts] if spatial else [None] * len(texts)
        same_image = _same_image_rows(image)
        # (image, words) -> index in the list segment() draws, for every text segmented so far
        drawn = {(same_image[i], _words(t)): i for i, t in reversed(list(enumerate(texts)))}
        extra: list[tuple[int, str]] = []  # (pair index, text) for each head and landmark not asked already

        def draw(i: int, text: str) -> int:
            key = (same_image[i], _words(text))
            if key not in drawn:
                drawn[key] = len(texts) + len(extra)
                extra.append((i, text))
            return drawn[key]

        # per pair: where its head's and its landmark's segmentations are in the list segment() draws
        self.slots: list[tuple[int | None, int | None]] = []
        for i, query in enumerate(self.queries):
            head = land = None
            if query is not None:
                # a size word alone leaves the text as its own head: its own segmentation serves
                head = i if query.head == _words(texts[i]) else draw(i, query.head)
                if query.landmark is not None:
                    land = draw(i, query.landmark)
            self.slots.append((head, land))
        self.rows = list(range(len(texts))) + [i for i, _ in extra]  # the image each segmented text asks about
        self.same_image = same_image
        self.image = image
        if extra:
            index = torch.tensor(self.rows, device=image.entities.device)
            self.image = type(image)(image.entities[index], image.slot_attn[index], image.grid)  # an ImageEntities
        self.text = model.encode_text(**model.tokenize(texts + [t for _, t in extra]))
        self.unknown_words = [unknown_word_share(model.text_encoder.tokenizer, t) for t in texts]

    def segment(self, sizes: Sequence[tuple[int, int]], guides: Sequence | None = None, **segment_kwargs) -> list:
        """B Segmentations at ``sizes``; ``guides`` and ``segment_kwargs`` (scheme, threshold, refine) as for
        :meth:`SaG.segment <sag.model.SaG.segment>`.

        For a text with spatial words the mask is the region :func:`select` picks from the mask of its ``head``
        (``soft`` is the head's map inside that region); ``fuse_attn``, ``score`` and ``unrefined`` stay those of the
        whole text, so pointing and confidence still describe the model's own reading. The confidence evidence of a
        picked mask is measured on it: ``region_match`` with the head's text, ``landmark_overlap`` with the landmark's
        mask; ``unknown_words`` is the whole text's.
        """
        if len(sizes) != self.count:
            raise ValueError(f"need one size per text, got {len(sizes)} for {self.count} texts")
        for i, rep in enumerate(self.same_image):
            if tuple(sizes[i]) != tuple(sizes[rep]):
                raise ValueError(f"rows {rep} and {i} hold the same image entities but have different sizes "
                                 f"{tuple(sizes[rep])} and {tuple(sizes[i])}")
        segs = self.model.segment(self.image, self.text, [sizes[r] for r in self.rows],
                                  guides=None if guides is None else [guides[r] for r in self.rows],
                                  **segment_kwargs)
        out = [replace(seg, unknown_words=share) for seg, share in zip(segs[: self.count], self.unknown_words)]
        picks = []  # (pair, its head's index in segs) per mask that spatial words picked: region_match is the head's
        for i, (query, (head, land)) in enumerate(zip(self.queries, self.slots)):
            if query is None:
                continue
            h = segs[head]
            lm = segs[land] if land is not None else None
            picked = select(query, h.mask, h.soft, lm.mask if lm else None, lm.soft if lm else None)
            if picked is not None:
                own = out[i].unrefined if out[i].unrefined is not None else out[i].soft
                overlap = (float((picked & lm.mask).sum()) / max(1, int(picked.sum()))) if lm else None
                out[i] = replace(out[i], mask=picked, soft=h.soft * picked, unrefined=own, landmark_overlap=overlap)
                picks.append((i, head))
        if picks:
            heads = [head for _, head in picks]  # row j of self.image and self.text: segmented text j and its image
            rows = torch.tensor(heads, device=self.image.entities.device)
            matches = region_match(self.model.fuse, self.image.entities[rows], self.image.slot_attn[rows],
                                   self.image.grid, [out[i].mask for i, _ in picks],
                                   self.text[torch.tensor(heads, device=self.text.device)])
            for (i, _), match in zip(picks, matches):
                out[i].region_match = match
        return out


def _same_image_rows(image) -> list[int]:
    """For each row of an ImageEntities, the first row holding the same entities and slot attention (itself if
    none does): texts asked about one image share its segmentations."""
    # raw bytes on the host (any dtype, bf16 included), one copy per tensor, rather than a device comparison per pair
    raw = np.concatenate([t.detach().flatten(1).cpu().contiguous().view(torch.uint8).numpy()
                          for t in (image.entities, image.slot_attn)], axis=1)
    first: dict[bytes, int] = {}
    return [first.setdefault(raw[i].tobytes(), i) for i in range(len(image))]


def segment_texts(model, image, texts: Sequence[str], sizes: Sequence[tuple[int, int]],
                  guides: Sequence | None = None, spatial: bool = True, **segment_kwargs) -> list:
    """:meth:`SaG.segment <sag.model.SaG.segment>` for B (image, text) pairs given as strings, reading spatial words
    when ``spatial``: ``TextQueries(model, image, texts, spatial).segment(sizes, guides, **segment_kwargs)``."""
    return TextQueries(model, image, texts, spatial).segment(sizes, guides, **segment_kwargs)
