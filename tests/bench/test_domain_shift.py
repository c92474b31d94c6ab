"""bench/domain_shift.py on tiny sizes: the button's fine-tune path from a registry, the candidate scored whether or
not it was promoted, the backend's fine-tune defaults used, and the experiment-only patch undone afterwards."""

import importlib.util
import json
from pathlib import Path

import torch

from sag import SaG, tiny_config
from training.synthetic import DOMAINS, SyntheticConfig, write_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("domain_shift", ROOT / "bench" / "domain_shift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fine_tunes_through_the_registry_and_scores_the_candidate(tmp_path, capsys):
    bench = _bench()
    data = tmp_path / "data"
    write_benchmark(data / "synthetic", SyntheticConfig(seed=0, image_size=32, scenes={"train": 2, "val": 0,
                                                                                       "test": 5}), progress=False)
    torch.manual_seed(0)
    base = SaG(tiny_config(image_size=32)).save_pretrained(tmp_path / "base")
    work = tmp_path / "work"
    assert bench.main(["--base-checkpoint", str(tmp_path / "base"), "--data", str(data), "--pairs", "6",
                       "--seeds", "3", "--eval-limit", "6", "--shift-scenes", "6", "2", "4", "--set", "steps=2",
                       "--set", "batch_size=4", "--results", str(tmp_path / "results"), "--tag", "smoke",
                       "--work", str(work)]) == 0
    result = json.loads((tmp_path / "results" / "domain-shift-smoke.json").read_text())
    [run] = result["runs"]
    assert run["pairs"] == 6 and run["seed"] == 3
    tuned = run["finetune"]
    assert tuned["parent"] == base.version == result["base_version"] and tuned["version"] != base.version
    assert tuned["pairs"] == 6 and tuned["validation_masks"] == 0 and tuned["steps"] == 2
    # the backend's FinetuneConfig, but for the fields set on the command line
    shipped = bench.backend_finetune_config(from_env=False)
    for name, value in result["finetune_config"].items():
        if name not in ("steps", "batch_size", "show_progress"):
            assert value == json.loads(json.dumps(getattr(shipped, name))), name  # tuples come back as lists
    for name, scores in [("shift", run["scores"]["shift"]), ("before", result["before"]["shift"])]:
        assert scores["count"] == result["eval_sets"]["shift"]["expressions"] <= 6
        assert set(scores["words"]) <= set(DOMAINS["shift"].colours) | set(DOMAINS["shift"].shapes), name
        assert 0.0 <= scores["mIoU"] <= 1.0 and set(scores["kinds"]) <= {"attribute", "absolute", "relation"}
    assert set(result["before"]["base"]["words"]) <= set(DOMAINS["base"].colours) | set(DOMAINS["base"].shapes)
    assert result["summary"]["6"]["seeds"] == 1
    assert result["shipped_finetune_config"] == {**result["finetune_config"], "steps": shipped.steps,
                                                 "batch_size": shipped.batch_size, "show_progress": True}
    assert not list(work.glob("registry-*")), "each run's registry is removed"
    # a second invocation (a settings sweep) reuses the serving model's scores
    assert [p.name.startswith("before-") for p in work.iterdir()] == [True]
    capsys.readouterr()
    assert bench.main(["--compare", str(tmp_path / "results" / "domain-shift-smoke.json")]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| smoke |")]
    assert "| steps=2, batch_size=4 | 6 | 1 | 2 |" in row
    assert bench.main(["--show", str(tmp_path / "results" / "domain-shift-smoke.json")]) == 0
    shown = capsys.readouterr().out
    assert "| 0 (before) |" in shown and "| 6, mean of 1 |" in shown


def test_the_experiment_patch_freezes_modules_and_is_undone(tmp_path):
    bench = _bench()
    import training.engine as engine
    from training.datasets.base import Expression, ReferringDataset

    original = engine.Trainer
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    pairs = ReferringDataset([Expression(str(image), t, "1", str(i), "train") for i, t in enumerate(("a", "b"))],
                             with_masks=False)
    model = SaG(tiny_config(image_size=32))
    with bench.patched_trainer(["entity", "decoder"], {"grad_clip": 1.0}):
        trainer = engine.Trainer(model, pairs, engine.TrainConfig(max_steps=1, batch_size=2), tmp_path / "run")
    assert engine.Trainer is original
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert trained and not trained & {id(p) for m in (model.entity, model.decoder) for p in m.parameters()}
    assert trainer.config.grad_clip == 1.0
    trainer._train_mode()
    assert not model.entity.training and model.fusion.training
