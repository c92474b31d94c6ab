"""Start Training with a real Label Studio 1.23.2: the training action through LS's API (what the model card's
"Start Training" menu does), the fine-tuning job in the backend, and the new version on the next predictions; and a
Start Training that cannot run, which Label Studio must record as an error."""

from __future__ import annotations

import sqlite3
import time

import pytest
import requests

from .test_label_studio import CONFIG, LS, upload

pytestmark = pytest.mark.e2e


def test_start_training_from_label_studio_serves_a_new_version(label_studio, start_backend):
    from skimage import data

    ls = LS(label_studio)
    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}
    uploads_config = '<View><Image name="image" value="$image"/></View>'
    helper = ls.call("POST", "/api/projects", json={"title": "training uploads", "label_config": uploads_config})
    urls = {name: upload(ls, helper["id"], name, image) for name, image in photos.items()}
    # four pairs are too few to hold images out for the retrieval check: promote unchecked, as the owner may
    backend = start_backend(SAG_FINETUNE_STEPS="4", SAG_FINETUNE_BATCH_SIZE="4", SAG_REFRESH_PRELABELS="true",
                            SAG_PROMOTE_UNCHECKED="1")

    project = ls.call("POST", "/api/projects", json={"title": "SaG training", "label_config": CONFIG})["id"]
    ls.call("POST", f"/api/projects/{project}/import", json=[
        {"data": {"image": urls["astronaut"], "text": ["the astronaut in a white suit"]}},
        {"data": {"image": urls["chelsea"], "text": ["the cat"]}},
        {"data": {"image": urls["coffee"], "text": ["the cup of coffee"]}},
    ])
    tasks = ls.call("GET", f"/api/tasks?project={project}&page_size=100")
    tasks = sorted(tasks["tasks"] if isinstance(tasks, dict) else tasks, key=lambda t: t["id"])
    ml = ls.call("POST", "/api/ml", json={"url": backend, "project": project, "title": "SaG", "is_interactive": True})
    old = ml["model_version"]
    ls.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": True, "excluded": []}})
    assert {p["model_version"] for p in ls.call("GET", f"/api/predictions?project={project}")} == {old}

    # An annotator types a prompt on the first task (a text-only annotation: a training pair, no mask).
    ls.call("POST", f"/api/tasks/{tasks[0]['id']}/annotations", json={"result": [
        {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": ["the flag"]}}]})

    ls.call("POST", f"/api/ml/{ml['id']}/train", json={})  # LS posts START_TRAINING to our /webhook
    deadline = time.monotonic() + 300
    while (job := requests.get(f"{backend}/training/{project}", timeout=10)).status_code == 404 or \
            job.json()["state"] not in ("finished", "failed"):
        assert time.monotonic() < deadline, f"training did not finish: {job.text[:500]}"
        time.sleep(1)
    info = job.json()
    assert info["state"] == "finished", info
    result = info["result"]
    # Label Studio sees placeholders marked (backend/versions.py): the untrained start and this unchecked promotion.
    parent = old.removesuffix("+untrained")
    assert result["promoted"] and result["parent"] == parent != old and result["pairs"] == 4  # 3 texts + 1 prompt
    new = result["version"]
    shown = f"{new}+unchecked"
    assert requests.get(f"{backend}/health", timeout=10).json()["model_version"] == shown != old

    # Untouched tasks were pre-labelled again with the new version; the annotated one kept its old prediction.
    assert result["prelabels"]["stored"] == 2
    by_version = {}
    for p in ls.call("GET", f"/api/predictions?project={project}"):
        by_version.setdefault(p["model_version"], set()).add(p["task"])
    assert by_version[shown] == {tasks[1]["id"], tasks[2]["id"]}

    # The next interactive prediction comes from the new version.
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["the cat's ear"]}}]}
    answer = ls.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                     json={"task": tasks[1]["id"], "context": context})
    assert answer["data"]["model_version"] == shown
    versions = requests.get(f"{backend}/versions", timeout=10).json()  # the registry's side: plain ids
    assert versions["current"] == new and [v["version"] for v in versions["versions"]] == sorted([parent, new])


def test_start_training_that_cannot_run_is_an_error_in_label_studio(label_studio, label_studio_data, start_backend):
    """A backend without LABEL_STUDIO_URL cannot pull the project, so Start Training must fail where Label Studio
    records it. Label Studio 1.23.2 (ml/api_connector.py, ml/models.py) keeps only requests' one-line HTTPError of a
    failed /webhook call, "<status> Server Error: <reason> for url: ...", as the model's error_message with state
    "ER"; its own /api/ml/<id>/train answers 200 with no body whatever happened, and every read of /api/ml re-runs
    /health and /setup, which overwrites that state; so the test reads what Label Studio stored from its database."""
    ls = LS(label_studio)
    backend = start_backend(LABEL_STUDIO_URL="", LABEL_STUDIO_API_KEY="")
    project = ls.call("POST", "/api/projects", json={"title": "SaG no training", "label_config": CONFIG})["id"]
    ml = ls.call("POST", "/api/ml", json={"url": backend, "project": project, "title": "SaG"})
    assert ml["state"] == "CO"

    ls.call("POST", f"/api/ml/{ml['id']}/train", json={})
    with sqlite3.connect(f"file:{label_studio_data / 'label_studio.sqlite3'}?mode=ro", uri=True) as db:
        state, message = db.execute("SELECT state, error_message FROM ml_mlbackend WHERE id = ?",
                                    (ml["id"],)).fetchone()
    assert state == "ER"
    assert message.startswith("503 Server Error: Training cannot start: the ML backend has no LABEL_STUDIO_URL")
    assert "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in message
    assert requests.get(f"{backend}/training/{project}", timeout=10).status_code == 404  # nothing was queued
