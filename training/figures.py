"""A version's measured figures: what a benchmark said about its masks, kept in the version's metadata.

Each benchmark that scores a version writes one record under ``metadata["measured"][<benchmark>]``; a later run of
the same benchmark replaces it. Reading them is cheap (one JSON file, no model), so ``/health`` and ``sag-models
list`` show the serving version's last figures, and ``sag-models import`` can reuse a figure measured on the same
data instead of measuring again. A record::

    {"mIoU": 0.21, "cIoU": 0.25, "acc@0.5": 0.08, "texts": 74,
     "inference": "served", "data": "<sha256 of the benchmark data>", "split": "test",
     "measured_at": "2025-01-01T00:00:00+00:00", "code": "sag-assist 0.1.0 (git 1a2b3c4)"}

Benchmarks: :data:`SYNTHETIC` (``sag-eval --record`` on the synthetic data set) and :data:`REAL_PHOTOS`
(:mod:`training.real_photos`, run by ``sag-models import`` and ``bench/real_photos.py --record``). Records are
written by :func:`training.registry.record_figure`; this module only makes, reads and describes them.
"""

from __future__ import annotations

import contextlib
import subprocess
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Mapping

MEASURED = "measured"  # the metadata key
SYNTHETIC = "synthetic"
REAL_PHOTOS = "real_photos"
BENCHMARKS: tuple[str, ...] = (SYNTHETIC, REAL_PHOTOS)  # the ones /health and `sag-models list` show
NOT_MEASURED = "not measured"
# The summary fields every record carries; a record without them is reported as not measured.
FIGURE_KEYS: tuple[str, ...] = ("mIoU", "acc@0.5", "texts")
LABELS = {SYNTHETIC: "synthetic", REAL_PHOTOS: "real photos"}
_ROOT = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """The code that measured: the package version, and the git commit when running from a checkout."""
    try:
        version = f"sag-assist {package_metadata.version('sag-assist')}"
    except package_metadata.PackageNotFoundError:
        version = "sag-assist (not installed)"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            version += f" (git {done.stdout.strip()})"
    return version


def make_figure(summary: Mapping[str, Any], texts: int, data: str, inference: str, **extra: Any) -> dict[str, Any]:
    """A record for :func:`training.registry.record_figure` from a benchmark's summary over all texts (``mIoU``,
    ``acc@0.5``, and ``cIoU`` if it has one), the number of texts scored, a fingerprint of the data (``data``: equal
    fingerprints mean the same texts and masks) and the inference (e.g. ``"served"``); ``extra`` is kept as given."""
    for key in ("mIoU", "acc@0.5"):
        if not isinstance(summary.get(key), (int, float)):
            raise ValueError(f"the benchmark summary has no {key!r}: {dict(summary)}")
    record = {"mIoU": round(float(summary["mIoU"]), 4), "acc@0.5": round(float(summary["acc@0.5"]), 4),
              "texts": int(texts), "inference": inference, "data": data,
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": code_version()}
    if isinstance(summary.get("cIoU"), (int, float)):
        record["cIoU"] = round(float(summary["cIoU"]), 4)
    record.update(extra)
    return record


def measured(metadata: Mapping[str, Any], benchmark: str) -> dict[str, Any] | None:
    """The record of ``benchmark`` in a version's metadata, or ``None`` when it was never measured there."""
    record = (metadata.get(MEASURED) or {}).get(benchmark)
    if not isinstance(record, Mapping) or not all(key in record for key in FIGURE_KEYS):
        return None
    return dict(record)


def figures(metadata: Mapping[str, Any]) -> dict[str, dict[str, Any] | str]:
    """Each of :data:`BENCHMARKS` -> its record, or :data:`NOT_MEASURED` (what ``/health`` reports)."""
    return {name: measured(metadata, name) or NOT_MEASURED for name in BENCHMARKS}


def describe(record: Mapping[str, Any] | None) -> str:
    """One line for people: ``"mIoU 0.210, acc@0.5 0.08 (74 texts)"``, or ``"not measured"``."""
    if not record:
        return NOT_MEASURED
    return f"mIoU {record['mIoU']:.3f}, acc@0.5 {record['acc@0.5']:.2f} ({record['texts']} texts)"
