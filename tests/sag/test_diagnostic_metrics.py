"""Diagnostic metrics (boundary F, pointing, mBO, NNLS) on hand-made masks whose answers are known."""

import numpy as np
import pytest
import torch

from sag.inference import mix_entities, normalised_entity_maps, upsample_and_normalise
from sag.metrics import (
    argmax_segments,
    best_overlaps,
    boundary_f_score,
    boundary_scores,
    dilate_disk,
    mask_boundary,
    mean_best_overlap,
    nonnegative_least_squares,
    pointing_hit,
)


def box(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


# ---- boundary F (DAVIS contour accuracy) ----------------------------------------------------------------------------
def test_boundary_is_the_inner_ring_and_not_the_image_border():
    square = box((8, 8), (2, 6), (2, 6))  # 4 x 4: a ring of 12 pixels around a 2 x 2 interior
    ring = mask_boundary(square)
    assert ring.sum() == 12 and not ring[3:5, 3:5].any() and ring[2, 2] and ring[5, 3]
    assert not mask_boundary(np.ones((5, 5), bool)).any(), "a mask filling the image has no boundary"
    half = box((6, 6), (0, 6), (0, 3))  # left half: the only boundary is column 2
    assert np.array_equal(np.flatnonzero(mask_boundary(half).any(axis=0)), [2])
    # a disk of radius 2 has 13 pixels: (0,0), 4 at 1, 4 at sqrt 2, 4 at 2; (2,1) at sqrt 5 is outside
    dot = np.zeros((9, 9), bool)
    dot[4, 4] = True
    assert dilate_disk(dot, 2.0).sum() == 13 and not dilate_disk(dot, 2.0)[6, 5]


def test_boundary_f_of_a_mask_against_itself_is_one():
    m = box((40, 50), (5, 30), (10, 41))
    assert boundary_scores(m, m) == (1.0, 1.0, 1.0)
    assert boundary_f_score(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0, "no boundary on either side"
    assert boundary_f_score(np.zeros((8, 8)), box((8, 8), (2, 6), (2, 6))) == 0.0, "a missed object"


def test_boundary_f_of_shifted_copies():
    # A vertical edge moved by s columns: every boundary pixel is exactly s away, so F = 1 up to 2 px, then 0.
    half = box((20, 20), (0, 20), (0, 8))
    for shift, expected in ((1, 1.0), (2, 1.0), (3, 0.0)):
        assert boundary_f_score(box((20, 20), (0, 20), (0, 8 + shift)), half) == expected
    # A 20 x 20 square moved right by 3 px (ring of 76 pixels each). Matched pred pixels: 19 of 20 on the top and
    # bottom rows (the last column is 3 px from the old corner), 4 of 18 on the new left column (those within 2 px
    # of the old top/bottom rows), 0 of 18 on the new right column: 42 / 76, and by symmetry recall 42 / 76.
    gt = box((40, 40), (10, 30), (10, 30))
    pred = box((40, 40), (10, 30), (13, 33))
    p, r, f = boundary_scores(pred, gt)
    assert p == pytest.approx(42 / 76) and r == pytest.approx(42 / 76) and f == pytest.approx(42 / 76)
    assert boundary_f_score(pred, gt, tolerance=3.0) > f, "a larger tolerance forgives more"


# ---- pointing --------------------------------------------------------------------------------------------------------
def test_pointing_hit():
    target = box((10, 10), (0, 5), (0, 5))
    soft = np.zeros((10, 10))
    soft[8, 8] = 1.0  # the maximum lies outside the target
    soft[2, 2] = 0.9
    assert pointing_hit(soft, target) == 0.0
    soft[2, 2] = 1.0  # now a tie: one of the two maximal pixels is inside
    assert pointing_hit(torch.from_numpy(soft), target) == 0.5
    soft[8, 8] = 0.0
    assert pointing_hit(soft, target) == 1.0
    assert pointing_hit(np.zeros((10, 10)), target) == pytest.approx(0.25), "a flat map: the target's area share"


# ---- mBO -------------------------------------------------------------------------------------------------------------
def test_one_entity_over_two_same_coloured_instances_gives_mbo_one_half():
    a = box((20, 20), (2, 6), (2, 6))  # two instances of 16 pixels
    b = box((20, 20), (12, 16), (12, 16))
    colour = a | b  # one entity covers both (same colour), another the background
    segments = np.stack([colour, ~colour])
    assert best_overlaps(segments, np.stack([a, b])) == pytest.approx([0.5, 0.5])
    assert mean_best_overlap(segments, np.stack([a, b])) == pytest.approx(0.5)
    perfect = np.stack([a, b, ~(a | b)])
    assert mean_best_overlap(perfect, np.stack([a, b])) == 1.0
    assert mean_best_overlap(torch.from_numpy(perfect), torch.from_numpy(np.stack([a, b]))) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        mean_best_overlap(perfect, np.zeros((0, 20, 20), bool))


def test_argmax_segments_partition_the_image():
    maps = torch.rand(5, 7, 9)
    seg = argmax_segments(maps)
    assert seg.shape == (5, 7, 9) and (seg.sum(0) == 1).all()
    assert torch.equal(seg.float().argmax(0), maps.argmax(0))


# ---- oracle helpers --------------------------------------------------------------------------------------------------
def test_nnls_recovers_a_nonnegative_mix_and_clips_negative_ones():
    rng = np.random.default_rng(0)
    a = rng.random((200, 6))
    w = np.array([0.0, 2.0, 0.5, 0.0, 1.0, 0.0])
    assert nonnegative_least_squares(a, a @ w) == pytest.approx(w, abs=1e-8)
    # b = -column 0: the best non-negative answer is 0 (an unconstrained fit would give -1)
    assert nonnegative_least_squares(a, -a[:, 0]) == pytest.approx(np.zeros(6))


def test_nnls_matches_scipy_on_slot_like_problems():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(1)
    for trial in range(40):
        a = rng.random((rng.integers(20, 300), rng.integers(2, 30)))
        a /= a.sum(1, keepdims=True)  # rows sum to 1, like A_slot
        if trial % 4 == 0:
            a[:, 1] = a[:, 0]  # rank-deficient: the minimiser is not unique, the residual is
        b = (rng.random(len(a)) > 0.7).astype(float)
        ours = nonnegative_least_squares(a, b)
        theirs, _ = scipy_optimize.nnls(a, b, maxiter=10_000)
        assert (ours >= 0).all()
        assert np.sum((a @ ours - b) ** 2) <= np.sum((a @ theirs - b) ** 2) + 1e-9


def test_entity_maps_are_what_max_would_threshold():
    # The oracle entity is an upper bound of MAX only if each entity map is bit for bit the map MAX thresholds.
    torch.manual_seed(0)
    slot_attn = torch.randn(35, 9).softmax(-1)
    maps = normalised_entity_maps(slot_attn, (5, 7), (37, 53))
    for k in range(9):
        assert torch.equal(maps[k], upsample_and_normalise(slot_attn[:, k], (5, 7), (37, 53)))
    # a one-hot mix is that entity's map; positive scale does not matter after min-max
    one_hot = torch.zeros(9)
    one_hot[4] = 3.0
    assert torch.allclose(mix_entities(slot_attn, one_hot, (5, 7), (37, 53)), maps[4], atol=1e-6)
