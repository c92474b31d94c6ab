"""``sag-worker``: an RQ worker that keeps SaG loaded and serves the inference (and/or training) queue.

It runs jobs in its own process, unlike RQ's default forking worker: the model is loaded once and stays on the GPU
(CUDA cannot be used across ``fork``), and the entity cache survives from job to job. A heartbeat thread keeps the
running job's registry entry fresh, so when a worker is killed its job expires within a few heartbeats and another
worker's maintenance pass requeues it (jobs are enqueued with retries).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from redis import Redis
from rq import SimpleWorker
from rq.worker import WorkerStatus

from .logs import configure_logging
from .runtime import Runtime, set_runtime
from .settings import INFERENCE_QUEUE, TRAINING_QUEUE, Settings, SettingsError

log = logging.getLogger(__name__)

QUEUES = {"inference": INFERENCE_QUEUE, "training": TRAINING_QUEUE}


class SaGWorker(SimpleWorker):
    """A :class:`rq.SimpleWorker` with short heartbeats while a job runs.

    ``job_monitoring_interval`` is the heartbeat period; a job whose worker stops beating for three periods counts
    as abandoned.
    """

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:  # type: ignore[no-untyped-def]
        return int(self.job_monitoring_interval * 3)

    def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.job_monitoring_interval):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception:  # a missed beat only shortens the grace period
                    log.warning("heartbeat for job %s failed", job.id, exc_info=True)

        beater = threading.Thread(target=beat, name="sag-heartbeat", daemon=True)
        beater.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beater.join()
        self.set_state(WorkerStatus.IDLE)


def build_worker(settings: Settings, queues: list[str], name: str | None = None) -> SaGWorker:
    """A worker on ``queues`` (RQ queue names) with heartbeat and maintenance timing from ``settings``."""
    beat = settings.worker_heartbeat
    return SaGWorker(
        queues,
        name=name,
        connection=Redis.from_url(settings.redis_url),
        job_monitoring_interval=beat,
        worker_ttl=15 + max(5, beat),  # RQ blocks on dequeue for worker_ttl - 15 s between maintenance checks
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
    worker.work(burst=args.burst, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
