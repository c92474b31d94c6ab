"""The two inference levers beyond the paper, alone and together, on trained checkpoints (two seeds).

    # the checkpoints: bench/synthetic_benchmark.py --presets cpu-synthetic --budget-steps 1875 --train-seed S
    python bench/levers_benchmark.py eval RUN_SEED1/checkpoints/step-00001875 RUN_SEED2/checkpoints/step-00001875 \
        --data /tmp/sag-bench-data --splits val test compositional --json bench/results/levers.json
    # ms the spatial words add per 512 x 512 mask on a real photo, against the model's own time
    python bench/levers_benchmark.py time --json bench/results/levers-time.json

Rows (every one scored on the same checkpoint, so the training budget is equal by construction):

* ``paper``: the authors' inference, A_slot . A_fuse bilinearly upsampled, thresholded (``--refine none``, spatial
  words off);
* ``+ edges``: the guided-filter refinement of the soft map (:mod:`sag.refine`);
* ``+ spatial words``: the region that "leftmost" / "above the ..." / "small" picks (:mod:`sag.spatial`);
* ``both``: the default of SaG Assist.

Each row has mIoU, acc@0.5 / 0.7, the boundary F at 2 px, pointing, entity mBO and the oracle entity (the last three
describe the model's maps, so they are the same in every row), per expression kind, for our inference and MAX.
Also a direction check on the paper row: the IoU between the mask for a text and for the same text with its
direction words mirrored (left <-> right, top <-> bottom); near 1 means the model's masks ignore which way a text
points. Choices were made on val; test and compositional are reported, not tuned on.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bench/ is on the path (this script's own folder)
from refine_benchmark import _time_arguments, median_ms, run_commands  # noqa: E402

from sag import SaG  # noqa: E402
from sag.metrics import iou  # noqa: E402
from training.datasets.refcoco import refer_dataset  # noqa: E402
from training.evaluate import evaluate  # noqa: E402

# (row, refine, spatial words)
LEVERS: list[tuple[str, str, bool]] = [
    ("paper", "none", False), ("+ edges", "guided", False), ("+ spatial words", "none", True),
    ("both", "guided", True),
]
MIRROR = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost", "top": "bottom",
          "bottom": "top", "topmost": "bottommost", "bottommost": "topmost", "above": "below", "below": "above"}


def mirrored(text: str) -> str:
    return re.sub(r"\b(" + "|".join(MIRROR) + r")\b", lambda m: MIRROR[m.group(1)], text)


def direction_iou(model: SaG, data, batch_size: int = 64) -> dict:
    """Mean IoU between the paper-inference mask of each text with a direction word and of its mirrored text."""
    texts = [(i, e.text) for i, e in enumerate(data.expressions) if mirrored(e.text) != e.text]
    values: dict[str, list[float]] = {}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            samples = [data[i] for i, _ in chunk]
            image = model.encode_image(model.preprocess([s.image for s in samples]))
            sizes = [s.mask.shape for s in samples]
            own = model.segment(image, model.encode_text(**model.tokenize([t for _, t in chunk])), sizes,
                                refine="none")
            flip = model.segment(image, model.encode_text(**model.tokenize([mirrored(t) for _, t in chunk])), sizes,
                                 refine="none")
            for (i, _), a, b in zip(chunk, own, flip):
                values.setdefault(data.expressions[i].kind or "?", []).append(iou(a.mask, b.mask))
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(values.items())} | {
        "all": round(float(np.mean([x for v in values.values() for x in v])), 3), "count": len(texts)}


def evaluate_levers(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    out: dict = {"checkpoints": args.checkpoints, "splits": {}, "direction_iou": {}}
    for split in args.splits:
        data = refer_dataset(args.data, "synthetic", split)
        kinds = [e.kind or "?" for e in data.expressions]
        out["splits"][split] = {}
        for ckpt in args.checkpoints:
            model = SaG.from_pretrained(ckpt)
            runs = out["splits"][split].setdefault(ckpt, {})
            for row, refine, spatial in LEVERS:
                started = time.time()
                report = evaluate(model, data, schemes=("ours", "max"), batch_size=64, group_of=kinds.__getitem__,
                                  show_progress=False, diagnostics=True, refine=refine, spatial=spatial)
                runs[row] = {**report.to_dict(), "seconds": round(time.time() - started, 1)}
                print(f"{split} {ckpt} {row}: mIoU {report.schemes['ours']['mIoU']:.3f} "
                      f"(MAX {report.schemes['max']['mIoU']:.3f}) "
                      + " ".join(f"{g} {m['mIoU']:.3f}" for g, m in report.groups.items()), flush=True)
            if split == "val":
                out["direction_iou"][ckpt] = direction_iou(model, data)
                print(f"direction IoU {ckpt}: {out['direction_iou'][ckpt]}", flush=True)
    print(table(out))
    return out


def _mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ({' / '.join(f'{v:.3f}' for v in values)})" if len(values) > 1
                                                else "")


# (header, value of one run's report) for the table's columns
COLUMNS: list[tuple[str, object]] = [
    ("mIoU", lambda r: r["schemes"]["ours"]["mIoU"]),
    ("acc@0.5", lambda r: r["schemes"]["ours"]["acc@0.5"]),
    ("acc@0.7", lambda r: r["schemes"]["ours"]["acc@0.7"]),
    ("boundary F", lambda r: r["diagnostics"]["expressions"]["boundary_F"]),
    *((kind, lambda r, kind=kind: r["groups"][kind]["mIoU"]) for kind in ("attribute", "absolute", "relation")),
    ("MAX mIoU", lambda r: r["schemes"]["max"]["mIoU"]),
    ("pointing", lambda r: r["diagnostics"]["expressions"]["pointing"]),
    ("mBO", lambda r: r["diagnostics"]["entity"]["mBO"]),
    ("oracle entity", lambda r: r["diagnostics"]["expressions"]["oracle_entity_mIoU"]),
]


def table(result: dict) -> str:
    """Markdown, one table per split: the mean over checkpoints (each seed in brackets) of every row."""
    lines = []
    for split, runs in result["splits"].items():
        lines += [f"**{split}** ({len(runs)} seeds: mean (seed values))", "",
                  "| row | " + " | ".join(name for name, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for row, _, _ in LEVERS:
            reports = [r[row] for r in runs.values()]
            lines.append(f"| {row} | " + " | ".join(_mean([get(r) for r in reports]) for _, get in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


def timing(args: argparse.Namespace) -> dict:
    """ms per text on a 512 x 512 photo (scikit-image's astronaut) with the served model (guided refinement on):
    spatial words off, a text with an absolute cue (one more text segmented) and one with a relation (two more)."""
    from skimage import data as skdata

    from backend.presets import build_initial_model
    from sag.pipeline import segment_texts

    torch.set_num_threads(args.threads)
    photo = skdata.astronaut()
    model = build_initial_model("mobilenet-minilm")[0].eval()
    with torch.no_grad():
        image = model.encode_image(model.preprocess([photo]))
    cases = {"no spatial words": ("the astronaut", False), "spatial words off": ("the astronaut on the left", False),
             "absolute (+1 text)": ("the astronaut on the left", True),
             "relation (+2 texts)": ("the flag above the astronaut", True)}
    out = {"threads": args.threads, "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__, "encode_image_ms": median_ms(
               lambda: model.encode_image(model.preprocess([photo])), args.repeats), "segment_ms": {}}
    for name, (text, spatial) in cases.items():
        with torch.no_grad():
            out["segment_ms"][name] = median_ms(lambda: segment_texts(
                model, image, [text], [(512, 512)], guides=[photo], refine="guided", spatial=spatial), args.repeats)
    for k, v in {"encode image": out["encode_image_ms"], **out["segment_ms"]}.items():
        print(f"{k}: {v:.1f} ms")
    return out


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", required=True, help="the synthetic data root (holding synthetic/)")
    parser.add_argument("--splits", nargs="+", default=["val"])


def main(argv: list[str] | None = None) -> int:
    return run_commands(__doc__, {"eval": (evaluate_levers, _eval_arguments, "the four rows per checkpoint and split"),
                                  "time": (timing, _time_arguments, "ms the spatial words add per mask")}, argv)


if __name__ == "__main__":
    sys.exit(main())
