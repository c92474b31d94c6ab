"""Create a demo project in a running Label Studio, connected to a running SaG backend, and pre-label it.

Run by ``bash scripts/label-studio.sh --demo`` (and by the e2e suite); by hand:

    .venv/bin/python scripts/label_studio_demo.py --url http://127.0.0.1:8080 --token TOKEN \\
        --backend http://127.0.0.1:9090 --document-root .label-studio/files

What it does: writes real photos (scikit-image's bundled ones) into ``<document root>/sag-demo/``, creates the
project "SaG Assist demo" from examples/label-config.xml with a local-files storage on that folder (Label Studio
serves a /data/local-files/ URL only under such a storage), imports tasks whose images are those files and whose
texts are referring expressions, connects the backend, runs "Retrieve predictions", and prints what came back.
A second run finds the project and reports on it instead of making another. Prints one JSON line last
({"project", "tasks", "predictions", "task_url"}) for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
TITLE = "SaG Assist demo"
FOLDER = "sag-demo"
# (scikit-image photo, referring texts): one region per text.
PHOTOS = (
    ("astronaut", ["the astronaut in a white suit", "the flag on the left"]),
    ("chelsea", ["the cat"]),
    ("coffee", ["the cup of coffee"]),
    ("rocket", ["the rocket on the launch pad"]),
)


class DemoError(Exception):
    """A step that failed; the message says which and what Label Studio answered."""


class LabelStudio:
    """The handful of Label Studio API calls the demo makes, with the legacy token."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, what: str, **kwargs):
        """One API call; :class:`DemoError` naming ``what`` on an error status."""
        try:
            response = self.session.request(method, self.url + path, timeout=300, **kwargs)
        except requests.RequestException as exc:
            raise DemoError(f"{what}: Label Studio at {self.url} did not answer: {exc}") from None
        if response.status_code >= 400:
            raise DemoError(f"{what}: Label Studio answered {response.status_code}: {response.text[:800]}")
        return response.json() if response.content else None

    def tasks(self, project: int) -> list[dict]:
        """Every task of ``project``, by id."""
        found = self.call("GET", f"/api/tasks?project={project}&page_size=1000", "list tasks")
        return sorted(found["tasks"] if isinstance(found, dict) else found, key=lambda t: t["id"])


def write_photos(document_root: Path) -> dict[str, str]:
    """Save the demo photos as PNG under ``<document_root>/sag-demo``; name -> path relative to the root."""
    from PIL import Image
    from skimage import data

    folder = document_root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    relative = {}
    for name, _ in PHOTOS:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).save(path)
        relative[name] = f"{FOLDER}/{name}.png"
    return relative


def create_project(ls: LabelStudio, backend: str, document_root: Path) -> int:
    """The demo project with its storage, tasks and connected backend; returns its id."""
    config = (ROOT / "examples" / "label-config.xml").read_text(encoding="utf-8")
    files = write_photos(document_root)
    project = ls.call("POST", "/api/projects", "create the project",
                      json={"title": TITLE, "label_config": config,
                            "description": "Referring-text segmentation with SaG Assist (scripts/label-studio.sh)"})
    pid = project["id"]
    # Label Studio serves /data/local-files/?d=<path> only for files under a local-files storage of a project
    # the user can see; the storage is not synced (the tasks below carry the texts).
    ls.call("POST", "/api/storages/localfiles", "add the local-files storage",
            json={"project": pid, "title": "demo photos", "path": str((document_root / FOLDER).resolve()),
                  "use_blob_urls": True, "regex_filter": r".*\.png"})
    ls.call("POST", f"/api/projects/{pid}/import", "import the tasks", json=[
        {"data": {"image": f"/data/local-files/?d={files[name]}", "text": texts}} for name, texts in PHOTOS])
    ml = ls.call("POST", "/api/ml", f"connect the backend at {backend}",
                 json={"url": backend, "project": pid, "title": "SaG Assist", "is_interactive": True})
    if ml.get("state") != "CO":
        raise DemoError(f"Label Studio did not connect the backend at {backend}: state {ml.get('state')}, "
                        f"{ml.get('error_message')}")
    ls.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}", "retrieve predictions",
            json={"selectedItems": {"all": True, "excluded": []}})
    # Annotators see the predictions of the project's model_version: the serving one (Label Studio accepts it only
    # once predictions of that version exist).
    if ls.call("GET", f"/api/predictions?project={pid}", "list predictions"):
        ls.call("PATCH", f"/api/projects/{pid}", "select the model version",
                json={"model_version": ml["model_version"], "show_collab_predictions": True})
    return pid


def main(argv: list[str] | None = None) -> int:
    """Create (or find) the demo project and report how many tasks got a prediction."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="Label Studio's URL")
    parser.add_argument("--token", required=True, help="a legacy API token of a Label Studio user")
    parser.add_argument("--backend", default="http://127.0.0.1:9090", help="the SaG backend's URL")
    parser.add_argument("--document-root", required=True, type=Path,
                        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (the photos are written under it)")
    args = parser.parse_args(argv)
    ls = LabelStudio(args.url, args.token)
    try:
        projects = ls.call("GET", "/api/projects?page_size=1000", "list projects")
        projects = projects["results"] if isinstance(projects, dict) else projects
        existing = next((p["id"] for p in projects if p["title"] == TITLE), None)
        if existing is not None:
            print(f"demo: the project {TITLE!r} exists already (id {existing}); delete it in Label Studio to make "
                  "it again")
            pid = existing
        else:
            pid = create_project(ls, args.backend, args.document_root)
        tasks = ls.tasks(pid)
        predictions = ls.call("GET", f"/api/predictions?project={pid}", "list predictions")
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    predicted = {p["task"] for p in predictions}
    task_url = f"{ls.url}/projects/{pid}/data?task={tasks[0]['id']}" if tasks else f"{ls.url}/projects/{pid}"
    print(f"demo: project {TITLE!r}: {len(tasks)} tasks, {len(predicted)} with a prediction of the backend at "
          f"{args.backend}")
    if len(predicted) < len(tasks):
        print("demo: some tasks got no prediction; the backend's log says why. A backend on this machine reads the "
              f"photos from disk when its LOCAL_FILES_DOCUMENT_ROOT is {args.document_root.resolve()} "
              "(scripts/run-backend.sh sets that by default); elsewhere give it LABEL_STUDIO_URL and "
              "LABEL_STUDIO_API_KEY", file=sys.stderr)
    print(f"demo: open {task_url}")
    print(json.dumps({"project": pid, "tasks": len(tasks), "predictions": len(predicted), "task_url": task_url}))
    return 0 if predicted and len(predicted) == len(tasks) else 1


if __name__ == "__main__":
    sys.exit(main())
