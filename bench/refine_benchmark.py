"""Edge-aware mask refinement (sag/refine.py): quality of each method and setting on a split, and its CPU time.

    # the settings on the val split (one model pass; every refinement applied to the same bilinear maps)
    python bench/refine_benchmark.py sweep CHECKPOINT --data /tmp/syn-r --split val \
        --json bench/results/refine-sweep-val.json
    # ms per 512 x 512 mask for each method, against the model's own time per image
    python bench/refine_benchmark.py time --json bench/results/refine-cpu.json

The sweep scores mIoU, acc@0.5 / 0.7 and the boundary F at 2 px overall and on the expressions the model points at
correctly (pointing on the unrefined map, so the subset is the same for every row). The chosen settings' final
numbers come from ``sag-eval --diagnostics --refine METHOD`` (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sag import SaG  # noqa: E402
from sag.metrics import boundary_f_score, iou, pointing_hit  # noqa: E402
from sag.pipeline import predict  # noqa: E402
from sag.refine import patch_cell, refine  # noqa: E402

# (name, method, options): the settings compared on val.
VARIANTS: list[tuple[str, str, dict]] = [
    ("none", "none", {}),
    ("guided r=0.5 cell eps=1e-2", "guided", {"radius_cells": 0.5, "eps": 1e-2}),
    ("guided r=1 cell eps=1e-3", "guided", {"radius_cells": 1.0, "eps": 1e-3}),
    ("guided r=1 cell eps=1e-2", "guided", {"radius_cells": 1.0, "eps": 1e-2}),
    ("guided r=1 cell eps=1e-1", "guided", {"radius_cells": 1.0, "eps": 1e-1}),
    ("guided r=2 cells eps=1e-3", "guided", {"radius_cells": 2.0, "eps": 1e-3}),
    ("guided r=2 cells eps=1e-2", "guided", {"radius_cells": 2.0, "eps": 1e-2}),
    ("guided r=3 cells eps=1e-2", "guided", {"radius_cells": 3.0, "eps": 1e-2}),
    ("guided r=4 cells eps=1e-2", "guided", {"radius_cells": 4.0, "eps": 1e-2}),
    ("slic 100 segments", "slic", {"n_segments": 100}),
    ("slic 300 segments", "slic", {"n_segments": 300}),
    ("slic 1 per cell", "slic", {"segments_per_cell": 1.0}),
    ("slic 4 per cell", "slic", {"segments_per_cell": 4.0}),
]


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"count": 0}
    ious = np.array([r["iou"] for r in rows])
    return {"count": len(rows), "mIoU": float(ious.mean()), "acc@0.5": float((ious >= 0.5).mean()),
            "acc@0.7": float((ious >= 0.7).mean()), "boundary_F": float(np.mean([r["bf"] for r in rows]))}


def sweep(args: argparse.Namespace) -> dict:
    from training.datasets import open_dataset

    torch.set_num_threads(args.threads)
    model = SaG.from_pretrained(args.checkpoint)
    data = open_dataset("synthetic", args.data, args.split, with_masks=True)
    tau = model.config.threshold
    per_variant: dict[str, list[dict]] = {name: [] for name, _, _ in VARIANTS}
    seconds: dict[str, float] = {name: 0.0 for name, _, _ in VARIANTS}
    pointed: list[bool] = []
    with torch.no_grad():
        for start in range(0, len(data), 32):
            samples = [data[i] for i in range(start, min(len(data), start + 32))]
            image = model.encode_image(model.preprocess([s.image for s in samples]))
            text = model.encode_text(**model.tokenize([s.text for s in samples]))
            segs = model.segment(image, text, [s.mask.shape for s in samples], refine="none")
            for s, seg in zip(samples, segs):
                pointed.append(pointing_hit(seg.soft, s.mask) >= 0.5)
                cell = patch_cell(image.grid, s.mask.shape)
                for name, method, options in VARIANTS:
                    started = time.perf_counter()
                    soft = refine(seg.soft, s.image, method, cell=cell, **options)
                    seconds[name] += time.perf_counter() - started
                    mask = soft >= tau
                    per_variant[name].append({"iou": iou(mask, s.mask), "bf": boundary_f_score(mask, s.mask)})
    results = {}
    for name, method, options in VARIANTS:
        rows = per_variant[name]
        results[name] = {"method": method, "options": options, "all": _summary(rows),
                         "pointed": _summary([r for r, p in zip(rows, pointed) if p]),
                         "ms_per_mask": 1000 * seconds[name] / len(rows)}
    out = {"checkpoint": str(args.checkpoint), "split": args.split, "expressions": len(pointed),
           "pointing": float(np.mean(pointed)), "image_size": list(data[0].mask.shape), "variants": results}
    print(f"{args.split}: {len(pointed)} expressions, pointing {np.mean(pointed):.3f}")
    print("| setting | mIoU | acc@0.5 | acc@0.7 | boundary F | pointed: mIoU | acc@0.5 | acc@0.7 | boundary F |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        a, p = r["all"], r["pointed"]
        print(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for m in (a, p) for c in ("mIoU", "acc@0.5", "acc@0.7",
                                                                                     "boundary_F")) + " |")
    return out


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def timing(args: argparse.Namespace) -> dict:
    """ms per 512 x 512 mask for each method on real photos (scikit-image's astronaut, coffee resized), with the
    patch cell of a 24 x 24 grid (the paper's ViT-S/16 at 384) and of a 12 x 12 grid (the CPU preset), against the
    model's own time per 512 x 512 image (encode + one text + segment) for the served preset and the CPU one."""
    from PIL import Image
    from skimage import data as skdata

    torch.set_num_threads(args.threads)
    photos = {"astronaut": skdata.astronaut(),
              "coffee": np.asarray(Image.fromarray(skdata.coffee()).resize((512, 512), Image.BICUBIC))}
    rng = torch.Generator().manual_seed(0)
    out: dict = {"threads": args.threads, "repeats": args.repeats, "cpu": platform.processor() or platform.machine(),
                 "cores": os.cpu_count(), "torch": torch.__version__, "refine_ms": {}, "model_ms": {}}
    for grid in (24, 12):
        coarse = torch.rand(1, 1, grid, grid, generator=rng)
        soft = torch.nn.functional.interpolate(coarse, size=(512, 512), mode="bilinear", align_corners=False)[0, 0]
        soft = (soft - soft.min()) / (soft.max() - soft.min())
        for method in ("guided", "slic"):
            ms = [median_ms(lambda: refine(soft, photo, method, cell=512 / grid), args.repeats)
                  for photo in photos.values()]
            out["refine_ms"][f"{method} grid {grid}"] = float(np.mean(ms))
    # a 12-megapixel photo (the fast guided filter's banded full-size pass), 24 x 24 grid
    big = np.asarray(Image.fromarray(photos["astronaut"]).resize((4000, 3000), Image.BICUBIC))
    soft = torch.nn.functional.interpolate(torch.rand(1, 1, 24, 24, generator=rng), size=(3000, 4000),
                                           mode="bilinear", align_corners=False)[0, 0]
    soft = (soft - soft.min()) / (soft.max() - soft.min())
    out["refine_ms"]["guided 4000x3000 grid 24"] = median_ms(lambda: refine(soft, big, "guided", cell=4000 / 24), 3)
    for name, make in (("mobilenet-minilm (served default)", _served_model), ("cpu-synthetic", _cpu_model)):
        model = make()
        if model is None:
            continue
        model.eval()
        photo = photos["astronaut"]
        out["model_ms"][name] = median_ms(lambda: predict(model, [photo], ["the astronaut"], refine="none"),
                                           args.repeats)
    for k, v in {**out["refine_ms"], **out["model_ms"]}.items():
        print(f"{k}: {v:.1f} ms")
    return out


def _served_model():
    try:
        from backend.presets import build_initial_model

        return build_initial_model("mobilenet-minilm")[0]
    except Exception as exc:  # its offline weights packages may be missing
        print(f"skipping the served preset: {exc}")
        return None


def _cpu_model():
    from training.presets import get_preset

    return SaG(get_preset("cpu-synthetic").model)


def run_commands(doc: str, commands: dict, argv: list[str] | None = None) -> int:
    """A bench command line of sub-commands: ``commands`` maps a name to (function of the parsed arguments -> a
    JSON-able result, a function adding the sub-command's own arguments, its help). Every sub-command also takes
    ``--threads`` (torch CPU threads, default 1) and ``--json`` (where to write the result)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_arguments, help_text) in commands.items():
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.add_argument("--threads", type=int, default=1)
        command.add_argument("--json")
    args = parser.parse_args(argv)
    result = commands[args.command][0](args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the synthetic data root (holding synthetic/)")
    parser.add_argument("--split", default="val")


def _time_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=10)


def main(argv: list[str] | None = None) -> int:
    return run_commands(__doc__, {"sweep": (sweep, _sweep_arguments, "every setting on one split"),
                                  "time": (timing, _time_arguments, "ms per 512 x 512 mask")}, argv)


if __name__ == "__main__":
    sys.exit(main())
