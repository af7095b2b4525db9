"""The hub's own web app at /app/: clinic desk, worklist, reading workspace, administration.

Built from viewer/app by Vite (`npm run build`, run by scripts/bootstrap.sh) into
viewer/app/dist. Its files hold no patient data and need no login; every call they make goes
to /api or /dicomweb on this origin with the session cookie, scoped and audited there.
Client routes (/app/worklist, /app/read/42, …) get index.html.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from telehealth import static_files
from telehealth.static_files import REVALIDATE

BASE = "/app"
DEFAULT_DIST = Path(__file__).resolve().parents[1] / "viewer" / "app" / "dist"


@lru_cache(maxsize=8)
def content_security_policy(signaling_origin: str | None = None) -> str:
    """Everything from this origin, nothing inline: the build has no inline script. Canvas
    images come from blob: URLs; styles may be set inline by components. The consult room's
    websocket goes to the signalling server's own port: that one origin, nothing wider."""
    connect = "connect-src 'self' blob:" + (f" {signaling_origin}" if signaling_origin else "")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "worker-src 'self' blob:",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            connect,
            "media-src 'self' blob: mediastream:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'self'",
        ]
    )


def signaling_origin(url: str) -> str | None:
    """ws(s)://host:port of the signalling URL the hub hands out (from settings; the port
    the server got when configured as 0), or None when it is not a websocket URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc or "@" in parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _request_policy(request: Request) -> str:
    hub = getattr(request.app.state, "hub", None)
    consults = getattr(hub, "consults", None)
    url = getattr(consults, "signaling_url", "")
    return content_security_policy(signaling_origin(url) if isinstance(url, str) else None)


_HTML = "text/html; charset=utf-8"
# A file name ends in an extension; a client route may end in a UID (/app/studies/1.2.840.1).
_ASSET = re.compile(r"\.[A-Za-z][A-Za-z0-9]*$")


def _headers(cache_control: str, policy: str | None = None) -> dict[str, str]:
    return {
        "Cache-Control": cache_control,
        "Content-Security-Policy": policy or content_security_policy(),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # page URLs carry case numbers
    }


def router(folder: Path) -> APIRouter:
    """Routes for the build in `folder` (which must hold index.html)."""
    files = static_files.PreparedFolder(folder)
    routes = APIRouter(include_in_schema=False)

    @routes.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse(BASE + "/", status_code=307)

    @routes.get(BASE)
    def app_root() -> RedirectResponse:
        return RedirectResponse(BASE + "/", status_code=308)

    @routes.get(BASE + "/{rel:path}")
    def app_file(rel: str, request: Request) -> Response:
        path = files.file(rel)
        if path is None:
            if _ASSET.search(rel.rsplit("/", 1)[-1]):  # a missing asset, not a client route
                return Response(status_code=404, headers=_headers(REVALIDATE))
            index = files.prepare("index.html")
            return static_files.send(
                request,
                index,
                "text/html; charset=utf-8",
                _headers(REVALIDATE, _request_policy(request)),
            )
        rel = path.relative_to(files.folder).as_posix()
        cache_control = static_files.cache_control_for(path.name)
        return static_files.send(
            request,
            files.prepare(rel),
            static_files.media_type(rel),
            _headers(cache_control, _request_policy(request)),
        )

    return routes
