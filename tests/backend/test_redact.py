"""Secret scrubbing (backend/redact.py): whole secrets replaced wherever they stand, nested data and bytes included,
credential headers blanked, and only the newest rotating access tokens kept. What reaches answers, logs and Redis
through the app, the client and the worker: test_hostile_input.py."""

from __future__ import annotations

import uuid

from backend import redact


def test_scrubbing_replaces_whole_secrets_everywhere_and_keeps_few_rotating_ones():
    long_secret = f"outer-{uuid.uuid4().hex}-inner"
    inner = long_secret[6:38]  # a registered secret inside another: the longer one is replaced whole
    redact.register(long_secret, inner)
    assert redact.scrub(f"a {long_secret} b {inner}") == f"a {redact.REDACTED} b {redact.REDACTED}"
    # Nested data, keys included, and no recursion: a 100,000-deep value is scrubbed too.
    deep: object = {long_secret: [inner]}
    for _ in range(100_000):
        deep = [deep]
    scrubbed = redact.scrub_data(deep)
    for _ in range(100_000):
        scrubbed = scrubbed[0]
    assert scrubbed == {redact.REDACTED: [redact.REDACTED]}
    assert redact.scrub_bytes(f"x{inner}y".encode()) == f"x{redact.REDACTED}y".encode()
    # Credential headers on a page from outside are blanked whatever their value.
    page = 'Authorization: Token unregistered-value\n"cookie": "sessionid=abc"\nHost: ls'
    assert redact.scrub_headers(page) == f'Authorization: {redact.REDACTED}\n"cookie": "{redact.REDACTED}"\nHost: ls'
    # Access tokens rotate every few minutes: only the newest ROTATING_KEPT are kept, the static ones stay.
    tokens = [f"access-{i}-{uuid.uuid4().hex}" for i in range(redact.ROTATING_KEPT + 5)]
    for token in tokens:
        redact.register(token, rotating=True)
    kept = set(redact.registered())
    assert set(tokens[-redact.ROTATING_KEPT:]) <= kept and not set(tokens[:5]) & kept
    assert long_secret in kept and inner in kept
