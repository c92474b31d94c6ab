"""Fit and score the per-mask confidence of :mod:`sag.confidence`: does it rank masks as their IoU does?

1. A trained checkpoint segments the synthetic benchmark's val and test splits with both inferences (the paper's:
   no refinement, no spatial words; as served: guided refinement and spatial words). Each mask gives the features of
   :func:`sag.confidence.mask_features` and its IoU.
2. A logistic model of IoU (binomial deviance with the IoU as a fractional target, a small L2 penalty, Newton's
   method) is fitted on val with the served inference (the backend's default; pooling in the paper's inference, where
   ``agreement`` is 1 by construction, would make that feature a flag for the weaker inference); its coefficients
   are what ``sag/confidence.py`` holds as ``WEIGHTS`` / ``INTERCEPT`` (the script says whether they match; copy them
   there when it says not).
3. Reported on test and on the real-photo benchmark (``bench/real_photos.py``'s photos and texts; the checkpoint and
   the untrained default model): Spearman(score, IoU), and of the lowest-scored 20 % of masks (the review-first list)
   how many have IoU < 0.3. Beside it the same for each feature alone (``spearman_per_feature``, with the share of
   unknown words, which is a fixed factor of the score rather than a fitted feature) and for the score the backend
   sent before, the largest A_fuse.

    python bench/confidence_benchmark.py --checkpoint <run>/checkpoints/step-00000625 --data <folder holding synthetic/>
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SaG  # noqa: E402
from sag.confidence import FEATURES, INTERCEPT, WEIGHTS, combine, mask_features, rank_report  # noqa: E402
from sag.metrics import iou  # noqa: E402
from training import real_photos  # noqa: E402
from training.datasets.synthetic import synthetic_dataset  # noqa: E402
from training.evaluate import evaluate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
INFERENCES: tuple[tuple[str, str, bool], ...] = (("paper", "none", False), ("served", "guided", True))
L2 = 1e-3


def _real_photos():
    """bench/real_photos.py as a module (bench/ is no package): its ``default_model``."""
    if "real_photos" not in sys.modules:
        spec = importlib.util.spec_from_file_location("real_photos", ROOT / "bench" / "real_photos.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["real_photos"] = module  # before running it: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["real_photos"]


def collect_synthetic(model: SaG, data_root: Path, split: str, refine: str, spatial: bool,
                      limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (M, F + 1: FEATURES, then the share of unknown words), IoU (M,) and largest A_fuse (M,) of every
    expression of a synthetic split."""
    data = synthetic_dataset(data_root, split)
    feats, ious, fuse = [], [], []
    tau = model.config.threshold

    def hook(samples, _image, per_scheme) -> None:
        for sample, seg in zip(samples, per_scheme["ours"]):
            f = mask_features(seg, tau)
            feats.append([f[name] for name in FEATURES] + [seg.unknown_words or 0.0])
            ious.append(iou(seg.mask, sample.mask))
            fuse.append(seg.score)

    evaluate(model, data, schemes=("ours",), batch_size=64, show_progress=False, on_batch=hook, refine=refine,
             spatial=spatial, limit=limit)
    return np.asarray(feats, np.float64), np.asarray(ious, np.float64), np.asarray(fuse, np.float64)


def collect_real(model: SaG, cases: list) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The same per inference on the real-photo benchmark."""
    out = {}
    tau = model.config.threshold
    for name, segs in real_photos.model_segmentations(model, cases).items():
        feats = [[mask_features(seg, tau)[f] for f in FEATURES] + [seg.unknown_words or 0.0] for seg in segs]
        ious = [real_photos.score_case(case, seg.mask.cpu().numpy())["iou"] for case, seg in zip(cases, segs)]
        out[name] = (np.asarray(feats, np.float64), np.asarray(ious, np.float64),
                     np.asarray([seg.score for seg in segs], np.float64))
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 50) -> tuple[np.ndarray, float]:
    """Weights (F,) and intercept of sigmoid(b + x . w) ~ y in [0, 1] by Newton's method on the binomial deviance
    (the intercept is not penalised)."""
    a = np.hstack([np.ones((len(x), 1)), x])
    theta = np.zeros(a.shape[1])
    penalty = np.full(a.shape[1], l2 * len(x))
    penalty[0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ theta, -60, 60)))
        grad = a.T @ (p - y) + penalty * theta
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty) + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta[1:], float(theta[0])


LARGEST = FEATURES.index("largest")  # 0 only for an empty mask, which mask_confidence scores 0
UNKNOWN = len(FEATURES)  # the trailing column: the share of unknown words, a fixed factor (1 - share), not fitted


def scores(x: np.ndarray, weights, intercept: float) -> np.ndarray:
    """What :func:`sag.confidence.mask_confidence` gives for each row of features (M, F + 1) with these constants."""
    return np.array([combine(dict(zip(FEATURES, row)), weights, intercept) * (1.0 - row[UNKNOWN])
                     if row[LARGEST] > 0 else 0.0 for row in x])


def report_for(x: np.ndarray, y: np.ndarray, fuse: np.ndarray, weights, intercept: float) -> dict:
    """The score's ranking report, and each feature's and the largest A_fuse's Spearman for comparison."""
    base = rank_report(scores(x, weights, intercept), y)
    base["mean_iou"] = round(float(y.mean()), 4)
    base["spearman_per_feature"] = {f: rank_report(x[:, i], y)["spearman"]
                                    for i, f in enumerate((*FEATURES, "unknown_words"))}
    base["mean_unknown_words"] = round(float(x[:, UNKNOWN].mean()), 4)
    base["spearman_max_fuse_attn"] = rank_report(fuse, y)["spearman"]
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained save_pretrained directory")
    parser.add_argument("--data", type=Path, required=True, help="the folder holding synthetic/ (the benchmark)")
    parser.add_argument("--cache", type=Path, default=None, help="bench/real_photos.py's archive cache")
    parser.add_argument("--limit", type=int, default=None, help="at most this many expressions per split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained default model's heads")
    parser.add_argument("--out", type=Path, default=RESULTS / "confidence.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = SaG.from_pretrained(args.checkpoint)
    synthetic = {}
    for split in ("val", "test"):
        for name, refine, spatial in INFERENCES:
            synthetic[(split, name)] = collect_synthetic(model, args.data, split, refine, spatial, args.limit)
            print(f"{split} [{name}]: {len(synthetic[(split, name)][1])} masks, mean IoU "
                  f"{synthetic[(split, name)][1].mean():.3f}", flush=True)
    x_val, y_val, _ = synthetic[("val", "served")]
    keep = x_val[:, LARGEST] > 0  # empty masks score 0 by rule, not by the fit
    weights, intercept = fit_logistic(x_val[keep][:, :UNKNOWN], y_val[keep])
    fitted = {"weights": [round(float(w), 3) for w in weights], "intercept": round(intercept, 3)}
    committed = {"weights": list(WEIGHTS), "intercept": INTERCEPT}
    match = committed == fitted
    print("fitted:", fitted, "| sag/confidence.py holds:", committed, "| match:", match, flush=True)
    # every figure below is for the committed constants: what the backend would send
    use_w, use_b = WEIGHTS, INTERCEPT
    result = {
        "setup": {"checkpoint": str(args.checkpoint), "version": model.version, "data": str(args.data),
                  "features": list(FEATURES), "fit": "val split, served inference", "l2": L2,
                  "inferences": {n: {"refine": r, "spatial_words": s} for n, r, s in INFERENCES},
                  "threshold": model.config.threshold, "limit": args.limit},
        "fitted": fitted, "committed": committed, "committed_matches_fit": match,
        "synthetic": {f"{split}/{name}": report_for(*synthetic[(split, name)], use_w, use_b)
                      for split in ("val", "test") for name, _, _ in INFERENCES},
    }
    data = real_photos.load_texts()
    cases = real_photos.load_cases(data, real_photos.fetch_archives(data, args.cache or real_photos.DEFAULT_CACHE))
    default, preset = _real_photos().default_model(args.seed)
    result["real_photos"] = {}
    for label, m in ((f"checkpoint {model.version}", model), (f"untrained {preset} (seed {args.seed})", default)):
        for name, (x, y, fuse) in collect_real(m, cases).items():
            result["real_photos"][f"{label}/{name}"] = report_for(x, y, fuse, use_w, use_b)
    result["setup"]["seconds"] = round(time.perf_counter() - started, 1)
    for key, rep in {**result["synthetic"], **result["real_photos"]}.items():
        print(f"{key}: spearman {rep['spearman']:+.3f} (max A_fuse {rep['spearman_max_fuse_attn']:+.3f}); lowest "
              f"{rep['review_count']}: {rep['review_iou_below_0.3']} with IoU < 0.3 (all: "
              f"{rep['all_iou_below_0.3']}/{rep['count']}); mean IoU {rep['mean_iou']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
