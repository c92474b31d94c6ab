"""A small Label Studio API client: authentication (legacy tokens and personal access tokens) and prediction import.

label-studio-sdk would provide this, but it does not install beside our dependencies (its opencv pin downgrades
numpy), and we need a handful of calls.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import requests

from .. import redact
from ..exceptions import LabelStudioError

log = logging.getLogger(__name__)


def _jwt_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


ERROR_EXCERPT_CHARS = 200
# Per-task prediction lookups in flight at once during an exactly-once write-back. Label Studio has no filter for a
# set of tasks, and listing the whole project instead would cost every job time and bytes in proportion to the
# project's predictions (results included), which grows with every version.
LOOKUP_CONCURRENCY = 8
_ERROR_READ_BYTES = 64 * 1024  # of an error body, what is looked at (after the secrets are scrubbed from all of it)
_TAG = re.compile(r"<[^<>]*>")  # [^<>]: linear even on a body of unclosed "<"


def _error_excerpt(response: requests.Response, sent: list[str]) -> str:
    """What an error answer says, for the error message: a JSON ``detail``/``error``/``message`` or the text without
    markup, with the credentials we sent (``sent``), every registered secret and any credential header's value
    scrubbed *before* anything is cut (so no part of a secret survives a cut), at most ``ERROR_EXCERPT_CHARS``."""
    body = redact.scrub_bytes(response.content or b"", sent)[:_ERROR_READ_BYTES]
    text = body.decode(response.encoding or "utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        for key in ("detail", "error", "message"):
            if isinstance(payload.get(key), str):
                text = payload[key]
                break
    text = " ".join(html.unescape(_TAG.sub(" ", text)).split())
    text = redact.scrub_headers(redact.scrub(text, sent))
    return text[:ERROR_EXCERPT_CHARS] + ("..." if len(text) > ERROR_EXCERPT_CHARS else "")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class LabelStudioClient:
    """Talks to one Label Studio server with an API key from the environment.

    The key is either a legacy token (sent as ``Token <key>``) or a personal access token, a JWT refresh token that
    is exchanged for 5-minute access tokens (sent as ``Bearer <access>``) and refreshed before they expire.
    """

    def __init__(self, url: str, api_key: str | None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self._key = api_key
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False  # never send the key through a proxy picked up from the environment
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_expires = 0.0

    def __repr__(self) -> str:  # the key must not leak through a repr in a log line
        return f"LabelStudioClient({self.url!r})"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def owns(self, url: str) -> bool:
        """Whether ``url`` points at this Label Studio (same scheme, host and port): only then is the key sent."""
        return _origin(url) == _origin(self.url)

    def absolute(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for this server; raises :class:`LabelStudioError` without a key."""
        if not self._key:
            raise LabelStudioError(
                f"LABEL_STUDIO_API_KEY is not set: cannot authenticate to Label Studio at {self.url}"
            )
        claims = _jwt_claims(self._key)
        if claims is None:
            return {"Authorization": f"Token {self._key}"}
        if claims.get("token_type") != "refresh":
            return {"Authorization": f"Bearer {self._key}"}
        with self._lock:
            if self._access is None or time.time() > self._access_expires - 30:
                self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def _refresh(self) -> None:
        response = self._session.post(
            self.absolute("/api/token/refresh/"), json={"refresh": self._key}, timeout=self.timeout
        )
        if response.status_code != 200:
            raise LabelStudioError(
                f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                f"(POST /api/token/refresh/ -> HTTP {response.status_code})"
            )
        self._access = response.json()["access"]
        redact.register(self._access, rotating=True)  # derived secret: scrubbed from logs, answers, job records
        claims = _jwt_claims(self._access) or {}
        self._access_expires = float(claims.get("exp", time.time() + 240))

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated API call; raises :class:`LabelStudioError` on a connection error or HTTP error."""
        kwargs.setdefault("timeout", self.timeout)
        credentials = self.auth_headers()
        headers = {**kwargs.pop("headers", {}), **credentials}
        try:
            response = self._session.request(method, self.absolute(path), headers=headers, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioError(f"{method} {path}: cannot reach Label Studio at {self.url}: "
                                   f"{type(exc).__name__}") from None
        if response.status_code >= 400:
            # The message reaches job records in Redis and HTTP answers (/training/<project>, /jobs/<id>): never
            # the body verbatim (an error page may echo our request headers), a short scrubbed excerpt of it.
            sent = [value for header in credentials.values() for value in (header, header.partition(" ")[2])]
            excerpt = _error_excerpt(response, sent)
            raise LabelStudioError(f"{method} {path} -> HTTP {response.status_code}" + (f": {excerpt}" if excerpt
                                                                                         else ""))
        return response

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]]) -> int:
        """Store predictions (each with ``task``, ``result``, ``score``, ``model_version``); returns how many."""
        if not predictions:
            return 0
        response = self.request("POST", f"/api/projects/{project_id}/import/predictions", json=predictions)
        created = response.json().get("created", len(predictions))
        log.info("label studio: stored %d predictions in project %s", created, project_id)
        return int(created)

    def _json(self, path: str, **kwargs: Any) -> Any:
        response = self.request("GET", path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(f"GET {path}: Label Studio answered with something that is not JSON") from None

    def project(self, project_id: int) -> dict[str, Any]:
        """The project (``id``, ``label_config``, ``model_version``, ...)."""
        project = self._json(f"/api/projects/{project_id}")
        if not isinstance(project, dict) or not isinstance(project.get("label_config"), str):
            raise LabelStudioError(f"GET /api/projects/{project_id}: the answer has no label_config")
        return project

    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (JSON export; predictions come as ids only)."""
        tasks = self._json(f"/api/projects/{project_id}/export",
                           params={"exportType": "JSON", "download_all_tasks": "true"}, timeout=max(self.timeout, 300))
        if not isinstance(tasks, list):
            raise LabelStudioError(f"GET /api/projects/{project_id}/export: expected a list of tasks")
        return tasks

    def predictions(self, project_id: int) -> list[dict[str, Any]]:
        """Every prediction of the project (``task``, ``model_version``, ``result``, ...)."""
        found = self._json("/api/predictions", params={"project": project_id}, timeout=max(self.timeout, 300))
        if not isinstance(found, list):
            raise LabelStudioError("GET /api/predictions: expected a list of predictions")
        return found

    # ---- idempotent write-back ---------------------------------------------------------------------------------
    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """The predictions stored for one task (``GET /api/predictions/?task=<id>``), each with ``id``, ``task``,
        ``model_version``, ..."""
        found = self._json("/api/predictions/", params={"task": task_id})
        if not isinstance(found, list):
            raise LabelStudioError("GET /api/predictions/: expected a list of predictions")
        # Filtered here too: a server that ignored the filter would otherwise answer with other tasks' predictions.
        return [p for p in found if isinstance(p, dict) and p.get("task") == task_id]

    def delete_prediction(self, task_id: int, prediction_id: int) -> bool:
        """Delete one prediction of ``task_id``; False when it was gone already (another run removed it first)."""
        try:
            self.request("DELETE", f"/api/predictions/{prediction_id}/")
        except LabelStudioError:
            if any(p.get("id") == prediction_id for p in self.task_predictions(task_id)):
                raise
            return False
        return True

    def import_predictions_once(self, project_id: int, predictions: list[dict[str, Any]]) -> dict[str, int]:
        """Store each prediction unless its task already holds one of the same ``model_version``, so that any number
        of runs of the same write leaves exactly one prediction per (task, model_version).

        Before importing, each task's predictions are listed (``GET /api/predictions/?task=``, several tasks at a
        time: :data:`LOOKUP_CONCURRENCY`) and the tasks that already hold this version are skipped (a retry after a
        lost answer: LS stored the import, the worker never heard). After importing, the written tasks are listed
        again and any extra copy of the version is deleted, keeping the oldest (lowest id):
        two runs of one job that imported concurrently (RQ requeued a job whose worker had lost Redis while it was
        still running) converge too; they all keep the same one. Returns how many were ``stored``, ``skipped``
        (present already) and ``removed`` (duplicates deleted). Raises :class:`LabelStudioError` if a written task
        still has no prediction of its version, so the job is retried.
        """
        wanted: dict[tuple[int, str], dict[str, Any]] = {}
        for prediction in predictions:
            if isinstance(prediction.get("task"), int):  # a task without an id cannot hold a prediction
                wanted.setdefault((prediction["task"], prediction["model_version"]), prediction)
        removed = 0
        todo: list[dict[str, Any]] = []
        for key, held in zip(wanted, self._held_each(list(wanted))):
            if held:
                removed += self._keep_oldest(key[0], held)
            else:
                todo.append(wanted[key])
        stored = self.import_predictions(project_id, todo) if todo else 0
        missing = []
        written = [(p["task"], p["model_version"]) for p in todo]
        for (task_id, _), held in zip(written, self._held_each(written)):
            if not held:
                missing.append(task_id)
            removed += self._keep_oldest(task_id, held)
        if missing:
            raise LabelStudioError(f"POST /api/projects/{project_id}/import/predictions: Label Studio holds no "
                                   f"prediction afterwards for task(s) {missing[:10]}")
        skipped = len(wanted) - len(todo)
        if skipped or removed:
            log.info("label studio: project %s: %d prediction(s) stored, %d already there, %d duplicate(s) removed",
                     project_id, stored, skipped, removed)
        return {"stored": stored, "skipped": skipped, "removed": removed}

    def _held_each(self, keys: list[tuple[int, str]]) -> list[list[dict[str, Any]]]:
        """:meth:`_held` for each (task, version) of ``keys``, in order, up to ``LOOKUP_CONCURRENCY`` requests at a
        time: a bulk job waits for about one round trip per phase instead of one per task. Raises the first
        :class:`LabelStudioError` (after the lookups in flight have ended)."""
        if len(keys) <= 1:
            return [self._held(task_id, version) for task_id, version in keys]
        with ThreadPoolExecutor(max_workers=min(LOOKUP_CONCURRENCY, len(keys)),
                                thread_name_prefix="ls-lookup") as pool:
            return list(pool.map(lambda key: self._held(*key), keys))

    def _held(self, task_id: int, version: str) -> list[dict[str, Any]]:
        """The predictions ``task_id`` holds of ``model_version`` ``version``."""
        return [p for p in self.task_predictions(task_id) if p.get("model_version") == version]

    def _keep_oldest(self, task_id: int, same_version: list[dict[str, Any]]) -> int:
        """Delete all but the lowest-id prediction of ``same_version`` (one task, one model version); how many went."""
        ids = sorted(p["id"] for p in same_version if isinstance(p.get("id"), int))
        return sum(self.delete_prediction(task_id, extra) for extra in ids[1:])
