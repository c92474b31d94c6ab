"""Bottom-up attention: the entity discovery module (paper, Sec. 3.2).

Slots start as K_s samples from each of K_g learnable Gaussians (entity slots), then alternate T times between

* aggregation: cross-attention normalised over *slots*, so slots compete for each patch (Eq. 3), renormalised over
  patches, a residual update and an MLP (Eq. 4);
* interaction: self-attention among the slots drawn from the same Gaussian, one set of weights for all groups (Eq. 5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import SaGConfig
from .layers import CrossAttention, FeedForward, merge_heads, split_heads
from .outputs import EntityOutput
from .position import sine_position_encoding_2d


class EntitySlots(nn.Module):
    """Initial slots S^0 (B, K, D) for the three slot types of the paper's Table 3, parameterised as the authors'
    ``Queries`` (model/attention.py of kdwonn/SaG):

    * ``entity``: K_s samples from each of K_g Gaussians, consecutive slots share a Gaussian. Parameters ``mu`` and
      ``logvar`` (K_g, D): s = mu + exp(logvar / 2) * eps. Initialised xavier-uniform, logvar shifted by ln(1/D), so
      the noise std per dimension is ~1/sqrt(D) and its norm ~1.
    * ``random``: all K slots sampled from one Gaussian. Parameters ``mu`` and ``log_sigma`` (1, D), a log-*std*:
      s = mu + exp(log_sigma) * eps. Both xavier-uniform on the authors' (1, 1, D) tensor, i.e. U(+-sqrt(3/D)), with
      no ln(1/D) shift (that shift is for entity slots only), so the noise std per dimension is ~1.
    * ``query``: K learned embeddings ``query`` (K, D), initialised randn (std 1), no sampling.

    In training the noise is fresh every call. In eval mode a fixed, seeded noise buffer (saved with the checkpoint)
    is used, so inference is deterministic; the authors' code resamples it at test time.

    Checkpoints written before random slots were a log-std hold ``logvar`` for them; loading converts it
    (log_sigma = logvar / 2 gives the same std), so they keep behaving as trained.
    """

    def __init__(self, config: SaGConfig):
        super().__init__()
        self.slot_type = config.slot_type
        self.num_slots = config.num_slots
        self.samples = config.samples_per_gaussian
        dim = config.embed_dim
        if self.slot_type == "query":
            self.query = nn.Parameter(torch.randn(self.num_slots, dim))
        elif self.slot_type == "entity":
            gaussians = config.num_gaussians
            # xavier-uniform of the authors' (1, K_g, D) tensor: fan_in = K_g * D, fan_out = D.
            bound = math.sqrt(6.0 / (gaussians * dim + dim))
            self.mu = nn.Parameter(torch.empty(gaussians, dim).uniform_(-bound, bound))
            self.logvar = nn.Parameter(torch.empty(gaussians, dim).uniform_(-bound, bound) + math.log(1.0 / dim))
        else:
            bound = math.sqrt(6.0 / (dim + dim))  # xavier-uniform of the authors' (1, 1, D): fan_in = fan_out = D
            self.mu = nn.Parameter(torch.empty(1, dim).uniform_(-bound, bound))
            self.log_sigma = nn.Parameter(torch.empty(1, dim).uniform_(-bound, bound))
        generator = torch.Generator().manual_seed(config.eval_noise_seed)
        self.register_buffer("eval_noise", torch.randn(self.num_slots, dim, generator=generator))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old, new = prefix + "logvar", prefix + "log_sigma"
        if self.slot_type == "random" and old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old) / 2  # an old random-slot log-variance: the same std as a log-std
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sample_noise(self, batch: int) -> torch.Tensor | None:
        """A fresh standard-normal draw (batch, K, D) for :meth:`forward`'s ``noise``; None for query slots."""
        if self.slot_type == "query":
            return None
        return torch.randn(batch, self.num_slots, self.mu.shape[-1], device=self.mu.device, dtype=self.mu.dtype)

    def std(self) -> torch.Tensor:
        """The per-dimension noise std of each Gaussian: (K_g, D) for entity slots, (1, D) for random slots."""
        if self.slot_type == "entity":
            return (0.5 * self.logvar).exp()
        if self.slot_type == "random":
            return self.log_sigma.exp()
        raise ValueError("query slots are not sampled")

    def forward(self, batch: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Initial slots (batch, K, D). ``noise`` (batch, K, D): the standard-normal draw to use instead of a fresh
        one (training) or the fixed one (eval), so that two slot modules can start from the same sample; ignored by
        query slots."""
        if self.slot_type == "query":
            return self.query.unsqueeze(0).expand(batch, -1, -1)
        repeats = self.samples if self.slot_type == "entity" else self.num_slots
        mu = self.mu.repeat_interleave(repeats, dim=0)  # (K, D)
        std = self.std().repeat_interleave(repeats, dim=0)
        if noise is None and self.training:
            noise = torch.randn(batch, *mu.shape, device=mu.device, dtype=mu.dtype)
        elif noise is None:
            noise = self.eval_noise.to(mu.dtype).unsqueeze(0).expand(batch, -1, -1)
        return mu + std * noise


class SlotAggregation(CrossAttention):
    """Aggregation block (Eqs. 3-4): pre-LN cross-attention of the slots over the patches, normalised over the slots
    (they compete for every patch), then a residual MLP. No GRU."""

    def __init__(self, config: SaGConfig):
        dim = config.embed_dim
        norms = {"norm_slots": nn.LayerNorm(dim), "norm_inputs": nn.LayerNorm(dim)}
        super().__init__(dim, config.num_heads, config.head_dim, "queries", config.dropout, pre_norms=norms)
        self.ff = FeedForward(dim, config.mlp_ratio, config.dropout)

    def project_inputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) visual features -> keys and values (B, H, N, d); reused across iterations when shared."""
        return self.keys_values(self.norm_inputs(inputs))

    def forward(
        self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """slots (B, K, D), keys/values (B, H, N, d) -> updated slots (B, K, D) and A_slot (B, N, K)."""
        updates, attn = super().forward(self.norm_slots(slots), keys, values)  # attn (B, H, K, N)
        slots = slots + updates
        slots = slots + self.ff(slots)
        return slots, attn.transpose(-1, -2).mean(dim=1)


class GroupInteraction(nn.Module):
    """Interaction block: self-attention within each group of K_s slots from one Gaussian, weights shared.

    Dropout acts on the output projection and in the MLP (``config.dropout``, as the authors); dropout on the attention
    weights themselves is ``config.interaction_attn_dropout`` (default 0, as the authors' shipped scripts).
    """

    def __init__(self, config: SaGConfig):
        super().__init__()
        dim = config.embed_dim
        inner = config.interaction_heads * config.interaction_head_dim
        self.heads = config.interaction_heads
        self.group = config.samples_per_gaussian
        self.attn_dropout = config.interaction_attn_dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(config.dropout))
        self.ff = FeedForward(dim, config.mlp_ratio, config.dropout)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (B, K, D) -> slots (B, K, D), each attending only to the slots of its own Gaussian."""
        batch, num_slots, dim = slots.shape
        x = slots.reshape(batch * num_slots // self.group, self.group, dim)  # one row per Gaussian
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.to_out(merge_heads(out))
        x = x + self.ff(x)
        return x.reshape(batch, num_slots, dim)


class EntityDiscovery(nn.Module):
    """Phi: visual features (B, N, C) -> K entity embeddings and the patch-to-slot attention A_slot."""

    def __init__(self, config: SaGConfig, in_dim: int):
        super().__init__()
        dim = config.embed_dim
        self.iterations = config.iterations
        self.position_temperature = config.position_temperature
        self.position_scale = config.position_scale
        self.input_proj = nn.Linear(in_dim, dim)
        self.slots = EntitySlots(config)
        blocks = 1 if config.share_weights else config.iterations
        self.aggregate = nn.ModuleList(SlotAggregation(config) for _ in range(blocks))
        self.interact = nn.ModuleList(GroupInteraction(config) for _ in range(blocks))
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        # Backpropagate through the last ``grad_iterations`` iterations only (None: all of them). A training-time
        # setting, not part of the model: the forward pass is the same either way. Set by training.engine.
        self.grad_iterations: int | None = None

    def forward(self, features: torch.Tensor, grid: tuple[int, int],
                noise: torch.Tensor | None = None) -> EntityOutput:
        """features (B, N, C) on an (h, w) grid -> EntityOutput with entities (B, K, D), A_slot (B, N, K).
        ``noise`` (B, K, D): the initial slots' draw (see :meth:`EntitySlots.forward`); None draws as usual."""
        batch, num_patches, _ = features.shape
        if grid[0] * grid[1] != num_patches:
            raise ValueError(f"grid {grid} does not match {num_patches} patches")
        x = self.input_proj(features)
        pos = sine_position_encoding_2d(*grid, x.shape[-1], self.position_temperature, device=x.device, dtype=x.dtype)
        x = x + self.position_scale * pos
        slots = self.slots(batch, noise)
        kv = self.aggregate[0].project_inputs(x) if len(self.aggregate) == 1 else None
        attn = None
        untracked = self.iterations - self.grad_iterations if self.grad_iterations else 0
        for t in range(self.iterations):
            # The first iterations run without a graph: the gradient is that of the last ones from where the slots
            # stood, a first-order approximation of differentiating the fixed point (Chang et al., "Object
            # Representations as Fixed Points", NeurIPS 2022) that spares most of the backward pass.
            with torch.set_grad_enabled(torch.is_grad_enabled() and t >= untracked):
                agg = self.aggregate[t % len(self.aggregate)]
                keys, values = kv if kv is not None else agg.project_inputs(x)
                slots, attn = agg(slots, keys, values)
                slots = self.interact[t % len(self.interact)](slots)
        return EntityOutput(entities=self.out(slots), slot_attn=attn)
