"""Mask refinement in evaluation: sag-eval --refine, and diagnostics on the expressions pointed at correctly."""

import json

import numpy as np
import pytest

from training.cli import eval_main
from training.datasets.refcoco import refer_dataset
from training.evaluate import evaluate, format_table


@pytest.fixture
def val(synthetic_root):
    return refer_dataset(synthetic_root, "synthetic", "val")


def test_refinement_changes_masks_but_not_the_pointed_subset(tiny_model, val):
    plain = evaluate(tiny_model, val, batch_size=8, diagnostics=True, refine="none", show_progress=False)
    guided = evaluate(tiny_model, val, batch_size=8, diagnostics=True, refine="guided", show_progress=False)
    assert plain.diagnostics["refine"] == "none" and guided.diagnostics["refine"] == "guided"
    # pointing is read on the map before refinement, so both runs judge the same subset of expressions
    for report in (plain, guided):
        diag = report.diagnostics
        assert diag["expressions"]["pointing"] == plain.diagnostics["expressions"]["pointing"]
        assert diag["pointed"]["count"] == plain.diagnostics["pointed"]["count"]
    assert guided.schemes["ours"] != plain.schemes["ours"], "the guided filter re-draws the masks"
    pointed = plain.diagnostics["pointed"]
    if pointed["count"]:  # a pointed subset's metrics are those of a subset, and it is labelled in the table
        assert pointed["count"] <= plain.count and 0 <= pointed["acc@0.7"] <= pointed["acc@0.5"] <= 1
        assert "| pointed at correctly |" in format_table(plain)
    assert "mask refinement guided" in format_table(guided)


def test_sag_eval_refine_flag(tiny_model, synthetic_root, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    results = {}
    for method in ("none", "guided"):
        out = tmp_path / f"{method}.json"
        assert eval_main([str(tmp_path / "ckpt"), "--format", "synthetic", "--data", str(synthetic_root), "--split",
                          "val", "--refine", method, "--json", str(out), "--limit", "6", "--quiet",
                          "--device", "cpu"]) == 0
        results[method] = json.loads(out.read_text())
        assert results[method]["refine"] == method
    assert results["none"]["schemes"]["ours"]["count"] == results["guided"]["schemes"]["ours"]["count"] == 6
    with pytest.raises(SystemExit):  # argparse refuses a method it does not know
        eval_main([str(tmp_path / "ckpt"), "--format", "synthetic", "--data", str(synthetic_root), "--refine", "crf"])
    assert np.isfinite(results["guided"]["schemes"]["ours"]["mIoU"])
