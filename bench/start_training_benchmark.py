"""Start Training end to end on a CPU: from the button to a promoted version, measured, not estimated (issue 19).

    python bench/start_training_benchmark.py --pairs 200 1000            # the table of bench/README.md
    python bench/start_training_benchmark.py --pairs 200 --set SAG_FINETUNE_RECIPE=paper --max-minutes 20

What runs is what a user's click runs: an embedded ``sag-backend`` (no Redis) gets Label Studio's ``START_TRAINING``
webhook, its job pulls the project and its tasks from a Label Studio stand-in on 127.0.0.1 (the two API calls the
job makes, answered as Label Studio answers them), fetches every image over HTTP through the backend's guarded
fetcher, caches the image side, trains, checks the candidate on held-out pairs (no project here has corrected masks)
and promotes it or not. The clock runs from the webhook's POST to the job's end; ``GET /training/<project>`` is
polled every 0.2 s, so each phase's time is known to about that.

The project: the first N image-text pairs of the synthetic ``shift`` domain's train split (bench/domain_shift.py,
words the base model never read), one task per image with its texts as a list. The model: the backend's default
initial model (``SAG_INIT_PRESET``, MobileNetV2 + MiniLM with the paper-size heads), the slow case. That its masks
improve is bench/domain_shift.py's business (a trained checkpoint is needed for that); here the held-out retrieval
before and after is reported beside the times.

Results: ``bench/results/start-training-cpu.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from domain_shift import IMAGE_SIZE, SHIFT_NAME, ensure_domain  # noqa: E402

from training.datasets.synthetic import synthetic_dataset  # noqa: E402
from training.synthetic import synthetic_config  # noqa: E402

PROJECT, KEY = 1, "bench-api-key"
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Text name="text" value="$text"/>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>
</View>"""


class LabelStudioStandIn:
    """The Label Studio API calls a training job makes (the project, its JSON export) and the task images."""

    def __init__(self, tasks: list[dict[str, Any]], files: dict[str, Path]):
        standin = self
        self.tasks, self.files = tasks, files
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                standin.requests += 1
                path = urlsplit(self.path).path.rstrip("/")
                if path in standin.files:
                    return self._send(200, standin.files[path].read_bytes(), "image/png")
                if self.headers.get("Authorization") != f"Token {KEY}":
                    return self._send(401, b'{"detail": "Authentication credentials were not provided."}')
                if path == f"/api/projects/{PROJECT}":
                    return self._json({"id": PROJECT, "title": "bench", "label_config": LABEL_CONFIG})
                if path == f"/api/projects/{PROJECT}/export":
                    return self._json(standin.tasks)
                self._send(404, b'{"detail": "Not found."}')

            def _json(self, data: Any) -> None:
                self._send(200, json.dumps(data).encode())

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def project_tasks(pairs: int, data_root: Path) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """The first ``pairs`` shift-domain train pairs as Label Studio tasks (one per image, its texts as a list)."""
    train = synthetic_dataset(data_root, "train", name=SHIFT_NAME, with_masks=False)
    if pairs > len(train):
        raise SystemExit(f"--pairs {pairs} > the {len(train)} pairs of {SHIFT_NAME}'s train split")
    texts: dict[str, list[str]] = {}
    for expr in train.expressions[:pairs]:
        texts.setdefault(expr.image, []).append(expr.text)
    files = {f"/data/{i}.png": Path(image) for i, image in enumerate(texts)}
    tasks = [{"id": i + 1, "data": {"image": f"/data/{i}.png", "text": t}, "annotations": [], "predictions": []}
             for i, t in enumerate(texts.values())]
    return tasks, files


def press_start_training(pairs: int, data_root: Path, work: Path, env: dict[str, str], max_s: float) -> dict:
    """One click on a fresh registry: the wall time of each phase and the job's result."""
    from backend.app import create_app
    from backend.presets import build_initial_model
    from backend.settings import Settings
    from training.registry import Registry

    tasks, files = project_tasks(pairs, data_root)
    standin = LabelStudioStandIn(tasks, files)
    for task in tasks:
        task["data"]["image"] = standin.url + task["data"]["image"]
    models = work / f"models-{pairs}"
    shutil.rmtree(models, ignore_errors=True)
    settings = Settings.from_env({**env, "SAG_MODEL_DIR": str(models), "LABEL_STUDIO_URL": standin.url,
                                  "LABEL_STUDIO_API_KEY": KEY, "SAG_ALLOWED_HOSTS": "127.0.0.1",
                                  "SAG_DEVICE": "cpu"})
    started = time.monotonic()
    registry = Registry(models)
    initial = registry.ensure_current(lambda: build_initial_model(settings.init_preset)).id
    setup_s = time.monotonic() - started
    client = create_app(settings).test_client()
    try:
        clicked = time.monotonic()
        answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
        if answer.status_code != 201:
            raise SystemExit(f"START_TRAINING answered {answer.status_code}: {answer.get_data(as_text=True)}")
        phases: list[tuple[str, float]] = []
        info: dict[str, Any] = {}
        while time.monotonic() - clicked < max_s:
            info = client.get(f"/training/{PROJECT}").get_json() or {}
            stage = info.get("stage")
            if not phases or phases[-1][0] != stage:
                phases.append((stage, time.monotonic() - clicked))
                print(f"  {phases[-1][1]:7.1f} s  {stage}", flush=True)
            if info.get("state") in ("finished", "failed"):
                break
            time.sleep(0.2)
        total_s = time.monotonic() - clicked
    finally:
        standin.close()
    ends = [t for _, t in phases[1:]] + [total_s]
    result = info.get("result") or {}
    return {
        "pairs": pairs, "tasks": len(tasks), "state": info.get("state"), "error": info.get("error"),
        "total_s": round(total_s, 1), "initial_model_s": round(setup_s, 1), "initial_version": initial,
        "phases": [{"stage": s, "start_s": round(t, 1), "seconds": round(e - t, 1)}
                   for (s, t), e in zip(phases, ends)],
        "steps": result.get("steps"), "promoted": result.get("promoted"), "reason": result.get("reason"),
        "metrics": result.get("metrics"), "label_studio_requests": standin.requests,
    }


def table(runs: list[dict]) -> str:
    lines = ["| pairs | tasks | steps | fetching images s | caching image side s | training s | checks s | "
             "total s | promoted |", "|---" * 9 + "|"]
    for run in runs:
        by_stage: dict[str, float] = {}
        for phase in run["phases"]:
            by_stage[phase["stage"]] = by_stage.get(phase["stage"], 0.0) + phase["seconds"]
        checks = sum(v for k, v in by_stage.items() if k and k.startswith("validating"))
        lines.append(f"| {run['pairs']} | {run['tasks']} | {run['steps']} | {by_stage.get('fetching images', 0):.0f} "
                     f"| {by_stage.get('caching image features', 0):.0f} | {by_stage.get('training', 0):.0f} | "
                     f"{checks:.0f} | {run['total_s']:.0f} | {run['promoted']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--data", default=str(ROOT / "bench" / "data"), help="where the shift domain is generated")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                        help="a backend setting for the run, e.g. SAG_FINETUNE_RECIPE=paper (default: shipped)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2: both cores of the target machine)")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="give up on a run after this long")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    env = dict(item.split("=", 1) for item in args.set)
    data_root = Path(args.data)
    ensure_domain(data_root, SHIFT_NAME, synthetic_config("shift", image_size=IMAGE_SIZE))
    work = Path(tempfile.mkdtemp(prefix="start-training-"))
    runs = []
    try:
        for pairs in args.pairs:
            print(f"{pairs} pairs:", flush=True)
            runs.append(press_start_training(pairs, data_root, work, env, args.max_minutes * 60))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from backend.settings import Settings

    settings = Settings.from_env(env)
    result = {
        "benchmark": "Start Training end to end (issue 19): webhook -> fetch -> cache -> train -> check -> promote",
        "command": " ".join(["python", "bench/start_training_benchmark.py", *(argv if argv is not None
                                                                            else sys.argv[1:])]),
        "settings": {"SAG_INIT_PRESET": settings.init_preset, "recipe": settings.finetune_recipe,
                     "lr": settings.finetune_lr, "epochs": settings.finetune_epochs,
                     "max_steps": settings.finetune_max_steps, "batch_size": settings.finetune_batch_size,
                     "freeze_image_side": settings.finetune_freeze_image_side, **env},
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_at_end": os.getloadavg()},
        "runs": runs,
    }
    out = Path(args.results) / f"start-training-{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(table(runs))
    print(f"wrote {out}")
    return 0 if all(r["state"] == "finished" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
