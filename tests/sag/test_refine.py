"""Edge-aware mask refinement (sag/refine.py): invariants, edges it should find, and its use by SaG.segment."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sag import SaG, SaGConfig, tiny_config
from sag.metrics import boundary_f_score, iou
from sag.pipeline import predict
from sag.refine import REFINE_METHODS, _box_mean, guided_filter, refine


def _blurry_square(size=256, grid=8, box=(70, 190)):
    """A square object (dark background, bright square from box[0] to box[1] on both axes, edges not on the patch
    grid) and the soft map a patch-grid model would give for it: the square's coverage per cell, bilinearly
    upsampled and min-max normalised (a blob whose edge is smeared over a cell). Returns image (H, W, 3) uint8,
    soft (H, W), truth (H, W) bool."""
    lo, hi = box
    truth = np.zeros((size, size), dtype=bool)
    truth[lo:hi, lo:hi] = True
    image = np.full((size, size, 3), 30, dtype=np.uint8)
    image[truth] = (230, 200, 60)
    coverage = F.adaptive_avg_pool2d(torch.from_numpy(truth).float()[None, None], grid)
    coverage = F.avg_pool2d(F.pad(coverage, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # attention is blurry
    soft = F.interpolate(coverage, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    soft = (soft - soft.min()) / (soft.max() - soft.min())
    return image, soft, truth


def test_box_mean_matches_brute_force_window_means():
    x = torch.rand(2, 9, 13, generator=torch.Generator().manual_seed(0))
    for r in (1, 3, 20):  # 20: wider than the image, every window is the whole axis
        expected = torch.zeros_like(x)
        for i in range(9):
            for j in range(13):
                expected[:, i, j] = x[:, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean(dim=(1, 2))
        torch.testing.assert_close(_box_mean(x, r), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", REFINE_METHODS)
def test_output_shape_range_and_determinism(method, rng):
    # a smooth random picture (SLIC on pure per-pixel noise finds a single segment, as no photo would)
    coarse = torch.from_numpy(rng.integers(0, 256, size=(1, 3, 6, 9)).astype(np.float32))
    image = F.interpolate(coarse, size=(45, 70), mode="bilinear")[0].permute(1, 2, 0).round().byte().numpy()
    # a ramp (so every method has something to keep) plus noise
    ramp = torch.linspace(0, 1, 70).expand(45, 70)
    soft = (0.8 * ramp + 0.2 * torch.rand(45, 70, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    first = refine(soft, image, method, cell=9)
    second = refine(soft, image, method, cell=9)
    assert first.shape == (45, 70) and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, second), "the same inputs give the same map"
    if method != "none":  # min-max normalised like the unrefined map, so tau keeps its meaning
        assert float(first.min()) == 0.0 and float(first.max()) == pytest.approx(1.0)


def test_none_is_the_identity(rng):
    soft = torch.rand(20, 30)
    assert refine(soft, rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8), "none") is soft


def test_a_flat_map_stays_flat_and_finite(rng):
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    for method in ("guided", "slic"):
        out = refine(torch.full((32, 32), 0.25), image, method, cell=8)
        assert torch.isfinite(out).all() and torch.allclose(out, torch.full((32, 32), 0.25), atol=1e-4)


@pytest.mark.parametrize("method", ["guided", "slic"])
def test_a_map_already_on_a_sharp_image_edge_stays_there(method):
    # Two flat regions split at column 83 (not a multiple of any cell); the soft map is exactly the left region.
    image = np.zeros((96, 160, 3), dtype=np.uint8)
    image[:, :83] = (200, 60, 40)
    image[:, 83:] = (40, 90, 200)
    truth = np.zeros((96, 160), dtype=bool)
    truth[:, :83] = True
    out = refine(torch.from_numpy(truth).float(), image, method, cell=16)
    # the refinement may not move an edge that the image confirms
    assert np.array_equal((out >= 0.5).numpy(), truth)


def test_guided_refinement_moves_a_blurry_blob_onto_the_square():
    image, soft, truth = _blurry_square()
    plain = (soft >= 0.5).numpy()
    refined = (refine(soft, image, "guided", cell=32) >= 0.5).numpy()
    # bilinear upsampling draws the edge on the patch grid; the guided filter pulls it to the image's edge
    assert iou(refined, truth) > iou(plain, truth) + 0.1  # about 0.79 -> 1.0
    assert boundary_f_score(refined, truth) > boundary_f_score(plain, truth) + 0.3  # about 0.42 -> 1.0
    assert iou(refined, truth) > 0.97


def test_slic_pooling_follows_the_square_too():
    image, soft, truth = _blurry_square()
    plain = (soft >= 0.5).numpy()
    refined = (refine(soft, image, "slic", cell=32) >= 0.5).numpy()
    assert boundary_f_score(refined, truth) > boundary_f_score(plain, truth)


def test_fast_guided_filter_on_a_large_image_agrees_with_the_exact_one():
    image, soft, truth = _blurry_square(size=600, grid=12, box=(150, 430))
    exact = guided_filter(soft, image, radius=50, subsample=1, max_side=10_000)
    fast = guided_filter(soft, image, radius=50, max_side=256)  # subsampled by ~6, applied at full size in bands
    assert fast.shape == exact.shape == (600, 600)
    agree = ((fast >= 0.5) == (exact >= 0.5)).float().mean()
    assert agree > 0.995
    assert boundary_f_score((refine(soft, image, "guided", cell=50) >= 0.5).numpy(), truth) > 0.9


def test_bad_arguments_are_refused(rng):
    soft = torch.rand(10, 10)
    with pytest.raises(ValueError, match="unknown mask refinement"):
        refine(soft, rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8), "crf")
    with pytest.raises(ValueError, match="differ in size"):
        refine(soft, rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8), "guided")
    with pytest.raises(ValueError, match="mask_refine must be one of"):
        tiny_config(mask_refine="crf")


def test_old_configs_load_without_refinement():
    data = tiny_config().to_dict()
    del data["mask_refine"]  # a checkpoint written before the field existed
    assert SaGConfig.from_dict(data).mask_refine == "none"


def test_segment_refines_with_the_guides_and_keeps_the_bilinear_map(tiny_model, random_images):
    tiny_model.eval()
    images = random_images([(40, 56), (33, 33)])
    texts = ["the red circle", "the blue square"]
    plain = predict(tiny_model, images, texts)  # config.mask_refine is "none"
    refined = predict(tiny_model, images, texts, refine="guided")
    for p, r in zip(plain, refined):
        assert p.unrefined is None
        torch.testing.assert_close(r.unrefined, p.soft)
        assert r.soft.shape == p.soft.shape and not torch.equal(r.soft, p.soft)
        assert torch.equal(r.mask, r.soft >= tiny_model.config.threshold)
    # the config's choice applies when the caller does not name one, and then the images are required
    model = SaG(tiny_model.config.replace(mask_refine="guided"))
    model.load_state_dict(tiny_model.state_dict())
    via_config = predict(model, images, texts)
    for a, b in zip(via_config, refined):
        torch.testing.assert_close(a.soft, b.soft)
    entities = model.encode_image(model.preprocess(images))
    text = model.encode_text(**model.tokenize(texts))
    with pytest.raises(ValueError, match="needs the images"):
        model.segment(entities, text, [(40, 56), (33, 33)])
    assert model.segment(entities, text, [(40, 56), (33, 33)], refine="none")[0].unrefined is None


def _tiny_sam():
    """A randomly initialised miniature SAM (transformers) at 128 px, and its processor: the code path only."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=128, patch_size=16, window_size=4, global_attn_indexes=[1], num_pos_feats=16,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=32),
    )
    processor = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 128},
                                                               pad_size={"height": 128, "width": 128}))
    return SamModel(config), processor


def test_promptable_refiner_prompts_from_the_mask_and_returns_a_map_at_the_image_size(tiny_model, random_images,
                                                                                      monkeypatch):
    """Quality unmeasured (no SAM weights here): this checks the prompts and the shapes, with a random tiny SAM."""
    from sag.refine import PromptableRefiner

    sam, processor = _tiny_sam()
    refiner = PromptableRefiner(sam, processor)
    seen = []
    original = type(processor).__call__

    def spy(self, *args, **kwargs):  # records the prompts the refiner gives
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", spy)
    soft = torch.zeros(50, 80)
    soft[10:30, 20:60] = 0.8
    soft[20, 40] = 1.0
    out = refiner(soft, np.zeros((50, 80, 3), dtype=np.uint8))
    assert out.shape == (50, 80) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    [call] = seen
    assert call["input_boxes"] == [[[20.0, 10.0, 60.0, 30.0]]]  # x0, y0, x1, y1 of soft >= 0.5
    assert call["input_points"] == [[[[40.5, 20.5]]]] and call["input_labels"] == [[[1]]]  # the peak, positive
    empty = torch.full((50, 80), 0.2)
    assert refiner(empty, np.zeros((50, 80, 3), dtype=np.uint8)) is empty  # no mask, no prompt: unchanged
    # through SaG.segment, as a refine= callable
    images = random_images([(40, 56)])
    [seg] = predict(tiny_model, images, ["the red circle"], refine=refiner)
    assert seg.soft.shape == (40, 56) and seg.unrefined is not None
    assert torch.equal(seg.mask, seg.soft >= tiny_model.config.threshold)
