"""Shared fixtures for the backend tests: a tiny model registry, real photos, the example labelling config, a real
local HTTP server, a Redis database of our own and real ``sag-worker`` processes; and, for every test, the secrets
registry of ``backend.redact`` restored afterwards."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from backend import redact
from backend.labelstudio.labeling_config import parse_labeling_config
from sag import SaG, tiny_config
from tests.processes import stop_processes
from training.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Text name="text" value="$text"/>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1"/>
  <BrushLabels name="mask" toName="image">
    <Label value="Person" predicted_values="man,woman,astronaut"/>
    <Label value="Cat"/>
    <Label value="Object"/>
  </BrushLabels>
</View>
"""


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def wait_for(condition: Callable[[], object], timeout: float, what: str):
    """Poll ``condition`` every 0.1 s until it is truthy and return its value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)
    return value


@pytest.fixture(autouse=True)
def restore_redact_registry() -> Iterator[None]:
    """Each test leaves ``backend.redact``'s secrets as it found them. Apps, clients and workers register secrets
    process-wide (``create_app``, the Label Studio client's access tokens); kept, one test's key would be scrubbed
    from every later test's answers and logs, and a test of the registry would see the secrets of the tests before
    it."""
    with redact._lock:
        static, rotating, secrets = set(redact._static), list(redact._rotating), redact._secrets
    yield
    with redact._lock:
        redact._static.clear()
        redact._static.update(static)
        redact._rotating[:] = rotating
        redact._secrets = secrets


@pytest.fixture(scope="module")
def example_config():
    """examples/label-config.xml: Person (predicted_values man, woman, ...), Animal (cat, dog, ...), Object."""
    return parse_labeling_config((ROOT / "examples" / "label-config.xml").read_text())


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs bundled with scikit-image (public domain / CC0)."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding one promoted tiny (random) model version; shared read-only by the session."""
    root = tmp_path_factory.mktemp("models")
    registry = Registry(root)
    torch_seed_model = SaG(tiny_config())
    registry.promote(registry.add(torch_seed_model, {"preset": "tiny", "trained": False}).id)
    return root


@dataclass
class Served:
    """What the local server hands out and what it saw."""

    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (body, content type)
    redirects: dict[str, str] = field(default_factory=dict)
    slow: dict[str, float] = field(default_factory=dict)  # path -> seconds before the body
    token: str | None = None  # when set, /data/ paths need "Authorization: Token <token>"
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    posted: list[tuple[str, object]] = field(default_factory=list)
    # Label Studio's prediction API, as the real server behaves for the calls the backend makes: an import stores
    # each prediction with a new id; GET /api/predictions/?task=N lists a task's; DELETE /api/predictions/<id>/.
    predictions: list[dict] = field(default_factory=list)
    # Test hook run on each import before anything is stored (it may block, e.g. on an Event): returns the HTTP
    # status to answer and whether Label Studio stores the predictions (a 5xx after storing is a proxy timeout).
    on_import: Callable[[list], tuple[int, bool]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    prediction_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))  # never reused, as in a DB

    def prediction_counts(self) -> dict[tuple[int, str], int]:
        """How many stored predictions each (task, model_version) has."""
        with self.lock:
            counts: dict[tuple[int, str], int] = {}
            for p in self.predictions:
                counts[(p["task"], p["model_version"])] = counts.get((p["task"], p["model_version"]), 0) + 1
            return counts


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args: object) -> None:
        pass

    def _record(self, body: bytes = b"") -> None:
        self.served.requests.append((self.command, self.path, dict(self.headers), body))

    def _json_answer(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed while Label Studio worked on its request

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        path = self.path
        if urlsplit(path).path == "/api/predictions/" and path not in self.served.files:
            query = parse_qs(urlsplit(path).query)
            with self.served.lock:
                found = [dict(p) for p in self.served.predictions
                         if all(str(p[field]) in query[field] for field in ("task", "project") if field in query)]
            self._json_answer(200, found)
            return
        if path in self.served.redirects:
            self.send_response(302)
            self.send_header("Location", self.served.redirects[path])
            self.end_headers()
            return
        if path.startswith("/data/") and self.served.token is not None:
            if self.headers.get("Authorization") != f"Token {self.served.token}":
                self.send_response(401)
                self.end_headers()
                return
        if path not in self.served.files:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<h1>not found</h1>")
            return
        body, ctype = self.served.files[path]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in self.served.slow:
            time.sleep(self.served.slow[path])  # a slow storage server, not a test delay
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_DELETE(self) -> None:  # noqa: N802
        self._record()
        match = re.fullmatch(r"/api/predictions/(\d+)/", self.path)
        with self.served.lock:
            before = len(self.served.predictions)
            if match:
                self.served.predictions[:] = [p for p in self.served.predictions if p["id"] != int(match.group(1))]
            gone = len(self.served.predictions) < before
        if gone:
            self.send_response(204)
            self.end_headers()
        else:
            self._json_answer(404, {"detail": "Not found."})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self._record(body)
        payload = json.loads(body or b"null")
        self.served.posted.append((self.path, payload))
        imported = re.fullmatch(r"/api/projects/(\d+)/import/predictions", self.path)
        if imported and isinstance(payload, list):
            status, store = self.served.on_import(payload) if self.served.on_import else (201, True)
            if store:
                with self.served.lock:
                    for p in payload:
                        self.served.predictions.append({**p, "id": next(self.served.prediction_ids),
                                                        "project": int(imported.group(1))})
            self._json_answer(status, {"created": len(payload)} if status < 400 else {"detail": "Gateway Timeout"})
            return
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        created = len(payload) if isinstance(payload, list) else 1
        self.wfile.write(json.dumps({"created": created}).encode())


@pytest.fixture
def http_server() -> Iterator[tuple[str, Served]]:
    """A real HTTP server on 127.0.0.1 serving test files (and recording requests), stopped after the test."""
    served = Served()
    handler = type("Handler", (_Handler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def claim_redis_db() -> Iterator[str]:
    """The URL of an empty database on the real Redis at 127.0.0.1:6379, claimed for the caller and emptied after.
    Skips the test when Redis is not running."""
    import redis

    probe = redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=2)
    try:
        probe.ping()
    except redis.RedisError:
        pytest.skip("Redis is not listening on 127.0.0.1:6379")
    marker = f"sag-test-owner:{uuid.uuid4().hex}"
    for db in range(15, 1, -1):
        conn = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
        # Claim only an empty database, atomically, so parallel test runs never share one.
        if conn.dbsize() == 0 and conn.set("sag-test-lock", marker, nx=True):
            try:
                yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
            finally:
                conn.flushdb()
            return
    pytest.skip("no empty Redis database (2-15) to use")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of this test's own (see :func:`claim_redis_db`)."""
    with claim_redis_db() as url:
        yield url


@pytest.fixture
def start_workers(redis_url: str, registry_dir: Path) -> Iterator[Callable[..., list[subprocess.Popen]]]:
    """Start real ``sag-worker`` processes (stopped after the test) on this test's Redis database."""
    procs: list[subprocess.Popen] = []

    def start(count: int = 1, model_dir: Path | None = None, **env: str) -> list[subprocess.Popen]:
        import redis
        from rq import Worker

        from backend.keys import INFERENCE_QUEUE

        environment = {**os.environ, "REDIS_URL": redis_url, "SAG_MODEL_DIR": str(model_dir or registry_dir),
                       "SAG_DEVICE": "cpu", "SAG_WORKER_HEARTBEAT": "1", "HF_HUB_OFFLINE": "1",
                       "SAG_ALLOWED_HOSTS": "127.0.0.1", "LOG_LEVEL": "INFO", **env}
        new = [subprocess.Popen([sys.executable, "-m", "backend.worker", "--name", f"w{len(procs) + i}-{os.getpid()}"],
                                env=environment) for i in range(count)]
        procs.extend(new)
        conn = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 120
        from rq import Queue

        queue = Queue(INFERENCE_QUEUE, connection=conn)
        while Worker.count(queue=queue) < len(procs):
            assert all(p.poll() is None for p in procs), "a sag-worker exited during start-up"
            assert time.monotonic() < deadline, "sag-worker did not register within 120 s"
            time.sleep(0.2)
        return new

    yield start
    stop_processes(procs)
