import numpy as np
import pytest
import torch
from PIL import Image

from training.datasets.refcoco import refer_dataset
from training.evaluate import BASELINES, baseline_mask, evaluate, format_table
from training.overlays import OverlayWriter, render_overlay


@pytest.fixture
def val(synthetic_root):
    return refer_dataset(synthetic_root, "synthetic", "val")


def test_baseline_masks():
    whole = baseline_mask("whole_image", (30, 40))
    assert whole.shape == (30, 40) and whole.all()
    blob = baseline_mask("centre_blob", (40, 40))
    assert blob[20, 20] and not blob[0, 0] and not blob[20, 5]
    assert 0.15 < blob.mean() < 0.25
    assert np.array_equal(blob, blob[::-1, ::-1]), "centred"
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_mask("oracle", (4, 4))


def test_every_expression_is_evaluated_once_and_deterministically(tiny_model, val):
    report = evaluate(tiny_model, val, schemes=("ours", "max", "avg", "min"), batch_size=4, baselines=BASELINES,
                      show_progress=False)
    assert report.count == len(val)
    assert set(report.schemes) == {"ours", "max", "avg", "min"} and set(report.baselines) == set(BASELINES)
    for metrics in report.schemes.values():
        assert metrics["count"] == len(val)
        assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["acc@0.7"] <= metrics["acc@0.5"] <= metrics["acc@0.3"]
    again = evaluate(tiny_model, val, schemes=("ours", "max", "avg", "min"), batch_size=4, show_progress=False)
    assert again.schemes == report.schemes, "eval-mode inference is deterministic"
    rebatched = evaluate(tiny_model, val, schemes=("ours",), batch_size=3, show_progress=False)
    # other batch shapes change float rounding in the matmuls, which may flip a boundary pixel, nothing more
    assert rebatched.schemes["ours"]["mIoU"] == pytest.approx(report.schemes["ours"]["mIoU"], abs=1e-3)
    # the whole-image baseline's IoU is the object's share of the image, by hand
    shares = [val[i].mask.mean() for i in range(len(val))]
    assert report.baselines["whole_image"]["mIoU"] == pytest.approx(np.mean(shares))
    limited = evaluate(tiny_model, val, batch_size=4, limit=3, show_progress=False)
    assert limited.count == 3 and limited.schemes["ours"]["count"] == 3


def test_groups_and_table(tiny_model, val):
    kinds = [e.kind for e in val.expressions]
    report = evaluate(tiny_model, val, schemes=("ours", "avg"), batch_size=8, baselines=("centre_blob",),
                      group_of=kinds.__getitem__, show_progress=False)
    assert set(report.groups) == set(kinds)
    assert sum(g["count"] for g in report.groups.values()) == len(val)
    table = format_table(report, "val")
    assert "| ours (A_slot . A_fuse) |" in table and "| AVG |" in table and "| baseline: centre blob |" in table
    assert table.count("\n| ") == 1 + 2 + 1 + len(report.groups)  # header, 2 schemes, 1 baseline, groups


def test_evaluation_needs_masks(tiny_model, val):
    with pytest.raises(ValueError, match="no ground-truth mask"):
        evaluate(tiny_model, val.pairs(), show_progress=False)
    with pytest.raises(ValueError, match="unknown inference schemes"):
        evaluate(tiny_model, val, schemes=("mean",), show_progress=False)


def test_overlays_show_image_prediction_and_top3_entities(tiny_model, val, tmp_path):
    writer = OverlayWriter(tiny_model, tmp_path / "ov", count=3)
    evaluate(tiny_model, val, batch_size=2, on_batch=writer, show_progress=False)
    assert len(writer.written) == 3 and all(p.suffix == ".png" and p.is_file() for p in writer.written)
    figure = Image.open(writer.written[0])
    assert figure.width == 5 * 192  # image + GT, prediction, three entities


def test_render_overlay_ranks_entities_by_a_fuse():
    image = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    maps = torch.zeros(4, 16, 16)
    maps[2, :8] = 1.0
    figure = render_overlay(image, "t", np.zeros((16, 16), bool), None, maps, torch.tensor([0.1, 0.2, 0.6, 0.1]),
                            top=1, panel=16)
    array = np.asarray(figure)
    entity_panel = array[18:34, 32:48]
    assert entity_panel[:8].mean() > entity_panel[8:].mean(), "the highest-A_fuse entity (2) is the one shown"


# ---- diagnostics -----------------------------------------------------------------------------------------------------
def test_diagnostics_on_the_synthetic_set(tiny_model, val, synthetic_root):
    import json

    from training.diagnostics import DiagnosticOptions, InstanceMasks
    from training.evaluate import expression_kinds

    instances_file = synthetic_root / "synthetic" / "instances.json"
    instances = InstanceMasks.from_expressions(val.expressions)
    referred = {i: len(m) for i, m in instances.by_image.items()}
    instances.add_coco(instances_file, referred)
    coco = json.loads(instances_file.read_text())
    per_image = {str(im["id"]): sum(a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]}
    assert {i: len(m) for i, m in instances.by_image.items()} == {i: per_image[i] for i in referred}
    assert all(per_image[i] >= n for i, n in referred.items()), "instances.json has every object, refs a few"

    kinds = expression_kinds(val)
    report = evaluate(tiny_model, val, schemes=("ours", "max"), batch_size=4, group_of=kinds,
                      diagnostics=DiagnosticOptions(instances=instances), show_progress=False)
    diag = report.diagnostics
    entity, overall = diag["entity"], diag["expressions"]
    assert entity["images"] == len(referred) and entity["instances"] == sum(per_image[i] for i in referred)
    assert entity["instance_sources"] == {"instances.json": len(referred)}
    assert 0.0 < entity["mBO"] <= 1.0 and 0.0 < entity["mBO_threshold"] <= 1.0
    assert overall["count"] == len(val) and overall["mIoU"] == pytest.approx(report.schemes["ours"]["mIoU"])
    # the best single entity is an upper bound of MAX, expression by expression, hence on average
    assert overall["oracle_entity_mIoU"] >= report.schemes["max"]["mIoU"] - 1e-12
    for key in ("boundary_F", "pointing", "oracle_nnls_mIoU", "afuse_picks_best"):
        assert 0.0 <= overall[key] <= 1.0
    assert set(diag["groups"]) == {e.kind for e in val.expressions}
    assert sum(g["count"] for g in diag["groups"].values()) == len(val)
    table = format_table(report)
    assert "**Diagnostics**" in table and "| all |" in table and "oracle entity mIoU" in table
    assert "| relation expressions |" in table or "relation" not in diag["groups"]
    assert report.to_dict()["diagnostics"] == diag
    plain = evaluate(tiny_model, val, batch_size=4, show_progress=False)
    assert "diagnostics" not in plain.to_dict() and "Diagnostics" not in format_table(plain)
    # without instances.json: the referred masks of each image's expressions
    fallback = evaluate(tiny_model, val, batch_size=4, diagnostics=True, show_progress=False)
    assert fallback.diagnostics["entity"]["instances"] == sum(referred.values())
    assert fallback.diagnostics["entity"]["instance_sources"] == {"referred masks": len(referred)}


def test_sag_eval_diagnostics_flag(tiny_model, synthetic_root, tmp_path, capsys):
    import json

    from training.cli import eval_main

    tiny_model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    assert eval_main([str(tmp_path / "ckpt"), "--format", "synthetic", "--data", str(synthetic_root), "--split", "val",
                      "--diagnostics", "--json", str(out), "--limit", "5", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "**Diagnostics**" in printed and "from instances.json" in printed
    report = json.loads(out.read_text())
    assert report["diagnostics"]["expressions"]["count"] == 5 and report["groups"], "kinds found by the CLI"
