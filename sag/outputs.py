"""What the model and its parts return: typed outputs with documented fields and shapes.

One home for the dataclasses that flow between the modules (as Hugging Face's ``modeling_outputs``), so that a caller
can read what a step returns without reading the step. Each stays importable from the module that returns it
(``sag.model.ImageEntities``, ``sag.entity.EntityOutput`` ...), the names older code and pickles use.

Shapes: B images (or image-text pairs), K entities, D the joint embedding width, N = h * w patches on the backbone's
(h, w) grid, C the backbone's feature width, (H, W) an image's original size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class EntityOutput:
    """What the entity discovery module (:class:`sag.entity.EntityDiscovery`) returns for a batch of images.

    Attributes:
        entities: (B, K, D) entity embeddings Phi(x^V).
        slot_attn: (B, N, K) A_slot of the last aggregation, sums to 1 over K.
    """

    entities: torch.Tensor
    slot_attn: torch.Tensor


@dataclass
class FusionOutput:
    """What the modality fusion (:class:`sag.fusion.ModalityFusion`) returns.

    Attributes:
        z: the cross-modal embedding, unit L2 norm: (B, D) for B paired texts and images, or (T, I, D) for all
            text-image pairs.
        fuse_attn: A_fuse, (B, K) or (T, I, K), sums to 1 over K: each entity's relevance to the text.
    """

    z: torch.Tensor
    fuse_attn: torch.Tensor


@dataclass
class ImageEntities:
    """The cacheable image side of SaG for a batch of B images (:meth:`sag.model.SaG.encode_image`).

    Attributes:
        entities: (B, K, D) entity embeddings.
        slot_attn: (B, N, K) A_slot, sums to 1 over K.
        grid: (h, w), h * w = N.
        features: (B, N, C) backbone features, the reconstruction target (training); ``None`` when dropped.
    """

    entities: torch.Tensor
    slot_attn: torch.Tensor
    grid: tuple[int, int]
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.entities.shape[0]

    def __getitem__(self, index: int | slice) -> "ImageEntities":
        index = slice(index, index + 1) if isinstance(index, int) else index
        feats = self.features[index] if self.features is not None else None
        return ImageEntities(self.entities[index], self.slot_attn[index], self.grid, feats)

    def to(self, device: torch.device | str) -> "ImageEntities":
        feats = self.features.to(device) if self.features is not None else None
        return ImageEntities(self.entities.to(device), self.slot_attn.to(device), self.grid, feats)

    @staticmethod
    def cat(items: Sequence["ImageEntities"]) -> "ImageEntities":
        """Concatenate along the batch; all items must share a grid. The features are dropped."""
        grids = {item.grid for item in items}
        if len(grids) != 1:
            raise ValueError(f"cannot concatenate entities on different grids: {sorted(grids)}")
        return ImageEntities(
            torch.cat([i.entities for i in items]), torch.cat([i.slot_attn for i in items]), items[0].grid
        )


@dataclass
class Segmentation:
    """One referring expression's prediction on one image, at the image's original size
    (:meth:`sag.model.SaG.segment`, :func:`sag.pipeline.segment_texts`).

    Attributes:
        mask: (H, W) bool: ``soft`` >= the threshold tau (or the region spatial words picked, :mod:`sag.pipeline`).
        soft: (H, W) float in [0, 1]: the min-max normalised combined map (refined when a refinement was applied).
        fuse_attn: (K,) A_fuse: each entity's relevance to the text.
        score: the largest A_fuse: how confidently the text picks out an entity.
        unrefined: (H, W) the bilinear map before edge-aware refinement (:mod:`sag.refine`) when one was applied,
            else ``None``.
        region_match, landmark_overlap, pair_match, entity_inside, entity_gap, unknown_words, word_count: the
            evidence :mod:`sag.confidence` scores the mask with, ``None`` where not measured
            (:meth:`SaG.segment <sag.model.SaG.segment>` leaves them so; :class:`sag.pipeline.TextQueries` fills
            them). Each in [0, 1] but the count: how much better the text (for spatial words, its head) matches the
            entities under the mask than those outside it, how well it matches the image, how much of the mask's
            main entity the mask holds, and whether that entity is the one the text matches best
            (:func:`sag.confidence.match_evidence`); for a relation, the share of the mask inside the landmark's
            mask; the share of the text's words the tokenizer does not know
            (:func:`sag.confidence.unknown_word_share`); the text's number of words.
    """

    mask: torch.Tensor
    soft: torch.Tensor
    fuse_attn: torch.Tensor
    score: float
    unrefined: torch.Tensor | None = None
    region_match: float | None = None
    landmark_overlap: float | None = None
    pair_match: float | None = None
    entity_inside: float | None = None
    entity_gap: float | None = None
    unknown_words: float | None = None
    word_count: int | None = None


@dataclass
class TrainOutput:
    """One training step's losses (:meth:`sag.model.SaG.forward`), each a scalar tensor.

    Attributes:
        loss: the total, ``c3 + recon_weight * recon`` (``+ grouping_weight * grouping`` when asked for).
        c3: the cross-modal cycle-consistency loss C^3 (Eq. 8).
        recon: the feature reconstruction loss (Eq. 9); 0 when the image side is frozen and given as entities.
        grouping: how far A_slot moved from a reference entity discovery's (``sag.losses.grouping_loss``), when
            :meth:`~sag.model.SaG.forward` was given one; None otherwise.
    """

    loss: torch.Tensor
    c3: torch.Tensor
    recon: torch.Tensor
    grouping: torch.Tensor | None = None
