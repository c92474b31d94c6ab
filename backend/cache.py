"""Caches bounded in bytes: one thread-safe LRU (:class:`LRUCache`), used for the entity cache of inference
(:class:`EntityCache`: each image's SaG image side and, when masks are refined, its decoded pixels, keyed by (image
content hash, model version)) and for the image bytes a training job reads once per epoch
(:mod:`backend.finetune.job`).

An entity cache entry is a pure function of its key, so keeping it per process is safe: a new model version simply
misses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Generic, TypeVar

import numpy as np

from sag import ImageEntities

# The largest share of the entity cache's budget one entry may take with its guide image.
GUIDE_SHARE = 0.25

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A thread-safe least-recently-used map holding values of at most ``max_bytes`` in all, each weighing
    ``size(value)`` bytes. A value heavier than the whole budget is not kept."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]):
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: K, value: V) -> None:
        weight = self._size(value)
        if weight > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._items[key] = value
            self._bytes += weight
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= self._size(evicted)

    def get_or_load(self, key: K, load: Callable[[K], V]) -> V:
        """The cached value, else ``load(key)``, kept. ``load`` runs outside the lock: a slow one (a download) holds
        no other caller up."""
        value = self.get(key)
        if value is None:
            value = load(key)
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}


@dataclass(frozen=True)
class CachedImage:
    """One image's side of SaG, and the pixels its masks are refined along."""

    entities: ImageEntities  # one image, features dropped
    size: tuple[int, int]  # (H, W) after EXIF orientation: the mask's size
    # (H, W, 3) uint8 RGB, read-only: the decoded image, kept when masks are refined (SAG_MASK_REFINE), so that a new
    # text on this image does not decode the file again; None when not refining, or too large to keep (see
    # EntityCache.put).
    guide: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        e = self.entities
        tensors = (e.entities.element_size() * e.entities.nelement()
                   + e.slot_attn.element_size() * e.slot_attn.nelement())
        return tensors + (self.guide.nbytes if self.guide is not None else 0)


class EntityCache(LRUCache[tuple[str, str], CachedImage]):
    """:class:`CachedImage` by (image content hash, model version), at most ``max_bytes`` of tensors and guides."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, size=lambda item: item.nbytes)

    def put(self, key: tuple[str, str], value: CachedImage) -> None:
        """Keep ``value``; its guide only while the entry takes at most :data:`GUIDE_SHARE` of the budget. A large
        photo's pixels (36 MB at 12 MP, against ~0.2 MB of entities) would otherwise flush the entries of the images
        before it, or not fit at all; without its guide, a hit on it decodes the file again."""
        if value.guide is not None and value.nbytes > GUIDE_SHARE * self.max_bytes:
            value = replace(value, guide=None)
        super().put(key, value)
