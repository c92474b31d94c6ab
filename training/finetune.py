"""Fine-tuning the serving checkpoint on a Label Studio project's image-text pairs: the body of "Start Training".

The backend pulls the project's tasks through Label Studio's API and hands them here; this module knows nothing of
HTTP or queues. What it does, in order:

1. :func:`project_data` turns tasks into image-text pairs (task text fields and texts typed into ``<TextArea>``
   prompts) and, separately, a validation set of the masks annotators drew or corrected (brush annotations).
   Training only ever sees the pairs: masks are never decoded for it.
2. :func:`finetune` keeps some images' pairs out of training (:func:`training.retrieval.hold_out`), loads the
   serving version, scores it on the validation masks and on text-to-image retrieval among the held-out pairs,
   fine-tunes it (:class:`training.engine.Trainer`, resumable from its own atomic checkpoints; by default the image
   backbone stays fixed and entity discovery and the word embeddings learn: ``FINETUNE_RECIPES``), scores the
   candidate the same way, and asks :func:`promotion_decision` whether it may be served: on the masks when
   annotators corrected some, else on the held-out retrieval (and reconstruction, where the image side trained),
   never blindly.
3. The candidate is stored as a new registry version (atomic rename; metadata records its parent, the number of
   pairs and both scores) whether or not it is promoted, and promoted by moving the current-version pointer.

A crash anywhere before the pointer moves leaves the serving version and its files untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sag import SaG

from .datasets.base import ImageLoader, ReferringDataset
from .datasets.label_studio import label_studio_expressions
from .exceptions import FinetuneError
from .registry import Registry
from .retrieval import RetrievalScores, heldout_entities, hold_out, retrieval_scores

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]
FINGERPRINT = "finetune.json"


# FinetuneConfig.trainable's names -> sub-modules of a SaG model.
TRAINABLE_PARTS: dict[str, str] = {
    "word_embeddings": "text_encoder.backbone.embeddings",  # token (and position) embeddings of the text backbone
    "text_encoder": "text_encoder.backbone",  # the text backbone, its embeddings included
    "text_proj": "text_encoder.proj",
    "fusion": "fusion",
    "entity": "entity",  # entity discovery (needs freeze_image_side off)
    "decoder": "decoder",  # the reconstruction decoder (needs freeze_image_side off)
    "image_encoder": "image_encoder",  # the image backbone (needs both freezes off)
}


@dataclass(frozen=True)
class FinetuneConfig:
    """How a project fine-tune runs. The backend builds it from its settings (``SAG_FINETUNE_*``)."""

    # Optimizer steps: ``steps`` when set, else ``epochs`` passes over the pairs capped at ``max_steps``
    # (see :meth:`steps_for`), so three tasks do not cost 200 steps and ten thousand pairs do not run for days.
    steps: int | None = None
    epochs: int = 20
    max_steps: int = 200
    batch_size: int = 16  # capped at the number of pairs; C^3 draws its negatives from the batch
    # 3e-4 for the `text` recipe's text side and fusion (the backbones at x 0.1) and for the `fast` recipe's entity
    # discovery and word embeddings: chosen on the domain-shift val split (bench/README.md, "Start Training"; 1e-4
    # learnt too little in 200 steps, 1e-3 lost mIoU); the paper's 1e-5 moved nothing.
    lr: float = 3e-4
    tolerance: float = 0.0  # promote when candidate mIoU >= serving mIoU - tolerance
    min_pairs: int = 2  # C^3 needs at least one negative in a batch
    # Mask-free evidence (training/retrieval.py): this share of the pairs, whole images at a time, at least / at
    # most this many pairs, is kept out of training to score text-to-image retrieval before and after. Without
    # hand-corrected masks a candidate is promoted only when, on pairs it never saw, its C^3 loss is at most the
    # serving version's plus ``heldout_tolerance`` (nats) and its own images rank no lower (RetrievalScores.rank);
    # a project too small to hold any out is not promoted. Both, because each alone let a run that broke the masks
    # through on the domain-shift benchmark: a far too high learning rate sharpens the scores, which lowers the
    # loss while the ranking gets worse. The top-1 accuracy, near chance on a few dozen look-alike images, is only
    # recorded (bench/README.md, "Start Training").
    heldout_fraction: float = 0.2
    heldout_min_pairs: int = 4
    heldout_max_pairs: int = 200
    heldout_tolerance: float = 0.0
    # Promote even when nothing can check the candidate (no hand-corrected masks and too few pairs to hold some
    # out). Off: such a candidate is stored and listed, and `sag-models promote VERSION` serves it by hand.
    promote_unchecked: bool = False
    checkpoint_every: int = 50  # steps between resumable checkpoints of the run
    eval_batch_size: int = 8
    seed: int = 1
    precision: str = "auto"
    # Keep the image backbone fixed (eval mode, no gradients): only the SaG heads and the text side train. With
    # ``feature_cache`` its features are computed once per image and reused (training/feature_cache.py, on disk in
    # the run's workdir), so after the first epoch a step costs only the heads and the text side. On a CPU that
    # removes the backbone's forward and backward; with the paper-size heads (K = 36 on a 24 x 24 grid) the
    # reconstruction decoder still dominates a step (bench/finetune_cpu_benchmark.py).
    freeze_image_backbone: bool = True
    feature_cache: bool = True  # used only with freeze_image_backbone
    # Keep the whole image side fixed (backbone, entity discovery, reconstruction decoder; training.engine's
    # TrainConfig.freeze_image_side): each image's entities are computed once, and a step trains the text side and
    # the fusion on C^3, about 0.7 s on 2 CPU cores with the default model instead of 30-45 s.
    freeze_image_side: bool = True
    # Mask refinement (sag.refine) the validation masks are scored with: the one the backend serves, so promotion
    # judges the masks annotators get. None: the checkpoint's own ``mask_refine``.
    mask_refine: str | None = None
    spatial_words: bool | None = None  # likewise for sag.spatial; None: the checkpoint's own ``spatial_words``
    # Which parts train (names of TRAINABLE_PARTS); every other part keeps its weights. None: whatever the
    # freeze_* fields leave trainable (with freeze_image_side: the text side and the fusion).
    trainable: tuple[str, ...] | None = None
    backbone_lr_scale: float = 0.1  # the image and text backbones (the word embeddings too) train at lr x this
    # Give each word of the project's texts that the tokenizer splits into pieces its own embedding row before
    # training (training/vocabulary.py), so that teaching one new word does not move another that shares pieces.
    new_words: bool = False
    # With the image side trained: also the reconstruction loss. Off, entity discovery learns from C^3 alone and a
    # step skips the reconstruction decoder (16 s of a 30-45 s step of the default model on 2 CPU cores).
    reconstruction: bool = True
    # With entity discovery trained: backpropagate through its last this many slot iterations only (None: all;
    # TrainConfig.entity_grad_iterations), which spares most of its backward pass.
    entity_grad_iterations: int | None = None
    # With the image side trained and ``reconstruction``: reconstruct at this many grid positions drawn at random
    # each step (TrainConfig.recon_positions; None: all).
    recon_positions: int | None = None
    # With entity discovery trained: keep its patch-to-slot assignment near the serving version's, at this weight
    # (TrainConfig.grouping_distill; 0: off). Trained without it, entity discovery regroups the new look's patches
    # worse (entity mBO 0.238 -> 0.21 on the domain-shift val split) as it learns the words.
    grouping_distill: float = 0.0
    show_progress: bool = True  # a tqdm bar on stderr

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        for name in ("epochs", "max_steps", "batch_size", "min_pairs", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_pairs < 2:
            raise ValueError(f"min_pairs must be at least 2 (C^3 needs a negative), got {self.min_pairs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ValueError(f"tolerance is in mIoU (0..1), got {self.tolerance}")
        if self.heldout_tolerance < 0:
            raise ValueError(f"heldout_tolerance is a loss difference (>= 0), got {self.heldout_tolerance}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 1 <= self.heldout_min_pairs <= self.heldout_max_pairs:
            raise ValueError(f"need 1 <= heldout_min_pairs <= heldout_max_pairs, got {self.heldout_min_pairs}, "
                             f"{self.heldout_max_pairs}")
        if self.freeze_image_side and not (self.freeze_image_backbone and self.feature_cache):
            raise ValueError("freeze_image_side needs freeze_image_backbone and feature_cache")
        for name in ("entity_grad_iterations", "recon_positions"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or None: all), got {getattr(self, name)}")
        if self.grouping_distill < 0:
            raise ValueError(f"grouping_distill is a loss weight (>= 0), got {self.grouping_distill}")
        if self.grouping_distill and self.freeze_image_side:
            raise ValueError("grouping_distill needs entity discovery trained: set freeze_image_side off")
        if self.backbone_lr_scale <= 0:
            raise ValueError(f"backbone_lr_scale must be positive, got {self.backbone_lr_scale}")
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))  # frozen dataclass; a list from JSON
            unknown = [p for p in self.trainable if p not in TRAINABLE_PARTS]
            if unknown or not self.trainable:
                raise ValueError(f"trainable: unknown or no parts {unknown}; choose from {sorted(TRAINABLE_PARTS)}")
            fixed = {"image_encoder"} if self.freeze_image_backbone else set()
            fixed |= {"entity", "decoder"} if self.freeze_image_side else set()
            clash = sorted(fixed.intersection(self.trainable))
            if clash:
                raise ValueError(f"trainable names {clash}, which freeze_image_backbone / freeze_image_side keep "
                                 "fixed")


    def steps_for(self, pairs: int) -> int:
        """Optimizer steps for ``pairs`` image-text pairs: ``steps`` if set, else ``epochs`` epochs of batches of
        ``min(batch_size, pairs)``, at most ``max_steps``."""
        if self.steps is not None:
            return self.steps
        per_epoch = math.ceil(pairs / max(1, min(self.batch_size, pairs)))
        return max(1, min(self.max_steps, self.epochs * per_epoch))

    def train_only(self) -> tuple[str, ...] | None:
        """``trainable`` as the model's sub-module paths (TrainConfig.train_only); None when not set."""
        return None if self.trainable is None else tuple(TRAINABLE_PARTS[p] for p in self.trainable)


# SAG_FINETUNE_RECIPE name -> the FinetuneConfig a Start Training run starts from (SAG_FINETUNE_* override fields).
FINETUNE_RECIPES: dict[str, FinetuneConfig] = {
    # The measured default (bench/README.md, "Start Training"): what the `entities` recipe below teaches, at a
    # cost that fits minutes on a CPU. The image backbone is fixed and cached; entity discovery learns the project's
    # look and the word embeddings its words (new words with their own rows), on C^3 + reconstruction through the
    # fixed decoder. What makes it cheap, each measured on the domain-shift val split: the gradient crosses only the
    # last slot iteration (entity_grad_iterations) and the features are reconstructed at 32 positions a step
    # (recon_positions), neither of which lost gain; batches of 8 and 200 steps at most (30 passes), which did: a
    # step of the default model costs 1-2 s on 2 CPU cores, so 300 steps would not fit five minutes. Entity
    # discovery keeps its grouping of the patches near the serving version's (grouping_distill), which, trained
    # freely, it lost while learning the words: +0.063 on shift val against +0.043 without, for a third more time.
    "fast": FinetuneConfig(epochs=30, max_steps=200, batch_size=8, lr=3e-4, backbone_lr_scale=1.0,
                           freeze_image_side=False, trainable=("entity", "word_embeddings"), new_words=True,
                           entity_grad_iterations=1, recon_positions=32, grouping_distill=10.0),
    # The default before: the whole image side fixed (entities computed once per image), the text side and the
    # fusion trained on C^3. The cheapest step, but on the domain-shift benchmark 200 pairs taught it nothing (val
    # +0.009, test -0.011, against +0.029 and +0.020 for `fast`).
    "text": FinetuneConfig(),
    # The paper's training as it is, on the project's pairs: every part trains (the backbones at lr x 0.1), C^3 +
    # reconstruction. Hours on a CPU with the default model.
    "paper": FinetuneConfig(lr=1e-5, freeze_image_backbone=False, freeze_image_side=False),
    # New words only: each word the tokenizer spells out gets its own embedding row, and only the text backbone's
    # embeddings train (lr 1e-3, 60 passes, at most 600 steps); every other weight is the serving version's, so the
    # words the model knew keep their meaning. Chosen on the domain-shift val split (bench/README.md, "Domain shift").
    "words": FinetuneConfig(epochs=60, max_steps=600, lr=1e-3, backbone_lr_scale=1.0,
                            trainable=("word_embeddings",), new_words=True),
    # New words, and entity discovery learning the project's look: the image backbone fixed and cached, entity
    # discovery and the word embeddings (new words with their own rows) trained on C^3 + reconstruction (through the
    # fixed decoder), lr 3e-4, 20 passes, at most 200 steps. Chosen on the domain-shift val split; a step of the
    # default model costs about 7 s on 2 CPU cores without the decoder, far more with it: for small models or a GPU.
    "entities": FinetuneConfig(lr=3e-4, backbone_lr_scale=1.0, freeze_image_side=False,
                               trainable=("entity", "word_embeddings"), new_words=True),
}


@dataclass(frozen=True)
class ProjectData:
    """What a project offers: training pairs (no masks) and the hand-drawn masks to validate on."""

    pairs: ReferringDataset
    validation: ReferringDataset | None
    images: int
    skipped: tuple[str, ...] = ()  # tasks that could not be used, with the reason

    @property
    def validation_size(self) -> int:
        return len(self.validation) if self.validation is not None else 0


def eta_seconds(done: int, total: int, since: float) -> int | None:
    """Seconds left for ``total - done`` more items at the pace since ``since`` (time.monotonic()); None before
    the first item is done."""
    return round((time.monotonic() - since) / done * (total - done)) if done > 0 else None


@dataclass(frozen=True)
class Decision:
    """Whether a candidate may be served, and why (shown in the job status and stored in its metadata)."""

    promote: bool
    reason: str


@dataclass
class FinetuneResult:
    version: str
    parent: str
    promoted: bool
    reason: str
    pairs: int
    validation_masks: int
    steps: int
    metrics: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_data(tasks: Sequence[dict[str, Any]], image_field: str, text_fields: Sequence[str],
                 image_loader: ImageLoader, progress: Callable[[int, int], None] | None = None) -> ProjectData:
    """Image-text pairs and validation masks from Label Studio tasks (as exported, with their annotations).

    Texts come from the task data fields and TextArea results named in ``text_fields``. A task that cannot be used
    (no image, an image that cannot be read, a malformed brush result) is skipped and named in ``skipped`` rather
    than failing the whole project. Predictions are never read: only annotations (what people submitted) give
    validation masks. Every image is read once here, so a broken one cannot stop training half-way;
    ``progress(done, total)`` is called after each task.
    """
    expressions, skipped = [], []
    for done, task in enumerate(tasks, 1):
        task_id = task.get("id") if isinstance(task, dict) else "?"
        try:
            found = label_studio_expressions([task], image_field, text_fields)
            for image in {e.image for e in found}:
                image_loader(image)
        except Exception as exc:  # any loader's error (missing file, HTTP, refused address) skips just this task
            skipped.append(f"task {task_id}: {exc}")
        else:
            expressions += found
        if progress is not None:
            progress(done, len(tasks))
    for reason in skipped:
        log.warning("fine-tune: skipping %s", reason)
    unique = {}
    for expr in expressions:  # several annotations of one task repeat its texts: one pair each
        unique.setdefault((expr.image, expr.text), expr)
    pairs = ReferringDataset(list(unique.values()), "label-studio", with_masks=False,
                             image_loader=image_loader).pairs()
    masked = [e for e in expressions if e.mask is not None]
    validation = ReferringDataset(masked, "label-studio-masks", True, image_loader) if masked else None
    return ProjectData(pairs, validation, len({e.image for e in expressions}), tuple(skipped))


def promotion_decision(candidate_miou: float | None, serving_miou: float | None, tolerance: float,
                       validation_size: int, retrieval: tuple[RetrievalScores, RetrievalScores] | None = None,
                       heldout_tolerance: float = 0.0, promote_unchecked: bool = False) -> Decision:
    """Whether a candidate may be served.

    With hand-corrected masks (``validation_size`` > 0): unless its mIoU is below the serving model's minus
    ``tolerance``. Without them, on the mask-free evidence ``retrieval`` = (candidate, serving) scores on held-out
    pairs: unless its held-out loss is above the serving model's plus ``heldout_tolerance``, or its own images
    rank lower among the held-out ones than the serving model's did, or (where both were measured: the image side
    trained) its entities reconstruct the held-out images' features worse. With neither, it is not promoted
    (nothing shows it is not worse) unless ``promote_unchecked``.
    """
    if tolerance < 0 or heldout_tolerance < 0:
        raise ValueError(f"tolerances must be >= 0, got {tolerance} and {heldout_tolerance}")
    if validation_size == 0:
        if retrieval is None:
            if promote_unchecked:
                return Decision(True, "no hand-corrected masks and too few pairs to hold some out: promoted "
                                      "without a check (SAG_PROMOTE_UNCHECKED)")
            return Decision(False, "no hand-corrected masks, and too few image-text pairs to keep some out of "
                                   "training for a check: not promoted (correct a few masks, or add tasks; "
                                   "`sag-models promote VERSION` serves it anyway)")
        candidate, serving = retrieval
        if math.isnan(candidate.loss):
            return Decision(False, "the candidate's held-out loss is NaN (training diverged): not promoted")
        summary = (f"no hand-corrected masks; text-to-image retrieval on {candidate.pairs} held-out pair(s) of "
                   f"{candidate.images} image(s): candidate {candidate.accuracy:.4f}, serving "
                   f"{serving.accuracy:.4f}; rank of the own image (0 first, 0.5 chance): candidate "
                   f"{candidate.rank:.4f}, serving {serving.rank:.4f}; loss: candidate {candidate.loss:.4f}, "
                   f"serving {serving.loss:.4f}, tolerance {heldout_tolerance:.4f}")
        # Where the image side trained, its entities must still explain the held-out images: a run that broke entity
        # discovery can still get better at telling images apart (bench/README.md, "Start Training").
        explains = True
        if candidate.reconstruction is not None and serving.reconstruction is not None:
            summary += (f"; reconstruction of the held-out images: candidate {candidate.reconstruction:.4f}, "
                        f"serving {serving.reconstruction:.4f}")
            explains = candidate.reconstruction <= serving.reconstruction
        if candidate.loss <= serving.loss + heldout_tolerance and candidate.rank <= serving.rank and explains:
            return Decision(True, f"{summary}: not worse, promoted")
        return Decision(False, f"{summary}: worse, not promoted")
    if candidate_miou is None or serving_miou is None:
        raise ValueError("with validation masks both the candidate's and the serving model's mIoU are needed")
    if math.isnan(candidate_miou):
        return Decision(False, "the candidate's validation mIoU is NaN (training diverged): not promoted")
    summary = (f"validation mIoU on {validation_size} hand-corrected mask(s): candidate {candidate_miou:.4f}, "
               f"serving {serving_miou:.4f}, tolerance {tolerance:.4f}")
    if candidate_miou >= serving_miou - tolerance:
        return Decision(True, f"{summary}: not worse, promoted")
    return Decision(False, f"{summary}: worse, not promoted")


def validation_miou(model: SaG, data: ReferringDataset, batch_size: int, refine: str | None = None,
                    spatial: bool | None = None) -> float:
    """mIoU (scheme ``ours``, masks refined with ``refine`` and spatial words read when ``spatial``, defaults the
    model's) of ``model`` on ``data``; leaves the model in eval mode."""
    from .evaluate import evaluate

    return float(evaluate(model, data, schemes=("ours",), batch_size=batch_size, show_progress=False,
                          refine=refine, spatial=spatial).schemes["ours"]["mIoU"])


def _fingerprint(parent: str, data: ProjectData, config: FinetuneConfig) -> str:
    """Identifies a run: a re-run of the same job resumes only when the parent, pairs and config are unchanged."""
    digest = hashlib.sha256(parent.encode())
    for expr in sorted(data.pairs.expressions, key=lambda e: (e.image, e.text)):
        digest.update(f"\0{expr.image}\0{expr.text}".encode())
    run = {k: v for k, v in asdict(config).items() if k not in ("tolerance", "show_progress")}
    digest.update(json.dumps(run, sort_keys=True).encode())
    return digest.hexdigest()


def _prepare_workdir(workdir: Path, fingerprint: str) -> None:
    """Keep ``workdir`` (a killed run's checkpoints) only if it belongs to this very run; otherwise start clean."""
    marker = workdir / FINGERPRINT
    try:
        same = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        same = False
    if same:
        log.info("fine-tune: resuming the interrupted run in %s", workdir)
        return
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint}), encoding="utf-8")


def finetune(registry: Registry, data: ProjectData, config: FinetuneConfig, workdir: str | Path,
             device: str = "cpu", metadata: dict[str, Any] | None = None,
             report: Report | None = None) -> FinetuneResult:
    """Fine-tune the serving version on ``data``, store the candidate, promote it if :func:`promotion_decision` allows.

    Args:
        registry: the checkpoint registry; its current version is the starting point.
        data: from :func:`project_data`.
        config: a :class:`FinetuneConfig`.
        workdir: the run's own directory for resumable checkpoints (a re-run of a killed job resumes there);
            removed when the run ends.
        device: where to train.
        metadata: merged into the new version's metadata (e.g. the Label Studio project and trigger).
        report: called with progress dicts: ``{"stage": ...}`` and ``{"stage": "training", "step", "total", "loss"}``.
    """
    report = report or (lambda info: None)
    parent = registry.current()
    if parent is None:
        raise FinetuneError("the registry has no serving version to fine-tune from; start sag-backend once (it "
                            "creates the initial version) or promote one with `sag-models promote VERSION`")
    pairs = len(data.pairs)
    if pairs < config.min_pairs:
        skipped = f"; {len(data.skipped)} task(s) were skipped, e.g. {data.skipped[0]}" if data.skipped else ""
        raise FinetuneError(f"the project has {pairs} usable image-text pair(s); fine-tuning needs at least "
                            f"{config.min_pairs}: add tasks with a text field or type prompts in the TextArea"
                            f"{skipped}")
    workdir = Path(workdir)
    train_pairs, heldout = hold_out(data.pairs, config.heldout_fraction, config.heldout_min_pairs,
                                    config.heldout_max_pairs, seed=config.seed)
    log.info("fine-tune: %d pairs from %d images (%d held out for the retrieval check), %d validation mask(s), "
             "from version %s", pairs, data.images, len(heldout) if heldout else 0, data.validation_size, parent)

    report({"stage": "loading", "parent": parent, "pairs": pairs, "validation_masks": data.validation_size,
            "heldout_pairs": len(heldout) if heldout else 0})
    model = SaG.from_pretrained(registry.get(parent).path, device=device)
    serving_miou = serving_retrieval = None
    if data.validation is not None or heldout is not None:
        report({"stage": "validating the serving version"})
    if data.validation is not None:
        serving_miou = validation_miou(model, data.validation, config.eval_batch_size, config.mask_refine,
                                        config.spatial_words)
        log.info("fine-tune: serving version %s scores mIoU %.4f on the validation masks", parent, serving_miou)
    # With the image side fixed, the candidate sees the held-out images exactly as the serving version does: their
    # entities are computed (and their files read) once, not again after training.
    fixed_entities = None
    if heldout is not None:
        if config.freeze_image_side:
            fixed_entities = heldout_entities(model, heldout, config.eval_batch_size)
        serving_retrieval = retrieval_scores(model, heldout, config.eval_batch_size, fixed_entities)
        log.info("fine-tune: serving version %s: held-out retrieval %s", parent, serving_retrieval.to_dict())

    from .engine import TrainConfig, Trainer

    added: list[str] = []
    if config.new_words:  # after the serving version was scored: it reads the texts as it always did
        from .vocabulary import add_words, new_words

        texts = (e.text for e in train_pairs.expressions)
        added = add_words(model.text_encoder, new_words(model.text_encoder, texts))
        log.info("fine-tune: %d new word(s) with their own embedding rows: %s", len(added), ", ".join(added[:20]))
    _prepare_workdir(workdir, _fingerprint(parent, data, config))
    steps = config.steps_for(len(train_pairs))
    every = max(1, min(config.checkpoint_every, steps // 4))
    train_config = TrainConfig(max_steps=steps, batch_size=min(config.batch_size, len(train_pairs)), lr=config.lr,
                               backbone_lr_scale=config.backbone_lr_scale, train_only=config.train_only(),
                               eval_every=every, checkpoint_every=every,
                               keep_last=1, precision=config.precision, seed=config.seed, resume=True,
                               log_every=max(1, min(10, steps // 10)),
                               freeze_image_backbone=config.freeze_image_backbone,
                               freeze_image_side=config.freeze_image_side,
                               entity_grad_iterations=config.entity_grad_iterations,
                               recon_positions=config.recon_positions,
                               grouping_distill=config.grouping_distill,
                               # "disk": a killed and re-run job finds its images' features in its workdir
                               feature_cache="disk" if config.feature_cache else "off")
    trainer = Trainer(model, train_pairs, train_config, workdir, metadata={"parent": parent},
                      show_progress=config.show_progress)
    started = time.monotonic()

    def on_image(done: int, total: int) -> None:
        report({"stage": "caching image features", "done": done, "total": total,
                "eta_s": eta_seconds(done, total, started)})

    report({"stage": "caching image features", "done": 0, "total": None, "eta_s": None})
    trainer.warm_image_cache(on_image)

    last_loss: list[float] = []
    first: list[tuple[int, float]] = []  # (step, time) of the first step this run saw (a resumed run starts late)

    def on_step(step: int, total: int, loss: float) -> None:
        last_loss[:] = [loss]
        if not first:
            first.append((step, time.monotonic()))
        # Estimated from the steps of this run after the first (which pays for loading and the cache).
        start, since = first[0]
        report({"stage": "training", "step": step, "total": total, "loss": loss,
                "eta_s": eta_seconds(step - start, total - start, since)})

    report({"stage": "training", "step": 0, "total": steps, "loss": None, "eta_s": None})
    trainer.progress = on_step
    recon_weight = model.config.recon_weight
    if not config.reconstruction:
        model.config.recon_weight = 0.0  # for this run only: the candidate keeps the serving version's config
    try:
        trained = trainer.fit()
    finally:
        model.config.recon_weight = recon_weight

    candidate_miou = candidate_retrieval = None
    if data.validation is not None or heldout is not None:
        report({"stage": "validating the candidate"})
    if data.validation is not None:
        candidate_miou = validation_miou(model, data.validation, config.eval_batch_size, config.mask_refine,
                                        config.spatial_words)
    if heldout is not None:
        candidate_retrieval = retrieval_scores(model, heldout, config.eval_batch_size, fixed_entities)
        log.info("fine-tune: candidate: held-out retrieval %s", candidate_retrieval.to_dict())
    retrieval = (candidate_retrieval, serving_retrieval) if heldout is not None else None
    decision = promotion_decision(candidate_miou, serving_miou, config.tolerance, data.validation_size,
                                  retrieval, config.heldout_tolerance, config.promote_unchecked)
    serving_now = registry.current()
    if decision.promote and serving_now != parent:
        decision = Decision(False, f"the serving version changed from {parent} to {serving_now} while training; "
                                   "the candidate is stored but not promoted: start training again")

    report({"stage": "saving"})
    metrics = {"val_mIoU": candidate_miou, "parent_val_mIoU": serving_miou,
               "final_loss": last_loss[0] if last_loss else None,
               "heldout_retrieval": candidate_retrieval.to_dict() if candidate_retrieval else None,
               "parent_heldout_retrieval": serving_retrieval.to_dict() if serving_retrieval else None}
    version = registry.add(model, {
        **(metadata or {}),
        "parent": parent,
        "trained": True,
        "trained_on": {"source": "label-studio", "pairs": len(train_pairs), "images": data.images,
                       "heldout_pairs": len(heldout) if heldout else 0,
                       "validation_masks": data.validation_size, "new_words": added},
        "pairs": pairs,
        "metrics": metrics,
        "promotion": {"promoted": decision.promote, "reason": decision.reason},
        "finetune": {k: v for k, v in asdict(config).items() if k != "show_progress"},
    })
    if decision.promote:
        registry.promote(version.id)
    log.info("fine-tune: stored %s (parent %s): %s", version.id, parent, decision.reason)
    report({"stage": "promoted" if decision.promote else "not promoted", "reason": decision.reason})
    shutil.rmtree(workdir, ignore_errors=True)
    return FinetuneResult(version.id, parent, decision.promote, decision.reason, pairs, data.validation_size,
                          trained.steps, metrics)
