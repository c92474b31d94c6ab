"""Task images: what an image reference means (Label Studio URLs with its API key, http(s) URLs, cloud URIs, local
files, data URIs), fetched within size limits, and decoding bounded in pixels.

Every network download goes through :mod:`backend.transport`, the SSRF-guarded transport: it connects only to
public addresses, Label Studio's own origin and ``SAG_ALLOWED_HOSTS``, within one deadline per download.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from .exceptions import ImageError, LabelStudioError
from .labelstudio.client import LabelStudioClient
from .settings import Settings, parse_allowed_hosts
from .transport import GuardedTransport, display_url, label_studio_destination

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")


class ImageFetcher:
    """Turns a task's image reference into bytes, following Label Studio's URL conventions."""

    def __init__(self, settings: Settings, label_studio: LabelStudioClient | None = None):
        self.settings = settings
        self.ls = label_studio
        allowed = list(parse_allowed_hosts(settings.allowed_hosts))
        if label_studio is not None:
            allowed.append(label_studio_destination(label_studio.url))
        self.transport = GuardedTransport(allowed)
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
        return self.transport.download(url, headers, self.settings.max_image_bytes, self.settings.fetch_timeout)


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
