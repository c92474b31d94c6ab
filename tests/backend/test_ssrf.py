"""SSRF and slow-server defences of backend/transport.py (driven through backend/images.py's fetcher) and the
embedded dispatcher, against real local sockets: destinations (scheme, address, port) instead of host names,
SAG_ALLOWED_HOSTS syntax, uniform errors, the download deadline against trickling http and https servers and a
resolver that does not answer, and a stuck download not holding the embedded job slots."""

from __future__ import annotations

import errno
import itertools
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import Future
from typing import Iterator

import pytest

from backend import transport
from backend.app import create_app
from backend.dispatch import EmbeddedDispatcher
from backend.exceptions import ImageError, SettingsError
from backend.images import ImageFetcher
from backend.labelstudio.client import LabelStudioClient
from backend.settings import Settings, parse_allowed_hosts
from backend.transport import LOOKUP_THREADS, AddressPolicy

from .conftest import LABEL_CONFIG, png_bytes


def _fetcher(label_studio: str | None = None, env: dict[str, str] | None = None, **overrides) -> ImageFetcher:
    settings = Settings.from_env(env or {}, **overrides)
    return ImageFetcher(settings, LabelStudioClient(label_studio, "token") if label_studio else None)


class Canary:
    """A real TCP listener that never accepts on its own: every connection made to it waits in its backlog, so
    :meth:`connections` sees each one, even one closed at once, without any timing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> list[tuple[str, int]]:
        peers = []
        while True:
            try:
                conn, peer = self.sock.accept()
            except BlockingIOError:
                return peers
            conn.close()
            peers.append(peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    listener = Canary()
    try:
        yield listener
    finally:
        listener.close()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- destinations ------------------------------------------------------------------------------------------------
def test_loopback_aliases_other_ports_and_redirects_never_reach_a_canary(http_server, photos, canary):
    base, served = http_server
    ls_port = int(base.rsplit(":", 1)[1])
    q = canary.port
    served.files["/data/upload/1/a.png"] = (png_bytes(photos["coffee"]), "image/png")
    served.redirects["/to-canary"] = f"http://127.0.0.1:{q}/x.png"
    served.redirects["/to-canary-by-name"] = f"http://localhost:{q}/x.png"
    fetcher = _fetcher(base)  # Label Studio at http://127.0.0.1:<ls_port>
    attempts = [
        f"http://127.0.0.1:{q}/x.png",
        f"https://127.0.0.1:{q}/x.png",
        f"http://localhost:{q}/x.png",
        f"http://127.1:{q}/x.png",
        f"http://2130706433:{q}/x.png",
        f"http://0x7f000001:{q}/x.png",
        f"http://[::ffff:127.0.0.1]:{q}/x.png",
        f"http://0.0.0.0:{q}/x.png",  # Linux connects these two to the local host
        f"http://[::]:{q}/x.png",
        f"http://127.0.0.1:{ls_port}@localhost:{q}/x.png",
        f"http://127.0.0.1:{ls_port}/to-canary",
        f"http://127.0.0.1:{ls_port}/to-canary-by-name",
        f"https://127.0.0.1:{ls_port}/data/upload/1/a.png",  # Label Studio's port, not its scheme
    ]
    for url in attempts:
        with pytest.raises(ImageError, match="is not a public address"):
            fetcher.fetch(url)
    assert canary.connections() == []
    assert [p for _, p, _, _ in served.requests] == ["/to-canary", "/to-canary-by-name"]
    # The canary does see a connection when one is made: the assertion above could fail.
    socket.create_connection(("127.0.0.1", q)).close()
    assert len(canary.connections()) == 1
    # Label Studio's own destination still works, by its URL or by another name of the same address and port.
    image = served.files["/data/upload/1/a.png"][0]
    assert fetcher.fetch("/data/upload/1/a.png") == image
    assert fetcher.fetch(f"http://localhost:{ls_port}/data/upload/1/a.png") == image


def test_refused_and_unreachable_private_ports_read_the_same(canary):
    closed = _closed_port()
    errors = {}
    for name, port, fetcher in [("open, forbidden", canary.port, _fetcher()),
                                ("closed, forbidden", closed, _fetcher()),
                                ("closed, allowed", closed, _fetcher(allowed_hosts=(f"127.0.0.1:{closed}",)))]:
        with pytest.raises(ImageError) as info:
            fetcher.fetch(f"http://127.0.0.1:{port}/x.png")
        errors[name] = str(info.value).replace(str(port), "PORT")
    assert len(set(errors.values())) == 1, errors
    assert canary.connections() == []


def test_allowed_host_with_port_allows_exactly_that_port(http_server, photos, canary):
    base, served = http_server
    port = int(base.rsplit(":", 1)[1])
    served.files["/a.png"] = (png_bytes(photos["chelsea"]), "image/png")
    image = served.files["/a.png"][0]
    for entry in (f"127.0.0.1:{port}", f"localhost:{port}", f"127.0.0.0/8:{port}", f"[::ffff:127.0.0.1]:{port}"):
        fetcher = _fetcher(env={"SAG_ALLOWED_HOSTS": f"minio:9000, {entry}"})
        assert fetcher.fetch(f"{base}/a.png") == image, entry
        for url in (f"http://127.0.0.1:{canary.port}/a.png", f"http://localhost:{canary.port}/a.png"):
            with pytest.raises(ImageError, match="is not a public address"):
                fetcher.fetch(url)
    # Without a port the admin allows every port of that address (or network).
    for entry in ("127.0.0.1", "127.0.0.0/8", "localhost"):
        fetcher = _fetcher(env={"SAG_ALLOWED_HOSTS": entry}, fetch_timeout=0.5)
        assert fetcher.fetch(f"{base}/a.png") == image
        with pytest.raises(ImageError, match="longer than 0.5 s"):
            fetcher.fetch(f"http://127.0.0.1:{canary.port}/a.png")  # reached: the canary never answers
    assert len(canary.connections()) == 3
    # A network that does not hold the address allows nothing.
    with pytest.raises(ImageError, match="is not a public address"):
        _fetcher(env={"SAG_ALLOWED_HOSTS": f"10.0.0.0/8:{port}"}).fetch(f"{base}/a.png")


def test_policy_public_addresses_on_any_port_and_embedded_private_ones():
    policy = AddressPolicy(parse_allowed_hosts(["10.1.2.3:9000"]))
    for address in ("8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"):
        assert policy.permits("http", 6379, address) and policy.permits("https", 22, address)
    # IPv6 forms a gateway may deliver to an IPv4 address count as that address.
    for address in ("::ffff:127.0.0.1", "2002:7f00:1::1", "64:ff9b::7f00:1", "2002:a01:203::1"):
        assert not policy.permits("http", 80, address), address
    assert policy.permits("http", 9000, "10.1.2.3") and policy.permits("https", 9000, "::ffff:10.1.2.3")
    assert not policy.permits("http", 9001, "10.1.2.3") and not policy.permits("http", 9000, "10.1.2.4")


@pytest.mark.parametrize("entry", [
    "http://minio:9000", "minio:0", "minio:65536", "minio:http", "minio:", ":9000", "10.0.0.0/33", "10.0.0.1/8",
    "127.1", "2130706433", "0x7f000001", "user@minio", "[::1", "[10.0.0.1]:80", "minio/data", "*", "fd00::1:9000x",
])
def test_malformed_allowed_hosts_are_refused_at_start_up(entry):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SAG_ALLOWED_HOSTS": f"10.0.0.5, {entry}"})
    assert "SAG_ALLOWED_HOSTS" in str(info.value) and repr(entry) in str(info.value)
    with pytest.raises(SettingsError, match="SAG_ALLOWED_HOSTS"):
        Settings.from_env({}, allowed_hosts=(entry,))


def test_wellformed_allowed_hosts_are_accepted():
    entries = "minio, minio:9000, 10.0.0.5, 10.0.0.5:9000, 10.0.0.0/8, 10.0.0.0/8:9000, fd00::5, [fd00::5]:9000, " \
              "fd00::/8, [fd00::/8]:9000, label-studio.internal."
    assert len(Settings.from_env({"SAG_ALLOWED_HOSTS": entries}).allowed_hosts) == 11


# ---- the download deadline ---------------------------------------------------------------------------------------
class Trickle:
    """A real HTTP server (HTTPS with a ``tls`` server context) that sends one byte every ``interval`` seconds: of its
    headers (``mode="headers"``) or, after complete headers, of an endless body. It notes when a request arrived and
    when the client closed the connection; ``release`` makes it hang up."""

    HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10000000\r\n\r\n"

    def __init__(self, mode: str = "body", interval: float = 0.2, limit: float = 60.0,
                 tls: ssl.SSLContext | None = None):
        self.mode, self.interval, self.limit, self.tls = mode, interval, limit, tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.sock.getsockname()[1]}/slow.png"
        self.requested = threading.Event()
        self.closed = threading.Event()  # the client closed the connection
        self.release = threading.Event()
        self.closed_at: float | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn.settimeout(30)
                conn = self.tls.wrap_socket(conn, server_side=True)  # the handshake
                conn.settimeout(None)
            except OSError:  # the client refused the certificate
                conn.close()
                return
        with conn:
            conn.recv(65536)
            self.requested.set()
            if self.mode == "body":
                conn.sendall(self.HEAD)
                data: Iterator[bytes] = itertools.repeat(b"x")
            else:
                data = itertools.chain((self.HEAD[i:i + 1] for i in range(len(self.HEAD))), itertools.repeat(b"x"))
            end = time.monotonic() + self.limit
            for byte in data:
                if self.release.is_set() or time.monotonic() > end:
                    return
                try:
                    conn.sendall(byte)
                    # The drip rate, and the moment a FIN from the client shows up.
                    readable, _, _ = select.select([conn], [], [], self.interval)
                    gone = bool(readable) and conn.recv(1) == b""
                except OSError as exc:  # over TLS, a vanished client is an SSLError (EOF, bad record)
                    gone = isinstance(exc, ssl.SSLError) or exc.errno in (errno.EPIPE, errno.ECONNRESET)
                if gone:
                    self.closed_at = time.monotonic()
                    self.closed.set()
                    return

    def close(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.fixture
def trickle() -> Iterator[type[Trickle]]:
    servers: list[Trickle] = []

    def start(*args, **kwargs) -> Trickle:
        servers.append(Trickle(*args, **kwargs))
        return servers[-1]

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


@pytest.mark.parametrize("mode", ["body", "headers"])
def test_a_trickling_server_is_cut_at_the_deadline(trickle, mode):
    server = trickle(mode)
    fetcher = _fetcher(allowed_hosts=("127.0.0.1",), fetch_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"longer than 1\.5 s \(SAG_FETCH_TIMEOUT\)"):
        fetcher.fetch(server.url)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 1.5 + 1.0, elapsed
    assert server.closed.wait(timeout=5), "the server still holds the connection"
    assert server.closed_at - started < 1.5 + 1.0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, made for this test run."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("making a self-signed certificate needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.parametrize("mode", ["body", "headers"])
def test_a_trickling_https_server_is_cut_at_the_deadline(trickle, tls_files, monkeypatch, mode):
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = trickle(mode, tls=context)
    fetcher = _fetcher(allowed_hosts=("127.0.0.1",), fetch_timeout=1.5)
    # TLS really runs: the certificate is checked, and refused while nothing trusts it.
    with pytest.raises(ImageError, match="TLS handshake failed"):
        fetcher.fetch(server.url)
    assert not server.requested.is_set()
    make_session = transport._guarded_session

    def trusting(pools: dict) -> object:  # the download's own session, trusting only this certificate
        session = make_session(pools)
        session.verify = cert
        return session

    monkeypatch.setattr(transport, "_guarded_session", trusting)
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"longer than 1\.5 s \(SAG_FETCH_TIMEOUT\)"):
        fetcher.fetch(server.url)
    elapsed = time.monotonic() - started
    assert server.requested.is_set()  # the handshake succeeded and the request went over TLS
    assert 1.4 <= elapsed < 1.5 + 2.0, elapsed
    assert server.closed.wait(timeout=5), "the server still holds the connection"
    assert server.closed_at - started < 1.5 + 2.0


# ---- name lookups within the deadline -----------------------------------------------------------------------------
class HangingResolver:
    """Stands in for transport.getaddrinfo: a name in ``hang`` gets no answer until the test ends (as when the DNS
    server does not reply); every other name resolves as usual."""

    def __init__(self, real):  # type: ignore[no-untyped-def]
        self.real, self.hang, self.release = real, set(), threading.Event()
        self.asked: list[str] = []

    def __call__(self, host: str, port: int | None) -> list:
        self.asked.append(host)
        if host in self.hang:
            self.release.wait(120)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return self.real(host, port)


@pytest.fixture
def resolver(monkeypatch) -> Iterator[HangingResolver]:
    stub = HangingResolver(transport.getaddrinfo)
    monkeypatch.setattr(transport, "getaddrinfo", stub)
    try:
        yield stub
    finally:
        stub.release.set()
        for thread in threading.enumerate():
            if thread.name.startswith("sag-lookup-"):
                thread.join(timeout=10)


def test_a_name_lookup_that_never_answers_ends_at_the_deadline(resolver):
    resolver.hang.add("images.example.test")
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"^downloading http://images\.example\.test/x\.png took longer than 1 s "
                                         r"\(SAG_FETCH_TIMEOUT\): looking up images\.example\.test did not finish$"):
        _fetcher(fetch_timeout=1.0).fetch("http://images.example.test/x.png")
    elapsed = time.monotonic() - started
    assert resolver.asked == ["images.example.test"]
    assert 0.9 <= elapsed < 1.0 + 2.0, elapsed


def test_an_allowed_names_lookup_that_never_answers_ends_at_the_deadline(resolver, canary):
    # 127.0.0.1 resolves at once; the policy then looks up the allowed name "minio" to see whether it is that address.
    resolver.hang.add("minio")
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"longer than 1 s \(SAG_FETCH_TIMEOUT\): looking up minio did not finish"):
        _fetcher(allowed_hosts=("minio",), fetch_timeout=1.0).fetch(f"http://127.0.0.1:{canary.port}/x.png")
    assert time.monotonic() - started < 1.0 + 2.0
    assert "minio" in resolver.asked and canary.connections() == []  # never connected


def test_lookups_that_never_answer_hold_a_bounded_number_of_threads(resolver):
    resolver.hang.add("images.example.test")
    fetcher = _fetcher(fetch_timeout=0.5)
    errors: list[str] = []

    def fetch() -> None:
        try:
            fetcher.fetch("http://images.example.test/x.png")
        except ImageError as exc:
            errors.append(str(exc))

    fetches = [threading.Thread(target=fetch) for _ in range(2 * LOOKUP_THREADS)]
    started = time.monotonic()
    for thread in fetches:
        thread.start()
    for thread in fetches:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started
    assert len(errors) == 2 * LOOKUP_THREADS and all("SAG_FETCH_TIMEOUT" in e for e in errors), errors
    assert elapsed < 0.5 + 3.0, elapsed  # every fetch ended at its deadline, those that never got a thread too
    waiting = [t for t in threading.enumerate() if t.name.startswith("sag-lookup-")]
    assert 0 < len(waiting) <= LOOKUP_THREADS
    assert len(resolver.asked) == len(waiting)  # a fetch that found no free thread never asked


def test_embedded_mode_answers_other_requests_while_a_download_trickles(trickle, http_server, photos,
                                                                        registry_dir, tmp_path):
    base, served = http_server
    served.files["/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    server = trickle("body")
    shutil.copytree(registry_dir, tmp_path / "models")
    # Long enough that nothing here times out on a slow machine: the trickle ends when the test releases it.
    settings = Settings.from_env({}, model_dir=str(tmp_path / "models"), device="cpu", allowed_hosts=("127.0.0.1",),
                                 fetch_timeout=120.0, predict_timeout=60.0)
    app = create_app(settings)

    def predict(task_id: int, url: str) -> dict:
        response = app.test_client().post("/predict", json={
            "tasks": [{"id": task_id, "data": {"image": url, "text": "the cat"}}], "label_config": LABEL_CONFIG,
            "project": "1.1700000000"})
        assert response.status_code == 200
        return response.get_json()["results"][0]

    stuck: list[dict] = []
    blocked = threading.Thread(target=lambda: stuck.append(predict(1, server.url)))
    blocked.start()
    try:
        assert server.requested.wait(timeout=60), "the first request's download never started"
        answer = predict(2, f"{base}/cat.png")
        assert "error" not in answer and answer["result"], answer
        assert blocked.is_alive() and not server.closed.is_set()  # answered while the first download trickled
    finally:
        server.release.set()
        blocked.join(timeout=60)
    assert stuck and "error" in stuck[0], stuck


def test_embedded_wait_reports_a_timeout():
    dispatcher = EmbeddedDispatcher(threads=1)
    never: Future = Future()  # a job that has not finished when the wait ends
    [outcome] = dispatcher.wait([never], timeout=0.2)
    assert outcome.answers is None
    assert re.search(r"no result within 0.2 s \(SAG_PREDICT_TIMEOUT\)", outcome.error or "")
    assert never.cancelled()
