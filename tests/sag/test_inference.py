"""Mask inference: determinism, shapes at the original size, the ablation schemes, save -> load identity."""

import pytest
import torch

from sag import combine_attention
from sag.inference import upsample_and_normalise
from sag.pipeline import predict
from tests.masks import assert_same_segmentation


def test_inference_is_deterministic_and_at_original_size(tiny_model, random_images):
    images = random_images([(50, 70), (33, 41)])
    texts = ["the small red circle", "the star left of the yellow square"]
    first = predict(tiny_model, images, texts)
    second = predict(tiny_model, images, texts)
    for a, b, size in zip(first, second, [(50, 70), (33, 41)]):
        assert a.mask.shape == size and a.mask.dtype == torch.bool
        assert torch.equal(a.mask, b.mask) and torch.equal(a.soft, b.soft)
        assert a.soft.min() == 0 and a.soft.max() == pytest.approx(1.0, abs=1e-4)
        assert torch.equal(a.mask, a.soft >= tiny_model.config.threshold)
        assert a.score == pytest.approx(float(a.fuse_attn.max()))


def test_training_mode_samples_fresh_slot_noise(tiny_model):
    slots = tiny_model.entity.slots
    slots.train()
    assert not torch.equal(slots(1), slots(1))
    slots.eval()
    assert torch.equal(slots(1), slots(1))


def test_schemes_follow_their_definitions():
    torch.manual_seed(0)
    slot_attn = torch.rand(2, 6, 4).softmax(dim=-1)
    fuse = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.05, 0.05, 0.1, 0.8]])
    ours = combine_attention(slot_attn, fuse, "ours")
    torch.testing.assert_close(ours[0], (slot_attn[0] * fuse[0]).sum(-1))
    torch.testing.assert_close(combine_attention(slot_attn, fuse, "max")[1], slot_attn[1, :, 3])
    torch.testing.assert_close(combine_attention(slot_attn, fuse, "min")[0], slot_attn[0, :, 0])
    torch.testing.assert_close(combine_attention(slot_attn, fuse, "avg"), slot_attn.mean(-1))
    with pytest.raises(ValueError, match="unknown inference scheme"):
        combine_attention(slot_attn, fuse, "median")


def test_upsampling_keeps_the_peak_where_it_was():
    scores = torch.zeros(4, 4)
    scores[0, 3] = 1.0  # top-right patch
    soft = upsample_and_normalise(scores.flatten(), (4, 4), (40, 80))
    assert soft.shape == (40, 80)
    row, col = divmod(int(soft.argmax()), 80)
    assert row < 10 and col >= 60


def test_segment_checks_batch_sizes(tiny_model, random_images):
    image = tiny_model.encode_image(tiny_model.preprocess(random_images([(20, 20)])))
    text = tiny_model.encode_text(**tiny_model.tokenize(["a", "b"]))
    with pytest.raises(ValueError, match="as many images, texts and sizes"):
        tiny_model.segment(image, text, [(20, 20), (20, 20)])


def test_cached_image_side_serves_many_texts(tiny_model, random_images):
    """One encode_image, repeated for several texts, equals encoding the image once per text."""
    tiny_model.eval()
    [img] = random_images([(30, 30)])
    texts = ["red", "the blue square at the top", "star"]
    cached = tiny_model.encode_image(tiny_model.preprocess([img]))
    repeated = type(cached).cat([cached[0]] * 3)
    text = tiny_model.encode_text(**tiny_model.tokenize(texts))
    via_cache = tiny_model.segment(repeated, text, [(30, 30)] * 3)
    direct = predict(tiny_model, [img] * 3, texts)
    # Equal up to float reordering between batch sizes (min-max normalisation magnifies it a little).
    for a, b in zip(via_cache, direct):
        assert_same_segmentation(a, b, tiny_model.config.threshold)


def test_entity_maps_have_one_map_per_slot(tiny_model, random_images):
    image = tiny_model.encode_image(tiny_model.preprocess(random_images([(30, 45)])))
    maps = tiny_model.entity_maps(image, 0, (30, 45))
    assert maps.shape == (tiny_model.config.num_slots, 30, 45)
