"""Named (model config, training config) pairs.

Two recipes each for the GPU and the CPU benchmark, trained alike and told apart by their inference:

* ``assist`` (GPU, sag-train's default) and ``cpu-synthetic``: SaG Assist's inference, the soft map re-drawn along the
  image's edges (``mask_refine="guided"``) and spatial words read (``spatial_words=True``);
* ``paper`` and ``cpu-synthetic-paper``: the paper's inference (bilinear map, threshold), the faithful reference.

On the synthetic benchmark the two levers together took val mIoU from 0.21 to 0.53 on the same checkpoints
(bench/README.md, "Beyond the paper"). ``cpu-synthetic-mobilenet`` swaps in a frozen, cached ImageNet MobileNetV2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from sag import SaG, SaGConfig, paper_config, tiny_config

from .engine import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model: SaGConfig
    train: TrainConfig
    pretrained: bool  # start from pretrained backbone weights (config.image_weights and the text backbone's)
    description: str
    # From-scratch text backbones only (applied whenever set, also when ``pretrained`` loads the image backbone's
    # weights): re-initialise their linear layers with std gain / sqrt(fan_in) instead of
    # BERT's fixed 0.02. With 0.02 a small random BERT gives nearly the same [CLS] state for every text (measured:
    # spread across texts 0.006 against 0.13 here), so C^3 starts where all texts look alike and stalls there.
    text_init_gain: float | None = None


def _paper() -> Preset:
    # The authors' recipe (kdwonn/SaG's train_eval_unc.sh and argument parser): AdamW lr 1e-5, backbones x0.1,
    # wd 1e-4, clip 0.1, batch 32, 50 epochs, cosine, validation every epoch with the best kept by val mIoU. Their
    # 5000-iteration ramp was on the loss, which Adam largely ignores; a short lr warm-up does the job it was meant
    # to do.
    return Preset(
        name="paper",
        model=paper_config(image_weights="hub"),
        train=TrainConfig(epochs=50, batch_size=32, lr=1e-5, backbone_lr_scale=0.1, weight_decay=1e-4,
                          warmup_steps=1000, grad_clip=0.1, precision="auto", eval_batch_size=64),
        pretrained=True,
        description="ViT-S/16 @ 384 + bert-base-uncased, K = 18 x 2 = 36, T = 6, batch 32, 50 epochs (GPU)",
    )


# What SaG Assist adds at inference (the model and its training are the paper's).
ASSIST_INFERENCE = {"mask_refine": "guided", "spatial_words": True}


def _with_assist_inference(preset: Preset, name: str) -> Preset:
    """``preset`` trained alike, with SaG Assist's inference (validation during training scores these masks too, so
    the best checkpoint is the best for what is served)."""
    return replace(preset, name=name, model=preset.model.replace(**ASSIST_INFERENCE),
                   description=preset.description + "; masks refined along edges, spatial words read")


def _assist() -> Preset:
    return _with_assist_inference(_paper(), "assist")


def _cpu_synthetic_paper() -> Preset:
    # Everything from scratch, so the learning rate is far above the paper's (which fine-tunes pretrained backbones).
    # The image backbone stays at its random initialisation: trained jointly, C^3 turned its features global and the
    # masks got worse as the loss fell (val mIoU 0.084 -> 0.045 from step 200 to 400), while a fixed random ViT keeps
    # local colour/position features as a stable reconstruction target (0.144 -> 0.200). See bench/README.md.
    return Preset(
        name="cpu-synthetic-paper",
        model=tiny_config(image_size=96),
        train=TrainConfig(max_steps=600, batch_size=64, lr=5e-4, backbone_lr_scale=1.0, weight_decay=1e-4,
                          warmup_steps=100, grad_clip=1.0, precision="fp32", eval_every=200, eval_batch_size=64,
                          eval_limit=200, log_every=25, freeze_image_backbone=True),
        pretrained=False,
        text_init_gain=1.0,
        description="tiny ViT (patch 8, fixed random) @ 96 + tiny BERT, K = 4 x 2 = 8, T = 3, batch 64, 600 steps",
    )


def _cpu_synthetic() -> Preset:
    return _with_assist_inference(_cpu_synthetic_paper(), "cpu-synthetic")


def _cpu_synthetic_mobilenet() -> Preset:
    # cpu-synthetic with the offline ImageNet MobileNetV2 as a frozen image backbone on a finer grid: features[:7],
    # the deepest map MobileNetV2 has at stride 8 (the last block before the stride-16 stage), 32 channels on a
    # 16 x 16 grid at 128 px. A frozen backbone is a pure function of the image, so the loop computes each image's
    # features once (TrainConfig.feature_cache) and a step costs only the heads. Quick runs (300 steps, 400 scenes,
    # 2 seeds; bench/README.md) put stride 8 + 16 concatenated (mobilenet_v2_s8s16) at 128 px no better and 2x slower
    # per step; at 192 px (24 x 24) it had the best mean but 3.5x the step time: one flag each
    # (--set model.image_backbone=mobilenet_v2_s8s16 --set model.image_size=192) for the equal-time benchmark.
    # Everything else is cpu-synthetic's: the text side is still a re-initialised tiny BERT.
    base = _cpu_synthetic()
    return Preset(
        name="cpu-synthetic-mobilenet",
        model=base.model.replace(image_backbone="mobilenet_v2_s8", image_weights="package", image_size=128),
        train=replace(base.train, feature_cache="memory"),
        pretrained=True,  # the image backbone's ImageNet weights; tiny-bert has none and is re-initialised below
        text_init_gain=base.text_init_gain,
        description="ImageNet MobileNetV2 features[:7] (stride 8, frozen, cached) @ 128 -> 16 x 16 + tiny BERT, "
                    "K = 4 x 2 = 8, T = 3, batch 64, 600 steps",
    )


TRAINING_PRESETS = {"assist": _assist, "paper": _paper, "cpu-synthetic": _cpu_synthetic,
                    "cpu-synthetic-paper": _cpu_synthetic_paper, "cpu-synthetic-mobilenet": _cpu_synthetic_mobilenet}
"""``sag-train --preset`` name -> a model config *and* the recipe to train it; not backend.presets'
INITIAL_MODEL_PRESETS (``SAG_INIT_PRESET``), which are untrained starting models: here ``paper`` is the paper's
training recipe, there ``vit-bert`` is the paper's backbones with random heads."""


def get_preset(name: str, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> Preset:
    """The preset ``name`` with optional field overrides for its model and training configs."""
    try:
        preset = TRAINING_PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(TRAINING_PRESETS)}") from None
    return replace(preset, model=preset.model.replace(**(model or {})), train=replace(preset.train, **(train or {})))


def reinit_text_backbone(model: SaG, gain: float, seed: int = 0) -> None:
    """Re-draw the text backbone's linear weights ~ N(0, (gain / sqrt(fan_in))^2) and zero their biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.text_encoder.backbone.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * gain * module.in_features**-0.5)
                if module.bias is not None:
                    module.bias.zero_()


def build_model(preset: Preset, seed: int | None = None) -> SaG:
    """A fresh SaG for ``preset``: pretrained backbones where the preset asks for them, else random (seeded)."""
    seed = preset.train.seed if seed is None else seed
    torch.manual_seed(seed)
    model = SaG(preset.model, pretrained=preset.pretrained)
    if preset.text_init_gain is not None:
        reinit_text_backbone(model, preset.text_init_gain, seed)
    return model
