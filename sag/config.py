"""The model's configuration: one small dataclass, stored as JSON beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

SlotType = Literal["entity", "random", "query"]
SLOT_TYPES: tuple[str, ...] = ("entity", "random", "query")


@dataclass
class SaGConfig:
    """Hyper-parameters of Shatter and Gather.

    Defaults follow the paper (Sec. 4.1, Table 4a) and the authors' code where the paper is silent
    (github.com/kdwonn/SaG: its training scripts and argument parser).

    Notes on fields that differ from, or are easy to misread against, the authors' code:

    * ``max_text_tokens``: texts are truncated to this many tokens, [CLS] and [SEP] included. The limit is ours: the
      authors' code does not truncate. 64 word pieces is well above typical referring expressions; batches are padded
      to their longest text, so raising it (up to the text backbone's ``max_position_embeddings``, 512 for BERT)
      costs nothing for short texts. Only the tiny test BERT sizes its position table from it.
    * ``slot_type``: ``entity`` slots are mu + exp(logvar / 2) * eps with logvar initialised near ln(1/D) (noise norm
      ~1); ``random`` slots are mu + exp(log_sigma) * eps with log_sigma a log-*std* initialised near 0 (noise std ~1
      per dimension), and ``query`` slots start as randn(K, D): all three as the authors' ``Queries``
      (see :class:`sag.entity.EntitySlots`).
    * ``dropout`` acts where the authors' does (attention output projections and MLPs).
      ``interaction_attn_dropout`` additionally drops attention *weights* in the slot-interaction block in training;
      the authors only have that under ``--agg_more_dropout``, which no shipped script sets, so it defaults to 0.
      (Before it was a field, the project applied ``dropout`` there.)
    """

    # Backbones. ``image_backbone`` is a name in ``sag.image_encoder.IMAGE_ENCODERS``; ``text_backbone`` is a
    # Hugging Face hub name, a local model directory, or one of the aliases in ``sag.text_encoder``.
    image_backbone: str = "vit_small_patch16_384"
    text_backbone: str = "bert-base-uncased"
    # Where fresh image-backbone weights come from: None (random init), "hub" (timm's download), "package"
    # (a weights package installed offline, where the backbone has one) or a local file. Ignored when loading a
    # SaG checkpoint, which carries its own weights.
    image_weights: str | None = None
    image_size: int = 384
    max_text_tokens: int = 64
    drop_path: float = 0.1

    # Shared width D and attention shape: heads x head_dim = D_h (paper: 4 x 256 = 1024).
    embed_dim: int = 512
    num_heads: int = 4
    head_dim: int = 256
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    # Dropout on the interaction block's attention weights in training (off, as the authors'; see the docstring).
    interaction_attn_dropout: float = 0.0
    # Self-attention among slots of one Gaussian (official code: 4 heads x 128).
    interaction_heads: int = 4
    interaction_head_dim: int = 128

    # Entity slots: K = num_gaussians * samples_per_gaussian (paper's best: 18 x 2 = 36).
    slot_type: SlotType = "entity"
    num_gaussians: int = 18
    samples_per_gaussian: int = 2
    iterations: int = 6
    share_weights: bool = True
    # Seed of the fixed slot noise used in eval mode, so one question always gets one answer.
    eval_noise_seed: int = 0
    # 2-D sine position encoding added to the projected features before entity discovery: its wavelength base
    # (DETR / the authors' code: 10000) and a multiplier. With base 10000 most channels are near-constant over a
    # small grid (12 x 12, D = 64: only ~8 of 32 channels per axis vary), so position is a weak cue for the slots;
    # a small base spreads the channels over wavelengths of 1 to a few image widths.
    position_temperature: float = 10000.0
    position_scale: float = 1.0

    # Losses.
    c3_temperature: float = 1.0
    recon_weight: float = 1.0
    decoder_hidden: int = 512
    decoder_layers: int = 3

    # Inference.
    threshold: float = 0.5
    # Edge-aware refinement of the upsampled soft map before the threshold (sag/refine.py): "none" (the paper's
    # bilinear map), "guided" (colour guided filter) or "slic" (superpixel pooling). SaG.segment applies it when
    # given the images; the backend's SAG_MASK_REFINE and sag-eval's --refine override it.
    mask_refine: str = "none"

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slot_type not in SLOT_TYPES:
            raise ValueError(f"slot_type must be one of {SLOT_TYPES}, got {self.slot_type!r}")
        for name in ("embed_dim", "num_heads", "head_dim", "num_gaussians", "samples_per_gaussian", "iterations",
                     "image_size", "max_text_tokens", "interaction_heads", "interaction_head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4 (2-D sine position encoding), got {self.embed_dim}")
        if self.position_temperature <= 1.0:
            raise ValueError(f"position_temperature must be > 1, got {self.position_temperature}")
        if not 0.0 <= self.interaction_attn_dropout < 1.0:
            raise ValueError(f"interaction_attn_dropout must lie in [0, 1), got {self.interaction_attn_dropout}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        from .refine import REFINE_METHODS

        if self.mask_refine not in REFINE_METHODS:
            raise ValueError(f"mask_refine must be one of {REFINE_METHODS}, got {self.mask_refine!r}")

    @property
    def num_slots(self) -> int:
        """K, the total number of slots."""
        return self.num_gaussians * self.samples_per_gaussian

    @property
    def attn_dim(self) -> int:
        """D_h, the inner width of the slot and fusion cross-attentions."""
        return self.num_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SaGConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SaGConfig fields: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "SaGConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "SaGConfig":
        return dataclasses.replace(self, **changes)


def paper_config(**changes: Any) -> SaGConfig:
    """ViT-S/16 at 384 + bert-base-uncased, D=512, K=18x2=36, T=6 (the paper's RefCOCO setting)."""
    return SaGConfig(**changes)


def tiny_config(**changes: Any) -> SaGConfig:
    """A randomly initialised miniature for tests and CPU experiments (seconds per step on 2 cores)."""
    base = dict(
        image_backbone="vit_tiny_test",
        text_backbone="tiny-bert",
        image_size=64,
        max_text_tokens=24,
        drop_path=0.0,
        embed_dim=64,
        num_heads=2,
        head_dim=32,
        mlp_ratio=2.0,
        dropout=0.0,
        interaction_heads=2,
        interaction_head_dim=16,
        num_gaussians=4,
        samples_per_gaussian=2,
        iterations=3,
        decoder_hidden=64,
        decoder_layers=2,
    )
    base.update(changes)
    return SaGConfig(**base)
