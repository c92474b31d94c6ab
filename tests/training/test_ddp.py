"""sag-train under torchrun with two CPU processes (gloo): the DDP path end to end."""

import json
import os
import socket
import subprocess
import sys

import pytest

from sag import SaG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes(synthetic_root, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "training.cli", "--preset", "cpu-synthetic",
           "--format", "synthetic", "--data", str(synthetic_root), "--output", str(run), "--max-steps", "3",
           "--batch-size", "4", "--eval-every", "3", "--set", "model.image_size=32", "--set", "train.eval_limit=4",
           "--set", "train.log_every=1", "--quiet", "--device", "cpu", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only rank 0 reports"
    assert summaries[0]["steps"] == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 4)), "rank 0 logs each step once"
    state = __import__("torch").load(run / "checkpoints" / "step-00000003" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2
    SaG.from_pretrained(run / "checkpoints" / "step-00000003")
