"""Top-down attention: the modality fusion module (paper, Sec. 3.3).

One pre-LN cross-attention transformer layer with the text feature as the single query and an image's entities as keys
and values. Its attention over the K entities is A_fuse (Eq. 7); its L2-normalised output is the cross-modal
embedding z (Eq. 6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SaGConfig
from .layers import CrossAttention, FeedForward
from .outputs import FusionOutput


class ModalityFusion(CrossAttention):
    """Psi: entities and a text feature -> cross-modal embedding z and A_fuse.

    Pre-LN cross-attention with the text as the single query, normalised over the entities (keys), then a residual
    MLP.
    """

    def __init__(self, config: SaGConfig):
        dim = config.embed_dim
        norms = {"norm_text": nn.LayerNorm(dim), "norm_entities": nn.LayerNorm(dim)}
        super().__init__(dim, config.num_heads, config.head_dim, "keys", config.dropout, pre_norms=norms)
        self.ff = FeedForward(dim, config.mlp_ratio, 0.0)

    def forward(self, entities: torch.Tensor, text: torch.Tensor, all_pairs: bool = False) -> FusionOutput:
        """Fuse texts with entities.

        Args:
            entities: (I, K, D) entity embeddings of I images.
            text: (T, D) text features x^T.
            all_pairs: False fuses text i with image i (needs T == I) and returns (B, ...) tensors; True fuses every
                text with every image in one batched pass and returns (T, I, ...) tensors, as C^3 needs.
        """
        if not all_pairs and entities.shape[0] != text.shape[0]:
            raise ValueError(f"paired fusion needs as many texts as images, got {text.shape[0]} and "
                             f"{entities.shape[0]}")
        keys, values = self.keys_values(self.norm_entities(entities))  # (I, H, K, d)
        query = self.norm_text(text).unsqueeze(-2)  # (T, 1, D): one query per text
        if all_pairs:  # broadcast every text against the I images
            query, text = query.unsqueeze(1), text.unsqueeze(1)  # (T, 1, 1, D), (T, 1, D)
        out, attn = super().forward(query, keys, values)  # (..., 1, D) and (..., H, 1, K)
        # The residual carries the text itself through the fusion (as in the authors' code).
        c = text + out.squeeze(-2)
        c = c + self.ff(c)
        return FusionOutput(z=F.normalize(c, dim=-1), fuse_attn=attn.squeeze(-2).mean(dim=-2))
