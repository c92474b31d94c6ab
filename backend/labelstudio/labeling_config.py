"""What the backend needs from a Label Studio labelling config, and a clear error when the config lacks it.

A servable config has an ``<Image>``, a ``<BrushLabels>`` and/or ``<PolygonLabels>`` control on that image, and a
text source: a task data field (``SAG_TEXT_FIELD``, usually shown with ``<Text value="$text"/>``) and/or a
``<TextArea>`` on the image whose text arrives in the request context (interactive pre-annotation).

Parsed with defusedxml rather than label-studio-sdk's LabelInterface: the SDK does not install beside our numpy (its
opencv pin downgrades it), and this needs only a handful of tags.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from defusedxml import ElementTree

from ..exceptions import LabelConfigError
from .label_words import generic_label, label_by_meaning


@dataclass(frozen=True)
class Control:
    """A labels control (``BrushLabels`` or ``PolygonLabels``) on the image."""

    name: str
    to_name: str
    labels: tuple[str, ...]
    # Label -> lower-cased words that pick it (its value plus <Label predicted_values="a,b">).
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class LabelingConfig:
    image_name: str  # the <Image name=...>: results' to_name
    image_key: str  # the task data key holding the image URL ($image -> image)
    brush: Control | None
    polygon: Control | None
    prompt_name: str | None  # a <TextArea> on the image: interactive prompts arrive in the context under this name
    text_keys: tuple[str, ...]  # task data keys shown by text tags (<Text value="$text">), for error messages

    def require_text_source(self, text_field: str) -> None:
        """Raise unless texts can come from task field ``text_field`` (shown by a text tag) or a prompt."""
        if self.prompt_name is None and text_field not in self.text_keys:
            raise LabelConfigError(
                f"the labelling config has no text source: show the task field with "
                f'<Text name="{text_field}" value="${text_field}"/> (SAG_TEXT_FIELD={text_field}; text fields in '
                f'this config: {list(self.text_keys)}) or add <TextArea name="prompt" toName="{self.image_name}"/> '
                "for typed prompts"
            )

    def label_for(self, text: str, label_map: dict[str, str], control: Control | None = None,
                  default_label: str | None = None) -> str | None:
        """The label of ``control`` (default: the brush, else the polygon control) for a referring ``text``:

        1. the first ``label_map`` key (``SAG_LABEL_MAP``) found in it, case-insensitive;
        2. for the text's head noun (:func:`~backend.labelstudio.label_words.head_nouns`: "the CUP of coffee", "the MAN
           holding a cat"; the next noun when the first phrase has none): a label that names it (its value or one of its
           ``predicted_values``), else the label closest in meaning from a built-in vocabulary
           (:mod:`backend.labelstudio.label_words`: "the cup" is an Object, "the two puppies" an Animal);
        3. ``default_label`` (``SAG_DEFAULT_LABEL``);
        4. a generic label (Object, Other, Thing, Item, ...), else the control's first label.

        A ``label_map`` value or ``default_label`` that is not a label of the primary control raises
        :class:`LabelConfigError`; for a second control (polygons with labels of their own) it is skipped."""
        control = control or self.brush or self.polygon
        if control is None or not control.labels:
            return None
        lowered = text.lower()
        primary = control is (self.brush or self.polygon)
        for needle, label in label_map.items():
            if needle.lower() in lowered:
                if label not in control.labels and not primary:
                    continue  # a map for the brush labels; the polygon control falls back below
                if label not in control.labels:
                    raise LabelConfigError(
                        f"SAG_LABEL_MAP maps {needle!r} to {label!r}, which is not a label of <{control.name}>: "
                        f"{list(control.labels)}"
                    )
                return label
        by_meaning = label_by_meaning(text, control.aliases)
        if by_meaning is not None:
            return by_meaning
        if default_label:
            if default_label in control.labels:
                return default_label
            if primary:
                raise LabelConfigError(f"SAG_DEFAULT_LABEL={default_label!r} is not a label of <{control.name}>: "
                                       f"{list(control.labels)}")
        return generic_label(control.labels) or control.labels[0]


def _value_key(element: Element) -> str | None:
    value = element.get("value", "")
    return value[1:] if value.startswith("$") else None


_DATA_KEY = re.compile(r"\$([A-Za-z_][\w-]*)")


def _data_key(element: Element) -> str | None:
    """The task data key a text tag shows: ``$text`` and, inside a ``<Repeater on="$text">``, ``$text[{{idx}}]``
    (one tag per list item) both show ``text``."""
    match = _DATA_KEY.match(element.get("value", ""))
    return match.group(1) if match else None


def _control(element: Element) -> Control:
    labels, aliases = [], []
    for child in element.iter("Label"):
        value = child.get("value")
        if not value:
            continue
        labels.append(value)
        extra = [v.strip().lower() for v in child.get("predicted_values", "").split(",") if v.strip()]
        aliases.append((value, tuple([value.lower(), *extra])))
    return Control(element.get("name", ""), element.get("toName", ""), tuple(labels), tuple(aliases))


# Label Studio configs are a few kilobytes (a large taxonomy some hundreds); the bound keeps the parse cache below
# 64 x 1 MiB however many distinct configs requests send.
MAX_CONFIG_CHARS = 2**20


def parse_labeling_config(xml: str) -> LabelingConfig:
    """Parse and check a config; raises :class:`LabelConfigError` naming what is missing or malformed (a value that
    is not a string, or longer than ``MAX_CONFIG_CHARS``, included)."""
    if not isinstance(xml, str):
        raise LabelConfigError(f"the labelling config must be a string of XML, got {type(xml).__name__}")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the labelling config has {len(xml)} characters; the limit is {MAX_CONFIG_CHARS}")
    return _parse(xml)


@functools.lru_cache(maxsize=64)
def _parse(xml: str) -> LabelingConfig:
    if not xml or not xml.strip():
        raise LabelConfigError("the labelling config is empty")
    try:
        root = ElementTree.fromstring(xml)
    except Exception as exc:  # defusedxml raises ParseError and its own subclasses for entity tricks
        raise LabelConfigError(f"the labelling config is not valid XML: {exc}") from None

    images = [el for el in root.iter("Image") if el.get("name")]
    if not images:
        raise LabelConfigError('the labelling config has no <Image name="..." value="$..."/> tag')
    by_image: dict[str, tuple[Element, list[Element], list[Element], list[Element]]] = {
        im.get("name"): (im, [], [], []) for im in images
    }
    for tag, slot in (("BrushLabels", 1), ("PolygonLabels", 2), ("TextArea", 3)):
        for el in root.iter(tag):
            target = by_image.get(el.get("toName", "").split(",")[0])
            if target is not None:
                target[slot].append(el)

    served = [entry for entry in by_image.values() if entry[1] or entry[2]]
    if not served:
        raise LabelConfigError(
            "the labelling config has no <BrushLabels> or <PolygonLabels> whose toName is an <Image> "
            f"(images: {sorted(by_image)}); add e.g. "
            '<BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>'
        )
    image, brushes, polygons, prompts = served[0]
    image_key = _value_key(image)
    if image_key is None:
        raise LabelConfigError(f'<Image name="{image.get("name")}"> needs value="$<task field>"')
    brush = _control(brushes[0]) if brushes else None
    polygon = _control(polygons[0]) if polygons else None
    for control in (brush, polygon):
        if control is not None and not control.labels:
            raise LabelConfigError(f'<{control.name}> has no <Label value="..."/> children')
    text_keys = tuple(
        key for tag in ("Text", "HyperText", "Header", "Paragraphs")
        for el in root.iter(tag) if (key := _data_key(el))
    )
    return LabelingConfig(
        image_name=image.get("name"),
        image_key=image_key,
        brush=brush,
        polygon=polygon,
        prompt_name=prompts[0].get("name") if prompts else None,
        text_keys=text_keys,
    )
