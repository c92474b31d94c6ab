"""Command lines: ``sag-train`` (fit a preset on a data set) and ``sag-eval`` (the paper's table for a checkpoint).

Both read :class:`training.settings.TrainingSettings` from the environment once; flags override it.
``sag-train`` runs under ``torchrun --nproc_per_node N`` as well (DDP, one process per GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .datasets import FORMATS, REFER_FORMATS, open_dataset
from .settings import TrainingSettings


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="data set format")
    parser.add_argument("--data", help="data root / directory / file (default: SAG_DATA_ROOT)")
    parser.add_argument("--split-by", help="refer layout: refs(<split-by>).p (unc, umd, google)")
    parser.add_argument("--image-dir", help="where images live (refer: COCO train2014; LS: upload root)")
    parser.add_argument("--image-field", default="image", help="Label Studio: the data key with the image")
    parser.add_argument("--text-field", action="append", help="Label Studio: data keys / TextArea names with texts")


def _open(args, split: str | None, with_masks: bool, settings: TrainingSettings):
    return open_dataset(args.format, args.data or settings.data_root, split, with_masks, split_by=args.split_by,
                        image_dir=args.image_dir, image_field=args.image_field,
                        text_fields=tuple(args.text_field or ("text",)))


def _parse_overrides(items: Sequence[str] | None) -> tuple[dict, dict]:
    """``model.key=value`` / ``train.key=value`` pairs; values are JSON when they parse, else strings."""
    model, train = {}, {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        scope, dot, name = key.partition(".")
        if not sep or not dot or scope not in ("model", "train"):
            raise SystemExit(f"--set expects model.<field>=<value> or train.<field>=<value>, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        (model if scope == "model" else train)[name] = value
    return model, train


def _init_distributed(device_spec: str | None = None):
    """Under torchrun: init the process group and return this rank's device; otherwise the resolved device.

    ``None`` (no ``--device``) reads ``SAG_DEVICE``: sag itself reads no environment.
    """
    import torch
    import torch.distributed as dist

    from sag import resolve_device

    settings = TrainingSettings.from_env()
    if device_spec is None:
        device_spec = settings.device
    if settings.world_size > 1:
        local = settings.local_rank
        base = resolve_device(device_spec)
        if base.type == "cuda":
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
            return torch.device("cuda", local)
        dist.init_process_group("gloo")
        return base
    return resolve_device(device_spec)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``sag-train``: train a preset on a data set's train split, validating on its validation split."""
    from sag import SaG

    from .engine import Trainer
    from .presets import TRAINING_PRESETS, build_model, get_preset

    parser = argparse.ArgumentParser(prog="sag-train", description=train_main.__doc__)
    parser.add_argument("--preset", default="assist", choices=sorted(TRAINING_PRESETS),
                        help="assist (default): the paper's model and training with SaG Assist's inference; paper: "
                             "the paper's inference too; cpu-synthetic[-paper]: the same pair for the CPU benchmark")
    _data_args(parser)
    parser.add_argument("--split", default="train", help="training split (default: train)")
    parser.add_argument("--val-split", default="val", help="validation split with masks ('' to skip)")
    parser.add_argument("--output", help="run directory (default: SAG_RUNS_DIR/<preset>)")
    parser.add_argument("--init", help="start from this SaG checkpoint (fine-tuning) instead of the preset's backbones")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--eval-every", type=int, help="steps between validations (default: every epoch)")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--no-resume", action="store_true", help="do not continue from the newest checkpoint")
    parser.add_argument("--set", action="append", metavar="SCOPE.FIELD=VALUE",
                        help="override any preset field, e.g. --set model.num_gaussians=9 --set train.warmup_steps=0")
    parser.add_argument("--device", help="cpu, cuda[:n] or auto (default: SAG_DEVICE)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: SAG_NUM_THREADS)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    settings = TrainingSettings.from_env().override(device=args.device, num_threads=args.threads)
    settings.apply_threads()
    model_over, train_over = _parse_overrides(args.set)
    flags = {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr,
             "grad_accum": args.grad_accum, "precision": args.precision, "seed": args.seed,
             "eval_every": args.eval_every, "num_workers": args.num_workers}
    train_over.update({k: v for k, v in flags.items() if v is not None})
    if args.no_resume:
        train_over["resume"] = False
    preset = get_preset(args.preset, model_over, train_over)
    device = _init_distributed(settings.device)

    from .engine import seed_everything

    seed_everything(preset.train.seed)  # the same initial weights on every rank (build_model seeds as well)
    if args.init:
        model = SaG.from_pretrained(args.init, device=device).train()
    else:
        model = build_model(preset).to(device)
    train_data = _open(args, args.split, False, settings)
    val_data = _open(args, args.val_split, True, settings) if args.val_split else None
    if val_data is not None and len(val_data) == 0:
        print(f"no expressions with masks in split {args.val_split!r}: training without validation", file=sys.stderr)
        val_data = None
    output = Path(args.output) if args.output else settings.runs_dir / preset.name
    metadata = {"trained_on": {"format": args.format, "data": str(args.data or settings.data_root),
                               "split": args.split, "pairs": len(train_data)},
                "parent": getattr(model, "version", None), "preset": preset.name}
    trainer = Trainer(model, train_data, preset.train, output, val_data=val_data, metadata=metadata,
                      show_progress=not args.quiet)
    result = trainer.fit()
    if trainer.is_main:
        print(json.dumps({"steps": result.steps, "best_checkpoint": str(result.best_checkpoint or ""),
                          "best_val_mIoU": result.best_metric, "last_checkpoint": str(result.last_checkpoint or "")}))
    return 0


def _refer_instances_file(args, settings: TrainingSettings) -> Path | None:
    """The refer layout's instances.json, found as :func:`training.datasets.open_dataset` finds the data set."""
    if args.format not in REFER_FORMATS:
        return None
    path = Path(args.data or settings.data_root)
    file = path / "instances.json" if (path / "instances.json").is_file() else path / args.format / "instances.json"
    return file if file.is_file() else None


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``sag-eval``: mIoU, cIoU and accuracy at IoU 0.3/0.5/0.7 for a checkpoint on a data set split (per expression
    kind where the data set has kinds). ``--diagnostics`` adds entity quality (mBO), the oracle-entity and NNLS mIoU,
    pointing accuracy and boundary F: a few ms per expression at 128 px, about 0.5 s at 640 x 480 with K = 36 on one
    CPU thread (mostly resizing the K maps; fast on a GPU), hence off by default."""
    from sag import SCHEMES, SaG
    from sag.refine import REFINE_METHODS

    from .diagnostics import DiagnosticOptions, InstanceMasks
    from .evaluate import BASELINES, evaluate, expression_kinds, format_table
    from .overlays import OverlayWriter

    parser = argparse.ArgumentParser(prog="sag-eval", description=eval_main.__doc__)
    parser.add_argument("checkpoint", help="a SaG checkpoint directory (save_pretrained)")
    _data_args(parser)
    parser.add_argument("--split", default="val")
    parser.add_argument("--ablation", action="store_true", help="also the MAX, AVG and MIN inference schemes")
    parser.add_argument("--baselines", action="store_true", help="also the whole-image and centred-blob baselines")
    parser.add_argument("--threshold", type=float, help="tau (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="only the first N expressions")
    parser.add_argument("--overlays", help="write overlay PNGs (image, prediction, top-3 entities) here")
    parser.add_argument("--overlay-count", type=int, default=20)
    parser.add_argument("--json", help="also write the metrics as JSON here")
    parser.add_argument("--record", action="store_true",
                        help="keep the figure (mIoU, cIoU, acc@0.5 of our inference) in the checkpoint's metadata, as "
                             "benchmark 'synthetic' for --format synthetic, else the format's name; a registry "
                             "version's synthetic figure is what /health and `sag-models list` show")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also entity quality (mBO), oracle-entity / NNLS mIoU, pointing accuracy and boundary F "
                             "(2 px), overall and per expression kind")
    parser.add_argument("--instances", help="COCO instances.json with every instance per image, for mBO (default: "
                                            "the refer layout's own; other formats: the referred masks)")
    parser.add_argument("--refine", choices=REFINE_METHODS,
                        help="edge-aware mask refinement before the threshold (default: the checkpoint's mask_refine)")
    parser.add_argument("--spatial-words", choices=("on", "off"),
                        help="read spatial words such as 'leftmost' or 'above the ...' (sag/spatial.py; default: the "
                             "checkpoint's spatial_words)")
    parser.add_argument("--device", help="cpu, cuda[:n] or auto (default: SAG_DEVICE)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    settings = TrainingSettings.from_env().override(device=args.device, num_threads=args.threads)
    settings.apply_threads()
    model = SaG.from_pretrained(args.checkpoint, device=settings.device)
    data = _open(args, args.split, True, settings)
    writer = OverlayWriter(model, args.overlays, args.overlay_count) if args.overlays else None
    schemes = SCHEMES if args.ablation else ("ours",)
    diagnostics: DiagnosticOptions | bool = False
    if args.diagnostics:
        instances = InstanceMasks.from_expressions(data.expressions)
        coco = Path(args.instances) if args.instances else _refer_instances_file(args, settings)
        if coco is not None:
            instances.add_coco(coco, {e.image_id for e in data.expressions})
        diagnostics = DiagnosticOptions(instances=instances)
    report = evaluate(model, data, schemes=schemes, batch_size=args.batch_size, threshold=args.threshold,
                      baselines=BASELINES if args.baselines else (), limit=args.limit, on_batch=writer,
                      group_of=expression_kinds(data), show_progress=not args.quiet, diagnostics=diagnostics,
                      refine=args.refine, spatial=None if args.spatial_words is None else args.spatial_words == "on")
    print(format_table(report, f"{data.name} - checkpoint {model.version}"))
    if writer is not None:
        print(f"\n{len(writer.written)} overlays written to {args.overlays}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"checkpoint": str(args.checkpoint), "version": model.version,
                       "refine": args.refine or model.config.mask_refine,
                       "spatial_words": model.config.spatial_words if args.spatial_words is None
                       else args.spatial_words == "on", **report.to_dict()}, fh, indent=2)
    if args.record:
        from .figures import SYNTHETIC, make_figure
        from .registry import record_figure

        benchmark = SYNTHETIC if args.format == "synthetic" else args.format
        figure = make_figure(report.schemes["ours"], report.count, data.name, "ours", split=args.split,
                             refine=args.refine or model.config.mask_refine,
                             spatial_words=model.config.spatial_words if args.spatial_words is None
                             else args.spatial_words == "on")
        record_figure(args.checkpoint, benchmark, figure)
        print(f"\nrecorded as the {benchmark!r} figure in {Path(args.checkpoint) / 'metadata.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
