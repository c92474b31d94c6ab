"""HTTP routes for fine-tuning and model versions (beside the Label Studio protocol routes of :mod:`backend.app`).

    POST /training/<project>          queue fine-tuning of a project (what Start Training does); body {} or none
    GET  /training/<project>          the project's latest training job: stage, step / total, loss, result
    GET  /versions                    every stored version, oldest first, with lineage and metrics
    POST /versions/rollback           {"version": id} serves that version again ({} or none: the previous one)

They sit behind the same basic auth as the rest of the backend (BASIC_AUTH_USER / BASIC_AUTH_PASS). The two POSTs
change what the backend does, so they take only ``Content-Type: application/json`` (415 otherwise), even with no
body: a browser holding the basic-auth credentials would otherwise send them along with a form on another site.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from training.registry import RegistryError

from ..exceptions import BadRequest, json_type
from ..http_input import parse_json_object, require_json
from ..runtime import Runtime
from ..versions import registry_id
from .service import TrainingService

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("created_at", "parent", "preset", "trained", "trained_on", "metrics", "promotion", "label_studio")


def training_blueprint(runtime: Runtime, training: TrainingService) -> Blueprint:
    """The routes above, bound to this process's runtime and training service."""
    bp = Blueprint("training", __name__)

    def json_body() -> dict:
        """The body of a state-changing POST: sent as JSON (else 415), a JSON object or nothing ({} then)."""
        require_json(request.is_json, request.mimetype, f"POST {request.path}")
        raw = request.get_data(cache=True)
        return parse_json_object(raw) if raw.strip() else {}

    @bp.post("/training/<int:project_id>")
    def start(project_id: int) -> tuple[Response, int]:
        json_body()  # no fields yet; checked all the same, so that a form cannot start training
        answer = training.submit(project_id, "api")
        return jsonify(answer), 202 if answer["status"] == "queued" else 200

    @bp.get("/training/<int:project_id>")
    def latest(project_id: int) -> tuple[Response, int]:
        info = training.latest(project_id)
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
        # No version (an empty body or {}) means "the previous version"; a malformed body is refused rather than
        # read as "the previous version".
        version = json_body().get("version")
        if version is not None and not isinstance(version, str):
            raise BadRequest(f"'version' must be a version id string, got {json_type(version)}")
        if version is not None:
            version = registry_id(version)  # as copied from Label Studio, "+untrained" and all
        try:
            served = runtime.registry.rollback(version)
        except RegistryError as exc:  # its messages name version ids, never the registry's directory
            return jsonify(error=str(exc)), 404 if version else 409
        except OSError:  # e.g. the CURRENT file cannot be written; the path stays in the log
            log.exception("rollback to %s failed", version or "the previous version")
            return jsonify(error="the model registry could not be updated; see the backend's log"), 500
        return jsonify(current=served.id), 200

    return bp
