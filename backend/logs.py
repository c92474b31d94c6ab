"""Logging for the backend and workers, with secrets (API key, basic-auth password, Label Studio access tokens)
scrubbed from every record by the same function that scrubs HTTP answers and stored job errors
(:func:`backend.redact.scrub`)."""

from __future__ import annotations

import logging
from typing import Iterable

from . import redact
from .redact import REDACTED

__all__ = ["REDACTED", "RedactSecrets", "configure_logging"]


class RedactSecrets(logging.Filter):
    """Replaces secret values in a record's final message, arguments and traceback text included: the ``secrets``
    given here and every secret registered in :mod:`backend.redact` (access tokens are registered as they come)."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= redact.MIN_SECRET_CHARS]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets and not redact.registered():
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact.scrub(message, self.secrets), None
        if record.exc_text:
            record.exc_text = redact.scrub(record.exc_text, self.secrets)
        return True


def configure_logging(level: str, secrets: Iterable[str]) -> None:
    """Log to stderr at ``level``; every handler redacts ``secrets`` (which are registered for
    :func:`backend.redact.scrub` too, so this process's answers and job records are scrubbed of them)."""
    secrets = list(secrets)
    redact.register(*secrets)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
                        force=True)
    redact_filter = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact_filter)
