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
from backend.exceptions import SettingsError
from backend.labelstudio.results import rle_to_mask
from backend.settings import Settings
from sag import SaG, pipeline, tiny_config
from tests.masks import assert_same_mask
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
    expected = pipeline.predict(
        reference, [photos["astronaut"], photos["coffee"], photos["coffee"]],
        ["the astronaut in a white suit", "the cup of coffee", "the spoon"],
        refine=Settings().mask_refine,  # the backend refines every mask (SAG_MASK_REFINE, default guided)
        spatial=Settings().spatial_words,  # and reads spatial words (SAG_SPATIAL_WORDS, default on)
    )
    regions = results[0]["result"] + results[1]["result"]
    # "astronaut" is a predicted value of Person; a cup and a spoon are objects (backend/labelstudio/label_words.py).
    assert [r["value"]["brushlabels"] for r in regions] == [["Person"], ["Object"], ["Object"]]
    for region, seg, photo in zip(regions, expected, ["astronaut", "coffee", "coffee"]):
        height, width = photos[photo].shape[:2]
        assert (region["original_height"], region["original_width"]) == (height, width)
        decoded = rle_to_mask(region["value"]["rle"], height, width)
        assert_same_mask(decoded, seg, reference.config.threshold)  # other batches: rounding may differ
        assert region["score"] == 0.0  # the session registry's tiny model is untrained: a placeholder
    assert {r["model_version"] for r in results} == {f"{version}+untrained"}
    assert [r["score"] for r in results] == [0.0, 0.0]


def test_an_untrained_version_scores_zero_and_says_so_everywhere_label_studio_looks(model_dir, http_server, photos):
    """A placeholder sorts last and is easy to filter out: score 0 on every region and the task, ``+untrained`` in
    /predict, /setup, /health and /metrics; the registry side (/versions) keeps the plain id."""
    base, served = http_server
    served.files["/coffee.png"] = (png_bytes(photos["coffee"]), "image/png")
    client = make_client(model_dir)
    version = Registry(model_dir).current()
    marked = f"{version}+untrained"
    tasks = [{"id": 1, "data": {"image": f"{base}/coffee.png", "text": ["the cup of coffee", "the spoon"]}}]
    [answer] = predict(client, tasks)["results"]
    assert answer["model_version"] == marked and answer["score"] == 0.0
    assert [r["score"] for r in answer["result"]] == [0.0, 0.0]
    assert client.post("/setup", json={"project": "7.1", "schema": LABEL_CONFIG}).get_json() == {
        "model_version": marked}
    assert client.get("/health").get_json()["model_version"] == marked
    assert client.get("/metrics").get_json()["model_version"] == marked
    assert client.get("/metrics").get_json()["predictor"]["model_version"] == marked
    assert client.get("/versions").get_json()["current"] == version


def test_health_shows_the_serving_versions_last_measured_figures(model_dir):
    """/health reads the serving version's recorded figures from its metadata (training/figures.py): "not measured"
    until a benchmark records one, then that record, and a promotion switches to the new version's figures."""
    from training.figures import make_figure

    client = make_client(model_dir)
    registry = Registry(model_dir)
    first = registry.current()
    assert client.get("/health").get_json()["figures"] == {"synthetic": "not measured",
                                                             "real_photos": "not measured"}
    figure = make_figure({"mIoU": 0.21, "cIoU": 0.25, "acc@0.5": 0.08}, 74, "data-sha", "served", photos=8)
    registry.record_figure(first, "real_photos", figure)
    shown = client.get("/health").get_json()["figures"]
    assert shown == {"synthetic": "not measured", "real_photos": figure}
    torch.manual_seed(3)
    second = registry.add(SaG(tiny_config()), {"trained": True}).id
    registry.promote(second)
    assert client.get("/health").get_json()["figures"]["real_photos"] == "not measured"


def test_a_trained_version_scores_each_mask_by_its_estimated_iou(model_dir, http_server, photos):
    """A version whose metadata says it was trained keeps its plain id, and each region's score is
    sag.confidence.mask_confidence of the model's own segmentation of that text; the task's score is their mean."""
    from sag.confidence import mask_confidence

    base, served = http_server
    served.files["/coffee.png"] = (png_bytes(photos["coffee"]), "image/png")
    torch.manual_seed(7)
    registry = Registry(model_dir)
    trained = registry.add(SaG(tiny_config()), {"preset": "tiny", "trained": True}).id
    registry.promote(trained)
    client = make_client(model_dir)
    texts = ["the cup of coffee", "the spoon"]
    [answer] = predict(client, [{"id": 1, "data": {"image": f"{base}/coffee.png", "text": texts}}])["results"]
    assert answer["model_version"] == trained
    assert client.post("/setup", json={"schema": LABEL_CONFIG}).get_json() == {"model_version": trained}
    assert client.get("/health").get_json()["model_version"] == trained

    reference = SaG.from_pretrained(model_dir / trained)
    expected = pipeline.predict(reference, [photos["coffee"]] * 2, texts, refine=Settings().mask_refine,
                                spatial=Settings().spatial_words)
    wanted = [mask_confidence(seg, reference.config.threshold) for seg in expected]
    scores = [r["score"] for r in answer["result"]]
    assert all(0.0 < s < 1.0 for s in wanted)  # precondition: not a placeholder's 0
    # Another batch may round a map differently; a few pixels move the estimate by far less than this.
    assert scores == pytest.approx(wanted, abs=1e-3)
    assert answer["score"] == pytest.approx(sum(scores) / len(scores), abs=1e-9)


def test_sag_default_label_labels_texts_nothing_else_matches(model_dir, http_server, photos):
    base, served = http_server
    served.files["/coffee.png"] = (png_bytes(photos["coffee"]), "image/png")
    assert Settings.from_env({"SAG_DEFAULT_LABEL": " Cat "}).default_label == "Cat"
    client = make_client(model_dir, default_label="Cat")
    tasks = [{"id": 1, "data": {"image": f"{base}/coffee.png", "text": ["the one on the left", "the cup"]}}]
    regions = predict(client, tasks)["results"][0]["result"]
    assert [r["value"]["brushlabels"] for r in regions] == [["Cat"], ["Object"]]
    wrong = make_client(model_dir, default_label="Car")
    answer = predict(wrong, tasks)["results"][0]
    assert "SAG_DEFAULT_LABEL='Car' is not a label of <mask>" in answer["error"]


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
    registry = Registry(model_dir)
    assert old == f"{registry.current()}+untrained"
    torch.manual_seed(1234)
    # No "trained": False and no unchecked promotion in its metadata: served under its plain id.
    new = registry.add(SaG(tiny_config()), {"parent": registry.current()}).id
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
    assert stored == [(i, f"{Registry(model_dir).current()}+untrained") for i in range(1, 6)]
    assert all(p["score"] == 0.0 for batch in imports for p in batch)
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
    results = predict(client, [{"id": 1, "data": {"image": "x", "text": "y"}}])["results"]
    assert "error" in results[0]
    bad_config = client.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "label_config": "<View/>"})
    assert "no <Image" in bad_config.get_json()["results"][0]["error"]


@pytest.mark.parametrize("overrides, missing", [
    ({}, "no LABEL_STUDIO_URL and no LABEL_STUDIO_API_KEY"),
    ({"label_studio_url": "http://127.0.0.1:8080"}, "no LABEL_STUDIO_API_KEY"),
    ({"label_studio_api_key": "a-key-0123456789"}, "no LABEL_STUDIO_URL"),
])
def test_start_training_that_cannot_run_is_an_http_error_with_the_reason(model_dir, overrides, missing):
    # Label Studio keeps only the status line of a failed /webhook call (see tests/e2e/test_training_e2e.py), so
    # the reason phrase carries the message; the body has it too, for other clients.
    client = make_client(model_dir, **overrides)
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert response.status_code == 503
    assert response.status.startswith(f"503 Training cannot start: the ML backend has {missing};")
    assert "\r" not in response.status and "\n" not in response.status
    assert response.get_json() == {"status": "error", "error": response.status.removeprefix("503 ")}
    script = client.post("/training/3", json={})  # the same from a script
    assert script.status_code == 503 and missing in script.get_json()["error"]
    assert client.get("/training/3").status_code == 404  # nothing was queued


def test_an_annotation_that_triggers_unconfigured_training_is_only_reported(model_dir):
    # Label Studio ignores annotation webhooks' answers and waits 1 s for them: no error status there.
    client = make_client(model_dir, train_every_annotations=1)
    response = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}})
    assert response.status_code == 201
    result = response.get_json()["result"]
    assert result["status"] == "not_configured" and "no LABEL_STUDIO_URL" in result["detail"]


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


def test_mask_refinement_setting_reaches_the_rle_and_follows_image_edges(tmp_path, http_server, photos):
    """SAG_MASK_REFINE: the brush RLE Label Studio receives is the refined mask, at the image's size, and its
    edges sit on the image's edges: on a real photo the image gradient along the mask's boundary is higher, and on
    a two-region picture whose true edge is known the boundary F-score against that region is higher."""
    from sag.metrics import boundary_f_score, mask_boundary

    torch.manual_seed(0)  # a model of our own: its (random) maps must be the same on every run
    model = SaG(tiny_config())
    registry = Registry(tmp_path / "models")
    registry.promote(registry.add(model, {"preset": "tiny", "trained": False}).id)
    # two flat-ish regions split at column 137, which is on no patch-grid line
    height, width, edge = 240, 320, 137
    noise = np.random.default_rng(0).integers(-12, 13, size=(height, width, 3))
    regions = np.zeros((height, width, 3), dtype=int)
    regions[:, :edge], regions[:, edge:] = (205, 80, 60), (50, 110, 190)
    two_regions = np.clip(regions + noise, 0, 255).astype(np.uint8)
    base, served = http_server
    served.files["/astronaut.png"] = (png_bytes(photos["astronaut"]), "image/png")
    served.files["/regions.png"] = (png_bytes(two_regions), "image/png")
    tasks = [{"id": 1, "data": {"image": f"{base}/astronaut.png", "text": "the astronaut"}},
             {"id": 2, "data": {"image": f"{base}/regions.png", "text": "the red region on the left"}}]

    def masks(**settings):
        results = predict(make_client(tmp_path / "models", **settings), tasks)["results"]
        out = []
        for result, image in zip(results, (photos["astronaut"], two_regions)):
            [region] = result["result"]
            assert (region["original_height"], region["original_width"]) == image.shape[:2]
            out.append(rle_to_mask(region["value"]["rle"], *image.shape[:2]).astype(bool))
        return out

    (photo_plain, regions_plain), (photo_refined, regions_refined) = (masks(mask_refine="none", spatial_words=False),
                                                                      masks(spatial_words=False))
    assert Settings().mask_refine == "guided"  # the default, chosen from bench/README.md's measurement
    # the RLE is the model's refined mask, bit for bit, and refinement changed it
    expected, _ = pipeline.predict(model, [photos["astronaut"], two_regions],
                                   ["the astronaut", "the red region on the left"], refine="guided", spatial=False)
    assert_same_mask(photo_refined, expected, model.config.threshold)
    assert (photo_refined != photo_plain).mean() > 0.05

    gray = photos["astronaut"].astype(float).mean(axis=2)
    gradient = np.hypot(*np.gradient(gray))
    plain_edge = gradient[mask_boundary(photo_plain)].mean()
    refined_edge = gradient[mask_boundary(photo_refined)].mean()
    assert refined_edge > 1.5 * plain_edge  # about 9 -> 29 grey levels per pixel: the boundary moved onto edges

    left = np.zeros((height, width), dtype=bool)
    left[:, :edge] = True
    truth = left if (regions_plain & left).sum() >= (regions_plain & ~left).sum() else ~left  # the region it chose
    assert boundary_f_score(regions_refined, truth) > max(0.9, boundary_f_score(regions_plain, truth) + 0.3)


def two_discs(height: int = 96, width: int = 160) -> np.ndarray:
    """Two red discs of one size on grey, side by side: "the red disc" is two objects, "on the left" one of them."""
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 200, np.uint8)
    for cx in (width // 4, 3 * width // 4):
        image[(yy - height // 2) ** 2 + (xx - cx) ** 2 <= (height // 4 + 2) ** 2] = (210, 30, 30)
    return image


def test_spatial_words_setting_reaches_the_rle(tmp_path, http_server):
    """SAG_SPATIAL_WORDS: with it on (the default) the brush RLE for "the red disc on the left" is one connected
    region, the left one, of the RLE served for "the red disc" in the same task (sag/spatial.py picks it from that
    very segmentation, so this holds exactly); with it off the text gets the model's own mask, which differs."""
    from sag.spatial import components

    # A random tiny model whose map for "the red disc" covers both discs and stays at least 0.07 away from the
    # threshold everywhere (seed 1), so no rounding can change these masks: the image is built so that the spatial
    # words must change the mask.
    torch.manual_seed(1)
    model = SaG(tiny_config())
    registry = Registry(tmp_path / "models")
    registry.promote(registry.add(model, {"preset": "tiny", "trained": False}).id)
    base, served = http_server
    image = two_discs()
    served.files["/discs.png"] = (png_bytes(image), "image/png")
    tasks = [{"id": 1, "data": {"image": f"{base}/discs.png", "text": ["the red disc on the left", "the red disc"]}}]
    height, width = image.shape[:2]

    def served_masks(**settings) -> list[np.ndarray]:
        [result] = predict(make_client(tmp_path / "models", **settings), tasks)["results"]
        return [rle_to_mask(region["value"]["rle"], height, width).astype(bool) for region in result["result"]]

    assert Settings().spatial_words is True
    (left, head), (left_off, head_off) = served_masks(), served_masks(spatial_words=False)
    discs = components(torch.from_numpy(head))
    assert len(discs) == 2, "precondition: the head's mask must be the two discs"
    assert any(np.array_equal(left, disc) for disc in discs)  # one connected region of the head's served mask
    assert not (left & ~head).any()
    assert np.nonzero(left)[1].mean() < width / 2  # the left one
    assert not np.array_equal(left, left_off)  # the setting reaches the RLE
    np.testing.assert_array_equal(head, head_off)  # a text without spatial words is served alike either way
    with pytest.raises(SettingsError, match="SAG_SPATIAL_WORDS"):
        Settings.from_env({"SAG_SPATIAL_WORDS": "sometimes"})


def test_initial_presets_and_training_presets_do_not_share_a_name():
    """SAG_INIT_PRESET names an untrained starting model, `sag-train --preset` a training recipe: one name must
    not mean both. The old SAG_INIT_PRESET=paper still builds the paper's backbones (now ``vit-bert``)."""
    from backend.presets import INITIAL_MODEL_PRESETS, RENAMED_PRESETS
    from training.presets import TRAINING_PRESETS

    assert not set(INITIAL_MODEL_PRESETS) & set(TRAINING_PRESETS)
    assert RENAMED_PRESETS["paper"] in INITIAL_MODEL_PRESETS
