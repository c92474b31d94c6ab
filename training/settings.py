"""Every environment-level setting of training and evaluation, read in this one place.

CLI flags override these (``sag-train --device cuda``); the library functions take explicit arguments and read
nothing from the environment themselves.

=====================  ===========================================================================
``SAG_DEVICE``         ``cpu``, ``cuda[:n]`` or ``auto`` (default)
``SAG_DATA_ROOT``      where data sets live (default ``data``)
``SAG_RUNS_DIR``       where training runs write checkpoints and metrics (default ``runs``)
``SAG_NUM_THREADS``    CPU threads for torch (default: torch's choice; 0 = torch's choice)
``SAG_MODEL_DIR``      the checkpoint registry of ``sag-models`` (default ``models``)
``REDIS_URL``          Redis holding the registry's current-version pointer (default: none, files)
``WORLD_SIZE``         processes in a ``torchrun`` job (set by torchrun; default 1: no DDP)
``LOCAL_RANK``         this process's GPU index on its node (set by torchrun; default 0)
=====================  ===========================================================================

``SAG_MODEL_DIR`` and ``REDIS_URL`` are the backend's variables as well (``backend/settings.py`` reads them the same
way), so ``sag-models`` and the backend find the same registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from .exceptions import SettingsError


def read_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0,
             error: type[SettingsError] = SettingsError) -> int:
    """The integer variable ``name`` (``default`` when unset or blank); ``error`` naming it when it is not an integer
    or is below ``minimum``. The backend reads its integers with this too, raising its own ``SettingsError``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class TrainingSettings:
    device: str = "auto"
    data_root: Path = Path("data")
    runs_dir: Path = Path("runs")
    num_threads: int = 0
    world_size: int = 1  # torchrun's, > 1 under DDP
    local_rank: int = 0  # torchrun's

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TrainingSettings":
        env = os.environ if env is None else env
        return cls(
            device=env.get("SAG_DEVICE", "").strip() or "auto",
            data_root=Path(env.get("SAG_DATA_ROOT", "").strip() or "data"),
            runs_dir=Path(env.get("SAG_RUNS_DIR", "").strip() or "runs"),
            num_threads=read_int(env, "SAG_NUM_THREADS", 0),
            world_size=read_int(env, "WORLD_SIZE", 1, minimum=1),
            local_rank=read_int(env, "LOCAL_RANK", 0),
        )

    def override(self, **flags: Any) -> "TrainingSettings":
        """These settings with every CLI flag that was given (not None) applied."""
        given = {k: (Path(v) if k in ("data_root", "runs_dir") else v) for k, v in flags.items() if v is not None}
        return replace(self, **given)

    def apply_threads(self) -> None:
        if self.num_threads > 0:
            import torch

            torch.set_num_threads(self.num_threads)


@dataclass(frozen=True)
class RegistrySettings:
    """Where the checkpoint registry lives. Apart from :class:`TrainingSettings` so that ``sag-models`` neither
    needs nor validates the training variables."""

    model_dir: Path = Path("models")
    redis_url: str | None = None  # None: the current-version pointer is a file in model_dir

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RegistrySettings":
        env = os.environ if env is None else env
        return cls(model_dir=Path(env.get("SAG_MODEL_DIR") or "models"), redis_url=env.get("REDIS_URL") or None)
