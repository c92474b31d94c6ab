"""Top-down attention: the modality fusion module (paper, Sec. 3.3).

One pre-LN cross-attention transformer layer with the text feature as the single query and an image's entities as keys
and values. Its attention over the K entities is A_fuse (Eq. 7); its L2-normalised output is the cross-modal
embedding z (Eq. 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import SaGConfig
from .layers import FeedForward, split_heads


@dataclass
class FusionOutput:
    z: torch.Tensor  # (B, D) paired, or (T, I, D) for all text-image pairs; unit L2 norm
    fuse_attn: torch.Tensor  # (B, K) or (T, I, K): A_fuse, sums to 1 over K


class ModalityFusion(nn.Module):
    """Psi: entities and a text feature -> cross-modal embedding z and A_fuse."""

    def __init__(self, config: SaGConfig):
        super().__init__()
        dim, inner = config.embed_dim, config.attn_dim
        self.heads = config.num_heads
        self.scale = config.head_dim**-0.5
        self.norm_text = nn.LayerNorm(dim)
        self.norm_entities = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(config.dropout))
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
        q = self.to_q(self.norm_text(text)).unflatten(-1, (self.heads, -1))  # (T, H, d)
        kv_in = self.norm_entities(entities)
        k = split_heads(self.to_k(kv_in), self.heads)  # (I, H, K, d)
        v = split_heads(self.to_v(kv_in), self.heads)
        if all_pairs:
            attn = (torch.einsum("thd,ihkd->tihk", q, k) * self.scale).softmax(dim=-1)
            out = torch.einsum("tihk,ihkd->tihd", attn, v).flatten(-2)  # (T, I, H*d)
            residual = text.unsqueeze(1)
        else:
            attn = (torch.einsum("bhd,bhkd->bhk", q, k) * self.scale).softmax(dim=-1)
            out = torch.einsum("bhk,bhkd->bhd", attn, v).flatten(-2)  # (B, H*d)
            residual = text
        # The residual carries the text itself through the fusion (as in the authors' code).
        c = residual + self.to_out(out)
        c = c + self.ff(c)
        return FusionOutput(z=F.normalize(c, dim=-1), fuse_attn=attn.mean(dim=-2))
