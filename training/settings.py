"""Every environment-level setting of training and evaluation, read in this one place.

CLI flags override these (``sag-train --device cuda``); the library functions take explicit arguments and read
nothing from the environment themselves.

=====================  ===========================================================================
``SAG_DEVICE``         ``cpu``, ``cuda[:n]`` or ``auto`` (default)
``SAG_DATA_ROOT``      where data sets live (default ``data``)
``SAG_RUNS_DIR``       where training runs write checkpoints and metrics (default ``runs``)
``SAG_NUM_THREADS``    CPU threads for torch (default: torch's choice; 0 = torch's choice)
=====================  ===========================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping


class SettingsError(ValueError):
    """A setting has a value training cannot use; the message names the variable."""


@dataclass(frozen=True)
class TrainingSettings:
    device: str = "auto"
    data_root: Path = Path("data")
    runs_dir: Path = Path("runs")
    num_threads: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TrainingSettings":
        env = os.environ if env is None else env
        raw_threads = env.get("SAG_NUM_THREADS", "").strip() or "0"
        try:
            threads = int(raw_threads)
        except ValueError:
            raise SettingsError(f"SAG_NUM_THREADS must be an integer, got {raw_threads!r}") from None
        if threads < 0:
            raise SettingsError(f"SAG_NUM_THREADS must be >= 0, got {threads}")
        return cls(
            device=env.get("SAG_DEVICE", "").strip() or "auto",
            data_root=Path(env.get("SAG_DATA_ROOT", "").strip() or "data"),
            runs_dir=Path(env.get("SAG_RUNS_DIR", "").strip() or "runs"),
            num_threads=threads,
        )

    def override(self, **flags: Any) -> "TrainingSettings":
        """These settings with every CLI flag that was given (not None) applied."""
        given = {k: (Path(v) if k in ("data_root", "runs_dir") else v) for k, v in flags.items() if v is not None}
        return replace(self, **given)

    def apply_threads(self) -> None:
        if self.num_threads > 0:
            import torch

            torch.set_num_threads(self.num_threads)
