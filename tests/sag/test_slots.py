"""Slot initialisation and train-mode randomness, against the authors' ``Queries`` and interaction block.

The authors (kdwonn/SaG, model/attention.py) draw random slots as mu + exp(log_sigma) * eps with
log_sigma ~ U(+-sqrt(3/D)) (a log-std near 0), query slots as randn(K, D), and apply no dropout to the interaction
block's attention weights in any shipped script. A numerical comparison with the authors' code on shared weights
lives outside this repository; these tests pin the scales.
"""

import math

import pytest
import torch

from sag import SaG, SaGConfig, tiny_config
from sag.entity import EntitySlots, GroupInteraction

D = 512  # the paper's width: the scales below are functions of D


def _noise_std(slots: EntitySlots, batch: int = 64) -> float:
    """Empirical per-dimension std of the sampled slots around their means (train mode: fresh noise)."""
    slots.train()
    with torch.no_grad():
        s = slots(batch)  # (B, K, D)
        centred = s - slots.mu.repeat_interleave(s.shape[1] // slots.mu.shape[0], dim=0)
    return centred.std().item()


def test_random_slots_start_with_unit_noise_like_the_authors():
    torch.manual_seed(0)
    slots = EntitySlots(SaGConfig(slot_type="random", embed_dim=D))
    assert not hasattr(slots, "logvar") and slots.log_sigma.shape == (1, D) and slots.mu.shape == (1, D)
    bound = math.sqrt(3.0 / D)  # xavier-uniform of a (1, 1, D) tensor
    assert slots.log_sigma.abs().max() <= bound and slots.mu.abs().max() <= bound
    assert abs(slots.log_sigma.mean().item()) < 0.02, "centred on 0: no ln(1/D) shift for random slots"
    # std = exp(log_sigma) ~ 1 per dimension (the old log-variance at ln(1/D) gave 1/sqrt(D) ~ 0.044)
    assert _noise_std(slots) == pytest.approx(1.0, abs=0.05)


def test_entity_slots_keep_noise_of_norm_one():
    torch.manual_seed(0)
    slots = EntitySlots(SaGConfig(slot_type="entity", embed_dim=D))
    assert slots.logvar.mean().item() == pytest.approx(math.log(1.0 / D), abs=0.02)
    assert _noise_std(slots) == pytest.approx(D ** -0.5, rel=0.05)


def test_query_slots_start_as_standard_normal():
    torch.manual_seed(0)
    slots = EntitySlots(SaGConfig(slot_type="query", embed_dim=D))
    q = slots.query.detach()
    assert q.shape == (36, D)
    # randn(K, D), as the authors; the old randn / sqrt(D) would give std 0.044
    assert q.std().item() == pytest.approx(1.0, abs=0.03) and abs(q.mean().item()) < 0.02


def test_old_random_slot_checkpoints_load_as_the_same_std():
    # Checkpoints written when random slots were a log-variance hold 'logvar'; loading converts it to a log-std
    # with the same std, so the model's slots are unchanged (and entity slots keep their names).
    torch.manual_seed(0)
    config = tiny_config(slot_type="random")
    model = SaG(config).eval()
    state = model.state_dict()
    old_logvar = torch.randn_like(state["entity.slots.log_sigma"]) - 3.0
    state.pop("entity.slots.log_sigma")
    state["entity.slots.logvar"] = old_logvar
    fresh = SaG(config).eval()
    fresh.load_state_dict(state, strict=True)
    assert torch.allclose(fresh.entity.slots.log_sigma, old_logvar / 2)
    expected = state["entity.slots.mu"] + (0.5 * old_logvar).exp() * fresh.entity.slots.eval_noise
    assert torch.allclose(fresh.entity.slots(1)[0], expected, atol=1e-6)
    entity = SaG(tiny_config()).state_dict()
    assert "entity.slots.logvar" in entity and "entity.slots.log_sigma" not in entity


def _interaction(p: float) -> GroupInteraction:
    torch.manual_seed(0)
    return GroupInteraction(tiny_config(dropout=0.0, interaction_attn_dropout=p)).train()


def test_interaction_is_deterministic_in_train_mode_without_dropout():
    slots = torch.randn(2, 8, 64)
    block = _interaction(0.0)
    outs = []
    for seed in (1, 2):  # different global RNG states: only dropout could make them differ
        torch.manual_seed(seed)
        outs.append(block(slots))
    assert torch.equal(outs[0], outs[1])
    # the switch works: attention-weight dropout makes train mode random again (and eval mode ignores it)
    dropped = _interaction(0.5)
    torch.manual_seed(1)
    a = dropped(slots)
    torch.manual_seed(2)
    assert not torch.allclose(a, dropped(slots))
    dropped.eval()
    assert torch.equal(dropped(slots), block.eval()(slots))


def test_whole_entity_module_is_deterministic_in_train_mode_given_the_slot_noise(monkeypatch):
    model = SaG(tiny_config(dropout=0.0)).train()
    assert model.config.interaction_attn_dropout == 0.0, "off by default, as the authors' scripts"
    fixed = torch.randn(2, 8, 64)
    monkeypatch.setattr(model.entity.slots, "forward", lambda batch, noise=None: fixed)
    pixels = torch.randn(2, 3, 64, 64)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(model.encode_image(pixels).entities)
    assert torch.equal(outs[0], outs[1])


def test_attention_dropout_field_is_validated_and_round_trips():
    config = tiny_config(interaction_attn_dropout=0.1)
    assert SaGConfig.from_json(config.to_json()) == config
    old = {k: v for k, v in tiny_config().to_dict().items() if k != "interaction_attn_dropout"}
    assert SaGConfig.from_dict(old).interaction_attn_dropout == 0.0, "configs saved before the field: off"
    with pytest.raises(ValueError, match="interaction_attn_dropout"):
        tiny_config(interaction_attn_dropout=1.0)
