"""backend/images.py against a real local HTTP server: Label Studio URLs and auth, limits, SSRF refusals."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from backend.exceptions import ImageError
from backend.images import ImageFetcher, decode_image
from backend.labelstudio.client import LabelStudioClient
from backend.settings import Settings

from .conftest import png_bytes


def _fetcher(base: str | None = None, token: str | None = None, **overrides) -> ImageFetcher:
    settings = Settings.from_env({}, **overrides)
    return ImageFetcher(settings, LabelStudioClient(base, token) if base else None)


def test_label_studio_upload_urls_use_the_api_key(http_server, photos):
    base, served = http_server
    served.token = "legacy-token-123"
    served.files["/data/upload/3/cat.png"] = (png_bytes(photos["chelsea"]), "image/png")
    fetcher = _fetcher(base, "legacy-token-123")
    for url in ("/data/upload/3/cat.png", "upload/3/cat.png", f"{base}/data/upload/3/cat.png"):
        assert fetcher.fetch(url, task_id=1) == served.files["/data/upload/3/cat.png"][0]
    assert all(h.get("Authorization") == "Token legacy-token-123" for _, _, h, _ in served.requests)
    with pytest.raises(ImageError, match="refused .*HTTP 401.*LABEL_STUDIO_API_KEY"):
        _fetcher(base, "wrong").fetch("/data/upload/3/cat.png")
    with pytest.raises(ImageError, match="set LABEL_STUDIO_URL"):
        _fetcher().fetch("/data/upload/3/cat.png")


def test_personal_access_token_is_exchanged_for_an_access_token(http_server, photos):
    base, served = http_server

    def jwt(claims: dict) -> str:
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
        return f"{enc({'alg': 'HS256'})}.{enc(claims)}.sig"

    pat, access = jwt({"token_type": "refresh"}), jwt({"token_type": "access", "exp": time.time() + 300})
    served.files["/data/upload/1/a.png"] = (png_bytes(photos["coffee"]), "image/png")
    client = LabelStudioClient(base, pat)
    # The stub answers the refresh with 201 (its POST default), which is not how Label Studio answers: refused.
    with pytest.raises(Exception, match="refused the personal access token"):
        client.auth_headers()
    assert served.posted[-1] == ("/api/token/refresh/", {"refresh": pat})
    client._access, client._access_expires = access, time.time() + 300  # as after a successful refresh
    assert client.auth_headers() == {"Authorization": f"Bearer {access}"}
    assert repr(client) == f"LabelStudioClient({base!r})"  # no key in reprs


def test_private_addresses_are_refused_unless_allowed(http_server, photos):
    base, served = http_server
    served.files["/a.png"] = (png_bytes(photos["coffee"]), "image/png")
    with pytest.raises(ImageError, match=f"{base.split('//')[1]} is not a public address"):
        _fetcher().fetch(f"{base}/a.png")
    for url in ("http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x.png",
                "http://192.168.1.1/x.png", "http://[::ffff:10.0.0.1]/x.png", "http://[64:ff9b::a00:1]/x.png"):
        with pytest.raises(ImageError, match="is not a public address"):
            _fetcher().fetch(url)
    assert served.requests == []
    assert _fetcher(allowed_hosts=("127.0.0.1",)).fetch(f"{base}/a.png") == served.files["/a.png"][0]
    assert _fetcher(allowed_hosts=("127.0.0.0/8",)).fetch(f"{base}/a.png") == served.files["/a.png"][0]
    # Label Studio's own host may be private.
    assert _fetcher(base, "t").fetch(f"{base}/a.png") == served.files["/a.png"][0]


def test_a_redirect_to_a_private_address_is_refused(http_server, photos):
    base, served = http_server
    served.files["/a.png"] = (png_bytes(photos["coffee"]), "image/png")
    served.redirects["/go"] = "http://169.254.169.254/latest/meta-data"
    served.redirects["/here"] = "/a.png"
    fetcher = _fetcher(allowed_hosts=(base.split("//")[1],))  # the first hop is allowed, the redirect target not
    with pytest.raises(ImageError, match=r"169\.254\.169\.254:80 is not a public address"):
        fetcher.fetch(f"{base}/go")
    assert fetcher.fetch(f"{base}/here") == served.files["/a.png"][0]  # a redirect within the allowed origin


def test_http_errors_types_sizes_and_time_are_reported(http_server, photos):
    base, served = http_server
    served.files["/page.html"] = (b"<html>hello</html>", "text/html")
    served.files["/big.png"] = (b"x" * (2 * 2**20), "image/png")
    served.files["/slow.png"] = (png_bytes(photos["coffee"]), "image/png")
    served.slow["/slow.png"] = 3.0
    fetcher = _fetcher(allowed_hosts=("127.0.0.1",), max_image_bytes=2**20, fetch_timeout=1.0)
    with pytest.raises(ImageError, match="HTTP 404"):
        fetcher.fetch(f"{base}/missing.png")
    with pytest.raises(ImageError, match="text/html, not an image"):
        fetcher.fetch(f"{base}/page.html")
    with pytest.raises(ImageError, match="2.0 MB; the limit is 1 MB"):
        fetcher.fetch(f"{base}/big.png")
    with pytest.raises(ImageError, match="longer than 1 s"):
        fetcher.fetch(f"{base}/slow.png")
    # A closed port on an allowed private address reads like a forbidden one (no port scanning through errors).
    with pytest.raises(ImageError, match="127.0.0.1:1 is not a public address"):
        fetcher.fetch("http://127.0.0.1:1/closed.png")
    with pytest.raises(ImageError, match="cannot download .*connection failed"):
        fetcher.fetch("http://unknown-host.invalid/x.png")


def test_local_paths_only_under_allowed_roots(tmp_path, photos):
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes(photos["chelsea"]))
    with pytest.raises(ImageError, match="SAG_LOCAL_ROOTS"):
        _fetcher().fetch(str(image))
    with pytest.raises(ImageError, match="SAG_LOCAL_ROOTS"):
        _fetcher(local_roots=(str(tmp_path / "sub"),)).fetch(str(tmp_path / "sub" / ".." / "cat.png"))
    assert _fetcher(local_roots=(str(tmp_path),)).fetch(str(image)) == image.read_bytes()
    assert _fetcher(local_roots=(str(tmp_path),)).fetch(f"file://{image}") == image.read_bytes()
    # Label Studio local-files URLs are read straight from a mounted LOCAL_FILES_DOCUMENT_ROOT.
    fetcher = _fetcher("http://ls.invalid", "t", local_files_root=str(tmp_path))
    assert fetcher.fetch("/data/local-files/?d=cat.png") == image.read_bytes()


def test_decode_applies_exif_orientation_and_refuses_bombs_and_garbage(photos):
    wide = Image.fromarray(photos["coffee"])  # 600 x 400
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    wide.save(buf, "JPEG", exif=exif)
    decoded = decode_image(buf.getvalue(), max_pixels=10**8)
    assert decoded.size == (wide.height, wide.width)  # what the browser shows, and what the mask must match
    with pytest.raises(ImageError, match="MP; the limit"):
        decode_image(png_bytes(np.zeros((3000, 2000), np.uint8)), max_pixels=5_000_000)
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(b"GIF89a-but-not-really", max_pixels=10**8)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], max_pixels=10**8)
