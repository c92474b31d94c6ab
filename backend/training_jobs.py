"""The old home of the fine-tuning job, kept so that jobs queued before the move still run: do not import it.

Until the backend grouped fine-tuning into :mod:`backend.finetune`, RQ stored every training job as the function
``backend.training_jobs.run_training_job`` and a pickle naming the class ``backend.training_jobs.TrainRequest``. A
worker resolves both by importing this module, so it stays as long as such jobs may still sit in Redis (queued,
scheduled for a retry, or in the failed-job registry to be requeued). Jobs queued now name
``backend.finetune.job`` (RQ records the function's and the class's ``__module__``). New code imports
:mod:`backend.finetune.job`; ``tests/test_architecture.py`` checks that nothing in ``backend/`` imports this module.
"""

from __future__ import annotations

from .finetune.job import TrainRequest, run_training_job

__all__ = ["TrainRequest", "run_training_job"]
