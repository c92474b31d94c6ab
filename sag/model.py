"""The SaG model: encoders, entity discovery, fusion, losses and mask inference in one nn.Module.

The image side (``encode_image``: backbone + entity discovery) is separate from the text side (``encode_text``) and
from ``fuse``, so one image's entities can serve many referring expressions. What the steps return (ImageEntities,
Segmentation, TrainOutput) is in :mod:`sag.outputs`.

From text strings to masks, spatial words read, is :mod:`sag.pipeline` (``predict``, ``segment_texts``): it calls
this module, and this module imports nothing of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .checkpoint import CheckpointInfo, read_checkpoint, save_pretrained
from .config import SaGConfig
from .decoder import SpatialBroadcastDecoder
from .device import resolve_device
from .entity import EntityDiscovery
from .fusion import ModalityFusion
from .image_encoder import build_image_encoder
from .inference import combine_attention, entity_maps, upsample_and_normalise
from .losses import c3_loss, grouping_loss, reconstruction_loss
from .outputs import FusionOutput, ImageEntities, Segmentation, TrainOutput
from .preprocess import ImageLike, preprocess_images
from .refine import REFINE_METHODS, patch_cell
from .refine import refine as refine_map
from .text_encoder import TextEncoder, build_text_encoder, load_text_encoder


class SaG(nn.Module):
    """Shatter and Gather (Kim et al., ICCV 2023)."""

    def __init__(self, config: SaGConfig, pretrained: bool = False, text_encoder: TextEncoder | None = None):
        """Build the model. ``pretrained`` loads backbone weights (``config.image_weights`` and the text backbone's
        pretrained weights); ``text_encoder`` passes a ready text side (used when loading a checkpoint)."""
        super().__init__()
        self.config = config
        self.version: str | None = None  # set when loaded from a checkpoint
        self.metadata: dict = {}
        self.image_encoder = build_image_encoder(config, config.image_weights if pretrained else None)
        self.text_encoder = text_encoder or build_text_encoder(config, pretrained=pretrained)
        self.entity = EntityDiscovery(config, self.image_encoder.out_dim)
        self.fusion = ModalityFusion(config)
        self.decoder = SpatialBroadcastDecoder(
            config.embed_dim, self.image_encoder.out_dim, config.decoder_hidden, config.decoder_layers
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- inputs -----------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Images (PIL or uint8 arrays, any size) -> pixels (B, 3, S, S) on the model's device."""
        enc = self.image_encoder
        return preprocess_images(images, self.config.image_size, enc.mean, enc.std).to(self.device)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> ``input_ids`` and ``attention_mask`` (B, L) on the model's device."""
        return self.text_encoder.tokenize(texts, self.device)

    # ---- the two sides ----------------------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor, noise: torch.Tensor | None = None) -> ImageEntities:
        """pixels (B, 3, S, S) -> ImageEntities: entities (B, K, D), A_slot (B, N, K), backbone features.
        ``noise``: as for :meth:`encode_features`."""
        features, grid = self.image_encoder(pixels)
        return self.encode_features(features, grid, noise)

    def encode_features(self, features: torch.Tensor, grid: tuple[int, int],
                        noise: torch.Tensor | None = None) -> ImageEntities:
        """Precomputed backbone features (B, N, C) on an (h, w) grid -> ImageEntities, skipping the image backbone.

        ``features`` must be what ``self.image_encoder`` returns for the pixels (e.g. from a feature cache of a
        frozen backbone); they are also the reconstruction target. ``noise``: the initial slots' draw (B, K, D)
        (:meth:`sag.entity.EntitySlots.forward`); None draws as usual.
        """
        if features.shape[-1] != self.image_encoder.out_dim:
            raise ValueError(f"features have {features.shape[-1]} channels, the image backbone "
                             f"{self.config.image_backbone!r} gives {self.image_encoder.out_dim}")
        out = self.entity(features, grid, noise)
        return ImageEntities(out.entities, out.slot_attn, grid, features)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask (B, L) -> text features x^T (B, D)."""
        return self.text_encoder(input_ids, attention_mask)

    def fuse(self, entities: torch.Tensor, text: torch.Tensor, all_pairs: bool = False) -> FusionOutput:
        """Top-down attention; see :meth:`ModalityFusion.forward`."""
        return self.fusion(entities, text, all_pairs=all_pairs)

    # ---- training ---------------------------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                features: torch.Tensor | None = None, grid: tuple[int, int] | None = None,
                entities: torch.Tensor | None = None, recon_positions: int | None = None,
                grouping_reference: nn.Module | None = None, grouping_weight: float = 0.0) -> TrainOutput:
        """One batch of B matching image-text pairs (pair i = image i, text i) -> C^3 + reconstruction loss.

        Either ``pixels`` (B, 3, S, S), or precomputed backbone ``features`` (B, N, C) with their ``grid`` (h, w)
        and ``pixels=None`` (a frozen, cached image backbone: see :meth:`encode_features`), or precomputed
        ``entities`` (B, K, D) of a frozen image side: then the loss is C^3 alone, since the reconstruction loss
        depends on nothing but the image side (its ``recon`` is reported as 0).

        ``recon_positions``: reconstruct at this many grid positions drawn at random (the same for the whole batch)
        instead of all N: an unbiased estimate of the reconstruction loss at a fraction of the decoder's cost.

        ``grouping_reference``: a frozen entity discovery (e.g. the serving model's, for a fine-tune) run from the
        same initial slots; the loss then also holds ``grouping_weight`` times how far this model's A_slot moved
        from the reference's (:func:`sag.losses.grouping_loss`; not in the paper).
        """
        if entities is not None:
            if pixels is not None or features is not None:
                raise ValueError("pass entities alone, without pixels or features")
            text = self.encode_text(input_ids, attention_mask)
            c3 = c3_loss(self.fuse(entities, text, all_pairs=True).z, text, self.config.c3_temperature)
            return TrainOutput(loss=c3, c3=c3, recon=c3.new_zeros(()))
        if (pixels is None) == (features is None) or (features is not None and grid is None):
            raise ValueError("pass either pixels, or features with their grid")
        noise = None if grouping_reference is None else self.entity.slots.sample_noise(input_ids.shape[0])
        image = self.encode_image(pixels, noise) if features is None else self.encode_features(features, grid, noise)
        text = self.encode_text(input_ids, attention_mask)
        fused = self.fuse(image.entities, text, all_pairs=True)
        c3 = c3_loss(fused.z, text, self.config.c3_temperature)
        loss, grouping = c3, None
        if grouping_reference is not None:
            with torch.no_grad():
                reference = grouping_reference(image.features, image.grid, noise).slot_attn
            grouping = grouping_loss(reference, image.slot_attn)
            loss = loss + grouping_weight * grouping
        if self.config.recon_weight == 0:  # the loss would not change: skip the decoder, the costliest head
            return TrainOutput(loss=loss, c3=c3, recon=c3.new_zeros(()), grouping=grouping)
        positions = None
        cells = image.features.shape[1]
        if recon_positions is not None and recon_positions < cells:
            positions = torch.randperm(cells, device=image.features.device)[:recon_positions]
        rec = self.reconstruction(image, positions)
        return TrainOutput(loss=loss + self.config.recon_weight * rec, c3=c3, recon=rec, grouping=grouping)

    def reconstruction(self, image: ImageEntities, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction loss (Eq. 9) of ``image``'s backbone features from its entities: scalar, over all grid
        positions or only ``positions`` (P,) (flat, row-major; see :class:`SpatialBroadcastDecoder`)."""
        target = image.features if positions is None else image.features[:, positions]
        recon, _ = self.decoder(image.entities, image.grid, positions)
        return reconstruction_loss(recon, target)

    # ---- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def segment(
        self,
        image: ImageEntities,
        text: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        scheme: str = "ours",
        threshold: float | None = None,
        guides: Sequence[ImageLike] | None = None,
        refine: str | Callable[[torch.Tensor, ImageLike], torch.Tensor] | None = None,
    ) -> list[Segmentation]:
        """Masks for B (image, text) pairs: image i with text i, returned at ``sizes[i]`` = (H, W).

        Args:
            image: ImageEntities of B images (repeat an image's entry to ask it several questions).
            text: (B, D) text features.
            sizes: the original (H, W) of each image.
            scheme: ``ours`` (A_slot . A_fuse), or the ablations ``max``, ``avg``, ``min``.
            threshold: tau; defaults to ``config.threshold``.
            guides: the B images themselves at ``sizes[i]`` (PIL or (H, W, 3) uint8), needed by a refinement.
            refine: edge-aware refinement of the soft map before the threshold (:mod:`sag.refine`); defaults to
                ``config.mask_refine``. A refinement other than ``none`` needs ``guides``. Also a callable
                (soft (H, W), image) -> soft (H, W) in [0, 1], e.g. :class:`sag.refine.PromptableRefiner`.
        """
        if not (len(image) == text.shape[0] == len(sizes)):
            raise ValueError(f"need as many images, texts and sizes, got {len(image)}, {text.shape[0]}, {len(sizes)}")
        method = self.config.mask_refine if refine is None else refine
        if not callable(method) and method not in REFINE_METHODS:
            raise ValueError(f"unknown mask refinement {method!r}; choose from {REFINE_METHODS}")
        if method != "none" and guides is None:
            raise ValueError(f"mask refinement {method!r} needs the images: pass guides= (or refine='none')")
        if guides is not None and len(guides) != len(sizes):
            raise ValueError(f"need one guide image per size, got {len(guides)} and {len(sizes)}")
        tau = self.config.threshold if threshold is None else threshold
        fused = self.fuse(image.entities, text)
        fuse_attn = fused.fuse_attn.float()
        scores = combine_attention(image.slot_attn.float(), fuse_attn, scheme)
        results = []
        for i, size in enumerate(sizes):
            soft = upsample_and_normalise(scores[i], image.grid, size)
            unrefined = None
            if method != "none":
                unrefined = soft
                soft = (method(soft, guides[i]) if callable(method)
                        else refine_map(soft, guides[i], method, cell=patch_cell(image.grid, tuple(size))))
            results.append(Segmentation(
                mask=soft >= tau, soft=soft, fuse_attn=fuse_attn[i], score=float(fuse_attn[i].max()),
                unrefined=unrefined,
            ))
        return results

    @torch.no_grad()
    def entity_maps(self, image: ImageEntities, index: int, size: tuple[int, int]) -> torch.Tensor:
        """Image ``index``'s K entity maps (K, H, W), for display next to A_fuse (the paper's Fig. 5)."""
        return entity_maps(image.slot_attn[index], image.grid, size)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, metadata: dict | None = None) -> CheckpointInfo:
        """Write safetensors weights, config and metadata atomically; see :func:`sag.checkpoint.save_pretrained`."""
        return save_pretrained(self, directory, metadata)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = "cpu") -> "SaG":
        """Load a checkpoint written by :meth:`save_pretrained`, offline; the model is returned in eval mode."""
        return load_pretrained(directory, device)


def load_pretrained(directory: str | Path, device: str | torch.device | None = "cpu") -> SaG:
    """Rebuild a SaG model from ``directory`` with no network access; returned in eval mode on ``device``."""
    config, state, meta = read_checkpoint(directory)
    model = SaG(config, pretrained=False, text_encoder=load_text_encoder(config, Path(directory)))
    model.load_state_dict(state, strict=True)
    model.version = meta["version"]
    model.metadata = meta
    return model.to(resolve_device(device)).eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def head_parameters(model: SaG, include_decoder: bool = True) -> int:
    """Parameters of the SaG heads: projections, entity discovery, fusion (and the reconstruction decoder)."""
    total = count_parameters(model.entity) + count_parameters(model.fusion) + count_parameters(model.text_encoder.proj)
    return total + (count_parameters(model.decoder) if include_decoder else 0)
