"""backend/app.py: the HTTP protocol in embedded mode (no Redis): real photos through /predict, errors per task,
bulk write-back, version switches, basic auth and secrets."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.app import create_app
from backend.results import rle_to_mask
from backend.settings import Settings
from sag import SaG, tiny_config
from training.registry import Registry

from .conftest import LABEL_CONFIG, png_bytes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_dir(registry_dir, tmp_path):
    """A private copy of the session registry, free to promote into."""
    target = tmp_path / "models"
    shutil.copytree(registry_dir, target)
    return target


def make_client(model_dir, **overrides):
    settings = Settings.from_env({}, model_dir=str(model_dir), device="cpu", allowed_hosts=("127.0.0.1",),
                                 **overrides)
    return create_app(settings).test_client()


def predict(client, tasks, project="7.1700000000", context=None, **kw):
    payload = {"tasks": tasks, "project": project, "label_config": LABEL_CONFIG,
               "params": {"login": None, "password": None, "context": context}}
    response = client.post("/predict", json=payload, **kw)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_predict_returns_brush_rle_equal_to_the_model_mask(model_dir, http_server, photos):
    base, served = http_server
    for name in ("astronaut", "coffee"):
        served.files[f"/{name}.png"] = (png_bytes(photos[name]), "image/png")
    client = make_client(model_dir)
    version = Registry(model_dir).current()
    tasks = [{"id": 1, "data": {"image": f"{base}/astronaut.png", "text": "the astronaut in a white suit"}},
             {"id": 2, "data": {"image": f"{base}/coffee.png", "text": ["the cup of coffee", "the spoon"]}}]
    results = predict(client, tasks)["results"]
    assert len(results) == 2

    reference = SaG.from_pretrained(model_dir / version)
    expected = reference.predict(
        [photos["astronaut"], photos["coffee"], photos["coffee"]],
        ["the astronaut in a white suit", "the cup of coffee", "the spoon"],
    )
    regions = results[0]["result"] + results[1]["result"]
    assert [r["value"]["brushlabels"] for r in regions] == [["Person"], ["Person"], ["Person"]]
    for region, seg, photo in zip(regions, expected, ["astronaut", "coffee", "coffee"]):
        height, width = photos[photo].shape[:2]
        assert (region["original_height"], region["original_width"]) == (height, width)
        decoded = rle_to_mask(region["value"]["rle"], height, width)
        np.testing.assert_array_equal(decoded, seg.mask.numpy())
        assert region["score"] == pytest.approx(seg.score, abs=1e-6)
    assert {r["model_version"] for r in results} == {version}


def test_polygon_config_gets_brush_and_polygon_regions(model_dir, http_server, photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    config = open(ROOT / "examples" / "label-config-polygons.xml").read()
    client = make_client(model_dir)
    response = client.post("/predict", json={"label_config": config, "tasks": [
        {"id": 1, "data": {"image": f"{base}/cat.png", "text": "the cat"}}]})
    [answer] = response.get_json()["results"]
    kinds = [r["type"] for r in answer["result"]]
    assert kinds[0] == "brushlabels" and "polygonlabels" in kinds
    height, width = photos["chelsea"].shape[:2]
    mask = rle_to_mask(answer["result"][0]["value"]["rle"], height, width)
    for region in answer["result"][1:]:
        points = np.array(region["value"]["points"])
        assert region["from_name"] == "outline" and region["value"]["polygonlabels"] == ["Object"]
        assert points.min() >= 0 and points.max() <= 100
        # Every vertex lies on the mask (within a pixel or two of simplification).
        cols = np.clip((points[:, 0] * width / 100).astype(int), 0, width - 1)
        rows = np.clip((points[:, 1] * height / 100).astype(int), 0, height - 1)
        near = [mask[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].any() for r, c in zip(rows, cols)]
        assert all(near)


def test_every_bad_input_fails_alone_and_the_server_keeps_serving(model_dir, http_server, photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    served.files["/page.html"] = (b"<html>login</html>", "text/html")
    served.files["/corrupt.png"] = (png_bytes(photos["chelsea"])[:300], "image/png")
    served.files["/huge.png"] = (png_bytes(np.zeros((2500, 2500), np.uint8)), "image/png")
    client = make_client(model_dir, max_image_pixels=4_000_000)
    good = {"image": f"{base}/cat.png", "text": "the cat"}
    tasks = [
        {"id": 1, "data": good},
        {"id": 2, "data": {"image": f"{base}/cat.png"}},  # missing text
        {"id": 3, "data": {"image": f"{base}/cat.png", "text": "   "}},  # empty text
        {"id": 4, "data": {"image": f"{base}/cat.png", "text": "x" * 10_000}},  # 10,000 characters
        {"id": 5, "data": {"image": f"{base}/corrupt.png", "text": "the cat"}},
        {"id": 6, "data": {"image": f"{base}/nothing-here.png", "text": "the cat"}},  # 404
        {"id": 7, "data": {"image": f"{base}/page.html", "text": "the cat"}},  # not an image
        {"id": 8, "data": {"image": f"{base}/huge.png", "text": "the cat"}},  # 6.25 MP > 4 MP
        {"id": 9, "data": {"image": "http://10.20.30.40/cat.png", "text": "the cat"}},  # private address
        {"id": 10, "data": {"image": "http://169.254.169.254/latest/meta-data/", "text": "the cat"}},
        {"id": 11, "data": {"text": "the cat"}},  # no image
        {"id": 12, "data": good},
    ]
    results = predict(client, tasks)["results"]
    assert len(results) == len(tasks)
    assert "result" in results[0] and "result" in results[-1]
    expected = {
        2: "no referring text", 3: "is empty", 4: "10000 characters; the limit is 1000", 5: "corrupt or truncated",
        6: "HTTP 404", 7: "text/html, not an image", 8: "the limit is 4 MP", 9: "public address",
        10: "public address", 11: "no image",
    }
    for task_id, message in expected.items():
        answer = results[task_id - 1]
        assert "result" not in answer, answer  # no prediction stored for a failed task
        assert answer["task"] == task_id and message in answer["error"], answer
    assert client.get("/health").status_code == 200
    assert "result" in predict(client, [{"id": 13, "data": good}])["results"][0]


def test_interactive_prompt_from_context_and_second_text_reuses_entities(model_dir, http_server, photos):
    base, served = http_server
    served.files["/astronaut.png"] = (png_bytes(photos["astronaut"]), "image/png")
    client = make_client(model_dir)
    task = {"id": 5, "data": {"image": f"{base}/astronaut.png", "text": "the cat"}}
    first = predict(client, [task])["results"][0]
    metrics = client.get("/metrics").get_json()["predictor"]
    assert metrics["images_encoded"] == 1
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["the woman's face"]}}]}
    second = predict(client, [task], context=context)["results"][0]
    metrics = client.get("/metrics").get_json()["predictor"]
    assert metrics["images_encoded"] == 1, "the second text must not run the image encoder again"
    assert metrics["entity_cache"]["hits"] >= 1 and metrics["model_loads"] == 1
    assert first["result"][0]["value"]["rle"] != second["result"][0]["value"]["rle"]
    # Each text gets its own label: "cat" -> Cat for the task text, "woman" -> Person for the typed prompt.
    assert first["result"][0]["value"]["brushlabels"] == ["Cat"]
    assert second["result"][0]["value"]["brushlabels"] == ["Person"]


def test_a_promoted_version_is_served_without_restart(model_dir, http_server, photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    client = make_client(model_dir)
    task = {"id": 1, "data": {"image": f"{base}/cat.png", "text": "the cat"}}
    old = predict(client, [task])["results"][0]["model_version"]
    torch.manual_seed(1234)
    registry = Registry(model_dir)
    new = registry.add(SaG(tiny_config()), {"parent": old}).id
    registry.promote(new)
    setup = client.post("/setup", json={"project": "7.1", "schema": LABEL_CONFIG}).get_json()
    assert setup == {"model_version": new}
    assert predict(client, [task])["results"][0]["model_version"] == new
    registry.rollback()
    assert predict(client, [task])["results"][0]["model_version"] == old


def test_bulk_requests_return_at_once_and_are_written_back(model_dir, http_server, photos):
    base, served = http_server
    served.token = "secret-token-abc"
    served.files["/data/upload/7/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    client = make_client(model_dir, sync_max_tasks=2, batch_size=2, label_studio_url=base,
                         label_studio_api_key="secret-token-abc")
    tasks = [{"id": i, "data": {"image": "/data/upload/7/cat.png", "text": f"the cat number {i}"}}
             for i in range(1, 6)]
    answer = predict(client, tasks)
    assert answer["results"] == [[]] * 5  # Label Studio stores nothing now
    job = answer["job"]
    assert job["tasks"] == 5 and job["jobs"] == 3
    deadline = time.monotonic() + 120
    while (status := client.get(job["status_url"]).get_json())["status"] != "finished":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["done"] == 5 and status["failed"] == 0
    imports = [payload for path, payload in served.posted if path == "/api/projects/7/import/predictions"]
    stored = sorted((p["task"], p["model_version"]) for batch in imports for p in batch)
    assert stored == [(i, Registry(model_dir).current()) for i in range(1, 6)]
    assert all(batch[0]["result"][0]["type"] == "brushlabels" for batch in imports)
    # Written back, the tasks' claims are released: asking again queues them afresh (a new model version would).
    assert predict(client, tasks)["job"]["already_pending"] == 0
    assert client.get("/jobs/unknown").status_code == 404


def test_basic_auth_protects_every_route(model_dir):
    client = make_client(model_dir, basic_auth_user="ls", basic_auth_pass="pa55word")
    assert client.get("/health").status_code == 401
    assert client.get("/health", auth=("ls", "wrong")).status_code == 401
    assert client.post("/predict", json={"tasks": []}).status_code == 401
    assert client.get("/health", auth=("ls", "pa55word")).status_code == 200


def test_malformed_requests_and_webhooks(model_dir):
    client = make_client(model_dir)
    assert client.post("/predict", data="not json", content_type="application/json").status_code == 400
    assert "tasks" in client.post("/predict", json={"tasks": "x"}).get_json()["error"]
    odd_context = client.post("/predict", json={"tasks": [], "label_config": LABEL_CONFIG, "params": {"context": []}})
    assert odd_context.status_code == 200 and odd_context.get_json() == {"results": []}
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).get_json() == {"status": "Unknown event"}
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert response.status_code == 201 and response.get_json()["result"]["status"] == "not_configured"
    results = predict(client, [{"id": 1, "data": {"image": "x", "text": "y"}}])["results"]
    assert "error" in results[0]
    bad_config = client.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "label_config": "<View/>"})
    assert "no <Image" in bad_config.get_json()["results"][0]["error"]


def test_the_api_key_never_reaches_the_logs(model_dir, http_server, photos, caplog):
    base, served = http_server
    key = "verysecretkey-0123456789"
    served.token = "a-different-key"  # Label Studio refuses ours: errors are logged
    served.files["/data/upload/1/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    client = make_client(model_dir, label_studio_url=base, label_studio_api_key=key)
    caplog.set_level(logging.DEBUG)
    results = predict(client, [{"id": 1, "data": {"image": "/data/upload/1/cat.png", "text": "the cat"}}])["results"]
    assert "HTTP 401" in results[0]["error"]
    assert caplog.records and key not in caplog.text
    assert key not in repr(Settings.from_env({"LABEL_STUDIO_API_KEY": key}))
