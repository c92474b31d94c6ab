import json
import random

import numpy as np
import pytest
import torch

from sag import SaG, tiny_config
from sag.checkpoint import read_metadata
from training.checkpoints import (
    BEST,
    CHECKPOINTS,
    TRAINER_STATE,
    check_model_config,
    checkpoint_path,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    read_weights,
    rng_state,
    set_rng_state,
    write_best,
    write_checkpoint,
)


def _write(model, run, step):
    final = checkpoint_path(run, step)
    write_checkpoint(model, final, {"step": step, "moments": torch.arange(3.0)}, {"step": step})
    return final


def test_a_checkpoint_reads_back_as_written(tiny_model, tmp_path):
    final = checkpoint_path(tmp_path, 7)
    state = {"step": 7, "best_checkpoint": None, "moments": torch.randn(4, 2), "rng": rng_state()}
    write_checkpoint(tiny_model, final, state, {"step": 7, "parent": "v0"})
    assert final == tmp_path / CHECKPOINTS / "step-00000007"
    assert list_checkpoints(tmp_path) == [final]
    assert not list((tmp_path / CHECKPOINTS).glob(".*")), "the partial directory was renamed into place"
    back = read_trainer_state(final)
    assert back["step"] == 7 and back["best_checkpoint"] is None and torch.equal(back["moments"], state["moments"])
    weights = read_weights(final, "cpu")
    assert weights.keys() == tiny_model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in tiny_model.state_dict().items())
    check_model_config(final, tiny_model.config)
    assert read_metadata(final)["step"] == 7 and read_metadata(final)["parent"] == "v0"


def test_only_complete_checkpoints_are_listed_oldest_first(tiny_model, tmp_path):
    later, earlier = _write(tiny_model, tmp_path, 10), _write(tiny_model, tmp_path, 9)
    # A run killed mid-write leaves its hidden partial directory, possibly with every file already in it.
    torn = tmp_path / CHECKPOINTS / ".step-00000011.partial"
    tiny_model.save_pretrained(torn)
    torch.save({}, torn / TRAINER_STATE)
    tiny_model.save_pretrained(checkpoint_path(tmp_path, 12))  # a model without trainer state: not resumable
    assert list_checkpoints(tmp_path) == [earlier, later]
    assert list_checkpoints(tmp_path / "nowhere") == []
    # Writing step 11 for real replaces the leftover instead of failing on it.
    eleventh = _write(tiny_model, tmp_path, 11)
    assert list_checkpoints(tmp_path) == [earlier, later, eleventh] and not torn.exists()


def test_pruning_keeps_the_newest_and_the_best(tiny_model, tmp_path):
    paths = [_write(tiny_model, tmp_path, step) for step in (2, 4, 6, 8)]
    write_best(tmp_path, paths[1], 0.5)
    prune_checkpoints(tmp_path, keep_last=2, keep=paths[1])
    assert list_checkpoints(tmp_path) == [paths[1], paths[2], paths[3]]
    assert json.loads((tmp_path / BEST).read_text()) == {"checkpoint": str(paths[1]), "step": 4, "val_mIoU": 0.5}


def test_a_different_model_config_is_refused(tiny_model, tmp_path):
    final = _write(tiny_model, tmp_path, 1)
    with pytest.raises(ValueError, match=r"different model config.*num_gaussians"):
        check_model_config(final, SaG(tiny_config(image_size=32, num_gaussians=2)).config)


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
