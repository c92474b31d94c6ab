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
    (github.com/kdwonn/SaG: ``train_eval_unc.sh`` and the argument parser ``option.py``, flags named below).

    Args:
        image_backbone: the patch-feature extractor, a name in ``sag.image_encoder.IMAGE_ENCODERS``
            (ViT-S/16 at 384, the paper's).
        text_backbone: a Hugging Face hub name, a local model directory, or an alias of ``sag.text_encoder``
            (``minilm``, ``tiny-bert``); BERT-base, the paper's.
        image_weights: where fresh image-backbone weights come from: None (random init), ``"hub"`` (timm's
            download), ``"package"`` (a weights package installed offline, where the backbone has one) or a local
            file. Ignored when loading a SaG checkpoint, which carries its own weights.
        image_size: side S in pixels of the square backbone input; images are stretched to S x S (384, the
            authors' ``--crop_size``).
        max_text_tokens: texts are truncated to this many tokens, [CLS] and [SEP] included. The limit is ours: the
            authors' code does not truncate. 64 word pieces is well above typical referring expressions; batches are
            padded to their longest text, so raising it (up to the text backbone's ``max_position_embeddings``, 512
            for BERT) costs nothing for short texts. Only the tiny test BERT sizes its position table from it.
        drop_path: stochastic-depth rate of the image backbone in training (0.1, as the authors' ViT).
        embed_dim: D, the shared width of visual features after projection, slots, entities, text features and z.
            Must be divisible by 4 (2-D sine position encoding).
        num_heads: heads of the slot-aggregation and fusion cross-attentions (4, ``--agg_cross_head``).
        head_dim: width of one of those heads; ``num_heads * head_dim`` is D_h (paper: 4 x 256 = 1024).
        mlp_ratio: hidden width of the aggregation, interaction and fusion MLPs as a multiple of D (4,
            ``--agg_ff_mult``).
        dropout: dropout probability where the authors' code has it: attention output projections and MLPs (0.1,
            ``--dropout``); the fusion MLP has none, as theirs.
        interaction_attn_dropout: dropout on the attention *weights* of the slot-interaction block in training (0).
            The authors only have it under ``--agg_more_dropout``, which no shipped script sets. (Before it was a
            field, the project applied ``dropout`` there.)
        interaction_heads: heads of the self-attention among the slots of one Gaussian (4, ``--agg_latent_head``).
        interaction_head_dim: width of one of those heads (128, ``--agg_latent_dim``).
        slot_type: how the initial slots S^0 are made (the paper's Table 3), all three as the authors' ``Queries``
            (see :class:`sag.entity.EntitySlots`): ``"entity"`` slots are mu + exp(logvar / 2) * eps with logvar
            initialised near ln(1/D) (noise norm ~1); ``"random"`` slots are mu + exp(log_sigma) * eps from one
            Gaussian, log_sigma a log-*std* initialised near 0 (noise std ~1 per dimension); ``"query"`` slots are K
            learned embeddings, initialised randn(K, D).
        num_gaussians: K_g, the learnable Gaussians of entity slots.
        samples_per_gaussian: K_s, the slots drawn from each Gaussian, so K = K_g * K_s (18 x 2 = 36, the paper's
            best; the authors' ``train_eval_unc.sh`` ships ``--cascade_factor 3``, i.e. 12 x 3). It is also the
            group size of the interaction block, whatever the slot type.
        iterations: T, rounds of aggregation and interaction (6, ``--agg_depth``).
        share_weights: one aggregation and one interaction block serve all T rounds (``--agg_weight_sharing``);
            False gives every round its own.
        eval_noise_seed: seed of the fixed slot noise used in eval mode, so one question always gets one answer
            (the authors resample it at test time).
        position_temperature: wavelength base of the 2-D sine position encoding added to the projected features
            before entity discovery (10000, DETR's and the authors'); must be > 1. With 10000 most channels are
            near-constant over a small grid (12 x 12, D = 64: only ~8 of 32 channels per axis vary), so position is
            a weak cue for the slots; a small base spreads the channels over wavelengths of 1 to a few image widths.
        position_scale: multiplier of that encoding (1).
        c3_temperature: divides the C^3 logits (1, ``--info_temperature``: the scale is then the norm of x^T).
        recon_weight: weight of the reconstruction loss, loss = C^3 + recon_weight * reconstruction (1,
            ``--recon_weight``).
        decoder_hidden: hidden width of the spatial-broadcast decoder's MLP (512: the authors' is D wide).
        decoder_layers: hidden layers of that MLP (3, as the authors').
        threshold: tau in (0, 1): a pixel belongs to the mask where the min-max normalised soft map is >= tau (0.5,
            ``--pseudo_threshold``).
        mask_refine: edge-aware refinement of the upsampled soft map before the threshold (``sag/refine.py``):
            ``"none"`` (the paper's bilinear map), ``"guided"`` (colour guided filter) or ``"slic"`` (superpixel
            pooling). ``SaG.segment`` applies it when given the images; the backend's ``SAG_MASK_REFINE`` and
            sag-eval's ``--refine`` override it.
        spatial_words: read the text's spatial words at inference (``sag/spatial.py``, not in the paper): the mask
            becomes the region that "leftmost", "on the right", "above the ...", "small" picks among those the
            model finds for the rest of the text. Off here, so checkpoints and the faithfulness check keep the
            paper's inference; the CPU preset and the backend's ``SAG_SPATIAL_WORDS`` (default on) turn it on, and
            sag-eval's ``--spatial-words`` overrides it.
        extra: free-form JSON-able notes kept with the config; the model reads none of it.
    """

    # Backbones.
    image_backbone: str = "vit_small_patch16_384"
    text_backbone: str = "bert-base-uncased"
    image_weights: str | None = None
    image_size: int = 384
    max_text_tokens: int = 64
    drop_path: float = 0.1

    # Width and attention shapes.
    embed_dim: int = 512
    num_heads: int = 4
    head_dim: int = 256
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    interaction_attn_dropout: float = 0.0
    interaction_heads: int = 4
    interaction_head_dim: int = 128

    # Entity slots.
    slot_type: SlotType = "entity"
    num_gaussians: int = 18
    samples_per_gaussian: int = 2
    iterations: int = 6
    share_weights: bool = True
    eval_noise_seed: int = 0
    position_temperature: float = 10000.0
    position_scale: float = 1.0

    # Losses.
    c3_temperature: float = 1.0
    recon_weight: float = 1.0
    decoder_hidden: int = 512
    decoder_layers: int = 3

    # Inference.
    threshold: float = 0.5
    mask_refine: str = "none"
    spatial_words: bool = False

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
