"""The predictor: one SaG model per process (loaded once, switched when a new version is promoted), the entity
cache, and batched inference from task images and texts to Label Studio regions.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from sag import ImageEntities, SaG, autocast, resolve_device
from sag.confidence import mask_confidence
from sag.pipeline import segment_texts
from training.registry import Registry

from .cache import CachedImage, EntityCache
from .exceptions import ImageError
from .images import ImageFetcher, decode_image
from .labelstudio.results import brush_region, polygon_regions
from .presets import build_initial_model
from .settings import Settings
from .versions import is_placeholder, label_studio_version

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class TaskInput:
    """One task, validated by the HTTP side: its image and one referring text (and label) per region."""

    task_id: int | None
    image_url: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]  # per text, for the brush (or only) control
    polygon_labels: tuple[str, ...] = ()  # per text, when a polygon control has labels of its own


@dataclass(frozen=True)
class OutputSpec:
    """Where results go in the labelling config."""

    to_name: str
    brush: str | None = None  # BrushLabels from_name
    polygon: str | None = None  # PolygonLabels from_name


@dataclass
class Counters:
    model_loads: int = 0
    images_encoded: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0


@dataclass
class _Pending:
    task: TaskInput
    image: CachedImage | None = None
    pixels: np.ndarray | None = None  # (H, W, 3) uint8: the decoded image, only to guide the mask refinement
    error: str | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def task_error(task_id: int | None, message: str) -> dict[str, Any]:
    """The per-task error entry of a /predict answer. It has no ``result`` key, so Label Studio stores no prediction
    for the task (a later "Retrieve predictions" tries it again) and logs the message."""
    return {"task": task_id, "error": message}


def _batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _each_or_alone(items: Sequence[T], run: Callable[[Sequence[T]], list[R]]) -> list[R | Exception]:
    """``run`` on the whole batch; if it raises, on each item alone, so one bad item cannot sink the others."""
    try:
        return list(run(items))
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        log.warning("batch of %d failed; retrying item by item", len(items), exc_info=True)
    results: list[R | Exception] = []
    for item in items:
        try:
            results.extend(run([item]))
        except Exception as exc:  # reported per task by the caller
            results.append(exc)
    return results


class Predictor:
    """Serves the registry's current version. Safe to call from several threads: images are fetched concurrently
    (a slow image server delays only its own job), and everything that touches the model, the entity cache or the
    counters runs under one lock, one job at a time."""

    def __init__(self, settings: Settings, registry: Registry, fetcher: ImageFetcher):
        self.settings = settings
        self.registry = registry
        self.fetcher = fetcher
        self.device = resolve_device(settings.device)
        self.cache = EntityCache(settings.entity_cache_mb * 2**20)
        self.counters = Counters()
        self.model: SaG | None = None
        self._lock = threading.Lock()
        # Shared by concurrent jobs; sized so a few stalled downloads (each bounded by SAG_FETCH_TIMEOUT) leave
        # threads for the others.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fetch")

    @property
    def version(self) -> str | None:
        return self.model.version if self.model is not None else None

    @property
    def served_version(self) -> str | None:
        """The loaded version as Label Studio sees it: ``+untrained`` or ``+unchecked`` marks a placeholder."""
        return label_studio_version(self.model.version, self.model.metadata) if self.model is not None else None

    def ensure_model(self) -> SaG:
        """The current version's model, loading it when the registry's pointer moved (a promotion or rollback)."""
        current = self.registry.ensure_current(lambda: build_initial_model(self.settings.init_preset)).id
        if self.model is None or self.model.version != current:
            started = time.monotonic()
            previous = self.version
            model = SaG.from_pretrained(self.registry.get(current).path, device=self.device)
            self.model = model
            self.cache.clear()  # entries of the old version can never hit again
            self.counters.model_loads += 1
            log.info("model %s loaded on %s in %.1f s%s", current, self.device, time.monotonic() - started,
                     f" (was {previous})" if previous else "")
        return self.model

    def predict(self, tasks: Sequence[TaskInput], spec: OutputSpec) -> list[dict[str, Any]]:
        """One Label Studio answer per task, in order: ``{result, score, model_version}`` or a task error."""
        pending = [_Pending(task) for task in tasks]
        # Outside the lock: a download may take up to SAG_FETCH_TIMEOUT, and the model must serve other jobs
        # meanwhile (in embedded mode every /predict shares this predictor).
        fetched = list(self._pool.map(lambda p: _capture(self._fetch, p.task), pending))
        with self._lock:
            model = self.ensure_model()
            self._load_images(model, pending, fetched)
            self._segment(model, pending, spec)
            answers = []
            for item in pending:
                if item.error is not None:
                    self.counters.tasks_failed += 1
                    log.warning("task %s: %s", item.task.task_id, item.error)
                    answers.append(task_error(item.task.task_id, item.error))
                else:
                    self.counters.tasks_done += 1
                    answers.append({
                        "result": item.regions,
                        "score": sum(item.scores) / len(item.scores),
                        "model_version": label_studio_version(model.version, model.metadata),
                    })
            return answers

    # ---- image side -------------------------------------------------------------------------------------------
    def _fetch(self, task: TaskInput) -> bytes:
        return self.fetcher.fetch(task.image_url, task.task_id)

    def _load_images(self, model: SaG, pending: list[_Pending], fetched: list[bytes | Exception]) -> None:
        to_encode: list[tuple[_Pending, str, Any]] = []
        seen: dict[str, list[_Pending]] = {}
        refining = self.settings.mask_refine != "none"
        decoded: dict[str, Any] = {}  # digest -> guide decoded for a cache hit without one, to decode it once per job
        for item, data in zip(pending, fetched):
            if isinstance(data, Exception):
                item.error = _describe(data)
                continue
            digest = hashlib.sha256(data).hexdigest()
            cached = self.cache.get((digest, model.version))
            if cached is not None:
                item.image = cached
                if refining and cached.guide is not None:
                    item.pixels = cached.guide
                elif refining:  # an entry kept without its pixels (too large): decode the file again
                    try:
                        if digest not in decoded:
                            decoded[digest] = _guide(decode_image(data, self.settings.max_image_pixels))
                        item.pixels = decoded[digest]
                    except ImageError as exc:
                        item.error = str(exc)
                continue
            if digest in seen:  # the same image twice in one job: encode once
                seen[digest].append(item)
                item.pixels = seen[digest][0].pixels
                continue
            try:
                image = decode_image(data, self.settings.max_image_pixels)
            except ImageError as exc:
                item.error = str(exc)
                continue
            # The same array guides this job's refinement and, kept in the cache, every later text on this image.
            item.pixels = _guide(image) if refining else None
            seen[digest] = [item]
            to_encode.append((item, digest, image))

        def encode(batch: Sequence[tuple[_Pending, str, Any]]) -> list[CachedImage]:
            with torch.inference_mode(), autocast(self.device, self.settings.precision):
                ent = model.encode_image(model.preprocess([image for _, _, image in batch]))
            return [
                CachedImage(ImageEntities(ent.entities[i:i + 1], ent.slot_attn[i:i + 1], ent.grid),
                            (image.height, image.width), item.pixels)
                for i, (item, _, image) in enumerate(batch)
            ]

        for batch in _batched(to_encode, self.settings.batch_size):
            for (item, digest, _), result in zip(batch, _each_or_alone(batch, encode)):
                if isinstance(result, Exception):
                    log.error("task %s: image encoder failed", item.task.task_id, exc_info=result)
                    for same in seen[digest]:
                        same.error = f"the model failed on this image ({type(result).__name__}: {result})"
                    continue
                self.counters.images_encoded += 1
                self.cache.put((digest, model.version), result)
                for same in seen[digest]:
                    same.image = result

    # ---- text side and fusion ---------------------------------------------------------------------------------
    def _segment(self, model: SaG, pending: list[_Pending], spec: OutputSpec) -> None:
        pairs = [(item, i) for item in pending if item.error is None for i in range(len(item.task.texts))]
        # A placeholder's masks are not to be trusted at all: score 0 sorts them last in Label Studio.
        placeholder = is_placeholder(model.metadata)

        def run(batch: Sequence[tuple[_Pending, int]]) -> list[tuple[Any, float]]:
            with torch.inference_mode(), autocast(self.device, self.settings.precision):
                image = ImageEntities.cat([item.image.entities for item, _ in batch])
                refine = self.settings.mask_refine  # SAG_MASK_REFINE overrides the checkpoint's mask_refine
                guides = [item.pixels for item, _ in batch] if refine != "none" else None
                segs = segment_texts(model, image, [item.task.texts[i] for item, i in batch],
                                     [item.image.size for item, _ in batch], guides=guides, refine=refine,
                                     spatial=self.settings.spatial_words)
                # An estimate of each mask's IoU from its maps (sag.confidence), so that annotators who sort by
                # score review the least trusted masks first; the largest A_fuse alone does not rank masks.
                scores = [0.0 if placeholder else mask_confidence(seg, model.config.threshold) for seg in segs]
            return [(seg.mask.cpu().numpy(), score) for seg, score in zip(segs, scores)]

        for batch in _batched(pairs, self.settings.batch_size):
            for (item, i), result in zip(batch, _each_or_alone(batch, run)):
                if item.error is not None:
                    continue
                if isinstance(result, Exception):
                    log.error("task %s: text encoder or fusion failed", item.task.task_id, exc_info=result)
                    item.error = f"the model failed on this text ({type(result).__name__}: {result})"
                    continue
                mask, score = result
                label = item.task.labels[i]
                if spec.brush:
                    item.regions.append(brush_region(mask, label, spec.brush, spec.to_name, score))
                if spec.polygon:
                    polygon_label = item.task.polygon_labels[i] if item.task.polygon_labels else label
                    item.regions.extend(polygon_regions(mask, polygon_label, spec.polygon, spec.to_name, score,
                                                        self.settings.polygon_tolerance))
                item.scores.append(score)

    def stats(self) -> dict[str, Any]:
        return {"model_version": self.served_version, "device": str(self.device), **vars(self.counters),
                "entity_cache": self.cache.stats()}


def _guide(image: Image.Image) -> np.ndarray:
    """A decoded image -> (H, W, 3) uint8 RGB, read-only: shared by every job that hits its cache entry."""
    pixels = np.array(image)  # decode_image gives RGB
    pixels.flags.writeable = False
    return pixels


def _capture(fn: Callable[[T], R], arg: T) -> R | Exception:
    try:
        return fn(arg)
    except Exception as exc:
        return exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, ImageError):
        return str(exc)
    log.error("unexpected error while fetching an image", exc_info=exc)
    return f"cannot fetch the image ({type(exc).__name__})"
