"""Redis mode with real ``sag-worker`` processes on the real Redis server: one model load for many jobs, the entity
cache across requests, bulk write-back, version switches without restart, and a SIGKILLed worker's job re-run."""

from __future__ import annotations

import os
import shutil
import signal

import redis
import torch
from rq import Queue
from rq.job import Job, JobStatus

from backend.app import create_app
from backend.dispatch import RQDispatcher
from backend.jobs import PredictJob
from backend.keys import INFERENCE_QUEUE
from backend.predictor import OutputSpec, TaskInput
from backend.settings import Settings
from sag import SaG, tiny_config
from training.registry import Registry

from .conftest import LABEL_CONFIG, png_bytes, wait_for


def redis_client(redis_url, model_dir, **overrides):
    settings = Settings.from_env({}, redis_url=redis_url, model_dir=str(model_dir), device="cpu", **overrides)
    return create_app(settings).test_client()


def predict(client, tasks, project="4.1700000000"):
    response = client.post("/predict", json={"tasks": tasks, "project": project, "label_config": LABEL_CONFIG})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()



def test_one_worker_serves_many_jobs_with_one_model_load(redis_url, registry_dir, start_workers, http_server,
                                                          photos):
    base, served = http_server
    for name in photos:
        served.files[f"/{name}.png"] = (png_bytes(photos[name]), "image/png")
    [worker] = start_workers(1, LABEL_STUDIO_URL=base, LABEL_STUDIO_API_KEY="k-123456")
    client = redis_client(redis_url, registry_dir, sync_max_tasks=3, batch_size=2, label_studio_url=base,
                          label_studio_api_key="k-123456")
    assert client.get("/health").get_json()["workers"] == 1

    for name in photos:  # three requests, three images
        answer = predict(client, [{"id": 1, "data": {"image": f"{base}/{name}.png", "text": f"the {name}"}}])
        assert "result" in answer["results"][0], answer
    # A second text on a cached image: only text encoding and fusion.
    again = predict(client, [{"id": 2, "data": {"image": f"{base}/chelsea.png", "text": "the cat's left ear"}}])
    assert again["results"][0]["result"][0]["value"]["brushlabels"] == ["Cat"]
    [stats] = client.get("/metrics").get_json()["workers"]
    assert stats["pid"] == worker.pid
    assert stats["model_loads"] == 1
    assert stats["images_encoded"] == 3
    assert stats["entity_cache"]["hits"] >= 1

    # Bulk: returns at once; the worker writes predictions back through the (stub) Label Studio API.
    tasks = [{"id": 10 + i, "data": {"image": f"{base}/coffee.png", "text": f"cup {i}"}} for i in range(5)]
    job = predict(client, tasks)["job"]
    status = wait_for(lambda: (s := client.get(job["status_url"]).get_json())["status"] == "finished" and s,
                      60, "the bulk batch")
    assert (status["done"], status["failed"]) == (5, 0)
    stored = sorted(p["task"] for path, batch in served.posted if "import/predictions" in path for p in batch)
    assert stored == [10, 11, 12, 13, 14]
    [stats] = client.get("/metrics").get_json()["workers"]
    assert stats["model_loads"] == 1 and stats["images_encoded"] == 3  # coffee was cached already


def test_workers_switch_to_a_promoted_version_without_restart(redis_url, registry_dir, tmp_path, start_workers,
                                                              http_server, photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    model_dir = tmp_path / "models"
    shutil.copytree(registry_dir, model_dir)
    start_workers(1, model_dir=model_dir)
    client = redis_client(redis_url, model_dir)
    task = {"id": 1, "data": {"image": f"{base}/cat.png", "text": "the cat"}}
    old = predict(client, [task])["results"][0]["model_version"]
    registry = Registry(model_dir, redis.Redis.from_url(redis_url))
    assert old == f"{registry.current()}+untrained"  # the session registry's placeholder
    torch.manual_seed(99)
    new = registry.add(SaG(tiny_config())).id
    registry.promote(new)
    assert client.post("/setup", json={"schema": LABEL_CONFIG}).get_json()["model_version"] == new
    assert predict(client, [task])["results"][0]["model_version"] == new
    [stats] = client.get("/metrics").get_json()["workers"]
    assert (stats["model_version"], stats["model_loads"]) == (new, 2)
    assert old != new


def test_a_sigkilled_workers_job_runs_again_on_another_worker(redis_url, registry_dir, start_workers, http_server,
                                                              photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    served.slow["/cat.png"] = 2.0  # slow storage keeps the job busy long enough to kill its worker mid-job
    procs = start_workers(2)
    settings = Settings.from_env({}, redis_url=redis_url, model_dir=str(registry_dir))
    conn = redis.Redis.from_url(redis_url)
    dispatcher = RQDispatcher(conn, settings)
    tasks = tuple(TaskInput(i, f"{base}/cat.png", ("the cat",), ("Cat",)) for i in (1, 2))
    [job] = dispatcher.submit([PredictJob(tasks, OutputSpec("image", "mask"))], urgent=True)

    wait_for(lambda: any(path == "/cat.png" for _, path, _, _ in served.requests), 60, "the job to fetch its image")
    job.refresh()
    assert job.get_status() == JobStatus.STARTED
    victim_name = job.worker_name
    victim = next(p for p in procs if f"w{procs.index(p)}-{os.getpid()}" == victim_name)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)

    # The waiting side blocks on the job's result stream across the retry and gets the second run's answers.
    [outcome] = dispatcher.wait([job], timeout=90)
    assert outcome.error is None, outcome.error
    done = Job.fetch(job.id, connection=conn)
    assert done.get_status() == JobStatus.FINISHED
    assert done.worker_name != victim_name
    assert outcome.answers == done.return_value()
    assert [("result" in a, a.get("model_version")) for a in outcome.answers] == [
        (True, f"{Registry(registry_dir).current()}+untrained")] * 2
    assert done.retries_left == 1  # one retry was spent on the killed run
    assert Queue(INFERENCE_QUEUE, connection=conn).failed_job_registry.count == 0


def test_a_job_that_fails_for_good_is_reported_at_once_with_its_reason(redis_url, registry_dir, start_workers):
    start_workers(1, LABEL_STUDIO_URL="")  # no Label Studio: a write-back job raises on every attempt
    settings = Settings.from_env({}, redis_url=redis_url, model_dir=str(registry_dir))
    conn = redis.Redis.from_url(redis_url)
    dispatcher = RQDispatcher(conn, settings)
    bad = PredictJob((TaskInput(7, "data:,", ("x",), ("Cat",)),), OutputSpec("image", "mask"), project_id=3,
                     write_back=True)
    [job] = dispatcher.submit([bad], urgent=False)

    [outcome] = dispatcher.wait([job], timeout=120)
    # The failure result ends the wait (not the timeout), with the exception's own words.
    assert outcome.answers is None
    assert outcome.error.startswith("the prediction job failed: RuntimeError: bulk job cannot write back")
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and job.retries_left == 0  # both retries were spent first


def test_waiting_without_workers_times_out_and_cancels_the_queued_job(redis_url, registry_dir):
    settings = Settings.from_env({}, redis_url=redis_url, model_dir=str(registry_dir))
    dispatcher = RQDispatcher(redis.Redis.from_url(redis_url), settings)
    task = TaskInput(1, "http://127.0.0.1:9/cat.png", ("the cat",), ("Cat",))
    [job] = dispatcher.submit([PredictJob((task,), OutputSpec("image", "mask"))], urgent=True)

    [outcome] = dispatcher.wait([job], timeout=0.5)
    assert outcome.answers is None and outcome.error.startswith("no result within")
    assert job.get_status(refresh=True) == JobStatus.CANCELED
    assert Queue(INFERENCE_QUEUE, connection=dispatcher.redis).count == 0
