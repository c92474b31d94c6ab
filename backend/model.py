"""The ML backend model, with the contract of label-studio-ml's ``LabelStudioMLBase``: ``setup``,
``predict(tasks, context)`` and ``fit(event, data)``.

As there, an instance is made per request and is cheap: ``create_app`` builds the services once (as
label-studio-ml's ``init_app(model_class=...)`` does) and hands them to each instance. The SaG weights live in the
worker processes (or, in embedded mode, in this process's runtime), and the serving version is read from the registry
on every call. Predicting is :class:`backend.predictions.PredictionService`'s work, fine-tuning
:class:`backend.finetune.service.TrainingService`'s.
"""

from __future__ import annotations

import re
from typing import Any

from .exceptions import BadRequest, json_type
from .finetune.service import TrainingService
from .predictions import PredictionService, servable_config
from .runtime import Runtime
from .versions import served_version

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")

_PROJECT_ID = re.compile(r"\s*(\d{1,18})(?:\.\d{0,20})?\s*")  # "<id>" or "<id>.<created timestamp>"


def project_id_of(project: Any) -> int | None:
    """The project id of a request's ``project`` field: Label Studio sends ``"<id>.<created timestamp>"`` to
    /predict and /setup and a project object (with ``id``) to /webhook; a plain id is accepted too. None when the
    field is absent, null or empty; :class:`~backend.exceptions.BadRequest` naming the field for anything else (a
    negative or fractional number, a list, a string that is not an id)."""
    field = "project"
    if isinstance(project, dict):
        field, project = "project.id", project.get("id")
    if project is None or project == "":
        return None
    if isinstance(project, int) and not isinstance(project, bool) and 0 <= project < 10**18:
        return project
    if isinstance(project, str) and (match := _PROJECT_ID.fullmatch(project)):
        return int(match.group(1))
    short = (isinstance(project, str) and len(project) <= 40 or isinstance(project, float)
             or isinstance(project, int) and not isinstance(project, bool) and project.bit_length() <= 128)
    shown = f" {project!r}" if short else ""
    raise BadRequest(f"'{field}' must be a Label Studio project id (a non-negative integer, \"<id>.<timestamp>\" "
                     f"or an object with an \"id\"), got {json_type(project)}{shown}")


class SaGModel:
    """Referring-text segmentation for Label Studio."""

    def __init__(self, runtime: Runtime, predictions: PredictionService, training: TrainingService,
                 project_id: int | None = None, label_config: str | None = None):
        self.runtime = runtime
        self.settings = runtime.settings
        self.predictions = predictions
        self.training = training
        self.project_id = project_id
        self.label_config = label_config

    @property
    def model_version(self) -> str | None:
        """The serving checkpoint version as Label Studio sees it (shared through Redis, or the registry's CURRENT
        file): the registry id, with ``+untrained`` or ``+unchecked`` for a placeholder (:mod:`backend.versions`)."""
        return served_version(self.runtime.registry)

    def setup(self) -> dict[str, Any]:
        """Check the config can be served and report the model version (Label Studio calls this before predicting)."""
        if self.label_config:
            servable_config(self.label_config, self.settings.text_field)
        return {"model_version": self.model_version}

    def predict(self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None,
                **kwargs: Any) -> dict[str, Any]:
        """One answer per task, in order. Small or interactive requests wait for their jobs; larger ones return at
        once with an empty answer per task and the workers store the predictions through Label Studio's API."""
        return self.predictions.predict(tasks, self.label_config, self.project_id, context)

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Webhook events, answered at once (Label Studio waits 1 s for annotation events, 100 s for
        START_TRAINING): START_TRAINING queues fine-tuning of the project (one job per project; a second request
        is answered ``already_training``); annotation events feed the periodic trigger (SAG_TRAIN_EVERY_N_ANNOTATIONS,
        SAG_TRAIN_INTERVAL). See :mod:`backend.finetune.service`. A START_TRAINING that cannot be queued raises
        :class:`~backend.exceptions.TrainingUnavailable`, which the app answers with 503 and the reason."""
        project_id = project_id_of(data.get("project"))
        if project_id is None:
            return {"status": "ignored", "event": event, "detail": "the event names no project"}
        if event == "START_TRAINING":
            return {**self.training.submit(project_id, event), "model_version": self.model_version}
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return self.training.on_annotation(project_id, event)
        return {"status": "acknowledged", "event": event, "project": project_id}
