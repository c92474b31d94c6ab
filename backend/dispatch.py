"""Running prediction jobs: on RQ workers through Redis, or in a thread of this process (embedded mode).

Both dispatchers run the same job function, :func:`backend.jobs.run_predict_job`. Urgent jobs (an annotator is
waiting) go ahead of bulk ones.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any, Protocol, Sequence

from redis import Redis
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.results import Result

from .exceptions import last_line
from .jobs import PredictJob, on_predict_job_failure, run_predict_job
from .keys import INFERENCE_QUEUE, PREDICT_FAILURE_TTL, PREDICT_RESULT_TTL
from .liveness import live_workers
from .settings import Settings

log = logging.getLogger(__name__)

Answers = list[dict[str, Any]]
DONE = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
RESULT_BLOCK_S = 1.0  # longest single block on a job's result stream
LIVE_CHECK_S = 2.0  # how often a wait for a queued job checks that some worker is still alive to run it
NO_WORKER = f"no sag-worker is running for the {INFERENCE_QUEUE} queue; start one with `sag-worker`"


class Outcome:
    """What waiting for a job gave: its answers, or why there are none."""

    def __init__(self, answers: Answers | None = None, error: str | None = None):
        self.answers = answers
        self.error = error


class Dispatcher(Protocol):
    def submit(self, jobs: Sequence[PredictJob], urgent: bool) -> list[Any]: ...
    def wait(self, handles: Sequence[Any], timeout: float) -> list[Outcome]: ...
    def workers(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...


class RQDispatcher:
    """Jobs on the ``sag:inference`` RQ queue, run by ``sag-worker`` processes."""

    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.queue = Queue(INFERENCE_QUEUE, connection=redis)

    def submit(self, jobs: Sequence[PredictJob], urgent: bool) -> list[Job]:
        # Retry covers a worker killed mid-job (RQ requeues abandoned jobs that have retries left) and transient
        # Label Studio write errors.
        return [
            self.queue.enqueue(
                run_predict_job, job,
                job_timeout=self.settings.job_timeout,
                result_ttl=PREDICT_RESULT_TTL,
                failure_ttl=PREDICT_FAILURE_TTL,
                retry=Retry(max=2),
                on_failure=Callback(on_predict_job_failure),
                at_front=urgent,
                description=job.describe(),
            )
            for job in jobs
        ]

    def wait(self, handles: Sequence[Job], timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        return [self._wait_one(job, deadline, timeout) for job in handles]

    def _wait_one(self, job: Job, deadline: float, timeout: float) -> Outcome:
        """Block on the job's RQ result stream (``XREAD``) rather than polling its status: an interactive answer
        comes back as soon as the worker stores it. A ``RETRIED`` entry (a worker died and the job was requeued)
        means keep reading after it."""
        key = Result.get_key(job.id)
        last_id = "0-0"
        next_check = time.monotonic() + LIVE_CHECK_S
        while (left := deadline - time.monotonic()) > 0:
            # Short blocks, so a job that ends without a result entry (cancelled, deleted) is noticed too.
            response = self.redis.xread({key: last_id}, block=max(1, int(1000 * min(left, RESULT_BLOCK_S))))
            for _, entries in response or ():
                for result_id, payload in entries:
                    last_id = result_id
                    result = Result.restore(job.id, result_id.decode(), payload, connection=self.redis,
                                            serializer=job.serializer)
                    if result.type == Result.Type.SUCCESSFUL:
                        return Outcome(answers=result.return_value)
                    if result.type != Result.Type.RETRIED:  # failed for good, or stopped
                        ended = "was stopped" if result.type == Result.Type.STOPPED else "failed"
                        return Outcome(error=f"the prediction job {ended}: {last_line(result.exc_string)}")
            if not response:
                status = job.get_status(refresh=True)
                if status == JobStatus.FINISHED:  # finished, but its result entry already expired
                    return Outcome(answers=job.return_value(refresh=True))
                if status in DONE:
                    latest = job.latest_result()
                    return Outcome(error=f"the prediction job {status.value}: "
                                         f"{last_line(latest.exc_string if latest else None)}")
                if status in (JobStatus.QUEUED, JobStatus.STARTED) and time.monotonic() >= next_check:
                    # Every worker died meanwhile: nobody will run the job (nor requeue it from a dead worker: that
                    # takes a live one's maintenance pass), so answer now rather than at SAG_PREDICT_TIMEOUT.
                    next_check = time.monotonic() + LIVE_CHECK_S
                    if not self.workers():
                        if status == JobStatus.QUEUED:  # a started one is left to RQ's abandoned-job handling
                            job.cancel()
                        return Outcome(error=NO_WORKER)
        if job.get_status(refresh=True) == JobStatus.QUEUED:
            job.cancel()  # nobody is waiting for it any more
        return Outcome(error=f"no result within {timeout:.0f} s (SAG_PREDICT_TIMEOUT): workers are busy or down; "
                             "ask again later")

    def workers(self) -> int:
        """Live workers on the inference queue (recent heartbeat; see :func:`backend.liveness.live_workers`)."""
        return len(live_workers(self.queue, self.settings.worker_heartbeat))

    def stats(self) -> dict[str, Any]:
        return {"mode": "redis", "queue": INFERENCE_QUEUE, "queued": self.queue.count, "workers": self.workers(),
                "started": self.queue.started_job_registry.count, "failed": self.queue.failed_job_registry.count}


class EmbeddedDispatcher:
    """Background threads running jobs in this process, urgent ones first; the model lives in this process.

    Several threads, so a job waiting on a slow image server (up to SAG_FETCH_TIMEOUT) does not hold back the
    others: the predictor fetches outside its model lock and runs the model one job at a time under it.
    """

    def __init__(self, threads: int = 4) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, PredictJob, Future]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.finished = 0
        self._threads = [threading.Thread(target=self._run, name=f"sag-embedded-worker-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: Sequence[PredictJob], urgent: bool) -> list[Future]:
        futures = []
        for job in jobs:
            future: Future = Future()
            self._queue.put((0 if urgent else 1, next(self._seq), job, future))
            futures.append(future)
        return futures

    def _run(self) -> None:
        while True:
            _, _, job, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(run_predict_job(job))
            except BaseException as exc:  # the thread must survive any job
                log.exception("embedded job failed: %s", job.describe())
                future.set_exception(exc)
            with self._lock:
                self.finished += 1

    def wait(self, handles: Sequence[Future], timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        outcomes = []
        for future in handles:
            try:
                outcomes.append(Outcome(answers=future.result(timeout=max(0.0, deadline - time.monotonic()))))
            except FuturesTimeoutError:  # not the built-in TimeoutError before Python 3.11
                future.cancel()
                outcomes.append(Outcome(error=f"no result within {timeout:g} s (SAG_PREDICT_TIMEOUT); ask again "
                                              "later"))
            except Exception as exc:
                outcomes.append(Outcome(error=f"the prediction job failed: {type(exc).__name__}: {exc}"))
        return outcomes

    def workers(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def stats(self) -> dict[str, Any]:
        return {"mode": "embedded", "queued": self._queue.qsize(), "workers": self.workers(),
                "finished": self.finished}
