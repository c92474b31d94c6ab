"""The generator's command line: ``python -m training.synthetic --out DIR [--domain base|shift] [--seed N]
[--image-size S] [--train N] [--val N] [--test N] [--compositional N]``. ``python -m training.datasets.synthetic`` is
an alias kept for old notes.

``main`` is not re-exported by the package: ``python -m`` runs this file as ``__main__`` after importing the
package, and a second copy imported by ``__init__`` would make runpy warn.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from .config import DOMAINS, SPLITS, synthetic_config
from .writer import write_benchmark


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.synthetic --out DIR``: write the benchmark (refer layout) into DIR."""
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=main.__doc__)
    parser.add_argument("--out", required=True, help="target directory (e.g. data/synthetic)")
    parser.add_argument("--domain", default="base", choices=sorted(DOMAINS),
                        help="vocabulary and look (shift: the fine-tuning benchmark's new words and look)")
    parser.add_argument("--seed", type=int, help="generator seed (default 0)")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default 128)")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, help=f"{split} scenes (default: the domain's)")
    args = parser.parse_args(argv)
    defaults = synthetic_config(args.domain)
    config = synthetic_config(
        args.domain,
        seed=defaults.seed if args.seed is None else args.seed,
        image_size=defaults.image_size if args.image_size is None else args.image_size,
        scenes={s: defaults.scenes.get(s, 0) if getattr(args, s) is None else getattr(args, s) for s in SPLITS})
    write_benchmark(args.out, config)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
