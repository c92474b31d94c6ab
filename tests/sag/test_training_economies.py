"""The cheap gradients a CPU fine-tune uses: a truncated backward through the slot iterations, and reconstruction at
sampled grid positions. Neither may change what the model computes, only what the backward pass costs."""

import pytest
import torch

from sag import SaG, tiny_config
from sag.losses import reconstruction_loss


def _grads(model: SaG) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.entity.named_parameters()}


def test_truncated_slot_gradient_keeps_the_forward_and_only_cuts_the_backward():
    torch.manual_seed(0)
    model = SaG(tiny_config(dropout=0.0, iterations=3)).eval()  # eval: the same slot noise in both passes
    features = torch.randn(2, 16, model.image_encoder.out_dim)
    full = model.entity(features, (4, 4))
    full.entities.square().sum().backward()
    full_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    model.entity.grad_iterations = 1
    cut = model.entity(features, (4, 4))
    assert torch.equal(cut.entities, full.entities) and torch.equal(cut.slot_attn, full.slot_attn)
    cut.entities.square().sum().backward()
    cut_grads = _grads(model)
    # The initial slots reach the output only through the first iterations, which kept no graph.
    assert full_grads["slots.mu"].abs().sum() > 0 and cut_grads["slots.mu"] is None
    # The shared blocks and the projections still learn, from the last iteration alone: a different gradient.
    for name in ("aggregate.0.to_q.weight", "input_proj.weight", "interact.0.to_qkv.weight", "out.0.weight"):
        assert cut_grads[name] is not None and cut_grads[name].abs().sum() > 0, name
    assert not torch.allclose(cut_grads["aggregate.0.to_q.weight"], full_grads["aggregate.0.to_q.weight"])
    torch.testing.assert_close(cut_grads["out.0.weight"], full_grads["out.0.weight"])  # after the loop: exact

    model.entity.grad_iterations = 3  # as many as there are: the full gradient
    model.zero_grad(set_to_none=True)
    model.entity(features, (4, 4)).entities.square().sum().backward()
    torch.testing.assert_close(_grads(model)["slots.mu"], full_grads["slots.mu"])


def test_the_decoder_at_chosen_positions_gives_exactly_those_rows_of_the_full_result():
    torch.manual_seed(0)
    model = SaG(tiny_config())
    entities = torch.randn(2, model.config.num_slots, model.config.embed_dim)
    recon, alpha = model.decoder(entities, (3, 5))
    positions = torch.tensor([14, 0, 7])
    part, part_alpha = model.decoder(entities, (3, 5), positions)
    assert part.shape == (2, 3, recon.shape[-1]) and part_alpha.shape == (2, 3, model.config.num_slots)
    torch.testing.assert_close(part, recon[:, positions], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(part_alpha, alpha[:, positions], atol=1e-6, rtol=1e-5)


def test_reconstruction_at_sampled_positions_is_the_loss_over_those_positions():
    torch.manual_seed(0)
    model = SaG(tiny_config(image_size=32, dropout=0.0)).eval()
    features = torch.randn(2, 16, model.image_encoder.out_dim)
    tokens = model.tokenize(["a red square", "a blue circle"])
    full = model(None, **tokens, features=features, grid=(4, 4))
    assert torch.equal(model(None, **tokens, features=features, grid=(4, 4), recon_positions=16).recon, full.recon)

    torch.manual_seed(5)
    sampled = model(None, **tokens, features=features, grid=(4, 4), recon_positions=5)
    torch.manual_seed(5)  # the same draw: one set of positions for the whole batch
    positions = torch.randperm(16)[:5]
    with torch.no_grad():
        recon, _ = model.decoder(model.encode_features(features, (4, 4)).entities, (4, 4))
    torch.testing.assert_close(sampled.recon, reconstruction_loss(recon[:, positions], features[:, positions]))
    assert torch.equal(sampled.c3, full.c3) and not torch.allclose(sampled.recon, full.recon)


@pytest.mark.parametrize("field", ["entity_grad_iterations", "recon_positions"])
def test_the_training_economies_refuse_zero(field):
    from training.engine import TrainConfig
    from training.finetune import FinetuneConfig

    for config in (TrainConfig, FinetuneConfig):
        with pytest.raises(ValueError, match=field):
            config(**{field: 0})
