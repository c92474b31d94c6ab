"""Stopping the real processes a test (or a benchmark) started: sag-backend, sag-worker, Label Studio.

One helper for all of them, so every caller stops its processes the same way: SIGTERM to all at once (a worker
finishes its job and deregisters, a server closes its port), then, for any still running after ``timeout`` seconds,
SIGKILL; each one is reaped, so no zombie outlives the test.
"""

from __future__ import annotations

import subprocess
from typing import Iterable


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 20) -> None:
    """Terminate ``procs`` (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap them."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
