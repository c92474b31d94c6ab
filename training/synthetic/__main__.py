"""The generator's command line: ``python -m training.synthetic --out DIR [--seed N] [--image-size S] [--train N]
[--val N] [--test N] [--compositional N]``. ``python -m training.datasets.synthetic`` is an alias kept for old notes.

``main`` is not re-exported by the package: ``python -m`` runs this file as ``__main__`` after importing the
package, and a second copy imported by ``__init__`` would make runpy warn.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from .config import SPLITS, SyntheticConfig
from .writer import write_benchmark


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.synthetic --out DIR``: write the benchmark (refer layout) into DIR."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=main.__doc__)
    parser.add_argument("--out", required=True, help="target directory (e.g. data/synthetic)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=defaults.scenes[split], help=f"{split} scenes")
    args = parser.parse_args(argv)
    config = SyntheticConfig(seed=args.seed, image_size=args.image_size,
                             scenes={s: getattr(args, s) for s in SPLITS})
    write_benchmark(args.out, config)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
