"""The MLP spatial-broadcast decoder that reconstructs visual features from the entities (paper, Sec. 3.4.2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SpatialBroadcastDecoder(nn.Module):
    """Each entity is tiled over the patch grid with a learned 2-D position, decoded by an MLP into a feature and an
    alpha logit; alphas compete over the K entities and the reconstruction is their alpha-weighted sum."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 512, layers: int = 3, max_grid: int = 64):
        super().__init__()
        self.max_grid = max_grid
        self.row_embed = nn.Embedding(max_grid, dim // 2)
        self.col_embed = nn.Embedding(max_grid, dim - dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)
        widths = [dim] + [hidden] * layers
        mlp: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            mlp += [nn.Linear(a, b), nn.ReLU()]
        mlp.append(nn.Linear(widths[-1], out_dim + 1))
        self.mlp = nn.Sequential(*mlp)

    def forward(self, entities: torch.Tensor, grid: tuple[int, int],
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """entities (B, K, D) -> reconstruction (B, N, C) and alpha (B, N, K), N = h * w.

        ``positions`` (P,): decode only these flat grid positions (row-major), giving (B, P, C) and (B, P, K). Each
        position is decoded on its own (the alphas compete over entities, not positions), so these are exactly the
        full result's rows, at P / N of the cost.
        """
        h, w = grid
        if max(h, w) > self.max_grid:
            raise ValueError(f"grid {grid} is larger than the decoder's position table ({self.max_grid})")
        device = entities.device
        rows = self.row_embed(torch.arange(h, device=device))  # (h, D/2)
        cols = self.col_embed(torch.arange(w, device=device))  # (w, D/2)
        pos = torch.cat((cols.unsqueeze(0).expand(h, -1, -1), rows.unsqueeze(1).expand(-1, w, -1)), dim=-1)
        # The first layer is linear in (entity + position), so apply it to each term and broadcast the sum:
        # W(e + p) + b = (We + b) + Wp costs B*K + N rows instead of B*K*N (a quarter of the MLP at the paper size).
        first = self.mlp[0]
        pos = pos.reshape(h * w, -1)
        if positions is not None:
            pos = pos[positions]
        x = first(entities).unsqueeze(2) + F.linear(pos, first.weight)  # (B, K, N, hidden)
        out = self.mlp[1:](x)
        alpha = out[..., -1].softmax(dim=1)  # (B, K, N): entities compete for each patch
        recon = torch.einsum("bkn,bknc->bnc", alpha, out[..., :-1])
        return recon, alpha.transpose(1, 2)
