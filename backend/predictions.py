"""Tasks -> predictions on the HTTP side: check each Label Studio task against the labelling config, cut the
accepted ones into :class:`~backend.jobs.PredictJob` chunks, dispatch them, and collect one answer per task.

:meth:`backend.model.SaGModel.predict` (``/predict``) and the pre-label refresh after a promotion
(:mod:`backend.finetune.prelabel_refresh`) both predict through :class:`PredictionService`, so their answers are built
by the same code. The model itself runs in the jobs (:mod:`backend.jobs`, :mod:`backend.predictor`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .batches import new_batch_id
from .dispatch import NO_WORKER, Dispatcher
from .exceptions import LabelConfigError, TaskRejected, json_type
from .jobs import PredictJob
from .keys import claim_ttl, status_url
from .labelstudio.labeling_config import LabelingConfig, parse_labeling_config
from .predictor import OutputSpec, TaskInput, task_error
from .runtime import Runtime

log = logging.getLogger(__name__)

Accepted = list[tuple[int, TaskInput]]  # (position in the request, the checked task)


def task_id_of(task: Any) -> int | None:
    """The task's id when it is an integer (a boolean is not), else None: the answer still goes in its place."""
    if isinstance(task, dict) and isinstance(task.get("id"), int) and not isinstance(task["id"], bool):
        return task["id"]
    return None


def servable_config(label_config: str | None, text_field: str) -> LabelingConfig:
    """The parsed labelling config, or :class:`LabelConfigError` saying why it cannot be served (no config, no
    image and labels control, no text source)."""
    if not label_config:
        raise LabelConfigError("no labelling config was sent with the request")
    config = parse_labeling_config(label_config)
    config.require_text_source(text_field)
    return config


class PredictionService:
    """Predicts Label Studio tasks through a dispatcher. Built once per process (``create_app``, or a trainer's job
    for its pre-label refresh) and shared by every request."""

    def __init__(self, runtime: Runtime, dispatcher: Dispatcher):
        self.runtime = runtime
        self.settings = runtime.settings
        self.dispatcher = dispatcher

    def predict(self, tasks: list[Any], label_config: str | None, project_id: int | None,
                context: dict[str, Any] | None = None) -> dict[str, Any]:
        """One answer per task, in order. Small or interactive requests wait for their jobs; larger ones return at
        once with an empty answer per task and the workers store the predictions through Label Studio's API."""
        started = time.monotonic()
        try:
            config = servable_config(label_config, self.settings.text_field)
        except LabelConfigError as exc:
            log.error("cannot serve project %s: %s", project_id, exc)
            return {"results": [task_error(task_id_of(t), str(exc)) for t in tasks]}

        answers: list[Any] = [None] * len(tasks)
        accepted: Accepted = []
        for index, task in enumerate(tasks):
            try:
                accepted.append((index, self.task_input(task, config, context)))
            except TaskRejected as exc:
                log.warning("task %s rejected: %s", task_id_of(task), exc)
                answers[index] = task_error(task_id_of(task), str(exc))

        spec = OutputSpec(config.image_name, config.brush.name if config.brush else None,
                          config.polygon.name if config.polygon else None)
        interactive = bool(context)
        if accepted and len(accepted) > self.settings.sync_max_tasks and not interactive:
            response = self._predict_in_background(accepted, spec, answers, project_id)
        else:
            self._predict_now(accepted, spec, answers, project_id, urgent=True)
            response = {"results": answers}
        done = sum(1 for a in answers if isinstance(a, dict) and "result" in a)
        log.info("predict: %d task(s), %d answered, %d error(s), %.2f s", len(tasks), done,
                 sum(1 for a in answers if isinstance(a, dict) and "error" in a), time.monotonic() - started)
        return response

    # ---- tasks ------------------------------------------------------------------------------------------------
    def task_input(self, task: Any, config: LabelingConfig, context: dict[str, Any] | None) -> TaskInput:
        """A task checked and reduced to what a job needs; :class:`TaskRejected` says what is wrong with it."""
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
            label_map, default = self.settings.label_map, self.settings.default_label
            labels = tuple(config.label_for(text, label_map, default_label=default) for text in texts)
            polygon_labels = tuple(config.label_for(t, label_map, second, default) for t in texts if second)
        except LabelConfigError as exc:
            raise TaskRejected(str(exc)) from None
        return TaskInput(task_id_of(task), image.strip(), tuple(texts), labels, polygon_labels)

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
        if len(items) > self.settings.max_texts_per_task:  # before anything is done per text
            raise TaskRejected(f"the task has {len(items)} referring texts in {source}; the limit is "
                               f"{self.settings.max_texts_per_task} per task (SAG_MAX_TEXTS_PER_TASK)")
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

    # ---- jobs -------------------------------------------------------------------------------------------------
    def _chunks(self, accepted: Accepted) -> list[Accepted]:
        size = self.settings.batch_size
        return [accepted[i:i + size] for i in range(0, len(accepted), size)]

    def _predict_now(self, accepted: Accepted, spec: OutputSpec, answers: list[Any], project_id: int | None,
                     urgent: bool) -> None:
        if not accepted:
            return
        if self.dispatcher.workers() == 0:
            log.error(NO_WORKER)
            for index, task in accepted:
                answers[index] = task_error(task.task_id, NO_WORKER)
            return
        chunks = self._chunks(accepted)
        handles = self.dispatcher.submit(
            [PredictJob(tuple(t for _, t in chunk), spec, project_id) for chunk in chunks], urgent=urgent
        )
        for chunk, outcome in zip(chunks, self.dispatcher.wait(handles, self.settings.predict_timeout)):
            for position, (index, task) in enumerate(chunk):
                if outcome.answers is not None:
                    answers[index] = outcome.answers[position]
                else:
                    log.error("task %s: %s", task.task_id, outcome.error)
                    answers[index] = task_error(task.task_id, outcome.error or "prediction failed")

    def _predict_in_background(self, accepted: Accepted, spec: OutputSpec, answers: list[Any],
                               project_id: int | None) -> dict[str, Any]:
        if project_id is None or self.runtime.label_studio is None:
            missing = "the request has no project id" if project_id is None else "LABEL_STUDIO_URL is not set"
            message = (f"{len(accepted)} tasks is more than SAG_SYNC_MAX_TASKS={self.settings.sync_max_tasks} "
                       f"answered at once, and the backend cannot write predictions back ({missing})")
            for index, task in accepted:
                answers[index] = task_error(task.task_id, message)
            return {"results": answers}
        batches = self.runtime.batches
        claimable = [t.task_id for _, t in accepted if t.task_id is not None]
        claims = dict(zip(claimable, batches.claim(project_id, claimable, claim_ttl(self.settings.job_timeout))))
        fresh = [(i, t) for i, t in accepted if claims.get(t.task_id, True)]
        for index, _ in accepted:
            answers[index] = []  # no prediction now; Label Studio stores nothing and logs nothing for an empty list
        batch_id = new_batch_id()
        chunks = self._chunks(fresh)
        batches.create(batch_id, len(fresh), project_id, len(chunks))
        self.dispatcher.submit(
            [PredictJob(tuple(t for _, t in chunk), spec, project_id, True, batch_id) for chunk in chunks],
            urgent=False,
        )
        skipped = len(accepted) - len(fresh)
        log.info("batch %s: %d tasks of project %s queued in %d jobs (%d already pending); predictions will be "
                 "written back to Label Studio", batch_id, len(fresh), project_id, len(chunks), skipped)
        return {"results": answers,
                "job": {"id": batch_id, "status_url": status_url(batch_id), "tasks": len(fresh),
                        "already_pending": skipped, "jobs": len(chunks)}}
