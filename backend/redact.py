"""Secrets scrubbed from everything that leaves the process: log lines, HTTP answers, stored job errors and results.

The secrets are the Label Studio API key, the basic-auth password (``Settings.secrets()``) and the short-lived access
tokens a personal access token is exchanged for. They are registered here once per process (by ``create_app``,
``configure_logging`` and the Label Studio client when it gets a new access token), and :func:`scrub` replaces
every registered value, wherever it comes from: an exception message, a Label Studio error page that echoes the
request headers, a traceback.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Iterable

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4  # shorter values would scrub ordinary words; such a secret is too weak to protect anyway

ROTATING_KEPT = 16  # short-lived secrets (access tokens, refreshed every few minutes) remembered, newest last

_lock = threading.Lock()
_static: set[str] = set()
_rotating: list[str] = []
_secrets: tuple[str, ...] = ()  # all of them, longest first, so a secret containing another is replaced whole

# "Authorization: Token abc", "authorization": "Bearer abc", Cookie: ...: header values an echoing error page shows.
_HEADER_VALUE = re.compile(r"""(?i)\b(authorization|proxy-authorization|cookie|x-api-key)(["']?\s*[:=]\s*["']?)"""
                           r"""[^"'\r\n<>]*""")


def register(*values: str | None, rotating: bool = False) -> None:
    """Add secret values (``None``, empty and very short values are ignored). ``rotating`` ones (access tokens,
    replaced every few minutes) are kept only among the last ``ROTATING_KEPT``, so a long-running process does not
    accumulate thousands of them; a scrubbed record never needs an old one again."""
    global _secrets
    fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS}
    if not fresh or fresh.issubset(_secrets):
        return
    with _lock:
        if rotating:
            _rotating.extend(sorted(fresh - _static - set(_rotating)))
            del _rotating[:-ROTATING_KEPT]
        else:
            _static.update(fresh)
        _secrets = tuple(sorted(_static | set(_rotating), key=len, reverse=True))


def registered() -> tuple[str, ...]:
    """The registered secrets, longest first."""
    return _secrets


def scrub(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every registered secret (and each value of ``extra``) replaced by ``[redacted]``."""
    if not isinstance(text, str):
        text = str(text)
    values = _secrets
    more = [v for v in extra if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS]
    if more:
        values = tuple(sorted(set(values) | set(more), key=len, reverse=True))
    for secret in values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub_bytes(data: bytes, extra: Iterable[str | None] = ()) -> bytes:
    """:func:`scrub` for bytes (each secret's UTF-8 form), e.g. a whole response body before it is decoded or cut."""
    values = set(_secrets) | {v for v in extra if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS}
    for secret in sorted(values, key=len, reverse=True):
        encoded = secret.encode()
        if encoded in data:
            data = data.replace(encoded, REDACTED.encode())
    return data


def scrub_headers(text: str) -> str:
    """``text`` with the values of credential headers (Authorization, Cookie, ...) replaced, whatever they are:
    for text from outside (an error page), where a credential might be one this process never registered."""
    return _HEADER_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def scrub_data(value: Any, extra: Iterable[str | None] = ()) -> Any:
    """A JSON-like value (dicts, lists, tuples, strings, numbers) with every string, dict keys included, scrubbed.
    Iterative, so a deeply nested value cannot exhaust the stack."""
    extra = tuple(extra)
    if not _secrets and not extra:
        return value
    root: list[Any] = [value]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while stack:
        parent, slot, item = stack.pop()
        if isinstance(item, str):
            parent[slot] = scrub(item, extra)
        elif isinstance(item, dict):
            copy = {scrub(k, extra) if isinstance(k, str) else k: v for k, v in item.items()}
            parent[slot] = copy
            stack.extend((copy, k, v) for k, v in copy.items())
        elif isinstance(item, (list, tuple)):
            copy_list = list(item)
            parent[slot] = copy_list
            stack.extend((copy_list, i, v) for i, v in enumerate(copy_list))
    return root[0]


def contains_secret(data: bytes | str) -> bool:
    """Whether serialized ``data`` (e.g. an HTTP answer's body) holds a registered secret, as it is or JSON-escaped."""
    values = _secrets
    if not values:
        return False
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    for secret in values:
        if secret.encode() in raw or json.dumps(secret)[1:-1].encode() in raw:
            return True
    return False
