"""The entity cache: each image's SaG image side, keyed by (image content hash, model version), bounded in bytes.

A cache entry is a pure function of its key, so keeping it per process is safe: a new model version simply misses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from sag import ImageEntities


@dataclass(frozen=True)
class CachedImage:
    entities: ImageEntities  # one image, features dropped
    size: tuple[int, int]  # (H, W) after EXIF orientation: the mask's size

    @property
    def nbytes(self) -> int:
        e = self.entities
        return e.entities.element_size() * e.entities.nelement() + e.slot_attn.element_size() * e.slot_attn.nelement()


class EntityCache:
    """A thread-safe LRU of :class:`CachedImage` holding at most ``max_bytes`` of tensors."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, image_hash: str, version: str) -> CachedImage | None:
        with self._lock:
            item = self._items.get((image_hash, version))
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end((image_hash, version))
            self.hits += 1
            return item

    def put(self, image_hash: str, version: str, item: CachedImage) -> None:
        if item.nbytes > self.max_bytes:
            return
        key = (image_hash, version)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = item
            self._bytes += item.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}
