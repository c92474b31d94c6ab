"""backend/versions.py: which versions are placeholders and the model_version Label Studio sees for them."""

from __future__ import annotations

import pytest
import torch

from backend.finetune.prelabel_refresh import stale_tasks
from backend.versions import is_placeholder, label_studio_version, registry_id, served_version
from sag import SaG, tiny_config
from training.registry import Registry

UNCHECKED = {"trained": True, "promotion": {"promoted": True, "reason": "no hand-corrected masks and too few pairs "
                                            "to hold some out: promoted without a check (SAG_PROMOTE_UNCHECKED)"}}
CHECKED = {"trained": True, "promotion": {"promoted": True, "reason": "mIoU 0.61 >= serving 0.58 - 0.01"}}


@pytest.mark.parametrize("metadata, shown", [
    ({"preset": "tiny", "trained": False}, "v1+untrained"),
    (UNCHECKED, "v1+unchecked"),
    (CHECKED, "v1"),
    ({"trained": True}, "v1"),
    ({}, "v1"),  # an imported checkpoint that says nothing about its training is not marked
    ({"trained": False, **{k: v for k, v in UNCHECKED.items() if k != "trained"}}, "v1+untrained"),
])
def test_placeholders_are_marked_and_others_keep_their_id(metadata, shown):
    assert label_studio_version("v1", metadata) == shown
    assert is_placeholder(metadata) == (shown != "v1")


def test_served_version_reads_the_registry(tmp_path):
    registry = Registry(tmp_path / "models")
    assert served_version(registry) is None
    torch.manual_seed(0)
    untrained = registry.add(SaG(tiny_config()), {"trained": False}).id
    trained = registry.add(SaG(tiny_config()), {"trained": True}).id
    registry.promote(untrained)
    assert served_version(registry) == f"{untrained}+untrained"
    assert served_version(registry, trained) == trained
    registry.promote(trained)
    assert served_version(registry) == trained


def test_prelabels_of_the_marked_version_are_not_stale():
    """Label Studio stores the marked string; a task that holds it is up to date, one with the old version is not."""
    tasks = [{"id": 1}, {"id": 2}]
    predictions = [{"task": 1, "model_version": "v2+unchecked"}, {"task": 2, "model_version": "v1+untrained"}]
    assert [t["id"] for t in stale_tasks(tasks, predictions, "v2+unchecked")] == [2]


def test_a_version_copied_from_label_studio_names_its_registry_id():
    assert registry_id("20261203T080604Z-1fe4ff51+untrained") == "20261203T080604Z-1fe4ff51"
    assert registry_id("20261203T080604Z-1fe4ff51+unchecked") == "20261203T080604Z-1fe4ff51"
    assert registry_id("20261203T080604Z-1fe4ff51") == "20261203T080604Z-1fe4ff51"
    assert registry_id("v1+other") == "v1+other"  # only the backend's own marks are removed
