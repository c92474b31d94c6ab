"""Exactly-once write-back of bulk predictions (backend/jobs.py, backend/labelstudio/client.py): each task written
once, a bounded number of Label Studio requests per task, and a job's lookups in flight together rather than one by
one.

The fake Label Studio is conftest's real local HTTP server; the variants here hold or fail its lookups."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from backend.app import create_app
from backend.exceptions import LabelStudioError
from backend.labelstudio.client import LOOKUP_CONCURRENCY, LabelStudioClient
from backend.settings import Settings
from training.registry import Registry

from .conftest import LABEL_CONFIG, Served, _Handler, png_bytes, wait_for

KEY = "k-0123456789"


class _LookupHandler(_Handler):
    """conftest's fake Label Studio whose ``GET /api/predictions/`` first meets ``barrier`` (so it answers only
    once that many lookups are in flight together), and answers 503 for the tasks in ``failing``."""

    barrier: threading.Barrier | None = None
    failing: set[int] = set()

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path == "/api/predictions/":
            task = int(parse_qs(parts.query).get("task", ["0"])[0])
            if task in self.failing:
                self._record()
                return self._json_answer(503, {"detail": "Service Unavailable"})
            if self.barrier is not None:
                try:
                    self.barrier.wait(timeout=60)  # only a failure waits this long: lookups made one by one
                except threading.BrokenBarrierError:
                    self._record()
                    return self._json_answer(500, {"detail": "lookups arrived one by one"})
        super().do_GET()


@pytest.fixture
def lookup_server() -> Iterator[tuple[str, Served, type[_LookupHandler]]]:
    served = Served()
    handler = type("Handler", (_LookupHandler,), {"served": served, "failing": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, handler
    finally:
        server.shutdown()
        server.server_close()


def lookups(served: Served) -> list[str]:
    return [path for method, path, _, _ in served.requests
            if method == "GET" and urlsplit(path).path == "/api/predictions/"]


def batch(task_ids, version: str = "v1") -> list[dict]:
    return [{"task": t, "result": [], "score": 0.5, "model_version": version} for t in task_ids]


def test_a_bulk_batch_writes_each_task_once_with_two_lookups_per_task(registry_dir, tmp_path, http_server, photos):
    base, served = http_server
    served.files["/cup.png"] = (png_bytes(photos["coffee"]), "image/png")
    model_dir = tmp_path / "models"
    shutil.copytree(registry_dir, model_dir)
    settings = Settings.from_env({}, model_dir=str(model_dir), device="cpu", allowed_hosts=("127.0.0.1",),
                                 sync_max_tasks=2, batch_size=4, label_studio_url=base, label_studio_api_key=KEY)
    client = create_app(settings).test_client()
    tasks = [{"id": 300 + i, "data": {"image": f"{base}/cup.png", "text": f"the cup {i}"}} for i in range(10)]
    response = client.post("/predict", json={"tasks": tasks, "project": "7.1700000000", "label_config": LABEL_CONFIG})
    job = response.get_json()["job"]
    assert job["jobs"] == 3
    status = wait_for(lambda: (s := client.get(job["status_url"]).get_json())["status"] == "finished" and s, 120,
                      "the bulk batch")
    assert (status["done"], status["failed"]) == (10, 0)

    version = f"{Registry(model_dir).current()}+untrained"  # as Label Studio sees the placeholder
    assert served.prediction_counts() == {(t["id"], version): 1 for t in tasks}
    # Per job: one import; per task: one lookup before it and one after, whatever the project holds; no deletes.
    imports = [path for path, _ in served.posted if path == "/api/projects/7/import/predictions"]
    assert len(imports) == 3
    assert sorted(lookups(served)) == sorted(f"/api/predictions/?task={t['id']}" for t in tasks for _ in range(2))
    assert not [r for r in served.requests if r[0] == "DELETE"]


def test_the_lookups_of_a_write_back_are_in_flight_together(lookup_server):
    base, served, handler = lookup_server
    # Each phase (before and after the import) answers only when all its lookups have arrived: made one by one, the
    # first would wait for the others, which never come.
    handler.barrier = threading.Barrier(LOOKUP_CONCURRENCY)
    ls = LabelStudioClient(base, KEY)
    tasks = list(range(1, LOOKUP_CONCURRENCY + 1))
    assert ls.import_predictions_once(5, batch(tasks)) == {"stored": len(tasks), "skipped": 0, "removed": 0}
    assert len(lookups(served)) == 2 * len(tasks)
    assert served.prediction_counts() == {(t, "v1"): 1 for t in tasks}
    # A second run of the same write finds them all and imports nothing.
    assert ls.import_predictions_once(5, batch(tasks))["skipped"] == len(tasks)
    assert len([p for p, _ in served.posted if p.endswith("/import/predictions")]) == 1


def test_a_failed_lookup_imports_nothing_and_the_retry_writes_each_task_once(lookup_server):
    base, served, handler = lookup_server
    ls = LabelStudioClient(base, KEY)
    tasks = list(range(1, 13))  # more tasks than lookups in flight at once
    handler.failing = {7}
    with pytest.raises(LabelStudioError, match=r"GET /api/predictions/ -> HTTP 503"):
        ls.import_predictions_once(5, batch(tasks))
    assert served.posted == [] and served.predictions == []
    handler.failing = set()
    assert ls.import_predictions_once(5, batch(tasks))["stored"] == len(tasks)
    assert served.prediction_counts() == {(t, "v1"): 1 for t in tasks}


def test_lookups_of_many_tasks_stay_bounded_in_flight(lookup_server):
    base, served, handler = lookup_server
    in_flight, peak, lock = [0], [0], threading.Lock()
    original = handler.do_GET

    def counting(self) -> None:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(0.01)  # a Label Studio's time per request, so that lookups overlap if they can
            original(self)
        finally:
            with lock:
                in_flight[0] -= 1

    handler.do_GET = counting
    ls = LabelStudioClient(base, KEY)
    tasks = list(range(1, 41))
    assert ls.import_predictions_once(5, batch(tasks))["stored"] == 40
    assert len(lookups(served)) == 80
    assert peak[0] <= LOOKUP_CONCURRENCY
