"""``sag-worker``: an RQ worker that keeps SaG loaded and serves the inference (and/or training) queue.

It runs jobs in its own process, unlike RQ's default forking worker: the model is loaded once and stays on the GPU
(CUDA cannot be used across ``fork``), and the entity cache survives from job to job. A heartbeat thread keeps the
running job's registry entry fresh, so when a worker is killed its job expires within a few heartbeats and another
worker's maintenance pass requeues it (jobs are enqueued with retries).

A Redis outage does not end the process: RQ's work loop quits on an error outside its dequeue (a job's failure
handling needs Redis too), so :meth:`SaGWorker.serve` waits for Redis with exponential back-off and starts the loop
again. A job interrupted that way is still in RQ's started-job registry (with a persistent Redis); once its heartbeat
lapses, RQ's abandoned-job handling requeues it, and the job is idempotent (:mod:`backend.jobs`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.worker import WorkerStatus

from . import redact
from .exceptions import SettingsError
from .keys import INFERENCE_QUEUE, LIVENESS_FIELD, TRAINING_QUEUE
from .liveness import idle_heartbeat_interval, liveness_window
from .logs import configure_logging
from .runtime import Runtime, set_runtime
from .settings import Settings

log = logging.getLogger(__name__)

QUEUES = {"inference": INFERENCE_QUEUE, "training": TRAINING_QUEUE}
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)  # BusyLoadingError (Redis reloading its data) is one too


class SaGWorker(SimpleWorker):
    """A :class:`rq.SimpleWorker` with short heartbeats while a job runs.

    ``job_monitoring_interval`` is the heartbeat period; a job whose worker stops beating for three periods counts
    as abandoned.
    """

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:  # type: ignore[no-untyped-def]
        return int(self.job_monitoring_interval * 3)

    def serialize(self) -> dict:
        """RQ's worker hash plus how long this worker may stay silent before the backend counts it as dead."""
        return {**super().serialize(), LIVENESS_FIELD: liveness_window(int(self.job_monitoring_interval))}

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):  # type: ignore[no-untyped-def]
        """RQ's failure handling, with secrets scrubbed from the traceback it stores in Redis (the failed-job
        registry and the job's result stream, which ``/predict`` and ``/jobs`` read)."""
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry,
                                   exc_string=redact.scrub(exc_string), execution=execution)

    def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            failing = False
            while not stop.wait(self.job_monitoring_interval):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception as exc:  # a missed beat only shortens the grace period
                    if not failing:  # once per outage, not once a second
                        log.warning("heartbeat for job %s failed (%s: %s); retrying every %s s", job.id,
                                    type(exc).__name__, exc, self.job_monitoring_interval)
                    failing = True
                else:
                    if failing:
                        log.info("heartbeat for job %s restored", job.id)
                    failing = False

        beater = threading.Thread(target=beat, name="sag-heartbeat", daemon=True)
        beater.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beater.join()
        self.set_state(WorkerStatus.IDLE)

    # ---- surviving Redis outages ------------------------------------------------------------------------------
    def serve(self, burst: bool = False, logging_level: str = "INFO") -> None:
        """Run RQ's work loop until a stop is requested (SIGTERM, SIGINT) or, with ``burst``, the queues are empty.

        RQ's ``work()`` quits on any error outside its dequeue wait ("found an unhandled exception, quitting"), and
        with Redis gone that includes a job's own success or failure handling; its teardown then raises the
        ConnectionError. Here the loop is started again once Redis answers, waiting with exponential back-off
        (RQ's ``exponential_backoff_factor`` and ``max_connection_wait_time``), so a Redis restart costs the
        interrupted job a retry, not the worker.
        """
        delay = 1.0
        while True:
            started = time.monotonic()
            failure: Exception | None = None
            try:
                self.work(burst=burst, logging_level=logging_level)
            except REDIS_DOWN as exc:  # from work()'s teardown, which needs Redis to deregister
                failure = exc
            except StopRequested:  # a signal between RQ's own handlers: nothing is running
                return
            if self._stop_requested or self._shutdown_requested_date is not None:
                return  # SIGTERM/SIGINT: RQ sets the date always, the flag only when a job was running
            if time.monotonic() - started > self.max_connection_wait_time:
                delay = 1.0  # it ran for a while: a new incident, not the same one again
            self._install_stop_handlers()  # RQ's handlers would need Redis to record the shutdown
            try:
                while True:
                    reachable = self._wait_for_redis(failure, delay)
                    if burst and reachable and failure is None:
                        return  # the queues were empty
                    if reachable:  # it ended on something else, or on a blip that is over: restart, not too often
                        log.warning("sag-worker %s: the work loop ended unexpectedly; restarting in %.0f s",
                                    self.name, delay)
                        time.sleep(delay)
                    delay = min(delay * self.exponential_backoff_factor, self.max_connection_wait_time)
                    try:
                        self._reset_for_restart()
                        break
                    except REDIS_DOWN as exc:  # gone again before we could re-register: wait once more
                        failure = exc
            except StopRequested:
                log.info("sag-worker %s: stopping on request", self.name)
                return

    def _install_stop_handlers(self) -> None:
        def stop(signum, frame):  # type: ignore[no-untyped-def]
            self._stop_requested = True
            raise StopRequested()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _wait_for_redis(self, failure: Exception | None, delay: float) -> bool:
        """Block until Redis answers a PING, backing off exponentially; True when it answered at once."""
        first = True
        while True:
            try:
                self.connection.ping()
            except REDIS_DOWN as exc:
                reason = failure if first and failure is not None else exc
                log.warning("sag-worker %s: Redis is unreachable (%s: %s); reconnecting in %.0f s", self.name,
                            type(reason).__name__, reason, delay)
                time.sleep(delay)
                delay = min(delay * self.exponential_backoff_factor, self.max_connection_wait_time)
                first = False
                continue
            if not first:
                log.info("sag-worker %s: Redis is back; resuming work", self.name)
            return first

    def _reset_for_restart(self) -> None:
        """Undo what the interrupted work loop left, so ``work()`` can register afresh under the same name.

        Its teardown may not have reached the pubsub thread; the active execution belongs to a job whose fate RQ's
        abandoned-job handling now decides; and ``register_birth`` refuses a name whose hash is still there without a
        death date (a persistent Redis keeps it), so the old registration is closed first.
        """
        if self.pubsub_thread is not None:
            with contextlib.suppress(Exception):
                self.pubsub_thread.stop()
                self.pubsub_thread.join(timeout=1)
            with contextlib.suppress(Exception):
                self.pubsub.close()
        self.pubsub_thread = None
        self.pubsub = None
        self.executions.clear()
        self.register_death()  # raises if Redis went away again; serve() then waits once more


def build_worker(settings: Settings, queues: list[str], name: str | None = None) -> SaGWorker:
    """A worker on ``queues`` (RQ queue names) with heartbeat and maintenance timing from ``settings``."""
    beat = settings.worker_heartbeat
    return SaGWorker(
        queues,
        name=name,
        connection=Redis.from_url(settings.redis_url),
        job_monitoring_interval=beat,
        worker_ttl=15 + idle_heartbeat_interval(beat),  # RQ blocks on dequeue for worker_ttl - 15 s per heartbeat
        maintenance_interval=max(2 * beat, 2),
    )


def main(argv: list[str] | None = None) -> int:
    """``sag-worker``: serve the SaG job queues from Redis (REDIS_URL)."""
    parser = argparse.ArgumentParser(prog="sag-worker", description=main.__doc__)
    parser.add_argument("--queues", nargs="+", choices=sorted(QUEUES), default=["inference"],
                        help="queues to serve, in priority order (default: inference)")
    parser.add_argument("--name", help="worker name (default: random)")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--device", help="cpu, cuda or auto (SAG_DEVICE)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(device=args.device)
    except SettingsError as exc:
        print(f"sag-worker: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("sag-worker: REDIS_URL is not set; workers take their jobs from Redis (without it, sag-backend runs "
              "jobs itself)", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.secrets())
    runtime = set_runtime(Runtime(settings))
    if "inference" in args.queues:
        runtime.ensure_serving_version()
        runtime.predictor.ensure_model()  # load once, before the first job
    worker = build_worker(settings, [QUEUES[q] for q in args.queues], args.name)
    log.info("sag-worker %s listening on %s", worker.name, ", ".join(QUEUES[q] for q in args.queues))
    worker.serve(burst=args.burst, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
