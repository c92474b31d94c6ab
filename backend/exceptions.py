"""Every exception type of the backend, and two helpers for messages: a stored traceback summed up in one line
(:func:`last_line`) and the JSON name of a value's type (:func:`json_type`, for request checks on every layer).

Messages are written for the person who reads them (an annotator in Label Studio, an admin in the log): they say
what is wrong and what to set, and never carry credentials. Errors from below are ``training``'s
(``training/exceptions.py``: ``RegistryError``, ``FinetuneError``, ...) and are not repeated here.
"""

from __future__ import annotations

from typing import Any

from training.exceptions import SettingsError as _TrainingSettingsError


# ---- requests and configuration -------------------------------------------------------------------------------------
class BadRequest(ValueError):
    """A malformed request; answered with 400 and this message."""


class UnsupportedMediaType(BadRequest):
    """A request body not sent as JSON to a route that takes only JSON; answered with 415 and this message. Refusing
    every other type is what keeps an HTML form on another site from calling the route: a form can send only
    urlencoded, multipart and text/plain bodies, and a page's script can send JSON across sites only after a CORS
    preflight, which this server never approves."""


class SettingsError(_TrainingSettingsError):
    """A setting has a value the backend cannot use; the message names the variable. The same kind of error as
    training's (``except training.settings.SettingsError`` catches both), raised for the backend's variables."""


class LabelConfigError(ValueError):
    """The labelling config cannot be served; the message says what is missing."""


class TaskRejected(ValueError):
    """A task that cannot be predicted; the message is returned for that task."""


# ---- images and Label Studio ----------------------------------------------------------------------------------------
class ImageError(Exception):
    """A task's image cannot be used; the message says why (and never contains credentials)."""


class BlockedAddressError(ConnectionError):
    """A connection to a non-public destination was refused by the policy, or could not be made (callers cannot
    tell which, on purpose)."""


class NameLookupTimeout(TimeoutError):
    """Looking up a host name did not finish before the download's deadline (``SAG_FETCH_TIMEOUT``)."""


class LabelStudioError(RuntimeError):
    """A Label Studio API call failed; the message has the URL path and status, never the credentials."""


# ---- jobs -----------------------------------------------------------------------------------------------------------
class TrainingError(RuntimeError):
    """A training job cannot run as configured; the message says what to set."""


class TrainingUnavailable(TrainingError):
    """Fine-tuning cannot be queued as the backend is configured (no Label Studio URL or API key). Answered with an
    error status whose reason phrase is the message: Label Studio shows only that line (it drops the body) when it
    marks the model as failed after "Start Training"."""


class JobFailed(RuntimeError):
    """A job's exception whose message or traceback held a secret, re-raised as ``"<type>: <scrubbed message>"``
    so that what RQ stores in Redis (the job's exc_info, its result stream) holds no secret."""


# ---- messages -------------------------------------------------------------------------------------------------------
def last_line(traceback_text: str | None, default: str = "no details") -> str:
    """The last non-blank line of a traceback (the exception and its message), or ``default`` when there is none."""
    lines = [line for line in (traceback_text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else default


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
