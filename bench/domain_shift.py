"""Domain shift: does Label Studio's "Start Training" teach the serving model a project's new words and look?

    python bench/domain_shift.py --base-checkpoint RUN_OR_CHECKPOINT_DIR             # the table of bench/README.md
    python bench/domain_shift.py --base-checkpoint ... --split val --pairs 200 --seeds 1 \\
        --set lr=1e-4 --tag val-lr1e-4                                                 # choosing settings: val only

The serving model is the ``cpu-synthetic`` checkpoint that ``bench/synthetic_benchmark.py --presets cpu-synthetic
--budget-steps 1875 --train-seed 1`` trains (``--base-checkpoint``: that run's directory, whose ``best.json`` names
the checkpoint, or a checkpoint directory; ``--train-base`` trains it with that command when it is absent). The
project is the synthetic generator's ``shift`` domain (:class:`training.synthetic.DomainConfig`): colour and shape
names the base model never read (pink, teal, brown, cyan, black, white; hexagon, cross, arrow, heart, pentagon) on
another look (tinted backgrounds with other textures, textured and outlined objects, other sizes).

For each N (``--pairs``) and training seed (``--seeds``), the checkpoint goes into a fresh
:class:`~training.registry.Registry` as the serving version, the first N image-text pairs of the shift domain's
train split become a :class:`~training.finetune.ProjectData` with no masks (a project without corrected masks), and
:func:`training.finetune.finetune` runs: the button's own code path, with the :class:`~training.finetune.FinetuneConfig`
the backend builds from its ``SAG_FINETUNE_*`` defaults (:func:`backend.finetune.job.finetune_config`; ``--from-env``
reads this process's environment instead, ``--set FIELD=VALUE`` overrides a field). The candidate version is scored
whether or not it was promoted.

Scores, before and after, as served (the backend's ``SAG_MASK_REFINE`` and ``SAG_SPATIAL_WORDS`` defaults: guided
refinement and spatial words), on the shift domain's test split (``--split val`` to choose settings) and on the base
benchmark's test split (forgetting): mIoU overall and per expression kind, per vocabulary word, and the diagnostics of
``sag-eval --diagnostics`` (entity mBO, oracle-entity mIoU, pointing, A_fuse's pick), which say which stage fails
when the goal is not reached. Each split is capped at ``--eval-limit`` expressions (the first ones).

``--freeze MODULE`` (e.g. ``entity decoder``), ``--train-set FIELD=VALUE`` (TrainConfig fields FinetuneConfig does not
expose) and ``--replay R`` (R base-domain train pairs mixed into the project's pairs) are experiments only: they patch
the training loop for the run (the JSON records it under ``experiment``) and are not what the button does.

Results: ``bench/results/domain-shift-<tag>.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import operator
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SaG  # noqa: E402
from sag.metrics import iou  # noqa: E402
from training.datasets.base import ReferringDataset  # noqa: E402
from training.datasets.synthetic import synthetic_dataset  # noqa: E402
from training.diagnostics import DiagnosticOptions, InstanceMasks  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.finetune import FinetuneConfig, ProjectData, finetune  # noqa: E402
from training.registry import Registry  # noqa: E402
from training.synthetic import DOMAINS, SyntheticConfig, synthetic_config, write_benchmark  # noqa: E402

BASE_NAME, SHIFT_NAME = "synthetic", "synthetic-shift"  # directories under --data, in the refer layout
IMAGE_SIZE = 96  # cpu-synthetic's input size, at which bench/synthetic_benchmark.py writes the base benchmark
BASE_RUN = "cpu-synthetic-entity-1875steps-seed1"  # the run directory bench/synthetic_benchmark.py writes
BASE_COMMAND = ["bench/synthetic_benchmark.py", "--presets", "cpu-synthetic", "--budget-steps", "1875",
                "--train-seed", "1", "--quiet"]
GOAL_GAIN, GOAL_FORGETTING, GOAL_PAIRS = 0.15, 0.03, 200  # issue 19: +0.15 mIoU after 200 pairs, base drop <= 0.03
DIAGNOSTICS = ("pointing", "oracle_entity_mIoU", "oracle_nnls_mIoU", "afuse_picks_best")


# ---- data and the base checkpoint -----------------------------------------------------------------------------------
def ensure_domain(root: Path, name: str, config: SyntheticConfig, strict: bool = True) -> Path:
    """``root/name`` holding the benchmark of ``config``, generated when absent. One there with another config is
    an error with ``strict`` (remove it or pick another ``--data``), else used as it is, with a note (the results
    record the generator config either way)."""
    target = root / name
    stamp = target / "synthetic.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))
    if stamp.is_file():
        if json.loads(stamp.read_text(encoding="utf-8")) != wanted:
            if strict:
                raise SystemExit(f"{target} holds a benchmark with another config; remove it or pick another --data")
            print(f"note: {target} was generated with another config than {wanted}; using it", flush=True)
        return target
    print(f"generating {target}", flush=True)
    return write_benchmark(target, config, progress=False)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory: ``path`` itself, or the one a training run's ``best.json`` names."""
    if (path / "config.json").is_file():
        return path
    best = path / "best.json"
    if best.is_file():
        return Path(json.loads(best.read_text(encoding="utf-8"))["checkpoint"])
    raise SystemExit(f"{path} is neither a checkpoint (config.json) nor a training run (best.json)")


def train_base(data: Path, runs: Path) -> Path:
    """Train the base checkpoint with the synthetic benchmark's own command; its run directory."""
    cmd = [sys.executable, *BASE_COMMAND, "--data", str(data), "--runs", str(runs), "--results", str(runs)]
    print("training the base checkpoint:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return runs / BASE_RUN


# ---- configuration --------------------------------------------------------------------------------------------------
def backend_finetune_config(from_env: bool) -> FinetuneConfig:
    """The FinetuneConfig "Start Training" uses: the backend's builder over its settings (shipped defaults, or this
    process's environment with ``from_env``)."""
    from backend.finetune.job import finetune_config
    from backend.runtime import Runtime
    from backend.settings import Settings

    return finetune_config(Runtime(Settings.from_env(None if from_env else {})))


def parse_assignments(items: Sequence[str], target: type, what: str) -> dict[str, Any]:
    """``FIELD=VALUE`` strings -> {field: value} for the dataclass ``target`` (values read as JSON, else text)."""
    known = {f.name for f in dataclasses.fields(target)}
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"{what}: expected FIELD=VALUE with FIELD one of {sorted(known)}, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@contextlib.contextmanager
def patched_trainer(freeze: Sequence[str], train: dict[str, Any]) -> Iterator[None]:
    """For experiments only: while active, :class:`training.engine.Trainer` (which ``finetune`` looks up when it
    runs) freezes the named sub-modules of the model (no gradients, eval mode) and replaces ``train``'s fields in
    its TrainConfig. FinetuneConfig has no such options; nothing here is what the button does."""
    if not freeze and not train:
        yield
        return
    import training.engine as engine

    original = engine.Trainer

    class ExperimentTrainer(original):
        def __init__(self, model, train_data, config, *args, **kwargs):
            for name in freeze:
                operator.attrgetter(name)(model).requires_grad_(False)
            super().__init__(model, train_data, dataclasses.replace(config, **train), *args, **kwargs)
            # Again after the Trainer's own freezing: ``trainable`` (train_only) turns a named part back on when it
            # holds a module named here (entity, entity.input_proj); the optimizer skips a weight with no gradient.
            for name in freeze:
                operator.attrgetter(name)(model).requires_grad_(False)

        def _train_mode(self) -> None:
            super()._train_mode()
            for name in freeze:
                operator.attrgetter(name)(self.model).eval()

    engine.Trainer = ExperimentTrainer
    try:
        yield
    finally:
        engine.Trainer = original


# ---- scoring --------------------------------------------------------------------------------------------------------
def vocabulary_words() -> dict[str, str]:
    """Every colour and shape word of every domain -> its domain."""
    return {w: d.name for d in DOMAINS.values() for w in (*d.colours, *d.shapes)}


def score(model: SaG, data: ReferringDataset, instances_file: Path, limit: int, refine: str,
          spatial: bool) -> dict[str, Any]:
    """mIoU (overall, per kind, per vocabulary word) and the diagnostics of ``model`` on the first ``limit``
    expressions of ``data``, with the served refinement and spatial words."""
    count = min(limit, len(data))
    expressions = data.expressions[:count]
    instances = InstanceMasks.from_expressions(expressions).add_coco(instances_file, {e.image_id for e in expressions})
    kinds = [e.kind or "unknown" for e in expressions]
    ious: list[float] = []

    def keep(samples, image, per_scheme) -> None:
        ious.extend(iou(seg.mask, s.mask) for s, seg in zip(samples, per_scheme["ours"]))

    started = time.time()
    report = evaluate(model, data, schemes=("ours",), batch_size=32, limit=count, group_of=kinds.__getitem__,
                      show_progress=False, on_batch=keep, diagnostics=DiagnosticOptions(instances=instances),
                      refine=refine, spatial=spatial)
    words = vocabulary_words()
    per_word: dict[str, list[float]] = {}
    for expr, value in zip(expressions, ious):
        for w in set(expr.text.split()) & set(words):
            per_word.setdefault(w, []).append(value)
    diag = report.diagnostics
    ours = report.schemes["ours"]
    return {
        "count": count, "eval_s": round(time.time() - started, 1),
        "mIoU": ours["mIoU"], "cIoU": ours["cIoU"], "acc@0.5": ours["acc@0.5"],
        "kinds": {k: v["mIoU"] for k, v in report.groups.items()},
        "kind_counts": {k: int(v["count"]) for k, v in report.groups.items()},
        "words": {w: {"count": len(v), "mIoU": statistics.fmean(v)} for w, v in sorted(per_word.items())},
        "entity_mBO": diag["entity"].get("mBO"),
        **{k: diag["expressions"][k] for k in DIAGNOSTICS},
        "diagnostics_by_kind": {k: {c: v[c] for c in ("mIoU", *DIAGNOSTICS)} for k, v in diag["groups"].items()},
    }


def scores_before(model: SaG, eval_sets: dict, refine: str, spatial: bool, work: Path) -> dict[str, Any]:
    """The serving model's scores on every evaluation set, kept in ``work`` for the next invocation with the same
    checkpoint, data and inference (a settings sweep scores the same model before each of its runs)."""
    key = json.dumps([model.version, refine, spatial,
                      {name: [data.expressions[0].image, len(data), str(path), limit]
                       for name, (data, path, limit) in eval_sets.items()}])
    cache = work / f"before-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    before = {name: score(model, *spec, refine, spatial) for name, spec in eval_sets.items()}
    cache.write_text(json.dumps(before), encoding="utf-8")
    return before


# ---- one fine-tune ---------------------------------------------------------------------------------------------------
def run_one(base: Path, pairs: ReferringDataset, config: FinetuneConfig, eval_sets: dict, refine: str,
            spatial: bool, work: Path, freeze: Sequence[str], train_over: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune ``base`` on ``pairs`` through :func:`training.finetune.finetune` in a fresh registry, then score
    the candidate on every evaluation set."""
    root = work / f"registry-{os.getpid()}-{time.time_ns()}"
    try:
        registry = Registry(root)
        version, _ = registry.import_checkpoint(str(base))
        registry.promote(version.id)
        data = ProjectData(pairs=pairs, validation=None, images=len({e.image for e in pairs.expressions}))
        started, cpu_started = time.time(), time.process_time()
        with patched_trainer(freeze, train_over):
            result = finetune(registry, data, config, root / ".training", device="cpu")
        wall, cpu = time.time() - started, time.process_time() - cpu_started
        candidate = SaG.from_pretrained(registry.get(result.version).path)
        scores = {name: score(candidate, *spec, refine, spatial) for name, spec in eval_sets.items()}
        return {"finetune": {**result.to_dict(), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                             "metadata": registry.get(result.version).metadata.get("promotion")},
                "scores": scores}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- tables ---------------------------------------------------------------------------------------------------------
def _delta(after: float, before: float) -> str:
    return f"{after:.3f} ({after - before:+.3f})"


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per (N, seed), then the mean over seeds per N."""
    before = result["before"]
    shift, base = result["eval_sets"]["shift"], "base"
    kinds = sorted(before["shift"]["kinds"])
    head = (f"| pairs | seed | steps | wall s | shift {shift['split']} mIoU | " + " | ".join(kinds)
            + " | pointing | oracle entity | base test mIoU | promoted |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    b_shift, b_base = before["shift"], before[base]
    lines.append("| 0 (before) | | | | " + f"{b_shift['mIoU']:.3f} | "
                 + " | ".join(f"{b_shift['kinds'][k]:.3f}" for k in kinds)
                 + f" | {b_shift['pointing']:.3f} | {b_shift['oracle_entity_mIoU']:.3f} | {b_base['mIoU']:.3f} | |")
    for run in result["runs"]:
        s, f = run["scores"]["shift"], run["finetune"]
        lines.append(f"| {run['pairs']} | {run['seed']} | {f['steps']} | {f['wall_s']:.0f} | "
                     f"{_delta(s['mIoU'], b_shift['mIoU'])} | "
                     + " | ".join(f"{s['kinds'].get(k, float('nan')):.3f}" for k in kinds)
                     + f" | {s['pointing']:.3f} | {s['oracle_entity_mIoU']:.3f} | "
                     f"{_delta(run['scores'][base]['mIoU'], b_base['mIoU'])} | {'yes' if f['promoted'] else 'no'} |")
    for n, m in result["summary"].items():
        lines.append(f"| {n}, mean of {m['seeds']} | | | {m['wall_s']:.0f} | "
                     f"{_delta(m['shift_mIoU'], b_shift['mIoU'])} | "
                     + " | ".join(f"{m['shift_kinds'][k]:.3f}" for k in kinds)
                     + f" | {m['shift_pointing']:.3f} | {m['shift_oracle_entity_mIoU']:.3f} | "
                     f"{_delta(m['base_mIoU'], b_base['mIoU'])} | |")
    return "\n".join(lines)


def word_table(result: dict[str, Any]) -> str:
    """Markdown: the shift domain's mIoU per vocabulary word, before and after each N (mean over seeds)."""
    before = result["before"]["shift"]["words"]
    words = sorted(before)
    lines = ["| pairs | " + " | ".join(words) + " |", "|---" * (len(words) + 1) + "|",
             "| 0 (before) | " + " | ".join(f"{before[w]['mIoU']:.2f}" for w in words) + " |"]
    for n in sorted({r["pairs"] for r in result["runs"]}):
        runs = [r["scores"]["shift"]["words"] for r in result["runs"] if r["pairs"] == n]
        lines.append(f"| {n} | " + " | ".join(f"{statistics.fmean(r[w]['mIoU'] for r in runs if w in r):.2f}"
                                              for w in words) + " |")
    return "\n".join(lines)


def compare(paths: Sequence[Path]) -> str:
    """Markdown: one row per result file (a settings sweep), means over its seeds, what it changed from the
    backend's defaults, and the stage diagnostics of the shift split."""
    current: dict[str, Any] | None = None
    lines = ["| run | changes from the defaults | pairs | seeds | steps | wall s | shift mIoU (gain) | attribute | "
             "absolute | relation | pointing | A_fuse picks best | base mIoU (change) |", "|---" * 13 + "|"]
    for path in paths:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        before = result["before"]
        config, exp = result["finetune_config"], result["experiment"]
        shipped = result.get("shipped_finetune_config")  # the backend's defaults when the file was written
        if shipped is None:
            current = current or dataclasses.asdict(backend_finetune_config(from_env=False))
            shipped = current
        changes = [f"{k}={v}" for k, v in config.items() if k not in ("seed", "show_progress") and shipped.get(k) != v]
        changes += [f"{k}={v}" for k, v in exp["train_config"].items()]
        changes += [f"freeze {' '.join(exp['freeze'])}"] if exp["freeze"] else []
        changes += [f"replay {exp['replay_pairs']}"] if exp["replay_pairs"] else []
        for n in sorted({r["pairs"] for r in result["runs"]}):
            runs = [r for r in result["runs"] if r["pairs"] == n]
            mean = lambda f: statistics.fmean(f(r) for r in runs)  # noqa: E731
            shift = mean(lambda r: r["scores"]["shift"]["mIoU"])
            kinds = " | ".join(f"{mean(lambda r, k=k: r['scores']['shift']['kinds'].get(k, float('nan'))):.3f}"
                               for k in ("attribute", "absolute", "relation"))
            base = (f"{_delta(mean(lambda r: r['scores']['base']['mIoU']), before['base']['mIoU'])}"
                    if "base" in before else "")
            wall = mean(lambda r: r["finetune"]["wall_s"])
            lines.append(f"| {Path(path).stem.removeprefix('domain-shift-')} | {', '.join(changes) or 'none'} | {n} | "
                         f"{len(runs)} | {runs[0]['finetune']['steps']} | {wall:.0f} | "
                         f"{_delta(shift, before['shift']['mIoU'])} | {kinds} | "
                         f"{mean(lambda r: r['scores']['shift']['pointing']):.3f} | "
                         f"{mean(lambda r: r['scores']['shift']['afuse_picks_best']):.3f} | {base} |")
    return "\n".join(lines)


def summarize(runs: list[dict], before: dict) -> dict[str, Any]:
    """Per N: means over seeds, the gain on the shift domain, the drop on the base domain and the goal check."""
    out = {}
    for n in sorted({r["pairs"] for r in runs}):
        group = [r for r in runs if r["pairs"] == n]
        mean = lambda f: statistics.fmean(f(r) for r in group)  # noqa: E731
        shift = mean(lambda r: r["scores"]["shift"]["mIoU"])
        base = mean(lambda r: r["scores"]["base"]["mIoU"])
        out[str(n)] = {
            "seeds": len(group), "wall_s": mean(lambda r: r["finetune"]["wall_s"]),
            "shift_mIoU": shift, "gain": shift - before["shift"]["mIoU"],
            "shift_kinds": {k: mean(lambda r, k=k: r["scores"]["shift"]["kinds"].get(k, float("nan")))
                            for k in before["shift"]["kinds"]},
            "shift_pointing": mean(lambda r: r["scores"]["shift"]["pointing"]),
            "shift_oracle_entity_mIoU": mean(lambda r: r["scores"]["shift"]["oracle_entity_mIoU"]),
            "base_mIoU": base, "forgetting": before["base"]["mIoU"] - base,
            "goal_met": (shift - before["shift"]["mIoU"] >= GOAL_GAIN
                         and before["base"]["mIoU"] - base <= GOAL_FORGETTING),
        }
    return out


# ---- the command ----------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs="+", metavar="RESULT_JSON",
                        help="print one table row per result file (a settings sweep) and exit")
    parser.add_argument("--show", metavar="RESULT_JSON", help="print the tables of a result file and exit")
    parser.add_argument("--base-checkpoint",
                        help="the cpu-synthetic training run (with best.json) or a checkpoint directory")
    parser.add_argument("--train-base", action="store_true",
                        help=f"train the base checkpoint when --base-checkpoint is absent ({' '.join(BASE_COMMAND)})")
    parser.add_argument("--data", default=str(ROOT / "bench" / "data"),
                        help=f"holds {BASE_NAME}/ (the base benchmark, generated as bench/synthetic_benchmark.py "
                             f"does) and {SHIFT_NAME}/ (generated here)")
    parser.add_argument("--work", default=None, help="registries and fine-tune workdirs (default: a temp directory)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[50, 200, 1000], help="project sizes N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="fine-tune seeds (FinetuneConfig.seed)")
    parser.add_argument("--split", default="test", choices=("test", "val"),
                        help="the shift domain's split to score on: test for the table, val to choose settings")
    parser.add_argument("--eval-limit", type=int, default=400, help="expressions scored per split (the first ones)")
    parser.add_argument("--no-base-eval", action="store_true", help="skip the base test split (no forgetting figure)")
    parser.add_argument("--from-env", action="store_true", help="the backend's settings from this environment")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a FinetuneConfig field")
    parser.add_argument("--freeze", nargs="+", default=[], metavar="MODULE",
                        help="experiment: also freeze these sub-modules (entity, decoder, fusion, text_encoder, "
                             "text_encoder.backbone, image_encoder)")
    parser.add_argument("--train-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="experiment: a TrainConfig field for the fine-tune (e.g. grad_clip=1.0)")
    parser.add_argument("--replay", type=int, default=0, help="experiment: base-domain train pairs mixed in")
    parser.add_argument("--shift-scenes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                        help="scenes of the shift domain's splits (default: DomainConfig's)")
    parser.add_argument("--tag", default="defaults", help="results go to <results>/domain-shift-<tag>.json")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.show:
        result = json.loads(Path(args.show).read_text(encoding="utf-8"))
        if "summary" in result:
            print(table(result), "\n")
        print(word_table(result))
        return 0
    if args.compare:
        print(compare([Path(p) for p in args.compare]))
        return 0
    if not args.base_checkpoint:
        parser.error("--base-checkpoint is required (unless --compare or --show)")

    torch.set_num_threads(args.threads)
    data_root = Path(args.data)
    base_config = SyntheticConfig(seed=0, image_size=IMAGE_SIZE)
    # Not strict: the base test split is whatever bench/synthetic_benchmark.py wrote there (its config is recorded).
    ensure_domain(data_root, BASE_NAME, base_config, strict=False)
    shift_fields: dict[str, Any] = {"image_size": IMAGE_SIZE}
    if args.shift_scenes is not None:
        shift_fields["scenes"] = {**dict(zip(("train", "val", "test"), args.shift_scenes)), "compositional": 0}
    shift_config = synthetic_config("shift", **shift_fields)
    ensure_domain(data_root, SHIFT_NAME, shift_config)

    checkpoint_arg = Path(args.base_checkpoint)
    if not checkpoint_arg.exists():
        if not args.train_base:
            raise SystemExit(f"{checkpoint_arg} does not exist; pass --train-base to train it "
                             f"({' '.join(BASE_COMMAND)})")
        checkpoint_arg = train_base(data_root, checkpoint_arg)
    base = resolve_checkpoint(checkpoint_arg)

    config = dataclasses.replace(backend_finetune_config(args.from_env), show_progress=False,
                                 **parse_assignments(args.set, FinetuneConfig, "--set"))
    from training.engine import TrainConfig

    train_over = parse_assignments(args.train_set, TrainConfig, "--train-set")
    from backend.settings import Settings

    served = Settings.from_env(None if args.from_env else {})
    refine, spatial = served.mask_refine, served.spatial_words

    shift_root, base_root = data_root / SHIFT_NAME, data_root / BASE_NAME
    shift_train = synthetic_dataset(data_root, "train", name=SHIFT_NAME, with_masks=False)
    if max(args.pairs) > len(shift_train):
        raise SystemExit(f"--pairs {max(args.pairs)} > the {len(shift_train)} pairs of the shift train split; "
                         "raise --shift-scenes")
    eval_sets = {"shift": (synthetic_dataset(data_root, args.split, name=SHIFT_NAME), shift_root / "instances.json",
                           args.eval_limit)}
    if not args.no_base_eval:
        eval_sets["base"] = (synthetic_dataset(data_root, "test", name=BASE_NAME), base_root / "instances.json",
                             args.eval_limit)
    replay = []
    if args.replay:
        base_train = synthetic_dataset(data_root, "train", name=BASE_NAME, with_masks=False)
        order = torch.randperm(len(base_train), generator=torch.Generator().manual_seed(0))[:args.replay].tolist()
        replay = [base_train.expressions[i] for i in order]

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="domain-shift-"))
    work.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    out_path = results_dir / f"domain-shift-{args.tag}.json"
    started = time.time()
    print(f"base checkpoint {base}; fine-tune config {json.dumps(dataclasses.asdict(config))}", flush=True)
    base_model = SaG.from_pretrained(base)
    before = scores_before(base_model, eval_sets, refine, spatial, work)
    print("before:", {k: round(v["mIoU"], 4) for k, v in before.items()}, flush=True)
    result: dict[str, Any] = {
        "benchmark": "domain shift (issue 19): fine-tune the cpu-synthetic checkpoint on the shift domain's pairs",
        "command": " ".join(["python", "bench/domain_shift.py", *(argv if argv is not None else sys.argv[1:])]),
        "base_checkpoint": str(base), "base_version": base_model.version,
        "finetune_config": dataclasses.asdict(config),
        "shipped_finetune_config": dataclasses.asdict(backend_finetune_config(from_env=False)),
        "served_inference": {"mask_refine": refine, "spatial_words": spatial},
        "experiment": {"freeze": args.freeze, "train_config": train_over, "replay_pairs": len(replay)},
        "generators": {name: json.loads((root / "synthetic.json").read_text(encoding="utf-8"))
                       for name, root in (("shift", shift_root), ("base", base_root))},
        "eval_sets": {"shift": {"split": args.split, "expressions": before["shift"]["count"]},
                      **({"base": {"split": "test", "expressions": before["base"]["count"]}} if "base" in before
                         else {})},
        "goal": {"pairs": GOAL_PAIRS, "gain": GOAL_GAIN, "max_forgetting": GOAL_FORGETTING},
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
        "before": before, "runs": [],
    }
    del base_model
    for n in args.pairs:
        pairs = ReferringDataset(shift_train.expressions[:n] + replay, f"{SHIFT_NAME}/train", with_masks=False,
                                 image_loader=shift_train.image_loader)
        for seed in args.seeds:
            run = run_one(base, pairs, dataclasses.replace(config, seed=seed), eval_sets, refine, spatial, work,
                          args.freeze, train_over)
            run = {"pairs": n, "seed": seed, **run}
            result["runs"].append(run)
            print(f"N={n} seed={seed}: {run['finetune']['steps']} steps in {run['finetune']['wall_s']:.0f} s, "
                  + ", ".join(f"{k} mIoU {v['mIoU']:.4f} (before {before[k]['mIoU']:.4f})"
                              for k, v in run["scores"].items()), flush=True)
            # written after every run, so an interrupted benchmark keeps what it measured
            out_path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    if "base" in before:
        result["summary"] = summarize(result["runs"], before)
        print(table(result), "\n")
    print(word_table(result))
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["total_wall_s"] = round(time.time() - started, 1)
    out_path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"wrote {out_path}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
