"""What the synthetic benchmark is made of: the vocabularies (colours, shapes, sizes, splits, expression kinds), the
held-out (colour, shape) pairs, and :class:`SyntheticConfig`, the one object that fixes a generated benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Sizes are fractions of the image side."""

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

    def __post_init__(self) -> None:
        if not 2 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 2 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        unknown = set(self.scenes) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; known: {SPLITS}")
        for colour, shape in self.held_out:
            if colour not in COLOURS or shape not in SHAPES:
                raise ValueError(f"held-out pair ({colour}, {shape}) is not a known colour and shape")
