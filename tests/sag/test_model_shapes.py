"""The paper configuration runs forward and backward on CPU with the expected shapes."""

import pytest
import torch

from sag import SaG, head_parameters, paper_config, tiny_config


@pytest.mark.slow
def test_paper_config_forward_backward_with_real_minilm():
    # ViT-S/16 at 384 with random weights, D=512, K=36, T=6; the real MiniLM text encoder (offline).
    torch.manual_seed(0)
    config = paper_config(text_backbone="minilm")
    assert (config.embed_dim, config.num_slots, config.iterations, config.image_size) == (512, 36, 6, 384)
    model = SaG(config, pretrained=True)
    assert model.text_encoder.out_dim == 384  # MiniLM's hidden size, projected to D
    pixels = torch.randn(2, 3, 384, 384)
    tokens = model.tokenize(["the man on the left holding a guitar", "a dog"])

    image = model.encode_image(pixels)
    assert image.grid == (24, 24)
    assert image.entities.shape == (2, 36, 512)
    assert image.slot_attn.shape == (2, 576, 36)
    assert image.features.shape == (2, 576, 384)
    text = model.encode_text(**tokens)
    assert text.shape == (2, 512)
    fused = model.fuse(image.entities, text, all_pairs=True)
    assert fused.z.shape == (2, 2, 512) and fused.fuse_attn.shape == (2, 2, 36)

    out = model(pixels, **tokens)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    # Every trainable part receives gradient: backbones, entity discovery, fusion, decoder.
    for name in ("image_encoder", "text_encoder", "entity", "fusion", "decoder"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_head_parameter_count_matches_the_official_layer_shapes():
    # Hand count from the authors' layer shapes (kdwonn/SaG, model/attention.py and model/aggregator.py) for K_g=18:
    # entity module 7,627,264 + 6,144 (six more Gaussians) + the visual projection (C->512, which our module owns),
    # fusion 4,200,448, decoder MLP 986,497 + our 64-row position tables 2 x 64 x 256.
    config = paper_config(image_backbone="vit_tiny_test", text_backbone="tiny-bert", image_size=64)
    model = SaG(config)
    entity_expected = 7_627_264 + 6_144 + (96 * 512 + 512)  # vit_tiny_test has 96 channels (ViT-S: 384)
    assert sum(p.numel() for p in model.entity.parameters()) == entity_expected
    assert sum(p.numel() for p in model.fusion.parameters()) == 4_200_448
    assert sum(p.numel() for p in model.text_encoder.proj.parameters()) == 96 * 512 + 512
    assert sum(p.numel() for p in model.decoder.parameters()) == 512 * 512 * 3 + 512 * 3 + 512 * 97 + 97 + 2 * 64 * 256
    assert head_parameters(model) > head_parameters(model, include_decoder=False)


@pytest.mark.parametrize("slot_type", ["entity", "random", "query"])
@pytest.mark.parametrize("share_weights", [True, False])
def test_slot_types_and_weight_sharing(slot_type, share_weights):
    config = tiny_config(slot_type=slot_type, share_weights=share_weights)
    model = SaG(config)
    blocks = 1 if share_weights else config.iterations
    assert len(model.entity.aggregate) == blocks and len(model.entity.interact) == blocks
    out = model(torch.randn(3, 3, 64, 64), **model.tokenize(["a", "b c", "d"]))
    out.loss.backward()
    if slot_type == "query":
        assert model.entity.slots.query.grad is not None
    else:
        spread = model.entity.slots.logvar if slot_type == "entity" else model.entity.slots.log_sigma
        assert model.entity.slots.mu.grad is not None and spread.grad is not None
        expected = config.num_gaussians if slot_type == "entity" else 1
        assert model.entity.slots.mu.shape[0] == expected


def test_entity_slots_share_a_gaussian_within_each_group():
    model = SaG(tiny_config(samples_per_gaussian=3, num_gaussians=4)).train()
    slots = model.entity.slots
    with torch.no_grad():
        slots.logvar.fill_(-20.0)  # ~zero variance: the samples collapse onto their Gaussian's mean
        s = slots(2)
    assert s.shape == (2, 12, 64)
    groups = s.view(2, 4, 3, 64)
    assert torch.allclose(groups, groups[:, :, :1].expand_as(groups), atol=1e-3)
    assert not torch.allclose(groups[:, 0], groups[:, 1], atol=1e-3)


def test_text_truncation_and_bad_text(tiny_model):
    long_text = "the red circle " * 2000  # about 10,000 characters
    tokens = tiny_model.tokenize([long_text, "short"])
    assert tokens["input_ids"].shape[1] == tiny_model.config.max_text_tokens
    assert tiny_model.encode_text(**tokens).shape == (2, 64)
    with pytest.raises(ValueError, match="empty"):
        tiny_model.tokenize(["fine", "   "])
    with pytest.raises(TypeError):
        tiny_model.tokenize("a single string")


def test_unknown_backbones_are_named_in_the_error():
    with pytest.raises(ValueError, match="unknown image_backbone 'resnet9000'"):
        SaG(tiny_config(image_backbone="resnet9000"))
    with pytest.raises(OSError, match="could not load text backbone"):
        SaG(tiny_config(text_backbone="/nonexistent/bert"), pretrained=True)


def test_without_the_reconstruction_loss_the_decoder_is_skipped_and_c3_is_unchanged():
    torch.manual_seed(0)
    model = SaG(tiny_config(image_size=32)).eval()
    pixels, tokens = torch.randn(2, 3, 32, 32), model.tokenize(["a red square", "a blue circle"])
    full = model(pixels, **tokens)
    model.config.recon_weight = 0.0
    calls = []
    model.decoder.register_forward_hook(lambda *args: calls.append(1))
    out = model(pixels, **tokens)
    assert not calls and float(out.recon) == 0.0
    assert torch.allclose(out.loss, full.c3) and torch.allclose(out.c3, full.c3) and float(full.recon.detach()) > 0
