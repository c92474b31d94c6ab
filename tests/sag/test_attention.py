"""Attention invariants: A_slot sums to 1 over slots for every patch; A_fuse sums to 1 over slots."""

import pytest
import torch

from sag import SaG, tiny_config


@pytest.mark.parametrize("slot_type", ["entity", "random", "query"])
def test_slot_and_fusion_attention_are_distributions(slot_type):
    torch.manual_seed(0)
    model = SaG(tiny_config(slot_type=slot_type)).eval()
    image = model.encode_image(torch.randn(3, 3, 64, 64))
    b, n, k = image.slot_attn.shape
    assert (n, k) == (64, 8)
    assert torch.allclose(image.slot_attn.sum(dim=-1), torch.ones(b, n), atol=1e-5)
    assert (image.slot_attn >= 0).all()
    text = model.encode_text(**model.tokenize(["a", "bb", "ccc"]))
    paired = model.fuse(image.entities, text)
    assert torch.allclose(paired.fuse_attn.sum(dim=-1), torch.ones(3), atol=1e-5)
    all_pairs = model.fuse(image.entities, text, all_pairs=True)
    assert torch.allclose(all_pairs.fuse_attn.sum(dim=-1), torch.ones(3, 3), atol=1e-5)
    assert torch.allclose(all_pairs.z.norm(dim=-1), torch.ones(3, 3), atol=1e-5)


def test_slots_compete_for_patches_not_patches_for_slots():
    # Normalising over slots means columns (slots) need not sum to 1 over patches: they differ by slot.
    torch.manual_seed(1)
    model = SaG(tiny_config()).eval()
    attn = model.encode_image(torch.randn(1, 3, 64, 64)).slot_attn[0]
    per_slot = attn.sum(dim=0)
    assert not torch.allclose(per_slot, torch.ones_like(per_slot))
    assert torch.isclose(per_slot.sum(), torch.tensor(float(attn.shape[0])), atol=1e-3)


def test_position_encoding_knobs():
    # Defaults keep the DETR encoding (base 10000, scale 1); a small base makes more channels vary over the grid,
    # and the knobs change the slots' input (so the entities) without changing any parameter shapes.
    from sag.position import sine_position_encoding_2d

    varied = [sine_position_encoding_2d(8, 8, 64, t).var(dim=0).sum() for t in (10000.0, 8.0)]
    assert varied[1] > 2 * varied[0]
    torch.manual_seed(2)
    base = SaG(tiny_config()).eval()
    assert (base.config.position_temperature, base.config.position_scale) == (10000.0, 1.0)
    other = SaG(tiny_config(position_temperature=8.0, position_scale=2.0)).eval()
    other.load_state_dict(base.state_dict())
    pixels = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(base.encode_image(pixels).entities, other.encode_image(pixels).entities)
    with pytest.raises(ValueError):
        tiny_config(position_temperature=1.0)
