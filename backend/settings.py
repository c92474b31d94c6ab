"""Every setting of the backend and its workers, read from the environment (and CLI flags) in this one place."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

from training.finetune import FINETUNE_RECIPES
from training.settings import read_int

from .exceptions import SettingsError


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return read_int(env, name, default, minimum, error=SettingsError)


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


def _mask_refine(env: Mapping[str, str], name: str, default: str) -> str:
    from sag.refine import REFINE_METHODS

    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in REFINE_METHODS:
        raise SettingsError(f"{name} must be one of {', '.join(REFINE_METHODS)}, got {raw!r}")
    if raw == "slic":
        try:
            import skimage.segmentation  # noqa: F401
        except ImportError:
            raise SettingsError(f"{name}=slic needs scikit-image: pip install 'sag-assist[slic]'") from None
    return raw


_HOSTNAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")


@dataclass(frozen=True)
class AllowedDestination:
    """One destination that may be reached although it is not public: ``SAG_ALLOWED_HOSTS`` entries and Label
    Studio's own origin. Exactly one of ``name`` and ``network`` is set; ``port`` None means any port, ``scheme``
    None any of http and https."""

    entry: str
    name: str | None = None  # a DNS name, compared by the addresses it resolves to at connection time
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # an address (/32, /128) or a CIDR
    port: int | None = None
    scheme: str | None = None


def parse_allowed_host(entry: str, name: str = "SAG_ALLOWED_HOSTS") -> AllowedDestination:
    """Parse one allow-list entry: ``host``, ``host:port``, ``10.0.0.5``, ``10.0.0.5:9000``, ``10.0.0.0/8``,
    ``10.0.0.0/8:9000``, ``fd00::5``, ``[fd00::5]:9000``, ``fd00::/8``, ``[fd00::/8]:9000``.

    Refuses (:class:`SettingsError` naming ``name`` and the entry) anything else: a scheme, a path or userinfo, an
    empty host, a bad port or CIDR, a CIDR with host bits set, an IPv4 address in a form other than dotted quad
    (``127.1``, ``2130706433``, ``0x7f000001``: resolvers accept them, so they would hide what is allowed).
    """
    raw = entry.strip()

    def bad(why: str) -> SettingsError:
        return SettingsError(f"{name}: bad entry {entry!r}: {why}; expected host, host:port, address, address:port, "
                             "CIDR or CIDR:port, e.g. minio:9000, 10.0.0.5, 10.0.0.0/8, [fd00::5]:9000")

    if not raw:
        raise bad("empty entry")
    if "://" in raw:
        raise bad("no scheme: write the host (and port) only")
    if any(c in raw for c in "@?#\\ \t") or raw == "*":
        raise bad("not a host")
    host, port_text = raw, None
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise bad("unclosed '['")
        host, rest = raw[1:close], raw[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise bad("unexpected text after ']'")
            port_text = rest[1:]
        if ":" not in host:
            raise bad("brackets are for IPv6 addresses")
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise bad(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    if not host:
        raise bad("empty host")
    if ":" in host or "/" in host or host.replace(".", "").isdigit():
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            if "/" in host and "has host bits set" in str(exc):
                raise bad(f"{host} has host bits set (did you mean {ipaddress.ip_network(host, strict=False)}?)")
            if "/" not in host and _inet_aton_accepts(host):
                raise bad("write IPv4 addresses as four dotted decimal numbers")
            raise bad(f"not an IP address or CIDR ({exc})")
        mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
        if mapped is not None and network.prefixlen >= 96:  # ::ffff:10.0.0.5 is how IPv6 sockets see 10.0.0.5
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
        return AllowedDestination(entry=raw, network=network, port=port)
    lowered = host.lower().rstrip(".")
    if _inet_aton_accepts(lowered):  # 127.1, 0x7f000001, 017700000001: the resolver reads these as addresses
        raise bad("write IPv4 addresses as four dotted decimal numbers")
    if not _HOSTNAME.fullmatch(lowered):
        raise bad("not a valid host name")
    return AllowedDestination(entry=raw, name=lowered, port=port)


def _inet_aton_accepts(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def parse_allowed_hosts(entries: Iterable[str], name: str = "SAG_ALLOWED_HOSTS") -> tuple[AllowedDestination, ...]:
    """Every entry parsed with :func:`parse_allowed_host` (the first bad one raises)."""
    return tuple(parse_allowed_host(entry, name) for entry in entries)


@dataclass(frozen=True)
class Settings:
    """The backend's configuration. Build it with :meth:`from_env`; docs/configuration.md lists every variable."""

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
    # Edge-aware refinement of every mask before the threshold (sag/refine.py), overriding the checkpoint's
    # mask_refine: none, guided or slic. Guided by default: on the synthetic benchmark it raised mIoU and the
    # boundary F-score for 12-16 ms per 512 x 512 mask on one CPU thread (bench/README.md, "Mask refinement").
    mask_refine: str = "guided"
    # Read spatial words ("the leftmost ...", "... above the ...", "the small ...") with sag/spatial.py: the mask
    # becomes the region they pick among those the model found. On by default: on the synthetic benchmark it
    # lifted position and relation expressions most (bench/README.md, "Beyond the paper").
    spatial_words: bool = True

    # Label Studio.
    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    local_files_root: str | None = None

    # Tasks and labelling config.
    text_field: str = "text"
    label_map: dict[str, str] = field(default_factory=dict)
    default_label: str | None = None  # the label when neither the map, a label's words nor its meaning match
    max_text_chars: int = 1000
    # Each text is one region: a text-encoder pass, fusion, a refined full-size mask (12-16 ms per 512 x 512 mask on
    # one CPU thread) and its RLE, so texts multiply a task's cost and answer size. 32 is about four times the
    # expressions RefCOCO-style data has per image, and bounds a task at a fraction of SAG_PREDICT_TIMEOUT.
    max_texts_per_task: int = 32
    polygon_tolerance: float = 1.5  # pixels, Douglas-Peucker tolerance for the optional polygons

    # Images.
    # Non-public destinations allowed besides Label Studio's origin; syntax and meaning in parse_allowed_host.
    allowed_hosts: tuple[str, ...] = ()
    local_roots: tuple[str, ...] = ()  # directories from which plain local paths may be read
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 60_000_000
    fetch_timeout: float = 20.0

    # Fine-tuning from Label Studio ("Start Training"; see training/finetune.py). SAG_FINETUNE_RECIPE picks the
    # starting values of the fields below (training.finetune.FINETUNE_RECIPES: "fast", the measured default, "text",
    # "paper", ...); each SAG_FINETUNE_* variable that is set overrides its field.
    finetune_recipe: str = "fast"
    finetune_steps: int | None = None  # None: SAG_FINETUNE_EPOCHS passes over the pairs, at most _MAX_STEPS
    finetune_epochs: int = FINETUNE_RECIPES["fast"].epochs
    finetune_max_steps: int = FINETUNE_RECIPES["fast"].max_steps
    finetune_batch_size: int = FINETUNE_RECIPES["fast"].batch_size
    finetune_lr: float = FINETUNE_RECIPES["fast"].lr
    # Keep the image backbone fixed and cache its features (training/feature_cache.py), and with _IMAGE_SIDE the
    # whole image side (entities cached per image; recipe "text"): bench/README.md, "Start Training".
    finetune_freeze_image_backbone: bool = FINETUNE_RECIPES["fast"].freeze_image_backbone
    finetune_freeze_image_side: bool = FINETUNE_RECIPES["fast"].freeze_image_side
    finetune_heldout: float = FINETUNE_RECIPES["fast"].heldout_fraction  # pairs kept out for the retrieval check
    promote_tolerance: float = 0.0  # mIoU a candidate may lose on hand-corrected masks and still be promoted
    promote_heldout_tolerance: float = 0.0  # held-out C^3 loss (nats) it may add when no masks exist
    promote_unchecked: bool = False  # promote when nothing can check the candidate (no masks, too few pairs)
    training_timeout: int = 6 * 3600  # seconds one training job may run
    train_every_annotations: int = 0  # 0 = off; else train after this many new annotations in a project
    train_interval: int = 0  # seconds; 0 = off; else train on a new annotation once this long after the last run
    refresh_prelabels: bool = False  # after a promotion, re-predict untouched tasks pre-labelled by older versions

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read the environment (``os.environ`` by default); keyword ``overrides`` (e.g. CLI flags) win."""
        env = os.environ if env is None else env
        recipe_name = env.get("SAG_FINETUNE_RECIPE", "").strip() or cls.finetune_recipe
        if recipe_name not in FINETUNE_RECIPES:
            raise SettingsError(f"SAG_FINETUNE_RECIPE={recipe_name!r}: choose one of {sorted(FINETUNE_RECIPES)}")
        recipe = FINETUNE_RECIPES[recipe_name]
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
            mask_refine=_mask_refine(env, "SAG_MASK_REFINE", cls.mask_refine),
            spatial_words=_flag(env, "SAG_SPATIAL_WORDS", cls.spatial_words),
            label_studio_url=ls_url,
            label_studio_api_key=(env.get("LABEL_STUDIO_API_KEY") or env.get("LABEL_STUDIO_ACCESS_TOKEN") or None),
            local_files_root=env.get("LOCAL_FILES_DOCUMENT_ROOT") or None,
            text_field=env.get("SAG_TEXT_FIELD") or cls.text_field,
            label_map=_label_map(env, "SAG_LABEL_MAP"),
            default_label=env.get("SAG_DEFAULT_LABEL", "").strip() or None,
            max_text_chars=_int(env, "SAG_MAX_TEXT_CHARS", cls.max_text_chars, 1),
            max_texts_per_task=_int(env, "SAG_MAX_TEXTS_PER_TASK", cls.max_texts_per_task, 1),
            polygon_tolerance=_float(env, "SAG_POLYGON_TOLERANCE", cls.polygon_tolerance),
            allowed_hosts=_list(env, "SAG_ALLOWED_HOSTS"),
            local_roots=_list(env, "SAG_LOCAL_ROOTS"),
            max_image_bytes=_int(env, "SAG_MAX_IMAGE_MB", cls.max_image_bytes // 2**20, 1) * 2**20,
            max_image_pixels=_int(env, "SAG_MAX_IMAGE_PIXELS", cls.max_image_pixels, 1),
            fetch_timeout=_float(env, "SAG_FETCH_TIMEOUT", cls.fetch_timeout),
            finetune_recipe=recipe_name,
            finetune_steps=_int(env, "SAG_FINETUNE_STEPS", 0, 1) or None,
            finetune_epochs=_int(env, "SAG_FINETUNE_EPOCHS", recipe.epochs, 1),
            finetune_max_steps=_int(env, "SAG_FINETUNE_MAX_STEPS", recipe.max_steps, 1),
            finetune_batch_size=_int(env, "SAG_FINETUNE_BATCH_SIZE", recipe.batch_size, 2),
            finetune_lr=_float(env, "SAG_FINETUNE_LR", recipe.lr),
            finetune_freeze_image_backbone=_flag(env, "SAG_FINETUNE_FREEZE_IMAGE_BACKBONE",
                                                 recipe.freeze_image_backbone),
            finetune_freeze_image_side=_flag(env, "SAG_FINETUNE_FREEZE_IMAGE_SIDE", recipe.freeze_image_side),
            finetune_heldout=_float(env, "SAG_FINETUNE_HELDOUT", recipe.heldout_fraction, fraction=True),
            promote_tolerance=_float(env, "SAG_PROMOTE_TOLERANCE", cls.promote_tolerance, fraction=True),
            promote_heldout_tolerance=_float(env, "SAG_PROMOTE_HELDOUT_TOLERANCE", cls.promote_heldout_tolerance),
            promote_unchecked=_flag(env, "SAG_PROMOTE_UNCHECKED", cls.promote_unchecked),
            training_timeout=_int(env, "SAG_TRAINING_TIMEOUT", cls.training_timeout, 60),
            train_every_annotations=_int(env, "SAG_TRAIN_EVERY_N_ANNOTATIONS", cls.train_every_annotations, 0),
            train_interval=_int(env, "SAG_TRAIN_INTERVAL", cls.train_interval, 0),
            refresh_prelabels=_flag(env, "SAG_REFRESH_PRELABELS", cls.refresh_prelabels),
        )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SettingsError(f"unknown settings: {unknown}")
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        parse_allowed_hosts(settings.allowed_hosts)  # refuse a malformed entry at start-up, not at the first fetch
        recipe = FINETUNE_RECIPES[settings.finetune_recipe]
        if settings.finetune_freeze_image_side and {"entity", "decoder"}.intersection(recipe.trainable or ()):
            raise SettingsError(f"SAG_FINETUNE_FREEZE_IMAGE_SIDE=true keeps entity discovery fixed, which the "
                                f"{settings.finetune_recipe!r} recipe (SAG_FINETUNE_RECIPE) trains: unset it, or "
                                "choose SAG_FINETUNE_RECIPE=text")
        if settings.finetune_freeze_image_side and not settings.finetune_freeze_image_backbone:
            raise SettingsError("SAG_FINETUNE_FREEZE_IMAGE_SIDE=true keeps the image backbone fixed as well: set "
                                "SAG_FINETUNE_FREEZE_IMAGE_SIDE=false to train the image backbone")
        return settings

    @property
    def embedded(self) -> bool:
        """True when jobs run inside the HTTP process (no REDIS_URL)."""
        return not self.redis_url

    def secrets(self) -> list[str]:
        """Values that must never reach a log line."""
        return [s for s in (self.label_studio_api_key, self.basic_auth_pass) if s]
