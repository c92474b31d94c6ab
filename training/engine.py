"""The training loop as a library: :class:`Trainer` fits a SaG model on image-text pairs.

Callable from the CLI (``sag-train``), the benchmark and the Label Studio fine-tuning job alike::

    trainer = Trainer(model, pairs, TrainConfig(max_steps=1000), output_dir="runs/x", val_data=val,
                      progress=lambda step, total, loss: ...)
    result = trainer.fit()        # resumes from the newest checkpoint in output_dir when config.resume

What it does: AdamW with a lower learning rate for the backbones, linear warm-up then cosine decay, mixed precision on
CUDA, gradient clipping and accumulation, validation on masks (when the validation set has them) with best-checkpoint
selection, metrics as JSON lines (``output_dir/metrics.jsonl``), exact resume, and DDP under ``torchrun``. What a
checkpoint holds and how it is written atomically is :mod:`training.checkpoints`' business.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sag import SaG, autocast
from sag.device import resolve_precision
from sag.preprocess import preprocess_images
from sag.text_encoder import tokenize_batch

from .checkpoints import (
    check_model_config,
    checkpoint_path,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    read_weights,
    rng_state,
    set_rng_state,
    write_best,
    write_checkpoint,
)
from .datasets.base import Sample

ProgressCallback = Callable[[int, int, float], None]
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """How to train. One optimizer step consumes ``batch_size * grad_accum`` pairs per process."""

    epochs: int = 50
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 32  # per process and micro-batch: C^3 draws its negatives from it
    grad_accum: int = 1
    lr: float = 1e-5
    backbone_lr_scale: float = 0.1  # image and text backbones train at lr * this
    freeze_image_backbone: bool = False  # keep the image backbone's weights fixed (no gradients, eval mode)
    # With a frozen image backbone, compute each image's features once and reuse them (training/feature_cache.py):
    # "memory", "disk" (memory-mapped, in output_dir/feature-cache, reused by a resumed run) or "off".
    feature_cache: str = "memory"
    # Keep the whole image side fixed: backbone, entity discovery and the reconstruction decoder. Then only the text
    # side and the fusion train, on C^3 alone (the reconstruction loss reaches nothing but the image side), and each
    # image's entities are computed once (eval mode: deterministic slots) and kept in memory. A step then costs the
    # text encoder and the fusion: on 2 CPU cores about 0.7 s instead of 30-45 s with the default model's
    # paper-size heads (bench/README.md, "Start Training"). Implies freeze_image_backbone; needs a feature_cache.
    freeze_image_side: bool = False
    # Train only these sub-modules of the model (attribute paths, e.g. "text_encoder.backbone.embeddings"): every
    # other parameter is fixed and every other module in eval mode. None: what the freeze_* fields leave trainable.
    # Applied after them, so it cannot name a frozen part.
    train_only: tuple[str, ...] | None = None
    # Backpropagate through the last this many iterations of entity discovery only (None: all; see
    # sag.entity.EntityDiscovery.grad_iterations): when entity discovery trains, this spares most of its backward.
    entity_grad_iterations: int | None = None
    # Reconstruct the features at this many grid positions drawn at random each step instead of all of them
    # (SaG.forward's recon_positions; None: all): an unbiased estimate of the loss at a fraction of the decoder's
    # cost, which on the default model's 24 x 24 grid dominates a step that trains entity discovery.
    recon_positions: int | None = None
    time_budget_s: float | None = None  # stop (validating and checkpointing) once this much wall time has passed
    weight_decay: float = 1e-4
    # Pull every trained weight back towards where it started (the serving version, for a fine-tune) by
    # lr * anchor * (w - w_start) after each step: AdamW's decoupled weight decay, aimed at the starting point
    # instead of zero (the L2-SP idea of Li et al., ICML 2018, "Explicit inductive bias for transfer learning").
    # It bounds how far a short fine-tune on a few hundred pairs drifts from what the model knew. 0: off.
    anchor: float = 0.0
    # With entity discovery trained: add this weight times how far its patch-to-slot assignment A_slot moved from
    # that of a frozen copy made when the run started, both run from the same initial slots
    # (sag.losses.grouping_loss). A fine-tune on a new look then changes what the entities carry without regrouping
    # the patches: trained freely on C^3 + reconstruction, entity discovery lost a tenth of its mBO on the
    # domain-shift benchmark while its reconstruction improved (bench/README.md, "Start Training"). 0: off.
    grouping_distill: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * this
    grad_clip: float | None = 0.1
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16/fp16 on CUDA, fp32 on CPU)
    seed: int = 1
    eval_every: int | None = None  # steps between validations; None validates at the end of every epoch
    eval_batch_size: int = 32
    eval_limit: int | None = None  # validate on the first N expressions only (None: all, each exactly once)
    checkpoint_every: int | None = None  # steps; None checkpoints at every validation / epoch end
    keep_last: int = 2  # older checkpoints are pruned, the best one is always kept
    log_every: int = 10
    num_workers: int = 0
    resume: bool = True  # continue from the newest complete checkpoint in output_dir

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "epochs", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.entity_grad_iterations is not None and self.entity_grad_iterations < 1:
            raise ValueError(f"entity_grad_iterations must be at least 1 (or None: all), got "
                             f"{self.entity_grad_iterations}")
        if self.recon_positions is not None and self.recon_positions < 1:
            raise ValueError(f"recon_positions must be at least 1 (or None: all), got {self.recon_positions}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.grouping_distill < 0:
            raise ValueError(f"grouping_distill is a loss weight (>= 0), got {self.grouping_distill}")
        if self.grouping_distill and self.freeze_image_side:
            raise ValueError("grouping_distill keeps entity discovery's grouping near its start, but "
                             "freeze_image_side keeps entity discovery fixed: set one of them")
        if not 0.0 <= self.anchor * self.lr < 1.0:
            raise ValueError(f"anchor must be >= 0 and anchor x lr below 1 (each step moves a weight that share of "
                             f"the way back), got anchor {self.anchor} at lr {self.lr}")
        resolve_precision(self.precision, torch.device("cpu"))  # validates the name
        from .feature_cache import CACHE_MODES

        if self.feature_cache not in CACHE_MODES:
            raise ValueError(f"feature_cache must be one of {CACHE_MODES}, got {self.feature_cache!r}")
        if self.freeze_image_side and not self.freeze_image_backbone:
            raise ValueError("freeze_image_side freezes the image backbone too: set freeze_image_backbone")
        if self.freeze_image_side and self.feature_cache == "off":
            raise ValueError("freeze_image_side keeps entities per image: it needs a feature_cache")
        if self.train_only is not None:
            self.train_only = tuple(self.train_only)
            if not self.train_only:
                raise ValueError("train_only names no module: leave it None to train what is not frozen")
            frozen = ["image_encoder"] if self.freeze_image_backbone else []
            frozen += ["entity", "decoder"] if self.freeze_image_side else []
            clash = [p for p in self.train_only if p.split(".")[0] in frozen]
            if clash:
                raise ValueError(f"train_only names {clash}, which the freeze_* settings keep fixed")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` ends with: steps done, the best and the last checkpoint, every logged record."""

    steps: int
    best_checkpoint: Path | None
    best_metric: float | None
    last_checkpoint: Path | None
    history: list[dict] = field(default_factory=list)


class Collator:
    """Samples -> (pixels (B, 3, S, S), input_ids (B, L), attention_mask (B, L)); picklable for DataLoader workers.

    Reads images and texts only: any mask on a sample is ignored, so training is text-supervised by construction.
    """

    def __init__(self, model: SaG):
        self.size = model.config.image_size
        self.mean, self.std = model.image_encoder.mean, model.image_encoder.std
        self.text_encoder_tokenizer = model.text_encoder.tokenizer
        self.max_tokens = model.text_encoder.max_tokens

    def __call__(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = preprocess_images([s.image for s in samples], self.size, self.mean, self.std)
        tok = tokenize_batch(self.text_encoder_tokenizer, [s.text for s in samples], self.max_tokens)
        return pixels, tok["input_ids"], tok["attention_mask"]


def parameter_groups(model: SaG, config: TrainConfig) -> list[dict]:
    """Two AdamW groups: the backbones at ``lr * backbone_lr_scale``, everything else (heads) at ``lr``."""
    backbone_ids = {id(p) for m in (model.image_encoder, model.text_encoder.backbone) for p in m.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) in backbone_ids]
    heads = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
    groups = [{"params": heads, "lr": config.lr, "name": "heads"}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr * config.backbone_lr_scale, "name": "backbones"})
    return groups


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (numpy takes only 32 bits)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Fits ``model`` on ``train_data`` (a Dataset of :class:`Sample`; masks, if any, are never read).

    Args:
        model: a SaG model, on the device to train on (under DDP: this rank's device).
        train_data: image-text pairs.
        config: a :class:`TrainConfig`.
        output_dir: where checkpoints and ``metrics.jsonl`` go.
        val_data: optional Dataset of :class:`Sample` with masks; validated by mIoU (scheme ``ours``).
        progress: called after every optimizer step with (step, total steps, loss).
        metadata: merged into every checkpoint's metadata (e.g. ``trained_on``, ``parent``).
        show_progress: a tqdm bar on rank 0.
    """

    def __init__(self, model: SaG, train_data: Dataset, config: TrainConfig, output_dir: str | Path,
                 val_data: Dataset | None = None, progress: ProgressCallback | None = None,
                 metadata: dict | None = None, show_progress: bool = True):
        self.model = model
        self.train_data = train_data
        self.config = config
        self.output_dir = Path(output_dir)
        self.val_data = val_data
        self.progress = progress
        self.metadata = dict(metadata or {})
        self.show_progress = show_progress
        self.device = model.device
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.collate = Collator(model)
        self.loader_data: Dataset = train_data
        self.feature_cache = None
        self.entity_cache: dict[str, torch.Tensor] = {}  # image key -> entities (K, D), with freeze_image_side
        if config.freeze_image_backbone:
            # Frozen means eval mode as well (see _train_mode): BatchNorm running statistics are neither used from
            # the batch nor updated, and there is no drop-path, so the features are a pure function of the image.
            model.image_encoder.requires_grad_(False)
            if config.freeze_image_side:
                model.entity.requires_grad_(False)
                model.decoder.requires_grad_(False)
            if config.feature_cache != "off":
                from .feature_cache import CachedCollator, CachedPairs, FeatureCache, cache_directory

                directory = cache_directory(output_dir, self.rank) if config.feature_cache == "disk" else None
                self.feature_cache = FeatureCache.for_model(model, directory, batch_size=config.batch_size)
                self.loader_data = CachedPairs(train_data)
                self.collate = CachedCollator(model.text_encoder.tokenizer, model.text_encoder.max_tokens)
        if config.train_only is not None:
            trainable = [self._module(path) for path in config.train_only]
            model.requires_grad_(False)
            for module in trainable:
                module.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        # The starting weights (before any resume: a resumed run is still pulled towards where the run began).
        self.anchors = [[p.detach().clone() for p in g["params"]] if config.anchor else []
                        for g in self.optimizer.param_groups]
        # Entity discovery as it started, for grouping_distill (built, like the anchors, before any resume).
        self.grouping_reference: nn.Module | None = None
        if config.grouping_distill:
            self.grouping_reference = copy.deepcopy(model.entity).requires_grad_(False).eval()
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        needed = config.batch_size * self.world * config.grad_accum
        if len(train_data) < needed:
            raise ValueError(f"need at least one full batch: {len(train_data)} pairs < batch_size x processes x "
                             f"grad_accum = {needed}")
        self.batches_per_epoch = len(train_data) // (config.batch_size * self.world)
        self.steps_per_epoch = max(1, self.batches_per_epoch // config.grad_accum)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.best_metric: float | None = None
        self.best_checkpoint: Path | None = None
        self.history: list[dict] = []
        self.wrapped: nn.Module = model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ---- data order -------------------------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of ``epoch``: a seeded permutation, so a resumed run sees the same order."""
        gen = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        order = torch.randperm(len(self.train_data), generator=gen).tolist()
        size = self.config.batch_size
        batches = [order[i * size * self.world:(i + 1) * size * self.world] for i in range(self.batches_per_epoch)]
        return [b[self.rank::self.world] for b in batches]

    def _loader(self, indices: list[list[int]]) -> DataLoader:
        # Its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG, which would
        # shift the slot noise of a resumed run against an uninterrupted one.
        gen = torch.Generator().manual_seed(self.config.seed + self.epoch)
        return DataLoader(self.loader_data, batch_sampler=indices, collate_fn=self.collate,
                          num_workers=self.config.num_workers, generator=gen)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to ``total_steps`` (resuming first when ``config.resume``), validating and checkpointing."""
        from tqdm import tqdm

        cfg = self.config
        # Start: from the newest complete checkpoint (weights, optimizer, RNG, position in the epoch), else seeded.
        # Each rank seeds differently so slot noise differs across ranks; the data order is seeded separately.
        checkpoints = list_checkpoints(self.output_dir) if cfg.resume else []
        if checkpoints:
            self.load_checkpoint(checkpoints[-1])
        else:
            seed_everything(cfg.seed + self.rank)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not (self.show_progress
                                                                                         and self.is_main))
        self._train_mode()
        last_checkpoint = None
        running: list[float] = []
        out_of_time = False
        started = time.time()
        # One pass of this loop is one epoch, or what is left of it after a resume.
        while self.step < self.total_steps and not out_of_time:
            # Only whole optimizer steps: the micro-batches that cannot fill a last accumulation group are dropped.
            batches = self._epoch_batches(self.epoch)[self.batch_in_epoch:]
            usable = len(batches) - len(batches) % cfg.grad_accum
            micro = 0
            for images, input_ids, attention_mask in self._loader(batches[:usable]):
                # Forward and backward on one micro-batch; gradients add up over grad_accum of them, and DDP
                # all-reduces only on the last (sync) one.
                if micro == 0:
                    self.optimizer.zero_grad(set_to_none=True)
                out = self._forward(images, input_ids, attention_mask, sync=micro == cfg.grad_accum - 1)
                micro += 1
                self.batch_in_epoch += 1
                running.append(float(out.loss.detach()))
                if micro < cfg.grad_accum:
                    continue
                # Optimizer step: learning rate from the schedule, clip, step (through the fp16 grad scaler).
                micro = 0
                lr = self._optimizer_step()
                loss = float(np.mean(running[-cfg.grad_accum:]))
                # Report: progress bar, the caller's callback, and every log_every steps a metrics.jsonl record.
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.progress is not None:
                    self.progress(self.step, self.total_steps, loss)
                out_of_time = cfg.time_budget_s is not None and time.time() - started >= cfg.time_budget_s
                if self.step % cfg.log_every == 0 or self.step == self.total_steps or out_of_time:
                    record = {"step": self.step, "epoch": self.epoch, "loss": loss, "c3": float(out.c3.detach()),
                              "recon": float(out.recon.detach()), "lr": lr,
                              "elapsed_s": round(time.time() - started, 2)}
                    if self.feature_cache is not None:
                        stats = self.feature_cache.stats
                        record.update(cache_hits=stats.hits, cache_misses=stats.misses, cache_entries=stats.entries)
                    self._log(record)
                # Bookkeeping: the epoch ends when another full accumulation group no longer fits in it.
                epoch_end = self.batch_in_epoch + cfg.grad_accum > self.batches_per_epoch
                if epoch_end:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                # Validate and checkpoint when due, and always at the end, so a stopped run can resume exactly.
                done = self.step >= self.total_steps or out_of_time
                validate = self._due(cfg.eval_every, epoch_end, done)
                save = validate or self._due(cfg.checkpoint_every, cfg.eval_every is None and epoch_end, done)
                metric = self.validate() if validate else None
                if save:
                    last_checkpoint = self.save_checkpoint(metric)
                if done or epoch_end:
                    break
        bar.close()
        if self.feature_cache is not None:
            self.feature_cache.close()
        if self.distributed:
            dist.barrier()
        return TrainResult(self.step, self.best_checkpoint, self.best_metric, last_checkpoint, self.history)

    def _module(self, path: str) -> nn.Module:
        """The model's sub-module at attribute ``path`` (for ``train_only``); a clear error when there is none."""
        module = self.model
        for name in path.split("."):
            module = getattr(module, name, None)
            if not isinstance(module, nn.Module):
                raise ValueError(f"train_only: the model has no sub-module {path!r}")
        return module

    def _due(self, every: int | None, epoch_end: bool, done: bool) -> bool:
        return done or (every is None and epoch_end) or (every is not None and self.step % every == 0)

    def _train_mode(self) -> None:
        """Train mode for the model, except a frozen image backbone, which stays in eval mode."""
        self.wrapped.train()
        if self.config.freeze_image_backbone:
            self.model.image_encoder.eval()
        if self.config.freeze_image_side:
            self.model.entity.eval()
            self.model.decoder.eval()
        if self.config.train_only is not None:
            self.model.eval()
            for path in self.config.train_only:
                self._module(path).train()

    def _forward(self, images, input_ids, attention_mask, sync: bool):
        """One micro-batch: ``images`` are pixels (B, 3, S, S), or :class:`CachedImages` with a feature cache."""
        dev = self.device
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        if self.config.freeze_image_side:
            inputs = dict(pixels=None, entities=self._entities(images).to(dev))
        elif self.feature_cache is not None:
            features, grid = self.feature_cache.features(images.images, images.keys)
            self.loader_data.remember(images)  # later epochs need not even load these images
            inputs = dict(pixels=None, features=features.to(dev), grid=grid)
        else:
            inputs = dict(pixels=images.to(dev))
        if "entities" not in inputs:
            inputs["recon_positions"] = self.config.recon_positions
            if self.grouping_reference is not None:
                inputs.update(grouping_reference=self.grouping_reference,
                              grouping_weight=self.config.grouping_distill)
        ctx = self.wrapped.no_sync() if (self.distributed and not sync) else contextlib.nullcontext()
        self.model.entity.grad_iterations = self.config.entity_grad_iterations
        try:
            with ctx:
                with autocast(dev, self.config.precision):
                    out = self.wrapped(input_ids=input_ids, attention_mask=attention_mask, **inputs)
                self.scaler.scale(out.loss / self.config.grad_accum).backward()
        finally:
            self.model.entity.grad_iterations = None  # the model leaves the trainer as it came
        return out

    def warm_image_cache(self, progress: Callable[[int, int], None] | None = None) -> int:
        """With a cached image side, compute every training image's features (and entities, with
        ``freeze_image_side``) before the first step, calling ``progress(done, total)`` images after each batch, so
        that training steps cost only what trains and their time estimate holds. Returns the images computed; 0
        without a cache, or for a data set that does not list its images (they are then cached as met)."""
        exprs = getattr(self.train_data, "expressions", None)
        if self.feature_cache is None or exprs is None:
            return 0
        from .feature_cache import CachedImages, image_key

        by_image: dict[str, list[int]] = {}
        for i, expr in enumerate(exprs):
            by_image.setdefault(expr.image, []).append(i)
        paths = list(by_image)
        loader = self.train_data.image_loader
        for start in range(0, len(paths), self.config.batch_size):
            chunk = paths[start:start + self.config.batch_size]
            images = [loader(path) for path in chunk]
            keys = [image_key(image) for image in images]
            batch = CachedImages([by_image[p][0] for p in chunk], keys, images)
            if self.config.freeze_image_side:
                self._entities(batch)
            else:
                self.feature_cache.features(images, keys)
            for path, key in zip(chunk, keys):  # every pair of these images: later batches need not load them
                self.loader_data.known.update((i, key) for i in by_image[path])
            if progress is not None:
                progress(min(start + len(chunk), len(paths)), len(paths))
        return len(paths)

    @torch.no_grad()
    def _entities(self, images) -> torch.Tensor:
        """Entities (B, K, D) of a frozen image side for :class:`CachedImages`, each image's computed once."""
        missing = [i for i, key in enumerate(images.keys) if key not in self.entity_cache]
        if missing:
            self.model.entity.eval()  # frozen: deterministic slots, whoever called train() last
            keys = [images.keys[i] for i in missing]
            features, grid = self.feature_cache.features([images.images[i] for i in missing], keys)
            with autocast(self.device, self.config.precision):
                entities = self.model.encode_features(features.to(self.device), grid).entities.float()
            self.entity_cache.update(zip(keys, entities))
        self.loader_data.remember(images)  # later epochs need not even load these images
        return torch.stack([self.entity_cache[key] for key in images.keys])

    def _optimizer_step(self) -> float:
        cfg = self.config
        factor = lr_factor(self.step, self.total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if cfg.anchor:
            with torch.no_grad():
                for group, anchors in zip(self.optimizer.param_groups, self.anchors):
                    for p, start in zip(group["params"], anchors):
                        p.sub_(p - start, alpha=group["lr"] * cfg.anchor)
        self.step += 1
        return self.base_lrs[0] * factor

    # ---- validation -------------------------------------------------------------------------------------------
    def validate(self) -> float | None:
        """mIoU (scheme ``ours``) on the validation set on rank 0; None when there is no validation set with masks."""
        if self.val_data is None or not getattr(self.val_data, "with_masks", True):
            return None
        metric = None
        if self.is_main:
            from .evaluate import evaluate

            report = evaluate(self.model, self.val_data, schemes=("ours",), batch_size=self.config.eval_batch_size,
                              limit=self.config.eval_limit, show_progress=False)
            self._train_mode()
            metric = report.schemes["ours"]["mIoU"]
            self._log({"step": self.step, "epoch": self.epoch, "split": "val",
                       **{k: v for k, v in report.schemes["ours"].items()}})
        return metric

    # ---- logging and checkpoints ------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / METRICS, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def state_dict(self) -> dict:
        """Everything besides the weights that an exact resume needs, as stored in ``trainer_state.pt``."""
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "best_metric": self.best_metric,
            "best_checkpoint": self.best_checkpoint.name if self.best_checkpoint else None,
            "config": asdict(self.config), "world_size": self.world,
        }

    def save_checkpoint(self, metric: float | None = None) -> Path | None:
        """Write ``checkpoints/step-<step>`` atomically (rank 0), update the best and prune old checkpoints."""
        final = checkpoint_path(self.output_dir, self.step)
        if self.is_main and not final.exists():
            improved = metric is not None and (self.best_metric is None or metric > self.best_metric)
            if improved:
                self.best_metric, self.best_checkpoint = metric, final
            meta = {**self.metadata, "step": self.step, "epoch": self.epoch,
                    "metrics": {"val_mIoU": metric} if metric is not None else {}}
            write_checkpoint(self.model, final, self.state_dict(), meta)
            if self.best_checkpoint is not None:
                write_best(self.output_dir, self.best_checkpoint, self.best_metric)
            prune_checkpoints(self.output_dir, self.config.keep_last, keep=self.best_checkpoint)
        if self.distributed:
            dist.barrier()  # no rank resumes or reads a checkpoint before rank 0 has renamed it into place
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model weights and the whole trainer state from a checkpoint written by :meth:`save_checkpoint`."""
        path = Path(path)
        check_model_config(path, self.model.config)
        state = read_trainer_state(path)
        # The data order is a function of world size and batch size (see _epoch_batches): with others, the resumed
        # run would silently see a different sequence of batches.
        if state["world_size"] != self.world or state["config"]["batch_size"] != self.config.batch_size:
            raise ValueError(f"exact resume needs the same world size and batch size: checkpoint has "
                             f"{state['world_size']} x {state['config']['batch_size']}, this run "
                             f"{self.world} x {self.config.batch_size}")
        self.model.load_state_dict(read_weights(path, self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_metric = state["best_metric"]
        self.best_checkpoint = path.parent / state["best_checkpoint"] if state["best_checkpoint"] else None


def fit(model: SaG, train_data: Dataset, config: TrainConfig, output_dir: str | Path, **kwargs) -> TrainResult:
    """Shorthand for ``Trainer(model, train_data, config, output_dir, **kwargs).fit()``."""
    return Trainer(model, train_data, config, output_dir, **kwargs).fit()
