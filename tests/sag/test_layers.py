"""The shared cross-attention block: both softmax axes, the weights it returns, and that the slot and fusion blocks
built on it keep their pre-refactor numerics and parameter names (checkpoints, optimizer state)."""

import pytest
import torch

from sag import tiny_config
from sag.entity import SlotAggregation
from sag.fusion import ModalityFusion
from sag.layers import CrossAttention, split_heads


@pytest.mark.parametrize("softmax_over, axis", [("keys", -1), ("queries", -2)])
def test_block_shapes_and_softmax_axis(softmax_over, axis):
    torch.manual_seed(0)
    block = CrossAttention(dim=16, heads=2, head_dim=8, softmax_over=softmax_over)
    keys, values = block.keys_values(torch.randn(3, 7, 16))  # N = 7
    assert keys.shape == values.shape == (3, 2, 7, 8)
    out, attn = block(torch.randn(3, 5, 16), keys, values)  # Q = 5
    assert out.shape == (3, 5, 16) and attn.shape == (3, 2, 5, 7)
    torch.testing.assert_close(attn.sum(dim=axis), torch.ones(attn.sum(dim=axis).shape))
    assert not torch.allclose(attn.sum(dim=-1 if axis == -2 else -2), torch.ones(1))
    with pytest.raises(ValueError, match="softmax_over"):
        CrossAttention(16, 2, 8, softmax_over="slots")


def test_slot_aggregation_matches_the_pre_refactor_computation():
    torch.manual_seed(0)
    agg = SlotAggregation(tiny_config()).eval()
    slots, inputs = torch.randn(2, 8, 64), torch.randn(2, 30, 64)
    keys, values = agg.project_inputs(inputs)
    new_slots, a_slot = agg(slots, keys, values)
    # The computation as it stood inline before the block existed.
    q = split_heads(agg.to_q(agg.norm_slots(slots)), agg.heads)
    attn = (torch.einsum("bhnd,bhkd->bhnk", keys, q) * agg.scale).softmax(dim=-1)
    weights = attn / (attn.sum(dim=-2, keepdim=True) + 1e-7)
    updates = torch.einsum("bhnk,bhnd->bhkd", weights, values).transpose(1, 2).flatten(-2)
    ref = slots + agg.to_out(updates)
    ref = ref + agg.ff(ref)
    assert torch.equal(new_slots, ref) and torch.equal(a_slot, attn.mean(dim=1))


@pytest.mark.parametrize("all_pairs", [False, True])
def test_fusion_matches_the_pre_refactor_computation(all_pairs):
    torch.manual_seed(0)
    fusion = ModalityFusion(tiny_config()).eval()
    entities, text = torch.randn(3, 8, 64), torch.randn(3, 64)
    out = fusion(entities, text, all_pairs=all_pairs)
    q = fusion.to_q(fusion.norm_text(text)).unflatten(-1, (fusion.heads, -1))
    kv_in = fusion.norm_entities(entities)
    k, v = split_heads(fusion.to_k(kv_in), fusion.heads), split_heads(fusion.to_v(kv_in), fusion.heads)
    if all_pairs:
        attn = (torch.einsum("thd,ihkd->tihk", q, k) * fusion.scale).softmax(dim=-1)
        c = text.unsqueeze(1) + fusion.to_out(torch.einsum("tihk,ihkd->tihd", attn, v).flatten(-2))
    else:
        attn = (torch.einsum("bhd,bhkd->bhk", q, k) * fusion.scale).softmax(dim=-1)
        c = text + fusion.to_out(torch.einsum("bhk,bhkd->bhd", attn, v).flatten(-2))
    c = c + fusion.ff(c)
    assert torch.equal(out.z, torch.nn.functional.normalize(c, dim=-1))
    assert torch.equal(out.fuse_attn, attn.mean(dim=-2))


def test_parameter_names_and_order_are_unchanged():
    # Order matters too: optimizer state in training checkpoints and gradient clipping follow it.
    projections = ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"]
    ff = ["ff.net.0.weight", "ff.net.0.bias", "ff.net.1.weight", "ff.net.1.bias", "ff.net.4.weight", "ff.net.4.bias"]
    config = tiny_config()
    assert list(SlotAggregation(config).state_dict()) == [
        "norm_slots.weight", "norm_slots.bias", "norm_inputs.weight", "norm_inputs.bias", *projections, *ff]
    assert list(ModalityFusion(config).state_dict()) == [
        "norm_text.weight", "norm_text.bias", "norm_entities.weight", "norm_entities.bias", *projections, *ff]
