"""Mask-free validation: text-to-image retrieval on image-text pairs kept out of training.

A project without hand-corrected masks still has evidence of whether a fine-tune helped: C^3 trains the model to
pick, for each text, its own image among the others of a batch. So some of the project's images, with all their
texts, are kept out of training (:func:`hold_out`), and the serving version and the candidate are both asked, for
each held-out text, which of the held-out images it is about (:func:`retrieval_scores`). A candidate that learnt
the project's words picks its own image more often; one that broke (a learning rate far too high, texts paired with
the wrong images) picks it less often, and is not promoted (training/finetune.py).

Why whole images are held out: a held-out text whose image was trained on (with another of its texts) could be
retrieved by remembering the image alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from sag import SaG

from .datasets.base import ReferringDataset

# Grid positions the held-out reconstruction loss is measured at: a fixed sample, so that a check of the default
# model's 576 positions costs a ninth of the decoder's pass.
RECON_POSITIONS = 64


@dataclass(frozen=True)
class RetrievalScores:
    """How well a model matches held-out texts to held-out images.

    ``accuracy``: the share of texts whose own image scores highest among all held-out images (chance is about
    1 / ``images``); where one text is paired with several images ("the red car" of two photos), any of them is
    its own. ``rank``: where the own image ranks among the held-out images, 0 for first and 1 for last, averaged
    over the texts (chance is 0.5); unlike the accuracy it credits an own image moved from tenth to second, and
    unlike the loss it cannot be lowered by sharpening the scores alone. ``loss``: the mean cross-entropy of the
    scores against the own image(s), C^3 measured on data it was not trained on.
    """

    accuracy: float
    rank: float
    loss: float
    pairs: int
    images: int
    # The reconstruction loss (the paper's Eq. 9) of the held-out images' features from their entities, at a fixed
    # set of grid positions: whether entity discovery still explains the images, which retrieval cannot tell (a
    # run that breaks the slots can still learn to tell images apart). None when the entities were given.
    reconstruction: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"accuracy": round(self.accuracy, 4), "rank": round(self.rank, 4), "loss": round(self.loss, 4),
                "pairs": self.pairs, "images": self.images,
                "reconstruction": None if self.reconstruction is None else round(self.reconstruction, 6)}


def hold_out(pairs: ReferringDataset, fraction: float, minimum: int, maximum: int,
             seed: int = 0) -> tuple[ReferringDataset, ReferringDataset | None]:
    """Split ``pairs`` by image into (training pairs, held-out pairs).

    Whole images (with all their texts) are drawn, seeded, until at least ``fraction`` of the pairs (at least
    ``minimum``, at most about ``maximum``) are held out. Returns ``(pairs, None)`` when that would leave fewer pairs
    for training than are held out, or fewer than two held-out images (retrieval needs a choice).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    by_image: dict[str, list[int]] = {}
    for i, expr in enumerate(pairs.expressions):
        by_image.setdefault(expr.image, []).append(i)
    images = sorted(by_image)
    random.Random(seed).shuffle(images)
    want = min(maximum, max(minimum, round(fraction * len(pairs))))
    held: list[int] = []
    chosen = 0
    for image in images:
        if len(held) >= want:
            break
        held += by_image[image]
        chosen += 1
    if chosen < 2 or len(pairs) - len(held) < len(held):
        return pairs, None
    keep = sorted(set(range(len(pairs))) - set(held))
    return pairs.subset(keep), pairs.subset(sorted(held))


def _images(heldout: ReferringDataset) -> list[str]:
    return sorted({expr.image for expr in heldout.expressions})


@torch.no_grad()
def heldout_entities(model: SaG, heldout: ReferringDataset, batch_size: int = 64) -> torch.Tensor:
    """Entities (I, K, D) of the I held-out images (``model`` put in eval mode), in the order
    :func:`retrieval_scores` expects: computed once, they serve the serving version and a candidate whose image side
    was kept fixed alike."""
    return _encode_heldout(model, heldout, batch_size)[0]


@torch.no_grad()
def _encode_heldout(model: SaG, heldout: ReferringDataset, batch_size: int,
                    recon_positions: int | None = None) -> tuple[torch.Tensor, float | None]:
    """Entities (I, K, D) of the held-out images and, with ``recon_positions``, their mean reconstruction loss at
    that many grid positions, the same ones for every model (drawn from a fixed seed), so that two models are
    compared on the same positions at a fraction of the decoder's cost."""
    model.eval()
    images = _images(heldout)
    entities, error, positions = [], 0.0, None
    for start in range(0, len(images), batch_size):
        chunk = [heldout.image_loader(path) for path in images[start:start + batch_size]]
        image = model.encode_image(model.preprocess(chunk))
        entities.append(image.entities)
        if recon_positions is not None:
            if positions is None:  # drawn once, when the grid is known: every batch has the same one
                cells = image.features.shape[1]
                positions = torch.randperm(cells, generator=torch.Generator().manual_seed(0))[:recon_positions]
            # the mean over this batch's images, weighted by their count: every image has as many positions
            error += float(model.reconstruction(image, positions.to(image.features.device))) * len(chunk)
    return torch.cat(entities), (error / len(images) if recon_positions is not None else None)


@torch.no_grad()
def retrieval_scores(model: SaG, heldout: ReferringDataset, batch_size: int = 64,
                     entities: torch.Tensor | None = None, recon_positions: int = RECON_POSITIONS) -> RetrievalScores:
    """Text-to-image retrieval of ``model`` (put in eval mode) among the held-out images, as C^3 scores a pair:
    <z_ij, x^T_j> for text j fused with image i (sag/losses.py), every text against every held-out image.
    ``entities``: the images' entities from :func:`heldout_entities`, when the image side is known to be this
    model's (else they are computed, and the reconstruction loss measured at ``recon_positions`` grid positions)."""
    reconstruction = None
    if entities is None:
        entities, reconstruction = _encode_heldout(model, heldout, batch_size, recon_positions)
    model.eval()
    images = _images(heldout)
    index = {image: i for i, image in enumerate(images)}
    owners: dict[str, set[int]] = {}  # text -> the held-out images it is paired with
    for expr in heldout.expressions:
        owners.setdefault(expr.text, set()).add(index[expr.image])
    correct, losses, ranks = 0, [], []
    exprs = heldout.expressions
    for start in range(0, len(exprs), batch_size):
        batch = exprs[start:start + batch_size]
        text = model.encode_text(**model.tokenize([e.text for e in batch]))
        z = model.fuse(entities, text, all_pairs=True).z  # (T, I, D)
        logits = torch.einsum("tid,td->ti", z.float(), text.float()) / model.config.c3_temperature
        own = torch.zeros_like(logits, dtype=torch.bool)  # (T, I)
        for t, expr in enumerate(batch):
            own[t, sorted(owners[expr.text])] = True
        correct += int(own.gather(1, logits.argmax(dim=1, keepdim=True)).sum())
        # images scoring strictly above the best own image, over the others it could be beaten by
        best_own = logits.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values
        above = ((logits > best_own) & ~own).sum(dim=1).float()
        ranks.append(above / (~own).sum(dim=1).clamp(min=1).float())
        # -log of the probability mass on the text's own image(s)
        losses.append((logits.logsumexp(dim=1) - logits.masked_fill(~own, float("-inf")).logsumexp(dim=1)).sum())
    return RetrievalScores(accuracy=correct / len(exprs), rank=float(torch.cat(ranks).mean()),
                           loss=float(torch.stack(losses).sum()) / len(exprs), pairs=len(exprs), images=len(images),
                           reconstruction=reconstruction)
