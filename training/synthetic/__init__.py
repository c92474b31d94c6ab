"""A deterministic synthetic referring benchmark: shapes on textured backgrounds with unique referring expressions.

It exists to show on a CPU that SaG learns masks from text alone. Scenes hold 2-6 shapes; (colour, shape) pairs are
often repeated inside a scene, so about half of the expressions can only be resolved by position or by a relation to
another object, and a bag of words cannot solve the benchmark (see :func:`bag_of_words_oracle`).

A second domain, ``shift``, has other colour and shape names and another look (:data:`DOMAINS`,
:class:`DomainConfig`): a project the CPU presets were never trained on, for the fine-tuning benchmark
(bench/domain_shift.py).

Splits: ``train``, ``val`` and ``test`` draw targets from the *seen* (colour, shape) pairs; ``compositional`` draws
targets only from the held-out pairs, which appear in training scenes as distractors or landmarks but never as the
object an expression refers to.

This package generates the data, apart from the loaders in :mod:`training.datasets`: they read what it writes
through the refer loader (:mod:`training.datasets.synthetic`) and do not import it, but for the old command's alias.
Modules:

- ``config``: the vocabularies (colours, shapes, sizes, splits, expression kinds), the domains, :class:`SyntheticConfig`
  and :class:`DomainConfig`.
- ``grammar``: scene objects and the referring-expression grammar: :func:`refer` writes, :func:`resolve` reads back.
- ``drawing``: a scene's objects rendered to an image and one mask per object.
- ``scene``: :func:`generate_scene`, one scene from its seed (placement, then expressions, then drawing).
- ``writer``: :func:`write_benchmark`, every split in the RefCOCO ``refer`` layout on disk.
- ``__main__``: the command line, ``python -m training.synthetic --out DIR [--train N ...]``.
"""

from .config import (
    COLOURS,
    DOMAINS,
    HELD_OUT_PAIRS,
    KINDS,
    SHAPES,
    SIZES,
    SPLITS,
    Domain,
    DomainConfig,
    SyntheticConfig,
    synthetic_config,
)
from .grammar import RELATIONS, SceneExpression, SceneObject, bag_of_words_oracle, refer, resolve
from .scene import Scene, generate_scene
from .writer import REFS_FILE, write_benchmark

__all__ = [
    "COLOURS", "DOMAINS", "HELD_OUT_PAIRS", "KINDS", "SHAPES", "SIZES", "SPLITS", "Domain", "DomainConfig",
    "SyntheticConfig", "synthetic_config",
    "RELATIONS", "SceneExpression", "SceneObject", "bag_of_words_oracle", "refer", "resolve",
    "Scene", "generate_scene", "REFS_FILE", "write_benchmark",
]
