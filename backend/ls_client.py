"""A small Label Studio API client: authentication (legacy tokens and personal access tokens) and prediction import.

label-studio-sdk would provide this, but it does not install beside our dependencies (its opencv pin downgrades
numpy), and we need three calls.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)


class LabelStudioError(RuntimeError):
    """A Label Studio API call failed; the message has the URL path and status, never the credentials."""


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
        claims = _jwt_claims(self._access) or {}
        self._access_expires = float(claims.get("exp", time.time() + 240))

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated API call; raises :class:`LabelStudioError` on a connection error or HTTP error."""
        kwargs.setdefault("timeout", self.timeout)
        headers = {**kwargs.pop("headers", {}), **self.auth_headers()}
        try:
            response = self._session.request(method, self.absolute(path), headers=headers, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioError(f"{method} {path}: cannot reach Label Studio at {self.url}: "
                                   f"{type(exc).__name__}") from None
        if response.status_code >= 400:
            raise LabelStudioError(f"{method} {path} -> HTTP {response.status_code}: {response.text[:300]}")
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
