"""Texts as strings -> masks: the inference pipeline above the model (beyond the paper).

The paper's inference is :meth:`SaG.segment <sag.model.SaG.segment>`: text features in, one mask per (image, text)
pair out. Serving, evaluation and the benchmarks start from strings instead, and read spatial words
(:mod:`sag.spatial`: "the leftmost ...", "... above the ...") that no loss over image-text pairs can teach. This
module is that path, and the one place that calls both the model and the spatial words:

    images --SaG.encode_image--> ImageEntities --TextQueries(texts)--> heads / landmarks added, texts encoded once
           --TextQueries.segment--> SaG.segment per text --sag.spatial.select--> one region per spatial text

* :class:`TextQueries`: B texts about B images, read and encoded once, then segmented with any scheme, threshold or
  refinement (evaluation draws several schemes from one encoding).
* :func:`segment_texts`: the same in one call (the backend's predictor, the benchmarks).
* :func:`predict`: images and texts end to end, the quick start.

The model (:mod:`sag.model`) imports nothing of this module: the pipeline calls the model, never the other way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from .confidence import match_evidence, unknown_word_share, word_count
from .model import SaG
from .outputs import ImageEntities, Segmentation
from .preprocess import ImageLike, image_size
from .spatial import normalise_words, parse, select

# A mask refinement as SaG.segment takes it: a sag.refine method name, or soft (H, W), image -> soft (H, W).
Refinement = str | Callable[[torch.Tensor, ImageLike], torch.Tensor]


class TextQueries:
    """B texts about B images, read and encoded once, to segment with any scheme or refinement.

    Args:
        model: the SaG model that encodes the texts and draws the masks.
        image: ImageEntities of B images (entry i answers ``texts[i]``; repeat an image's entry to ask it several
            texts).
        texts: B texts.
        spatial: read spatial words (:func:`sag.spatial.parse` / :func:`sag.spatial.select`); ``False`` is the
            paper's inference.

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

    def __init__(self, model: SaG, image: ImageEntities, texts: Sequence[str], spatial: bool = True):
        texts = list(texts)
        self.model, self.count = model, len(texts)
        self.queries = [parse(t) for t in texts] if spatial else [None] * len(texts)
        same_image = _same_image_rows(image)
        # (image, words) -> index in the list segment() draws, for every text segmented so far
        drawn = {(same_image[i], normalise_words(t)): i for i, t in reversed(list(enumerate(texts)))}
        extra: list[tuple[int, str]] = []  # (pair index, text) for each head and landmark not asked already

        def draw(i: int, text: str) -> int:
            key = (same_image[i], normalise_words(text))
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
                head = i if query.head == normalise_words(texts[i]) else draw(i, query.head)
                if query.landmark is not None:
                    land = draw(i, query.landmark)
            self.slots.append((head, land))
        self.rows = list(range(len(texts))) + [i for i, _ in extra]  # the image each segmented text asks about
        self.same_image = same_image
        self.image = image
        if extra:
            index = torch.tensor(self.rows, device=image.entities.device)
            self.image = ImageEntities(image.entities[index], image.slot_attn[index], image.grid)
        self.text = model.encode_text(**model.tokenize(texts + [t for _, t in extra]))
        self.unknown_words = [unknown_word_share(model.text_encoder.tokenizer, t) for t in texts]
        self.word_counts = [word_count(t) for t in texts]

    def segment(self, sizes: Sequence[tuple[int, int]], guides: Sequence[ImageLike] | None = None,
                scheme: str = "ours", threshold: float | None = None,
                refine: Refinement | None = None) -> list[Segmentation]:
        """B Segmentations at ``sizes``; ``guides``, ``scheme``, ``threshold`` and ``refine`` as for
        :meth:`SaG.segment <sag.model.SaG.segment>`.

        For a text with spatial words the mask is the region :func:`sag.spatial.select` picks from the mask of its
        ``head`` (``soft`` is the head's map inside that region); ``fuse_attn``, ``score`` and ``unrefined`` stay
        those of the whole text, so pointing and confidence still describe the model's own reading.

        Each mask also carries the evidence :mod:`sag.confidence` scores it with, measured on the mask served:
        :func:`sag.confidence.match_evidence` with the text (for a picked region, with its head's text: the words
        that name the object), ``landmark_overlap`` with the landmark's mask (relations), ``unknown_words`` and
        ``word_count`` of the whole text.
        """
        if len(sizes) != self.count:
            raise ValueError(f"need one size per text, got {len(sizes)} for {self.count} texts")
        for i, rep in enumerate(self.same_image):
            if tuple(sizes[i]) != tuple(sizes[rep]):
                raise ValueError(f"rows {rep} and {i} hold the same image entities but have different sizes "
                                 f"{tuple(sizes[rep])} and {tuple(sizes[i])}")
        segs = self.model.segment(self.image, self.text, [sizes[r] for r in self.rows],
                                  guides=None if guides is None else [guides[r] for r in self.rows],
                                  scheme=scheme, threshold=threshold, refine=refine)
        out = [replace(seg, unknown_words=share, word_count=words)
               for seg, share, words in zip(segs[: self.count], self.unknown_words, self.word_counts)]
        matched = list(range(self.count))  # per pair: the segmented text whose words match_evidence reads
        for i, (query, (head, land)) in enumerate(zip(self.queries, self.slots)):
            if query is None:
                continue
            h = segs[head]
            lm = segs[land] if land is not None else None
            picked = select(query, h.mask, h.soft, lm.mask if lm else None, lm.soft if lm else None)
            if picked is not None:
                own = out[i].unrefined if out[i].unrefined is not None else out[i].soft
                overlap = float((picked & lm.mask).sum()) / max(1, int(picked.sum())) if lm else None
                out[i] = replace(out[i], mask=picked, soft=h.soft * picked, unrefined=own, landmark_overlap=overlap)
                matched[i] = head
        if out:
            rows = torch.tensor(matched, device=self.image.entities.device)
            evidence = match_evidence(self.model.fuse, self.image.entities[rows], self.image.slot_attn[rows],
                                      self.image.grid, [seg.mask for seg in out], self.text[rows.to(self.text.device)])
            out = [replace(seg, **found) for seg, found in zip(out, evidence)]
        return out


def _same_image_rows(image: ImageEntities) -> list[int]:
    """For each row of an ImageEntities, the first row holding the same entities and slot attention (itself if
    none does): texts asked about one image share its segmentations."""
    # raw bytes on the host (any dtype, bf16 included), one copy per tensor, rather than a device comparison per pair
    raw = np.concatenate([t.detach().flatten(1).cpu().contiguous().view(torch.uint8).numpy()
                          for t in (image.entities, image.slot_attn)], axis=1)
    first: dict[bytes, int] = {}
    return [first.setdefault(raw[i].tobytes(), i) for i in range(len(image))]


def segment_texts(model: SaG, image: ImageEntities, texts: Sequence[str], sizes: Sequence[tuple[int, int]],
                  guides: Sequence[ImageLike] | None = None, spatial: bool = True, scheme: str = "ours",
                  threshold: float | None = None, refine: Refinement | None = None) -> list[Segmentation]:
    """:meth:`SaG.segment <sag.model.SaG.segment>` for B (image, text) pairs given as strings, reading spatial words
    when ``spatial``: ``TextQueries(model, image, texts, spatial).segment(sizes, guides, scheme, threshold, refine)``.

    ``image`` holds B rows (entities (B, K, D), A_slot (B, N, K)); ``sizes`` the B original (H, W); returns B
    Segmentations, mask (H, W) bool each."""
    return TextQueries(model, image, texts, spatial).segment(sizes, guides, scheme=scheme, threshold=threshold,
                                                             refine=refine)


@torch.no_grad()
def predict(model: SaG, images: Sequence[ImageLike], texts: Sequence[str], scheme: str = "ours",
            refine: Refinement | None = None, spatial: bool | None = None) -> list[Segmentation]:
    """Image i with text i, end to end: one Segmentation per pair at the image's own (H, W). Puts the model in eval
    mode (deterministic slots).

    Args:
        model: the SaG model.
        images: B images (PIL or (H, W, 3) uint8), any size.
        texts: B texts.
        scheme: ``ours`` (A_slot . A_fuse) or an ablation (``max``, ``avg``, ``min``).
        refine: the mask refinement (default ``model.config.mask_refine``), guided by the images themselves.
        spatial: read spatial words (:mod:`sag.spatial`; default ``model.config.spatial_words``).
    """
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images and {len(texts)} texts")
    model.eval()
    image = model.encode_image(model.preprocess(images))
    return segment_texts(model, image, list(texts), [image_size(im) for im in images], guides=images,
                         spatial=model.config.spatial_words if spatial is None else spatial, scheme=scheme,
                         refine=refine)
