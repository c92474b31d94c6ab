"""Hostile and malformed input: wrongly typed fields are answered 400 naming the field (or fail their task alone),
deeply nested or oversized bodies are refused before they are parsed (an oversized one with a 413 the client can
read, its bytes dropped as they arrive), state-changing routes refuse what a form on another site can send, too many
or too long texts fail their task alone, and no secret reaches an HTTP answer or Redis, even when Label Studio's
error page echoes our request headers."""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import redis
import requests
import torch
from rq import Queue, Worker
from rq.results import Result

from backend import http_input, redact
from backend.app import create_app, make_server
from backend.dispatch import EmbeddedDispatcher
from backend.exceptions import LabelConfigError, LabelStudioError, SettingsError
from backend.http_input import MAX_BODY_BYTES, MAX_DRAIN_BYTES, MAX_JSON_DEPTH, json_too_deep
from backend.keys import TRAINING_QUEUE
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.labeling_config import parse_labeling_config
from backend.logs import RedactSecrets
from backend.settings import Settings
from sag import SaG, tiny_config
from training.registry import Registry

from .conftest import LABEL_CONFIG, png_bytes, wait_for

PROJECT = 7
MARKER = "proxy-debug-page-4f1c"  # text of the echoing error page, to show its excerpt did reach the job error


@pytest.fixture
def model_dir(registry_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session registry with a second version promoted after the first, so a request read
    as "roll back to the previous version" would visibly change the serving version."""
    target = tmp_path / "models"
    shutil.copytree(registry_dir, target)
    registry = Registry(target)
    torch.manual_seed(4321)
    registry.promote(registry.add(SaG(tiny_config()), {"preset": "tiny"}).id)
    return target


def make_client(model_dir: Path, **overrides):
    settings = Settings.from_env({}, model_dir=str(model_dir), device="cpu", allowed_hosts=("127.0.0.1",),
                                 **overrides)
    return create_app(settings).test_client()



# ---- wrongly typed fields -----------------------------------------------------------------------------------------
TASK = {"id": 1, "data": {"image": "http://127.0.0.1:9/x.png", "text": "the cat"}}


def _prompt(value: object) -> dict:
    return {"tasks": [TASK], "label_config": LABEL_CONFIG,
            "params": {"context": {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                                               "value": value}]}}}


BAD_FIELDS = [
    # (route, body, the field the 400 must name)
    ("/setup", {"label_config": 5}, "'label_config' must be a string"),
    ("/setup", {"schema": ["<View/>"]}, "'schema' must be a string"),
    ("/setup", {"label_config": {"xml": "<View/>"}}, "'label_config' must be a string"),
    ("/predict", {"tasks": [TASK], "label_config": 12}, "'label_config' must be a string"),
    ("/predict", {"tasks": [TASK], "schema": [LABEL_CONFIG]}, "'schema' must be a string"),
    ("/predict", {"tasks": [TASK], "label_config": LABEL_CONFIG, "params": {"context": {"result": 5}}},
     "'params.context.result' must be a list"),
    ("/predict", {"tasks": [TASK], "label_config": LABEL_CONFIG, "params": {"context": {"result": "prompt"}}},
     "'params.context.result' must be a list"),
    ("/predict", {"tasks": [TASK], "label_config": LABEL_CONFIG, "params": {"context": {"result": ["x"]}}},
     "'params.context.result[0]' must be an object"),
    ("/predict", _prompt("the cat"), "'params.context.result[0].value' must be an object"),
    ("/predict", _prompt(["the cat"]), "'params.context.result[0].value' must be an object"),
    ("/predict", {"tasks": [TASK], "label_config": LABEL_CONFIG, "project": [7]}, "'project' must be"),
    ("/predict", {"tasks": [TASK], "label_config": LABEL_CONFIG, "project": "-7.1700000000"}, "'project' must be"),
    ("/predict", {"tasks": [TASK], "label_config": LABEL_CONFIG, "project": True}, "'project' must be"),
    ("/predict", {"tasks": [TASK], "label_config": LABEL_CONFIG, "project": 7.5}, "'project' must be"),
    ("/setup", {"label_config": LABEL_CONFIG, "project": {"id": "seven"}}, "'project.id' must be"),
    ("/webhook", {"action": "START_TRAINING", "project": [7]}, "'project' must be"),
    ("/webhook", {"action": "START_TRAINING", "project": {"id": {"id": 7}}}, "'project.id' must be"),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": -3}}, "'project.id' must be"),
    ("/versions/rollback", {"version": 5}, "'version' must be a version id string"),
    ("/versions/rollback", [1], "must be a JSON object"),
    ("/versions/rollback", "20261125T101500Z-3fa2b1c4", "must be a JSON object"),
]


@pytest.mark.parametrize("route,body,message", BAD_FIELDS, ids=[f"{r}:{m}" for r, _, m in BAD_FIELDS])
def test_wrongly_typed_fields_are_answered_400_naming_the_field(model_dir, route, body, message):
    client = make_client(model_dir)
    before = Registry(model_dir).current()
    response = client.post(route, json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert message in response.get_json()["error"]
    # A refused request changes nothing: in particular a malformed rollback body is not read as "the previous one".
    assert Registry(model_dir).current() == before


def test_a_rollback_body_that_is_not_json_rolls_nothing_back(model_dir):
    client = make_client(model_dir)
    before = Registry(model_dir).current()
    broken = client.post("/versions/rollback", data='{"version": ', content_type="application/json")
    assert broken.status_code == 400 and "not valid JSON" in broken.get_json()["error"]
    assert Registry(model_dir).current() == before
    # No version (an empty JSON body, or {}) means the previously promoted version, as documented.
    assert client.post("/versions/rollback", content_type="application/json").get_json()["current"] != before
    assert client.post("/versions/rollback", json={}).get_json()["current"] == before
    # The version as Label Studio shows it names the same one: the session registry's first, untrained, model.
    [first] = [v.id for v in Registry(model_dir).versions() if v.id != before]
    shown = f"{first}+untrained"
    assert client.post("/versions/rollback", json={"version": shown}).get_json() == {"current": first}
    assert client.get("/health").get_json()["model_version"] == shown


# What an HTML form on another site can send: its three encodings, with and without a body (a form with no fields
# sends an empty urlencoded body), and no type at all (a bodiless POST from a script or a link-click tool).
FORM_BODIES = [("application/x-www-form-urlencoded", ""), ("application/x-www-form-urlencoded", "version=x"),
               ("multipart/form-data; boundary=b", '--b\r\nContent-Disposition: form-data; name="v"\r\n\r\nx\r\n--b--'),
               ("text/plain", ""), ("text/plain", '{"version": "x"}'), (None, "")]


@pytest.mark.parametrize("content_type,data", FORM_BODIES, ids=[f"{t}:{len(d)}" for t, d in FORM_BODIES])
def test_state_changing_routes_refuse_what_a_cross_site_form_can_send(model_dir, content_type, data):
    client = make_client(model_dir, label_studio_url="http://127.0.0.1:9", label_studio_api_key="a-key-0123456789")
    before = Registry(model_dir).current()
    for route in ("/versions/rollback", "/training/3", "/webhook", "/predict"):
        response = client.post(route, data=data, content_type=content_type)
        assert response.status_code == 415, (route, response.get_data(as_text=True))
        error = response.get_json()["error"]
        assert f"POST {route} takes a JSON object sent as Content-Type: application/json" in error
        assert (content_type or "no Content-Type").split(";")[0] in error
    assert Registry(model_dir).current() == before  # nothing rolled back
    assert client.get("/training/3").status_code == 404  # nothing queued


def test_state_changing_routes_accept_json_as_scripts_send_it(model_dir):
    # Without Label Studio settings training cannot start: a JSON request reaches that check (503), and changes
    # nothing; with a form it did not get that far (above).
    client = make_client(model_dir)
    for kwargs in ({"json": {}}, {"content_type": "application/json"}):
        response = client.post("/training/3", **kwargs)
        assert response.status_code == 503 and "no LABEL_STUDIO_URL" in response.get_json()["error"]
    registry = Registry(model_dir)
    previous = registry.versions()[0].id
    assert client.post("/versions/rollback", json={"version": previous}).get_json() == {"current": previous}
    assert Registry(model_dir).current() == previous


def test_rollback_errors_name_the_version_not_the_model_directory(model_dir):
    client = make_client(model_dir)
    for version in ("no-such-version", "a\x00b", "x" * 5000):
        response = client.post("/versions/rollback", json={"version": version})
        assert response.status_code == 404
        error = response.get_json()["error"]
        assert "unknown model version" in error or "invalid version id" in error
        assert str(model_dir) not in error and str(model_dir.resolve()) not in error


def test_fields_of_one_task_fail_that_task_alone(model_dir, http_server, photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    client = make_client(model_dir)
    good = {"id": 10, "data": {"image": f"{base}/cat.png", "text": "the cat"}}
    tasks = ["a task", 5, None, [1], {"id": 2, "data": "image"}, {"id": 3, "data": [1]}, {"id": 4},
             {"id": 5, "data": {"image": ["x"], "text": "the cat"}}, {"id": 6, "data": {"image": f"{base}/cat.png",
                                                                                       "text": {"a": 1}}},
             {"id": True, "data": {"image": f"{base}/cat.png"}}, good]
    response = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    expected = ["must be an object, got a string", "must be an object, got a number", "must be an object, got null",
                "must be an object, got an array", "'data' must be an object, got a string",
                "'data' must be an object, got an array", "has no data", "no image in data field 'image'",
                "must be a string or a list of strings", "no referring text"]
    for answer, message in zip(results, expected):
        assert "result" not in answer and message in answer["error"], (message, answer)
    assert [a["task"] for a in results[:10]] == [None, None, None, None, 2, 3, 4, 5, 6, None]  # True is no id
    assert "result" in results[-1] and results[-1]["result"], results[-1]


def test_a_labelling_config_that_is_not_a_string_or_too_long_is_refused_by_the_parser():
    # The parser is also called directly (training jobs): it must refuse, not raise TypeError from its cache.
    for config in ([LABEL_CONFIG], {"a": 1}, 5):
        with pytest.raises(LabelConfigError, match="must be a string"):
            parse_labeling_config(config)  # type: ignore[arg-type]
    with pytest.raises(LabelConfigError, match="the limit is"):
        parse_labeling_config("<View>" + " " * 2**20 + "</View>")


# ---- nesting depth and size ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook", "/versions/rollback"])
def test_json_nested_100000_deep_is_refused_before_parsing(model_dir, route):
    client = make_client(model_dir)
    before = Registry(model_dir).current()
    deep = '{"tasks": ' + "[" * 100_000 + "]" * 100_000 + ', "version": "x"}'
    started = time.monotonic()
    response = client.post(route, data=deep, content_type="application/json")
    elapsed = time.monotonic() - started
    assert response.status_code == 400, response.get_data(as_text=True)
    # The depth check's message, not the parser's: the parser (which would raise RecursionError) never ran.
    assert f"more than {MAX_JSON_DEPTH} levels deep" in response.get_json()["error"]
    assert elapsed < 5, f"{elapsed:.1f} s"  # a linear scan of 200 kB; generous for a shared machine
    assert Registry(model_dir).current() == before


def test_nesting_up_to_the_limit_and_brackets_inside_strings_are_accepted(model_dir, http_server, photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    client = make_client(model_dir)
    # {"tasks": [ {"data": {..., "extra": [[...]]}} ]}: 4 levels around the extra field's arrays.
    extra = json.loads("[" * (MAX_JSON_DEPTH - 4) + "]" * (MAX_JSON_DEPTH - 4))
    text = 'the cat \\" [' + "[{" * 400 + "]" * 10  # brackets, a quote and a backslash inside a string
    task = {"id": 1, "data": {"image": f"{base}/cat.png", "text": text, "extra": extra}}
    response = client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "result" in response.get_json()["results"][0]
    one_more = {**task, "data": {**task["data"], "extra": [extra]}}
    too_deep = client.post("/predict", json={"tasks": [one_more], "label_config": LABEL_CONFIG})
    assert too_deep.status_code == 400 and "levels deep" in too_deep.get_json()["error"]


def test_depth_scan_agrees_with_the_parser_across_chunks(monkeypatch):
    """Random JSON full of brackets, quotes and backslashes inside strings, scanned in 3-byte chunks so every carry
    (depth, open string) between chunks is exercised; the scan must agree with the parsed value's depth."""
    monkeypatch.setattr(http_input, "_CHUNK", 3)
    rng = random.Random(7)
    pieces = ["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", "[[{", "a"]

    def value(depth: int) -> object:
        if depth == 0 or rng.random() < 0.25:
            return rng.choice(["".join(rng.choices(pieces, k=rng.randint(0, 6))), 1, None, True])
        if rng.random() < 0.5:
            return [value(depth - 1) for _ in range(rng.randint(0, 3))]
        return {"".join(rng.choices(pieces, k=3)) + str(i): value(depth - 1) for i in range(rng.randint(0, 3))}

    def nesting(v: object) -> int:
        children = v if isinstance(v, list) else list(v.values()) if isinstance(v, dict) else None
        return 0 if children is None else 1 + max([nesting(c) for c in children], default=0)

    checked = 0
    for _ in range(1500):
        v = value(rng.randint(1, 12))
        raw, depth = json.dumps(v).encode(), nesting(v)
        for limit in {0, max(depth - 1, 0), depth}:
            assert json_too_deep(raw, limit) == (depth > limit), (raw, limit)
            checked += 1
    assert checked > 2000


LIMIT_TEXT = f"the limit is 64 MiB ({MAX_BODY_BYTES} bytes)"


def test_an_oversized_body_is_answered_413_by_the_app(model_dir):
    # Under another WSGI server (or Flask's test client) the app's own check answers, with the same message.
    client = make_client(model_dir)
    response = client.post("/predict", data=b" " * (MAX_BODY_BYTES + 1), content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"] == f"the request body is 64.0 MiB ({MAX_BODY_BYTES + 1} bytes); " \
                                           f"{LIMIT_TEXT}: send fewer tasks per request"
    assert response.status == f"413 {response.get_json()['error']}"
    assert client.get("/health").status_code == 200


@pytest.fixture
def backend_url(model_dir: Path) -> Iterator[str]:
    """sag-backend's own waitress server (make_server, as main() runs it) on a free port, in a thread."""
    settings = Settings.from_env({}, model_dir=str(model_dir), device="cpu", host="127.0.0.1", port=0, threads=2)
    server = make_server(create_app(settings), settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(timeout=10)


def _rss_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _post_raw(url: str, path: str, size: int) -> bytes:
    """POST a ``size``-byte body the way a strict HTTP/1.1 client does: every byte sent (a reset while sending
    fails here), then the answer read to the end. The body goes out as one reused 1 MiB buffer, so this process never
    holds it."""
    host, port = url.removeprefix("http://").split(":")
    piece = memoryview(bytes(2**20))
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        left = size
        while left:
            sock.sendall(piece[:min(left, len(piece))])
            left -= min(left, len(piece))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_70_mb_body_gets_a_413_the_client_reads_and_is_never_held(backend_url, caplog):
    caplog.set_level(logging.WARNING, logger="backend.http_input")
    size = 70 * 2**20
    reason = f"the request body is 70.0 MiB ({size} bytes); {LIMIT_TEXT}: send fewer tasks per request"
    # As Label Studio sends it: requests, with the whole body in memory, reads the answer once it is all sent.
    response = requests.post(f"{backend_url}/predict", data=b" " * size,
                             headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 413 and response.json() == {"error": reason}
    assert response.reason == reason  # what raise_for_status() (and so Label Studio's log) shows
    with pytest.raises(requests.HTTPError, match="413 Client Error: the request body is 70.0 MiB"):
        response.raise_for_status()
    assert requests.get(f"{backend_url}/health", timeout=30).status_code == 200  # the server is still up
    # A client that gives up on a reset while sending (urllib3 2 forgives one and reads on, when the answer
    # arrived before the reset did): the server reads the whole body, so the client sends it all. Meanwhile this
    # process's peak memory (the server's; the client holds 1 MiB) must not grow by the body. /proc/self/clear_refs
    # "5" resets the peak (VmHWM) to the current size (Linux 4.0 and later).
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    answer = _post_raw(backend_url, "/predict", size)
    grown_mib = (_rss_kib("VmHWM") - before) / 1024
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 413 {reason}\r\n".encode()) and json.loads(body) == {"error": reason}
    assert grown_mib < 16, f"peak memory grew by {grown_mib:.0f} MiB while a 70 MiB body was refused"
    # The parser read both bodies to their last byte and dropped them as they came (the log counts the bytes).
    dropped = [r.getMessage() for r in caplog.records if "read and dropped it" in r.getMessage()]
    assert dropped == [f"refused a {size}-byte body of POST /predict (limit {MAX_BODY_BYTES} bytes); read and "
                       "dropped it"] * 2, dropped
    assert requests.post(f"{backend_url}/setup", json={"label_config": LABEL_CONFIG}, timeout=30).status_code == 200


def test_a_body_declared_beyond_the_drain_bound_is_answered_at_once(backend_url):
    # Not read at all: the 413 comes back before a byte of the body is sent.
    host, port = backend_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (MAX_DRAIN_BYTES + 1))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 the request body is 256.0 MiB"), head
    assert json.loads(body) == {"error": f"the request body is 256.0 MiB ({MAX_DRAIN_BYTES + 1} bytes); "
                                         f"{LIMIT_TEXT}: send fewer tasks per request"}
    assert requests.get(f"{backend_url}/health", timeout=30).status_code == 200


# ---- texts per task -----------------------------------------------------------------------------------------------
def test_too_many_or_too_long_texts_fail_their_task_alone(model_dir, http_server, photos):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    image = f"{base}/cat.png"
    client = make_client(model_dir, max_texts_per_task=3, max_text_chars=40)
    tasks = [{"id": 1, "data": {"image": image, "text": ["the cat"] * 4}},
             {"id": 2, "data": {"image": image, "text": "the cat   " * 8}},  # 63 characters once spaces collapse
             {"id": 3, "data": {"image": image, "text": ["the cat", "the ear on the left", "the nose"]}},
             {"id": 4, "data": {"image": image, "text": ["the cat", "x" * 41]}}]
    response = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert results[0] == {"task": 1, "error": "the task has 4 referring texts in data field 'text'; the limit is 3 "
                                              "per task (SAG_MAX_TEXTS_PER_TASK)"}
    assert results[1] == {"task": 2, "error": "the referring text in data field 'text' has 63 characters; the "
                                              "limit is 40 (SAG_MAX_TEXT_CHARS)"}
    assert "SAG_MAX_TEXT_CHARS" in results[3]["error"] and "result" not in results[3]
    # The task within the limits, in the same request, gets its masks: one brush region per text.
    regions = results[2]["result"]
    assert len(regions) == 3 and all(r["type"] == "brushlabels" and r["value"]["rle"] for r in regions), regions
    # A typed prompt (the interactive context) is held to the same limit.
    prompt = {"tasks": [tasks[2]], "label_config": LABEL_CONFIG,
              "params": {"context": {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                                                 "value": {"text": ["the cat"] * 4}}]}}}
    [answer] = client.post("/predict", json=prompt).get_json()["results"]
    assert answer == {"task": 3, "error": "the task has 4 referring texts in prompt <prompt>; the limit is 3 per "
                                          "task (SAG_MAX_TEXTS_PER_TASK)"}


def test_text_limits_are_settings_with_defaults():
    defaults = Settings.from_env({})
    assert (defaults.max_texts_per_task, defaults.max_text_chars) == (32, 1000)
    read = Settings.from_env({"SAG_MAX_TEXTS_PER_TASK": "5", "SAG_MAX_TEXT_CHARS": "200"})
    assert (read.max_texts_per_task, read.max_text_chars) == (5, 200)
    for value in ("0", "-1", "many"):
        with pytest.raises(SettingsError, match="SAG_MAX_TEXTS_PER_TASK"):
            Settings.from_env({"SAG_MAX_TEXTS_PER_TASK": value})


def test_unknown_job_ids_of_any_shape_are_404_in_redis_mode(redis_url, model_dir):
    client = make_client(model_dir, redis_url=redis_url)
    # RQ refuses ids outside [A-Za-z0-9_-] with ValueError; the route must say "unknown", not 500.
    for job_id in ("no-such-job", "bad%20id", "a:b", "%00x", "x" * 300):
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 404, (job_id, response.get_data(as_text=True))


# ---- secrets in answers -------------------------------------------------------------------------------------------
def _jwt(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{uuid.uuid4().hex}"


class EchoingLabelStudio:
    """Label Studio behind a proxy whose error page echoes the request it got, headers first, as debugging proxies
    do: every /api/ call answers 502 with that page, except the personal-access-token refresh, which answers an
    access token (itself then echoed)."""

    def __init__(self) -> None:
        self.access = _jwt({"token_type": "access", "exp": time.time() + 300, "jti": uuid.uuid4().hex})
        self.authorizations: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.authorizations.append(self.headers.get("Authorization", ""))
                if self.path == "/api/token/refresh/":
                    body, status, ctype = json.dumps({"access": outer.access}).encode(), 200, "application/json"
                else:
                    headers = sorted(self.headers.items(), key=lambda kv: kv[0].lower() != "authorization")
                    echo = "".join(f"{name}: {value}\n" for name, value in headers)
                    body = (f"<html><body><h1>502 Bad Gateway</h1><p>{MARKER}</p><pre>{echo}{self.command} "
                            f"{self.path}</pre></body></html>").encode()
                    status, ctype = 502, "text/html"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echoing_ls() -> Iterator[EchoingLabelStudio]:
    server = EchoingLabelStudio()
    try:
        yield server
    finally:
        server.close()


def legacy_key() -> str:
    return f"legacy-{uuid.uuid4().hex}"


def personal_access_token() -> str:
    return _jwt({"token_type": "refresh", "exp": time.time() + 3600, "jti": uuid.uuid4().hex})


def _leaks(text: str, secret: str) -> bool:
    """Whether ``text`` holds ``secret`` or any 8-character-or-longer piece of its start (a cut-off secret)."""
    return any(secret[:n] in text for n in range(8, len(secret) + 1))


@pytest.mark.parametrize("make_key", [legacy_key, personal_access_token], ids=["legacy-token", "personal-token"])
def test_an_echoing_error_page_never_puts_the_key_in_the_error(echoing_ls, make_key):
    key = make_key()
    client = LabelStudioClient(echoing_ls.url, key)
    with pytest.raises(LabelStudioError) as raised:
        client.project(PROJECT)
    message = str(raised.value)
    sent = echoing_ls.authorizations[-1]
    assert key in sent or echoing_ls.access in sent  # the page did echo a credential
    assert "HTTP 502" in message and MARKER in message and redact.REDACTED in message
    assert not _leaks(message, key) and not _leaks(message, echoing_ls.access)
    assert len(message) < 400


@pytest.mark.parametrize("make_key", [legacy_key, personal_access_token], ids=["legacy-token", "personal-token"])
def test_embedded_training_error_from_an_echoing_page_shows_no_secret(model_dir, echoing_ls, make_key):
    key = make_key()
    client = make_client(model_dir, label_studio_url=echoing_ls.url, label_studio_api_key=key)
    started = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
    assert started.status_code == 201, started.get_data(as_text=True)
    job_id = started.get_json()["result"]["job_id"]
    info = wait_for(lambda: (i := client.get(f"/jobs/{job_id}").get_json()).get("state") == "failed" and i, 60,
                    "the training job to fail")
    assert "HTTP 502" in info["error"] and MARKER in info["error"], info
    answers = [client.get(f"/jobs/{job_id}").get_data(as_text=True),
               client.get(f"/training/{PROJECT}").get_data(as_text=True)]
    assert any(key in a or echoing_ls.access in a for a in echoing_ls.authorizations)
    for answer in answers:
        assert not _leaks(answer, key) and not _leaks(answer, echoing_ls.access), answer


def test_a_secret_in_any_answer_is_scrubbed(model_dir):
    """The last line of defence: whatever puts a secret into an answer (here an exception message in a 500), the
    answer goes out without it, in its JSON-escaped form too."""
    password = 'pa55"w\\ord-' + uuid.uuid4().hex[:8]  # JSON escapes its quote and backslash

    class FailingDispatcher(EmbeddedDispatcher):
        def stats(self):  # type: ignore[override]
            raise RuntimeError(f"queue unreachable with password {password}")

    settings = Settings.from_env({}, model_dir=str(model_dir), device="cpu", basic_auth_user="ls",
                                 basic_auth_pass=password)
    client = create_app(settings, dispatcher=FailingDispatcher()).test_client()
    response = client.get("/metrics", auth=("ls", password))
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert password not in body and json.dumps(password)[1:-1] not in body
    assert response.get_json()["error"] == f"RuntimeError: queue unreachable with password {redact.REDACTED}"


def test_log_records_are_scrubbed_of_registered_access_tokens(echoing_ls):
    key = personal_access_token()
    client = LabelStudioClient(echoing_ls.url, key)
    client.auth_headers()  # exchanges the personal token for an access token, which registers it
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "token %s", (echoing_ls.access,), None)
    RedactSecrets([]).filter(record)
    assert record.getMessage() == f"token {redact.REDACTED}"


# ---- secrets in Redis ---------------------------------------------------------------------------------------------
def redis_contents(url: str) -> list[bytes]:
    """Every key and stored value of the database, each also zlib-decompressed and base64-decoded where it can be
    (RQ compresses exc_info and encodes results that way; pickled strings are plain UTF-8)."""
    conn = redis.Redis.from_url(url)
    values: list[bytes] = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            found = [conn.get(key)]
        elif kind == "hash":
            found = [b for pair in conn.hgetall(key).items() for b in pair]
        elif kind == "list":
            found = conn.lrange(key, 0, -1)
        elif kind == "set":
            found = list(conn.smembers(key))
        elif kind == "zset":
            found = conn.zrange(key, 0, -1)
        elif kind == "stream":
            found = [b for _, fields in conn.xrange(key) for pair in fields.items() for b in pair]
        else:
            found = []
        values.append(key)
        values.extend(v for v in found if v)
    decoded = []
    for value in values:
        decoded.append(value)
        for decode in (zlib.decompress, base64.b64decode, lambda v: zlib.decompress(base64.b64decode(v))):
            try:
                decoded.append(decode(value))
            except Exception:  # not in that encoding
                pass
    return decoded


def test_redis_training_error_from_an_echoing_page_reaches_neither_answers_nor_redis(
        redis_url, model_dir, echoing_ls, tmp_path):
    key = legacy_key()
    log_path = tmp_path / "trainer.log"
    env = {**os.environ, "REDIS_URL": redis_url, "SAG_MODEL_DIR": str(model_dir), "SAG_DEVICE": "cpu",
           "SAG_WORKER_HEARTBEAT": "1", "HF_HUB_OFFLINE": "1", "LABEL_STUDIO_URL": echoing_ls.url,
           "LABEL_STUDIO_API_KEY": key, "LOG_LEVEL": "INFO"}
    with open(log_path, "w") as log_file:
        trainer = subprocess.Popen([sys.executable, "-m", "backend.worker", "--queues", "training", "--name",
                                    f"echo-trainer-{os.getpid()}"], env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        queue = Queue(TRAINING_QUEUE, connection=redis.Redis.from_url(redis_url))
        wait_for(lambda: trainer.poll() is not None or Worker.count(queue=queue) >= 1, 120, "the trainer")
        assert trainer.poll() is None, log_path.read_text()[-3000:]
        client = make_client(model_dir, redis_url=redis_url, label_studio_url=echoing_ls.url,
                             label_studio_api_key=key)
        started = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
        job_id = started.get_json()["result"]["job_id"]
        # Three attempts (RQ retries a failed training job twice), each refused by the echoing page.
        info = wait_for(lambda: (i := client.get(f"/jobs/{job_id}").get_json()).get("state") == "failed" and i,
                        120, "the training job to fail")
    finally:
        trainer.kill()
        trainer.wait(timeout=30)
    assert any(key in a for a in echoing_ls.authorizations)  # the key was sent, and echoed
    for answer in (client.get(f"/jobs/{job_id}").get_data(as_text=True),
                   client.get(f"/training/{PROJECT}").get_data(as_text=True)):
        assert not _leaks(answer, key), answer
    stored = redis_contents(redis_url)
    assert any(MARKER.encode() in value for value in stored), "the job's error should be stored (and found) in Redis"
    leaked = [value[:300] for value in stored if any(key[:n].encode() in value for n in range(8, len(key) + 1))]
    assert not leaked, leaked
    assert key not in log_path.read_text()
    assert "HTTP 502" in info["error"] and MARKER in info["error"], info  # one line, saying what went wrong


def test_a_failed_jobs_stored_traceback_is_scrubbed_by_the_worker(redis_url):
    """Whatever a job raises, the traceback RQ stores (failed-job registry, result stream) holds no secret."""
    from backend.worker import SaGWorker

    secret = f"sk-{uuid.uuid4().hex}"
    redact.register(secret)
    conn = redis.Redis.from_url(redis_url)
    queue = Queue(f"sag:test-scrub-{uuid.uuid4().hex[:8]}", connection=conn)
    job = queue.enqueue("ipaddress.ip_address", secret)  # ValueError: 'sk-...' does not appear to be an IP address
    worker = SaGWorker([queue], connection=conn, job_monitoring_interval=1)
    worker.work(burst=True)
    result = job.latest_result()
    assert result is not None and result.type == result.Type.FAILED
    assert "ValueError" in result.exc_string and redact.REDACTED in result.exc_string
    # Read back from Redis as RQ stores them (the job's own hash also holds its argument, the secret, by this test's
    # construction, so the whole database cannot be scanned here).
    stored = [r.exc_string for r in Result.all(job, serializer=job.serializer)]
    assert stored and not any(secret in text for text in stored), stored
