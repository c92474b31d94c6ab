"""Names that processes share: the RQ queues, every Redis key the backend writes and how long it lives, and the URL
where a job's progress is shown.

Each key family has one function that builds its keys, so the HTTP process, the workers and the tests name the same
keys. Every key starts with ``sag:``. RQ's own keys (jobs, queues, worker hashes, result streams) are RQ's business;
the one field the backend adds to a worker's hash is :data:`LIVENESS_FIELD`. In embedded mode (no ``REDIS_URL``)
none of these keys exist: the same state is kept in memory (:class:`backend.batches.MemoryBatchStore`,
:class:`backend.finetune.queues.EmbeddedTrainingQueue`, :class:`backend.finetune.service.TrainingService`).

The serving model version is the key ``sag:model:current`` (promotion history: the list ``sag:model:history``);
those two are built in :mod:`training.registry` (``REDIS_PREFIX``), because ``training`` cannot import ``backend``.
"""

from __future__ import annotations

DAY_S = 24 * 3600

# ---- RQ queues ------------------------------------------------------------------------------------------------------
INFERENCE_QUEUE = "sag:inference"
"""Prediction jobs (:func:`backend.jobs.run_predict_job`), run by ``sag-worker --queues inference``."""

TRAINING_QUEUE = "sag:training"
"""Fine-tuning jobs (:func:`backend.finetune.job.run_training_job`), run by ``sag-worker --queues training``."""

# ---- prediction jobs (backend.dispatch) -----------------------------------------------------------------------------
PREDICT_RESULT_TTL = 3600
"""Seconds RQ keeps a finished prediction job and its answers (the /predict request that waits reads them)."""

PREDICT_FAILURE_TTL = 7 * DAY_S
"""Seconds RQ keeps a prediction job that failed for good, with its (scrubbed) traceback."""

# ---- bulk pre-labelling batches and task claims (backend.batches) ---------------------------------------------------
BATCH_TTL = 7 * DAY_S
"""Seconds a batch's progress (:func:`batch_key`, :func:`batch_counted_key`) stays readable at ``/jobs/<id>``."""

CLAIM_TTL_JOB_TIMEOUTS = 3
"""A task's claim (:func:`pending_key`) expires after this many ``SAG_JOB_TIMEOUT`` s, in case no job releases it."""


def batch_key(batch_id: str) -> str:
    """The hash of one bulk batch: ``total``, ``done``, ``failed``, ``jobs``, ``project``, ``created_at``."""
    return f"sag:batch:{batch_id}"


def batch_counted_key(batch_id: str) -> str:
    """The set of the RQ job ids already counted into the batch, so a job that runs again is counted once."""
    return f"{batch_key(batch_id)}:counted"


def pending_key(project_id: int, task_id: int) -> str:
    """Set while a task of a bulk batch is queued, so a second request does not queue it again."""
    return f"sag:pending:{project_id}:{task_id}"


def claim_ttl(job_timeout: int) -> int:
    """Seconds a task's claim lives, for jobs that may run ``job_timeout`` s (``SAG_JOB_TIMEOUT``)."""
    return job_timeout * CLAIM_TTL_JOB_TIMEOUTS


# ---- workers (backend.jobs, backend.worker, backend.liveness) -------------------------------------------------------
WORKER_STATS_TTL = 3600
"""Seconds a worker's published counters stay after its last job (``/metrics`` lists what is there)."""

LIVENESS_FIELD = "sag_live_for"
"""A field of each ``sag-worker``'s RQ hash: seconds after its last heartbeat that it counts as dead."""


def worker_stats_key(worker: str) -> str:
    """A worker's counters (model loads, images encoded, cache hits) as JSON, for ``/metrics``."""
    return f"sag:worker-stats:{worker}"


WORKER_STATS_PATTERN = worker_stats_key("*")
"""``SCAN`` pattern of every :func:`worker_stats_key`."""

# ---- fine-tuning (backend.finetune.queues, backend.finetune.service) ------------------------------------------------
TRAINING_KEEP_S = 30 * DAY_S
"""Seconds RQ keeps a training job's result or failure, and the :data:`TRAINING_JOB` key names it."""

TRAINING_LOCK_TTL = 10
"""Seconds the :data:`TRAINING_LOCK` key lives at most (it is held only while a job is queued)."""

# The per-project keys of fine-tuning are ``sag:training:<kind>:<project id>`` (:func:`training_key`), of these kinds:
TRAINING_JOB = "project"
"""The id of the project's latest training job (at most one is queued or running per project)."""
TRAINING_LOCK = "lock"
"""A short lock that makes "is one queued? else queue one" atomic across backend threads and processes."""
NEW_ANNOTATIONS = "new-annotations"
"""How many annotations were created or updated since the project's last training was queued (no TTL)."""
LAST_TRAINING = "last"
"""When training was last queued for the project (Unix time; set by the first annotation event before that)."""


def training_key(kind: str, project_id: int) -> str:
    """A per-project key of fine-tuning; ``kind`` is one of the four above."""
    return f"sag:training:{kind}:{project_id}"


# ---- HTTP ---------------------------------------------------------------------------------------------------------
def status_url(job_id: str) -> str:
    """Where a bulk batch's or a training job's progress is shown (the ``/jobs/<id>`` route of :mod:`backend.app`)."""
    return f"/jobs/{job_id}"
