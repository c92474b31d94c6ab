"""Small building blocks shared by the entity discovery and fusion modules."""

from __future__ import annotations

import torch
from torch import nn


class FeedForward(nn.Module):
    """Pre-LN MLP, D -> mult*D -> D with GELU; used as ``x + ff(x)``."""

    def __init__(self, dim: int, mult: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mult)
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, H*d) -> (..., H, L, d)."""
    *lead, length, width = x.shape
    return x.view(*lead, length, heads, width // heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., H, L, d) -> (..., L, H*d)."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


class CrossAttention(nn.Module):
    """Multi-head cross-attention that also returns its attention weights (A_slot, A_fuse).

    Q queries x (..., Q, D) attend to N keys and values (..., H, N, d) made by :meth:`keys_values` from a context
    (..., N, D); H = ``heads``, d = ``head_dim``, D_h = H * d. Leading dims broadcast, so one call can fuse every
    text with every image. Norms, residuals and MLPs belong to the caller (the paper's blocks are pre-LN around it).

    ``softmax_over`` says which axis of the logits competes:

    * ``"keys"``: standard attention, each query's weights sum to 1 over the N keys (fusion, Eq. 7).
    * ``"queries"``: slot attention, the Q queries (slots) compete for each key (patch) (Eq. 3); the values are then
      averaged with these weights renormalised over the keys (Eq. 4), so every update is a weighted mean.

    It does not use ``F.scaled_dot_product_attention``: SDPA returns only the output, never the weights, which the
    model needs as A_slot and A_fuse, and it softmaxes over the keys only, not over the queries as slot attention does.

    Subclasses keep their checkpoints' parameter names by inheriting ``to_q``, ``to_k``, ``to_v`` and ``to_out``.
    ``pre_norms`` (the caller's pre-LayerNorms, applied by the caller) are registered ahead of the projections, where
    those blocks always had them: optimizer state in training checkpoints and gradient clipping follow parameter order.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, softmax_over: str = "keys", dropout: float = 0.0,
                 pre_norms: dict[str, nn.Module] | None = None):
        super().__init__()
        if softmax_over not in ("keys", "queries"):
            raise ValueError(f"softmax_over must be 'keys' or 'queries', got {softmax_over!r}")
        for name, norm in (pre_norms or {}).items():
            self.add_module(name, norm)
        inner = heads * head_dim
        self.heads = heads
        self.scale = head_dim**-0.5
        self.softmax_over = softmax_over
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (..., N, D) -> keys and values (..., H, N, d); computed once, they can serve several queries."""
        return split_heads(self.to_k(context), self.heads), split_heads(self.to_v(context), self.heads)

    def forward(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., Q, D), keys/values (..., H, N, d) -> output (..., Q, D) and weights (..., H, Q, N).

        The weights are the softmax itself (before the renormalisation over keys of ``"queries"``): they sum to 1
        over N for ``"keys"``, over Q for ``"queries"``.
        """
        q = split_heads(self.to_q(x), self.heads)  # (..., H, Q, d)
        if self.softmax_over == "queries":
            # Logits laid out (..., N, Q), as the slot block always had them: a softmax over dim -2 of (..., Q, N)
            # would reduce in another order and change the last bits. The weights go back as a transposed view.
            attn = (torch.einsum("...nd,...qd->...nq", keys, q) * self.scale).softmax(dim=-1)
            weights = attn / (attn.sum(dim=-2, keepdim=True) + 1e-7)  # eps: a slot no patch picks gets 0, not NaN
            out = torch.einsum("...nq,...nd->...qd", weights, values)
            attn = attn.transpose(-1, -2)
        else:
            attn = (torch.einsum("...qd,...nd->...qn", q, keys) * self.scale).softmax(dim=-1)
            out = torch.einsum("...qn,...nd->...qd", attn, values)
        return self.to_out(merge_heads(out)), attn
