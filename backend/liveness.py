"""Which RQ workers are alive: the heartbeat periods a worker keeps and the window after which a silent one counts
as dead.

:mod:`backend.worker` (``sag-worker``) beats at these periods and announces its window in its RQ worker hash
(:data:`backend.keys.LIVENESS_FIELD`); the dispatcher (:mod:`backend.dispatch`) and the training queue
(:mod:`backend.finetune.queues`) count live workers with :func:`live_workers`. It is a module of its own so that they
need not import the worker's entry point.
"""

from __future__ import annotations

from datetime import datetime, timezone

from rq import Queue, Worker, worker_registration
from rq.utils import utcparse

from .keys import LIVENESS_FIELD


def idle_heartbeat_interval(beat: int) -> int:
    """Seconds an idle worker blocks on the queue between two heartbeats (RQ's ``worker_ttl - 15``)."""
    return max(5, beat)


def liveness_window(beat: int) -> int:
    """Seconds without a heartbeat after which a worker with heartbeat period ``beat`` counts as dead.

    A live worker beats at least every ``max(idle interval, beat)`` seconds (the job heartbeat thread while busy, the
    dequeue loop while idle); twice that plus slack for a loaded machine or clock skew between hosts.
    """
    return 2 * max(idle_heartbeat_interval(beat), beat) + 5


def live_workers(queue: Queue, default_beat: int) -> list[str]:
    """Names of the workers on ``queue`` that are alive: registered, not dead, heart-beaten recently.

    RQ's ``Worker.count`` counts the queue's registration set, which keeps a SIGKILLed worker until its hash expires
    and a live worker's maintenance prunes it (with no live worker left, never). Here each registered worker counts
    only within its ``liveness_window`` after its ``last_heartbeat`` (the window its hash announces, else the one of
    ``default_beat``). The hashes are read in one pipeline: ``Worker.all`` would build a Worker per entry, and each
    Worker constructor raises the socket timeout of the connection pool it is given to RQ's dequeue timeout.
    """
    keys = sorted(worker_registration.get_keys(queue=queue))
    if not keys:
        return []
    with queue.connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "last_heartbeat", "death", LIVENESS_FIELD)
        rows = pipe.execute()
    now = datetime.now(timezone.utc)
    live = []
    for key, (beat, death, window) in zip(keys, rows):
        if beat is None or death is not None:
            continue
        try:
            silent = (now - utcparse(beat.decode())).total_seconds()
            limit = float(window) if window is not None else liveness_window(default_beat)
        except ValueError:
            continue
        if silent <= limit:
            live.append(key[len(Worker.redis_worker_namespace_prefix):])
    return live
