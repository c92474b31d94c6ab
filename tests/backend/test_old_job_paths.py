"""Jobs queued before a module moved still run after it (``backend/training_jobs.py``), on the real Redis.

RQ stores a job as the dotted name of its function (``f"{func.__module__}.{func.__qualname__}"``) and pickles its
arguments, which name their classes by ``__module__`` too. Before ``backend/finetune/`` existed, the training job's
function and its :class:`TrainRequest` lived in ``backend.training_jobs``: a job queued then names that module twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

from backend.finetune import job as finetune_job
from backend.finetune.queues import RQTrainingQueue
from backend.keys import TRAINING_QUEUE
from backend.runtime import Runtime
from backend.settings import Settings

OLD = "backend.training_jobs"
NEW = "backend.finetune.job"


def queue_as_before_the_move(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Queue a training job exactly as the code before the move did, and return its id: RQ and pickle take the
    module names from the function's and the class's ``__module__``, which was ``backend.training_jobs``."""
    queue = Queue(TRAINING_QUEUE, connection=redis.Redis.from_url(redis_url))
    before = types.ModuleType(OLD)  # the module as it was, not the alias kept for it: pickle looks the class up there
    before.run_training_job, before.TrainRequest = finetune_job.run_training_job, finetune_job.TrainRequest
    with monkeypatch.context() as old_code:
        old_code.setitem(sys.modules, OLD, before)
        old_code.setattr(finetune_job.run_training_job, "__module__", OLD)
        old_code.setattr(finetune_job.TrainRequest, "__module__", OLD)
        job = queue.enqueue(finetune_job.run_training_job, finetune_job.TrainRequest(7, "START_TRAINING"),
                            retry=Retry(max=2), description="fine-tune project 7 (START_TRAINING)",
                            meta={"kind": "training", "project": 7, "reason": "START_TRAINING", "stage": "queued"})
    stored = Job.fetch(job.id, connection=queue.connection)
    # What sits in Redis names only the old module: the function and the pickled request's class.
    assert stored.func_name == f"{OLD}.run_training_job"
    assert stored.data.count(OLD.encode()) == 2 and NEW.encode() not in stored.data, stored.data
    return job.id


def test_a_job_queued_under_the_old_path_resolves_to_the_moved_function(redis_url, monkeypatch):
    job_id = queue_as_before_the_move(redis_url, monkeypatch)
    # A fresh interpreter, as a worker started after the upgrade: it has imported nothing of the backend yet.
    probe = ("import sys, redis; from rq.job import Job; "
             "job = Job.fetch(sys.argv[1], connection=redis.Redis.from_url(sys.argv[2])); "
             "from backend.finetune.job import TrainRequest, run_training_job; "
             "request, = job.args; "
             "print(job.func is run_training_job, type(request) is TrainRequest, request.project_id, request.reason)")
    answer = subprocess.run([sys.executable, "-c", probe, job_id, redis_url], capture_output=True, text=True,
                            timeout=120)
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert answer.stdout.split() == ["True", "True", "7", "START_TRAINING"]


def test_a_job_queued_under_the_old_path_runs_on_a_trainer_started_after_the_move(redis_url, monkeypatch,
                                                                                   tmp_path: Path):
    job_id = queue_as_before_the_move(redis_url, monkeypatch)
    env = {**os.environ, "REDIS_URL": redis_url, "SAG_MODEL_DIR": str(tmp_path / "models"), "SAG_DEVICE": "cpu",
           "SAG_WORKER_HEARTBEAT": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY"):
        env.pop(name, None)  # so the job body stops at its first check, with a message only it gives
    trainer = subprocess.run([sys.executable, "-m", "backend.worker", "--queues", "training", "--burst", "--name",
                              f"old-path-{os.getpid()}"], env=env, capture_output=True, text=True, timeout=300)
    assert trainer.returncode == 0, trainer.stdout[-3000:] + trainer.stderr[-3000:]
    job = Job.fetch(job_id, connection=redis.Redis.from_url(redis_url))
    # The moved job body ran on the unpickled request: it failed where a trainer without Label Studio must, marked
    # the failure permanent, and recorded it in the meta that /training/<project> shows.
    assert job.get_status() == JobStatus.FAILED
    assert job.meta["stage"] == "failed" and job.retries_left == 0, job.meta
    assert job.meta["error"].startswith("LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) must be set where training runs")
    assert "training project 7 failed" in trainer.stderr + trainer.stdout
    assert "/backend/finetune/job.py" in job.latest_result().exc_string


def test_jobs_queued_now_name_the_new_module(redis_url):
    conn = redis.Redis.from_url(redis_url)
    answer = RQTrainingQueue(Runtime(Settings.from_env({}, redis_url=redis_url))).submit(7, "START_TRAINING")
    assert answer["status"] == "queued", answer
    job = Job.fetch(answer["job_id"], connection=conn)
    assert job.func_name == f"{NEW}.run_training_job"
    assert job.data.count(NEW.encode()) == 2 and OLD.encode() not in job.data, job.data
