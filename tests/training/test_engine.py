import json
import math
import shutil

import pytest
import torch

from sag import SaG, tiny_config
from training.checkpoints import list_checkpoints
from training.datasets.refcoco import refer_dataset
from training.engine import TrainConfig, Trainer, lr_factor, parameter_groups


def _config(**kw):
    base = dict(max_steps=4, batch_size=6, lr=1e-3, backbone_lr_scale=0.5, warmup_steps=2, grad_clip=1.0,
                log_every=1, seed=7, checkpoint_every=2, keep_last=10)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def pairs(synthetic_root):
    return refer_dataset(synthetic_root, "synthetic", "train", with_masks=False)


@pytest.fixture
def val(synthetic_root):
    return refer_dataset(synthetic_root, "synthetic", "val")


def _model(seed=0):
    torch.manual_seed(seed)
    return SaG(tiny_config(image_size=32))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    values = [lr_factor(s, 100, 10, 0.1) for s in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[100] == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)


def test_parameter_groups_cover_every_parameter_once():
    model = _model()
    groups = parameter_groups(model, _config())
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    backbone = {id(p) for m in (model.image_encoder, model.text_encoder.backbone) for p in m.parameters()}
    by_name = {g["name"]: g for g in groups}
    assert {id(p) for p in by_name["backbones"]["params"]} == backbone
    assert by_name["backbones"]["lr"] == pytest.approx(0.5e-3) and by_name["heads"]["lr"] == pytest.approx(1e-3)


def test_training_runs_logs_and_checkpoints(pairs, tmp_path):
    calls = []
    result = Trainer(_model(), pairs, _config(), tmp_path, progress=lambda *a: calls.append(a),
                     show_progress=False).fit()
    assert result.steps == 4
    assert [c[0] for c in calls] == [1, 2, 3, 4] and all(c[1] == 4 and math.isfinite(c[2]) for c in calls)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "c3", "recon", "lr", "epoch"} <= set(records[0])
    assert records[0]["lr"] < records[1]["lr"]  # warm-up
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000002", "step-00000004"]
    loaded = SaG.from_pretrained(tmp_path / "checkpoints" / "step-00000004")
    assert loaded.metadata["step"] == 4
    assert not list((tmp_path / "checkpoints").glob(".*")), "no partial checkpoint is left behind"


def test_resume_is_exact(pairs, tmp_path):
    straight = _model()
    Trainer(straight, pairs, _config(), tmp_path / "a", show_progress=False).fit()
    # A second run that stops at step 2 (the checkpoint) and resumes from there in a fresh process-like state.
    resumed_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000002", resumed_dir / "checkpoints" / "step-00000002")
    torch.manual_seed(123)  # a different global RNG state: the checkpoint must restore it
    other = _model(seed=99)  # different initial weights: the checkpoint must replace them
    trainer = Trainer(other, pairs, _config(), resumed_dir, show_progress=False)
    result = trainer.fit()
    assert result.steps == 4
    for (name, a), (_, b) in zip(straight.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name


def test_epochs_grad_accumulation_and_drop_last(pairs, tmp_path):
    cfg = _config(max_steps=None, epochs=2, batch_size=4, grad_accum=2, checkpoint_every=None)
    trainer = Trainer(_model(), pairs, cfg, tmp_path, show_progress=False)
    per_epoch = (len(pairs) // 4) // 2
    assert trainer.total_steps == 2 * per_epoch
    result = trainer.fit()
    assert result.steps == 2 * per_epoch and trainer.epoch == 2
    assert len(list_checkpoints(tmp_path)) == 2  # one per epoch when nothing else is asked


def test_validation_selects_the_best_and_pruning_keeps_it(pairs, val, tmp_path):
    cfg = _config(max_steps=6, eval_every=2, checkpoint_every=None, keep_last=1, eval_limit=6)
    trainer = Trainer(_model(), pairs, cfg, tmp_path, val_data=val, show_progress=False)
    scores = iter([0.2, 0.5, 0.3])
    trainer.validate = lambda: next(scores)  # the selection logic, independent of what a tiny model scores
    result = trainer.fit()
    assert result.best_metric == 0.5 and result.best_checkpoint.name == "step-00000004"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["step"] == 4 and best["val_mIoU"] == 0.5


def test_real_validation_is_logged(pairs, val, tmp_path):
    cfg = _config(max_steps=2, eval_every=2, checkpoint_every=None, eval_limit=5)
    result = Trainer(_model(), pairs, cfg, tmp_path, val_data=val, show_progress=False).fit()
    val_records = [r for r in result.history if r.get("split") == "val"]
    assert len(val_records) == 1 and val_records[0]["count"] == 5 and 0 <= val_records[0]["mIoU"] <= 1
    assert result.best_metric == val_records[0]["mIoU"]


def test_bad_setups_are_rejected(pairs, tmp_path):
    with pytest.raises(ValueError, match="at least one full batch"):
        Trainer(_model(), pairs.subset(range(3)), _config(), tmp_path)
    with pytest.raises(ValueError, match="grad_accum = 12"):
        Trainer(_model(), pairs.subset(range(10)), _config(grad_accum=2), tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    Trainer(_model(), pairs, _config(max_steps=2), tmp_path, show_progress=False).fit()
    torch.manual_seed(0)
    different = SaG(tiny_config(image_size=32, num_gaussians=2))
    with pytest.raises(ValueError, match="different model config.*num_gaussians"):
        Trainer(different, pairs, _config(max_steps=3), tmp_path, show_progress=False).fit()


def test_frozen_image_backbone_keeps_its_weights(pairs, tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    heads_before = model.fusion.to_q.weight.clone()
    Trainer(model, pairs, _config(max_steps=2, freeze_image_backbone=True), tmp_path, show_progress=False).fit()
    assert all(torch.equal(before[k], v) for k, v in model.image_encoder.state_dict().items())
    assert not torch.equal(heads_before, model.fusion.to_q.weight)


def test_a_frozen_image_side_trains_only_text_and_fusion_and_computes_each_images_entities_once(pairs, tmp_path):
    model = _model()
    image_side = {k: v.clone() for m in ("image_encoder", "entity", "decoder")
                  for k, v in getattr(model, m).state_dict(prefix=m + ".").items()}
    text_before, fusion_before = model.text_encoder.proj.weight.clone(), model.fusion.to_q.weight.clone()
    data = pairs.subset(range(24))
    trainer = Trainer(model, data, _config(max_steps=8, freeze_image_backbone=True, freeze_image_side=True),
                      tmp_path, show_progress=False)
    calls = []
    encode = model.encode_features
    model.encode_features = lambda features, grid: calls.append(len(features)) or encode(features, grid)
    assert trainer.warm_image_cache() == len({e.image for e in data.expressions})
    warmed = sum(calls)
    result = trainer.fit()
    assert warmed == len(trainer.entity_cache) and sum(calls) == warmed  # 8 steps, 2 epochs: no image again
    state = {**model.image_encoder.state_dict(prefix="image_encoder."), **model.entity.state_dict(prefix="entity."),
             **model.decoder.state_dict(prefix="decoder.")}
    assert all(torch.equal(image_side[k], v) for k, v in state.items())
    assert not torch.equal(text_before, model.text_encoder.proj.weight)
    assert not torch.equal(fusion_before, model.fusion.to_q.weight)
    assert all(r["recon"] == 0.0 for r in result.history if "recon" in r)  # C^3 alone
    with pytest.raises(ValueError, match="freeze_image_backbone"):
        TrainConfig(freeze_image_side=True)
    with pytest.raises(ValueError, match="feature_cache"):
        TrainConfig(freeze_image_side=True, freeze_image_backbone=True, feature_cache="off")


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(pairs, tmp_path, precision):
    model = _model().to("cuda")
    result = Trainer(model, pairs, _config(max_steps=2, precision=precision), tmp_path, show_progress=False).fit()
    assert result.steps == 2 and all(math.isfinite(r["loss"]) for r in result.history)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32 under autocast"


def test_train_only_cannot_name_a_frozen_part_or_nothing():
    with pytest.raises(ValueError, match="entity"):
        TrainConfig(freeze_image_backbone=True, freeze_image_side=True, train_only=("entity", "fusion"))
    with pytest.raises(ValueError, match="image_encoder"):
        TrainConfig(freeze_image_backbone=True, train_only=["image_encoder.blocks"])
    with pytest.raises(ValueError, match="names no module"):
        TrainConfig(train_only=())
    assert TrainConfig(train_only=["fusion"]).train_only == ("fusion",)


def _distance(model: SaG, start: dict[str, torch.Tensor]) -> float:
    return sum((p.detach() - start[n]).pow(2).sum().item() for n, p in model.named_parameters()) ** 0.5


def test_the_anchor_pulls_trained_weights_back_to_where_they_started(pairs, tmp_path):
    start = {n: p.detach().clone() for n, p in _model().named_parameters()}
    free, anchored = _model(), _model()
    Trainer(free, pairs, _config(max_steps=3, warmup_steps=0), tmp_path / "free", show_progress=False).fit()
    # anchor x lr = 0.9: each step takes back 90% of the distance (the backbones' group at half the lr: 45%).
    Trainer(anchored, pairs, _config(max_steps=3, warmup_steps=0, anchor=900.0), tmp_path / "anchored",
            show_progress=False).fit()
    assert 0 < _distance(anchored, start) < 0.6 * _distance(free, start)


def test_an_anchored_run_resumes_exactly_when_built_from_the_same_start(pairs, tmp_path):
    straight = _model()
    Trainer(straight, pairs, _config(anchor=100.0), tmp_path / "a", show_progress=False).fit()
    resumed_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000002", resumed_dir / "checkpoints" / "step-00000002")
    resumed = _model()  # the same starting weights (a re-run fine-tune reloads the serving version)
    Trainer(resumed, pairs, _config(anchor=100.0), resumed_dir, show_progress=False).fit()
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("anchor", [-1.0, 1000.0])
def test_an_anchor_that_would_overshoot_or_push_away_is_refused(anchor):
    with pytest.raises(ValueError, match="anchor"):
        TrainConfig(lr=1e-3, anchor=anchor)


def _slot_attn(model: SaG, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().encode_image(images).slot_attn


def test_grouping_distill_keeps_entity_discoverys_grouping_near_where_it_started(pairs, tmp_path):
    from sag.losses import grouping_loss

    images = torch.rand(4, 3, 32, 32)
    start = _slot_attn(_model(), images)
    moved = {}
    for weight in (0.0, 100.0):
        model = _model()
        config = _config(max_steps=6, lr=3e-2, warmup_steps=0, grouping_distill=weight,
                         train_only=("entity",))
        Trainer(model, pairs, config, tmp_path / str(weight), show_progress=False).fit()
        moved[weight] = grouping_loss(start, _slot_attn(model, images)).item()
    assert 0 < moved[100.0] < 0.5 * moved[0.0]


def test_grouping_distill_needs_entity_discovery_trained():
    with pytest.raises(ValueError, match="grouping_distill"):
        TrainConfig(grouping_distill=1.0, freeze_image_backbone=True, freeze_image_side=True)
    with pytest.raises(ValueError, match="grouping_distill"):
        TrainConfig(grouping_distill=-1.0)
