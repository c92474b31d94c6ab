"""How long Label Studio "Start Training" (training/finetune.py) takes on this machine's CPU, with the image backbone
trained (the default) or frozen with its features cached (``FinetuneConfig.freeze_image_backbone``).

    python -m training.synthetic --out /tmp/syn-b/synthetic --train 400 --val 40 --test 40 --compositional 40
    python bench/finetune_cpu_benchmark.py --data /tmp/syn-b --pairs 200 --steps 20 --freeze
    python bench/finetune_cpu_benchmark.py --data /tmp/syn-b --pairs 200 --steps 5            # backbone trained

The serving model is the backend's first-run model ``mobilenet-minilm`` (ImageNet MobileNetV2 stride 16 @ 384 +
MiniLM-L6, paper heads: D = 512, K = 36, T = 6), overridable with ``--set field=value`` (e.g. ``--set image_size=192``).
The project is ``--pairs`` image-text pairs of the synthetic train split given as Label Studio tasks (no masks, so no
validation: the time is loading + training + saving). ``--steps`` may be fewer than a real run's 200: the JSON gives
the per-step times (first epoch, when the cache is filled, and later ones) and the extrapolation to 200 steps.
Results go to ``bench/results/finetune-cpu-<frozen|trained>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SaG, paper_config  # noqa: E402
from training.datasets.base import load_image  # noqa: E402
from training.datasets.refcoco import refer_dataset  # noqa: E402
from training.finetune import FinetuneConfig, finetune, project_data  # noqa: E402
from training.registry import Registry  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/syn-b", help="root holding synthetic/ (refer layout)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps to run (a real run: 200)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--freeze", action="store_true", help="freeze the image backbone and cache its features")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="serving model config")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON path (default bench/results/finetune-cpu-<frozen|trained>.json)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    over = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            over[key] = json.loads(raw)
        except json.JSONDecodeError:
            over[key] = raw
    config = paper_config(image_backbone="mobilenet_v2", image_weights="package", text_backbone="minilm", **over)
    exprs = refer_dataset(Path(args.data), "synthetic", "train", with_masks=False).expressions[:args.pairs]
    tasks = [{"id": i, "data": {"image": e.image, "text": e.text}} for i, e in enumerate(exprs)]
    stamps: list[tuple[float, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        registry = Registry(Path(tmp) / "models")
        registry.promote(registry.add(SaG(config, pretrained=True), {"preset": "mobilenet-minilm"}).id)
        started = time.time()
        data = project_data(tasks, "image", ("text",), load_image)
        ft = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, freeze_image_backbone=args.freeze,
                            precision="fp32", show_progress=False)
        result = finetune(registry, data, ft, Path(tmp) / "run", report=lambda info: stamps.append((time.time(),
                                                                                                   dict(info))))
        total = time.time() - started
    train = [t for t, info in stamps if info.get("stage") == "training"]
    steps = [b - a for a, b in zip(train, train[1:])]
    per_epoch = max(1, len(data.pairs) // min(args.batch_size, len(data.pairs)))
    first, later = steps[:per_epoch], steps[per_epoch:]
    overhead = total - sum(steps)
    later_median = statistics.median(later) if later else statistics.median(first)
    first_sum_200 = sum(first) + max(0, min(200, per_epoch) - len(first)) * statistics.median(first)
    estimate_200 = overhead + first_sum_200 + max(0, 200 - per_epoch) * later_median
    out = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "model": {k: v for k, v in config.to_dict().items() if k in ("image_backbone", "image_size", "text_backbone",
                                                                       "embed_dim", "num_gaussians",
                                                                       "samples_per_gaussian", "iterations",
                                                                       "decoder_hidden", "decoder_layers")},
        "frozen_cached_backbone": args.freeze, "pairs": len(data.pairs), "images": data.images,
        "batch_size": args.batch_size, "steps_run": result.steps, "threads": args.threads,
        "total_s": round(total, 1), "non_training_s": round(overhead, 1),
        "step_s": {"first_epoch_median": round(statistics.median(first), 2) if first else None,
                   "later_epochs_median": round(statistics.median(later), 2) if later else None,
                   "steps_per_epoch": per_epoch},
        "estimated_200_steps_s": round(estimate_200, 1),
        "load_average": os.getloadavg(),
    }
    path = Path(args.out or ROOT / "bench" / "results" / f"finetune-cpu-{'frozen' if args.freeze else 'trained'}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
