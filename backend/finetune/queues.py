"""Where fine-tuning jobs wait and run: the RQ queue ``sag:training`` (a trainer, ``sag-worker --queues training``,
runs them), or background threads of the backend in embedded mode (no Redis), one training at a time.

Either queue keeps at most one job queued or running per project (a second request is answered
``already_training`` with the running job's progress) and describes a job as ``/jobs/<id>`` and
``/training/<project>`` show it: ``job_id``, ``status_url``, ``state``, ``stage``, step / total, loss, the result or
the error. The job itself is :mod:`backend.finetune.job`; what decides to queue one is
:mod:`backend.finetune.service`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from redis.exceptions import LockError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from .. import redact
from ..exceptions import last_line
from ..keys import (
    TRAINING_JOB,
    TRAINING_KEEP_S,
    TRAINING_LOCK,
    TRAINING_LOCK_TTL,
    TRAINING_QUEUE,
    status_url,
    training_key,
)
from ..liveness import live_workers
from ..predictions import PredictionService
from ..runtime import Runtime
from .job import TrainRequest, run_training_job, train_project

log = logging.getLogger(__name__)

ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED}
LOCK_WAIT_S = 5  # how long a request waits for another one that is queueing training for the same project


class RQTrainingQueue:
    """Training jobs on ``sag:training``; the key ``training_key(TRAINING_JOB, project)`` (:mod:`backend.keys`) names
    each project's latest job."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.redis = runtime.redis
        self.queue = Queue(TRAINING_QUEUE, connection=self.redis)

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
            with self.redis.lock(training_key(TRAINING_LOCK, project_id), timeout=TRAINING_LOCK_TTL,
                                 blocking_timeout=LOCK_WAIT_S):
                running = self._job(self.redis.get(training_key(TRAINING_JOB, project_id)))
                if running is not None and running.get_status(refresh=True) in ACTIVE:
                    return {"status": "already_training", **describe_rq(running)}
                job = self.queue.enqueue(
                    run_training_job, TrainRequest(project_id, reason),
                    job_timeout=self.runtime.settings.training_timeout, result_ttl=TRAINING_KEEP_S,
                    failure_ttl=TRAINING_KEEP_S,
                    retry=Retry(max=2),  # a killed trainer's job runs again (and resumes from its checkpoint)
                    description=f"fine-tune project {project_id} ({reason})",
                    meta={"kind": "training", "project": project_id, "reason": reason, "stage": "queued"},
                )
                self.redis.set(training_key(TRAINING_JOB, project_id), job.id, ex=TRAINING_KEEP_S)
        except LockError:
            return {"status": "busy", "detail": "another request is queueing training for this project; retry"}
        log.info("training queued for project %s (%s): job %s", project_id, reason, job.id)
        answer = {"status": "queued", **describe_rq(job)}
        if Queue(TRAINING_QUEUE, connection=self.redis).count and not self.trainers():
            answer["warning"] = "no trainer is running: start one with `sag-worker --queues training`"
        return answer

    def trainers(self) -> int:
        """Live trainers on the training queue (recent heartbeat), not RQ's registration set, which keeps dead ones."""
        return len(live_workers(self.queue, self.runtime.settings.worker_heartbeat))

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._job(job_id)
        if job is None or job.meta.get("kind") != "training":
            return None
        return describe_rq(job)

    def latest(self, project_id: int) -> dict[str, Any] | None:
        job = self._job(self.redis.get(training_key(TRAINING_JOB, project_id)))
        return describe_rq(job) if job is not None else None


def describe_rq(job: Job) -> dict[str, Any]:
    """A training job as the status endpoint shows it."""
    job.refresh()
    status = job.get_status(refresh=False)
    info: dict[str, Any] = {"job_id": job.id, "status_url": status_url(job.id),
                            "state": status.value if status else None, **job.meta}
    if status == JobStatus.FINISHED:
        info["result"] = job.return_value()
    elif status == JobStatus.FAILED and "error" not in info:
        result = job.latest_result()
        info["error"] = redact.scrub(last_line(result.exc_string if result else None, default="failed"))
    return info


class EmbeddedTrainingQueue:
    """Embedded mode: jobs run in background threads of this process, one training at a time, one per project.
    ``predictions`` (this process's) re-predicts stale pre-labels after a promotion."""

    def __init__(self, runtime: Runtime, predictions: PredictionService | None):
        self.runtime = runtime
        self.predictions = predictions
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
            info = {"job_id": job_id, "status_url": status_url(job_id), "state": "queued", "kind": "training",
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
                info["result"] = redact.scrub_data(train_project(self.runtime, request, report, self.predictions))
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


TrainingQueue = RQTrainingQueue | EmbeddedTrainingQueue


def training_queue(runtime: Runtime, predictions: PredictionService | None) -> TrainingQueue:
    """The queue for this process: RQ with a Redis, else background threads of this process."""
    return RQTrainingQueue(runtime) if runtime.redis is not None else EmbeddedTrainingQueue(runtime, predictions)
