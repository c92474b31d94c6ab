"""Fetching task images safely: Label Studio URLs with its API key, http(s) URLs, cloud URIs, local files.

Every network connection is checked *after* it is made (the peer address of the socket), so neither a DNS name that
resolves to a private address nor a redirect to one can reach internal services: only Label Studio's own host and
``SAG_ALLOWED_HOSTS`` may be private. Downloads are bounded in bytes and time, decoding in pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import logging
import socket
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import requests
from PIL import Image, ImageOps, UnidentifiedImageError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError

from .ls_client import LabelStudioClient, LabelStudioError
from .settings import Settings

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class ImageError(Exception):
    """A task's image cannot be used; the message says why (and never contains credentials)."""


class BlockedAddressError(ConnectionError):
    """A connection reached an address the policy forbids."""


def display_url(url: str) -> str:
    """A URL safe for logs and error messages: no query string (presigned URLs carry credentials), no userinfo."""
    if url.startswith("data:"):
        return url[:30] + "..."
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    shown = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    return shown if len(shown) <= 200 else shown[:200] + "..."


class AddressPolicy:
    """Public addresses are allowed; private, loopback, link-local and other special ones only for allowed hosts."""

    def __init__(self, allowed: Iterable[str]):
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower())

    def check(self, hostname: str, address: str) -> None:
        """Raise :class:`BlockedAddressError` unless ``hostname`` may be reached at ``address``."""
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global and not ip.is_multicast:
            return
        if hostname.lower() in self.hosts or any(ip in net for net in self.networks):
            return
        where = "is" if hostname == str(ip) else "resolves to"
        raise BlockedAddressError(
            f"{hostname} {where} the non-public address {ip}; only Label Studio's host and SAG_ALLOWED_HOSTS may "
            "be private"
        )


def _guarded_session(policy: AddressPolicy) -> requests.Session:
    """A requests session whose every connection (redirects included) is checked against ``policy``."""

    class Guard:
        def _new_conn(self):  # type: ignore[no-untyped-def]
            # Before connecting, so no connection is ever opened to a forbidden address (no port probing) ...
            try:
                resolved = {info[4][0] for info in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)}
            except OSError:
                resolved = set()  # let urllib3 report the resolution error
            for address in resolved:
                policy.check(self.host, address)  # type: ignore[attr-defined]
            # ... and after, on the address actually connected to, which a DNS answer changed in between cannot fool.
            sock = super()._new_conn()  # type: ignore[misc]
            try:
                policy.check(self.host, sock.getpeername()[0])  # type: ignore[attr-defined]
            except BaseException:
                sock.close()
                raise
            return sock

    http_conn = type("GuardedHTTPConnection", (Guard, HTTPConnection), {})
    https_conn = type("GuardedHTTPSConnection", (Guard, HTTPSConnection), {})
    http_pool = type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    session = requests.Session()
    session.trust_env = False  # a proxy from the environment would hide the real peer address
    session.max_redirects = 5
    adapter = GuardedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class ImageFetcher:
    """Turns a task's image reference into bytes, following Label Studio's URL conventions."""

    def __init__(self, settings: Settings, label_studio: LabelStudioClient | None = None):
        self.settings = settings
        self.ls = label_studio
        allowed = list(settings.allowed_hosts)
        if label_studio is not None:
            allowed.append(label_studio.host)
        self._session = _guarded_session(AddressPolicy(allowed))
        self._local_roots = [Path(r).expanduser().resolve() for r in settings.local_roots]

    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """The image bytes for ``url``; raises :class:`ImageError` with a message for the annotator."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError("the task has no image URL")
        url = url.strip()
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            return self._data_uri(url)
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise ImageError(f"cannot resolve {display_url(url)}: cloud storage URIs need the task id")
            uri = base64.urlsafe_b64encode(url.encode()).decode()
            return self._from_label_studio(f"/tasks/{task_id}/presign/?fileuri={uri}", url)
        if scheme in ("http", "https"):
            if self.ls is not None and self.ls.owns(url):
                return self._from_label_studio(url, url)
            return self._download(url, {})
        if scheme == "file":
            return self._local(unquote(urlsplit(url).path))
        if scheme == "" and url.startswith(("/data/", "data/", "upload/", "/upload/", "/storage-data/", "/tasks/")):
            path = url if url.startswith("/") else "/" + url
            if path.startswith("/upload/"):
                path = "/data" + path
            if path.startswith("/data/local-files/"):
                local = self._label_studio_local_file(path)
                if local is not None:
                    return local
            return self._from_label_studio(path, url)
        if scheme == "" and url.startswith(("/", "~")):
            return self._local(url)
        raise ImageError(f"unsupported image URL {display_url(url)!r}: expected a Label Studio, http(s), "
                         "s3/gs/azure-blob URL or a local path")

    # ---- sources ----------------------------------------------------------------------------------------------
    def _from_label_studio(self, path_or_url: str, original: str) -> bytes:
        if self.ls is None:
            raise ImageError(
                f"{display_url(original)} is served by Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                "so the backend can fetch it"
            )
        try:
            headers = self.ls.auth_headers()
        except LabelStudioError as exc:
            raise ImageError(f"cannot fetch {display_url(original)}: {exc}") from None
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else self.ls.absolute(path_or_url)
        return self._download(url, headers)

    def _label_studio_local_file(self, path: str) -> bytes | None:
        """Read a ``/data/local-files/?d=...`` file straight from LOCAL_FILES_DOCUMENT_ROOT when it is mounted."""
        root = self.settings.local_files_root
        if not root:
            return None
        relative = parse_qs(urlsplit(path).query).get("d", [""])[0]
        candidate = (Path(root) / relative).resolve()
        if not candidate.is_relative_to(Path(root).resolve()) or not candidate.is_file():
            return None
        return self._read_file(candidate)

    def _local(self, raw: str) -> bytes:
        path = Path(raw).expanduser().resolve()
        if not any(path.is_relative_to(root) for root in self._local_roots):
            raise ImageError(
                f"local path {raw!r} is not under an allowed directory; list it in SAG_LOCAL_ROOTS to allow it"
            )
        if not path.is_file():
            raise ImageError(f"local image {raw!r} does not exist")
        return self._read_file(path)

    def _read_file(self, path: Path) -> bytes:
        size = path.stat().st_size
        if size > self.settings.max_image_bytes:
            raise ImageError(f"image {path.name} is {size / 2**20:.1f} MB; the limit is "
                             f"{self.settings.max_image_bytes / 2**20:.0f} MB (SAG_MAX_IMAGE_MB)")
        return path.read_bytes()

    def _data_uri(self, url: str) -> bytes:
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ImageError("data: image URLs must be base64-encoded")
        if len(payload) * 3 // 4 > self.settings.max_image_bytes:
            raise ImageError(f"inline image exceeds {self.settings.max_image_bytes / 2**20:.0f} MB (SAG_MAX_IMAGE_MB)")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("data: image URL is not valid base64") from None

    def _download(self, url: str, headers: dict[str, str]) -> bytes:
        shown = display_url(url)
        limit = self.settings.max_image_bytes
        timeout = self.settings.fetch_timeout
        deadline = time.monotonic() + timeout
        try:
            with self._session.get(url, headers=headers, stream=True, timeout=(min(timeout, 10.0), timeout)) as resp:
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
                    if time.monotonic() > deadline:
                        raise ImageError(f"downloading {shown} took longer than {timeout:.0f} s (SAG_FETCH_TIMEOUT)")
                return bytes(body)
        except ImageError:
            raise
        except requests.exceptions.TooManyRedirects:
            raise ImageError(f"image URL {shown} redirects too many times") from None
        except requests.RequestException as exc:
            blocked = _find_cause(exc, BlockedAddressError)
            if blocked is not None:
                raise ImageError(f"refused to fetch {shown}: {blocked}") from None
            # requests reports a read timeout while streaming as a ConnectionError wrapping urllib3's timeout.
            if isinstance(exc, requests.exceptions.Timeout) or _find_cause(exc, (TimeoutError, ReadTimeoutError)):
                raise ImageError(f"downloading {shown} took longer than {timeout:.0f} s (SAG_FETCH_TIMEOUT)") from None
            raise ImageError(f"cannot download {shown}: {_short_reason(exc)}") from None


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
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return None


def _short_reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed (host unreachable, unknown or refusing connections)"
    return type(exc).__name__


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode to an RGB image in the orientation a browser shows it (EXIF applied), refusing huge ones before
    their pixels are decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"image is {width}x{height} = {width * height / 1e6:.0f} MP; the limit is "
                             f"{max_pixels / 1e6:.0f} MP (SAG_MAX_IMAGE_PIXELS)")
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageError("the file is not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image is corrupt or truncated ({exc})") from None
