"""Versioned checkpoints: safetensors weights + JSON config + JSON metadata, written atomically.

A checkpoint directory holds::

    model.safetensors   all weights (fp32)
    config.json         SaGConfig
    metadata.json       version id, creation time, lineage, data, metrics (written last)
    text_config/        the text backbone's transformers config (structure only)
    tokenizer/          the tokenizer files

Everything is first written into a hidden temporary sibling directory and then renamed into place, so a reader never
sees a half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import SaGConfig

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METADATA = "metadata.json"


@dataclass
class CheckpointInfo:
    path: Path
    version: str
    metadata: dict[str, Any]


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_version_id(weights_sha256: str, when: datetime | None = None) -> str:
    """``<UTC timestamp>-<short hash>``, e.g. ``20261125T101500Z-3fa2b1c4``: sortable by time, tied to the weights."""
    when = when or datetime.now(timezone.utc)
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{weights_sha256[:8]}"


def save_pretrained(model: torch.nn.Module, directory: str | Path,
                    metadata: dict[str, Any] | None = None) -> CheckpointInfo:
    """Write ``model`` to ``directory`` (which must not exist yet) atomically and return its version.

    ``metadata`` is merged into the stored metadata; use it for lineage (``parent``), what the model was trained on
    (``trained_on``) and its ``metrics``. The weights are stored in fp32 whatever the model's dtype.
    """
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"checkpoint directory already exists: {directory}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        with open(tmp / WEIGHTS, "rb") as fh:
            os.fsync(fh.fileno())
        _write_json(tmp / CONFIG, model.config.to_dict())
        model.text_encoder.save_backbone_files(tmp)
        sha = file_sha256(tmp / WEIGHTS)
        now = datetime.now(timezone.utc)
        meta = {
            "format_version": FORMAT_VERSION,
            "version": make_version_id(sha, now),
            "created_at": now.isoformat(),
            "weights_sha256": sha,
            "parent": None,
            "trained_on": None,
            "metrics": {},
        }
        meta.update(metadata or {})
        meta["version"] = make_version_id(sha, now)  # never taken from the caller: it names these weights
        _write_json(tmp / METADATA, meta)
        _fsync_dir(tmp)
        os.rename(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo(directory, meta["version"], meta)


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint, without loading weights. Raises if the directory is not a complete checkpoint."""
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG, METADATA):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a complete SaG checkpoint: {name} is missing")
    with open(directory / METADATA, encoding="utf-8") as fh:
        return json.load(fh)


def read_checkpoint(directory: str | Path) -> tuple[SaGConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's config, fp32 state dict and metadata, after checking it is complete and of a format this code
    reads. Building the model from them is :func:`sag.model.load_pretrained`'s job, so this module never imports
    the model (persistence points one way: model -> checkpoint)."""
    directory = Path(directory)
    meta = read_metadata(directory)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{directory} has checkpoint format {meta['format_version']}; this sag reads up to "
                         f"{FORMAT_VERSION}")
    with open(directory / CONFIG, encoding="utf-8") as fh:
        config = SaGConfig.from_dict(json.load(fh))
    return config, load_file(str(directory / WEIGHTS)), meta
