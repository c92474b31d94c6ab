"""Training, evaluation and the checkpoint registry of SaG (imports :mod:`sag`; :mod:`backend` imports this).

Module map:

- ``engine``: the training loop, :class:`~training.engine.Trainer` / ``fit``, with its config, optimizer parameter
  groups, learning-rate schedule and seeding.
- ``checkpoints``: a training run's checkpoint directory: atomic write and read, listing, pruning, ``best.json``,
  ``trainer_state.pt`` and the RNG state for exact resume.
- ``feature_cache``: frozen image-backbone features computed once per image and reused across steps and epochs.
- ``presets``: ``TRAINING_PRESETS``, named model configs each with the recipe to train it (``sag-train --preset``).
- ``evaluate``: the paper's table (mIoU, cIoU, acc@0.3/0.5/0.7) per inference scheme, and the baselines.
- ``real_photos``: the real-photo benchmark's data (texts on photos that PyPI packages ship, ``real_photos.json``)
  and scores; ``bench/real_photos.py`` reports with it, ``sag-models import`` measures with it.
- ``figures``: a version's measured figures (synthetic, real photos) kept in its metadata; ``/health`` shows them.
- ``diagnostics``: where an evaluation loses its score (``sag-eval --diagnostics``): entity mBO, oracle-entity and
  NNLS mIoU, pointing, A_fuse picks, boundary F.
- ``overlays``: PNG figures of image, ground truth, prediction and top entities, like the paper's Fig. 5.
- ``finetune``: the Label Studio "Start Training" job: fine-tune the serving version, score it, promote or not.
- ``registry``: the versioned checkpoint store the backend serves from, and ``sag-models``.
- ``checkpoint_transfer``: importing checkpoints into the registry and exporting them (directory, archive, hub).
- ``settings``: every environment variable training reads, in one place.
- ``exceptions``: every exception type training raises (settings, data sets, checkpoints, registry, fine-tuning).
- ``cli``: ``sag-train`` and ``sag-eval``.
- ``datasets/``: loaders yielding image-text samples (RefCOCO family, PhraseCut, JSON lines, Label Studio, synthetic).
- ``synthetic/``: the synthetic referring-benchmark generator (grammar, drawing, writer; ``python -m
  training.synthetic``); ``datasets/synthetic.py`` only loads what it wrote.
"""
