"""Frozen image-backbone features, computed once per image and reused, so a training step costs only the SaG heads.

A frozen backbone in eval mode is a pure function of its input pixels, and the pixels are a pure function of the
decoded image and the input size (``sag.preprocess`` stretches to S x S; the loaders and the collator do no
augmentation: anything that did would have to become part of the key). So the features of an image are cached under

* the image's **content**: sha256 of its decoded RGB pixels and size (not its path or file bytes: the same picture
  in two files is one entry, a changed file under the same path is a new one), inside a
* **namespace** naming the backbone (``config.image_backbone``), the input size ``S``, the normalisation, the device
  type, and the **weights**: a sha256 over every parameter and buffer of the image encoder (a fine-tuned or
  different checkpoint can never be served stale features).

Storage: in memory (a dict of (N, C) float32 tensors), or on disk next to the run: ``<dir>/<namespace>/features.f32``
(rows of N * C float32, memory-mapped for reading) + ``keys.txt`` (one key per line, line i = row i) + ``meta.json``.
A row is written before its key, so a process killed mid-write leaves at most an unindexed tail, never a key without
its features. One process writes a directory at a time (an exclusive lock; a second process falls back to memory).

:class:`Trainer <training.engine.Trainer>` uses it when ``TrainConfig.freeze_image_backbone`` is set (and
``feature_cache`` is not ``"off"``); see :class:`CachedPairs` and :class:`CachedCollator` for the data side.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from sag.preprocess import ImageLike, preprocess_images, to_pil
from sag.text_encoder import tokenize_batch

log = logging.getLogger(__name__)

CACHE_MODES = ("off", "memory", "disk")


def image_key(image: ImageLike) -> str:
    """The content key of an image: sha256 (hex) of its RGB pixel bytes and (H, W)."""
    pil = to_pil(image)
    digest = hashlib.sha256(f"rgb:{pil.height}x{pil.width}:".encode())
    digest.update(pil.tobytes())
    return digest.hexdigest()


def weights_identity(module: nn.Module) -> str:
    """sha256 (hex) over the names, dtypes, shapes and bytes of every parameter and buffer of ``module``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: 0-d tensors cannot be viewed
    return digest.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0  # images whose features came from the cache
    misses: int = 0  # images whose features were computed (and stored)
    entries: int = 0  # distinct images stored


class FeatureCache:
    """Features (N, C) of a frozen image encoder per image content key.

    Args:
        encoder: the image encoder (``model.image_encoder``); it must stay frozen while the cache is in use.
        backbone: its registry name (``config.image_backbone``).
        image_size: S, the square input size (``config.image_size``).
        directory: store on disk under ``directory/<namespace>/`` (memory-mapped); None keeps everything in memory.
        batch_size: images per backbone forward when computing misses.
    """

    def __init__(self, encoder: nn.Module, backbone: str, image_size: int, directory: str | Path | None = None,
                 batch_size: int = 64):
        self.encoder = encoder
        self.image_size = int(image_size)
        self.batch_size = batch_size
        self.device = next(encoder.parameters()).device
        self.identity = {
            "backbone": backbone, "image_size": self.image_size, "mean": list(encoder.mean),
            "std": list(encoder.std), "device": self.device.type, "weights_sha256": weights_identity(encoder),
        }
        self.namespace = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:24]
        self.grid, self.channels = self._probe()
        self.stats = CacheStats()
        self._memory: dict[str, torch.Tensor] = {}
        self._disk: _DiskStore | None = None
        if directory is not None:
            try:
                self._disk = _DiskStore(Path(directory) / self.namespace, self.identity, self.grid, self.channels)
            except BlockingIOError:
                log.warning("feature cache %s is in use by another process: keeping features in memory",
                            Path(directory) / self.namespace)
        self.stats.entries = len(self)

    @classmethod
    def for_model(cls, model, directory: str | Path | None = None, batch_size: int = 64) -> "FeatureCache":
        """The cache of ``model.image_encoder`` (a :class:`sag.SaG`) at ``model.config.image_size``."""
        return cls(model.image_encoder, model.config.image_backbone, model.config.image_size, directory, batch_size)

    def _probe(self) -> tuple[tuple[int, int], int]:
        with torch.no_grad(), _eval_mode(self.encoder):
            feats, grid = self.encoder(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device))
        return (int(grid[0]), int(grid[1])), int(feats.shape[-1])

    def __len__(self) -> int:
        return len(self._disk) if self._disk is not None else len(self._memory)

    def __contains__(self, key: str) -> bool:
        return key in self._disk if self._disk is not None else key in self._memory

    def _get(self, keys: Sequence[str]) -> torch.Tensor:
        if self._disk is not None:
            return self._disk.get(keys)
        return torch.stack([self._memory[k] for k in keys])

    def _put(self, keys: Sequence[str], feats: torch.Tensor) -> None:
        feats = feats.detach().to("cpu", torch.float32).contiguous()
        if self._disk is not None:
            self._disk.put(keys, feats)
        else:
            for key, row in zip(keys, feats):
                self._memory[key] = row.clone()

    def compute(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """The live encoder on ``images`` in eval mode, without gradients: (B, N, C) float32 on the CPU."""
        out = []
        with torch.no_grad(), _eval_mode(self.encoder):
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                pixels = preprocess_images(chunk, self.image_size, self.encoder.mean, self.encoder.std)
                feats, _ = self.encoder(pixels.to(self.device))
                out.append(feats.float().cpu())
        return torch.cat(out)

    def features(self, images: Sequence[ImageLike | None], keys: Sequence[str] | None = None
                 ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Features (B, N, C) float32 (CPU) and the (h, w) grid for B images, computing and storing the misses.

        ``keys`` (from :func:`image_key`) may be given to avoid re-hashing; an image may then be None when its key
        is known to be cached (the image was not even loaded).
        """
        keys = list(keys) if keys is not None else [image_key(im) for im in images]
        if len(keys) != len(images):
            raise ValueError(f"got {len(images)} images and {len(keys)} keys")
        missing: dict[str, ImageLike] = {}
        for key, image in zip(keys, images):
            if key not in self and key not in missing:
                if image is None:
                    raise KeyError(f"image {key[:12]} is not cached and was not given")
                missing[key] = image
        if missing:
            self._put(list(missing), self.compute(list(missing.values())))
        self.stats.misses += len(missing)
        self.stats.hits += len(keys) - len(missing)
        self.stats.entries = len(self)
        return self._get(keys), self.grid

    def warm(self, images: Sequence[ImageLike]) -> int:
        """Compute and store the features of any of ``images`` not cached yet; returns how many were computed."""
        before = self.stats.misses
        for start in range(0, len(images), self.batch_size):
            self.features(images[start:start + self.batch_size])
        return self.stats.misses - before

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()


class _eval_mode:
    """Eval mode for the duration of a block (BatchNorm running statistics, no dropout / drop-path)."""

    def __init__(self, module: nn.Module):
        self.module, self.was_training = module, module.training

    def __enter__(self):
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        return False


class _DiskStore:
    """Append-only rows of (N, C) float32 in ``features.f32``, keys in ``keys.txt``; memory-mapped reads."""

    def __init__(self, root: Path, identity: dict, grid: tuple[int, int], channels: int):
        import fcntl

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._lock = open(root / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise
        meta = {**identity, "grid": list(grid), "channels": channels, "dtype": "float32"}
        meta_path = root / "meta.json"
        if meta_path.is_file() and json.loads(meta_path.read_text()) != meta:
            raise ValueError(f"feature cache {root} holds other features: {meta_path.read_text()}")
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        self.shape = (grid[0] * grid[1], channels)
        self.row_bytes = self.shape[0] * self.shape[1] * 4
        data, index = root / "features.f32", root / "keys.txt"
        lines = index.read_text().split("\n") if index.is_file() else []
        lines = [k for k in lines[:-1]] if lines else []  # a last line without its newline was never completed
        rows = min(len(lines), (data.stat().st_size if data.is_file() else 0) // self.row_bytes)
        self.rows = {key: i for i, key in enumerate(lines[:rows])}
        self.count = rows
        # Drop any unindexed tail (a write interrupted between the row and its key) so rows stay aligned.
        with open(data, "ab") as fh:
            fh.truncate(rows * self.row_bytes)
        with open(index, "w") as fh:
            fh.write("".join(k + "\n" for k in lines[:rows]))
        self._data = open(data, "ab")
        self._index = open(index, "a")
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def put(self, keys: Sequence[str], feats: torch.Tensor) -> None:
        for key, row in zip(keys, feats):
            if key in self.rows:
                continue
            self._data.write(row.numpy().tobytes())
            self._data.flush()
            self._index.write(key + "\n")
            self._index.flush()
            self.rows[key] = self.count
            self.count += 1

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        rows = [self.rows[k] for k in keys]
        if self._map is None or max(rows) >= self._map.shape[0]:
            self._map = np.memmap(self.root / "features.f32", dtype=np.float32, mode="r",
                                  shape=(self.count, *self.shape))
        return torch.from_numpy(np.ascontiguousarray(self._map[rows]))

    def close(self) -> None:
        self._map = None
        for fh in (self._data, self._index, self._lock):
            fh.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


# ---- the data side ----------------------------------------------------------------------------------------------

@dataclass
class CachedImages:
    """A batch's images for a cached backbone: dataset indices, content keys, and the decoded images (None where the
    index's key was already known to be cached, so the image was not loaded)."""

    indices: list[int]
    keys: list[str]
    images: list[Image.Image | None]


class CachedPairs(Dataset):
    """Wraps a training Dataset of :class:`~training.datasets.base.Sample` for a cached backbone.

    Items are ``(index, key, text, image)``. Once an index's key is in ``known`` (set by the trainer after the
    features were stored), a data set that exposes its texts without reading images (a ``ReferringDataset``: its
    ``expressions``) skips loading the image altogether; any other Dataset still loads and hashes it every time.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        exprs = getattr(dataset, "expressions", None)
        self.texts: list[str] | None = [e.text for e in exprs] if exprs is not None else None
        self.known: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        key = self.known.get(index)
        if key is not None and self.texts is not None:
            return index, key, self.texts[index], None
        sample = self.dataset[index]
        return index, image_key(sample.image), sample.text, sample.image

    def remember(self, batch: CachedImages) -> None:
        self.known.update(zip(batch.indices, batch.keys))


class CachedCollator:
    """Items of :class:`CachedPairs` -> (CachedImages, input_ids (B, L), attention_mask (B, L)); picklable."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, items) -> tuple[CachedImages, torch.Tensor, torch.Tensor]:
        indices, keys, texts, images = (list(x) for x in zip(*items))
        tok = tokenize_batch(self.tokenizer, texts, self.max_tokens)
        return CachedImages(indices, keys, images), tok["input_ids"], tok["attention_mask"]


def cache_directory(output_dir: str | Path, rank: int = 0) -> Path:
    """Where a run keeps an on-disk cache: ``<output_dir>/feature-cache`` (``.../rank-<r>`` under DDP, r > 0)."""
    root = Path(output_dir) / "feature-cache"
    return root if rank == 0 else root / f"rank-{rank}"


__all__ = ["CACHE_MODES", "CacheStats", "CachedCollator", "CachedImages", "CachedPairs", "FeatureCache",
           "cache_directory", "image_key", "weights_identity"]
