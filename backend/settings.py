"""Every setting of the backend and its workers, read from the environment (and CLI flags) in this one place."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

INFERENCE_QUEUE = "sag:inference"
TRAINING_QUEUE = "sag:training"


class SettingsError(ValueError):
    """A setting has a value the backend cannot use; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, fraction: bool = False) -> float:
    """A positive number; with ``fraction``, a number from 0 to 1."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if fraction and not 0.0 <= value <= 1.0:
        raise SettingsError(f"{name} must be between 0 and 1, got {value}")
    if not fraction and value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _label_map(env: Mapping[str, str], name: str) -> dict[str, str]:
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} must be a JSON object of text -> label, e.g. '{{\"man\": \"Person\"}}': {exc}")
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SettingsError(f"{name} must be a JSON object mapping strings to label names")
    return value


@dataclass(frozen=True)
class Settings:
    """The backend's configuration. Build it with :meth:`from_env`; the README's table lists every variable."""

    # Serving.
    host: str = "0.0.0.0"
    port: int = 9090
    threads: int = 8
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    log_level: str = "INFO"

    # Queue. No redis_url = embedded mode: jobs run in a thread of the HTTP process.
    redis_url: str | None = None
    predict_timeout: float = 85.0  # below Label Studio's ML_TIMEOUT_PREDICT (100 s)
    sync_max_tasks: int = 16  # larger /predict requests return at once and are written back through the API
    batch_size: int = 8  # tasks per job, and per forward pass on the device
    job_timeout: int = 1800
    worker_heartbeat: int = 5  # seconds; a killed worker's job is requeued about 3 heartbeats later

    # Model.
    model_dir: str = "models"
    device: str = "auto"
    precision: str = "auto"
    init_preset: str = "mobilenet-minilm"
    entity_cache_mb: int = 512

    # Label Studio.
    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    local_files_root: str | None = None

    # Tasks and labelling config.
    text_field: str = "text"
    label_map: dict[str, str] = field(default_factory=dict)
    max_text_chars: int = 1000
    polygon_tolerance: float = 1.5  # pixels, Douglas-Peucker tolerance for the optional polygons

    # Images.
    allowed_hosts: tuple[str, ...] = ()  # private/loopback hosts allowed besides Label Studio's own
    local_roots: tuple[str, ...] = ()  # directories from which plain local paths may be read
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 60_000_000
    fetch_timeout: float = 20.0

    # Fine-tuning from Label Studio ("Start Training"; see training/finetune.py).
    finetune_steps: int = 200
    finetune_batch_size: int = 16
    finetune_lr: float = 1e-5
    promote_tolerance: float = 0.0  # mIoU a candidate may lose on hand-corrected masks and still be promoted
    training_timeout: int = 6 * 3600  # seconds one training job may run
    train_every_annotations: int = 0  # 0 = off; else train after this many new annotations in a project
    train_interval: int = 0  # seconds; 0 = off; else train on a new annotation once this long after the last run
    refresh_prelabels: bool = False  # after a promotion, re-predict untouched tasks pre-labelled by older versions

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read the environment (``os.environ`` by default); keyword ``overrides`` (e.g. CLI flags) win."""
        env = os.environ if env is None else env
        user, password = env.get("BASIC_AUTH_USER") or None, env.get("BASIC_AUTH_PASS") or None
        if bool(user) != bool(password):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        ls_url = (env.get("LABEL_STUDIO_URL") or env.get("LABEL_STUDIO_HOST") or "").strip().rstrip("/") or None
        if ls_url and not ls_url.startswith(("http://", "https://")):
            raise SettingsError(f"LABEL_STUDIO_URL must start with http:// or https://, got {ls_url!r}")
        settings = cls(
            host=env.get("HOST", cls.host),
            port=_int(env, "PORT", cls.port, 1),
            threads=_int(env, "SAG_THREADS", cls.threads, 1),
            basic_auth_user=user,
            basic_auth_pass=password,
            log_level=env.get("LOG_LEVEL", cls.log_level).upper(),
            redis_url=env.get("REDIS_URL") or None,
            predict_timeout=_float(env, "SAG_PREDICT_TIMEOUT", cls.predict_timeout),
            sync_max_tasks=_int(env, "SAG_SYNC_MAX_TASKS", cls.sync_max_tasks, 1),
            batch_size=_int(env, "SAG_BATCH_SIZE", cls.batch_size, 1),
            job_timeout=_int(env, "SAG_JOB_TIMEOUT", cls.job_timeout, 10),
            worker_heartbeat=_int(env, "SAG_WORKER_HEARTBEAT", cls.worker_heartbeat, 1),
            model_dir=env.get("SAG_MODEL_DIR") or cls.model_dir,
            device=env.get("SAG_DEVICE") or cls.device,
            precision=env.get("SAG_PRECISION") or cls.precision,
            init_preset=env.get("SAG_INIT_PRESET") or cls.init_preset,
            entity_cache_mb=_int(env, "SAG_ENTITY_CACHE_MB", cls.entity_cache_mb, 0),
            label_studio_url=ls_url,
            label_studio_api_key=(env.get("LABEL_STUDIO_API_KEY") or env.get("LABEL_STUDIO_ACCESS_TOKEN") or None),
            local_files_root=env.get("LOCAL_FILES_DOCUMENT_ROOT") or None,
            text_field=env.get("SAG_TEXT_FIELD") or cls.text_field,
            label_map=_label_map(env, "SAG_LABEL_MAP"),
            max_text_chars=_int(env, "SAG_MAX_TEXT_CHARS", cls.max_text_chars, 1),
            polygon_tolerance=_float(env, "SAG_POLYGON_TOLERANCE", cls.polygon_tolerance),
            allowed_hosts=_list(env, "SAG_ALLOWED_HOSTS"),
            local_roots=_list(env, "SAG_LOCAL_ROOTS"),
            max_image_bytes=_int(env, "SAG_MAX_IMAGE_MB", cls.max_image_bytes // 2**20, 1) * 2**20,
            max_image_pixels=_int(env, "SAG_MAX_IMAGE_PIXELS", cls.max_image_pixels, 1),
            fetch_timeout=_float(env, "SAG_FETCH_TIMEOUT", cls.fetch_timeout),
            finetune_steps=_int(env, "SAG_FINETUNE_STEPS", cls.finetune_steps, 1),
            finetune_batch_size=_int(env, "SAG_FINETUNE_BATCH_SIZE", cls.finetune_batch_size, 2),
            finetune_lr=_float(env, "SAG_FINETUNE_LR", cls.finetune_lr),
            promote_tolerance=_float(env, "SAG_PROMOTE_TOLERANCE", cls.promote_tolerance, fraction=True),
            training_timeout=_int(env, "SAG_TRAINING_TIMEOUT", cls.training_timeout, 60),
            train_every_annotations=_int(env, "SAG_TRAIN_EVERY_N_ANNOTATIONS", cls.train_every_annotations, 0),
            train_interval=_int(env, "SAG_TRAIN_INTERVAL", cls.train_interval, 0),
            refresh_prelabels=_flag(env, "SAG_REFRESH_PRELABELS", cls.refresh_prelabels),
        )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SettingsError(f"unknown settings: {unknown}")
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def embedded(self) -> bool:
        """True when jobs run inside the HTTP process (no REDIS_URL)."""
        return not self.redis_url

    def secrets(self) -> list[str]:
        """Values that must never reach a log line."""
        return [s for s in (self.label_studio_api_key, self.basic_auth_pass) if s]
