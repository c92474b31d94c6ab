"""backend/predictor.py and backend/cache.py: a new text on a cached image refines its mask along the pixels kept in
the entity cache, without decoding the file again, and gets the mask a miss gets."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import backend.predictor as predictor_module
from backend.cache import GUIDE_SHARE, CachedImage, EntityCache
from backend.images import decode_image
from backend.predictor import OutputSpec, Predictor, TaskInput
from backend.settings import Settings
from sag import ImageEntities
from training.registry import Registry

SPEC = OutputSpec("image", brush="mask")


class BytesFetcher:
    """Hands out one file for every URL (the predictor's fetcher interface)."""

    def __init__(self, data: bytes):
        self.data = data

    def fetch(self, url: str, task_id: int | None) -> bytes:
        return self.data


def rotated_jpeg(photo: np.ndarray) -> bytes:
    """A non-square JPEG stored sideways with an EXIF orientation (6: rotate 90 degrees to show it): a guide kept
    before the orientation is applied would have the wrong shape and pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []

    def counting(data, max_pixels):
        calls.append(len(data))
        return decode_image(data, max_pixels)

    monkeypatch.setattr(predictor_module, "decode_image", counting)
    return calls


def make_predictor(registry_dir, data: bytes, **overrides) -> Predictor:
    settings = Settings.from_env({}, model_dir=str(registry_dir), device="cpu", **overrides)
    return Predictor(settings, Registry(registry_dir), BytesFetcher(data))


def task(text: str, task_id: int = 1) -> TaskInput:
    return TaskInput(task_id, "http://127.0.0.1/photo.jpg", (text,), ("Object",))


def rle(answer: dict) -> list[int]:
    [region] = answer["result"]
    return region["value"]["rle"]


@pytest.mark.parametrize("refine", ["guided", "slic"])
def test_a_cache_hit_gives_the_miss_rle_without_decoding_the_file_again(registry_dir, photos, count_decodes,
                                                                        refine):
    data = rotated_jpeg(photos["chelsea"])  # 300 x 451, shown as 451 x 300
    predictor = make_predictor(registry_dir, data, mask_refine=refine)
    [miss] = predictor.predict([task("the cat's face")], SPEC)
    assert len(count_decodes) == 1
    [hit] = predictor.predict([task("the cat's face", task_id=2)], SPEC)
    [other] = predictor.predict([task("the cat's left ear", task_id=3)], SPEC)
    assert len(count_decodes) == 1, "a cache hit decoded the file again"
    assert predictor.cache.stats()["hits"] == 2 and predictor.counters.images_encoded == 1
    # The same text, the same cached entities, the same pixels: one computation, so the RLE is identical.
    assert rle(hit) == rle(miss)
    assert hit["result"][0]["original_height"] == 451 and hit["result"][0]["original_width"] == 300
    assert len(rle(other)) > 0

    # What the refinement reads on a hit is exactly the decoded, EXIF-oriented image, and it cannot be changed.
    [(_, entry)] = predictor.cache._items.items()
    expected = np.asarray(decode_image(data, 10**8))
    assert entry.guide.dtype == np.uint8 and entry.guide.shape == (451, 300, 3)
    assert np.array_equal(entry.guide, expected)
    with pytest.raises(ValueError):
        entry.guide[0, 0, 0] = 1
    # The cache counts the kept pixels against its budget.
    e = entry.entities
    tensors = e.entities.nelement() * e.entities.element_size() + e.slot_attn.nelement() * e.slot_attn.element_size()
    assert predictor.cache.stats()["bytes"] == tensors + 451 * 300 * 3


def test_without_refinement_no_pixels_are_kept(registry_dir, photos, count_decodes):
    predictor = make_predictor(registry_dir, rotated_jpeg(photos["coffee"]), mask_refine="none")
    predictor.predict([task("the cup")], SPEC)
    predictor.predict([task("the saucer", task_id=2)], SPEC)
    [(_, entry)] = predictor.cache._items.items()
    assert entry.guide is None and len(count_decodes) == 1


def test_a_photo_too_large_for_its_share_is_kept_without_pixels_and_a_hit_decodes_it(registry_dir, photos,
                                                                                      count_decodes):
    data = rotated_jpeg(photos["chelsea"])  # 406 KB of pixels, more than a quarter of a 1 MiB cache
    predictor = make_predictor(registry_dir, data, entity_cache_mb=1)
    [miss] = predictor.predict([task("the cat")], SPEC)
    [hit] = predictor.predict([task("the cat", task_id=2)], SPEC)
    [(_, entry)] = predictor.cache._items.items()
    assert entry.guide is None and predictor.cache.stats()["hits"] == 1
    assert len(count_decodes) == 2  # the fallback: decode again for the refinement
    assert rle(hit) == rle(miss)


def test_entity_cache_drops_only_the_guide_of_an_entry_over_its_share():
    def entry(side: int) -> CachedImage:
        entities = ImageEntities(torch.zeros(1, 4, 8), torch.zeros(1, 16, 4), (4, 4))
        return CachedImage(entities, (side, side), np.zeros((side, side, 3), np.uint8))

    tensors = (4 * 8 + 16 * 4) * 4
    cache = EntityCache(max_bytes=40_000)
    cache.put(("small", "v1"), entry(50))  # 7,500 + 384 bytes: under a quarter, kept whole
    assert cache.get(("small", "v1")).guide is not None
    assert cache.stats()["bytes"] == tensors + 50 * 50 * 3
    cache.put(("large", "v1"), entry(100))  # 30,000 + 384 bytes: over a quarter, kept without its pixels
    large = cache.get(("large", "v1"))
    assert large is not None and large.guide is None and large.size == (100, 100)
    assert cache.stats()["bytes"] == 2 * tensors + 50 * 50 * 3
    assert GUIDE_SHARE * cache.max_bytes == 10_000
