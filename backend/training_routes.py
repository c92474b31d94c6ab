"""HTTP routes for fine-tuning and model versions (beside the Label Studio protocol routes of :mod:`backend.app`).

    POST /training/<project>          queue fine-tuning of a project (what Start Training does)
    GET  /training/<project>          the project's latest training job: stage, step / total, loss, result
    GET  /versions                    every stored version, oldest first, with lineage and metrics
    POST /versions/rollback           {"version": id} serves that version again (default: the previous one)

They sit behind the same basic auth as the rest of the backend (BASIC_AUTH_USER / BASIC_AUTH_PASS).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from training.registry import RegistryError

from .runtime import Runtime
from .training_jobs import training_service

SUMMARY_KEYS = ("created_at", "parent", "preset", "trained", "trained_on", "metrics", "promotion", "label_studio")


def training_blueprint(runtime: Runtime, dispatcher: Any) -> Blueprint:
    """The routes above, bound to this process's runtime and inference dispatcher."""
    bp = Blueprint("training", __name__)

    def service():  # type: ignore[no-untyped-def]
        return training_service(runtime, dispatcher)

    @bp.post("/training/<int:project_id>")
    def start(project_id: int) -> tuple[Response, int]:
        answer = service().submit(project_id, "api")
        return jsonify(answer), 202 if answer["status"] == "queued" else 200

    @bp.get("/training/<int:project_id>")
    def latest(project_id: int) -> tuple[Response, int]:
        info = service().latest(project_id)
        if info is None:
            return jsonify(error=f"no training job for project {project_id}"), 404
        return jsonify(info), 200

    @bp.get("/versions")
    def versions() -> tuple[Response, int]:
        registry = runtime.registry
        current = registry.current()
        listed = [{"version": v.id, "current": v.id == current,
                   **{k: v.metadata.get(k) for k in SUMMARY_KEYS if k in v.metadata}} for v in registry.versions()]
        return jsonify(current=current, history=registry.history(), versions=listed), 200

    @bp.post("/versions/rollback")
    def rollback() -> tuple[Response, int]:
        payload = request.get_json(silent=True) or {}
        version = payload.get("version") if isinstance(payload, dict) else None
        if version is not None and not isinstance(version, str):
            return jsonify(error="'version' must be a version id string"), 400
        try:
            served = runtime.registry.rollback(version)
        except RegistryError as exc:
            return jsonify(error=str(exc)), 404 if version else 409
        return jsonify(current=served.id), 200

    return bp


def training_job_status(runtime: Runtime, dispatcher: Any, job_id: str) -> dict[str, Any] | None:
    """A training job by id (for ``/jobs/<id>``), or None."""
    return training_service(runtime, dispatcher).get(job_id)
