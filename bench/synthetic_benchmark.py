"""The synthetic CPU benchmark: train SaG from scratch on synthetic image-text pairs, then measure its masks.

    python bench/synthetic_benchmark.py --slot-type entity    # ours; then --slot-type random / query
    python bench/synthetic_benchmark.py --summarize           # the combined JSON and the tables

For each slot type (equal K) it trains the ``cpu-synthetic-paper`` preset (the paper's recipe and inference) on the
train split (texts only; validation on the val split picks the best checkpoint), then evaluates the best checkpoint on
the held-out test split and on the compositional split with our inference, the MAX / AVG / MIN schemes and two
text-blind baselines (whole image, centred blob). Each slot type writes ``bench/results/synthetic-<slot type>.json``;
``--summarize`` combines them into ``bench/results/synthetic.json`` and prints the Markdown tables of bench/README.md.
The test and compositional splits are never looked at during training or model selection.

Presets at equal wall-clock (e.g. the tiny ViT against the frozen, cached MobileNetV2)::

    python bench/synthetic_benchmark.py --presets cpu-synthetic cpu-synthetic-mobilenet --minutes 20

gives each preset the same budget, calibration included: a short probe run measures the step time once the feature
cache is warm, the time to fill the cache and one validation, and the number of steps (hence the cosine schedule and
three validations) is set to fill the budget; the loop also stops at the budget whatever the estimate. Each preset
writes ``bench/results/equal-time-<M>min-<preset>-<slot type>.json``; the comparison goes to
``bench/results/equal-time-<M>min.json`` and is printed as a table. ``--budget-steps N`` gives that budget as N steps
instead (no clock: runs side by side get the same budget whatever the load), and ``--train-seed`` picks the training
seed; e.g. the two-seed runs of bench/README.md::

    python bench/synthetic_benchmark.py --presets cpu-synthetic-paper --budget-steps 1875 --train-seed 2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SCHEMES, SaG  # noqa: E402
from training.datasets.refcoco import refer_dataset  # noqa: E402
from training.engine import METRICS, Trainer  # noqa: E402
from training.evaluate import BASELINES, evaluate, format_table  # noqa: E402
from training.presets import build_model, get_preset  # noqa: E402
from training.synthetic import SyntheticConfig, write_benchmark  # noqa: E402


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


def read_history(run_dir: Path) -> list[dict]:
    """The whole metrics.jsonl of a run (across resumes)."""
    path = run_dir / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def calibrate(preset, model, train, val, budget_s: float, started: float, probe_batches: int = 2,
              probe_steps: int = 12) -> tuple[object, dict]:
    """``preset`` with max_steps / eval_every / time_budget_s set so that training fits ``budget_s`` from ``started``.

    A probe (a copy of the model, ``probe_batches`` batches of pairs, ``probe_steps`` steps) gives the step time with
    a warm feature cache (steps after its first epoch) and the cost of filling the cache per image; one validation is
    timed on the real model. The estimate: remaining = fill (distinct train images x per-image cost) + 3 validations +
    steps x step time.
    """
    from training.evaluate import evaluate

    cfg = preset.train
    probe_data = train.subset(range(cfg.batch_size * probe_batches))
    probe_cfg = replace(cfg, max_steps=probe_steps, eval_every=None, checkpoint_every=10**9, resume=False,
                        log_every=10**6, time_budget_s=None)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Trainer(copy.deepcopy(model), probe_data, probe_cfg, tmp, show_progress=False,
                        progress=lambda *a: stamps.append(time.time()))
        probe_started = time.time()
        probe.fit()
    steps = [b - a for a, b in zip([probe_started] + stamps[:-1], stamps)]
    cached = probe.feature_cache is not None
    cold, warm = steps[:probe_batches], steps[probe_batches:]
    step_s = statistics.median(warm if cached else steps)
    per_image_s = max(0.0, statistics.mean(cold) - step_s) / cfg.batch_size if cached else 0.0
    images = len({e.image for e in train.expressions})
    fill_s = per_image_s * images
    val_started = time.time()
    evaluate(model, val, schemes=("ours",), batch_size=cfg.eval_batch_size, limit=cfg.eval_limit,
             show_progress=False)
    model.train()
    val_s = time.time() - val_started
    remaining = budget_s - (time.time() - started)
    max_steps = max(3, int(0.95 * (remaining - fill_s - 3 * val_s) / step_s))
    tuned = replace(preset, train=replace(cfg, max_steps=max_steps, eval_every=math.ceil(max_steps / 3),
                                          checkpoint_every=None, resume=False, time_budget_s=remaining))
    info = {"budget_s": budget_s, "calibration_s": round(budget_s - remaining, 1), "step_s": round(step_s, 3),
            "fill_per_image_s": round(per_image_s, 4), "train_images": images, "fill_s": round(fill_s, 1),
            "validation_s": round(val_s, 1), "max_steps": max_steps, "feature_cache": cached}
    print(f"{preset.name}: calibrated {json.dumps(info)}", flush=True)
    return tuned, info


def run_slot_type(slot_type: str, args, data_root: Path, preset_name: str = "cpu-synthetic-paper") -> dict:
    train_over = {"resume": True}
    if args.steps is not None:
        train_over["max_steps"] = args.steps
    if args.budget_steps is not None:
        # what calibrate() would set for a wall-clock budget that fits this many steps, without the clock: the
        # same cosine length and three validations, whatever else the machine is doing
        train_over.update(max_steps=args.budget_steps, eval_every=math.ceil(args.budget_steps / 3),
                          checkpoint_every=None, resume=False)
    if args.train_seed is not None:
        train_over["seed"] = args.train_seed
    preset = get_preset(preset_name, model={"slot_type": slot_type}, train=train_over)
    started, cpu_started = time.time(), time.process_time()
    model = build_model(preset)
    train = refer_dataset(data_root, "synthetic", "train", with_masks=False)
    val = refer_dataset(data_root, "synthetic", "val")
    out_dir = Path(args.runs) / (slot_type if preset_name == "cpu-synthetic-paper" else f"{preset_name}-{slot_type}")
    if args.budget_steps is not None:
        out_dir = Path(args.runs) / f"{preset_name}-{slot_type}-{args.budget_steps}steps-seed{preset.train.seed}"
        shutil.rmtree(out_dir, ignore_errors=True)
    calibration = None
    if args.minutes is not None:
        out_dir = Path(args.runs) / f"{preset_name}-{slot_type}-{args.minutes:g}min"
        shutil.rmtree(out_dir, ignore_errors=True)  # a budget run starts clean: its schedule depends on the clock
        preset, calibration = calibrate(preset, model, train, val, args.minutes * 60, started)
    result = Trainer(model, train, preset.train, out_dir, val_data=val,
                     metadata={"trained_on": {"format": "synthetic", "split": "train", "pairs": len(train)}},
                     show_progress=not args.quiet).fit()
    wall, cpu = time.time() - started, time.process_time() - cpu_started
    history = read_history(out_dir)
    train_records = [r for r in history if "loss" in r]
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
        "preset": preset.name, "calibration": calibration, "train_seed": preset.train.seed,
        "slot_type": slot_type, "steps": result.steps,
        # elapsed_s is measured inside the loop (a resumed run adds its own); this process's own time is separate
        "train_wall_s": train_records[-1]["elapsed_s"] if train_records else None,
        "this_process_wall_s": round(wall, 1), "this_process_cpu_s": round(cpu, 1),
        "best_checkpoint": str(result.best_checkpoint), "best_val_mIoU": result.best_metric,
        "model_config": preset.model.to_dict(), "train_config": {k: v for k, v in vars(preset.train).items()},
        "history": history, "splits": splits,
    }


def summarize(results_dir: Path) -> dict:
    """Combine ``synthetic-<slot type>.json`` files into one result and print the tables."""
    runs = {}
    for slot_type in ("entity", "random", "query"):
        path = results_dir / f"synthetic-{slot_type}.json"
        if path.is_file():
            runs[slot_type] = json.loads(path.read_text())
    if not runs:
        raise SystemExit(f"no synthetic-<slot type>.json in {results_dir}")
    first = next(iter(runs.values()))
    combined = {"benchmark": first["benchmark"], "machine": first["machine"],
                "runs": {k: v["run"] for k, v in runs.items()}}
    cols = ("mIoU", "cIoU", "acc@0.5")
    for split in ("test", "compositional"):
        lines = [f"**{split} split**", "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        main = combined["runs"].get("entity") or next(iter(combined["runs"].values()))
        rep = main["splits"][split]
        rows = [(f"ours ({main['slot_type']} slots)", rep["schemes"]["ours"])]
        rows += [(s.upper(), rep["schemes"][s]) for s in ("max", "avg", "min")]
        rows += [(f"baseline: {b.replace('_', ' ')}", m) for b, m in rep["baselines"].items()]
        rows += [(f"ours, {g} expressions", m) for g, m in rep["groups"].items()]
        rows += [(f"{k} slots (ours inference)", r["splits"][split]["schemes"]["ours"])
                 for k, r in combined["runs"].items() if k != main["slot_type"]]
        lines += [f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |" for name, m in rows]
        print("\n".join(lines), "\n")
    return combined


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "bench" / "data"), help="where the benchmark is generated")
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs"), help="training runs (checkpoints, metrics)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--slot-type", default="entity", choices=("entity", "random", "query"))
    parser.add_argument("--summarize", action="store_true", help="combine the per-slot-type results and print")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    parser.add_argument("--presets", nargs="+", metavar="PRESET",
                        help="train these presets one after the other (default: cpu-synthetic alone)")
    parser.add_argument("--minutes", type=float,
                        help="wall-clock budget per preset, calibration included (sets the steps; overrides --steps)")
    # One thread by default: with another busy process on a 2-core machine, two OpenMP threads spin against it and a
    # step took 5x longer (2.7 s against 0.5 s measured); on an idle machine --threads 2 is about 1.7x faster.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="benchmark generator seed")
    parser.add_argument("--train-seed", type=int,
                        help="training seed (model initialisation, batch order, slot noise; default: the preset's, 1)")
    parser.add_argument("--budget-steps", type=int,
                        help="an equal budget given in steps instead of minutes (e.g. the steps a --minutes run of "
                             "the same preset fitted): that many steps, three validations, no clock")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    results_dir = Path(args.results)
    if args.summarize:
        combined = summarize(results_dir)
        (results_dir / "synthetic.json").write_text(json.dumps(combined, indent=2, default=str))
        print(f"wrote {results_dir / 'synthetic.json'}")
        return 0
    torch.set_num_threads(args.threads)
    # The data is the same for every preset: images at cpu-synthetic's size, each preset resizes to its own.
    data_config = SyntheticConfig(seed=args.seed, image_size=get_preset("cpu-synthetic").model.image_size)
    data_root = ensure_data(Path(args.data), data_config).parent
    benchmark = {"generator": json.loads((data_root / "synthetic" / "synthetic.json").read_text()),
                 "expressions": {s: len(refer_dataset(data_root, "synthetic", s))
                                 for s in ("train", "val", "test", "compositional")}}
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.presets and args.minutes is None:
        result = {
            "benchmark": benchmark,
            "machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                        "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
            "run": run_slot_type(args.slot_type, args, data_root),
        }
        out = results_dir / f"synthetic-{args.slot_type}.json"
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}")
        return 0
    tag = f"equal-time-{args.minutes:g}min" if args.minutes is not None else "presets"
    if args.budget_steps is not None:
        tag = f"equal-steps-{args.budget_steps}"
    if args.train_seed is not None:
        tag += f"-seed{args.train_seed}"
    runs = {}
    for preset_name in args.presets or ["cpu-synthetic"]:
        machine = {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                   "python": platform.python_version(), "load_average_at_start": os.getloadavg()}
        run = run_slot_type(args.slot_type, args, data_root, preset_name)
        machine["load_average_at_end"] = os.getloadavg()
        runs[preset_name] = {"machine": machine, "run": run}
        out = results_dir / f"{tag}-{preset_name}-{args.slot_type}.json"
        out.write_text(json.dumps({"benchmark": benchmark, **runs[preset_name]}, indent=2, default=str))
        print(f"wrote {out}", flush=True)
    print(compare_table(runs))
    combined = results_dir / f"{tag}.json"
    combined.write_text(json.dumps({"benchmark": benchmark, "minutes": args.minutes, "slot_type": args.slot_type,
                                    "runs": {k: {"load_average": [v["machine"]["load_average_at_start"],
                                                                  v["machine"]["load_average_at_end"]],
                                                 **{f: v["run"][f] for f in ("steps", "train_wall_s",
                                                                             "this_process_wall_s", "best_val_mIoU",
                                                                             "calibration", "splits")}}
                                             for k, v in runs.items()}}, indent=2, default=str))
    print(f"wrote {combined}")
    return 0


def compare_table(runs: dict) -> str:
    """Markdown: per preset, steps and wall time, best val mIoU, and ours / MAX on test and compositional."""
    lines = ["| preset | steps | wall s | val mIoU | test mIoU | test acc@0.5 | test MAX mIoU | comp. mIoU | "
             "comp. acc@0.5 |", "|---" * 9 + "|"]
    for name, entry in runs.items():
        run = entry["run"]
        test, comp = run["splits"]["test"]["schemes"], run["splits"]["compositional"]["schemes"]
        lines.append(f"| {name} | {run['steps']} | {run['this_process_wall_s']} | {run['best_val_mIoU'] or 0:.3f} | "
                     f"{test['ours']['mIoU']:.3f} | {test['ours']['acc@0.5']:.3f} | {test['max']['mIoU']:.3f} | "
                     f"{comp['ours']['mIoU']:.3f} | {comp['ours']['acc@0.5']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
