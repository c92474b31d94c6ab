import json
from pathlib import Path

import pytest

from training.cli import _parse_overrides, eval_main, train_main
from training.presets import TRAINING_PRESETS, build_model, get_preset
from training.settings import RegistrySettings, SettingsError, TrainingSettings


def test_train_then_eval_from_the_command_line(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--preset", "cpu-synthetic", "--format", "synthetic", "--data", str(synthetic_root),
                       "--output", str(run), "--max-steps", "2", "--batch-size", "4", "--eval-every", "2",
                       "--set", "model.image_size=32", "--set", "train.eval_limit=4", "--quiet",
                       "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["best_checkpoint"].endswith("step-00000002")
    out_json = tmp_path / "eval.json"
    assert eval_main([summary["best_checkpoint"], "--format", "synthetic", "--data", str(synthetic_root),
                      "--split", "test", "--ablation", "--baselines", "--overlays", str(tmp_path / "ov"),
                      "--overlay-count", "2", "--json", str(out_json), "--limit", "6", "--quiet", "--record"]) == 0
    printed = capsys.readouterr().out
    for row in ("ours (A_slot . A_fuse)", "MAX", "AVG", "MIN", "baseline: whole image", "baseline: centre blob"):
        assert f"| {row} |" in printed
    assert "| mIoU | cIoU | acc@0.3 | acc@0.5 | acc@0.7 |" in printed
    report = json.loads(out_json.read_text())
    assert report["count"] == 6 and set(report["schemes"]) == {"ours", "max", "avg", "min"}
    assert len(list((tmp_path / "ov").glob("*.png"))) == 2
    # --record kept our inference's figure in the checkpoint's metadata, where /health and `sag-models list` read it
    figure = json.loads((Path(summary["best_checkpoint"]) / "metadata.json").read_text())["measured"]["synthetic"]
    assert figure["mIoU"] == round(report["schemes"]["ours"]["mIoU"], 4) and figure["texts"] == 6
    assert figure["split"] == "test" and figure["inference"] == "ours"


def test_overrides_parse_json_values():
    model, train = _parse_overrides(["model.num_gaussians=9", "train.eval_every=null", "model.slot_type=query"])
    assert model == {"num_gaussians": 9, "slot_type": "query"} and train == {"eval_every": None}
    with pytest.raises(SystemExit):
        _parse_overrides(["lr=3"])


def test_presets():
    paper = get_preset("paper")
    assert (paper.model.image_backbone, paper.model.text_backbone) == ("vit_small_patch16_384", "bert-base-uncased")
    assert paper.model.num_slots == 36 and paper.model.iterations == 6 and paper.model.image_size == 384
    assert (paper.train.batch_size, paper.train.epochs, paper.train.lr) == (32, 50, 1e-5)
    assert paper.train.backbone_lr_scale == 0.1 and paper.train.grad_clip == 0.1
    cpu = get_preset("cpu-synthetic", model={"slot_type": "random"}, train={"max_steps": 5})
    assert cpu.model.slot_type == "random" and cpu.train.max_steps == 5 and not cpu.pretrained
    assert set(TRAINING_PRESETS) == {"assist", "paper", "cpu-synthetic", "cpu-synthetic-paper",
                                     "cpu-synthetic-mobilenet"}
    # each recipe in two flavours that differ only in their inference: SaG Assist's and the paper's
    for ours, theirs in (("assist", "paper"), ("cpu-synthetic", "cpu-synthetic-paper")):
        a, b = get_preset(ours), get_preset(theirs)
        assert (a.model.mask_refine, a.model.spatial_words) == ("guided", True)
        assert (b.model.mask_refine, b.model.spatial_words) == ("none", False)
        assert a.model.replace(mask_refine="none", spatial_words=False) == b.model and a.train == b.train
    assert get_preset("cpu-synthetic-mobilenet").model.spatial_words
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_build_model_is_seeded_and_spreads_text_features():
    preset = get_preset("cpu-synthetic", model={"image_size": 32})
    a, b = build_model(preset), build_model(preset)
    assert all((x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    texts = ["the red circle", "the small blue star above the green square", "the leftmost yellow diamond"]
    spread = a.encode_text(**a.tokenize(texts)).std(0).mean()
    plain = get_preset("cpu-synthetic", model={"image_size": 32})
    import dataclasses

    plain_model = build_model(dataclasses.replace(plain, text_init_gain=None))
    plain_spread = plain_model.encode_text(**plain_model.tokenize(texts)).std(0).mean()
    assert spread > 5 * plain_spread


def test_settings_from_env_and_flags():
    s = TrainingSettings.from_env({"SAG_DEVICE": "cpu", "SAG_DATA_ROOT": "/d", "SAG_NUM_THREADS": "2"})
    assert (s.device, str(s.data_root), s.num_threads) == ("cpu", "/d", 2)
    assert s.override(device="cuda", data_root=None).device == "cuda"
    assert TrainingSettings.from_env({}).device == "auto"
    with pytest.raises(SettingsError, match="SAG_NUM_THREADS"):
        TrainingSettings.from_env({"SAG_NUM_THREADS": "many"})
    with pytest.raises(SettingsError, match="SAG_NUM_THREADS must be >= 0"):
        TrainingSettings.from_env({"SAG_NUM_THREADS": "-1"})
    torchrun = TrainingSettings.from_env({"WORLD_SIZE": "4", "LOCAL_RANK": "3"})
    assert (torchrun.world_size, torchrun.local_rank) == (4, 3)
    assert (s.world_size, s.local_rank) == (1, 0)
    for name, value in (("WORLD_SIZE", "two"), ("WORLD_SIZE", "0"), ("LOCAL_RANK", "-1")):
        with pytest.raises(SettingsError, match=name):
            TrainingSettings.from_env({name: value})


def test_registry_settings_default_to_local_files():
    assert RegistrySettings.from_env({}) == RegistrySettings(Path("models"), None)
    assert RegistrySettings.from_env({"SAG_MODEL_DIR": "", "REDIS_URL": ""}) == RegistrySettings(Path("models"), None)
    given = RegistrySettings.from_env({"SAG_MODEL_DIR": "/m", "REDIS_URL": "redis://r:6379/0", "SAG_NUM_THREADS": "x"})
    assert given == RegistrySettings(Path("/m"), "redis://r:6379/0")
