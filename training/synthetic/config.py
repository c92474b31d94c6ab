"""What the synthetic benchmark is made of: the vocabularies (colours, shapes, sizes, splits, expression kinds), the
held-out (colour, shape) pairs, the domains, and :class:`SyntheticConfig`, the one object that fixes a generated
benchmark.

Two domains share the grammar and the scene layout but nothing the model could have learnt words or looks from:

* ``base``: the benchmark the CPU presets are trained on (six colours, five shapes, grey textured backgrounds);
* ``shift``: a project's new domain for the fine-tuning benchmark (bench/domain_shift.py): six other colour names,
  five other shape names, tinted backgrounds with other textures, textured and outlined objects, other sizes.
  :class:`DomainConfig` generates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 210, 35),
    "purple": (145, 55, 185),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SIZES: tuple[str, ...] = ("small", "large")
# One held-out pair per colour, every shape at least once: the compositional split's targets.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"), ("green", "diamond"), ("blue", "circle"), ("yellow", "triangle"), ("purple", "square"),
    ("orange", "diamond"),
)
# The order matters: a scene's generator is seeded by a split's index here, so reordering changes every scene.
SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")
KINDS: tuple[str, ...] = ("attribute", "absolute", "relation")  # what SyntheticConfig.kind_weights is indexed by

# The shift domain: none of these words occurs in the base domain's texts. Colours far apart from each other (teal
# and cyan differ in brightness, black and white in everything) so that a colour word names one look.
SHIFT_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (245, 120, 190),
    "teal": (0, 120, 120),
    "brown": (130, 75, 30),
    "cyan": (60, 225, 235),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
SHIFT_SHAPES: tuple[str, ...] = ("hexagon", "cross", "arrow", "heart", "pentagon")
SHIFT_HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("pink", "arrow"), ("teal", "heart"), ("brown", "hexagon"), ("cyan", "pentagon"), ("black", "cross"),
    ("white", "heart"),
)


@dataclass(frozen=True)
class Domain:
    """A vocabulary and a look: what a domain's scenes contain and how they are drawn (:mod:`.drawing`)."""

    name: str
    colours: dict[str, tuple[int, int, int]]
    shapes: tuple[str, ...]
    look: str  # "base": grey textured background, flat shaded objects; "shift": see drawing._draw_shift
    # Mixed into every scene's seed, so that a domain's scenes are not the base scenes with other words (the same
    # object counts and places). None for the base domain, whose seeds must not change.
    seed_salt: int | None


DOMAINS: dict[str, Domain] = {
    "base": Domain("base", COLOURS, SHAPES, "base", None),
    "shift": Domain("shift", SHIFT_COLOURS, SHIFT_SHAPES, "shift", 1),
}
# Every word a descriptor may use, over all domains (their colour and shape words are disjoint).
ALL_COLOURS: frozenset[str] = frozenset(c for d in DOMAINS.values() for c in d.colours)
ALL_SHAPES: frozenset[str] = frozenset(s for d in DOMAINS.values() for s in d.shapes)


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate (the base domain). Sizes are fractions of the image side."""

    seed: int = 0
    image_size: int = 128
    scenes: dict[str, int] = field(default_factory=lambda: {"train": 4000, "val": 200, "test": 400,
                                                           "compositional": 400})
    min_objects: int = 2
    max_objects: int = 6
    repeat_prob: float = 0.6  # chance that each added object copies the (colour, shape) of one already there
    radius: dict[str, tuple[float, float]] = field(default_factory=lambda: {"small": (0.065, 0.085),
                                                                            "large": (0.12, 0.15)})
    margin: float = 0.08  # the smallest coordinate gap that makes "left of" / "leftmost" unambiguous
    expressions_per_scene: int = 2  # distinct targets per scene (fewer when the scene does not allow more)
    kind_weights: tuple[float, float, float] = (0.3, 0.35, 0.35)  # attribute, absolute, relation
    held_out: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS
    # A class attribute here, a field of DomainConfig: the base config's fields, hence its synthetic.json (which
    # bench/synthetic_benchmark.py compares before reusing generated data), stay what they were.
    domain: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"unknown domain {self.domain!r}; known: {sorted(DOMAINS)}")
        if not 2 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 2 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        unknown = set(self.scenes) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; known: {SPLITS}")
        for colour, shape in self.held_out:
            if colour not in self.colours or shape not in self.shapes:
                raise ValueError(f"held-out pair ({colour}, {shape}) is not a colour and shape of the "
                                 f"{self.domain} domain")
        if self.scenes.get("compositional", 0) and not self.held_out:
            raise ValueError("the compositional split needs held-out pairs")

    @property
    def vocabulary(self) -> Domain:
        return DOMAINS[self.domain]

    @property
    def colours(self) -> dict[str, tuple[int, int, int]]:
        return self.vocabulary.colours

    @property
    def shapes(self) -> tuple[str, ...]:
        return self.vocabulary.shapes


@dataclass(frozen=True)
class DomainConfig(SyntheticConfig):
    """:class:`SyntheticConfig` for another domain (default ``shift``), with that domain's defaults: its held-out
    pairs, smaller small and larger large objects, and splits sized for fine-tuning (train pairs to fine-tune on,
    val to choose settings on, test to report), without a compositional split."""

    domain: str = "shift"
    scenes: dict[str, int] = field(default_factory=lambda: {"train": 800, "val": 150, "test": 200,
                                                           "compositional": 0})
    radius: dict[str, tuple[float, float]] = field(default_factory=lambda: {"small": (0.055, 0.07),
                                                                            "large": (0.13, 0.17)})
    held_out: tuple[tuple[str, str], ...] = SHIFT_HELD_OUT_PAIRS

    def __post_init__(self) -> None:
        if self.domain == "base":
            raise ValueError("the base domain is SyntheticConfig's; DomainConfig is for the others")
        super().__post_init__()


def synthetic_config(domain: str = "base", **fields) -> SyntheticConfig:
    """The config of ``domain`` (a key of :data:`DOMAINS`) with ``fields`` overriding its defaults."""
    if domain == "base":
        return SyntheticConfig(**fields)
    return DomainConfig(domain=domain, **fields)
