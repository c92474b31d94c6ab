"""Request bodies checked at the HTTP boundary: a size limit and a nesting-depth limit checked before the JSON is
parsed, and type checks of the request-level fields, each failure a :class:`BadRequest` (400) naming the field.

Per-task fields (a task that is not an object, ``data`` that is not an object, a text of the wrong type) are not
checked here: they fail that task alone, with ``{"task": id, "error": ...}`` (see :mod:`backend.model`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .exceptions import BadRequest

# The largest request body read (a bigger one is answered 413). A /predict of hundreds of tasks with their
# annotations' brush RLEs stays well below it.
MAX_BODY_BYTES = 64 * 2**20
# The deepest nesting of JSON arrays and objects accepted. A Label Studio request nests about ten levels (tasks ->
# task -> annotations -> result -> region -> value -> rle), plus whatever nesting a project keeps in task data;
# Python's parser would hit its recursion limit near 1,000.
MAX_JSON_DEPTH = 100

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_CHUNK = 1 << 20


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects more than ``limit`` levels deep, found without parsing
    it (brackets inside strings do not count). Linear in ``len(raw)``; malformed JSON gives an arbitrary answer, as
    the parser refuses it anyway."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # too few brackets to nest that deep: the common case, two C-speed passes
    # Drop escape pairs first (\\ before \", as JSON reads them left to right): every quote left opens or closes a
    # string. Then keep only quotes and brackets; all of it at C speed.
    marks = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    quotes = depth = 0
    for start in range(0, len(marks), _CHUNK):
        chunk = np.frombuffer(marks, dtype=np.uint8, count=min(_CHUNK, len(marks) - start), offset=start)
        steps = _STEP[chunk]  # +1 for [ {, -1 for ] }, 0 for a quote
        is_quote = chunk == ord('"')
        count = int(np.count_nonzero(is_quote))
        if count or quotes % 2:  # brackets inside a string (an odd number of quotes so far) do not count
            inside = ((np.cumsum(is_quote, dtype=np.int32) + quotes) & 1).astype(bool)
            steps = np.where(inside, 0, steps)
        running = np.cumsum(steps, dtype=np.int32)
        if depth + int(running.max()) > limit:
            return True
        depth += int(running[-1])
        quotes += count
    return False


def parse_json_object(raw: bytes, what: str = "the request body") -> dict[str, Any]:
    """``raw`` parsed as a JSON object; :class:`BadRequest` when it is nested too deeply (checked first), is not
    JSON or is not an object."""
    if json_too_deep(raw):
        raise BadRequest(f"{what} nests JSON arrays and objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        payload = json.loads(raw)
    except RecursionError:  # not reached after the depth check; kept so a parser change cannot bring back a 500
        raise BadRequest(f"{what} nests JSON arrays and objects too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's digit limit
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"{what} must be a JSON object, got {json_type(payload)}")
    return payload


def optional_string(payload: dict[str, Any], name: str) -> str | None:
    """``payload[name]`` when it is a string, None when absent or null; :class:`BadRequest` for any other type."""
    value = payload.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"'{name}' must be a string, got {json_type(value)}")


def prompt_context(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The interactive context of a /predict request (``params.context``), or None for batch pre-annotation.

    A missing, empty or non-object ``params`` or ``context`` means batch pre-annotation, as Label Studio sends it.
    A context that is there must have the shape Label Studio gives it: ``result`` a list of region objects, each
    region's ``value`` an object; anything else is a :class:`BadRequest` naming the field.
    """
    params = payload.get("params")
    context = params.get("context") if isinstance(params, dict) else None
    if not isinstance(context, dict) or not context:
        return None
    regions = context.get("result")
    if regions is None:
        return context
    if not isinstance(regions, list):
        raise BadRequest(f"'params.context.result' must be a list of regions, got {json_type(regions)}")
    for index, region in enumerate(regions):
        if not isinstance(region, dict):
            raise BadRequest(f"'params.context.result[{index}]' must be an object, got {json_type(region)}")
        value = region.get("value")
        if value is not None and not isinstance(value, dict):
            raise BadRequest(f"'params.context.result[{index}].value' must be an object, got {json_type(value)}")
    return context


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type ("an array", "a number", ...), for error messages (the value itself is not
    echoed: it may be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
