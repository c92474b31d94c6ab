"""Faults around the queue, with real ``sag-worker`` processes: a Redis restart in the middle of a bulk job, a worker
SIGKILLed while it posts predictions to Label Studio, a dead worker, and Redis down under the HTTP routes.

The fake Label Studio (``http_server``) stores imported predictions as the real one does, so the tests count what
Label Studio holds per task rather than what was sent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus

from backend.app import create_app
from backend.batches import RedisBatchStore
from backend.dispatch import NO_WORKER, RQDispatcher
from backend.exceptions import LabelStudioError
from backend.jobs import PredictJob
from backend.keys import INFERENCE_QUEUE
from backend.labelstudio.client import LabelStudioClient
from backend.liveness import live_workers, liveness_window
from backend.predictor import OutputSpec, TaskInput
from backend.settings import Settings
from tests.processes import stop_processes
from training.registry import Registry

from .conftest import LABEL_CONFIG, png_bytes, wait_for

KEY = "k-0123456789"



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own on a free port, with append-only persistence (fsync on every write) in
    ``directory``, so it can be killed and started again with its data, like a production Redis restart."""

    def __init__(self, directory: Path):
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.directory / "redis.log", "a")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"], stdout=log, stderr=subprocess.STDOUT)
        probe = redis.Redis.from_url(self.url)

        def answers() -> bool:
            assert self.proc.poll() is None, (self.directory / "redis.log").read_text()[-2000:]
            try:
                return bool(probe.ping())
            except redis.RedisError:  # not listening yet, or still loading its append-only file
                return False

        wait_for(answers, 30, "the private redis-server to answer")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: a crash; with appendfsync always nothing acknowledged is lost
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def private_redis(tmp_path: Path):
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def worker_procs(tmp_path: Path):
    """Start ``sag-worker`` processes on any Redis URL, logging to tmp_path/worker-N.log; stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(redis_url: str, model_dir: Path, count: int, **env: str) -> list[subprocess.Popen]:
        environment = {**os.environ, "REDIS_URL": redis_url, "SAG_MODEL_DIR": str(model_dir), "SAG_DEVICE": "cpu",
                       "SAG_WORKER_HEARTBEAT": "1", "HF_HUB_OFFLINE": "1", "SAG_ALLOWED_HOSTS": "127.0.0.1",
                       "LOG_LEVEL": "INFO", **env}
        new = []
        for _ in range(count):
            index = len(procs)
            log = open(tmp_path / f"worker-{index}.log", "w")
            new.append(subprocess.Popen([sys.executable, "-m", "backend.worker", "--name", f"f{index}-{os.getpid()}"],
                                        env=environment, stdout=log, stderr=subprocess.STDOUT))
            procs.append(new[-1])
        queue = Queue(INFERENCE_QUEUE, connection=redis.Redis.from_url(redis_url))

        def registered() -> bool:
            assert all(p.poll() is None for p in procs), logs(tmp_path)
            return len(live_workers(queue, 1)) >= len(procs)

        wait_for(registered, 120, "the workers to register")
        return new

    yield start
    stop_processes(procs)


def logs(tmp_path: Path) -> str:
    """Every worker's log, for assertion messages and for waiting on what the workers report."""
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(tmp_path.glob("worker-*.log")))


def app_client(redis_url: str, model_dir: Path, base: str | None = None, **overrides):
    ls = {"label_studio_url": base, "label_studio_api_key": KEY} if base else {}
    settings = Settings.from_env({}, redis_url=redis_url, model_dir=str(model_dir), device="cpu",
                                 worker_heartbeat=1, **ls, **overrides)
    return create_app(settings).test_client()


def predict(client, tasks, project="4.1700000000"):
    response = client.post("/predict", json={"tasks": tasks, "project": project, "label_config": LABEL_CONFIG})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def finished(client, status_url: str):
    status = client.get(status_url).get_json()
    return status if status.get("status") == "finished" else None


# ---- acceptance: Redis restarted mid-bulk-job ------------------------------------------------------------------
def test_workers_survive_a_redis_restart_mid_bulk_job_and_write_every_task_once(
        private_redis, worker_procs, registry_dir, tmp_path, http_server, photos):
    base, served = http_server
    served.files["/cup.png"] = (png_bytes(photos["coffee"]), "image/png")
    procs = worker_procs(private_redis.url, registry_dir, 2, LABEL_STUDIO_URL=base, LABEL_STUDIO_API_KEY=KEY)
    # Hold the first import of each worker until Redis is down; then Label Studio stores both, but answers the
    # second with a 504 (a proxy gave up while Label Studio worked): one worker's job goes on to its Redis writes,
    # the other's job fails, and RQ's failure handling needs Redis too.
    lock = threading.Lock()
    held: list[list] = []
    both_held, release = threading.Event(), threading.Event()

    def on_import(payload: list) -> tuple[int, bool]:
        with lock:
            if len(held) >= 2:
                return 201, True
            held.append(payload)
            mine = len(held)
            if mine == 2:
                both_held.set()
        if not release.wait(120):
            return 500, False
        return (201, True) if mine == 1 else (504, True)

    served.on_import = on_import
    client = app_client(private_redis.url, registry_dir, base, sync_max_tasks=2, batch_size=2)
    tasks = [{"id": 100 + i, "data": {"image": f"{base}/cup.png", "text": f"the cup {i}"}} for i in range(12)]
    job = predict(client, tasks)["job"]
    assert job["jobs"] == 6

    assert both_held.wait(120), logs(tmp_path)
    private_redis.kill()
    release.set()
    # Both failure paths are reached while Redis is down: a job retrying its own bookkeeping, and a work loop that
    # RQ quit; the worker's outer loop has already failed to reconnect once (its second wait is 2 s).
    wait_for(lambda: "while releasing the tasks' claims" in (text := logs(tmp_path))
             and "reconnecting in 2 s" in text, 60, "both workers to meet the outage")
    private_redis.start()

    status = wait_for(lambda: finished(client, job["status_url"]), 120, "the batch to finish after the restart")
    assert (status["done"], status["failed"], status["total"]) == (12, 0, 12), logs(tmp_path)
    version = f"{Registry(registry_dir).current()}+untrained"  # as Label Studio sees the placeholder
    assert served.prediction_counts() == {(t["id"], version): 1 for t in tasks}, logs(tmp_path)
    assert all(p.poll() is None for p in procs), logs(tmp_path)  # nobody had to restart a worker
    # Both registered again (the one that backed off may still be waiting out its last 2-4 s when the batch ends).
    wait_for(lambda: client.get("/health").get_json()["workers"] == 2, 30, "both workers to be counted again")


# ---- acceptance: a worker killed while it posts ----------------------------------------------------------------
def test_a_worker_killed_during_the_write_back_post_leaves_one_prediction_per_task(
        redis_url, registry_dir, start_workers, http_server, photos):
    base, served = http_server
    served.files["/cup.png"] = (png_bytes(photos["coffee"]), "image/png")
    procs = start_workers(2, LABEL_STUDIO_URL=base, LABEL_STUDIO_API_KEY=KEY)
    arrived, killed = threading.Event(), threading.Event()

    def on_import(payload: list) -> tuple[int, bool]:
        if arrived.is_set():
            return 201, True
        arrived.set()
        # Label Studio finishes the request it has read although its client died: stored, never acknowledged.
        return (201, True) if killed.wait(120) else (500, False)

    served.on_import = on_import
    client = app_client(redis_url, registry_dir, base, sync_max_tasks=2, batch_size=4)
    tasks = [{"id": 200 + i, "data": {"image": f"{base}/cup.png", "text": f"the cup {i}"}} for i in range(3)]
    job = predict(client, tasks)["job"]
    assert job["jobs"] == 1

    assert arrived.wait(120)
    conn = redis.Redis.from_url(redis_url)
    [job_id] = Queue(INFERENCE_QUEUE, connection=conn).started_job_registry.get_job_ids()
    victim_name = Job.fetch(job_id, connection=conn).worker_name
    victim = next(p for i, p in enumerate(procs) if victim_name == f"w{i}-{os.getpid()}")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    killed.set()

    status = wait_for(lambda: finished(client, job["status_url"]), 90, "the retried job")
    assert (status["done"], status["failed"]) == (3, 0)
    version = f"{Registry(registry_dir).current()}+untrained"  # as Label Studio sees the placeholder
    assert served.prediction_counts() == {(t["id"], version): 1 for t in tasks}
    imports = [path for path, _ in served.posted if path.endswith("/import/predictions")]
    assert len(imports) == 1  # the retry found the killed run's predictions stored and imported nothing
    # The batch is counted inside the job; RQ marks the job finished just after it returns.
    done = Job.fetch(job_id, connection=conn)
    wait_for(lambda: done.get_status(refresh=True) == JobStatus.FINISHED, 30, "RQ to mark the job finished")
    assert done.worker_name != victim_name


# ---- acceptance: a dead worker is not counted ------------------------------------------------------------------
def test_a_dead_worker_is_not_counted_and_predict_fails_at_once(redis_url, registry_dir, start_workers, http_server,
                                                                 photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    served.slow["/cat.png"] = 60.0  # keeps the job busy until its worker is killed
    [worker] = start_workers(1)
    client = app_client(redis_url, registry_dir, predict_timeout=120)
    assert client.get("/health").get_json()["workers"] == 1
    conn = redis.Redis.from_url(redis_url)
    dispatcher = RQDispatcher(conn, Settings.from_env({}, redis_url=redis_url, model_dir=str(registry_dir),
                                                      worker_heartbeat=1))
    task = TaskInput(1, f"{base}/cat.png", ("the cat",), ("Cat",))
    [job] = dispatcher.submit([PredictJob((task,), OutputSpec("image", "mask"))], urgent=True)
    wait_for(lambda: any(path == "/cat.png" for _, path, _, _ in served.requests), 60, "the job to start")

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    # A request already waiting for the dead worker's job gives up once the worker's heartbeat is stale, not at
    # its 120 s timeout: no live worker is left to requeue the job, let alone run it.
    started = time.monotonic()
    [outcome] = dispatcher.wait([job], timeout=120)
    assert outcome.error == NO_WORKER
    assert time.monotonic() - started < liveness_window(1) + 10

    assert Worker.count(queue=Queue(INFERENCE_QUEUE, connection=conn)) == 1  # RQ's registry still lists it
    health = client.get("/health").get_json()
    assert health["workers"] == 0
    assert client.get("/metrics").get_json()["queue"]["workers"] == 0
    started = time.monotonic()
    [answer] = predict(client, [{"id": 5, "data": {"image": f"{base}/cat.png", "text": "the cat"}}])["results"]
    assert time.monotonic() - started < 5  # at once, not after SAG_PREDICT_TIMEOUT
    assert "no sag-worker is running" in answer["error"]


# ---- Redis down under the HTTP routes --------------------------------------------------------------------------
def test_every_route_that_needs_redis_answers_503_while_it_is_down_and_recovers(tmp_path, registry_dir):
    server = PrivateRedis(tmp_path / "redis")  # not started yet: Redis is down
    client = app_client(server.url, registry_dir)
    task = {"id": 1, "data": {"image": "http://127.0.0.1:9/cat.png", "text": "the cat"}}
    answers = {
        "health": client.get("/health"),
        "predict": client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG}),
        "metrics": client.get("/metrics"),
        "jobs": client.get("/jobs/0123456789abcdef"),
    }
    for route, response in answers.items():
        assert response.status_code == 503, (route, response.get_data(as_text=True))
        body = response.get_json()
        assert body["status"] == "DOWN" and "Redis is unreachable" in (body.get("error") or body.get("detail")), route
    server.start()
    try:
        assert client.get("/health").status_code == 200  # the same app, no restart
        assert client.get("/metrics").status_code == 200
        assert client.get("/jobs/0123456789abcdef").status_code == 404
    finally:
        server.stop()


# ---- the pieces: idempotent write-back and batch counting ------------------------------------------------------
def test_write_back_converges_to_one_prediction_per_task_and_version(http_server):
    base, served = http_server
    ls = LabelStudioClient(base, KEY)
    batch = [{"task": t, "result": [], "score": 0.5, "model_version": "v1"} for t in (1, 2, 3)]

    # Lost on the way (Label Studio never got it): the retry stores every one.
    served.on_import = lambda payload: (502, False)
    with pytest.raises(LabelStudioError):
        ls.import_predictions_once(7, batch)
    served.on_import = None
    assert ls.import_predictions_once(7, batch) == {"stored": 3, "skipped": 0, "removed": 0}
    # Stored, but the answer was lost (a 504 from a proxy): the retry stores nothing more.
    served.on_import = lambda payload: (504, True)
    with pytest.raises(LabelStudioError):
        ls.import_predictions_once(7, [{**p, "model_version": "v2"} for p in batch])
    served.on_import = None
    assert ls.import_predictions_once(7, [{**p, "model_version": "v2"} for p in batch])["skipped"] == 3
    assert ls.import_predictions_once(7, batch)["skipped"] == 3
    assert served.prediction_counts() == {(t, v): 1 for t in (1, 2, 3) for v in ("v1", "v2")}

    # Two runs importing at the same moment (each saw none before): the extra copy goes, the oldest stays.
    def concurrent_run(payload: list) -> tuple[int, bool]:
        with served.lock:
            for p in payload:
                served.predictions.append({**p, "id": next(served.prediction_ids), "project": 7})
        return 201, True

    served.on_import = concurrent_run
    result = ls.import_predictions_once(7, [{"task": 4, "result": [], "score": 0.5, "model_version": "v1"}])
    assert result == {"stored": 1, "skipped": 0, "removed": 1}
    [kept] = [p for p in served.predictions if p["task"] == 4]
    assert kept["id"] == min(p["id"] for p in served.predictions if p["task"] == 4)
    assert served.prediction_counts()[(4, "v1")] == 1


def test_batch_progress_counts_each_job_once(redis_url):
    store = RedisBatchStore(redis.Redis.from_url(redis_url))
    store.create("b1", total=4, project_id=3, jobs=2)
    assert store.record("b1", 2, 0, key="job-a")["done"] == 2
    assert store.record("b1", 2, 0, key="job-a")["done"] == 2  # the same job run again
    info = store.record("b1", 1, 1, key="job-b")
    assert (info["done"], info["failed"], info["status"]) == (3, 1, "finished")
    # A batch Redis no longer holds is not recreated without its total.
    assert store.record("gone", 1, 0, key="job-c") == {}
    assert store.get("gone") is None
