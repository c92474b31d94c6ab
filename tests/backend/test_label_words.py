"""Choosing a label by meaning (backend/labelstudio/label_words.py), through the labelling config that uses it: the
text's head noun, plurals, nouns of several words, and a specific label before a generic one."""

from __future__ import annotations

import pytest

from backend.labelstudio.labeling_config import parse_labeling_config


@pytest.mark.parametrize("text, label", [
    ("the cup of coffee", "Object"),  # "coffee" names no label and no predicted value: its head noun "cup" does
    ("the flag on the left", "Object"),
    ("the man", "Person"),  # a predicted value
    ("the two puppies", "Animal"),  # plural of a noun of the built-in list
    ("the baseball player", "Person"),  # the head noun ends the first noun phrase ...
    ("the coffee cup on the table", "Object"),  # ... and prepositions end the phrase
    ("the building behind the horse", "Object"),  # an -ing noun is not taken for a verb
    ("the hot dog", "Object"),  # a two-word noun is not a dog
    ("the one next to the cat", "Animal"),  # no noun in the first phrase: the next one named
    ("the man holding a cat", "Person"),  # several labels named: the head noun decides ...
    ("the cat next to the man", "Animal"),  # ... whatever the labels' order
    ("two astronauts", "Person"),  # a predicted value in the plural
])
def test_label_by_meaning_with_the_example_config(example_config, text, label):
    assert example_config.label_for(text, {}) == label


def test_a_specific_label_beats_a_generic_one_and_the_map_still_wins(example_config):
    config = parse_labeling_config(
        "<View><Image name='image' value='$image'/><Text name='text' value='$text'/>"
        "<BrushLabels name='mask' toName='image'><Label value='Object'/><Label value='Vehicle'/>"
        "<Label value='Food'/></BrushLabels></View>")
    assert config.label_for("the red truck", {}) == "Vehicle"  # a truck is also an Object: the specific label wins
    assert config.label_for("the bowl of soup", {}) == "Object"
    assert config.label_for("the pizza", {}) == "Food"
    assert config.label_for("the pizza", {"pizza": "Object"}) == "Object"
    assert example_config.label_for("the cup", {"cup": "Animal"}) == "Animal"
