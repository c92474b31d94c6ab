"""The ML backend model, with the contract of label-studio-ml's ``LabelStudioMLBase``: ``setup``,
``predict(tasks, context)`` and ``fit(event, data)``.

As there, an instance is made per request and is cheap: the SaG weights live in the worker processes (or, in
embedded mode, in this process's runtime), and the serving version is read from the registry on every call.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from .batches import new_batch_id
from .dispatch import Dispatcher
from .http_input import BadRequest, json_type
from .jobs import PredictJob
from .labeling_config import LabelConfigError, LabelingConfig, parse_labeling_config
from .predictor import OutputSpec, TaskInput, task_error
from .runtime import Runtime

log = logging.getLogger(__name__)

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


class TaskRejected(ValueError):
    """A task that cannot be predicted; the message is returned for that task."""


_PROJECT_ID = re.compile(r"\s*(\d{1,18})(?:\.\d{0,20})?\s*")  # "<id>" or "<id>.<created timestamp>"


def project_id_of(project: Any) -> int | None:
    """The project id of a request's ``project`` field: Label Studio sends ``"<id>.<created timestamp>"`` to
    /predict and /setup and a project object (with ``id``) to /webhook; a plain id is accepted too. None when the
    field is absent, null or empty; :class:`~backend.http_input.BadRequest` naming the field for anything else (a
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

    def __init__(self, runtime: Runtime, dispatcher: Dispatcher, project_id: int | None = None,
                 label_config: str | None = None):
        self.runtime = runtime
        self.settings = runtime.settings
        self.dispatcher = dispatcher
        self.project_id = project_id
        self.label_config = label_config

    @property
    def model_version(self) -> str | None:
        """The serving checkpoint version, shared through Redis (or the registry's CURRENT file)."""
        return self.runtime.registry.current()

    def parsed_config(self) -> LabelingConfig:
        if not self.label_config:
            raise LabelConfigError("no labelling config was sent with the request")
        config = parse_labeling_config(self.label_config)
        config.require_text_source(self.settings.text_field)
        return config

    def setup(self) -> dict[str, Any]:
        """Check the config can be served and report the model version (Label Studio calls this before predicting)."""
        if self.label_config:
            self.parsed_config()
        return {"model_version": self.model_version}

    # ---- predict ----------------------------------------------------------------------------------------------
    def predict(self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None,
                **kwargs: Any) -> dict[str, Any]:
        """One answer per task, in order. Small or interactive requests wait for their jobs; larger ones return at
        once with an empty answer per task and the workers store the predictions through Label Studio's API."""
        started = time.monotonic()
        try:
            config = self.parsed_config()
        except LabelConfigError as exc:
            log.error("cannot serve project %s: %s", self.project_id, exc)
            return {"results": [task_error(_task_id(t), str(exc)) for t in tasks]}

        answers: list[Any] = [None] * len(tasks)
        accepted: list[tuple[int, TaskInput]] = []
        for index, task in enumerate(tasks):
            try:
                accepted.append((index, self._task_input(task, config, context)))
            except TaskRejected as exc:
                log.warning("task %s rejected: %s", _task_id(task), exc)
                answers[index] = task_error(_task_id(task), str(exc))

        spec = OutputSpec(config.image_name, config.brush.name if config.brush else None,
                          config.polygon.name if config.polygon else None)
        interactive = bool(context)
        if accepted and len(accepted) > self.settings.sync_max_tasks and not interactive:
            response = self._predict_in_background(accepted, spec, answers)
        else:
            self._predict_now(accepted, spec, answers, urgent=True)
            response = {"results": answers}
        done = sum(1 for a in answers if isinstance(a, dict) and "result" in a)
        log.info("predict: %d task(s), %d answered, %d error(s), %.2f s", len(tasks), done,
                 sum(1 for a in answers if isinstance(a, dict) and "error" in a), time.monotonic() - started)
        return response

    def _task_input(self, task: dict[str, Any], config: LabelingConfig, context: dict[str, Any] | None) -> TaskInput:
        if not isinstance(task, dict):
            raise TaskRejected(f"the task must be an object, got {json_type(task)}")
        data = task.get("data")
        if data is None:
            raise TaskRejected("the task has no data")
        if not isinstance(data, dict):
            raise TaskRejected(f"the task's 'data' must be an object, got {json_type(data)}")
        image = data.get(config.image_key)
        if not isinstance(image, str) or not image.strip():
            raise TaskRejected(f"the task has no image in data field {config.image_key!r}")
        texts = self._texts(data, config, context)
        second = config.polygon if config.brush and config.polygon else None
        try:
            labels = tuple(config.label_for(text, self.settings.label_map) for text in texts)
            polygon_labels = tuple(config.label_for(t, self.settings.label_map, second) for t in texts if second)
        except LabelConfigError as exc:
            raise TaskRejected(str(exc)) from None
        return TaskInput(_task_id(task), image.strip(), tuple(texts), labels, polygon_labels)

    def _texts(self, data: dict[str, Any], config: LabelingConfig, context: dict[str, Any] | None) -> list[str]:
        """The referring texts: a typed prompt from the context wins; else the task field (a string or a list)."""
        raw: Any = None
        source = f"data field {self.settings.text_field!r}"
        regions = context.get("result") if context else None
        if isinstance(regions, list) and config.prompt_name:  # app.py has refused any other shape with a 400
            for region in regions:
                if isinstance(region, dict) and region.get("from_name") == config.prompt_name:
                    value = region.get("value")
                    raw = value.get("text") if isinstance(value, dict) else None
                    source = f"prompt <{config.prompt_name}>"
        if raw is None:
            raw = data.get(self.settings.text_field)
        if raw is None:
            hint = f" or a prompt in <{config.prompt_name}>" if config.prompt_name else ""
            raise TaskRejected(f"the task has no referring text: data field {self.settings.text_field!r} is missing"
                               f"{hint}")
        items = raw if isinstance(raw, list) else [raw]
        texts = []
        for item in items:
            if not isinstance(item, str):
                raise TaskRejected(f"the referring text in {source} must be a string or a list of strings, "
                                   f"got {type(item).__name__}")
            text = " ".join(item.split())
            if not text:
                raise TaskRejected(f"the referring text in {source} is empty")
            if len(text) > self.settings.max_text_chars:
                raise TaskRejected(f"the referring text in {source} has {len(text)} characters; the limit is "
                                   f"{self.settings.max_text_chars} (SAG_MAX_TEXT_CHARS)")
            texts.append(text)
        if not texts:
            raise TaskRejected(f"the referring text list in {source} is empty")
        return texts

    def _chunks(self, accepted: list[tuple[int, TaskInput]]) -> list[list[tuple[int, TaskInput]]]:
        size = self.settings.batch_size
        return [accepted[i:i + size] for i in range(0, len(accepted), size)]

    def _predict_now(self, accepted: list[tuple[int, TaskInput]], spec: OutputSpec, answers: list[Any],
                     urgent: bool) -> None:
        if not accepted:
            return
        if self.dispatcher.workers() == 0:
            message = "no sag-worker is running for the sag:inference queue; start one with `sag-worker`"
            log.error(message)
            for index, task in accepted:
                answers[index] = task_error(task.task_id, message)
            return
        chunks = self._chunks(accepted)
        handles = self.dispatcher.submit(
            [PredictJob(tuple(t for _, t in chunk), spec, self.project_id) for chunk in chunks], urgent=urgent
        )
        for chunk, outcome in zip(chunks, self.dispatcher.wait(handles, self.settings.predict_timeout)):
            for position, (index, task) in enumerate(chunk):
                if outcome.answers is not None:
                    answers[index] = outcome.answers[position]
                else:
                    log.error("task %s: %s", task.task_id, outcome.error)
                    answers[index] = task_error(task.task_id, outcome.error or "prediction failed")

    def _predict_in_background(self, accepted: list[tuple[int, TaskInput]], spec: OutputSpec,
                               answers: list[Any]) -> dict[str, Any]:
        if self.project_id is None or self.runtime.label_studio is None:
            missing = "the request has no project id" if self.project_id is None else "LABEL_STUDIO_URL is not set"
            message = (f"{len(accepted)} tasks is more than SAG_SYNC_MAX_TASKS={self.settings.sync_max_tasks} "
                       f"answered at once, and the backend cannot write predictions back ({missing})")
            for index, task in accepted:
                answers[index] = task_error(task.task_id, message)
            return {"results": answers}
        claimable = [t.task_id for _, t in accepted if t.task_id is not None]
        claims = dict(zip(claimable, self.runtime.batches.claim(self.project_id, claimable,
                                                                 self.settings.job_timeout * 3)))
        fresh = [(i, t) for i, t in accepted if claims.get(t.task_id, True)]
        for index, _ in accepted:
            answers[index] = []  # no prediction now; Label Studio stores nothing and logs nothing for an empty list
        batch_id = new_batch_id()
        chunks = self._chunks(fresh)
        self.runtime.batches.create(batch_id, len(fresh), self.project_id, len(chunks))
        self.dispatcher.submit(
            [PredictJob(tuple(t for _, t in chunk), spec, self.project_id, True, batch_id) for chunk in chunks],
            urgent=False,
        )
        skipped = len(accepted) - len(fresh)
        log.info("batch %s: %d tasks of project %s queued in %d jobs (%d already pending); predictions will be "
                 "written back to Label Studio", batch_id, len(fresh), self.project_id, len(chunks), skipped)
        return {"results": answers,
                "job": {"id": batch_id, "status_url": f"/jobs/{batch_id}", "tasks": len(fresh),
                        "already_pending": skipped, "jobs": len(chunks)}}

    # ---- fit --------------------------------------------------------------------------------------------------
    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Webhook events, answered at once (Label Studio waits 1 s for annotation events, 100 s for
        START_TRAINING): START_TRAINING queues fine-tuning of the project (one job per project; a second request
        is answered ``already_training``); annotation events feed the periodic trigger (SAG_TRAIN_EVERY_N_ANNOTATIONS,
        SAG_TRAIN_INTERVAL). See :mod:`backend.training_jobs`."""
        from .training_jobs import training_service

        project_id = project_id_of(data.get("project"))
        if project_id is None:
            return {"status": "ignored", "event": event, "detail": "the event names no project"}
        service = training_service(self.runtime, self.dispatcher)
        if event == "START_TRAINING":
            return {**service.submit(project_id, event), "model_version": self.model_version}
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return service.on_annotation(project_id, event)
        return {"status": "acknowledged", "event": event, "project": project_id}


def _task_id(task: Any) -> int | None:
    """The task's id when it is an integer (a boolean is not), else None: the answer still goes in its place."""
    if isinstance(task, dict) and isinstance(task.get("id"), int) and not isinstance(task["id"], bool):
        return task["id"]
    return None
