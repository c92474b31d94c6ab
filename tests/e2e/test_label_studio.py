"""End to end with a real Label Studio 1.23.2: project with our config, real images and texts, connect the backend,
retrieve predictions, check what Label Studio stored, interactive prompt, screenshots of the labelling UI, and the
demo project of ``scripts/label-studio.sh --demo``.

examples/label-config.xml shows ``data.text`` with a Repeater (one line per text), so Label Studio wants a list there:
single texts are written ``["the cat"]``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.labelstudio.results import rle_to_mask

from .conftest import EMAIL, LS_VENV, PASSWORD, ROOT, TOKEN

pytestmark = pytest.mark.e2e

CONFIG = (ROOT / "examples" / "label-config.xml").read_text()
ARTIFACTS = Path(os.environ.get("SAG_E2E_ARTIFACTS", ROOT / "runs" / "e2e"))


class LS:
    """The few Label Studio API calls the test needs, authenticated with the legacy token."""

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {TOKEN}"

    def call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json() if response.content else None


def upload(ls: LS, project: int, name: str, image: np.ndarray) -> str:
    """Upload a photo; Label Studio answers with its /data/upload/... URL (needs the API key to read back)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    ls.call("POST", f"/api/projects/{project}/import", files={"file": (f"{name}.png", buf.getvalue(), "image/png")})
    tasks = ls.call("GET", f"/api/tasks?project={project}&page_size=100")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    return next(t["data"]["image"] for t in tasks if t["data"]["image"].endswith(f"{name}.png"))


@pytest.fixture(scope="module")
def uploaded(label_studio):
    """Real photos uploaded to Label Studio, by name: (pixels, /data/upload/... URL)."""
    from skimage import data

    ls = LS(label_studio)
    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}
    helper_config = '<View><Image name="image" value="$image"/></View>'
    helper = ls.call("POST", "/api/projects", json={"title": "uploads", "label_config": helper_config})
    urls = {name: upload(ls, helper["id"], name, image) for name, image in photos.items()}
    assert all(url.startswith("/data/upload/") for url in urls.values())
    return photos, urls


def project_tasks(ls: LS, project: int) -> list[dict]:
    tasks = ls.call("GET", f"/api/tasks?project={project}&page_size=100")
    return sorted(tasks["tasks"] if isinstance(tasks, dict) else tasks, key=lambda t: t["id"])


def test_label_studio_stores_our_predictions(label_studio, start_backend, uploaded):
    ls = LS(label_studio)
    photos, urls = uploaded
    backend = start_backend()

    project = ls.call("POST", "/api/projects", json={"title": "SaG e2e", "label_config": CONFIG})["id"]
    ls.call("POST", f"/api/projects/{project}/import", json=[
        {"data": {"image": urls["astronaut"], "text": ["the astronaut in a white suit", "the flag"]}},
        {"data": {"image": urls["chelsea"], "text": ["the cat"]}},
        {"data": {"image": "http://169.254.169.254/latest/meta-data/", "text": ["the cat"]}},  # refused: none
    ])
    tasks = project_tasks(ls, project)

    ml = ls.call("POST", "/api/ml", json={"url": backend, "project": project, "title": "SaG", "is_interactive": True})
    version = requests.get(backend + "/health", timeout=10).json()["model_version"]
    assert ml["state"] == "CO" and ml["model_version"] == version

    ls.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": True, "excluded": []}})
    predictions = ls.call("GET", f"/api/predictions?project={project}")
    by_task = {p["task"]: p for p in predictions}
    assert set(by_task) == {tasks[0]["id"], tasks[1]["id"]}  # the refused URL got none, the others one each
    for task, name, regions in ((tasks[0], "astronaut", 2), (tasks[1], "chelsea", 1)):
        stored = by_task[task["id"]]
        assert stored["model_version"] == version
        assert len(stored["result"]) == regions
        height, width = photos[name].shape[:2]
        for region in stored["result"]:
            assert region["type"] == "brushlabels"
            assert (region["original_height"], region["original_width"]) == (height, width)
            mask = rle_to_mask(region["value"]["rle"], height, width)
            assert 0 < mask.sum() < mask.size
    assert by_task[tasks[0]["id"]]["result"][0]["value"]["brushlabels"] == ["Person"]  # "astronaut" -> Person
    assert by_task[tasks[0]["id"]]["result"][1]["value"]["brushlabels"] == ["Object"]  # "flag": by meaning
    assert by_task[tasks[1]["id"]]["result"][0]["value"]["brushlabels"] == ["Animal"]  # "cat" -> Animal

    # Interactive: the annotator types a prompt; Label Studio posts it in the context.
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["the woman's face"]}}]}
    answer = ls.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                     json={"task": tasks[0]["id"], "context": context})
    assert answer["data"]["model_version"] == version
    assert answer["data"]["result"][0]["value"]["brushlabels"] == ["Person"]


    ls.call("PATCH", f"/api/projects/{project}", json={"model_version": version, "show_collab_predictions": True})
    screenshot(label_studio, f"/projects/{project}/data?task={tasks[1]['id']}", "labeling-ui.png")


def test_bulk_prelabelling_through_redis_workers_is_written_back(label_studio, start_backend, uploaded):
    from tests.backend.conftest import claim_redis_db

    ls = LS(label_studio)
    photos, urls = uploaded
    with claim_redis_db() as redis_url:
        backend = start_backend(redis_url, SAG_SYNC_MAX_TASKS="2", SAG_BATCH_SIZE="2")
        project = ls.call("POST", "/api/projects", json={"title": "SaG bulk", "label_config": CONFIG})["id"]
        ls.call("POST", f"/api/projects/{project}/import", json=[
            {"data": {"image": urls[name], "text": [f"the {word}"]}}
            for name, word in (("astronaut", "woman"), ("chelsea", "cat"), ("coffee", "cup"), ("chelsea", "ear"),
                               ("coffee", "saucer"))
        ])
        tasks = project_tasks(ls, project)
        ml = ls.call("POST", "/api/ml", json={"url": backend, "project": project, "title": "SaG"})
        version = ml["model_version"]
        # More tasks than SAG_SYNC_MAX_TASKS: the backend answers at once and the worker writes back via the API.
        ls.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
                json={"selectedItems": {"all": True, "excluded": []}})
        deadline = time.monotonic() + 120
        while len(stored := ls.call("GET", f"/api/predictions?project={project}")) < len(tasks):
            assert time.monotonic() < deadline, f"only {len(stored)} of {len(tasks)} predictions written back"
            time.sleep(1)
        assert sorted(p["task"] for p in stored) == [t["id"] for t in tasks]  # one each, no duplicates
        assert {p["model_version"] for p in stored} == {version}
        name_of = {t["id"]: next(n for n, u in urls.items() if u == t["data"]["image"]) for t in tasks}
        for prediction in stored:
            height, width = photos[name_of[prediction["task"]]].shape[:2]
            region = prediction["result"][0]
            assert rle_to_mask(region["value"]["rle"], height, width).any()
        workers = requests.get(f"{backend}/metrics", timeout=10).json()["workers"]
        assert [(w["model_loads"], w["images_encoded"]) for w in workers] == [(1, 3)]  # 5 tasks, 3 images


def test_demo_project_of_the_label_studio_script(label_studio, label_studio_data, start_backend):
    """``scripts/label-studio.sh --demo`` runs scripts/label_studio_demo.py once Label Studio is up: photos in the
    local-files root, a project with a local-files storage, tasks, the backend connected, predictions retrieved."""
    files = label_studio_data / "files"  # the script's LOCAL_FILES_DOCUMENT_ROOT
    # As scripts/run-backend.sh does: the backend reads /data/local-files/ images from disk, with no URL or token.
    backend = start_backend(LOCAL_FILES_DOCUMENT_ROOT=str(files), LABEL_STUDIO_URL="", LABEL_STUDIO_API_KEY="")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "label_studio_demo.py"), "--url", label_studio,
                          "--token", TOKEN, "--backend", backend, "--document-root", str(files)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["tasks"] == summary["predictions"] == 4

    ls = LS(label_studio)
    tasks = project_tasks(ls, summary["project"])
    by_task = {p["task"]: p for p in ls.call("GET", f"/api/predictions?project={summary['project']}")}
    labels = {tuple(t["data"]["text"]): [r["value"]["brushlabels"][0] for r in by_task[t["id"]]["result"]]
              for t in tasks}
    assert labels[("the astronaut in a white suit", "the flag on the left")] == ["Person", "Object"]
    assert labels[("the cat",)] == ["Animal"] and labels[("the cup of coffee",)] == ["Object"]
    # Label Studio itself serves the photos to the browser (same origin: no CORS needed).
    image = ls.session.get(label_studio + tasks[0]["data"]["image"], timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (512, 512)  # skimage's astronaut

    # A second run finds the project instead of making another.
    again = subprocess.run(run.args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1]) == summary
    screenshot(label_studio, summary["task_url"].removeprefix(label_studio), "demo-task.png")


def screenshot(label_studio: str, page: str, name: str) -> None:
    """Open ``page`` (a task in the labelling UI) with headless Chromium and save a screenshot to ``name``."""
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium is None:
        pytest.skip("no Chromium for the screenshot (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / name
    subprocess.run([str(LS_VENV / "bin" / "python"), str(Path(__file__).with_name("screenshot.py")), chromium,
                    label_studio, EMAIL, PASSWORD, page, str(out)], check=True, timeout=180)
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 300 and image.std() > 10  # a rendered page, not a blank one
