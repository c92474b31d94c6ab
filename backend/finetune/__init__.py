"""Fine-tuning from Label Studio: what queues a training, the queues, the job, and what follows a promotion.

It sits above the serving path: a job pulls the project through :mod:`backend.labelstudio`, reads images with
:mod:`backend.images`, fine-tunes with :mod:`training.finetune`, and re-predicts stale pre-labels through
:mod:`backend.predictions`. Only the top of the backend reaches in: :mod:`backend.app` registers the routes and builds
the :class:`~backend.finetune.service.TrainingService` that :class:`backend.model.SaGModel` hands webhook events to
(``tests/test_architecture.py`` checks this direction). Modules, from the top down:

    routes            /training/<project>, /versions, /versions/rollback
    service           what queues fine-tuning: Start Training, POST /training, the periodic annotation trigger
    queues            fine-tuning jobs on RQ (``sag:training``) or in background threads (embedded mode)
    job               the job body and its RQ job function (pull the project, fine-tune, promote)
    prelabel_refresh  after a promotion, re-predict the untouched tasks pre-labelled by older versions

Jobs queued before this package existed name ``backend.training_jobs``, which stays importable for them.
"""
