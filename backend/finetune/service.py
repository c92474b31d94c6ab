"""What queues fine-tuning: "Start Training" (``START_TRAINING`` at ``/webhook``), ``POST /training/<project>``, and
the periodic trigger on annotation events (``SAG_TRAIN_EVERY_N_ANNOTATIONS``, ``SAG_TRAIN_INTERVAL``).

Label Studio waits at most 100 s for the START_TRAINING webhook and 1 s for annotation webhooks, so everything here
only counts and enqueues (:mod:`backend.finetune.queues`); the job is :mod:`backend.finetune.job`. One
:class:`TrainingService` is built per backend process (by ``create_app``) and shared by the webhook and the routes,
so embedded jobs are deduplicated in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..exceptions import TrainingUnavailable
from ..keys import LAST_TRAINING, NEW_ANNOTATIONS, training_key
from ..predictions import PredictionService
from ..runtime import Runtime
from .queues import training_queue

log = logging.getLogger(__name__)


class TrainingService:
    """What the webhook and the routes use: submit, status, and the periodic trigger on annotation events.
    ``predictions`` is this process's prediction service, for the pre-label refresh of embedded jobs."""

    def __init__(self, runtime: Runtime, predictions: PredictionService | None = None):
        self.runtime = runtime
        self.settings = runtime.settings
        self.queue = training_queue(runtime, predictions)
        self._counts: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def submit(self, project_id: int, reason: str) -> dict[str, Any]:
        """Queue fine-tuning of ``project_id`` (or report the job already queued or running). Raises
        :class:`~backend.exceptions.TrainingUnavailable` when the backend cannot reach Label Studio's API (no
        LABEL_STUDIO_URL or no LABEL_STUDIO_API_KEY): the job would only fail later, out of the annotator's sight."""
        missing = [name for name, value in (("LABEL_STUDIO_URL", self.settings.label_studio_url),
                                            ("LABEL_STUDIO_API_KEY", self.settings.label_studio_api_key)) if not value]
        if missing:
            message = (f"Training cannot start: the ML backend has no {' and no '.join(missing)}; set "
                       "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY where it runs (training reads the project's tasks "
                       "through Label Studio's API)")
            log.error("training for project %s not queued: %s", project_id, message)
            raise TrainingUnavailable(message)
        answer = self.queue.submit(project_id, reason)
        if answer["status"] == "queued":
            self._reset(project_id)
        return answer

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A training job by id (for ``/jobs/<id>``), or None."""
        return self.queue.get(job_id)

    def latest(self, project_id: int) -> dict[str, Any] | None:
        return self.queue.latest(project_id)

    # ---- the periodic trigger -----------------------------------------------------------------------------------
    # Counters live in Redis when there is one, so every backend process counts the same annotations.
    def _count(self, project_id: int) -> tuple[int, float | None]:
        now = time.time()
        redis = self.runtime.redis
        if redis is not None:
            with redis.pipeline() as pipe:
                pipe.incr(training_key(NEW_ANNOTATIONS, project_id))
                pipe.set(training_key(LAST_TRAINING, project_id), now, nx=True)  # the clock starts at the first event
                pipe.get(training_key(LAST_TRAINING, project_id))
                count, _, last = pipe.execute()
            return int(count), float(last)
        with self._lock:
            self._counts[project_id] = self._counts.get(project_id, 0) + 1
            self._last.setdefault(project_id, now)
            return self._counts[project_id], self._last[project_id]

    def _reset(self, project_id: int) -> None:
        now = time.time()
        redis = self.runtime.redis
        if redis is not None:
            with redis.pipeline() as pipe:
                pipe.delete(training_key(NEW_ANNOTATIONS, project_id))
                pipe.set(training_key(LAST_TRAINING, project_id), now)
                pipe.execute()
            return
        with self._lock:
            self._counts[project_id] = 0
            self._last[project_id] = now

    def on_annotation(self, project_id: int, event: str) -> dict[str, Any]:
        """Count a new or updated annotation; queue training when ``SAG_TRAIN_EVERY_N_ANNOTATIONS`` annotations
        arrived or ``SAG_TRAIN_INTERVAL`` seconds passed since the last run. Fast: Label Studio waits 1 s."""
        every, interval = self.settings.train_every_annotations, self.settings.train_interval
        if not every and not interval:
            return {"status": "acknowledged", "event": event, "project": project_id}
        count, last = self._count(project_id)
        reason = None
        if every and count >= every:
            reason = f"{count} new annotations"
        elif interval and last is not None and time.time() - last >= interval:
            reason = f"{count} new annotation(s) after {interval} s"
        if reason is None:
            return {"status": "acknowledged", "event": event, "project": project_id, "new_annotations": count}
        try:
            answer = self.submit(project_id, reason)
        except TrainingUnavailable as exc:  # an annotation webhook's answer is not shown to anyone: log and report
            answer = {"status": "not_configured", "detail": str(exc)}
        return {"event": event, "project": project_id, "trigger": reason, **answer}
