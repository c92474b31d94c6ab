"""Choosing a label by meaning: a small built-in vocabulary of common nouns for the label names people typically
use (Person, Animal, Vehicle, Food, Object, ...), and the head noun of a referring text.

Used by :meth:`backend.labelstudio.labeling_config.LabelingConfig.label_for` after ``SAG_LABEL_MAP``: a label named
in the text (its value or a ``predicted_values`` word) or, when none is, the label whose meaning holds the text's
head noun: "the cup of coffee" names no label of Person / Animal / Object, but its head noun *cup* is an object.

Why a word list and not the model's text encoder: the HTTP process that picks labels does not hold the model in
Redis mode (the workers do), and loading a text encoder there would cost a second copy of it and seconds of start-up;
SaG's text encoder is trained to match image regions (and is random in the ``tiny`` preset), not to compare words;
and a list is deterministic, free, and can be read and corrected by anyone. What it does not know falls through to
``SAG_DEFAULT_LABEL``, then to a generic label (Object, Other, Thing, ...), then to the first label.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence

# category -> (label names that mean it, nouns that belong to it). Label names and nouns are lower-case singular.
_CATEGORIES: dict[str, tuple[frozenset[str], frozenset[str]]] = {}


def _category(name: str, label_names: str, nouns: str) -> None:
    _CATEGORIES[name] = (frozenset(label_names.split()), frozenset(n.replace("_", " ") for n in nouns.split()))


_category("person", "person people human pedestrian individual",
          "person people man men woman women boy girl child children kid baby toddler teenager adult guy lady "
          "gentleman player astronaut skier surfer snowboarder skateboarder rider driver pedestrian cyclist biker "
          "mother father mom dad son daughter brother sister husband wife friend worker officer policeman soldier "
          "chef cook doctor nurse teacher student customer batter catcher pitcher umpire referee runner athlete "
          "passenger tourist crowd face hand head arm leg human individual")
_category("animal", "animal pet creature wildlife",
          "animal pet cat kitten kitty dog puppy horse pony foal cow calf cattle bull ox sheep lamb goat pig "
          "bird duck goose swan chicken hen rooster parrot pigeon seagull owl eagle penguin elephant bear zebra "
          "giraffe lion tiger leopard cheetah monkey ape gorilla fish shark whale dolphin rabbit bunny deer "
          "squirrel fox wolf camel donkey frog turtle snake lizard butterfly bee insect creature")
_category("vehicle", "vehicle transport transportation car",
          "vehicle car truck lorry bus van taxi cab motorcycle motorbike bike bicycle scooter train tram boat ship "
          "airplane plane aeroplane aircraft jet helicopter rocket spaceship suv jeep tractor trailer wagon cart "
          "sailboat canoe kayak yacht ambulance")
_category("food", "food meal dish fruit vegetable",
          "food meal dish fruit vegetable apple banana pizza sandwich cake donut doughnut hot_dog hotdog broccoli "
          "carrot bread coffee tea sushi salad egg cheese meat burger hamburger cookie pie soup rice dessert lemon "
          "tomato potato grape strawberry pasta noodle steak fries")
_category("furniture", "furniture",
          "furniture chair couch sofa bed table desk bench shelf bookshelf cabinet stool dresser wardrobe armchair")
_category("plant", "plant vegetation tree flora greenery flower",
          "plant tree flower bush shrub grass leaf leaves palm cactus hedge")
_category("building", "building architecture house structure",
          "building house tower church skyscraper bridge wall roof window door barn castle hut shed tent fence "
          "chimney")
_category("clothing", "clothing clothes apparel garment",
          "clothing clothes garment shirt t-shirt jacket coat dress hat cap shoe boot trousers pants jeans skirt "
          "tie scarf glove suit sock helmet")
_category("electronics", "electronics electronic device",
          "electronics device phone cellphone smartphone laptop computer keyboard remote tv television monitor "
          "screen camera tablet")
_category("object", "object thing item other stuff misc miscellaneous",
          "object thing item cup mug glass bottle bowl plate saucer spoon fork knife flag sign bag backpack handbag "
          "suitcase umbrella box basket jar pot pan kettle oven microwave refrigerator fridge sink toilet teddy_bear "
          "teddy toy ball kite frisbee skateboard surfboard racket ski skis clock book vase scissors lamp pillow "
          "pen pencil paper guitar piano drum instrument watch ring necklace glasses sunglasses wheel tire balloon "
          "candle trophy statue sculpture painting picture poster banner mirror towel blanket rug carpet curtain "
          "bucket barrel ladder hydrant fire_hydrant stop_sign traffic_light parking_meter tool hammer")

# A generic label (Object, Thing, Other...) stands for everything that is not a person or an animal.
GENERIC = "object"
_LIVING = ("person", "animal")

# Words that end a referring text's first noun phrase: what follows them describes the referent, it does not name it
# ("the cup OF coffee", "the man HOLDING a guitar", "the flag ON the left").
_BOUNDARIES = frozenset(
    "of on in at with without near next behind beside besides under below above over by from to into onto between "
    "among across against along around toward towards inside outside that which who whose where while and or but "
    "is are was were has have having".split()
)


def _singular(word: str) -> Iterable[str]:
    """``word`` and the singular forms it may be (cups -> cup, puppies -> puppy, glasses -> glass)."""
    yield word
    if word.endswith("ies") and len(word) > 4:
        yield word[:-3] + "y"
    if word.endswith("es") and len(word) > 3:
        yield word[:-2]
    if word.endswith("s") and len(word) > 2:
        yield word[:-1]


@functools.lru_cache(maxsize=256)
def _categories_of(names: tuple[str, ...]) -> frozenset[str]:
    """The categories a label means, from its value and predicted_values (``Persons`` and ``person`` alike)."""
    found = set()
    for name in names:
        for form in _singular(name.strip().lower()):
            found.update(c for c, (label_names, _) in _CATEGORIES.items() if form in label_names)
    return frozenset(found)


def _vocabulary(categories: frozenset[str]) -> frozenset[str]:
    if GENERIC in categories:
        categories = categories | {c for c in _CATEGORIES if c not in _LIVING}
    return frozenset().union(*(_CATEGORIES[c][1] for c in categories)) if categories else frozenset()


def _nouns(words: Sequence[str], known: frozenset[str], longest: int) -> list[tuple[str, str | None]]:
    """(word, the known noun it is or starts, else None), left to right. A noun of several words ("hot dog",
    "traffic light") is one entry, so its last word ("dog") is not read as a noun of its own."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 1, -1):
            phrase = " ".join(words[i:i + n])
            if phrase in known:
                out.append((words[i], phrase))
                i += n
                break
        else:
            out.append((words[i], next((form for form in _singular(words[i]) if form in known), None)))
            i += 1
    return out


def head_nouns(text: str, known: frozenset[str]) -> list[str]:
    """Nouns of ``known`` in ``text``, most likely head noun first: the first noun phrase (up to a preposition,
    a relative word or an -ing verb) read from its end ("the coffee CUP on the table"), then the rest of the text
    from its start ("the one on the left next to the DOG")."""
    longest = max((len(k.split()) for k in known), default=1)
    entries = _nouns(re.findall(r"\w+(?:-\w+)*", text.lower()), known, longest)
    end = len(entries)
    for i, (word, noun) in enumerate(entries):
        if i > 0 and noun is None and (word in _BOUNDARIES or (word.endswith("ing") and len(word) > 4)):
            end = i
            break
    first = [noun for _, noun in reversed(entries[:end]) if noun]
    return first + [noun for _, noun in entries[end:] if noun]


def label_by_meaning(text: str, labels: Sequence[tuple[str, Sequence[str]]]) -> str | None:
    """The label for ``text``'s head noun, or None when no word of the text names or means any label.

    ``labels`` are (label, its names: the value and its ``predicted_values``, lower-case). A noun picks, in this
    order: a label that names it (value or predicted value: "the cat" -> Cat), a label whose category holds it in
    the built-in vocabulary (Animal for "puppies"), a generic label (Object for "cup"); among equals, the first
    label. The head noun decides, wherever other nouns stand: "the man holding a cat" is a Person, "the cat next to
    the man" an Animal, "the hot dog" not an Animal."""
    candidates = []  # (rank, position, label, nouns); rank 0: named, 1: specific category, 2: generic category
    for position, (label, names) in enumerate(labels):
        named = frozenset(n.strip().lower() for n in [label, *names] if n.strip())
        candidates.append((0, position, label, named))
        categories = _categories_of(tuple(named))
        if categories:
            candidates.append((2 if GENERIC in categories else 1, position, label, _vocabulary(categories)))
    known = frozenset().union(*(nouns for *_, nouns in candidates))
    for noun in head_nouns(text, known):
        matches = [(rank, position, label) for rank, position, label, nouns in candidates if noun in nouns]
        if matches:
            return min(matches)[2]
    return None


def generic_label(labels: Sequence[str]) -> str | None:
    """The first label with a generic name (Object, Other, Thing, Item, ...), or None."""
    return next((label for label in labels if GENERIC in _categories_of((label,))), None)
