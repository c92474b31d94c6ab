"""The inference job: what is queued, and the function a worker (or the embedded runner) executes."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from .predictor import OutputSpec, TaskInput
from .runtime import Runtime, get_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictJob:
    """A chunk of tasks for one forward batch. With ``write_back`` the job stores its predictions in Label Studio
    itself (bulk pre-labelling); otherwise the /predict request that queued it collects the answers."""

    tasks: tuple[TaskInput, ...]
    spec: OutputSpec
    project_id: int | None = None
    write_back: bool = False
    batch_id: str | None = None

    def describe(self) -> str:
        ids = [t.task_id for t in self.tasks]
        return f"predict {len(ids)} task(s) {ids[:5]}{'...' if len(ids) > 5 else ''} project={self.project_id}"


def run_predict_job(job: PredictJob) -> list[dict[str, Any]]:
    """Predict every task of ``job``; one answer per task, in order. Write back to Label Studio if asked.

    A Label Studio write failure raises, so the queue retries the job; the task answers are deterministic, so the
    retry stores the same predictions.
    """
    runtime = get_runtime()
    answers = runtime.predictor.predict(job.tasks, job.spec)
    if job.write_back and job.project_id is not None:
        predictions = [
            {"task": task.task_id, "result": a["result"], "score": a["score"], "model_version": a["model_version"]}
            for task, a in zip(job.tasks, answers) if "result" in a
        ]
        if runtime.label_studio is None:
            raise RuntimeError("bulk job cannot write back: LABEL_STUDIO_URL is not set on this worker")
        runtime.label_studio.import_predictions(job.project_id, predictions)
        runtime.batches.release(job.project_id, [t.task_id for t in job.tasks if t.task_id is not None])
    _publish_stats(runtime)
    if job.batch_id is not None:
        failed = sum(1 for a in answers if "result" not in a)
        info = runtime.batches.record(job.batch_id, len(answers) - failed, failed)
        if info:
            log.info("batch %s: %d/%d tasks done, %d failed (%s)", job.batch_id, info["done"] + info["failed"],
                     info["total"], info["failed"], info["status"])
    return answers


def on_predict_job_failure(job: Any, connection: Any, exc_type: Any, exc_value: Any, traceback: Any) -> None:
    """RQ failure callback (also run for a job whose worker died). Once no retry is left, count the job's tasks
    as failed in its batch and release their claims, so the batch finishes and a later request can retry them."""
    if job.retries_left:
        log.warning("job %s failed (%s: %s); %d retr%s left", job.id, getattr(exc_type, "__name__", exc_type),
                    exc_value, job.retries_left, "y" if job.retries_left == 1 else "ies")
        return
    payload: PredictJob = job.args[0]
    log.error("job %s failed for good (%s): %s", job.id, exc_value, payload.describe())
    runtime = get_runtime()
    if payload.batch_id is not None:
        runtime.batches.record(payload.batch_id, 0, len(payload.tasks))
    if payload.write_back and payload.project_id is not None:
        runtime.batches.release(payload.project_id, [t.task_id for t in payload.tasks if t.task_id is not None])


WORKER_STATS_TTL = 3600


def _publish_stats(runtime: Runtime) -> None:
    """Under RQ, share this worker's counters (model loads, images encoded, cache hits) for /metrics."""
    job = get_current_job()
    if job is None or runtime.redis is None:
        return
    name = job.worker_name or f"pid-{os.getpid()}"
    key = f"sag:worker-stats:{name}"
    runtime.redis.set(key, json.dumps({"worker": name, "pid": os.getpid(), **runtime.predictor.stats()}),
                      ex=WORKER_STATS_TTL)


def worker_stats(runtime: Runtime) -> list[dict[str, Any]]:
    """The counters every live worker published (see :func:`_publish_stats`)."""
    if runtime.redis is None:
        return []
    keys = sorted(runtime.redis.scan_iter(match="sag:worker-stats:*", count=100))
    return [json.loads(raw) for raw in runtime.redis.mget(keys) if raw] if keys else []
