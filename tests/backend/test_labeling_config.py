"""Labelling-config checks (backend/labeling_config.py)."""

from __future__ import annotations

import pytest

from backend.exceptions import LabelConfigError
from backend.labeling_config import parse_labeling_config

from .conftest import LABEL_CONFIG


def test_config_with_text_field_prompt_and_labels():
    config = parse_labeling_config(LABEL_CONFIG)
    assert (config.image_name, config.image_key, config.prompt_name) == ("image", "image", "prompt")
    assert config.brush.name == "mask" and config.brush.labels == ("Person", "Cat", "Object")
    assert config.polygon is None
    config.require_text_source("text")
    assert config.label_for("the astronaut on the left", {}) == "Person"  # predicted_values
    assert config.label_for("a sleeping cat", {}) == "Cat"  # the label named in the text
    assert config.label_for("the red mug", {}) == "Person"  # the first label otherwise
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
