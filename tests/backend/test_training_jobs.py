"""Fine-tuning from Label Studio with the real Redis server and real ``sag-worker`` processes (trainer and inference).

Label Studio's API is played by the real local HTTP server of ``conftest.http_server`` holding a project's fixture
data (project, JSON export, predictions) and its images; Redis and RQ are real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import redis
import torch
from PIL import Image
from rq import Queue, Worker

from backend.app import create_app
from backend.keys import TRAINING_QUEUE
from backend.settings import Settings
from sag import SaG
from sag.pipeline import predict
from training.registry import Registry, RegistryError

from .conftest import LABEL_CONFIG, png_bytes, wait_for

PROJECT = 7
KEY = "k-train-0123456789"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 40),
           "purple": (150, 50, 190), "orange": (245, 135, 25)}



def scenes(served, base: str) -> list[tuple[str, str, np.ndarray]]:
    """Six small images, one coloured square each, served under /img/; (url, true text, pixels)."""
    rng = np.random.default_rng(0)
    out = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        image = rng.integers(0, 80, (64, 64, 3)).astype(np.uint8)
        y, x = rng.integers(4, 36, 2)
        image[y:y + 24, x:x + 24] = rgb
        served.files[f"/img/{i}.png"] = (png_bytes(image), "image/png")
        out.append((f"{base}/img/{i}.png", f"the {name} square", image))
    return out


def serve_project(served, tasks: list[dict], predictions: list[dict] | None = None) -> None:
    """The Label Studio API routes the trainer calls, answered with fixture data."""
    def put(path: str, data: object) -> None:
        served.files[path] = (json.dumps(data).encode(), "application/json")

    put(f"/api/projects/{PROJECT}", {"id": PROJECT, "title": "fixture", "label_config": LABEL_CONFIG})
    put(f"/api/projects/{PROJECT}/export?exportType=JSON&download_all_tasks=true", tasks)
    put(f"/api/predictions?project={PROJECT}", predictions or [])


def brush_annotation(mask: np.ndarray, text: str) -> dict:
    from backend.labelstudio.results import brush_region

    region = brush_region(mask, "Object", "mask", "image", 1.0)
    return {"id": 500, "was_cancelled": False, "result": [
        region, {"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": [text]}}]}


@pytest.fixture
def model_dir(registry_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session registry (one promoted tiny version)."""
    target = tmp_path / "models"
    shutil.copytree(registry_dir, target)
    return target


@pytest.fixture
def start_trainer(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start real ``sag-worker --queues training`` processes; their output goes to tmp_path/trainer-N.log."""
    procs: list[subprocess.Popen] = []

    def start(model_dir: Path, base: str, **env: str) -> subprocess.Popen:
        environment = {**os.environ, "REDIS_URL": redis_url, "SAG_MODEL_DIR": str(model_dir), "SAG_DEVICE": "cpu",
                       "SAG_WORKER_HEARTBEAT": "1", "HF_HUB_OFFLINE": "1", "LABEL_STUDIO_URL": base,
                       "LABEL_STUDIO_API_KEY": KEY, "LOG_LEVEL": "INFO", "SAG_FINETUNE_STEPS": "4",
                       "SAG_FINETUNE_BATCH_SIZE": "6", "SAG_FINETUNE_LR": "0.001",
                       # six tasks are too few to hold images out for the retrieval check (test_finetune.py)
                       "SAG_PROMOTE_UNCHECKED": "1", **env}
        log = open(tmp_path / f"trainer-{len(procs)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "backend.worker", "--queues", "training", "--name",
                                 f"trainer{len(procs)}-{os.getpid()}"], env=environment, stdout=log,
                                stderr=subprocess.STDOUT)
        procs.append(proc)
        queue = Queue(TRAINING_QUEUE, connection=redis.Redis.from_url(redis_url))
        wait_for(lambda: proc.poll() is not None or Worker.count(queue=queue) >= 1, 120, "the trainer to register")
        assert proc.poll() is None, (tmp_path / f"trainer-{len(procs) - 1}.log").read_text()[-3000:]
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # a trainer mid-job would finish its job on SIGTERM
        proc.wait(timeout=30)


def app_client(redis_url: str | None, model_dir: Path, base: str, **overrides):
    settings = Settings.from_env({}, redis_url=redis_url, model_dir=str(model_dir), device="cpu",
                                 label_studio_url=base, label_studio_api_key=KEY, **overrides)
    return create_app(settings).test_client()


def start_training(client) -> dict:
    response = client.post("/webhook", json={"action": "START_TRAINING",
                                             "project": {"id": PROJECT, "title": "fixture"}})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["result"]


def wait_job(client, job_id: str, timeout: float = 240) -> dict:
    def done():
        info = client.get(f"/jobs/{job_id}").get_json()
        return info if info.get("state") in ("finished", "failed") else None

    info = wait_for(done, timeout, f"training job {job_id}")
    assert info["state"] == "finished", info
    return info


def predict_version(client, url: str, text: str) -> str:
    answer = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": url, "text": text}}],
                                          "project": f"{PROJECT}.1700000000", "label_config": LABEL_CONFIG})
    [result] = answer.get_json()["results"]
    assert "result" in result, result
    return result["model_version"]


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_start_training_serves_a_new_version_and_a_second_click_joins_the_running_job(
        redis_url, model_dir, http_server, start_workers, start_trainer):
    base, served = http_server
    images = scenes(served, base)
    tasks = [{"id": i, "data": {"image": url, "text": text}, "annotations": []}
             for i, (url, text, _) in enumerate(images[:5])]
    tasks.append({"id": 5, "data": {"image": images[5][0]}, "annotations": [  # a typed prompt only
        {"id": 9, "result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                              "value": {"text": [images[5][1]]}}]}]})
    serve_project(served, tasks)
    start_workers(1, model_dir=model_dir, LABEL_STUDIO_URL=base, LABEL_STUDIO_API_KEY=KEY)
    start_trainer(model_dir, base)
    client = app_client(redis_url, model_dir, base)
    parent = client.get("/health").get_json()["model_version"]
    assert predict_version(client, images[0][0], images[0][1]) == parent

    first, second = start_training(client), start_training(client)
    assert first["status"] == "queued" and first["model_version"] == parent
    assert second["status"] == "already_training" and second["job_id"] == first["job_id"]

    info = wait_job(client, first["job_id"])
    result = info["result"]
    assert result["promoted"] and "without a check" in result["reason"]
    assert (result["pairs"], result["steps"], info["step"], info["total"]) == (6, 4, 4, 4)
    assert isinstance(info["loss"], float)
    new = result["version"]
    versions = client.get("/versions").get_json()
    assert versions["current"] == new != parent
    [listed] = [v for v in versions["versions"] if v["version"] == new]
    # Label Studio sees the placeholders marked (backend/versions.py); the registry keeps plain ids.
    assert parent == f"{listed['parent']}+untrained" and listed["trained_on"]["pairs"] == 6
    assert listed["label_studio"] == {"project": PROJECT, "trigger": "START_TRAINING", "tasks": 6}
    # Promoted without a check (SAG_PROMOTE_UNCHECKED): still a placeholder to Label Studio.
    assert client.post("/setup", json={"schema": LABEL_CONFIG}).get_json()["model_version"] == f"{new}+unchecked"
    assert predict_version(client, images[1][0], images[1][1]) == f"{new}+unchecked"
    conn = redis.Redis.from_url(redis_url)
    assert Queue(TRAINING_QUEUE, connection=conn).finished_job_registry.count == 1  # two clicks, one job

    # Roll back through the API: the inference worker serves the old version again.
    # Rollback is the registry's side: it takes and answers the plain id, while Label Studio sees the marked one.
    plain = listed["parent"]
    assert client.post("/versions/rollback", json={"version": plain}).get_json() == {"current": plain}
    assert predict_version(client, images[2][0], images[2][1]) == parent == f"{plain}+untrained"
    assert client.post("/versions/rollback", json={"version": "nope"}).status_code == 404


def test_a_candidate_trained_on_shuffled_texts_is_not_promoted(redis_url, model_dir, http_server, start_trainer):
    """Three tasks carry masks annotators accepted from the serving model's pre-labels (it scores mIoU 1 on them);
    the other tasks pair each image with another image's text."""
    base, served = http_server
    images = scenes(served, base)
    registry = Registry(model_dir, redis.Redis.from_url(redis_url))
    registry.promote(Registry(model_dir).current())  # the pointer in this test's Redis
    parent = registry.current()
    serving = SaG.from_pretrained(registry.get(parent).path)
    tasks = []
    for i, (url, text, pixels) in enumerate(images[:3]):
        with torch.no_grad():
            # refined as the backend serves them: fine-tuning validation scores the served masks
            [seg] = predict(serving, [Image.fromarray(pixels)], [text], refine=Settings.mask_refine,
                            spatial=Settings.spatial_words)
        tasks.append({"id": 100 + i, "data": {"image": url, "text": text},
                      "annotations": [brush_annotation(seg.mask.cpu().numpy(), text)]})
    for i, (url, _, _) in enumerate(images):
        tasks.append({"id": i, "data": {"image": url, "text": images[(i + 1) % len(images)][1]}, "annotations": []})
    serve_project(served, tasks)
    start_trainer(model_dir, base, SAG_PROMOTE_TOLERANCE="0")
    client = app_client(redis_url, model_dir, base)

    result = wait_job(client, start_training(client)["job_id"])["result"]
    assert not result["promoted"] and "worse" in result["reason"], result
    assert result["validation_masks"] == 3
    assert result["metrics"]["parent_val_mIoU"] == pytest.approx(1.0, abs=0.02)
    assert result["metrics"]["val_mIoU"] < result["metrics"]["parent_val_mIoU"]
    assert registry.current() == parent
    listed = {v["version"]: v for v in client.get("/versions").get_json()["versions"]}
    assert listed[result["version"]]["promotion"]["promoted"] is False  # kept for inspection, not served


def test_killing_the_trainer_mid_job_leaves_the_serving_version_intact_and_the_job_resumes(
        redis_url, model_dir, http_server, start_trainer, tmp_path):
    base, served = http_server
    images = scenes(served, base)
    serve_project(served, [{"id": i, "data": {"image": url, "text": text}} for i, (url, text, _) in enumerate(images)])
    registry = Registry(model_dir, redis.Redis.from_url(redis_url))
    registry.promote(Registry(model_dir).current())
    parent = registry.current()
    before = tree_digest(registry.get(parent).path)
    # Long enough that the kill lands mid-run on an idle machine too: steps of this model take a few ms and the job
    # reports its step every 0.5 s (META_EVERY_S), so with 12 steps the first report after 0 was the last. A
    # checkpoint of the run every 50 steps (FinetuneConfig.checkpoint_every), so one exists once step 60 is seen.
    steps = {"SAG_FINETUNE_STEPS": "240"}
    victim = start_trainer(model_dir, base, **steps)
    client = app_client(redis_url, model_dir, base)
    job_id = start_training(client)["job_id"]

    wait_for(lambda: (client.get(f"/jobs/{job_id}").get_json().get("step") or 0) >= 60, 120, "training progress")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    assert registry.current() == parent
    assert tree_digest(registry.get(parent).path) == before
    assert [v.id for v in registry.versions()] == [parent]
    assert start_training(client)["status"] == "already_training"  # the killed job still owns the project

    # What a crash while writing would leave: a torn directory under a version-like name and a hidden staging one.
    torn = model_dir / "20991231T235959Z-deadbeef"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 100)
    (torn / "config.json").write_text("{")
    (model_dir / ".incoming-torn").mkdir()
    (model_dir / ".incoming-torn" / "model.safetensors").write_bytes(b"\x00")

    start_trainer(model_dir, base, **steps)
    info = wait_job(client, job_id)
    result = info["result"]
    assert result["promoted"] and result["steps"] == 240 and result["parent"] == parent
    trainer_log = (tmp_path / "trainer-1.log").read_text()
    assert "resuming the interrupted run" in trainer_log
    # the phases a user follows in the trainer's log (docs/fine-tuning.md, "Progress")
    for phase in ("fetching images 6/6", "caching image features", "training 240/240", "promoted"):
        assert f"training project {PROJECT}: {phase}" in trainer_log, phase
    assert registry.current() == result["version"]
    assert [v.id for v in registry.versions()] == sorted([parent, result["version"]])
    with pytest.raises(RegistryError):
        registry.promote(torn.name)
    assert tree_digest(registry.get(parent).path) == before
    loaded = SaG.from_pretrained(registry.get(registry.current()).path)
    assert loaded.version == result["version"]


def test_periodic_trigger_fires_after_n_new_annotations(redis_url, model_dir, http_server):
    base, _ = http_server
    client = app_client(redis_url, model_dir, base, train_every_annotations=3, train_interval=3600)
    event = {"action": "ANNOTATION_CREATED", "project": {"id": PROJECT}, "annotation": {"id": 1}, "task": {"id": 1}}
    answers = [client.post("/webhook", json=event).get_json()["result"] for _ in range(3)]
    assert [a["status"] for a in answers] == ["acknowledged", "acknowledged", "queued"]
    assert answers[1]["new_annotations"] == 2 and answers[2]["trigger"] == "3 new annotations"
    job_id = answers[2]["job_id"]
    # The counter starts again; a click on Start Training joins the queued job.
    assert client.post("/webhook", json=event).get_json()["result"]["new_annotations"] == 1
    assert start_training(client)["job_id"] == job_id
    conn = redis.Redis.from_url(redis_url)
    assert Queue(TRAINING_QUEUE, connection=conn).count == 1
    assert client.get(f"/training/{PROJECT}").get_json()["job_id"] == job_id

    # The interval trigger: the last run is an hour old, so the next annotation queues training (once the
    # queued job is gone).
    Queue(TRAINING_QUEUE, connection=conn).empty()
    conn.set(f"sag:training:last:{PROJECT}", time.time() - 3601)
    answer = client.post("/webhook", json={**event, "action": "ANNOTATION_UPDATED"}).get_json()["result"]
    assert answer["status"] == "queued" and answer["trigger"].endswith("after 3600 s")
    assert answer["job_id"] != job_id


def test_embedded_mode_trains_in_the_backend_and_refreshes_untouched_prelabels(model_dir, http_server):
    base, served = http_server
    images = scenes(served, base)
    old = Registry(model_dir).current()
    tasks = [{"id": i, "data": {"image": url, "text": text}, "annotations": [], "drafts": [], "predictions": [i]}
             for i, (url, text, _) in enumerate(images)]
    tasks[2]["annotations"] = [{"id": 3, "result": []}]  # touched by an annotator: its prediction stays
    tasks[3]["predictions"] = []  # never pre-labelled: left to Label Studio
    # As Label Studio stored them from the untrained placeholder's answers (backend/versions.py).
    predictions = [{"id": i, "task": i, "model_version": f"{old}+untrained", "result": []} for i in (0, 1, 2, 4, 5)]
    serve_project(served, tasks, predictions)
    client = app_client(None, model_dir, base, finetune_steps=3, finetune_batch_size=6, finetune_lr=1e-3,
                        promote_unchecked=True, refresh_prelabels=True, allowed_hosts=("127.0.0.1",))

    first, second = start_training(client), start_training(client)
    assert first["status"] == "queued" and second["status"] == "already_training"
    assert second["job_id"] == first["job_id"]
    info = wait_job(client, first["job_id"])
    new = info["result"]["version"]
    assert info["result"]["promoted"] and (model_dir / "CURRENT").read_text().strip() == new
    assert client.get("/health").get_json()["model_version"] == f"{new}+unchecked"  # promote_unchecked=True
    assert predict_version(client, images[0][0], images[0][1]) == f"{new}+unchecked"
    assert info["result"]["prelabels"] == {"tasks": 4, "stored": 4, "failed": 0}
    [(path, stored)] = [(p, b) for p, b in served.posted if "import/predictions" in p]
    assert path == f"/api/projects/{PROJECT}/import/predictions"
    assert sorted(p["task"] for p in stored) == [0, 1, 4, 5]
    assert {p["model_version"] for p in stored} == {f"{new}+unchecked"}
    assert {p["score"] for p in stored} == {0.0}
    assert start_training(client)["status"] == "queued"  # the finished job no longer holds the project
    wait_job(client, client.get(f"/training/{PROJECT}").get_json()["job_id"])


def test_training_settings_name_the_variable_that_is_wrong():
    from backend.exceptions import SettingsError

    s = Settings.from_env({"SAG_FINETUNE_STEPS": "50", "SAG_PROMOTE_TOLERANCE": "0", "SAG_TRAIN_INTERVAL": "600",
                           "SAG_TRAIN_EVERY_N_ANNOTATIONS": "10", "SAG_REFRESH_PRELABELS": "yes"})
    assert (s.finetune_steps, s.promote_tolerance, s.train_interval, s.train_every_annotations,
            s.refresh_prelabels) == (50, 0.0, 600, 10, True)
    for name, value in (("SAG_PROMOTE_TOLERANCE", "1.5"), ("SAG_FINETUNE_BATCH_SIZE", "1"),
                        ("SAG_FINETUNE_LR", "0"), ("SAG_REFRESH_PRELABELS", "maybe"), ("SAG_FINETUNE_STEPS", "x")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_the_button_uses_the_fast_recipe_and_validates_the_served_masks_as_configured():
    from dataclasses import replace

    from backend.finetune.job import finetune_config
    from backend.runtime import Runtime
    from training.finetune import FINETUNE_RECIPES

    default = finetune_config(Runtime(Settings.from_env({})))
    fast = FINETUNE_RECIPES["fast"]
    assert default == replace(fast, tolerance=default.tolerance, precision=default.precision,
                              mask_refine=default.mask_refine, spatial_words=default.spatial_words)  # measured
    assert default.trainable == ("entity", "word_embeddings") and default.entity_grad_iterations == 1
    assert not default.promote_unchecked and default.heldout_tolerance == 0.0
    assert default.mask_refine == Settings.mask_refine and default.spatial_words is Settings.spatial_words is True
    chosen = finetune_config(Runtime(Settings.from_env({"SAG_FINETUNE_FREEZE_IMAGE_SIDE": "false",
                                                         "SAG_MASK_REFINE": "none", "SAG_SPATIAL_WORDS": "off",
                                                         "SAG_FINETUNE_LR": "0.002"})))
    assert chosen.freeze_image_backbone and not chosen.freeze_image_side and chosen.lr == 0.002
    assert chosen.mask_refine == "none" and chosen.spatial_words is False
    paper = finetune_config(Runtime(Settings.from_env({"SAG_FINETUNE_RECIPE": "paper"})))
    assert not (paper.freeze_image_backbone or paper.freeze_image_side) and paper.lr == FINETUNE_RECIPES["paper"].lr
    from backend.exceptions import SettingsError

    with pytest.raises(SettingsError, match="SAG_FINETUNE_RECIPE"):
        Settings.from_env({"SAG_FINETUNE_RECIPE": "fastest"})
    with pytest.raises(SettingsError, match="SAG_FINETUNE_FREEZE_IMAGE_SIDE"):
        Settings.from_env({"SAG_FINETUNE_RECIPE": "text", "SAG_FINETUNE_FREEZE_IMAGE_BACKBONE": "false"})
    with pytest.raises(SettingsError, match="SAG_FINETUNE_FREEZE_IMAGE_SIDE=true keeps entity discovery fixed"):
        Settings.from_env({"SAG_FINETUNE_FREEZE_IMAGE_SIDE": "true"})  # the default recipe trains it
    assert Settings.from_env({"SAG_FINETUNE_RECIPE": "text"}).finetune_freeze_image_side
