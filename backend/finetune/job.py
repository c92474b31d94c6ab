"""The fine-tuning job from Label Studio: what "Start Training" (and the periodic trigger) queue, one per project.

:func:`run_training_job` is the RQ job function (``sag:training``, run by ``sag-worker --queues training``); in
embedded mode :class:`backend.finetune.queues.EmbeddedTrainingQueue` calls :func:`train_project` in a thread. What
queues a job is :mod:`backend.finetune.service`; the queues themselves are :mod:`backend.finetune.queues`. RQ stores
a job as the dotted name of its function, ``backend.finetune.job.run_training_job``, and a pickled
:class:`TrainRequest` (``backend.finetune.job.TrainRequest``): they keep these names, so jobs queued before an upgrade
still run after it. Jobs queued before this module moved here name ``backend.training_jobs`` instead, which
:mod:`backend.training_jobs` keeps importable.

The job (:func:`train_project`) pulls the project's tasks through Label Studio's API, builds image-text pairs and the
validation masks (:func:`training.finetune.project_data`), fine-tunes from the serving version and promotes the
result only if it is not worse on the hand-corrected masks (:func:`training.finetune.finetune`). Progress
(stage, step / total, loss) is kept in the RQ job's meta, or in memory in embedded mode, and shown by ``/jobs/<id>``.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from rq import get_current_job

from sag import resolve_device
from training.finetune import FINETUNE_RECIPES, FinetuneConfig, FinetuneError, eta_seconds, finetune, project_data

from .. import redact
from ..cache import LRUCache
from ..dispatch import RQDispatcher
from ..exceptions import JobFailed, LabelConfigError, TrainingError
from ..images import decode_image
from ..labelstudio.labeling_config import parse_labeling_config
from ..predictions import PredictionService
from ..runtime import Runtime, get_runtime
from .prelabel_refresh import refresh_prelabels

log = logging.getLogger(__name__)

IMAGE_CACHE_BYTES = 512 * 2**20  # image bytes a job keeps in memory: training reads every image once per epoch
META_EVERY_S = 0.5  # the trainer writes step progress to Redis at most this often

# Errors that a re-run cannot fix: the job fails at once instead of spending its retries.
PERMANENT = (TrainingError, FinetuneError, LabelConfigError)


def _without_secrets(exc: BaseException) -> BaseException:
    """``exc`` itself when its traceback (chained exceptions included) shows no secret, else a :class:`JobFailed`
    with its scrubbed message."""
    text = "".join(traceback.format_exception(exc))
    if redact.scrub(text) == text:
        return exc
    return JobFailed(f"{type(exc).__name__}: {redact.scrub(str(exc))}")


@dataclass(frozen=True)
class TrainRequest:
    """One fine-tuning of a project; ``reason`` is what triggered it (START_TRAINING, annotations, interval)."""

    project_id: int
    reason: str


def _image_loader(runtime: Runtime) -> Callable[[str], Image.Image]:
    """URL -> RGB image through the backend's fetcher (Label Studio auth, SSRF guard, size limits), the bytes kept
    in an LRU of ``IMAGE_CACHE_BYTES``."""
    cache: LRUCache[str, bytes] = LRUCache(IMAGE_CACHE_BYTES, size=len)
    max_pixels = runtime.settings.max_image_pixels
    return lambda url: decode_image(cache.get_or_load(url, runtime.fetcher.fetch), max_pixels)


def finetune_config(runtime: Runtime) -> FinetuneConfig:
    """The backend's SAG_FINETUNE_* and SAG_PROMOTE_TOLERANCE settings as :func:`training.finetune.finetune` takes
    them."""
    s = runtime.settings
    return replace(FINETUNE_RECIPES[s.finetune_recipe], steps=s.finetune_steps, epochs=s.finetune_epochs,
                   max_steps=s.finetune_max_steps, batch_size=s.finetune_batch_size, lr=s.finetune_lr,
                   tolerance=s.promote_tolerance, heldout_tolerance=s.promote_heldout_tolerance,
                   promote_unchecked=s.promote_unchecked, heldout_fraction=s.finetune_heldout,
                   precision=s.precision, freeze_image_backbone=s.finetune_freeze_image_backbone,
                   freeze_image_side=s.finetune_freeze_image_side, mask_refine=s.mask_refine,
                   spatial_words=s.spatial_words)


def train_project(runtime: Runtime, request: TrainRequest, report: Callable[[dict[str, Any]], None],
                  predictions: PredictionService | None = None) -> dict[str, Any]:
    """Fine-tune on project ``request.project_id`` and return what happened (version, promoted, reason, metrics).
    After a promotion, with SAG_REFRESH_PRELABELS, ``predictions`` re-predicts the project's stale pre-labels."""
    ls = runtime.label_studio
    if ls is None:
        raise TrainingError("LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) must be set where training runs: the job "
                            "pulls the project's tasks through Label Studio's API")
    pid = request.project_id
    report = _logged(report, pid)
    report({"stage": "pulling tasks from Label Studio"})
    project = ls.project(pid)
    config = parse_labeling_config(project["label_config"])
    tasks = ls.export_tasks(pid)
    text_fields = tuple(dict.fromkeys([runtime.settings.text_field, *([config.prompt_name] if config.prompt_name
                                                                     else [])]))
    started = time.monotonic()
    data = project_data(tasks, config.image_key, text_fields, _image_loader(runtime),
                        progress=lambda done, total: report({"stage": "fetching images", "done": done,
                                                             "total": total,
                                                             "eta_s": eta_seconds(done, total, started)}))
    log.info("training project %s (%s): %d tasks, %d pairs, %d validation masks, %d skipped", pid, request.reason,
             len(tasks), len(data.pairs), data.validation_size, len(data.skipped))
    workdir = Path(runtime.registry.root) / ".training" / f"project-{pid}"
    result = finetune(runtime.registry, data, finetune_config(runtime), workdir,
                      device=str(resolve_device(runtime.settings.device)),
                      metadata={"label_studio": {"project": pid, "trigger": request.reason, "tasks": len(tasks)}},
                      report=report)
    outcome = {**result.to_dict(), "project": pid, "skipped_tasks": list(data.skipped[:20])}
    if result.promoted and runtime.settings.refresh_prelabels:
        report({"stage": "refreshing pre-labels"})
        outcome["prelabels"] = refresh_prelabels(runtime, predictions, pid, project["label_config"], tasks,
                                                 result.version)
    report({"stage": "done", "version": result.version, "promoted": result.promoted, "reason": result.reason})
    return outcome


def _logged(report: Callable[[dict[str, Any]], None], project_id: int) -> Callable[[dict[str, Any]], None]:
    """``report``, and a log line per phase (pulling tasks, fetching images, caching image features, training,
    validating, promoted or not and why), plus about every tenth image or step of the long phases with its ETA:
    what `docker compose logs trainer` shows while the model card in Label Studio shows only the backend's state."""
    last: dict[str, Any] = {"stage": None}

    def forward(info: dict[str, Any]) -> None:
        report(info)
        stage = info.get("stage")
        done, total = info.get("step", info.get("done")), info.get("total")
        tenth = isinstance(done, int) and isinstance(total, int) and (done % max(1, total // 10) == 0
                                                                     or done == total)
        if stage == last["stage"] and not tenth:
            return
        last["stage"] = stage
        parts = [f"training project {project_id}: {stage}"]
        if isinstance(total, int):
            parts.append(f"{done}/{total}")
        if info.get("loss") is not None:
            parts.append(f"loss {info['loss']:.4f}")
        if info.get("eta_s") is not None:
            parts.append(f"ETA {info['eta_s']} s")
        if info.get("reason"):
            parts.append(info["reason"])
        log.info(" ".join(parts))

    return forward


def run_training_job(request: TrainRequest) -> dict[str, Any]:
    """The RQ job function (``sag:training``): progress goes into the job's meta. It finds this worker's runtime
    with :func:`~backend.runtime.get_runtime` and predicts stale pre-labels through the inference queue."""
    job = get_current_job()
    last_save = [0.0]

    def report(info: dict[str, Any]) -> None:
        if job is None:
            return
        job.meta.update(redact.scrub_data(info))
        now = time.monotonic()
        if "step" not in info or info["step"] == info["total"] or now - last_save[0] >= META_EVERY_S:
            job.save_meta()
            last_save[0] = now

    try:
        runtime = get_runtime()
        redact.register(*runtime.settings.secrets())  # also under a plain `rq worker`, which configures no logging
        predictions = (PredictionService(runtime, RQDispatcher(runtime.redis, runtime.settings))
                       if runtime.redis is not None else None)
        return redact.scrub_data(train_project(runtime, request, report, predictions))  # RQ stores the result
    except Exception as exc:
        if isinstance(exc, PERMANENT):
            if job is not None:
                job.retries_left = 0  # a re-run would fail the same way
                job.meta.update({"stage": "failed", "error": redact.scrub(str(exc))})
                job.save_meta()
            log.error("training project %s failed: %s", request.project_id, exc)
        clean = _without_secrets(exc)
        if clean is exc:
            raise
        raise clean from None  # RQ stores the traceback of what is raised here
