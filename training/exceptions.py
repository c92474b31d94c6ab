"""Every exception type of ``training``, in one place (the modules that raise them re-export their own).

Messages are written for the person who reads them (a user at a command line, an admin reading a Label Studio job
result): they say what is wrong and what to do. The backend's errors are in ``backend/exceptions.py``.
"""

from __future__ import annotations


class SettingsError(ValueError):
    """A setting has a value training cannot use; the message names the variable (``training/settings.py``)."""


class DatasetError(ValueError):
    """A data set is missing files or has malformed annotations; the message names the file and the record."""


class CheckpointError(Exception):
    """A source that cannot be imported or a destination that cannot be written; the message says why."""


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why."""


class FinetuneError(RuntimeError):
    """Fine-tuning cannot start or finish; the message says why and what to do."""


class BenchmarkDataError(DatasetError):
    """A benchmark's data (the real-photo texts file, a photo archive) is missing or not what it should be."""
