"""The diagnostics toolkit (training/diagnostics.py) on hand-made entities; tests/training/test_evaluate.py runs it
through evaluate on the synthetic set."""

import numpy as np
import pytest
import torch

from training.diagnostics import EntityQuality, expression_diagnostics


def _one_hot_slots(labels: np.ndarray, k: int) -> torch.Tensor:
    """A_slot (N, K) of an (h, w) label map: each patch belongs wholly to one entity."""
    return torch.nn.functional.one_hot(torch.from_numpy(labels).flatten(), k).float()


def test_expression_diagnostics_on_a_perfect_entity_that_a_fuse_misses():
    # 8 x 8 grid = image size (bilinear resize to the same size is the identity). Entity 0 is exactly the target,
    # entity 1 another object, entity 2 the background.
    labels = np.full((8, 8), 2)
    labels[1:4, 1:4] = 0
    labels[5:7, 4:8] = 1
    slot_attn = _one_hot_slots(labels, 3)
    target = labels == 0
    fuse = torch.tensor([0.1, 0.8, 0.1])  # the text picks the wrong entity
    soft = torch.from_numpy((labels == 1).astype(np.float32))  # what ours/MAX would give: the other object
    values = expression_diagnostics(slot_attn, (8, 8), fuse, soft, soft >= 0.5, target, 0.5)
    assert values["oracle_entity_IoU"] == 1.0 and values["oracle_nnls_IoU"] == 1.0, "the entities are perfect"
    assert values["afuse_picks_best"] == 0.0, "... the grounding is what fails"
    assert values["pointing"] == 0.0 and values["boundary_F"] == 0.0
    right = expression_diagnostics(slot_attn, (8, 8), torch.tensor([0.8, 0.1, 0.1]),
                                   torch.from_numpy(target.astype(np.float32)), torch.from_numpy(target), target, 0.5)
    assert right["afuse_picks_best"] == 1.0 and right["pointing"] == 1.0 and right["boundary_F"] == 1.0


def test_expression_diagnostics_when_one_entity_covers_two_instances():
    labels = np.full((8, 8), 1)
    labels[1:3, 1:3] = 0  # two 2 x 2 instances of one colour, one entity over both
    labels[5:7, 5:7] = 0
    slot_attn = _one_hot_slots(labels, 2)
    first = np.zeros((8, 8), bool)
    first[1:3, 1:3] = True
    second = np.zeros((8, 8), bool)
    second[5:7, 5:7] = True
    values = expression_diagnostics(slot_attn, (8, 8), torch.tensor([0.9, 0.1]), torch.zeros(8, 8),
                                    torch.zeros(8, 8, dtype=torch.bool), first, 0.5)
    # no entity and no mix of entities separates the two: the best is the union, IoU 4 / 8
    assert values["oracle_entity_IoU"] == pytest.approx(0.5) and values["oracle_nnls_IoU"] == pytest.approx(0.5)
    quality = EntityQuality()
    masks = torch.from_numpy(np.stack([labels == 0, labels == 1]))
    quality.update(slot_attn, (8, 8), masks, [first, second], "instances.json")
    result = quality.compute()
    assert result["mBO"] == pytest.approx(0.5) and result["mBO_threshold"] == pytest.approx(0.5)
    assert result["images"] == 1 and result["instances"] == 2
