"""Keeping entity discovery's grouping near a reference while it trains (sag.losses.grouping_loss,
SaG.forward's grouping_reference): the reference must start from the same slot sample, or the comparison is noise."""

import copy

import pytest
import torch

from sag import SaG, tiny_config
from sag.losses import grouping_loss


def _batch(model: SaG, batch: int = 3):
    ids = torch.randint(5, 100, (batch, 6))
    return dict(pixels=None, input_ids=ids, attention_mask=torch.ones_like(ids),
                features=torch.randn(batch, 16, model.image_encoder.out_dim), grid=(4, 4))


def test_grouping_loss_is_zero_for_the_same_assignment_and_grows_as_it_moves():
    attn = torch.softmax(torch.randn(2, 16, 8), dim=-1)
    assert grouping_loss(attn, attn).abs().item() < 1e-6
    moved = torch.softmax(torch.randn(2, 16, 8) * 3, dim=-1)
    assert grouping_loss(attn, moved) > 0.01


def test_given_noise_the_initial_slots_are_the_same_in_train_and_eval_mode():
    slots = SaG(tiny_config()).entity.slots
    noise = slots.sample_noise(2)
    assert noise.shape == (2, slots.num_slots, slots.mu.shape[-1])
    assert torch.equal(slots.train()(2, noise), slots.eval()(2, noise))
    assert not torch.equal(slots.eval()(2), slots.eval()(2, noise))  # without it: the fixed eval draw


@pytest.mark.parametrize("weight", [0.0, 5.0])
def test_a_copy_of_its_own_entity_discovery_groups_alike_and_the_loss_adds_the_weighted_term(weight):
    torch.manual_seed(0)
    model = SaG(tiny_config(dropout=0.0)).train()
    reference = copy.deepcopy(model.entity).requires_grad_(False).eval()
    inputs = _batch(model)
    same = model(**inputs, grouping_reference=reference, grouping_weight=weight)
    # Fresh slot noise in train mode: only a shared draw makes the two assignments equal.
    assert same.grouping.abs().item() < 1e-6
    with torch.no_grad():
        model.entity.input_proj.weight.mul_(3.0)
    moved = model(**inputs, grouping_reference=reference, grouping_weight=weight)
    assert moved.grouping > 1e-3
    torch.testing.assert_close(moved.loss, moved.c3 + model.config.recon_weight * moved.recon
                               + weight * moved.grouping)
    assert model(**inputs).grouping is None  # not asked for: not computed
