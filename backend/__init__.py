"""The Label Studio ML backend: the HTTP protocol, RQ jobs and workers, image fetching, the Label Studio API client.

Imports point down only (``backend -> training -> sag``). Modules, roughly from the top (entry points) down:

    app               ``sag-backend``: routes /health /setup /predict /webhook /metrics /jobs/<id>; builds the services
    worker            ``sag-worker``: an RQ worker that keeps SaG loaded; heartbeats, liveness, surviving Redis outages
    training_routes   /training/<project>, /versions, /versions/rollback
    model             ``SaGModel``: label-studio-ml's setup / predict / fit contract, one instance per request
    training_service  what queues fine-tuning: Start Training, POST /training, the periodic annotation trigger
    training_queues   fine-tuning jobs on RQ (``sag:training``) or in background threads (embedded mode)
    training_jobs     the fine-tuning job body and its RQ job function (pull the project, fine-tune, promote)
    prelabel_refresh  after a promotion, re-predict the untouched tasks pre-labelled by older versions
    predictions       tasks -> predictions: check tasks, cut them into jobs, dispatch, collect one answer per task
    dispatch          run prediction jobs on RQ workers (``sag:inference``) or in threads of this process
    jobs              the prediction job: what is queued, the function a worker runs, write-back to Label Studio
    runtime           one process's long-lived objects (registry, clients, predictor); the job functions' lookup
    predictor         the model in a worker: loads the serving version, entity cache, batched inference -> regions
    batches           progress of bulk batches and per-task claims (Redis, or memory in embedded mode)
    presets           initial model presets: the first version on an empty registry (``SAG_INIT_PRESET``)
    images            fetching task images safely (SSRF guard, deadlines, size limits) and decoding them
    ls_client         the Label Studio API client: auth, export, predictions, exactly-once import
    labeling_config   what the backend needs from a labelling config, with an error naming what is missing
    results           brush RLE and polygon regions from masks; prediction records for import
    versions          the model_version Label Studio sees: the registry id, marked +untrained / +unchecked
    http_input        request bodies at the HTTP boundary: size and depth limits, field type checks
    cache             byte-bounded LRU caches (the entity cache, training image bytes)
    logs              logging set-up with secrets scrubbed
    redact            secrets scrubbed from logs, answers and stored job records
    settings          every setting, read from the environment (and CLI flags) in one place
    keys              RQ queue names, Redis keys and their TTLs, the job status URL
    exceptions        every exception type of the backend; the last line of a stored traceback
"""
