"""A real Label Studio (headless, its own virtual environment) and a real sag-backend, for the e2e suite.

Run with ``bash scripts/e2e.sh`` (it builds ``.venv-labelstudio``); skipped otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from tests.processes import stop_processes

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("SAG_E2E_LS_VENV", ROOT / ".venv-labelstudio"))
TOKEN = "sag-e2e-legacy-token-0123456789"
EMAIL, PASSWORD = "e2e@example.com", "e2e-password-123"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SAG_E2E") == "1" and (LS_VENV / "bin" / "label-studio").exists():
        return
    skip = pytest.mark.skip(reason="end-to-end suite: run `bash scripts/e2e.sh` (needs .venv-labelstudio)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited; log:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout} s; log:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def label_studio_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Label Studio's data directory (its SQLite database is ``label_studio.sqlite3``); local files under
    ``files/``."""
    return tmp_path_factory.mktemp("label-studio")


@pytest.fixture(scope="session")
def label_studio(label_studio_data: Path) -> Iterator[str]:
    """Label Studio 1.23.2 on localhost with a superuser whose legacy token is TOKEN, started by
    ``scripts/label-studio.sh`` (the recipe users run), with local files served from ``label_studio_data/files``."""
    port = free_port()
    env = {**os.environ, "SAG_LS_PORT": str(port), "SAG_LS_DATA": str(label_studio_data),
           "SAG_LS_VENV": str(LS_VENV), "LABEL_STUDIO_USERNAME": EMAIL, "LABEL_STUDIO_PASSWORD": PASSWORD,
           "LABEL_STUDIO_USER_TOKEN": TOKEN}
    env.pop("LOCAL_FILES_DOCUMENT_ROOT", None)  # the script's default: <data>/files
    log = label_studio_data / "script.log"
    with open(log, "w") as out:
        # The script starts Label Studio in the background and waits on it; SIGTERM to the script stops both.
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "label-studio.sh")], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 600, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_processes([proc], timeout=30)


@pytest.fixture
def start_backend(label_studio: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``sag-backend`` (and, with ``redis_url``, one ``sag-worker``) on a fresh registry whose initial version
    comes from SAG_E2E_PRESET (default tiny); returns the backend URL. Stopped after the test."""
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(redis_url: str | None = None, **extra: str) -> str:
        port = free_port()
        env = {**os.environ, "PORT": str(port), "SAG_MODEL_DIR": str(tmp_path / "models"),
               "SAG_INIT_PRESET": os.environ.get("SAG_E2E_PRESET", "tiny"), "LABEL_STUDIO_URL": label_studio,
               "LABEL_STUDIO_API_KEY": TOKEN, "HF_HUB_OFFLINE": "1", "SAG_DEVICE": "cpu", **extra}
        env.pop("REDIS_URL", None)
        if redis_url:
            env["REDIS_URL"] = redis_url
            log = tmp_path / "worker.log"
            with open(log, "w") as out:
                procs.append((subprocess.Popen([sys.executable, "-m", "backend.worker"], env=env, stdout=out,
                                               stderr=subprocess.STDOUT, cwd=ROOT), log))
        log = tmp_path / "backend.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "backend.app"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", 300, proc, log)
        if redis_url:
            deadline = time.monotonic() + 120
            while requests.get(f"{url}/health", timeout=5).json()["workers"] < 1:
                assert time.monotonic() < deadline, "sag-worker did not register"
                time.sleep(0.5)
        return url

    yield start
    stop_processes((proc for proc, _ in procs), timeout=30)
    for _, log in procs:
        assert TOKEN not in log.read_text(), f"the API key appeared in {log.name}"
