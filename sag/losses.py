"""Training objectives: contrastive cycle-consistency (C^3, Eq. 8) and feature reconstruction (Eq. 9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def c3_loss(z_all: torch.Tensor, text: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """C^3 loss: for each text j, InfoNCE of <z_jj, sg(x^T_j)> against <z_ij, sg(x^T_j)> for all images i.

    Args:
        z_all: (T, I, D) cross-modal embeddings of every text t fused with every image i (T == I == B; the positive
            pair of text j is image j).
        text: (B, D) text features x^T. The target is detached: no gradient reaches the text through it.
        temperature: divides the logits (1.0 in the paper's code, where the scale is the norm of x^T).
    Returns:
        scalar loss (float32).
    """
    if z_all.ndim != 3 or z_all.shape[0] != z_all.shape[1] or z_all.shape[0] != text.shape[0]:
        raise ValueError(f"expected z_all (B, B, D) and text (B, D), got {tuple(z_all.shape)} and {tuple(text.shape)}")
    target = text.detach()
    logits = torch.einsum("tid,td->ti", z_all.float(), target.float()) / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def reconstruction_loss(reconstruction: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between decoded features (B, N, C) and the detached visual features (B, N, C)."""
    return F.mse_loss(reconstruction.float(), features.detach().float())


def grouping_loss(reference: torch.Tensor, slot_attn: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(reference || slot_attn) per patch, averaged over the batch and the patches: how far the patch-to-slot
    assignment A_slot (B, N, K), each row summing to 1 over the K slots, moved from a reference one of the same
    shape (a frozen copy of entity discovery, run from the same initial slots). Not in the paper: it keeps a
    fine-tune from regrouping the patches while the rest of entity discovery learns (training.engine's
    ``TrainConfig.grouping_distill``)."""
    reference = reference.detach()
    kl = reference * (reference.clamp_min(eps).log() - slot_attn.clamp_min(eps).log())
    return kl.sum(dim=-1).mean()
