"""The ``model_version`` Label Studio sees: the registry id, marked when the version is a placeholder.

Label Studio sorts and filters tasks by a prediction's ``score`` and ``model_version``. A placeholder version (the
untrained model the backend creates for an empty registry, or a fine-tuned one promoted without any check) gives
score 0 on every region and says so in its ``model_version``, ``"<id>+untrained"`` or ``"<id>+unchecked"``, so its
pre-labels sort last and one filter in the data manager hides them. Only what the backend tells Label Studio carries
the suffix (``/predict``, ``/setup``, ``/health``, ``/metrics``, the webhook answers, the predictions it writes back);
everything the backend says to itself (the registry, the entity cache, rollback, ``/versions``, fine-tuning parents)
keeps the plain id.
"""

from __future__ import annotations

from typing import Any, Mapping

from training.figures import figures
from training.registry import Registry

UNTRAINED = "untrained"
UNCHECKED = "unchecked"
SEPARATOR = "+"
# training.finetune.promotion_decision's reason when SAG_PROMOTE_UNCHECKED promoted a candidate nothing validated
_UNCHECKED_REASON = "without a check"


def placeholder_kind(metadata: Mapping[str, Any]) -> str | None:
    """:data:`UNTRAINED` for a version whose metadata says ``"trained": False`` (backend.presets), :data:`UNCHECKED`
    for one promoted without a check (training.finetune, SAG_PROMOTE_UNCHECKED), else ``None``."""
    if metadata.get("trained") is False:
        return UNTRAINED
    promotion = metadata.get("promotion")
    if isinstance(promotion, Mapping) and _UNCHECKED_REASON in str(promotion.get("reason") or ""):
        return UNCHECKED
    return None


def is_placeholder(metadata: Mapping[str, Any]) -> bool:
    """Whether a version's masks are placeholders: served with score 0 and a marked ``model_version``."""
    return placeholder_kind(metadata) is not None


def label_studio_version(version_id: str, metadata: Mapping[str, Any]) -> str:
    """The ``model_version`` Label Studio sees for registry version ``version_id``: the id, plus ``+untrained`` or
    ``+unchecked`` for a placeholder."""
    kind = placeholder_kind(metadata)
    return f"{version_id}{SEPARATOR}{kind}" if kind else version_id


def registry_id(version: str) -> str:
    """The registry id of a ``model_version`` as Label Studio shows it: ``"<id>+untrained"`` -> ``"<id>"`` (an
    operator copying the version from Label Studio's data manager); any other string is returned as it is."""
    base, sep, kind = version.rpartition(SEPARATOR)
    return base if sep and kind in (UNTRAINED, UNCHECKED) else version


def served_version(registry: Registry, version_id: str | None = None) -> str | None:
    """:func:`label_studio_version` of ``version_id`` (default: the registry's serving version); ``None`` when
    nothing is served yet."""
    version_id = registry.current() if version_id is None else version_id
    if version_id is None:
        return None
    return label_studio_version(version_id, registry.get(version_id).metadata)


def served_summary(registry: Registry) -> dict[str, Any]:
    """What ``/health`` says of the serving version, from one read of its metadata (no evaluation):
    ``{"model_version": served_version(...), "figures": {"synthetic": {...} | "not measured", "real_photos": ...}}``
    (:func:`training.figures.figures`); ``model_version`` None and every benchmark "not measured" when nothing is
    served yet."""
    version_id = registry.current()
    if version_id is None:
        return {"model_version": None, "figures": figures({})}
    metadata = registry.get(version_id).metadata
    return {"model_version": label_studio_version(version_id, metadata), "figures": figures(metadata)}
