"""After a promotion, pre-label again the tasks whose predictions came from older versions and that nobody touched.

"Untouched" means no annotation (submitted, skipped or cancelled) and no draft: once a person has worked on a task
its predictions are left alone. Tasks that never had a prediction are left to Label Studio's own "Retrieve
predictions". The new predictions go through the same path as ``/predict``
(:class:`backend.predictions.PredictionService`), so they are built by the same code, with the new ``model_version``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from ..labelstudio.results import prediction_records
from ..predictions import PredictionService
from ..runtime import Runtime
from ..versions import served_version

log = logging.getLogger(__name__)


def stale_tasks(tasks: list[dict[str, Any]], predictions: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    """Tasks with at least one prediction, none of them from ``version``, and no annotation or draft."""
    versions: dict[Any, set[Any]] = defaultdict(set)
    for prediction in predictions:
        versions[prediction.get("task")].add(prediction.get("model_version"))
    return [t for t in tasks
            if versions.get(t.get("id")) and version not in versions[t.get("id")]
            and not t.get("annotations") and not t.get("drafts")]


def refresh_prelabels(runtime: Runtime, predictions: PredictionService | None, project_id: int, label_config: str,
                      tasks: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """Re-predict the stale tasks of ``project_id`` with the serving ``version`` (a registry id); returns what was
    done."""
    ls = runtime.label_studio
    if ls is None or predictions is None:
        return {"tasks": 0, "detail": "no Label Studio client or inference dispatcher here; nothing refreshed"}
    # Label Studio holds the versions the answers carried: a placeholder's id with its suffix (backend.versions).
    version = served_version(runtime.registry, version)
    stale = stale_tasks(tasks, ls.predictions(project_id), version)
    if not stale:
        return {"tasks": 0}
    answer = predictions.predict([{"id": t["id"], "data": t["data"]} for t in stale], label_config, project_id)
    if "job" in answer:  # a big refresh: the inference workers write the predictions back themselves
        log.info("pre-label refresh of project %s: %d tasks queued as batch %s", project_id, len(stale),
                 answer["job"]["id"])
        return {"tasks": len(stale), "batch": answer["job"]}
    records = prediction_records([t["id"] for t in stale], answer["results"])
    written = ls.import_predictions_once(project_id, records)  # a retried job leaves one copy per task
    stored = written["stored"] + written["skipped"]
    log.info("pre-label refresh of project %s: %d of %d stale tasks re-predicted with %s", project_id, stored,
             len(stale), version)
    return {"tasks": len(stale), "stored": stored, "failed": len(stale) - len(records)}
