"""Fit and score the per-mask confidence of :mod:`sag.confidence`: does it rank masks as their IoU does?

1. Each trained checkpoint (``--checkpoints``, one or more) segments the synthetic benchmark's train, val and test
   splits as served (guided refinement and spatial words, the backend's default), and val and test also with the
   paper's inference (no refinement, no spatial words). Each mask gives the features of
   :func:`sag.confidence.mask_features` and its IoU.
2. Gradient-boosted regression trees of IoU (scikit-learn, squared error) are fitted on the train splits of all the
   checkpoints together, as served. The train split is the only one large enough for a model with interactions
   (7,154 masks per checkpoint; a logistic model fitted on val's 363 reached Spearman 0.41-0.53 on test); its masks are
   never trained on by SaG, which learns from texts. The settings in ``TREES`` were chosen on val (bench/README.md,
   "Mask confidence"). ``--write-model`` writes the ensemble to ``sag/confidence_model.json``, which the backend
   scores with; otherwise the script says whether that file matches the fit.
3. Reported for the shipped model on each checkpoint's val and test splits (per expression kind too), with the
   model fitted without that checkpoint (what a checkpoint the model never saw gets), and on the real-photo
   benchmark (``bench/real_photos.py``'s photos and texts; the first checkpoint and the untrained default model):
   Spearman(score, IoU), and of the lowest-scored 20 % of masks (the review-first list) how many have IoU < 0.3.
   Beside it each feature alone and the largest A_fuse (the score the backend sent first).

    pip install -e ".[bench]"   # scikit-learn, to fit
    python bench/confidence_benchmark.py --checkpoints RUN1/checkpoints/step-00000625 RUN2/... --data DATA
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SaG  # noqa: E402
from sag.confidence import (  # noqa: E402
    FEATURES,
    MODEL_FILE,
    TreeEnsemble,
    confidence_scores,
    fitted_model,
    mask_features,
    rank_report,
)
from sag.metrics import iou  # noqa: E402
from training import real_photos  # noqa: E402
from training.datasets.synthetic import synthetic_dataset  # noqa: E402
from training.evaluate import evaluate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
INFERENCES: dict[str, tuple[str, bool]] = {"paper": ("none", False), "served": ("guided", True)}
# Chosen on val (mean Spearman of two checkpoints; bench/README.md, "Mask confidence"). No early stopping and no
# subsampling: a refit on the same masks writes the same file.
TREES = {"max_iter": 300, "learning_rate": 0.05, "max_depth": 4, "min_samples_leaf": 80, "l2_regularization": 0.0,
         "random_state": 0}
# The score must never fall when the evidence for the mask rises (+1) or rise when the evidence against it does (-1):
# without these constraints the trees, fitted on one benchmark, scored a mask that matches its text better (higher
# region_match) lower in places, and scattered specks above one solid object. Features whose direction the data
# does not settle (size, the words, the whole-image match, the share of the main entity) are left free (0).
MONOTONE = {"peak": 1, "coverage": -1, "contrast": 1, "largest": 1, "fill": 1, "agreement": 1, "stability": 1,
            "support": 1, "margin": 1, "region_match": 1, "landmark_overlap": -1, "entity_gap": 1}


def _real_photos():
    """bench/real_photos.py as a module (bench/ is no package): its ``default_model``."""
    if "real_photos" not in sys.modules:
        spec = importlib.util.spec_from_file_location("real_photos", ROOT / "bench" / "real_photos.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["real_photos"] = module  # before running it: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["real_photos"]


class Masks:
    """The masks of one split and inference: features (M, F), unknown-word shares, emptiness, IoU, largest A_fuse,
    kinds."""

    def __init__(self):
        self.features, self.unknown, self.empty, self.iou, self.fuse, self.kind = [], [], [], [], [], []

    def add(self, seg, quality: float, tau: float, kind: str | None) -> None:
        """One Segmentation drawn with threshold ``tau``, of IoU ``quality``."""
        f = mask_features(seg, tau)
        self.features.append([f[name] for name in FEATURES])
        self.unknown.append(seg.unknown_words or 0.0)
        self.empty.append(not bool(seg.mask.any()))
        self.iou.append(quality)
        self.fuse.append(seg.score)
        self.kind.append(kind or "all")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Features (M, F), IoU (M,), unknown-word shares (M,) and emptiness (M,) bool."""
        return (np.asarray(self.features, np.float64), np.asarray(self.iou, np.float64), np.asarray(self.unknown),
                np.asarray(self.empty, bool))


def collect_synthetic(model: SaG, data_root: Path, split: str, inference: str) -> Masks:
    """Every expression of a synthetic split, segmented with one inference."""
    data = synthetic_dataset(data_root, split)
    kinds = {(e.ref_id, e.text): e.kind for e in data.expressions}
    out, tau = Masks(), model.config.threshold

    def hook(samples, _image, per_scheme) -> None:
        for sample, seg in zip(samples, per_scheme["ours"]):
            out.add(seg, iou(seg.mask, sample.mask), tau, kinds.get((sample.ref_id, sample.text)))

    refine, spatial = INFERENCES[inference]
    evaluate(model, data, schemes=("ours",), batch_size=64, show_progress=False, on_batch=hook, refine=refine,
             spatial=spatial)
    return out


def collect_real(model: SaG, cases: list) -> dict[str, Masks]:
    """The same per inference on the real-photo benchmark."""
    out, tau = {}, model.config.threshold
    for name, segs in real_photos.model_segmentations(model, cases).items():
        out[name] = Masks()
        for case, seg in zip(cases, segs):
            out[name].add(seg, real_photos.score_case(case, seg.mask.cpu().numpy())["iou"], tau, case.kind)
    return out


def fit_trees(sets: list[Masks]) -> TreeEnsemble:
    """Gradient-boosted trees of IoU on the non-empty masks of ``sets``, with the MONOTONE constraints, as a
    :class:`TreeEnsemble` (checked to score as scikit-learn does)."""
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:  # pragma: no cover - the bench extra
        raise SystemExit('fitting needs scikit-learn: pip install -e ".[bench]"') from None
    x, y, _, empty = (np.concatenate(parts) for parts in zip(*(s.arrays() for s in sets)))
    keep = ~empty  # empty masks score 0 by rule, not by the fit
    fit = HistGradientBoostingRegressor(**TREES, monotonic_cst=[MONOTONE.get(f, 0) for f in FEATURES],
                                        early_stopping=False).fit(x[keep], y[keep])
    # scikit-learn has no public export of these trees: its predictors' node arrays are read here, and the check
    # against fit.predict below fails loudly if a later version changes them.
    trees = []
    for (predictor,) in fit._predictors:
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        trees.append({"feature": np.where(leaf, -2, nodes["feature_idx"].astype(np.int64)),
                      "threshold": np.where(leaf, -2.0, nodes["num_threshold"].astype(np.float64)),
                      "left": np.where(leaf, -1, nodes["left"].astype(np.int64)),
                      "right": np.where(leaf, -1, nodes["right"].astype(np.int64)),
                      "value": nodes["value"].astype(np.float64)})
    model = TreeEnsemble(FEATURES, float(np.ravel(fit._baseline_prediction)[0]), 1.0, tuple(trees),
                         {"masks": int(keep.sum()), "settings": TREES, "monotone": MONOTONE,
                          "target": "IoU, squared error"})
    ours, theirs = model.predict(x), np.clip(fit.predict(x), 0.0, 1.0)
    if not np.allclose(ours, theirs, rtol=0, atol=1e-9):
        raise SystemExit(f"TreeEnsemble disagrees with scikit-learn by {np.abs(ours - theirs).max():.3g}")
    return model


def scores(model: TreeEnsemble, masks: Masks) -> np.ndarray:
    """What :func:`sag.confidence.mask_confidence` gives each mask with this model."""
    x, _, unknown, empty = masks.arrays()
    return confidence_scores(x, unknown, empty, model)


def report_for(masks: Masks, shipped: TreeEnsemble, unseen: TreeEnsemble | None = None) -> dict:
    """The shipped score's ranking report, per kind, and for comparison the model fitted without this checkpoint,
    each feature and the largest A_fuse."""
    x, y, unknown, _ = masks.arrays()
    s = scores(shipped, masks)
    rep = rank_report(s, y)
    rep["mean_iou"] = round(float(y.mean()), 4)
    kinds = np.asarray(masks.kind)
    rep["spearman_per_kind"] = {k: round(rank_report(s[kinds == k], y[kinds == k])["spearman"], 4)
                                for k in sorted(set(masks.kind))}
    if unseen is not None:
        rep["spearman_fitted_without_this_checkpoint"] = rank_report(scores(unseen, masks), y)["spearman"]
    rep["spearman_max_fuse_attn"] = rank_report(np.asarray(masks.fuse), y)["spearman"]
    rep["spearman_per_feature"] = {f: rank_report(x[:, i], y)["spearman"] for i, f in enumerate(FEATURES)}
    rep["spearman_per_feature"]["unknown_words"] = rank_report(unknown, y)["spearman"]
    return rep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True,
                        help="trained save_pretrained directories (the fit pools their train splits)")
    parser.add_argument("--data", type=Path, required=True, help="the folder holding synthetic/ (the benchmark)")
    parser.add_argument("--write-model", action="store_true", help=f"write the fitted ensemble to {MODEL_FILE}")
    parser.add_argument("--cache", type=Path, default=None, help="bench/real_photos.py's archive cache")
    parser.add_argument("--masks", type=Path, default=None,
                        help="a pickle of the collected synthetic masks: read when it holds these checkpoints and "
                             "features, else written (refits in seconds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained default model's heads")
    parser.add_argument("--out", type=Path, default=RESULTS / "confidence.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    models = {m.version: m for m in (SaG.from_pretrained(p) for p in args.checkpoints)}
    masks, masks_from = {}, None
    key = (sorted(models), FEATURES)
    if args.masks is not None and args.masks.is_file():
        with args.masks.open("rb") as fh:
            cached = pickle.load(fh)  # noqa: S301 - a file this script wrote
        if cached["key"] == key:
            masks, masks_from = cached["masks"], str(args.masks)
            print(f"masks read from {args.masks}", flush=True)
    for model in models.values() if not masks else ():
        for split, inferences in (("train", ("served",)), ("val", INFERENCES), ("test", INFERENCES)):
            for name in inferences:
                masks[(model.version, split, name)] = m = collect_synthetic(model, args.data, split, name)
                print(f"{model.version} {split} [{name}]: {len(m.iou)} masks, mean IoU {np.mean(m.iou):.3f}",
                      flush=True)
    if args.masks is not None:
        with args.masks.open("wb") as fh:
            pickle.dump({"key": key, "masks": masks}, fh)
    fitted = fit_trees([masks[(v, "train", "served")] for v in models])
    try:
        committed = fitted_model()
    except (OSError, ValueError) as exc:  # absent, or over other features: this fit replaces it with --write-model
        print(f"no usable {MODEL_FILE.name}: {exc}", flush=True)
        committed = None
    match = committed is not None and json.dumps(committed.to_dict()) == json.dumps(fitted.to_dict())
    if args.write_model:
        MODEL_FILE.write_text(json.dumps(fitted.to_dict()) + "\n", encoding="utf-8")
        fitted_model.cache_clear()
        print("wrote", MODEL_FILE)
    elif not match:
        print(f"{MODEL_FILE} does not hold this fit: pass --write-model to replace it", flush=True)
    shipped = fitted if args.write_model or committed is None else committed
    unseen = {v: fit_trees([masks[(o, "train", "served")] for o in models if o != v]) if len(models) > 1 else None
              for v in models}
    result = {
        "setup": {"checkpoints": {v: str(p) for v, p in zip(models, args.checkpoints)}, "data": str(args.data),
                  "features": list(FEATURES), "fit": "train splits of all checkpoints, served inference",
                  "trees": TREES, "inferences": {n: {"refine": r, "spatial_words": s}
                                                 for n, (r, s) in INFERENCES.items()},
                  "threshold": next(iter(models.values())).config.threshold,
                  "masks_read_from": masks_from},
        "model_file_matches_fit": match or args.write_model,
        "synthetic": {f"{v} {split}/{name}": report_for(masks[(v, split, name)], shipped, unseen[v])
                      for v in models for split in ("val", "test") for name in INFERENCES},
    }
    data = real_photos.load_texts()
    cases = real_photos.load_cases(data, real_photos.fetch_archives(data, args.cache or real_photos.DEFAULT_CACHE))
    default, preset = _real_photos().default_model(args.seed)
    first = next(iter(models.values()))
    result["real_photos"] = {}
    for label, m in ((f"checkpoint {first.version}", first), (f"untrained {preset} (seed {args.seed})", default)):
        for name, found in collect_real(m, cases).items():
            result["real_photos"][f"{label}/{name}"] = report_for(found, shipped)
    result["setup"]["seconds"] = round(time.perf_counter() - started, 1)
    for key, rep in {**result["synthetic"], **result["real_photos"]}.items():
        unseen_text = rep.get("spearman_fitted_without_this_checkpoint", math.nan)
        print(f"{key}: spearman {rep['spearman']:+.3f} (unseen {unseen_text:+.3f}, max A_fuse "
              f"{rep['spearman_max_fuse_attn']:+.3f}); lowest "
              f"{rep['review_count']}: {rep['review_iou_below_0.3']} with IoU < 0.3 (all: "
              f"{rep['all_iou_below_0.3']}/{rep['count']}); mean IoU {rep['mean_iou']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
