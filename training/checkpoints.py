"""A training run's checkpoints on disk: writing and reading them atomically, listing, pruning, the best pointer.

Layout of a run directory (``sag-train --output``, the fine-tuning job's workdir)::

    best.json                        the best checkpoint so far by validation mIoU (written only once there is one)
    checkpoints/step-00001000/       the model, as sag.checkpoint.save_pretrained writes it, plus
        trainer_state.pt             optimizer, grad scaler, RNG states, step, position in the epoch, best metric

A checkpoint is assembled under the hidden name ``.step-00001000.partial`` and renamed into place, so under its final
name it either exists complete or not at all; :func:`list_checkpoints` sees only complete ones. The model's own file
names come from :mod:`sag.checkpoint`; this module adds only what a training run keeps on top of them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sag import SaG, SaGConfig
from sag.checkpoint import CONFIG, WEIGHTS

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
BEST = "best.json"
_PREFIX = "step-"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` lives in a run directory (``checkpoints/step-00001000``)."""
    return Path(output_dir) / CHECKPOINTS / f"{_PREFIX}{step:08d}"


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint directory was written at, read from its name."""
    return int(path.name.split("-")[1])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first (hidden partial ones are ignored)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=checkpoint_step)


def write_checkpoint(model: SaG, final: Path, trainer_state: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write ``model`` (with ``metadata``) and ``trainer_state`` as the checkpoint directory ``final``, atomically.

    A partial directory left by a run killed mid-write is discarded first: it was never renamed into place, so
    nothing can depend on it.
    """
    partial = final.parent / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, metadata=metadata)
    tmp_state = partial / f".{TRAINER_STATE}.tmp"
    torch.save(trainer_state, tmp_state)
    os.replace(tmp_state, partial / TRAINER_STATE)
    os.rename(partial, final)


def check_model_config(path: Path, config: SaGConfig) -> None:
    """Raise ValueError when the checkpoint at ``path`` was trained with a model config other than ``config``.

    Compared on the stored JSON, before any weights are read, so a mismatch names the differing fields instead of
    failing later on a tensor shape.
    """
    with open(path / CONFIG, encoding="utf-8") as fh:
        saved = json.load(fh)
    current = config.to_dict()
    if saved != current:
        diff = sorted(k for k in saved if saved[k] != current.get(k))
        raise ValueError(f"checkpoint {path} was trained with a different model config (differs in {diff})")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state (optimizer, scaler, RNG, counters, config) stored with the checkpoint at ``path``."""
    # weights_only=False: the state holds numpy's RNG tuple and plain Python objects, and the file is our own.
    return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)


def read_weights(path: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The model state dict of the checkpoint at ``path``, loaded straight onto ``device``."""
    from safetensors.torch import load_file

    return load_file(str(path / WEIGHTS), device=str(device))


def write_best(output_dir: Path, best: Path, metric: float | None) -> None:
    """Point ``best.json`` at the checkpoint ``best`` and its validation mIoU (replaced atomically)."""
    tmp = output_dir / f".{BEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"checkpoint": str(best), "step": checkpoint_step(best), "val_mIoU": metric}, fh)
    os.replace(tmp, output_dir / BEST)


def prune_checkpoints(output_dir: Path, keep_last: int, keep: Path | None = None) -> None:
    """Delete all complete checkpoints but the newest ``keep_last`` and ``keep`` (the best one)."""
    checkpoints = list_checkpoints(output_dir)
    newest = set(checkpoints[-keep_last:])
    for path in checkpoints:
        if path not in newest and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step draws from (Python, numpy, torch CPU and CUDA), for an exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured; CUDA states are skipped when this process has no CUDA."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
