"""The image backbones (sag/image_encoder.py): MobileNetV2 with real ImageNet weights, its stride-8 taps, and the
checkpoint layout that keeps old ``mobilenet_v2`` checkpoints loading."""

from __future__ import annotations

import json

import pytest
import torch

from sag import SaG, paper_config, tiny_config
from sag.image_encoder import MobileNetV2Encoder, build_image_encoder
from training.presets import get_preset


def test_mobilenet_backbone_loads_real_imagenet_weights():
    torch.manual_seed(0)
    config = paper_config(image_backbone="mobilenet_v2", image_weights="package", text_backbone="tiny-bert")
    model = SaG(config, pretrained=True)
    random_model = SaG(config, pretrained=False)
    # The pretrained stem differs from a fresh random init, and features come out on a stride-16 grid.
    w_pre = model.image_encoder.features[0][0].weight
    w_rand = random_model.image_encoder.features[0][0].weight
    assert not torch.allclose(w_pre, w_rand)
    feats, grid = model.image_encoder(torch.randn(1, 3, 224, 224))
    assert grid == (14, 14) and feats.shape == (1, 196, 96)


def test_preset_backbone_gives_at_least_a_16x16_grid_with_real_weights():
    preset = get_preset("cpu-synthetic-mobilenet")
    encoder = build_image_encoder(preset.model, preset.model.image_weights).eval()
    with torch.no_grad():
        feats, grid = encoder(torch.randn(2, 3, preset.model.image_size, preset.model.image_size))
    assert grid[0] >= 16 and grid[1] >= 16
    assert feats.shape == (2, grid[0] * grid[1], encoder.out_dim) == (2, 256, 32)
    # The weights really are ImageNet's: the stem differs from a random init.
    torch.manual_seed(0)
    assert not torch.allclose(encoder.features[0][0].weight, MobileNetV2Encoder(None).features[0][0].weight)


def test_stride8_taps_are_the_truncated_network():
    torch.manual_seed(0)
    both = MobileNetV2Encoder(None, taps=(7, 14)).eval()
    s8 = MobileNetV2Encoder(None, taps=(7,)).eval()
    s16 = MobileNetV2Encoder(None, taps=(14,)).eval()
    s8.load_state_dict(both.state_dict(), strict=False)
    s16.load_state_dict(both.state_dict())  # the same keys: features.0 ... features.13
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f_both, g_both = both(x)
        f8, g8 = s8(x)
        f16, g16 = s16(x)
    assert (g8, g16, g_both) == ((8, 8), (4, 4), (8, 8))
    # The first 32 channels are exactly the stride-8 map; the other 96 the stride-16 map upsampled x2, whose
    # average over each 2 x 2 block is close to (not exactly, bilinear) the stride-16 value.
    assert torch.equal(f_both[..., :32], f8)
    up = f_both[..., 32:].transpose(1, 2).reshape(2, 96, 8, 8)
    assert torch.allclose(torch.nn.functional.avg_pool2d(up, 2).flatten(2).transpose(1, 2), f16, atol=0.5)
    with pytest.raises(ValueError, match="taps"):
        MobileNetV2Encoder(None, taps=(14, 7))


def test_mobilenet_v2_checkpoints_keep_their_layout_and_load(tmp_path):
    """``mobilenet_v2`` keeps torchvision's ``features[:14]`` keys and computation, so old checkpoints load."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    model = SaG(tiny_config(image_backbone="mobilenet_v2", image_size=64))
    expected = {f"image_encoder.features.{k}" for k in mobilenet_v2().features[:14].state_dict()}
    assert {k for k in model.state_dict() if k.startswith("image_encoder.")} == expected
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.image_encoder(x)[0], model.image_encoder.features(x).flatten(2).transpose(1, 2))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SaG.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x).entities, model.encode_image(x).entities)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["image_backbone"] == "mobilenet_v2"
