"""The text-to-mask pipeline (sag/pipeline.py): texts as strings, spatial words read, on top of SaG.segment."""

import numpy as np
import pytest
import torch

from sag.outputs import ImageEntities
from sag.pipeline import TextQueries, segment_texts
from sag.spatial import components
from tests.masks import assert_same_segmentation


def test_segment_texts_is_the_models_segment_without_spatial_words(tiny_model, random_images):
    images = random_images([(48, 64), (40, 40)])
    tiny_model.eval()
    image = tiny_model.encode_image(tiny_model.preprocess(images))
    texts = ["the leftmost red circle", "a dog"]
    sizes = [(48, 64), (40, 40)]
    plain = tiny_model.segment(image, tiny_model.encode_text(**tiny_model.tokenize(texts)), sizes)
    # with spatial words the head "the red circle" joins the batch of texts: the same model, a batch of three
    for spatial in (False, True):
        segs = segment_texts(tiny_model, image, texts, sizes, spatial=spatial)
        assert_same_segmentation(segs[1], plain[1], tiny_model.config.threshold)  # "a dog" has no spatial word
        assert torch.allclose(segs[0].fuse_attn, plain[0].fuse_attn, atol=1e-6)
    segs = segment_texts(tiny_model, image, texts, sizes, spatial=False)
    assert torch.equal(segs[0].mask, plain[0].mask)  # the same batch of texts: the same computation


def test_a_spatial_text_answers_one_region_of_its_heads_mask(tiny_model, random_images):
    """Asked together, the spatial text's mask is one region of the head text's own mask, exactly: the head is not
    segmented a second time (TextQueries reuses the asked text's segmentation)."""
    images = random_images([(48, 64)])
    tiny_model.eval()
    one = tiny_model.encode_image(tiny_model.preprocess(images))
    image = ImageEntities(one.entities.repeat(2, 1, 1), one.slot_attn.repeat(2, 1, 1), one.grid)  # one image, two texts
    texts = ["the leftmost red circle", "The red circle."]
    queries = TextQueries(tiny_model, image, texts, spatial=True)
    assert queries.rows == [0, 1]  # no third row: "the red circle" is asked already
    seg, head = queries.segment([(48, 64)] * 2)
    assert seg.mask.any() and not (seg.mask & ~head.mask).any()  # a part of the head's mask
    assert len(components(seg.mask)) == 1
    regions = components(head.mask)
    lefts = [np.nonzero(r)[1].mean() for r in regions]
    assert np.array_equal(seg.mask.numpy(), regions[int(np.argmin(lefts))])


def test_heads_are_shared_per_image_and_not_across_images(tiny_model, random_images):
    tiny_model.eval()
    image = tiny_model.encode_image(tiny_model.preprocess(random_images([(48, 64), (48, 64)])))
    pair = ImageEntities(image.entities[[0, 1, 0]], image.slot_attn[[0, 1, 0]], image.grid)
    texts = ["the leftmost circle", "the rightmost circle", "the circle on the right"]
    queries = TextQueries(tiny_model, pair, texts, spatial=True)
    # image 0 asks twice about "the circle" (one head row), image 1 once (its own row)
    assert queries.rows == [0, 1, 2, 0, 1]
    assert queries.slots[0][0] == queries.slots[2][0] != queries.slots[1][0]
    with pytest.raises(ValueError, match="same image"):
        queries.segment([(48, 64), (48, 64), (40, 40)])
