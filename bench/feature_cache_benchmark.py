"""Training step time with and without the frozen-backbone feature cache (training/feature_cache.py).

    python -m training.synthetic --out /tmp/syn-b/synthetic --train 400 --val 40 --test 40 --compositional 40
    python bench/feature_cache_benchmark.py --data /tmp/syn-b          # -> bench/results/feature-cache-steps.json

For each image backbone variant (the ``cpu-synthetic-mobilenet`` preset with its backbone and input size overridden;
``cpu-synthetic`` itself as the reference) it runs the training loop on the synthetic train split with the cache off
(the frozen backbone runs on every batch) and on (in memory), and reports per-step wall times: for the cache, the
first epoch (every image's features computed once: "cold") apart from later epochs (all hits, images not even loaded:
"warm"). No validation; one thread by default. Times on a shared machine are noisy: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.datasets.refcoco import refer_dataset  # noqa: E402
from training.engine import Trainer  # noqa: E402
from training.presets import build_model, get_preset  # noqa: E402

# name: (preset, model overrides)
VARIANTS = {
    "tiny-vit@96 (cpu-synthetic)": ("cpu-synthetic", {}),
    "mobilenet_v2@192 (s16, 12x12)": ("cpu-synthetic-mobilenet", {"image_backbone": "mobilenet_v2", "image_size": 192}),
    "mobilenet_v2_s8@128 (16x16)": ("cpu-synthetic-mobilenet", {"image_backbone": "mobilenet_v2_s8",
                                                                "image_size": 128}),
    "mobilenet_v2_s8s16@128 (16x16)": ("cpu-synthetic-mobilenet", {"image_backbone": "mobilenet_v2_s8s16",
                                                                   "image_size": 128}),
    "mobilenet_v2_s8s16@192 (24x24)": ("cpu-synthetic-mobilenet", {"image_backbone": "mobilenet_v2_s8s16",
                                                                   "image_size": 192}),
}


def time_steps(preset_name: str, model_over: dict, cache: str, steps: int, train_data, batch_size: int) -> dict:
    """Run ``steps`` optimizer steps; per-step wall times split into the first epoch and the later ones."""
    preset = get_preset(preset_name, model_over, {"max_steps": steps, "feature_cache": cache, "resume": False,
                                                  "batch_size": batch_size, "checkpoint_every": 10**9,
                                                  "warmup_steps": 0, "log_every": 10**6})
    model = build_model(preset)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, train_data, preset.train, out, progress=lambda *a: stamps.append(time.time()),
                          show_progress=False)
        started = time.time()
        trainer.fit()
    times = [b - a for a, b in zip([started] + stamps[:-1], stamps)]
    per_epoch = trainer.steps_per_epoch
    cold, warm = times[:per_epoch], times[per_epoch:]

    def summary(xs):
        return {"steps": len(xs), "median_s": round(statistics.median(xs), 3), "mean_s": round(statistics.mean(xs), 3)
                } if xs else None

    stats = trainer.feature_cache.stats if trainer.feature_cache is not None else None
    return {"cache": cache, "first_epoch": summary(cold), "later_epochs": summary(warm), "all": summary(times),
            "steps_per_epoch": per_epoch,
            "cache_stats": vars(stats) if stats is not None else None,
            "grid": list(model.image_encoder(torch.zeros(1, 3, preset.model.image_size, preset.model.image_size))[1]),
            "image_size": preset.model.image_size, "image_backbone": preset.model.image_backbone}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/syn-b", help="root holding synthetic/ (refer layout)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=22, help="steps with the cache (2 epochs of the 400-scene set)")
    parser.add_argument("--off-steps", type=int, default=6, help="steps without the cache (all alike)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "feature-cache-steps.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    train = refer_dataset(Path(args.data), "synthetic", "train", with_masks=False)
    results = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                           "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
               "data": {"root": args.data, "pairs": len(train), "images": len({e.image for e in train.expressions})},
               "batch_size": args.batch_size, "variants": {}}
    for name in args.variants:
        preset_name, over = VARIANTS[name]
        runs = {}
        for cache, steps in (("off", args.off_steps), ("memory", args.steps)):
            runs[cache] = time_steps(preset_name, over, cache, steps, train, args.batch_size)
            print(name, cache, json.dumps({k: runs[cache][k] for k in ("first_epoch", "later_epochs")}), flush=True)
        off, warm = runs["off"]["all"]["median_s"], runs["memory"]["later_epochs"]
        runs["speedup_warm"] = round(off / warm["median_s"], 2) if warm else None
        results["variants"][name] = runs
    results["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
