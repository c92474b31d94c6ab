"""The HTTP side of the ML backend protocol: /health, /setup, /predict, /webhook, /metrics (and /jobs/<id>).

Served by waitress, a production WSGI server (threads, no debugger). ``sag-backend`` runs it.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import sys
import time
from typing import Any

from flask import Flask, Response, jsonify, request
from redis.exceptions import RedisError
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import redact
from .dispatch import Dispatcher, EmbeddedDispatcher, RQDispatcher
from .exceptions import BadRequest, LabelConfigError, SettingsError, TrainingUnavailable, UnsupportedMediaType
from .finetune.routes import training_blueprint
from .finetune.service import TrainingService
from .http_input import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    DrainingChannel,
    body_too_large,
    json_too_deep,
    optional_string,
    parse_json_object,
    prompt_context,
    require_json,
    with_reason,
)
from .jobs import worker_stats
from .logs import configure_logging
from .model import TRAIN_EVENTS, SaGModel, project_id_of
from .predictions import PredictionService
from .runtime import Runtime, set_runtime
from .settings import Settings
from .versions import served_summary, served_version

log = logging.getLogger(__name__)


def create_app(settings: Settings, dispatcher: Dispatcher | None = None, runtime: Runtime | None = None) -> Flask:
    """The Flask app. Embedded mode (no REDIS_URL) runs jobs in a thread of this process and loads the model here.

    The services are built here, once (label-studio-ml's ``init_app(model_class=...)`` wiring), and passed to the
    routes and to each request's :class:`~backend.model.SaGModel`: the runtime (``runtime``, else one from
    ``settings``; also installed as this process's runtime for the job functions, see :mod:`backend.runtime`), the
    inference ``dispatcher`` (default: threads of this process in embedded mode, else the ``sag:inference`` queue),
    the prediction service and the training service."""
    runtime = set_runtime(runtime or Runtime(settings))
    if dispatcher is None:
        dispatcher = EmbeddedDispatcher() if settings.embedded else RQDispatcher(runtime.redis, settings)
    predictions = PredictionService(runtime, dispatcher)
    training = TrainingService(runtime, predictions)
    redact.register(*settings.secrets())  # scrubbed from every answer (scrub_answer below) and job record
    app = Flask("sag-backend")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # a longer body is answered 413 before it is read
    app.json.sort_keys = False
    started = time.time()

    def model_for(payload: dict[str, Any]) -> SaGModel:
        config = optional_string(payload, "label_config") or optional_string(payload, "schema")
        return SaGModel(runtime, predictions, training, project_id_of(payload.get("project")), config)

    def body() -> dict[str, Any]:
        """The request's JSON object (size and depth were checked by check_body before anything parsed it)."""
        require_json(request.is_json, request.mimetype, f"{request.method} {request.path}")
        return parse_json_object(request.get_data(cache=True))

    @app.before_request
    def check_basic_auth() -> Response | None:
        if not settings.basic_auth_user:
            return None
        auth = request.authorization
        ok = (auth is not None and auth.type == "basic"
              and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
              and hmac.compare_digest((auth.password or "").encode(), (settings.basic_auth_pass or "").encode()))
        if ok:
            return None
        response = jsonify(error="authentication required")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="sag-backend"'
        return response

    @app.before_request
    def check_body() -> None:
        """Every route: a body over MAX_BODY_BYTES is refused (413) while it is read, and JSON nested deeper than
        MAX_JSON_DEPTH (400) before any parser sees it, so no route (nor Flask's get_json) can hit RecursionError."""
        raw = request.get_data(cache=True)
        if raw and request.is_json and json_too_deep(raw):
            raise BadRequest(f"the request body nests JSON arrays and objects more than {MAX_JSON_DEPTH} levels deep")

    @app.get("/")
    @app.get("/health")
    def health() -> tuple[Response, int]:
        info: dict[str, Any] = {"status": "UP", "model_class": SaGModel.__name__,
                                "mode": "embedded" if settings.embedded else "redis"}
        try:
            # model_version with "+untrained" etc. for placeholders; figures: last measured, or "not measured"
            info.update(served_summary(runtime.registry))
            info["workers"] = dispatcher.workers()
        except RedisError as exc:
            return jsonify(status="DOWN", detail=f"Redis is unreachable: {type(exc).__name__}"), 503
        return jsonify(info), 200

    @app.post("/setup")
    def setup() -> tuple[Response, int]:
        try:
            return jsonify(model_for(body()).setup()), 200
        except LabelConfigError as exc:
            log.error("setup refused: %s", exc)
            return jsonify(error=str(exc)), 400

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        payload = body()
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("the request needs a 'tasks' list")
        context = prompt_context(payload)  # None: batch pre-annotation
        return jsonify(model_for(payload).predict(tasks, context=context)), 200

    @app.post("/webhook")
    def webhook() -> tuple[Response, int]:
        payload = body()
        event = payload.get("action")
        if event not in TRAIN_EVENTS:
            return jsonify(status="Unknown event"), 200
        model = SaGModel(runtime, predictions, training, project_id_of(payload.get("project")))
        return jsonify(result=model.fit(event, payload), status="ok"), 201

    @app.get("/metrics")
    def metrics() -> tuple[Response, int]:
        data: dict[str, Any] = {"uptime_s": round(time.time() - started, 1), "queue": dispatcher.stats(),
                                "model_version": served_version(runtime.registry)}
        if settings.embedded:
            data["predictor"] = runtime.predictor.stats()
        else:
            data["workers"] = worker_stats(runtime)
        return jsonify(data), 200

    @app.get("/jobs/<batch_id>")
    def job_status(batch_id: str) -> tuple[Response, int]:
        info = runtime.batches.get(batch_id) or training.get(batch_id)
        if info is None:
            return jsonify(error=f"no batch or training job {batch_id!r} (unknown or expired)"), 404
        return jsonify(info), 200

    app.register_blueprint(training_blueprint(runtime, training))

    @app.after_request
    def scrub_answer(response: Response) -> Response:
        """No answer carries a secret (API key, basic-auth password, Label Studio access token), whatever put it
        there: a Label Studio error page echoing our request headers inside a job error, an exception message."""
        if response.direct_passthrough or response.is_streamed:
            return response
        data = response.get_data()
        if not redact.contains_secret(data):
            return response
        log.warning("a secret was scrubbed from the answer to %s %s", request.method, request.path)
        if response.is_json:
            response.set_data(app.json.dumps(redact.scrub_data(app.json.loads(data))))
        else:
            response.set_data(redact.scrub(data.decode("utf-8", "replace")))
        return response

    @app.errorhandler(BadRequest)
    def bad_request(exc: "BadRequest") -> tuple[Response, int]:
        return jsonify(error=str(exc)), 400

    @app.errorhandler(UnsupportedMediaType)
    def not_json(exc: UnsupportedMediaType) -> tuple[Response, int]:
        return jsonify(error=str(exc)), 415

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        # Under waitress a longer body never reaches the app (DrainingRequestParser answers it, with this same
        # message); this one answers other WSGI servers and the test client.
        message = body_too_large(request.content_length)
        response = jsonify(error=message)
        response.status = with_reason(413, message)
        return response

    @app.errorhandler(TrainingUnavailable)
    def training_unavailable(exc: TrainingUnavailable) -> Response:
        # Start Training (/webhook) and POST /training/<project>. Label Studio keeps only the status line of a
        # failed /webhook call (requests' HTTPError: "503 Server Error: <reason> for url: ..."), sets the model's
        # state to Error and stores that line as its error_message; so the reason phrase carries the message.
        response = jsonify(status="error", error=str(exc))
        response.status = with_reason(503, str(exc))
        return response

    @app.errorhandler(RedisError)
    def redis_down(exc: RedisError) -> tuple[Response, int]:
        # Any route that needs Redis (/predict, /setup, /metrics, /jobs, /webhook, /training): 503, not a 500 with a
        # traceback; the connection pool reconnects on the next request once Redis is back.
        log.warning("Redis is unreachable on %s %s: %s", request.method, request.path, type(exc).__name__)
        return jsonify(status="DOWN", error=f"Redis is unreachable ({type(exc).__name__}): jobs cannot be queued "
                                            "or tracked until it is back; retry later"), 503

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description), exc.code or 500

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(status="error", error=f"{type(exc).__name__}: {exc}"), 500

    return app


def make_server(app: Flask, settings: Settings) -> BaseWSGIServer | MultiSocketServer:
    """The waitress server ``sag-backend`` runs (``.run()`` serves until closed) on ``settings.host`` and
    ``settings.port`` (0: a free port, see ``.effective_port``), with ``settings.threads`` threads.

    waitress reads a whole body before the app sees it: its limit is the app's (a body of more than MAX_BODY_BYTES
    is refused; its default is 1 GiB), and its connections drop an over-limit body before answering 413
    (:class:`~backend.http_input.DrainingRequestParser`), so that the client reads the answer."""
    listeners: dict = {}
    server = create_server(app, map=listeners, host=settings.host, port=settings.port, threads=settings.threads,
                           ident="sag-backend", max_request_body_size=MAX_BODY_BYTES + 1)  # refused from limit + 1
    for listener in listeners.values():  # one per listening socket (the map also holds waitress's trigger)
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = DrainingChannel
    return server


def main(argv: list[str] | None = None) -> int:
    """``sag-backend``: serve the Label Studio ML backend."""
    parser = argparse.ArgumentParser(prog="sag-backend", description=main.__doc__)
    parser.add_argument("--host", help="bind address (HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (PORT, default 9090)")
    parser.add_argument("--threads", type=int, help="HTTP threads (SAG_THREADS, default 8)")
    parser.add_argument("--model-dir", dest="model_dir", help="checkpoint registry (SAG_MODEL_DIR, default ./models)")
    parser.add_argument("--device", help="cpu, cuda or auto (SAG_DEVICE)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(**{k: v for k, v in vars(args).items() if v is not None})
    except SettingsError as exc:
        print(f"sag-backend: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.secrets())
    runtime = Runtime(settings)
    app = create_app(settings, runtime=runtime)
    version = runtime.ensure_serving_version()
    if settings.embedded:
        runtime.predictor.ensure_model()  # load now, not on the first request
        log.info("embedded mode: jobs run in this process (set REDIS_URL to use sag-worker processes)")
    else:
        log.info("redis mode: jobs go to %s; %d worker(s) listening", settings.redis_url.split("@")[-1],
                 runtime.redis and RQDispatcher(runtime.redis, settings).workers())
    log.info("sag-backend serving version %s on http://%s:%d", version, settings.host, settings.port)
    make_server(app, settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
