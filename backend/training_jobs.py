"""Fine-tuning jobs from Label Studio: what "Start Training" (and the periodic trigger) queue, one job per project.

Label Studio waits at most 100 s for the START_TRAINING webhook and 1 s for annotation webhooks, so :meth:`submit`
only enqueues. With Redis the job goes to the ``sag:training`` queue and a trainer (``sag-worker --queues training``)
runs it; without Redis (embedded mode) it runs in a background thread of the backend, one at a time. Either way a
project has at most one training job queued or running: a second request is answered ``already_training`` with the
running job's progress.

The job (:func:`train_project`) pulls the project's tasks through Label Studio's API, builds image-text pairs and the
validation masks (:func:`training.finetune.project_data`), fine-tunes from the serving version and promotes the
result only if it is not worse on the hand-corrected masks (:func:`training.finetune.finetune`). Progress
(stage, step / total, loss) is kept in the RQ job's meta, or in memory in embedded mode, and shown by ``/jobs/<id>``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from redis.exceptions import LockError
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from sag import resolve_device
from training.finetune import FinetuneConfig, FinetuneError, finetune, project_data

from . import redact
from .images import decode_image
from .labeling_config import LabelConfigError, parse_labeling_config
from .runtime import Runtime, get_runtime
from .settings import TRAINING_QUEUE

log = logging.getLogger(__name__)

ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED}
KEEP_S = 30 * 24 * 3600  # how long job results and per-project keys stay in Redis
IMAGE_CACHE_BYTES = 512 * 2**20
META_EVERY_S = 0.5  # the trainer writes step progress to Redis at most this often


class TrainingError(RuntimeError):
    """A training job cannot run as configured; the message says what to set."""


# Errors that a re-run cannot fix: the job fails at once instead of spending its retries.
PERMANENT = (TrainingError, FinetuneError, LabelConfigError)


class JobFailed(RuntimeError):
    """A job's exception whose message or traceback held a secret, re-raised as ``"<type>: <scrubbed message>"``
    so that what RQ stores in Redis (the job's exc_info, its result stream) holds no secret."""


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


# ---- the job body -----------------------------------------------------------------------------------------------
class _BytesCache:
    """Image bytes by URL, bounded in total size: training reads every image once per epoch."""

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        self.items: OrderedDict[str, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, url: str, fetch: Callable[[str], bytes]) -> bytes:
        with self.lock:
            if url in self.items:
                self.items.move_to_end(url)
                return self.items[url]
        data = fetch(url)
        with self.lock:
            if len(data) <= self.budget and url not in self.items:
                self.items[url] = data
                self.size += len(data)
                while self.size > self.budget:
                    self.size -= len(self.items.popitem(last=False)[1])
        return data


def _image_loader(runtime: Runtime) -> Callable[[str], Any]:
    """URL -> RGB image through the backend's fetcher (Label Studio auth, SSRF guard, size limits)."""
    cache = _BytesCache(IMAGE_CACHE_BYTES)
    max_pixels = runtime.settings.max_image_pixels
    return lambda url: decode_image(cache.get(url, runtime.fetcher.fetch), max_pixels)


def finetune_config(runtime: Runtime) -> FinetuneConfig:
    s = runtime.settings
    return FinetuneConfig(steps=s.finetune_steps, batch_size=s.finetune_batch_size, lr=s.finetune_lr,
                          tolerance=s.promote_tolerance, precision=s.precision,
                          checkpoint_every=max(1, min(50, s.finetune_steps // 4)))


def train_project(runtime: Runtime, request: TrainRequest, report: Callable[[dict[str, Any]], None],
                  dispatcher: Any = None) -> dict[str, Any]:
    """Fine-tune on project ``request.project_id`` and return what happened (version, promoted, reason, metrics)."""
    ls = runtime.label_studio
    if ls is None:
        raise TrainingError("LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) must be set where training runs: the job "
                            "pulls the project's tasks through Label Studio's API")
    pid = request.project_id
    report({"stage": "pulling tasks from Label Studio"})
    project = ls.project(pid)
    config = parse_labeling_config(project["label_config"])
    tasks = ls.export_tasks(pid)
    text_fields = tuple(dict.fromkeys([runtime.settings.text_field, *([config.prompt_name] if config.prompt_name
                                                                     else [])]))
    data = project_data(tasks, config.image_key, text_fields, _image_loader(runtime))
    log.info("training project %s (%s): %d tasks, %d pairs, %d validation masks, %d skipped", pid, request.reason,
             len(tasks), len(data.pairs), data.validation_size, len(data.skipped))
    workdir = Path(runtime.registry.root) / ".training" / f"project-{pid}"
    result = finetune(runtime.registry, data, finetune_config(runtime), workdir,
                      device=str(resolve_device(runtime.settings.device)),
                      metadata={"label_studio": {"project": pid, "trigger": request.reason, "tasks": len(tasks)}},
                      report=report)
    outcome = {**result.to_dict(), "project": pid, "skipped_tasks": list(data.skipped[:20])}
    if result.promoted and runtime.settings.refresh_prelabels:
        from .prelabel_refresh import refresh_prelabels

        report({"stage": "refreshing pre-labels"})
        outcome["prelabels"] = refresh_prelabels(runtime, dispatcher, pid, project["label_config"], tasks,
                                                 result.version)
    report({"stage": "done", "version": result.version, "promoted": result.promoted, "reason": result.reason})
    return outcome


def run_training_job(request: TrainRequest) -> dict[str, Any]:
    """The RQ job function (``sag:training``): progress goes into the job's meta."""
    job = get_current_job()
    last_save = [0.0]

    def report(info: dict[str, Any]) -> None:
        if job is None:
            return
        job.meta.update(redact.scrub_data(info))
        if "step" in info:
            step, total = info["step"], info["total"]
            if step % max(1, total // 10) == 0 or step == total:
                log.info("training project %s: step %d/%d loss %s", request.project_id, step, total,
                         f"{info['loss']:.4f}" if info.get("loss") is not None else "-")
        now = time.monotonic()
        if "step" not in info or info["step"] == info["total"] or now - last_save[0] >= META_EVERY_S:
            job.save_meta()
            last_save[0] = now

    try:
        runtime = get_runtime()
        redact.register(*runtime.settings.secrets())  # also under a plain `rq worker`, which configures no logging
        from .dispatch import RQDispatcher

        dispatcher = RQDispatcher(runtime.redis, runtime.settings) if runtime.redis is not None else None
        return redact.scrub_data(train_project(runtime, request, report, dispatcher))  # RQ stores the result
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


# ---- queues -----------------------------------------------------------------------------------------------------
def _status_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


class RQTrainingQueue:
    """Training jobs on ``sag:training``; the key ``sag:training:project:<id>`` names each project's latest job."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.redis = runtime.redis
        self.queue = Queue(TRAINING_QUEUE, connection=self.redis)

    def _project_key(self, project_id: int) -> str:
        return f"sag:training:project:{project_id}"

    def _job(self, job_id: str | bytes | None) -> Job | None:
        if not job_id:
            return None
        try:
            return Job.fetch(job_id.decode() if isinstance(job_id, bytes) else job_id, connection=self.redis)
        except (NoSuchJobError, ValueError, TypeError):  # unknown, or not a job id at all (/jobs/<anything>)
            return None

    def submit(self, project_id: int, reason: str) -> dict[str, Any]:
        """Queue a job for ``project_id`` unless one is queued or running (then answer ``already_training``)."""
        try:
            # A short lock makes check-then-enqueue atomic across backend threads and processes.
            with self.redis.lock(f"sag:training:lock:{project_id}", timeout=10, blocking_timeout=5):
                running = self._job(self.redis.get(self._project_key(project_id)))
                if running is not None and running.get_status(refresh=True) in ACTIVE:
                    return {"status": "already_training", **describe_rq(running)}
                job = self.queue.enqueue(
                    run_training_job, TrainRequest(project_id, reason),
                    job_timeout=self.runtime.settings.training_timeout, result_ttl=KEEP_S, failure_ttl=KEEP_S,
                    retry=Retry(max=2),  # a killed trainer's job runs again (and resumes from its checkpoint)
                    description=f"fine-tune project {project_id} ({reason})",
                    meta={"kind": "training", "project": project_id, "reason": reason, "stage": "queued"},
                )
                self.redis.set(self._project_key(project_id), job.id, ex=KEEP_S)
        except LockError:
            return {"status": "busy", "detail": "another request is queueing training for this project; retry"}
        log.info("training queued for project %s (%s): job %s", project_id, reason, job.id)
        answer = {"status": "queued", **describe_rq(job)}
        if Queue(TRAINING_QUEUE, connection=self.redis).count and not self.trainers():
            answer["warning"] = "no trainer is running: start one with `sag-worker --queues training`"
        return answer

    def trainers(self) -> int:
        """Live trainers on the training queue (recent heartbeat), not RQ's registration set, which keeps dead ones."""
        from .worker import live_workers

        return len(live_workers(self.queue, self.runtime.settings.worker_heartbeat))

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._job(job_id)
        if job is None or job.meta.get("kind") != "training":
            return None
        return describe_rq(job)

    def latest(self, project_id: int) -> dict[str, Any] | None:
        job = self._job(self.redis.get(self._project_key(project_id)))
        return describe_rq(job) if job is not None else None


def describe_rq(job: Job) -> dict[str, Any]:
    """A training job as the status endpoint shows it."""
    job.refresh()
    status = job.get_status(refresh=False)
    info: dict[str, Any] = {"job_id": job.id, "status_url": _status_url(job.id),
                            "state": status.value if status else None, **job.meta}
    if status == JobStatus.FINISHED:
        info["result"] = job.return_value()
    elif status == JobStatus.FAILED and "error" not in info:
        result = job.latest_result()
        lines = [ln for ln in ((result.exc_string or "") if result else "").strip().splitlines() if ln.strip()]
        info["error"] = redact.scrub(lines[-1]) if lines else "failed"
    return info


class EmbeddedTrainingQueue:
    """Embedded mode: jobs run in background threads of this process, one training at a time, one per project."""

    def __init__(self, runtime: Runtime, dispatcher: Any):
        self.runtime = runtime
        self.dispatcher = dispatcher
        self.lock = threading.Lock()
        self.gate = threading.Semaphore(1)  # one training at a time: it uses the whole device
        self.jobs: dict[str, dict[str, Any]] = {}
        self.by_project: dict[int, str] = {}

    def submit(self, project_id: int, reason: str) -> dict[str, Any]:
        with self.lock:
            running = self.jobs.get(self.by_project.get(project_id, ""))
            if running is not None and running["state"] in ("queued", "started"):
                return {"status": "already_training", **dict(running)}
            job_id = f"train-{project_id}-{uuid.uuid4().hex[:8]}"
            info = {"job_id": job_id, "status_url": _status_url(job_id), "state": "queued", "kind": "training",
                    "project": project_id, "reason": reason, "stage": "queued"}
            self.jobs[job_id] = info
            self.by_project[project_id] = job_id
        threading.Thread(target=self._run, args=(info, TrainRequest(project_id, reason)),
                         name=f"sag-train-{project_id}", daemon=True).start()
        log.info("training queued for project %s (%s): %s (embedded)", project_id, reason, job_id)
        return {"status": "queued", **dict(info)}

    def _run(self, info: dict[str, Any], request: TrainRequest) -> None:
        def report(update: dict[str, Any]) -> None:
            info.update(redact.scrub_data(update))

        with self.gate:
            info["state"] = "started"
            try:
                info["result"] = redact.scrub_data(train_project(self.runtime, request, report, self.dispatcher))
                info["state"] = "finished"
            except Exception as exc:  # the thread must report, not die silently
                log.exception("training project %s failed", request.project_id)
                info.update(state="failed", stage="failed", error=redact.scrub(f"{type(exc).__name__}: {exc}"))

    def get(self, job_id: str) -> dict[str, Any] | None:
        info = self.jobs.get(job_id)
        return dict(info) if info is not None else None

    def latest(self, project_id: int) -> dict[str, Any] | None:
        return self.get(self.by_project.get(project_id, ""))

    def trainers(self) -> int:
        return 1


# ---- triggers ---------------------------------------------------------------------------------------------------
class TrainingService:
    """What the webhook and the routes use: submit, status, and the periodic trigger on annotation events."""

    def __init__(self, runtime: Runtime, dispatcher: Any = None):
        self.runtime = runtime
        self.settings = runtime.settings
        self.queue: RQTrainingQueue | EmbeddedTrainingQueue = (
            RQTrainingQueue(runtime) if runtime.redis is not None else EmbeddedTrainingQueue(runtime, dispatcher))
        self._counts: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def submit(self, project_id: int, reason: str) -> dict[str, Any]:
        """Queue fine-tuning of ``project_id`` (or report the job already queued or running)."""
        if self.runtime.label_studio is None:
            log.error("training for project %s not queued: LABEL_STUDIO_URL is not set", project_id)
            return {"status": "not_configured", "project": project_id,
                    "detail": "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY: training pulls the project's tasks "
                              "through Label Studio's API"}
        answer = self.queue.submit(project_id, reason)
        if answer["status"] == "queued":
            self._reset(project_id)
        return answer

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.queue.get(job_id)

    def latest(self, project_id: int) -> dict[str, Any] | None:
        return self.queue.latest(project_id)

    # Counters live in Redis when there is one, so every backend process counts the same annotations.
    def _count(self, project_id: int) -> tuple[int, float | None]:
        now = time.time()
        redis = self.runtime.redis
        if redis is not None:
            with redis.pipeline() as pipe:
                pipe.incr(f"sag:training:new-annotations:{project_id}")
                pipe.set(f"sag:training:last:{project_id}", now, nx=True)  # the clock starts at the first event
                pipe.get(f"sag:training:last:{project_id}")
                count, _, last = pipe.execute()
            return int(count), float(last)
        with self._lock:
            self._counts[project_id] = self._counts.get(project_id, 0) + 1
            self._last.setdefault(project_id, now)
            return self._counts[project_id], self._last[project_id]

    def _reset(self, project_id: int) -> None:
        now = time.time()
        redis = self.runtime.redis
        if redis is not None:
            with redis.pipeline() as pipe:
                pipe.delete(f"sag:training:new-annotations:{project_id}")
                pipe.set(f"sag:training:last:{project_id}", now)
                pipe.execute()
            return
        with self._lock:
            self._counts[project_id] = 0
            self._last[project_id] = now

    def on_annotation(self, project_id: int, event: str) -> dict[str, Any]:
        """Count a new or updated annotation; queue training when ``SAG_TRAIN_EVERY_N_ANNOTATIONS`` annotations
        arrived or ``SAG_TRAIN_INTERVAL`` seconds passed since the last run. Fast: Label Studio waits 1 s."""
        every, interval = self.settings.train_every_annotations, self.settings.train_interval
        if not every and not interval:
            return {"status": "acknowledged", "event": event, "project": project_id}
        count, last = self._count(project_id)
        reason = None
        if every and count >= every:
            reason = f"{count} new annotations"
        elif interval and last is not None and time.time() - last >= interval:
            reason = f"{count} new annotation(s) after {interval} s"
        if reason is None:
            return {"status": "acknowledged", "event": event, "project": project_id, "new_annotations": count}
        return {"event": event, "project": project_id, "trigger": reason, **self.submit(project_id, reason)}


_services: "weakref.WeakKeyDictionary[Runtime, TrainingService]" = weakref.WeakKeyDictionary()
_services_lock = threading.Lock()


def training_service(runtime: Runtime, dispatcher: Any = None) -> TrainingService:
    """This process's training service for ``runtime`` (one, so embedded jobs are deduplicated in one place)."""
    with _services_lock:
        service = _services.get(runtime)
        if service is None:
            service = _services[runtime] = TrainingService(runtime, dispatcher)
        return service
