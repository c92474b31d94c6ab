"""Training on the phrases spatial words make of the texts (training/phrases.py)."""

from __future__ import annotations

from training.datasets.base import Expression, ReferringDataset
from training.phrases import spatial_phrases


def _pairs(*items: tuple[str, str]) -> ReferringDataset:
    return ReferringDataset([Expression(image, text, image, f"r{i}", "train") for i, (image, text) in
                             enumerate(items)], "project", with_masks=False)


def test_a_relation_gives_its_head_and_its_landmark_as_pairs_of_the_same_image():
    out = spatial_phrases(_pairs(("a.png", "the small teal hexagon left of the pink cross")))
    assert [(e.image, e.text) for e in out.expressions] == [("a.png", "the small teal hexagon"),
                                                             ("a.png", "the pink cross")]
    assert out.expressions[1].ref_id == "r0/landmark" and not out.with_masks


def test_position_words_are_dropped_and_plain_texts_stay():
    out = spatial_phrases(_pairs(("a.png", "the leftmost red circle"), ("b.png", "the dog with a red hat")))
    assert [e.text for e in out.expressions] == ["the red circle", "the dog with a red hat"]


def test_a_phrase_an_image_already_has_is_kept_once_but_other_images_keep_theirs():
    out = spatial_phrases(_pairs(("a.png", "the red circle on the left"), ("a.png", "the rightmost red circle"),
                                 ("a.png", "the star above the red circle"), ("b.png", "the red circle")))
    assert [(e.image, e.text) for e in out.expressions] == [("a.png", "the red circle"), ("a.png", "the star"),
                                                             ("b.png", "the red circle")]
