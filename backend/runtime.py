"""The long-lived objects of one process (registry, Label Studio client, image fetcher, predictor), built once.

The HTTP process builds its runtime in ``create_app`` and passes it to everything it serves with; ``sag-worker``
builds its own at start-up. RQ job functions (:mod:`backend.jobs`, :mod:`backend.finetune.job`) are called with
their job's payload only, so they find the runtime through :func:`get_runtime`: this module's ``_runtime`` is the
backend's one per-process lookup (installed by :func:`set_runtime`), and nothing else should need it. A worker thus
loads its model once for all jobs.
"""

from __future__ import annotations

import functools
import logging
import threading

from redis import Redis

from training.registry import Registry

from .batches import BatchStore, MemoryBatchStore, RedisBatchStore
from .images import ImageFetcher
from .labelstudio.client import LabelStudioClient
from .predictor import Predictor
from .presets import build_initial_model
from .settings import Settings

log = logging.getLogger(__name__)

REDIS_CONNECT_TIMEOUT_S = 5.0
REDIS_SOCKET_TIMEOUT_S = 30.0


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings

    @functools.cached_property
    def redis(self) -> Redis | None:
        if not self.settings.redis_url:
            return None
        # Timeouts, so a Redis that stops answering (rather than refusing connections) gives a RedisError, which the
        # app answers with 503, instead of hanging the request: no command of ours blocks for longer than
        # dispatch.RESULT_BLOCK_S (XREAD) or finetune.queues.LOCK_WAIT_S.
        return Redis.from_url(self.settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                              socket_timeout=REDIS_SOCKET_TIMEOUT_S)

    @functools.cached_property
    def registry(self) -> Registry:
        return Registry(self.settings.model_dir, self.redis)

    @functools.cached_property
    def label_studio(self) -> LabelStudioClient | None:
        s = self.settings
        return LabelStudioClient(s.label_studio_url, s.label_studio_api_key) if s.label_studio_url else None

    @functools.cached_property
    def fetcher(self) -> ImageFetcher:
        return ImageFetcher(self.settings, self.label_studio)

    @functools.cached_property
    def batches(self) -> BatchStore:
        return RedisBatchStore(self.redis) if self.redis is not None else MemoryBatchStore()

    @functools.cached_property
    def predictor(self) -> Predictor:
        return Predictor(self.settings, self.registry, self.fetcher)

    def ensure_serving_version(self) -> str:
        """Make sure a serving version exists (creating the initial one on a fresh registry); return its id."""
        version = self.registry.ensure_current(lambda: build_initial_model(self.settings.init_preset))
        if not version.metadata.get("trained", True):
            log.warning("serving version %s is UNTRAINED (preset %r): fine-tune it before relying on its masks",
                        version.id, version.metadata.get("preset"))
        return version.id


_runtime: Runtime | None = None
_lock = threading.Lock()


def set_runtime(runtime: Runtime) -> Runtime:
    """Install this process's runtime (the app and the worker do this at start-up)."""
    global _runtime
    with _lock:
        _runtime = runtime
    return runtime


def get_runtime() -> Runtime:
    """This process's runtime, built from the environment on first use (e.g. under a plain ``rq worker``)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(Settings.from_env())
        return _runtime
