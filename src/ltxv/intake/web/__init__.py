"""The web page the submit function serves at `/`: generate, watch and replay videos.

Plain HTML, CSS and JavaScript modules shipped as package data beside this file (so the
function archive carries them and nothing is built). The page talks to the same API as
every other client, with the key the person types in; serving it needs no key.

Only the files present when the process starts are served, looked up by exact name, so a
path can never reach outside `assets/` (`..`, encoded slashes and the like simply do not
match a name).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from flask import Request, Response

HERE = Path(__file__).resolve().parent
PAGE = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    # Module scripts are refused by browsers unless served with a JavaScript MIME type.
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Name under /assets/ (and `index.html` for `/`) -> the file, read once."""
    files = {PAGE: HERE / PAGE}
    files.update({p.name: p for p in sorted((HERE / "assets").iterdir()) if p.is_file()})
    found = {}
    for name, path in files.items():
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None:
            continue
        body = path.read_bytes()
        found[name] = Asset(body, content_type, hashlib.sha256(body).hexdigest()[:32])
    return found


def content_security_policy(storage_origin: str) -> str:
    """Same-origin scripts, styles and API calls only; videos and posters come from, and
    uploads go to, the signed URLs' origin (Cloud Storage, or fake-gcs-server locally)."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            # blob:: the preview of an image chosen for upload, before it leaves the page.
            f"img-src 'self' {storage_origin} blob:",
            f"media-src {storage_origin}",
            # The storage origin: uploads are PUT straight to their signed URLs.
            f"connect-src 'self' {storage_origin}",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(storage_origin: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(storage_origin),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        # Revalidate every time (cheap with the ETag): a deploy is seen at once.
        "Cache-Control": "no-cache",
    }


class WebPage:
    """Answers `/` and `/assets/<name>`; None for a name that is not one of the files."""

    def __init__(self, storage_origin: str) -> None:
        self.headers = security_headers(storage_origin)

    def response(self, name: str, request: Request) -> Response | None:
        asset = assets().get(name)
        if asset is None:
            return None
        response = Response(asset.body, status=200, content_type=asset.content_type)
        response.headers.update(self.headers)
        response.set_etag(asset.etag)
        response.make_conditional(request)  # in place (it returns the same response)
        return response
