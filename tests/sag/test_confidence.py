"""sag.confidence: the per-mask score that the backend sends as a region's ``score``, and the ranking helpers that
measure it."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sag.confidence import (
    FEATURES,
    MODEL_FILE,
    NO_EVIDENCE,
    TreeEnsemble,
    attention_margin,
    fitted_model,
    mask_confidence,
    mask_features,
    match_evidence,
    rank_report,
    spearman,
    unknown_word_share,
    word_count,
)
from sag.outputs import Segmentation
from sag.pipeline import predict

TAU = 0.5
SIDE = 64


def _blob(cy: float, cx: float, sigma: float, side: int = SIDE) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                            indexing="ij")
    return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def _seg(soft: torch.Tensor, fuse: torch.Tensor, unrefined: torch.Tensor | None = None) -> Segmentation:
    soft = (soft - soft.min()) / (soft.max() - soft.min())
    return Segmentation(mask=soft >= TAU, soft=soft, fuse_attn=fuse, score=float(fuse.max()), unrefined=unrefined)


def _peaked_fuse(k: int = 8) -> torch.Tensor:
    return torch.softmax(torch.tensor([6.0] + [0.0] * (k - 1)), 0)


def test_a_peaked_compact_map_scores_above_a_flat_one():
    peaked = _seg(_blob(30, 34, 5.0), _peaked_fuse())
    # a shallow ramp: most of the image is at or above tau, the attention spread over every entity
    ramp = torch.linspace(0, 1, SIDE)[None, :].expand(SIDE, SIDE) ** 0.3
    flat = _seg(ramp + 0.02 * torch.sin(torch.arange(SIDE * SIDE, dtype=torch.float32)).reshape(SIDE, SIDE),
                torch.full((8,), 1 / 8))
    assert flat.mask.float().mean() > 0.5 > peaked.mask.float().mean()
    assert mask_confidence(peaked, TAU) > mask_confidence(flat, TAU)


def test_specks_score_below_one_solid_object():
    fuse = _peaked_fuse()
    solid = _seg(_blob(32, 32, 6.0), fuse)
    specks = torch.zeros(SIDE, SIDE)
    for cy, cx in [(8, 8), (8, 50), (30, 20), (50, 10), (52, 52), (20, 40)]:
        specks = torch.maximum(specks, _blob(cy, cx, 1.5))
    scattered = _seg(specks, fuse)
    assert mask_features(scattered, TAU)["largest"] < 0.5 < mask_features(solid, TAU)["largest"]
    assert mask_confidence(solid, TAU) > mask_confidence(scattered, TAU)


def test_plain_and_refined_masks_that_disagree_score_lower():
    soft = _blob(32, 32, 5.0)
    fuse = _peaked_fuse()
    agreeing = _seg(soft, fuse, unrefined=soft.clone())
    # the refinement moved the mask: the plain map's mask lies half beside it
    disagreeing = _seg(soft, fuse, unrefined=_blob(32, 39, 5.0))
    assert mask_features(agreeing, TAU)["agreement"] == 1.0
    assert mask_features(disagreeing, TAU)["agreement"] < 0.6
    assert mask_confidence(disagreeing, TAU) < mask_confidence(agreeing, TAU)


def test_a_region_left_out_far_away_is_not_a_disagreement():
    """Spatial words keep one region of the plain mask: the other region, far from the served mask, does not count."""
    fuse = _peaked_fuse()
    plain = torch.maximum(_blob(32, 12, 4.0), _blob(32, 52, 4.0))
    picked = _seg(_blob(32, 12, 4.0), fuse, unrefined=plain)
    picked.mask[:, 32:] = False
    assert mask_features(picked, TAU)["agreement"] > 0.9


def test_scores_and_features_lie_in_the_unit_interval_and_repeat(rng):
    for trial in range(20):
        soft = torch.from_numpy(rng.random((40, 56)).astype(np.float32))
        if trial % 2:
            soft = torch.nn.functional.avg_pool2d(soft[None, None], 9, 1, 4)[0, 0]  # smooth blobs
        fuse = torch.softmax(torch.from_numpy(rng.normal(size=6).astype(np.float32)) * trial, 0)
        unrefined = torch.from_numpy(rng.random((40, 56)).astype(np.float32)) if trial % 3 == 0 else None
        seg = _seg(soft, fuse, unrefined)
        features = mask_features(seg, TAU)
        assert set(features) == set(FEATURES)
        assert all(0.0 <= v <= 1.0 for v in features.values()), features
        score = mask_confidence(seg, TAU)
        assert 0.0 <= score <= 1.0
        assert mask_confidence(seg, TAU) == score  # deterministic, bit for bit


def test_an_empty_mask_scores_zero():
    soft = _blob(32, 32, 5.0)
    seg = Segmentation(mask=torch.zeros(SIDE, SIDE, dtype=torch.bool), soft=soft, fuse_attn=_peaked_fuse(), score=1.0)
    assert mask_confidence(seg, TAU) == 0.0


def test_large_maps_are_read_at_a_bounded_size_with_the_same_verdict():
    small = _seg(_blob(30, 34, 5.0), _peaked_fuse())
    big = _seg(_blob(30 * 16, 34 * 16, 5.0 * 16, side=SIDE * 16), _peaked_fuse())
    assert mask_confidence(big, TAU) == pytest.approx(mask_confidence(small, TAU), abs=0.05)


def test_bad_input_is_named():
    seg = _seg(_blob(32, 32, 5.0), _peaked_fuse())
    with pytest.raises(ValueError, match="tau"):
        mask_confidence(seg, 1.5)
    wrong = Segmentation(mask=seg.mask[:10], soft=seg.soft, fuse_attn=seg.fuse_attn, score=1.0)
    with pytest.raises(ValueError, match="mask"):
        mask_features(wrong, TAU)


def test_a_real_segmentation_gets_a_score(tiny_model, random_images):
    images = random_images([(48, 40), (30, 70)])
    segs = predict(tiny_model, images, ["the red circle", "the leftmost square"], refine="guided", spatial=True)
    for seg in segs:
        assert 0.0 <= mask_confidence(seg, tiny_model.config.threshold) <= 1.0


def test_the_margin_is_zero_for_a_tie_and_one_for_one_hot():
    assert attention_margin(torch.full((6,), 1 / 6)) == 0.0
    assert attention_margin(torch.tensor([0.0, 1.0, 0.0, 0.0])) == 1.0
    assert attention_margin(torch.tensor([0.5, 0.3, 0.2])) == pytest.approx(0.2)
    assert attention_margin(torch.tensor([2.0, 2.0, 1.0])) == 0.0  # unnormalised weights: two entities tie
    assert attention_margin(torch.tensor([1.0])) == 0.0  # one entity: nothing was chosen


def _identity_fusion(entities: torch.Tensor, text: torch.Tensor):
    """A stand-in for model.fuse whose embedding is the (single) entity itself: z = e / |e|."""
    return SimpleNamespace(z=F.normalize(entities.mean(1), dim=-1))


def test_region_match_sees_which_object_the_mask_covers():
    """Two entities: the left half of a 4 x 4 grid is entity 0, which points where the text does; the right half
    is entity 1, orthogonal to it. A mask on the left matches the text, one on the right does not."""
    entities = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, K=2, D=2)
    slot_attn = torch.zeros(1, 16, 2)
    columns = torch.arange(16) % 4
    slot_attn[0, columns < 2, 0] = 1.0
    slot_attn[0, columns >= 2, 1] = 1.0
    text = torch.tensor([[3.0, 0.0]])
    left = torch.zeros(32, 32, dtype=torch.bool)
    left[:, :16] = True  # at the image's size (8 pixels a patch): the left half, all of entity 0
    right = left.flip(1)
    def match(mask: torch.Tensor) -> float:
        return match_evidence(_identity_fusion, entities, slot_attn, (4, 4), [mask], text)[0]["region_match"]

    assert match(left) == 1.0
    assert match(right) == 0.0
    assert match(torch.zeros(32, 32, dtype=torch.bool)) == NO_EVIDENCE  # nothing inside: no evidence
    assert match(torch.ones(32, 32, dtype=torch.bool)) == NO_EVIDENCE  # nothing outside
    with pytest.raises(ValueError, match="one mask"):
        match_evidence(_identity_fusion, entities, slot_attn, (4, 4), [left, right], text)


def test_match_evidence_sees_whether_the_mask_holds_the_best_matching_entity_whole():
    """Three entities on a 4 x 4 grid, in columns 0-1, 2 and 3. The text points along entity 0, away from entity 1;
    entity 2 is half-way. A mask over columns 0-1 holds the best-matching entity whole; one over column 0 holds half
    of it; one over column 2 holds an entity that matches worse."""
    entities = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, K=3, D=2)
    slot_attn = torch.zeros(1, 16, 3)
    columns = torch.arange(16) % 4
    slot_attn[0, columns < 2, 0] = 1.0
    slot_attn[0, columns == 2, 1] = 1.0
    slot_attn[0, columns == 3, 2] = 1.0
    text = torch.tensor([[2.0, 0.0]])

    def evidence(cols: slice) -> dict:
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[:, cols] = True  # 8 pixels a patch
        return match_evidence(_identity_fusion, entities, slot_attn, (4, 4), [mask], text)[0]

    whole, half, wrong = evidence(slice(0, 16)), evidence(slice(0, 8)), evidence(slice(16, 24))
    assert whole["entity_gap"] == half["entity_gap"] == 1.0  # the mask's main entity is the best match
    assert wrong["entity_gap"] == pytest.approx(0.5)  # cosine 0 against 1 for the best: 1 + (0 - 1) / 2
    assert whole["entity_inside"] == 1.0 and half["entity_inside"] == pytest.approx(0.5)
    assert wrong["region_match"] < 0.5 < whole["region_match"]
    # the whole image matches the text as the mean entity does: z = normalise(mean of the three)
    mean = F.normalize(entities.mean(1), dim=-1)[0]
    assert whole["pair_match"] == pytest.approx(0.5 + float(mean[0]) / 2)
    for found in (whole, half, wrong):
        assert set(found) == {"region_match", "pair_match", "entity_inside", "entity_gap"}
        assert all(0.0 <= v <= 1.0 for v in found.values())


def test_a_mask_on_the_object_the_text_matches_scores_higher():
    seg = _seg(_blob(30, 34, 5.0), _peaked_fuse())
    assert mask_features(seg, TAU)["region_match"] == NO_EVIDENCE  # built without the evidence
    matched, unmatched = replace(seg, region_match=0.9), replace(seg, region_match=0.2)
    assert mask_confidence(matched, TAU) > mask_confidence(seg, TAU) > mask_confidence(unmatched, TAU)
    on_landmark = replace(seg, landmark_overlap=1.0)
    assert mask_confidence(on_landmark, TAU) < mask_confidence(seg, TAU)


def test_a_text_with_unknown_words_scores_lower(tiny_model):
    tokenizer = tiny_model.text_encoder.tokenizer
    assert unknown_word_share(tokenizer, "the red circle on the left") == 0.0
    assert unknown_word_share(tokenizer, "the quokka") == 0.5  # the tiny vocabulary spells it in characters
    assert unknown_word_share(tokenizer, "?!") == 0.0
    seg = _seg(_blob(30, 34, 5.0), _peaked_fuse())
    assert mask_confidence(replace(seg, unknown_words=0.5), TAU) == pytest.approx(0.5 * mask_confidence(seg, TAU))
    assert mask_confidence(replace(seg, unknown_words=1.0), TAU) == 0.0


def test_served_segmentations_carry_the_evidence(tiny_model, random_images):
    images = random_images([(48, 40)] * 3)
    texts = ["the red circle", "the square above the blue star", "the leftmost zyxwv"]
    segs = predict(tiny_model, images, texts, refine="guided", spatial=True)
    for seg in segs:
        for value in (seg.region_match, seg.pair_match, seg.entity_inside, seg.entity_gap):
            assert 0.0 <= value <= 1.0
    assert [seg.word_count for seg in segs] == [3, 6, 3]
    assert segs[0].landmark_overlap is None and segs[0].unknown_words == 0.0
    assert segs[1].landmark_overlap is None or 0.0 <= segs[1].landmark_overlap <= 1.0
    assert segs[2].unknown_words == pytest.approx(1 / 3)  # "zyxwv" of "the leftmost zyxwv"
    again = predict(tiny_model, images, texts, refine="guided", spatial=True)
    assert [s.region_match for s in again] == [s.region_match for s in segs]  # deterministic


def test_spearman_and_the_review_list():
    iou = [0.9, 0.1, 0.5, 0.0, 0.8, 0.2, 0.95, 0.05, 0.6, 0.4]
    assert spearman(iou, iou) == pytest.approx(1.0)
    assert spearman(iou, [-v for v in iou]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [0.1, 0.5, 0.9]) == 0.0  # a constant score ranks nothing
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties share their mean rank
    report = rank_report(iou, iou)  # a perfect score: the lowest 20 % are the two worst masks
    assert (report["review_count"], report["review_iou_below_0.3"], report["all_iou_below_0.3"]) == (2, 2, 4)
    assert rank_report([-v for v in iou], iou)["review_iou_below_0.3"] == 0
    with pytest.raises(ValueError):
        rank_report([0.1, 0.2], [0.3])


def test_word_count_counts_words_not_punctuation():
    assert word_count("the man's hat, on the left!") == 6
    assert word_count("?!") == 0


def _stump(feature: int, threshold: float, low: float, high: float) -> dict:
    """One depth-1 tree: ``low`` when the feature is at most ``threshold``, else ``high``."""
    return {"feature": [feature, -2, -2], "threshold": [threshold, -2.0, -2.0], "left": [1, -1, -1],
            "right": [2, -1, -1], "value": [0.0, low, high]}


def test_a_tree_ensemble_scores_by_its_splits_and_round_trips():
    fill = FEATURES.index("fill")
    leaf = {"feature": [-2], "threshold": [-2.0], "left": [-1], "right": [-1], "value": [0.1]}  # a one-node tree
    model = TreeEnsemble.from_dict({"features": list(FEATURES), "base": 0.5, "rate": 0.5,
                                    "trees": [_stump(fill, 0.25, 0.4, -0.4), leaf, _stump(fill, 0.5, 0.0, -2.0)]})
    x = np.zeros((4, len(FEATURES)))
    x[:, fill] = [0.1, 0.25, 0.3, 0.9]
    # 0.5 + 0.5 * (0.4 + 0.1 + 0) = 0.75; at the threshold a row goes left; 0.5 + 0.5 * (-0.4 + 0.1) = 0.35;
    # clipped at 0
    assert model.predict(x).tolist() == pytest.approx([0.75, 0.75, 0.35, 0.0])
    again = TreeEnsemble.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.predict(x).tolist() == model.predict(x).tolist()
    with pytest.raises(ValueError, match="features"):
        model.predict(x[:, :3])


def test_the_shipped_model_is_over_the_measured_features(tmp_path):
    model = fitted_model()
    assert model.features == FEATURES and len(model.trees) > 0
    other = tmp_path / "model.json"
    other.write_text(json.dumps({**model.to_dict(), "features": list(FEATURES[:-1])}))
    with pytest.raises(ValueError, match="refit it"):
        fitted_model(other)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(MODEL_FILE.read_text()[:1000])
    with pytest.raises(ValueError, match="truncated.json is not a confidence model"):
        fitted_model(truncated)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        fitted_model(tmp_path / "absent.json")
    assert MODEL_FILE.is_file()


def test_the_shipped_score_never_falls_as_evidence_for_the_mask_rises(rng):
    """The fit is constrained monotone (bench/confidence_benchmark.py, MONOTONE): sweeping one feature over [0, 1]
    with the others held at random values, the score rises (or stays) with the evidence for the mask and falls (or
    stays) with the evidence against it."""
    model = fitted_model()
    monotone = model.fitted_on["monotone"]
    assert monotone["region_match"] == 1 and monotone["landmark_overlap"] == -1
    sweep = np.linspace(0.0, 1.0, 41)
    for name, sign in monotone.items():
        column = FEATURES.index(name)
        for _ in range(20):
            rows = np.repeat(rng.random((1, len(FEATURES))), len(sweep), axis=0)
            rows[:, column] = sweep
            steps = np.diff(model.predict(rows)) * sign
            assert (steps >= -1e-12).all(), f"{name}: the score moves against its sign {sign}"
