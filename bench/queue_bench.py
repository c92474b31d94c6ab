"""Queue overhead: bulk pre-labelling through the backend, Redis and sag-worker processes against the bare model.

Both sides run the same checkpoint on the same machine with the same number of model processes:

* **bare**: this process decodes each image, then runs ``encode_image`` + ``encode_text`` + ``segment`` in batches
  of ``--batch-size``; no HTTP, no queue, no RLE;
* **queue**: a real ``sag-backend`` (Redis mode) and ``--workers`` real ``sag-worker`` processes; the tasks go in
  concurrent ``/predict`` requests of at most 16 tasks (Label Studio's synchronous path), images fetched over HTTP
  from a local server, masks returned as brush RLE.

Every task has its own image (no entity-cache hits), so the comparison is fair to the bare model. The two sides
alternate for ``--repeats`` rounds, each round on new images, and the ratio is taken per round: on a small shared
machine a single pair of runs can be off by 10 % either way. Then the latency of single interactive ``/predict``
calls: a new text on an image the worker has cached, and on a fresh image.

    python bench/queue_bench.py --tasks 200 --workers 1 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
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

import numpy as np
import redis
import requests
import torch
from PIL import Image

from rq import Queue, Worker

from backend.presets import build_initial_model
from backend.keys import INFERENCE_QUEUE
from sag import SaG
from training.registry import Registry

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


def bare_throughput(model: SaG, images: list[bytes], texts: list[str], batch_size: int, device) -> float:
    """Tasks/s of the model alone: decode, preprocess, image side, text side, masks at full size."""
    start = time.perf_counter()
    for lo in range(0, len(images), batch_size):
        batch = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[lo:lo + batch_size]]
        with torch.inference_mode():
            ent = model.encode_image(model.preprocess(batch))
            text = model.encode_text(**model.tokenize(texts[lo:lo + batch_size]))
            segs = model.segment(ent, text, [(im.height, im.width) for im in batch])
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


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of bare vs queue, each on new images")
    parser.add_argument("--preset", default="mobilenet-minilm", help="backend.presets name of the model to serve")
    parser.add_argument("--image-side", type=int, default=512)
    parser.add_argument("--interactive", type=int, default=30, help="single /predict calls per latency case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    workdir = Path(tempfile.mkdtemp(prefix="sag-queue-bench-"))
    db = empty_redis_db()
    redis_url = f"redis://127.0.0.1:6379/{db}"
    # Workers in Redis mode read the serving version from Redis, so promote through a Redis-backed registry.
    registry = Registry(workdir / "models", redis=redis.Redis.from_url(redis_url))
    model, meta = build_initial_model(args.preset)
    version = registry.promote(registry.add(model, meta).id).id
    del model
    # Images: one block of --tasks per round, then the fresh interactive ones, then one for warming up.
    images = distinct_images(args.repeats * args.tasks + args.interactive + 1, args.image_side)
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(images))]
    base, server = serve_images(images)
    report = {"created_at": datetime.now(timezone.utc).isoformat(), "tasks": args.tasks, "workers": args.workers,
              "batch_size": args.batch_size, "repeats": args.repeats, "preset": args.preset,
              "image_side": args.image_side,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "device": args.device}}

    # ---- the backend, Redis and workers, started once ------------------------------------------------------------
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SAG_MODEL_DIR": str(registry.root), "SAG_DEVICE": args.device,
           "SAG_ALLOWED_HOSTS": "127.0.0.1", "SAG_BATCH_SIZE": str(args.batch_size), "PORT": str(port),
           "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
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
            ids = list(range(r * args.tasks, (r + 1) * args.tasks))
            bare_rate = bare_throughput(bare, [images[i] for i in ids], [texts[i] for i in ids], args.batch_size,
                                        device)
            queue_rate = queue_throughput(url, base, ids, texts)
            rounds.append({"bare_tasks_per_s": bare_rate, "queue_tasks_per_s": queue_rate,
                           "queue_over_bare": queue_rate / bare_rate})
            print(f"round {r + 1}/{args.repeats}: bare {bare_rate:.2f} tasks/s, through backend + Redis + "
                  f"{args.workers} worker(s) {queue_rate:.2f} tasks/s ({100 * queue_rate / bare_rate:.0f}%)",
                  flush=True)
        del bare
        report["rounds"] = rounds
        for key in ("bare_tasks_per_s", "queue_tasks_per_s", "queue_over_bare"):
            report[key] = statistics.median(r[key] for r in rounds)
        report["queue_over_bare_range"] = [min(r["queue_over_bare"] for r in rounds),
                                           max(r["queue_over_bare"] for r in rounds)]

        latencies = {"cached_image_new_text": [], "fresh_image": []}
        cached = task(base, 0, texts[0])
        first_fresh = args.repeats * args.tasks
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
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.Redis.from_url(redis_url).flushdb()
        server.shutdown()

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"queue-{args.tag or args.device}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    low, high = report["queue_over_bare_range"]
    print(f"\n| path, median of {args.repeats} rounds | tasks/s |\n|---|---:|"
          f"\n| bare model (batch {args.batch_size}) | {report['bare_tasks_per_s']:.2f} |"
          f"\n| backend + Redis + {args.workers} sag-worker | {report['queue_tasks_per_s']:.2f} |"
          f"\n| queue / bare, per round | {100 * report['queue_over_bare']:.0f}% (rounds {100 * low:.0f}-"
          f"{100 * high:.0f}%; goal >= 85%) |")
    print("\n| interactive /predict | p50 ms | p95 ms |\n|---|---:|---:|")
    for case, v in report["interactive_ms"].items():
        print(f"| {case.replace('_', ' ')} | {v['p50']:.0f} | {v['p95']:.0f} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
