"""Request bodies checked at the HTTP boundary: a size limit (enforced while waitress reads the body, see
:class:`DrainingRequestParser`), the JSON content type, a nesting-depth limit checked before the JSON is parsed, and
type checks of the request-level fields, each failure a :class:`BadRequest` (400) naming the field.

Per-task fields (a task that is not an object, ``data`` that is not an object, a text of the wrong type, too many
or too long texts) are not checked here: they fail that task alone, with ``{"task": id, "error": ...}`` (see
:mod:`backend.predictions`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import RequestEntityTooLarge

from .exceptions import BadRequest, UnsupportedMediaType, json_type

log = logging.getLogger(__name__)

# The largest request body read (a bigger one is answered 413). A /predict of hundreds of tasks with their
# annotations' brush RLEs stays well below it.
MAX_BODY_BYTES = 64 * 2**20
# A body over MAX_BODY_BYTES is still read off the socket and dropped, up to this many bytes, so that a client that
# sends its whole body before reading the answer (requests, hence Label Studio) reads the 413 instead of a
# connection reset. Dropping costs only bandwidth (no memory, disk or worker thread: waitress reads in its event
# loop); four times the limit covers a request sent a few times too big by mistake, and a longer one is answered at
# once and the connection closed.
MAX_DRAIN_BYTES = 4 * MAX_BODY_BYTES
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


def body_too_large(length: int | None) -> str:
    """The 413 message: the body's declared ``length`` (None: unknown, as with a chunked body) and the limit."""
    size = f"{length / 2**20:.1f} MiB ({length} bytes)" if length else "larger than that"
    return (f"the request body is {size}; the limit is {MAX_BODY_BYTES // 2**20} MiB ({MAX_BODY_BYTES} bytes): "
            "send fewer tasks per request")


def with_reason(code: int, message: str) -> str:
    """An HTTP status line's ``"<code> <reason>"`` with ``message`` as the reason phrase: one line of printable
    ASCII (what a reason phrase may hold), at most 300 characters. A client that keeps only the status line
    (requests' ``raise_for_status``, which Label Studio logs) still reads why."""
    reason = " ".join(message.split()).encode("ascii", "replace").decode("ascii")
    return f"{code} {reason[:300]}"


def require_json(is_json: bool, mimetype: str, route: str) -> None:
    """Refuse (:class:`UnsupportedMediaType`, 415) a body not sent as ``application/json`` (or ``+json``) to a route
    that takes JSON: the only types an HTML form on another site can send are refused this way."""
    if not is_json:
        got = mimetype[:100] if mimetype else "no Content-Type"
        raise UnsupportedMediaType(f"{route} takes a JSON object sent as Content-Type: application/json, got {got} "
                                   "(other types are refused so that a form on another site cannot call it)")


class _BodyTooLarge(RequestEntityTooLarge):
    """waitress's 413, answered like the app's own errors: ``{"error": message}``, the message also the reason."""

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        return (with_reason(413, self.body), [("Content-Type", "application/json")],
                json.dumps({"error": self.body}).encode())


class DrainingRequestParser(HTTPRequestParser):
    """waitress's request parser, except that a body over MAX_BODY_BYTES is read and dropped before the 413 goes
    out (in the pieces the socket delivers, never kept), when its declared length is at most MAX_DRAIN_BYTES.

    waitress itself answers 413 as soon as it reads the Content-Length, then closes the connection while the client
    is still sending: the unread bytes make the kernel reset the connection, and a client that sends its whole body
    before reading (requests, so Label Studio) reports "connection reset by peer", never the 413 and its reason.
    A chunked body over the limit, or one declared longer than MAX_DRAIN_BYTES, still gets the 413 at once."""

    draining = 0  # bytes of a refused body still to read and drop
    dropped = 0  # bytes of it read and dropped so far

    def received(self, data: bytes) -> int:
        """Consume the front of ``data`` (waitress's contract); returns how many bytes were consumed."""
        if self.draining:
            taken = min(len(data), self.draining)
            self.draining -= taken
            self.dropped += taken
            if not self.draining:
                self.completed = True  # now the 413 goes out
                log.warning("refused a %d-byte body of %s %s (limit %d bytes); read and dropped it", self.dropped,
                            self.command, self.path, MAX_BODY_BYTES)
            return taken
        consumed = super().received(data)
        if isinstance(self.error, RequestEntityTooLarge) and not isinstance(self.error, _BodyTooLarge):
            declared = None if self.chunked else self.content_length
            self.error = _BodyTooLarge(body_too_large(declared))
            if declared and self.headers_finished and declared <= MAX_DRAIN_BYTES:
                self.completed, self.draining = False, declared
            else:
                log.warning("refused a body of %s %s over %d bytes (declared: %s); closing the connection",
                            self.command, self.path, MAX_BODY_BYTES, declared or "chunked")
        return consumed


class DrainingChannel(HTTPChannel):
    """A waitress connection whose requests are parsed by :class:`DrainingRequestParser`."""

    parser_class = DrainingRequestParser


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
