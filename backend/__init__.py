"""The Label Studio ML backend: the HTTP protocol, RQ jobs and workers, image fetching, the Label Studio API client.

Imports point down only (``backend -> training -> sag``), and inside ``backend`` too, through six layers from the
top (entry points) down; a module imports only from its own layer and those below it (``tests/test_architecture.py``
checks both rules):

  entry points: the processes and the Label Studio protocol
    app               ``sag-backend``: routes /health /setup /predict /webhook /metrics /jobs/<id>; builds the services
    worker            ``sag-worker``: an RQ worker that keeps SaG loaded; heartbeats, surviving Redis outages
    model             ``SaGModel``: label-studio-ml's setup / predict / fit contract, one instance per request
    training_jobs     the fine-tuning job's old path, kept for jobs queued before ``finetune/`` existed

  finetune/: fine-tuning from Label Studio (its own module map: routes, service, queues, job, prelabel_refresh)

  the HTTP boundary
    http_input        request bodies: size and depth limits, field type checks

  the serving path: tasks -> prediction jobs -> workers -> regions
    predictions       tasks -> predictions: check tasks, cut them into jobs, dispatch, collect one answer per task
    dispatch          run prediction jobs on RQ workers (``sag:inference``) or in threads of this process
    jobs              the prediction job: what is queued, the function a worker runs, write-back to Label Studio
    liveness          which RQ workers are alive: heartbeat periods, the window after which a silent one is dead
    runtime           one process's long-lived objects (registry, clients, predictor); the job functions' lookup
    predictor         the model in a worker: loads the serving version, entity cache, batched inference -> regions
    batches           progress of bulk batches and per-task claims (Redis, or memory in embedded mode)
    presets           initial model presets: the first version on an empty registry (``SAG_INIT_PRESET``)
    images            task images: what an image reference means, size limits, decoding
    transport         the SSRF-guarded HTTP transport images are downloaded through (address checks, deadlines)

  labelstudio/: Label Studio's API client, labelling configs, label words, result encoding (its own module map)

  the foundation, which every layer may use
    versions          the model_version Label Studio sees: the registry id, marked +untrained / +unchecked
    cache             byte-bounded LRU caches (the entity cache, training image bytes)
    logs              logging set-up with secrets scrubbed
    redact            secrets scrubbed from logs, answers and stored job records
    settings          every setting, read from the environment (and CLI flags) in one place
    keys              RQ queue names, Redis keys and their TTLs, the job status URL
    exceptions        every exception type of the backend; the last line of a stored traceback; JSON type names
"""
