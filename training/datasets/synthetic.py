"""The synthetic benchmark as a data set: a thin loader over the refer layout that it is written in.

The generator lives in :mod:`training.synthetic` (``python -m training.synthetic --out DIR``). Loading needs none of
it: the benchmark is ``refs(synthetic).p`` + ``instances.json`` + ``images/``, read by the loader the RefCOCO sets use
(:func:`training.datasets.refcoco.refer_dataset`, partition ``synthetic``).

``python -m training.datasets.synthetic ...`` is a compatibility alias of ``python -m training.synthetic ...`` (same
flags, same files written), kept because older notes and scripts show that command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import ImageLoader, ReferringDataset, load_image
from .refcoco import refer_dataset

SPLIT_BY = "synthetic"  # the refs partition the generator writes: refs(synthetic).p


def synthetic_dataset(data_root: str | Path, split: str, name: str = "synthetic", with_masks: bool = True,
                      image_loader: ImageLoader = load_image) -> ReferringDataset:
    """One split (``train``, ``val``, ``test``, ``compositional``) of the benchmark in ``data_root/<name>/``, the
    directory given to the generator's ``--out``."""
    return refer_dataset(data_root, name, split, SPLIT_BY, with_masks=with_masks, image_loader=image_loader)


def main(argv: Sequence[str] | None = None) -> int:
    """The old command, ``python -m training.datasets.synthetic``: runs ``python -m training.synthetic``."""
    # Deferred: loading the data set must not import the generator (drawing, grammar, tqdm); only this alias needs it.
    from training.synthetic.__main__ import main as generate

    return generate(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
