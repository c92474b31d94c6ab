"""The inference job: what is queued, and the function a worker (or the embedded runner) executes.

RQ stores a job as the dotted names of its function and callback (``backend.jobs.run_predict_job``,
``backend.jobs.on_predict_job_failure``) and its pickled :class:`PredictJob` (with ``backend.predictor``'s
:class:`~backend.predictor.TaskInput` and :class:`~backend.predictor.OutputSpec`): they keep these names, so jobs
queued before an upgrade still run after it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import get_current_job

from .keys import WORKER_STATS_PATTERN, WORKER_STATS_TTL, worker_stats_key
from .labelstudio.results import prediction_records
from .predictor import OutputSpec, TaskInput
from .runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

T = TypeVar("T")
REDIS_WAIT_S = 300.0  # how long a job waits out a Redis outage for its own bookkeeping before it gives up


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

    A Label Studio write failure raises, so the queue retries the job. Every step may run more than once (a retry
    after a failure, a worker killed mid-job, a Redis outage) and converges to one effect: the write-back stores one
    prediction per task and model version
    (:meth:`~backend.labelstudio.client.LabelStudioClient.import_predictions_once`), the batch counts each job once
    (keyed by the RQ job id), and releasing claims is idempotent. The Redis writes after the Label Studio write wait
    out a Redis outage (up to ``REDIS_WAIT_S``) instead of failing the job.
    """
    runtime = get_runtime()
    rq_job = get_current_job()
    answers = runtime.predictor.predict(job.tasks, job.spec)
    if job.write_back and job.project_id is not None:
        predictions = prediction_records([task.task_id for task in job.tasks], answers)
        if runtime.label_studio is None:
            raise RuntimeError("bulk job cannot write back: LABEL_STUDIO_URL is not set on this worker")
        runtime.label_studio.import_predictions_once(job.project_id, predictions)
        task_ids = [t.task_id for t in job.tasks if t.task_id is not None]
        _waiting_out_redis("releasing the tasks' claims",
                           lambda: runtime.batches.release(job.project_id, task_ids))  # type: ignore[arg-type]
    _waiting_out_redis("publishing worker stats", lambda: _publish_stats(runtime))
    if job.batch_id is not None:
        failed = sum(1 for a in answers if "result" not in a)
        batch_id = job.batch_id
        info = _waiting_out_redis("recording batch progress", lambda: runtime.batches.record(
            batch_id, len(answers) - failed, failed, key=rq_job.id if rq_job is not None else None))
        if info:
            log.info("batch %s: %d/%d tasks done, %d failed (%s)", job.batch_id, info["done"] + info["failed"],
                     info["total"], info["failed"], info["status"])
    return answers


def _waiting_out_redis(what: str, write: Callable[[], T]) -> T:
    """``write()``, retried with exponential back-off while Redis is unreachable (up to ``REDIS_WAIT_S``).

    After the Label Studio write, failing the job for a Redis outage gains nothing: RQ's own failure handling needs
    Redis as well, so the worker could not even record the failure. Waiting keeps the job's result in this run.
    """
    deadline = time.monotonic() + REDIS_WAIT_S
    delay = 0.5
    failed = False
    while True:
        try:
            result = write()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("Redis is unreachable while %s (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc,
                        delay)
            failed = True
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
            continue
        if failed:
            log.info("Redis is back: %s done", what)
        return result


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
        runtime.batches.record(payload.batch_id, 0, len(payload.tasks), key=job.id)  # once, even if it ran before
    if payload.write_back and payload.project_id is not None:
        runtime.batches.release(payload.project_id, [t.task_id for t in payload.tasks if t.task_id is not None])


def _publish_stats(runtime: Runtime) -> None:
    """Under RQ, share this worker's counters (model loads, images encoded, cache hits) for /metrics."""
    job = get_current_job()
    if job is None or runtime.redis is None:
        return
    name = job.worker_name or f"pid-{os.getpid()}"
    stats = {"worker": name, "pid": os.getpid(), **runtime.predictor.stats()}
    runtime.redis.set(worker_stats_key(name), json.dumps(stats), ex=WORKER_STATS_TTL)


def worker_stats(runtime: Runtime) -> list[dict[str, Any]]:
    """The counters every live worker published (see :func:`_publish_stats`)."""
    if runtime.redis is None:
        return []
    keys = sorted(runtime.redis.scan_iter(match=WORKER_STATS_PATTERN, count=100))
    return [json.loads(raw) for raw in runtime.redis.mget(keys) if raw] if keys else []
