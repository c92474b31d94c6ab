"""save_pretrained / from_pretrained: identical outputs, versions, atomic writes, clear errors."""

import json
import re

import pytest
import torch

from sag import SaG, read_metadata, tiny_config
from sag.config import SaGConfig
from sag.pipeline import predict


def test_save_load_gives_identical_outputs(tmp_path, tiny_model, random_images):
    tiny_model.eval()
    images = random_images([(40, 60), (64, 64)])
    texts = ["the leftmost green triangle", "the red shape above the blue diamond"]
    before = predict(tiny_model, images, texts)
    info = tiny_model.save_pretrained(tmp_path / "ckpt", metadata={"trained_on": "unit-test", "metrics": {"mIoU": 0.1}})
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", info.version)
    loaded = SaG.from_pretrained(tmp_path / "ckpt")
    assert loaded.version == info.version and not loaded.training
    assert loaded.metadata["trained_on"] == "unit-test" and loaded.metadata["metrics"] == {"mIoU": 0.1}
    after = predict(loaded, images, texts)
    for a, b in zip(before, after):
        assert torch.equal(a.soft, b.soft) and torch.equal(a.mask, b.mask)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text()) == tiny_model.config.to_dict()
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_version_cannot_be_overridden_by_metadata(tmp_path, tiny_model):
    info = tiny_model.save_pretrained(tmp_path / "a", metadata={"version": "evil"})
    assert info.version != "evil" and read_metadata(tmp_path / "a")["version"] == info.version


def test_existing_directory_is_refused(tmp_path, tiny_model):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError):
        tiny_model.save_pretrained(tmp_path / "ckpt")


def test_failed_write_leaves_nothing_behind(tmp_path, tiny_model, monkeypatch):
    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_model.text_encoder, "save_backbone_files", boom)
    with pytest.raises(OSError, match="disk full"):
        tiny_model.save_pretrained(tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_checkpoint_is_not_loaded(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match="metadata.json is missing"):
        SaG.from_pretrained(tmp_path / "ckpt")


def test_weights_of_a_different_architecture_are_refused(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["embed_dim"] = 32
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="size mismatch"):
        SaG.from_pretrained(tmp_path / "ckpt")


def test_config_json_round_trip_and_validation():
    config = tiny_config(slot_type="random", threshold=0.4)
    assert SaGConfig.from_json(config.to_json()) == config
    assert config.num_slots == 8 and config.attn_dim == 64
    with pytest.raises(ValueError, match="slot_type"):
        tiny_config(slot_type="learned")
    with pytest.raises(ValueError, match="threshold"):
        tiny_config(threshold=1.5)
    with pytest.raises(ValueError, match="unknown SaGConfig fields"):
        SaGConfig.from_dict({"embed_dim": 64, "bogus": 1})
