"""Training texts as the served model reads them: the phrases :mod:`sag.spatial` hands to the model.

With spatial words on, the backend never asks the model for "the small teal hexagon left of the pink cross" as a
whole: :func:`sag.spatial.parse` splits it into the head ("the small teal hexagon"), which the model segments, and
a landmark ("the pink cross"), which it segments too, and the cue then picks among the head's regions. So a
fine-tune that teaches the project's words can train on those phrases: each text becomes its head, and each
landmark one more text about the same image (a relation text names two things the image holds). The position words
themselves are left out: no loss over image-text pairs can teach what they mean (sag/spatial.py says why), and they
add words a head never holds.
"""

from __future__ import annotations

from dataclasses import replace

from sag.spatial import parse

from .datasets.base import Expression, ReferringDataset


def spatial_phrases(pairs: ReferringDataset) -> ReferringDataset:
    """``pairs`` with each text replaced by the phrases spatial words make of it: its head, and its landmark as one
    more pair of the same image. A text without spatial words stays as it is; a phrase an image already has with
    another text is kept once."""
    out: list[Expression] = []
    seen: set[tuple[str, str]] = set()
    for expr in pairs.expressions:
        query = parse(expr.text)
        phrases = [expr.text] if query is None else [query.head, *([query.landmark] if query.landmark else [])]
        for i, phrase in enumerate(phrases):
            if (expr.image, phrase) in seen:
                continue
            seen.add((expr.image, phrase))
            out.append(replace(expr, text=phrase, ref_id=expr.ref_id if i == 0 else f"{expr.ref_id}/landmark"))
    return ReferringDataset(out, pairs.name, pairs.with_masks, pairs.image_loader)
