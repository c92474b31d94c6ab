"""Labelling-config checks (backend/labelstudio/labeling_config.py); choosing a label by meaning:
test_label_words.py."""

from __future__ import annotations

import pytest

from backend.exceptions import LabelConfigError
from backend.labelstudio.labeling_config import parse_labeling_config

from .conftest import LABEL_CONFIG


def test_config_with_text_field_prompt_and_labels():
    config = parse_labeling_config(LABEL_CONFIG)
    assert (config.image_name, config.image_key, config.prompt_name) == ("image", "image", "prompt")
    assert config.brush.name == "mask" and config.brush.labels == ("Person", "Cat", "Object")
    assert config.polygon is None
    config.require_text_source("text")
    assert config.label_for("the astronaut on the left", {}) == "Person"  # predicted_values
    assert config.label_for("a sleeping cat", {}) == "Cat"  # the label named in the text
    assert config.label_for("the red mug", {}) == "Object"  # by meaning: a mug is an object
    assert config.label_for("the one on the left", {}) == "Object"  # unknown: the generic label, not the first
    assert config.label_for("the red mug", {"mug": "Object"}) == "Object"  # SAG_LABEL_MAP wins
    with pytest.raises(LabelConfigError, match="not a label"):
        config.label_for("the mug", {"mug": "Cup"})


@pytest.mark.parametrize("xml, message", [
    ("", "empty"),
    ("<View><Image", "not valid XML"),
    ("<View><Text name='t' value='$text'/></View>", "no <Image"),
    ("<View><Image name='image' value='$image'/><Text name='text' value='$text'/></View>", "no <BrushLabels>"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='m' toName='other'><Label value='A'/>"
     "</BrushLabels></View>", "no <BrushLabels>"),
    ("<View><Image name='image' value='$image'/><BrushLabels name='m' toName='image'/>"
     "<Text name='text' value='$text'/></View>", "no <Label"),
])
def test_unservable_configs_say_what_is_missing(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_labeling_config(xml)


def test_config_without_a_text_source_is_refused():
    config = parse_labeling_config("<View><Image name='image' value='$image'/><BrushLabels name='m' toName='image'>"
                                   "<Label value='A'/></BrushLabels></View>")
    with pytest.raises(LabelConfigError, match="no text source"):
        config.require_text_source("text")


def test_polygon_only_config_is_served():
    config = parse_labeling_config("<View><Image name='img' value='$url'/><Header value='$caption'/>"
                                   "<PolygonLabels name='p' toName='img'><Label value='A'/></PolygonLabels></View>")
    assert config.brush is None and config.polygon.name == "p" and config.image_key == "url"
    config.require_text_source("caption")


def test_a_polygon_control_with_its_own_labels_gets_its_own_label():
    config = parse_labeling_config(
        "<View><Image name='image' value='$image'/><Text name='text' value='$text'/>"
        "<BrushLabels name='mask' toName='image'><Label value='Person'/><Label value='Object'/></BrushLabels>"
        "<PolygonLabels name='outline' toName='image'><Label value='Outline'/><Label value='Man'/></PolygonLabels>"
        "</View>")
    assert config.label_for("the man on the left", {"man": "Person"}) == "Person"
    assert config.label_for("the man on the left", {"man": "Person"}, config.polygon) == "Man"
    assert config.label_for("the red mug", {"man": "Person"}, config.polygon) == "Outline"


def test_default_label_is_the_fallback_and_must_be_a_label(example_config):
    assert example_config.label_for("the one on the left", {}, default_label="Animal") == "Animal"
    assert example_config.label_for("the cup of coffee", {}, default_label="Animal") == "Object"  # meaning first
    with pytest.raises(LabelConfigError, match="SAG_DEFAULT_LABEL='Car' is not a label of <mask>"):
        example_config.label_for("the one on the left", {}, default_label="Car")
    no_generic = parse_labeling_config(LABEL_CONFIG.replace('<Label value="Object"/>', ""))
    assert no_generic.label_for("the one on the left", {}) == "Person"  # no generic label: the first one


def test_repeated_text_tags_show_the_text_field(example_config):
    # <Repeater on="$text"><Text value="$text[{{idx}}]"/></Repeater> shows data.text, one line per item.
    assert example_config.text_keys == ("text",)
    config = parse_labeling_config(
        "<View><Image name='image' value='$image'/><Repeater on='$captions' indexFlag='{{idx}}'>"
        "<Text name='t_{{idx}}' value='$captions[{{idx}}]'/></Repeater>"
        "<BrushLabels name='mask' toName='image'><Label value='Object'/></BrushLabels></View>")
    config.require_text_source("captions")  # no prompt: the repeated field is the text source
