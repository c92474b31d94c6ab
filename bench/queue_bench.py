"""Queue overhead: pre-labelling through the backend, Redis and sag-worker processes against the bare model.

Both sides run the same checkpoint on the same machine with the same number of model processes:

* **bare**: this process decodes each image, then runs ``encode_image`` and ``segment_texts`` (text encoder,
  fusion, masks at full size refined and spatial words read, as the backend's defaults serve them) in batches of
  ``--batch-size``; no HTTP, no queue, no RLE;
* **sync** (Label Studio's synchronous path): a real ``sag-backend`` (Redis mode) and ``--workers`` real
  ``sag-worker`` processes; the tasks go in concurrent ``/predict`` requests of at most 16 tasks, images fetched
  over HTTP from a local server, masks returned as brush RLE;
* **bulk**: the same backend and workers; all ``--tasks`` go in one ``/predict`` request (more than
  ``SAG_SYNC_MAX_TASKS``), which returns at once, and the workers write every prediction back to a Label Studio
  stand-in exactly once (``import_predictions_once``); timed until the batch reports ``finished``. The stand-in is a
  local HTTP server that answers the calls the backend makes (``GET /api/predictions/``, ``POST
  /api/projects/<id>/import/predictions``, ``DELETE /api/predictions/<id>/``) as Label Studio does, after
  ``--ls-delay-ms`` per request (a Django request with a database query on a LAN).

Every task has its own image (no entity-cache hits), so the comparison is fair to the bare model. Each round runs
bare and sync on one block of new images, then bare and bulk on another, and the ratios are taken per round: on a
small shared machine a single pair of runs can be off by 10 % either way. Then the latency of single interactive
``/predict`` calls: a new text on an image the worker has cached, and on a fresh image.

    python bench/queue_bench.py --tasks 200 --workers 1 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import redis
import requests
import torch
from PIL import Image
from rq import Queue, Worker

from backend.keys import INFERENCE_QUEUE
from backend.labelstudio.client import LabelStudioClient
from backend.presets import build_initial_model
from backend.settings import Settings
from sag import SaG
from sag.pipeline import segment_texts
from training.registry import Registry

# The helper the tests stop their processes with. Imported as a module of tests/, not as tests.processes: the
# label-studio-converter wheel installs a top-level `tests` package of its own, which would shadow this checkout's.
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # last: nothing of ours is shadowed

from processes import stop_processes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Text name="text" value="$text"/>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1"/>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>
</View>
"""
TEXTS = ["the person on the left", "the cup of coffee", "the cat's face", "the rocket on the launch pad",
         "the red motorcycle", "the white mug in front", "the astronaut's helmet", "the background wall"]


def distinct_images(count: int, side: int) -> list[bytes]:
    """``count`` different JPEGs made from scikit-image's bundled photos (a shifted crop and a tint per index)."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        shift = (i // len(photos)) % 40
        crop = photo[shift:, shift:]
        image = Image.fromarray(crop).resize((side, side))
        array = np.asarray(image).copy()
        array[..., i % 3] = np.clip(array[..., i % 3].astype(int) + (i % 7), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def serve_images(images: list[bytes]) -> tuple[str, ThreadingHTTPServer]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            index = int(self.path.strip("/").split(".")[0])
            body = images[index]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


class LabelStudioStandIn:
    """Label Studio's prediction API, as the backend's write-back uses it, on 127.0.0.1, answering every request
    after ``delay_s`` (the server's own work on a real one: a Django view, a database query, the LAN).

    ``GET /api/predictions/?task=N`` and ``?project=P`` list predictions (with their results, as Label Studio does);
    ``POST /api/projects/<id>/import/predictions`` stores each with a new id; ``DELETE /api/predictions/<id>/``.
    Requests need ``Authorization: Token <key>``. Counts the requests it answered by kind."""

    def __init__(self, key: str, delay_s: float):
        self.key = key
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.stored = threading.Condition(self.lock)  # notified on every import
        self.predictions: list[dict] = []
        self.next_id = 1
        self.counts = {"list": 0, "import": 0, "delete": 0}
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, data: object | None = None) -> None:
                body = json.dumps(data).encode() if data is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                time.sleep(standin.delay_s)
                if self.headers.get("Authorization") == f"Token {standin.key}":
                    return True
                self._answer(401, {"detail": "Authentication credentials were not provided."})
                return False

            def do_GET(self):  # noqa: N802
                if not self._authorised():
                    return
                parts = urlsplit(self.path)
                if parts.path.rstrip("/") != "/api/predictions":
                    return self._answer(404, {"detail": "Not found."})
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                with standin.lock:
                    standin.counts["list"] += 1
                    found = [p for p in standin.predictions
                             if all(str(p[f]) == query[f] for f in ("task", "project") if f in query)]
                    body = json.dumps(found).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                if not self._authorised():
                    return
                match = re.fullmatch(r"/api/projects/(\d+)/import/predictions", self.path)
                if not match or not isinstance(payload, list):
                    return self._answer(404, {"detail": "Not found."})
                with standin.lock:
                    standin.counts["import"] += 1
                    for p in payload:
                        standin.predictions.append({**p, "id": standin.next_id, "project": int(match.group(1))})
                        standin.next_id += 1
                    standin.stored.notify_all()
                self._answer(201, {"created": len(payload)})

            def do_DELETE(self):  # noqa: N802
                if not self._authorised():
                    return
                match = re.fullmatch(r"/api/predictions/(\d+)/", self.path)
                with standin.lock:
                    standin.counts["delete"] += 1
                    before = len(standin.predictions)
                    if match:
                        standin.predictions[:] = [p for p in standin.predictions if p["id"] != int(match.group(1))]
                    gone = len(standin.predictions) < before
                self._answer(204) if gone else self._answer(404, {"detail": "Not found."})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def held(self, task_ids: list[int]) -> dict[int, int]:
        """How many predictions each of ``task_ids`` holds."""
        with self.lock:
            return self._held(task_ids)

    def _held(self, task_ids: list[int]) -> dict[int, int]:
        counts = dict.fromkeys(task_ids, 0)
        for p in self.predictions:
            if p["task"] in counts:
                counts[p["task"]] += 1
        return counts

    def wait_held(self, task_ids: list[int], timeout: float) -> bool:
        """Until every one of ``task_ids`` holds a prediction (False after ``timeout`` seconds)."""
        with self.stored:
            return self.stored.wait_for(lambda: all(self._held(task_ids).values()), timeout)

    def request_counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def empty_redis_db() -> int:
    """An empty database number on the local Redis (the benchmark flushes it when done)."""
    for db in range(15, 1, -1):
        if redis.Redis("127.0.0.1", 6379, db=db).dbsize() == 0:
            return db
    raise RuntimeError("no empty Redis database (2-15) on 127.0.0.1:6379")


# What the backend does with its default settings (SAG_MASK_REFINE=guided, SAG_SPATIAL_WORDS on), the bare model does
# too: the ratio measures the queue, HTTP and write-back, not the refinement.
SERVED = Settings.from_env({})


def bare_throughput(model: SaG, images: list[bytes], texts: list[str], batch_size: int, device) -> float:
    """Tasks/s of the model alone: decode, preprocess, image side, text side, masks at full size refined along the
    image's edges and spatial words read, as the backend serves them."""
    start = time.perf_counter()
    for lo in range(0, len(images), batch_size):
        batch = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[lo:lo + batch_size]]
        with torch.inference_mode():
            ent = model.encode_image(model.preprocess(batch))
            segs = segment_texts(model, ent, texts[lo:lo + batch_size], [(im.height, im.width) for im in batch],
                                 guides=batch, refine=SERVED.mask_refine, spatial=SERVED.spatial_words)
            [seg.mask.cpu().numpy() for seg in segs]
    return len(images) / (time.perf_counter() - start)


def task(base: str, index: int, text: str) -> dict:
    return {"id": index + 1, "data": {"image": f"{base}/{index}.jpg", "text": text}}


def post_predict(url: str, tasks: list[dict], context: dict | None = None) -> dict:
    payload = {"tasks": tasks, "project": "1.1700000000", "label_config": LABEL_CONFIG,
               "params": {"context": context}}
    response = requests.post(f"{url}/predict", json=payload, timeout=600)
    response.raise_for_status()
    results = response.json()["results"]
    bad = [r for r in results if "result" not in r]
    if bad:
        raise RuntimeError(f"{len(bad)} task(s) failed: {bad[0]}")
    return response.json()


def wait_until_ready(url: str, redis_url: str, procs: list[subprocess.Popen], workers: int) -> None:
    """Until /health answers and ``workers`` sag-workers registered with Redis; raises if a process died."""
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("the backend or a worker did not start")
        time.sleep(0.2)
    queue = Queue(INFERENCE_QUEUE, connection=redis.Redis.from_url(redis_url))
    while Worker.count(queue=queue) < workers:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("sag-worker did not register with Redis")
        time.sleep(0.2)


def queue_throughput(url: str, base: str, ids: list[int], texts: list[str]) -> float:
    """Tasks/s of /predict for the tasks ``ids``, sent as concurrent requests of 16 tasks (Label Studio's chunks)."""
    chunks = [ids[lo:lo + 16] for lo in range(0, len(ids), 16)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        list(pool.map(lambda c: post_predict(url, [task(base, i, texts[i]) for i in c]), chunks))
    return len(ids) / (time.perf_counter() - start)


def bulk_throughput(url: str, base: str, ids: list[int], texts: list[str], standin: LabelStudioStandIn,
                    project: int = 1) -> tuple[float, dict[str, int]]:
    """Tasks/s of one bulk /predict of the tasks ``ids`` (answered at once, written back by the workers), until the
    batch reports finished; and the Label Studio requests it made. Raises unless every task holds one prediction."""
    before = standin.request_counts()
    payload = {"tasks": [task(base, i, texts[i]) for i in ids], "project": f"{project}.1700000000",
               "label_config": LABEL_CONFIG, "params": {"context": None}}
    start = time.perf_counter()
    response = requests.post(f"{url}/predict", json=payload, timeout=600)
    response.raise_for_status()
    job = response.json().get("job")
    if not job or job["tasks"] != len(ids):
        raise RuntimeError(f"expected a bulk batch of {len(ids)} tasks, got {response.json()}")
    # Waiting on the stand-in rather than polling the backend, which would take CPU from the workers; the batch is
    # counted just after the last write-back.
    if not standin.wait_held([i + 1 for i in ids], timeout=3600):
        raise RuntimeError("the bulk batch was not written back within an hour")
    while (status := requests.get(f"{url}{job['status_url']}", timeout=30).json())["status"] != "finished":
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    if status["failed"]:
        raise RuntimeError(f"{status['failed']} task(s) of the bulk batch failed: {status}")
    held = standin.held([i + 1 for i in ids])
    wrong = {t: n for t, n in held.items() if n != 1}
    if wrong:
        raise RuntimeError(f"write-back is not exactly once: predictions per task {dict(list(wrong.items())[:5])}")
    after = standin.request_counts()
    return len(ids) / elapsed, {k: after[k] - before[k] for k in after}


def write_back_ms(standin: LabelStudioStandIn, predictions: list[dict], batch_size: int, jobs: int = 20,
                  project: int = 1) -> float:
    """Median ms of one job's exactly-once write-back (``import_predictions_once`` of ``batch_size`` predictions)
    against the stand-in, in this process: what each bulk job adds to its inference."""
    client = LabelStudioClient(standin.url, standin.key)
    times = []
    for j in range(jobs):
        batch = [{**predictions[i % len(predictions)], "task": 10**6 + j * batch_size + i,
                  "model_version": "bench-write-back"} for i in range(batch_size)]
        start = time.perf_counter()
        client.import_predictions_once(project, batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of bare vs queue, each on new images")
    parser.add_argument("--paths", default="sync,bulk", help="which queue paths to time: sync, bulk or both")
    parser.add_argument("--ls-delay-ms", type=float, default=10.0,
                        help="the Label Studio stand-in's time per request (bulk write-back)")
    parser.add_argument("--preset", default="mobilenet-minilm", help="backend.presets name of the model to serve")
    parser.add_argument("--image-side", type=int, default=512)
    parser.add_argument("--interactive", type=int, default=30, help="single /predict calls per latency case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if not paths or set(paths) - {"sync", "bulk"}:
        parser.error(f"--paths takes sync, bulk or sync,bulk, got {args.paths!r}")
    if "bulk" in paths and args.tasks <= 16:
        parser.error("--tasks must be more than SAG_SYNC_MAX_TASKS (16) for the bulk path")
    torch.manual_seed(0)
    # A plain kill (SIGTERM) still stops the backend and workers and empties the Redis database (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = Path(tempfile.mkdtemp(prefix="sag-queue-bench-"))
    db = empty_redis_db()
    redis_url = f"redis://127.0.0.1:6379/{db}"
    # Workers in Redis mode read the serving version from Redis, so promote through a Redis-backed registry.
    registry = Registry(workdir / "models", redis=redis.Redis.from_url(redis_url))
    model, meta = build_initial_model(args.preset)
    version = registry.promote(registry.add(model, meta).id).id
    del model
    # Images: one block of --tasks per round and path, then the fresh interactive ones, then one for warming up.
    blocks = args.repeats * len(paths)
    images = distinct_images(blocks * args.tasks + args.interactive + 1, args.image_side)
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(images))]
    base, server = serve_images(images)
    ls_key = "bench-legacy-token-0123456789"
    standin = LabelStudioStandIn(ls_key, args.ls_delay_ms / 1000)
    report = {"created_at": datetime.now(timezone.utc).isoformat(), "tasks": args.tasks, "workers": args.workers,
              "batch_size": args.batch_size, "repeats": args.repeats, "preset": args.preset,
              "image_side": args.image_side, "paths": paths, "ls_delay_ms": args.ls_delay_ms,
              "sync_max_tasks": 16, "load_average_start": os.getloadavg(),
              "torch_threads": torch.get_num_threads(),
              "bare_like_the_backend": {"mask_refine": SERVED.mask_refine, "spatial_words": SERVED.spatial_words},
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "device": args.device}}

    # ---- the backend, Redis and workers, started once ------------------------------------------------------------
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SAG_MODEL_DIR": str(registry.root), "SAG_DEVICE": args.device,
           "SAG_ALLOWED_HOSTS": "127.0.0.1", "SAG_BATCH_SIZE": str(args.batch_size), "PORT": str(port),
           "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "SAG_SYNC_MAX_TASKS": "16",
           "SAG_PREDICT_TIMEOUT": "3600",  # a loaded machine must not turn a slow round into errors
           "LABEL_STUDIO_URL": standin.url, "LABEL_STUDIO_API_KEY": ls_key}
    procs = [subprocess.Popen([sys.executable, "-m", "backend.worker", "--name", f"bench-{i}-{os.getpid()}"],
                              env=env) for i in range(args.workers)]
    procs.append(subprocess.Popen([sys.executable, "-m", "backend.app"], env=env))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, redis_url, procs, args.workers)
        warm = len(images) - 1  # an image used by no round: every worker loads the model on it
        for _ in range(args.workers):
            post_predict(url, [task(base, warm, "warm-up")])

        device = torch.device(args.device)
        bare = SaG.from_pretrained(registry.get(version).path, device=device)
        bare_throughput(bare, images[:args.batch_size], texts[:args.batch_size], args.batch_size, device)  # warm-up
        rounds = []
        for r in range(args.repeats):
            row: dict = {"load_average": os.getloadavg()[0]}
            for p, path in enumerate(paths):
                block = r * len(paths) + p
                ids = list(range(block * args.tasks, (block + 1) * args.tasks))
                bare_rate = bare_throughput(bare, [images[i] for i in ids], [texts[i] for i in ids],
                                            args.batch_size, device)
                if path == "sync":
                    rate = queue_throughput(url, base, ids, texts)
                    row.update(bare_tasks_per_s=bare_rate, queue_tasks_per_s=rate, queue_over_bare=rate / bare_rate)
                else:
                    rate, requests_made = bulk_throughput(url, base, ids, texts, standin)
                    row.update(bulk_bare_tasks_per_s=bare_rate, bulk_tasks_per_s=rate, bulk_over_bare=rate / bare_rate,
                               bulk_ls_requests=requests_made)
                print(f"round {r + 1}/{args.repeats}, {path}: bare {bare_rate:.2f} tasks/s, through backend + Redis + "
                      f"{args.workers} worker(s) {rate:.2f} tasks/s ({100 * rate / bare_rate:.0f}%)"
                      + (f", Label Studio requests {requests_made}" if path == "bulk" else ""), flush=True)
            rounds.append(row)
        del bare
        report["rounds"] = rounds
        for path, (bare_key, rate_key, ratio_key) in {
                "sync": ("bare_tasks_per_s", "queue_tasks_per_s", "queue_over_bare"),
                "bulk": ("bulk_bare_tasks_per_s", "bulk_tasks_per_s", "bulk_over_bare")}.items():
            if path in paths:
                for key in (bare_key, rate_key, ratio_key):
                    report[key] = statistics.median(r[key] for r in rounds)
                report[f"{ratio_key}_range"] = [min(r[ratio_key] for r in rounds), max(r[ratio_key] for r in rounds)]
        if "bulk" in paths:
            with standin.lock:
                stored = [{k: p[k] for k in ("result", "score")} for p in standin.predictions[:args.batch_size]]
            report["write_back_ms_per_job"] = write_back_ms(standin, stored, args.batch_size)
            report["bare_ms_per_job"] = 1000 * args.batch_size / report["bulk_bare_tasks_per_s"]
            report["bulk_ls_requests_per_task"] = {
                kind: sum(r["bulk_ls_requests"][kind] for r in rounds) / (args.repeats * args.tasks)
                for kind in rounds[0]["bulk_ls_requests"]}

        latencies = {"cached_image_new_text": [], "fresh_image": []}
        cached = task(base, 0, texts[0])
        first_fresh = blocks * args.tasks
        post_predict(url, [cached])  # the rounds' images may have left the entity cache since
        for i in range(args.interactive):
            context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                                   "value": {"text": [f"{TEXTS[i % len(TEXTS)]} number {i}"]}}]}
            t0 = time.perf_counter()
            post_predict(url, [cached], context=context)
            latencies["cached_image_new_text"].append(time.perf_counter() - t0)
            fresh = task(base, first_fresh + i, texts[i])
            t0 = time.perf_counter()
            post_predict(url, [fresh])
            latencies["fresh_image"].append(time.perf_counter() - t0)
        report["interactive_ms"] = {
            case: {"p50": 1000 * percentile(v, 50), "p95": 1000 * percentile(v, 95),
                   "mean": 1000 * statistics.fmean(v), "n": len(v)}
            for case, v in latencies.items()
        }
    finally:
        stop_processes(procs, timeout=30)
        redis.Redis.from_url(redis_url).flushdb()
        server.shutdown()
        standin.server.shutdown()
    report["load_average_end"] = os.getloadavg()

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"queue-{args.tag or args.device}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"\n| path, median of {args.repeats} rounds (load average {report['load_average_start'][0]:.1f} at the "
          f"start, {report['load_average_end'][0]:.1f} at the end) | tasks/s | queue / bare (rounds) |"
          "\n|---|---:|---:|")
    for path, (bare_key, rate_key, ratio_key, name) in {
            "sync": ("bare_tasks_per_s", "queue_tasks_per_s", "queue_over_bare", "sync /predict, 16 tasks a request"),
            "bulk": ("bulk_bare_tasks_per_s", "bulk_tasks_per_s", "bulk_over_bare",
                     f"bulk, written back to Label Studio ({args.ls_delay_ms:g} ms a request)")}.items():
        if path in paths:
            low, high = report[f"{ratio_key}_range"]
            print(f"| bare model (batch {args.batch_size}) | {report[bare_key]:.2f} | |"
                  f"\n| {name}, {args.workers} sag-worker | {report[rate_key]:.2f} | {100 * report[ratio_key]:.0f}% "
                  f"({100 * low:.0f}-{100 * high:.0f}%; goal >= 85%) |")
    if "bulk" in paths:
        print(f"one job's write-back ({args.batch_size} tasks, in this process): "
              f"{report['write_back_ms_per_job']:.0f} ms, against {report['bare_ms_per_job']:.0f} ms for the bare "
              "model's batch")
        print("Label Studio requests per task: " + ", ".join(
            f"{k} {v:.2f}" for k, v in report["bulk_ls_requests_per_task"].items()))
    print("\n| interactive /predict | p50 ms | p95 ms |\n|---|---:|---:|")
    for case, v in report["interactive_ms"].items():
        print(f"| {case.replace('_', ' ')} | {v['p50']:.0f} | {v['p95']:.0f} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
