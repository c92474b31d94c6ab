"""The SSRF-guarded HTTP transport that task images are downloaded through: which destinations may be connected to,
name lookups within the download's time, connections pinned to the checked addresses, one deadline per download.

Every network connection (redirects included) goes to a *destination*: scheme, resolved address and port. Public
addresses may be reached on any port; a non-public one (private, loopback, link-local, ...) only when it is Label
Studio's own origin (its scheme, an address its host resolves to, its port) or matches a ``SAG_ALLOWED_HOSTS`` entry
(:func:`backend.settings.parse_allowed_host`). The check runs before connecting, on the addresses the connection is
then made to, so no connection is ever opened to a forbidden destination, and again on the connected peer. Callers
get one message for "forbidden" and for "could not connect" to a non-public address, so errors cannot map open
ports. A download has one wall-clock deadline, name lookups, redirects, headers and body included.

What a task's image reference means (Label Studio URLs, cloud URIs, local files) and decoding are
:mod:`backend.images`' work; its errors are :class:`~backend.exceptions.ImageError`, as here, since every download is
a task image's.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import socket
import threading
import time
from typing import Iterable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util import connection as urllib3_connection

from .exceptions import BlockedAddressError, ImageError, NameLookupTimeout
from .settings import AllowedDestination

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def display_url(url: str) -> str:
    """A URL safe for logs and error messages: no query string (presigned URLs carry credentials), no userinfo."""
    if url.startswith("data:"):
        return url[:30] + "..."
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    shown = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    return shown if len(shown) <= 200 else shown[:200] + "..."


def normalise_address(address: str) -> IPAddress:
    """An address as the policy compares it: no IPv6 zone, IPv4-mapped IPv6 (``::ffff:127.0.0.1``) as IPv4."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast; IPv6 forms that embed an IPv4 address (6to4, Teredo, NAT64) only when that
    address is public too, since a gateway may deliver them to it."""
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(is_public(inner) for inner in embedded if inner is not None)
    return True


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def refusal_message(host: str, port: int) -> str:
    """The one text for a non-public destination that is forbidden *or* unreachable (see the module docstring)."""
    return (f"{_host_port(host, port)} is not a public address; non-public destinations are fetched only from "
            "Label Studio's own origin and SAG_ALLOWED_HOSTS, and only when they accept the connection")


# Name lookups of downloads waiting for the resolver at once, at most; see lookup.
LOOKUP_THREADS = 16
_LOOKUP_SLOTS = threading.BoundedSemaphore(LOOKUP_THREADS)


def getaddrinfo(host: str, port: int | None) -> list:
    """The system resolver's TCP addresses of ``host`` (``socket.getaddrinfo``'s tuples); every lookup of this
    module goes through it."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def lookup(host: str, port: int | None) -> list:
    """:func:`getaddrinfo`, given up when the current download's deadline passes (:class:`NameLookupTimeout`).

    The resolver is a blocking C call that neither a timer nor a socket shutdown can interrupt, and one that gets no
    answer keeps trying for its own timeouts (5 s per server and attempt by default). So within a download the
    lookup runs in a daemon thread, which the download stops waiting for at its deadline and which ends whenever the
    resolver gives up. At most LOOKUP_THREADS of them wait at once, so a dead resolver cannot pile up threads: past
    that, a lookup waits for a free one, within its deadline too. Outside a download, or for an IP address (which
    the resolver answers without asking anyone), it is a plain call."""
    deadline = _CURRENT_DEADLINE.get()
    if deadline is None or _is_address(host):
        return getaddrinfo(host, port)
    too_slow = NameLookupTimeout(f"looking up {host} did not finish")
    if not _LOOKUP_SLOTS.acquire(timeout=deadline.left()):
        raise too_slow
    answer: list = []
    done = threading.Event()

    def run() -> None:
        try:
            answer.append(getaddrinfo(host, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting download
            answer.append(exc)
        finally:
            _LOOKUP_SLOTS.release()
            done.set()

    threading.Thread(target=run, name=f"sag-lookup-{host}"[:60], daemon=True).start()
    if not done.wait(deadline.left()):
        raise too_slow
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def _resolve(name: str) -> set[IPAddress]:
    try:
        infos = lookup(name, None)
    except NameLookupTimeout:
        raise  # not "resolves to nothing": the download ran out of time
    except OSError:
        return set()
    return {normalise_address(info[4][0]) for info in infos}


class AddressPolicy:
    """Which destinations may be connected to: any public address on any port; a non-public one only when an
    allowed destination matches its scheme, address and port."""

    def __init__(self, allowed: Iterable[AllowedDestination]):
        self.allowed = tuple(allowed)

    def permits(self, scheme: str, port: int, address: str) -> bool:
        """Whether a ``scheme`` connection to ``address`` (an IP address) on ``port`` is allowed."""
        ip = normalise_address(address)
        return is_public(ip) or any(self._matches(dest, scheme, port, ip) for dest in self.allowed)

    @staticmethod
    def _matches(dest: AllowedDestination, scheme: str, port: int, ip: IPAddress) -> bool:
        if dest.scheme is not None and dest.scheme != scheme:
            return False
        if dest.port is not None and dest.port != port:
            return False
        if dest.network is not None:
            return ip in dest.network
        # A name stands for the addresses it resolves to now (a container's address may change); names themselves
        # are never compared, so no alias of an allowed address gets more than its (address, port) pairs.
        return dest.name is not None and ip in _resolve(dest.name)

    def check(self, scheme: str, host: str, port: int, address: str) -> None:
        """Raise :class:`BlockedAddressError` unless ``host`` may be reached at ``address``:``port``."""
        if not self.permits(scheme, port, address):
            log.warning("refused a connection to %s (%s): non-public destination not allowed",
                        _host_port(host, port), address)
            raise BlockedAddressError(refusal_message(host, port))


def label_studio_destination(url: str) -> AllowedDestination:
    """Label Studio's origin as an allowed destination: its scheme, its host, and its port only."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or DEFAULT_PORTS[scheme]
    try:
        network = ipaddress.ip_network(str(normalise_address(host)))
    except ValueError:
        return AllowedDestination(entry=url, name=host.rstrip("."), port=port, scheme=scheme)
    return AllowedDestination(entry=url, network=network, port=port, scheme=scheme)


class _Deadline:
    """One download's wall-clock limit, enforced by closing its sockets from a timer thread.

    Socket timeouts alone cannot do this: they bound each ``recv``, and a server that sends a byte just before every
    timeout (while reading headers, or inside one buffered 64 KiB read of the body) never trips them. Shutting the
    sockets down wakes a blocked ``recv`` in the fetching thread at once, for http and https alike, whatever urllib3
    or http.client is doing. Each socket is registered as a ``dup`` of its descriptor: the TLS wrapper detaches the
    original object, but ``shutdown`` acts on the connection, whichever descriptor names it.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._token: contextvars.Token | None = None

    def __enter__(self) -> "_Deadline":
        self._token = _CURRENT_DEADLINE.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        if self._token is not None:
            _CURRENT_DEADLINE.reset(self._token)

    def left(self) -> float:
        """Seconds until the deadline (0 once it passed)."""
        return max(0.0, self.expires - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it already has)."""
        copy = sock.dup()
        with self._lock:
            if self._closed:  # the download is over; nothing left to bound
                copy.close()
                return
            self._sockets.append(copy)
            expired = self.expired
        if expired:
            _shutdown(copy)

    def _expire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer or by us


_CURRENT_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("sag_fetch_deadline",
                                                                                   default=None)


class _GuardedConnectionMixin:
    """Connects only to destinations the policy permits; see the module docstring."""

    sag_policy: AddressPolicy
    sag_scheme: str

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        host, port = self.host, self.port  # type: ignore[attr-defined]
        deadline = _CURRENT_DEADLINE.get()
        try:
            infos = lookup(self._dns_host, port)  # type: ignore[attr-defined]
            # Checked before connecting, and the connection is then made to exactly these addresses (no second DNS
            # answer in between), so a forbidden destination is never connected to: no port probing.
            for info in infos:
                self.sag_policy.check(self.sag_scheme, host, port, info[4][0])  # may look up allowed names
        except NameLookupTimeout as exc:
            raise ConnectTimeoutError(self, str(exc)) from exc
        except BlockedAddressError:
            raise
        except OSError as exc:
            raise NewConnectionError(self, f"cannot resolve {host}: {exc}") from exc  # type: ignore[arg-type]
        timeout = self.timeout  # type: ignore[attr-defined]
        if deadline is not None:  # a redirect's connection gets only what is left of the download's time
            left = deadline.left()
            if left <= 0:
                raise ConnectTimeoutError(self, f"no time left to connect to {host}")
            timeout = min(timeout, left) if isinstance(timeout, (int, float)) else left
        try:
            sock = self._connect_any(infos, timeout)
        except (ConnectTimeoutError, NewConnectionError) as exc:
            if not all(is_public(normalise_address(info[4][0])) for info in infos):
                # The same text as a refusal: "refused" vs "connection refused" would tell which private ports are
                # open. The real reason stays in the log for the admin.
                log.info("connection to non-public %s failed: %s", _host_port(host, port), exc)
                raise BlockedAddressError(refusal_message(host, port)) from None
            raise
        try:
            if deadline is not None:
                deadline.watch(sock)
            self.sag_policy.check(self.sag_scheme, host, port, sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect_any(self, infos: list, timeout: float | None) -> socket.socket:
        """Connect to the first of the checked addresses that answers (what urllib3's own resolver loop does)."""
        last: Exception | None = None
        for *_, sockaddr in infos:
            try:
                return urllib3_connection.create_connection(
                    (sockaddr[0], sockaddr[1]), timeout,
                    source_address=self.source_address,  # type: ignore[attr-defined]
                    socket_options=self.socket_options,  # type: ignore[attr-defined]
                )
            except TimeoutError:  # socket.timeout
                last = ConnectTimeoutError(self, f"connection to {_host_port(sockaddr[0], sockaddr[1])} timed out")
            except OSError as exc:
                last = NewConnectionError(self, f"failed to establish a new connection: {exc}")  # type: ignore
        raise last or NewConnectionError(self, "no address to connect to")  # type: ignore[arg-type]


class _GuardedAdapter(HTTPAdapter):
    """An adapter whose pools use the guarded connection classes."""

    def __init__(self, pools: dict[str, type], **kwargs):  # type: ignore[no-untyped-def]
        self._pools = pools
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pools)


def _guarded_pools(policy: AddressPolicy) -> dict[str, type]:
    """urllib3 pool classes (http, https) whose every connection is checked against ``policy``."""
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection),
                     {"sag_policy": policy, "sag_scheme": "http"})
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection),
                      {"sag_policy": policy, "sag_scheme": "https"})
    return {"http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})}


def _guarded_session(pools: dict[str, type]) -> requests.Session:
    """A requests session whose every connection (redirects included) goes through the guarded pools.

    One session per download: its sockets then belong to that download only (its deadline closes them all, and no
    kept-alive connection of another download is reused past its own deadline)."""
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment would hide the real peer address
    session.max_redirects = 5
    adapter = _GuardedAdapter(pools, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class GuardedTransport:
    """Downloads whose connections reach only public addresses and the destinations in ``allowed``.

    One per :class:`~backend.images.ImageFetcher`: its urllib3 pool classes carry the policy; each download gets a
    session of its own (:func:`_guarded_session`).
    """

    def __init__(self, allowed: Iterable[AllowedDestination]):
        self.policy = AddressPolicy(allowed)
        self._pools = _guarded_pools(self.policy)

    def download(self, url: str, headers: dict[str, str], limit: int, timeout: float) -> bytes:
        """The body of ``url`` (at most ``limit`` bytes, an image's content type), fetched with ``headers`` within
        ``timeout`` seconds all told; raises :class:`ImageError` with a message for the annotator."""
        shown = display_url(url)
        too_slow = ImageError(f"downloading {shown} took longer than {timeout:g} s (SAG_FETCH_TIMEOUT)")
        with _Deadline(timeout) as deadline, _guarded_session(self._pools) as session:
            try:
                body = self._get(session, url, headers, shown, limit, deadline)
            except ImageError:
                if deadline.expired:
                    raise too_slow from None
                raise
            except requests.exceptions.TooManyRedirects:
                raise ImageError(f"image URL {shown} redirects too many times") from None
            except requests.RequestException as exc:
                blocked = _find_cause(exc, BlockedAddressError)
                if blocked is not None:
                    raise ImageError(f"cannot fetch {shown}: {blocked}") from None
                late_lookup = _find_cause(exc, NameLookupTimeout)
                if late_lookup is not None:
                    raise ImageError(f"{too_slow}: {late_lookup}") from None
                # Whatever the closed socket made urllib3 raise, or a per-read timeout (requests reports one while
                # streaming as a ConnectionError wrapping urllib3's timeout).
                if (deadline.expired or isinstance(exc, requests.exceptions.Timeout)
                        or _find_cause(exc, (TimeoutError, ReadTimeoutError))):
                    raise too_slow from None
                raise ImageError(f"cannot download {shown}: {_short_reason(exc)}") from None
            except Exception:
                if deadline.expired:  # whatever a socket shut down mid-read made a library raise
                    raise too_slow from None
                raise
            if deadline.expired:  # a body cut short by the deadline can look complete when it had no length
                raise too_slow
            return body

    @staticmethod
    def _get(session: requests.Session, url: str, headers: dict[str, str], shown: str, limit: int,
             deadline: _Deadline) -> bytes:
        per_read = max(deadline.left(), 0.001)
        with session.get(url, headers=headers, stream=True, timeout=(min(per_read, 10.0), per_read)) as resp:
            if resp.status_code in (401, 403) and headers:
                raise ImageError(f"Label Studio refused {shown} (HTTP {resp.status_code}): check that "
                                 "LABEL_STUDIO_API_KEY is valid and allowed to read this project")
            if resp.status_code >= 400:
                raise ImageError(f"image URL {shown} returned HTTP {resp.status_code}")
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith(IMAGE_TYPES):
                raise ImageError(f"image URL {shown} returned {ctype}, not an image")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise ImageError(f"image at {shown} is {int(declared) / 2**20:.1f} MB; the limit is "
                                 f"{limit / 2**20:.0f} MB (SAG_MAX_IMAGE_MB)")
            body = bytearray()
            for chunk in resp.iter_content(chunk_size=1 << 16):
                body.extend(chunk)
                if len(body) > limit:
                    raise ImageError(f"image at {shown} exceeds {limit / 2**20:.0f} MB (SAG_MAX_IMAGE_MB)")
            return bytes(body)


def _find_cause(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
                ) -> BaseException | None:
    """The first exception of type ``kind`` among ``exc``'s causes, contexts and wrapped reasons."""
    seen = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        reason = getattr(current, "reason", None)  # urllib3's wrapped error; an SSLError's is a string
        stack.extend([current.__cause__, current.__context__, reason if isinstance(reason, BaseException) else None])
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return None


def _short_reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):  # reached only once the destination was allowed
        return "the TLS handshake failed (the server's certificate is not trusted, or not valid for this host)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed (host unreachable, unknown or refusing connections)"
    return type(exc).__name__
