"""The synthetic CPU benchmark: train SaG from scratch on synthetic image-text pairs, then measure its masks.

    python bench/synthetic_benchmark.py                       # entity slots (ours), ~20 min on 2 CPU cores
    python bench/synthetic_benchmark.py --slot-types entity,random,query

For each slot type (equal K) it trains the ``cpu-synthetic`` preset on the train split (texts only; validation on the
val split picks the best checkpoint), then evaluates the best checkpoint on the held-out test split and on the
compositional split with our inference, the MAX / AVG / MIN schemes and two text-blind baselines (whole image, centred
blob). It writes ``bench/results/synthetic.json`` and prints Markdown tables. The test and compositional splits are
never looked at during training or model selection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SCHEMES, SaG  # noqa: E402
from training.datasets.refcoco import refer_dataset  # noqa: E402
from training.datasets.synthetic import SyntheticConfig, write_benchmark  # noqa: E402
from training.evaluate import BASELINES, evaluate, format_table  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.presets import build_model, get_preset  # noqa: E402


def ensure_data(root: Path, config: SyntheticConfig) -> Path:
    """Generate the benchmark into ``root/synthetic`` unless the same config is already there."""
    target = root / "synthetic"
    stamp = target / "synthetic.json"
    if stamp.is_file():
        from dataclasses import asdict

        if json.loads(stamp.read_text()) == json.loads(json.dumps(asdict(config))):
            return target
        raise SystemExit(f"{target} holds a benchmark with another config; remove it or pick another --data")
    return write_benchmark(target, config)


def run_slot_type(slot_type: str, args, data_root: Path) -> dict:
    preset = get_preset("cpu-synthetic", model={"slot_type": slot_type},
                       train={"max_steps": args.steps, "eval_every": args.eval_every, "resume": True})
    model = build_model(preset)
    train = refer_dataset(data_root, "synthetic", "train", with_masks=False)
    val = refer_dataset(data_root, "synthetic", "val")
    out_dir = Path(args.runs) / slot_type
    started, cpu_started = time.time(), time.process_time()
    result = Trainer(model, train, preset.train, out_dir, val_data=val,
                     metadata={"trained_on": {"format": "synthetic", "split": "train", "pairs": len(train)}},
                     show_progress=not args.quiet).fit()
    wall, cpu = time.time() - started, time.process_time() - cpu_started
    best = SaG.from_pretrained(result.best_checkpoint or result.last_checkpoint)
    splits = {}
    for split in ("test", "compositional"):
        data = refer_dataset(data_root, "synthetic", split)
        kinds = [e.kind or "?" for e in data.expressions]
        report = evaluate(best, data, schemes=SCHEMES, batch_size=64, baselines=BASELINES,
                          group_of=kinds.__getitem__, show_progress=not args.quiet)
        splits[split] = report.to_dict()
        print(format_table(report, f"{slot_type} slots, {split} split"), "\n", flush=True)
    return {
        "slot_type": slot_type, "steps": result.steps, "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
        "best_checkpoint": str(result.best_checkpoint), "best_val_mIoU": result.best_metric,
        "model_config": preset.model.to_dict(), "train_config": {k: v for k, v in vars(preset.train).items()},
        "history": result.history, "splits": splits,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "bench" / "data"), help="where the benchmark is generated")
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs"), help="training runs (checkpoints, metrics)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "synthetic.json"))
    parser.add_argument("--slot-types", default="entity", help="comma-separated: entity,random,query")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--eval-every", type=int, default=200)
    # One thread by default: with another busy process on a 2-core machine, two OpenMP threads spin against it and a
    # step took 5x longer (2.7 s against 0.5 s measured); on an idle machine --threads 2 is about 1.7x faster.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="benchmark generator seed")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    data_config = SyntheticConfig(seed=args.seed, image_size=get_preset("cpu-synthetic").model.image_size)
    data_root = ensure_data(Path(args.data), data_config).parent
    results = {
        "benchmark": {"generator": json.loads((data_root / "synthetic" / "synthetic.json").read_text()),
                      "expressions": {s: len(refer_dataset(data_root, "synthetic", s))
                                      for s in ("train", "val", "test", "compositional")}},
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
        "runs": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for slot_type in args.slot_types.split(","):
        results["runs"][slot_type] = run_slot_type(slot_type.strip(), args, data_root)
        out.write_text(json.dumps(results, indent=2, default=str))  # after every run, so a long job leaves results
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
